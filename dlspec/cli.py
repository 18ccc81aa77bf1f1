"""The ``dlspec`` command line: parse arguments, call the pipeline, render. Nothing more.

Each command lives in :mod:`dlspec.commands` as ``configure(parser)`` and ``run(args) -> int``;
command modules import heavy libraries (torch, onnx) inside ``run`` only, so ``dlspec check``
stays a fast static tool. Exit codes: 0 ok, 1 diagnostics (or a failed run), 2 usage.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import sys
import types
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from dlspec import __version__
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


_PLUGIN_LOADER = "pydantic.plugin._loader"
_PLUGINS_OFF = ("__all__", "1", "true")  # the values pydantic reads as "no plugins"


def _plugins_unlooked_for() -> None:
    """Spare a check the import of :mod:`importlib.metadata` while plugins are off.

    pydantic imports its plugin loader, which imports ``importlib.metadata`` (and with it
    ``email``, ``zipfile``, ``csv``, ``socket``: about 10 ms, a tenth of check's import floor)
    when it makes its first validator, only to be told by ``PYDANTIC_DISABLE_PLUGINS`` that
    there are none to look for. While the variable says so, the loader is a stand-in that
    finds none; once it does not, the stand-in hands over to pydantic's own loader.
    """
    if (
        _PLUGIN_LOADER in sys.modules
        or os.environ.get("PYDANTIC_DISABLE_PLUGINS") not in _PLUGINS_OFF
    ):
        return

    def pydantics(name: str) -> Any:
        """``name`` from pydantic's own loader, which then replaces the stand-in (also what
        another pydantic version may ask of it beyond ``get_plugins``; what the import
        system asks of any module, as ``__path__``, it has not)."""
        if name.startswith("__"):
            raise AttributeError(name)
        if sys.modules.get(_PLUGIN_LOADER) is stand_in:
            del sys.modules[_PLUGIN_LOADER]
        return getattr(importlib.import_module(_PLUGIN_LOADER), name)

    def get_plugins() -> Iterable[object]:
        if os.environ.get("PYDANTIC_DISABLE_PLUGINS") in _PLUGINS_OFF:
            return ()
        result: Iterable[object] = pydantics("get_plugins")()
        return result

    stand_in = types.ModuleType(_PLUGIN_LOADER, "dlspec's stand-in: plugins are off")
    stand_in.get_plugins = get_plugins  # type: ignore[attr-defined]
    setattr(stand_in, "__getattr__", pydantics)  # noqa: B010  # a module's own (PEP 562)
    sys.modules[_PLUGIN_LOADER] = stand_in


def main(argv: Sequence[str] | None = None) -> int:
    # pydantic looks for plugins (observability hooks) among every installed distribution's
    # entry points when it makes its first validator, which is a large part of a check's
    # start-up on a machine with many packages; dlspec's own models have no use for them. A
    # value the user set (an empty one enables them) is kept.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    _plugins_unlooked_for()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["help"]:  # `dlspec help CMD` is `dlspec CMD --help`
        argv = [*argv[1:2], "--help"]
    chosen = [a for a in argv if a in COMMANDS][:1]  # import only the command that runs
    parser = build_parser(chosen or COMMANDS)
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
