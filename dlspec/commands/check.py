"""Check specs statically: shapes, parameters, MACs, memory and your expectations."""

from __future__ import annotations

import argparse
import os
import sys

from dlspec.analysis.check import Checked, check_file, check_text
from dlspec.analysis.graph import describe
from dlspec.analysis.render import render_table
from dlspec.commands.common import (
    add_input_argument,
    add_spec_arguments,
    exit_code,
    limits_of,
    positive_int,
    print_diagnostics,
)
from dlspec.commands.import_ import add_limits, add_output_argument
from dlspec.commands.watch import positive_seconds, watch


def configure(parser: argparse.ArgumentParser) -> None:
    add_spec_arguments(parser, several=True)
    parser.add_argument(
        "--batch", type=positive_int, default=1, help="batch size for the memory estimates"
    )
    parser.add_argument(
        "--format",
        choices=("table", "json", "ir"),
        default="table",
        help="json: the report (a list of reports for several specs); ir: the resolved "
        "dataflow graph",
    )
    parser.add_argument(
        "--quiet", "-q", action="store_true", help="print only the diagnostics (no tables)"
    )
    parser.add_argument(
        "--watch",
        action="store_true",
        help="check again whenever a spec file changes, clearing the screen (Ctrl-C stops)",
    )
    parser.add_argument(
        "--interval",
        type=positive_seconds,
        default=0.5,
        metavar="SECONDS",
        help="with --watch: how often to look at the files (default 0.5)",
    )
    add_input_argument(
        parser,
        "for MODULE:CALLABLE in place of a spec (--set then sets the constructor's arguments): ",
    )
    add_output_argument(parser)
    add_limits(parser, memory=False)  # check's --max-memory bounds the model's code too
    parser.add_argument(
        "--activations",
        action="store_true",
        help="add a column: the bytes each layer saves for the backward pass at --batch",
    )


def _imported(args: argparse.Namespace, target: str) -> Checked | int:
    """Import ``MODULE:CALLABLE`` (as `dlspec import` does: the user's code in a bounded
    child process, which writes the spec to a temporary file) and check the spec."""
    import tempfile
    from pathlib import Path

    from dlspec.commands import import_

    with tempfile.TemporaryDirectory(prefix="dlspec-check-") as folder:
        path = Path(folder) / "imported.dl"
        job = argparse.Namespace(**{**vars(args), "target": target})
        code = import_.bounded(job, lambda: import_.spec_text(job, path), "check")
        if code != 0:
            return code
        text = path.read_text(encoding="utf-8")
    return check_text(text, target, batch=args.batch)


def _check(path: str, args: argparse.Namespace) -> Checked | int:
    overrides, batch, model = dict(args.overrides), args.batch, args.model
    if ":" in path and not os.path.exists(path):
        return _imported(args, path)
    return check_file(path, overrides, batch, model, limits_of(args))


def check_all(args: argparse.Namespace) -> int:
    """Check every spec named; print the tables or JSON and the diagnostics. The exit code
    is the worst of the specs'."""
    results = []
    for path in args.specs:
        checked = _check(path, args)
        if isinstance(checked, int):
            return checked  # an import that failed (said why)
        results.append(checked)
    if args.format == "json":
        import json  # not for a table: its import compiles regular expressions

        reports = [r.report.model_dump(mode="json") for r in results]
        print(
            json.dumps(reports[0] if len(reports) == 1 else reports, indent=2, ensure_ascii=False)
        )
    elif args.format == "ir":
        for checked in results:
            if checked.graph is not None:
                print(describe(checked.graph), flush=True)
            print_diagnostics(checked)
    else:
        for index, checked in enumerate(results):
            table = "" if args.quiet else render_table(checked.report, activations=args.activations)
            if table:
                print(("\n" if index else "") + table, flush=True)
            print_diagnostics(checked)
    return max(exit_code(r) for r in results)


def run(args: argparse.Namespace) -> int:
    if not args.watch:
        return check_all(args)
    if "-" in args.specs:
        print("dlspec check: --watch needs spec files, not - (stdin)", file=sys.stderr)
        return 2
    status = sys.stderr if args.format == "json" else sys.stdout  # stdout: JSON only
    return watch(args.specs, lambda: check_all(args), args.interval, status=status)
