"""Options and steps shared by the commands that read a spec."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from dlspec.analysis.check import Checked, check_file

USAGE_CODES = {"E001", "E211"}  # problems with the command line rather than the spec


def set_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return key.strip(), value.strip()


def whole_number(text: str) -> int:
    """A count or seed that may be 0: a whole number >= 0."""
    try:
        value = int(text)
        if value < 0:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def add_set_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--set NAME=VALUE`` (repeatable) into ``args.overrides``; ``what`` it sets."""
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="NAME=VALUE",
        type=set_pair,
        action="append",
        default=[],
        help=f"{what}, e.g. --set num_classes=43 (repeatable)",
    )


def add_input_argument(parser: argparse.ArgumentParser, what: str = "") -> None:
    """``--input TYPE`` (repeatable) into ``args.inputs``, for importing ``MODULE:CALLABLE``."""
    parser.add_argument(
        "--input",
        dest="inputs",
        metavar="TYPE",
        action="append",
        default=[],
        help=f"{what}the per-sample type of an input, e.g. float[3, 224, 224] or long[T] "
        "(repeatable)",
    )


def add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="the spec file (.dl)")
    add_set_argument(parser, "override a model parameter")
    parser.add_argument("--model", help="which model, when the spec defines several")


def exit_code(checked: Checked) -> int:
    errors = [d for d in checked.report.diagnostics if d.severity == "error"]
    if any(d.code in USAGE_CODES for d in errors):
        return 2
    return 1 if errors else 0


def print_diagnostics(
    checked: Checked, stream: TextIO | None = None, warnings: bool = True
) -> None:
    """Render the diagnostics and a count. With ``warnings=False`` (commands other than
    check) only errors are shown in full; warnings are counted and left to `dlspec check`."""
    out = stream or sys.stderr
    text = checked.source.text if checked.source else None
    for diag in checked.report.diagnostics:
        if warnings or diag.severity == "error":
            print(diag.render(checked.path, text), file=out)
    errors = sum(d.severity == "error" for d in checked.report.diagnostics)
    count = len(checked.report.diagnostics) - errors
    if errors or count:
        hint = "" if warnings or not count else f" (see `dlspec check {checked.path}`)"
        print(
            f"{checked.path}: {errors} error{'s' * (errors != 1)}, "
            f"{count} warning{'s' * (count != 1)}{hint}",
            file=out,
        )


def load_spec(args: argparse.Namespace, batch: int = 1) -> tuple[Checked, int]:
    """Check the spec named on the command line; print its diagnostics. Returns the result
    and the exit code to use if the caller must stop (non-zero when the spec has errors)."""
    checked = check_file(args.spec, dict(args.overrides), batch=batch, model=args.model)
    print_diagnostics(checked, warnings=False)
    return checked, exit_code(checked)
