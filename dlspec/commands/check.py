"""Check a spec statically: shapes, parameters, MACs, memory and your expectations."""

from __future__ import annotations

import argparse

from dlspec.analysis.check import check_file
from dlspec.analysis.graph import describe
from dlspec.analysis.render import render_table
from dlspec.commands.common import add_spec_arguments, exit_code, positive_int, print_diagnostics


def configure(parser: argparse.ArgumentParser) -> None:
    add_spec_arguments(parser)
    parser.add_argument(
        "--batch", type=positive_int, default=1, help="batch size for the memory estimates"
    )
    parser.add_argument(
        "--format",
        choices=("table", "json", "ir"),
        default="table",
        help="table (default), the JSON report, or ir: the resolved dataflow graph",
    )
    parser.add_argument(
        "--activations",
        action="store_true",
        help="add a column: the bytes each layer saves for the backward pass at --batch",
    )


def run(args: argparse.Namespace) -> int:
    checked = check_file(args.spec, dict(args.overrides), batch=args.batch, model=args.model)
    if args.format == "json":
        print(checked.report.model_dump_json(indent=2))
    elif args.format == "ir":
        if checked.graph is not None:
            print(describe(checked.graph), flush=True)
        print_diagnostics(checked)
    else:
        table = render_table(checked.report, activations=args.activations)
        if table:
            print(table, flush=True)
        print_diagnostics(checked)
    return exit_code(checked)
