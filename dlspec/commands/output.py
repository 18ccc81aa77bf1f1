"""Where a command's lines go: results on stdout (as text or JSON), notes and progress on
stderr, nothing but errors with --quiet.

With ``--format json`` stdout carries only JSON (one object per line where a command reports
as it goes, e.g. one per epoch), so it can be piped to ``jq``; the human lines move to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dlspec.terminal import printable


def add_output_arguments(
    parser: argparse.ArgumentParser, what: str, quiet: str | None = None
) -> None:
    """--format (``what``: what the JSON holds) and, when ``quiet`` says what it leaves
    out, --quiet."""
    parser.add_argument("--format", choices=("text", "json"), default="text", help=f"json: {what}")
    if quiet is not None:
        parser.add_argument("--quiet", "-q", action="store_true", help=f"print only {quiet}")


class Output:
    """A command's printer, set up from its --format and --quiet."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.json = getattr(args, "format", "text") == "json"
        self.quiet = bool(getattr(args, "quiet", False))

    def result(self, line: str) -> None:
        """A line of the command's result (text format only; JSON goes through emit). Control
        characters are escaped: results hold names from the data (class names, text)."""
        if not self.quiet and not self.json:
            print(printable(line), flush=True)

    def note(self, line: str) -> None:
        """A notice or progress line, on stderr."""
        if not self.quiet:
            print(printable(line), file=sys.stderr, flush=True)

    def info(self, line: str) -> None:
        """A human line that belongs with the result: stdout in text, stderr beside JSON."""
        if self.json:
            self.note(line)
        else:
            self.result(line)

    def emit(self, record: dict[str, Any]) -> None:
        """One JSON object on one line (JSON format only)."""
        if self.json:
            print(json.dumps(record, ensure_ascii=False), flush=True)
