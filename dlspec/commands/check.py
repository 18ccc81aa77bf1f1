"""Check a spec statically: shapes, parameters, MACs, memory and your expectations."""

from __future__ import annotations

import argparse
from pathlib import Path

from dlspec.analysis.check import Checked, check_file, check_text
from dlspec.analysis.graph import describe
from dlspec.analysis.render import render_table
from dlspec.commands.common import (
    add_input_argument,
    add_spec_arguments,
    exit_code,
    positive_int,
    print_diagnostics,
)


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
    add_input_argument(
        parser,
        "for MODULE:CALLABLE in place of a spec (--set then sets the constructor's arguments): ",
    )


def _imported(args: argparse.Namespace) -> Checked | int:
    """Import ``MODULE:CALLABLE`` in memory (as `dlspec import` does) and check the spec."""
    from dlspec.commands import import_

    result = import_.capture(args, args.spec)
    if isinstance(result, int):
        return result
    return check_text(result.text, args.spec, batch=args.batch)


def run(args: argparse.Namespace) -> int:
    if ":" in args.spec and not Path(args.spec).exists():
        checked = _imported(args)
        if isinstance(checked, int):
            return checked
    else:
        checked = check_file(args.spec, dict(args.overrides), batch=args.batch, model=args.model)
    if args.format == "json":
        print(checked.report.model_dump_json(indent=2))
    elif args.format == "ir":
        if checked.graph is not None:
            print(describe(checked.graph), flush=True)
        print_diagnostics(checked)
    else:
        table = render_table(checked.report)
        if table:
            print(table, flush=True)
        print_diagnostics(checked)
    return exit_code(checked)
