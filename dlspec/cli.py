"""The ``dlspec`` command line: parse arguments, call the pipeline, render. Nothing more.

Each command lives in :mod:`dlspec.commands` as ``configure(parser)`` and ``run(args) -> int``;
command modules import heavy libraries (torch, onnx) inside ``run`` only, so ``dlspec check``
stays a fast static tool. Exit codes: 0 ok, 1 diagnostics (or a failed run), 2 usage.
"""

from __future__ import annotations

import argparse
import importlib
import io
import sys
from collections.abc import Collection, Sequence

from dlspec import __version__, collector
from dlspec.crash import internal_error

COMMANDS = {
    "check": "dlspec.commands.check",
    "build": "dlspec.commands.build",
    "draw": "dlspec.commands.draw",
    "diff": "dlspec.commands.diff",
    "export": "dlspec.commands.export",
    "predict": "dlspec.commands.predict",
    "bench": "dlspec.commands.bench",
    "sample": "dlspec.commands.sample",
    "fmt": "dlspec.commands.fmt",
    "lsp": "dlspec.commands.lsp",
    "import": "dlspec.commands.import_",
    "plan": "dlspec.commands.plan",
}

EXIT_OK, EXIT_DIAGNOSTICS, EXIT_USAGE = 0, 1, 2


def build_parser(names: Collection[str] = tuple(COMMANDS)) -> argparse.ArgumentParser:
    """The command line's parser, with the commands ``names`` (their modules imported)."""
    parser = argparse.ArgumentParser(
        prog="dlspec",
        description="Describe, check, train, export and draw neural networks from a spec.",
    )
    parser.add_argument("--version", action="version", version=f"dlspec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in names:
        module = importlib.import_module(COMMANDS[name])
        command = sub.add_parser(
            name, help=module.__doc__.splitlines()[0] if module.__doc__ else ""
        )
        module.configure(command)
        command.set_defaults(run=module.run)
    if set(names) == set(COMMANDS):  # the full list, for --help
        sub.add_parser("help", help="show a command's options: dlspec help COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The program (``argv`` None: the process's own command line), or a run of it for a
    caller (a test) with ``argv``."""
    program = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["help"]:  # `dlspec help CMD` is `dlspec CMD --help`
        argv = [*argv[1:2], "--help"]
    chosen = [a for a in argv if a in COMMANDS][:1]  # import only the command that runs
    with collector.paused():  # imports: objects that live as long as the process
        parser = build_parser(chosen or COMMANDS)
    if program:  # a caller's objects are its own to collect
        collector.keep_imported()
    for stream in (sys.stdout, sys.stderr):  # never fail on undecodable names from argv
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    args = parser.parse_args(argv)
    args.argv = argv  # the command line as given, for a command that starts itself again
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception as error:  # a bug: say so, and keep the traceback in a log file
        return internal_error(argv, error)
