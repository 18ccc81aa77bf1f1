"""Format specs in the canonical layout (comments kept); --check lists those that differ."""

from __future__ import annotations

import argparse
import sys

from dlspec.commands.common import USAGE_CODES, spec_sources
from dlspec.files import write_atomic
from dlspec.syntax.format import format_text

EPILOG = """\
exit codes:
  0  every spec is formatted (or was rewritten)
  1  a spec has a syntax error, or (with --check) a spec is not formatted
  2  usage: a file that cannot be read"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("specs", nargs="+", metavar="SPEC", help="spec files; - reads stdin")
    parser.add_argument(
        "--check",
        action="store_true",
        help="rewrite nothing: list the specs that are not formatted and exit 1 if any",
    )


def run(args: argparse.Namespace) -> int:
    worst = 0
    unformatted = []
    for path, text, problem in spec_sources(args.specs):
        if text is None:
            assert problem is not None
            print(problem.render(path, None), file=sys.stderr)
            worst = 2 if problem.code in USAGE_CODES else max(worst, 1)
            continue
        formatted, diagnostics = format_text(text)
        if formatted is None:
            for diag in diagnostics:
                print(diag.render(path, text), file=sys.stderr)
            worst = max(worst, 1)
        elif args.check:
            if formatted != text:
                unformatted.append(path)
        elif path == "-":
            sys.stdout.write(formatted)
        elif formatted != text:
            write_atomic(path, formatted.encode("utf-8"))
            print(f"formatted {path}")
    for path in unformatted:
        print(f"would reformat {path}")
    if unformatted:
        print(f"{len(unformatted)} of {len(args.specs)} specs are not formatted; run `dlspec fmt`")
        worst = max(worst, 1)
    return worst
