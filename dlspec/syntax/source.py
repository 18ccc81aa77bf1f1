"""Reading a spec file, refusing what is not a spec with a diagnostic rather than a traceback."""

from __future__ import annotations

import os
import stat
import sys
from typing import BinaryIO

from dlspec.diagnostics import Diagnostic
from dlspec.structs import Struct

MAX_BYTES = (
    1024 * 1024
)  # a spec is a few KB; 10,000 layers are about 400 KB; parsing 1 MB takes ~2 s


class Source(Struct):
    path: str
    text: str


def read_source(path: str | os.PathLike[str]) -> tuple[Source | None, Diagnostic | None]:
    """The spec's text, or a diagnostic: missing, unreadable, empty, binary or huge (E001-E004)."""
    name = os.fspath(path) or "."  # as pathlib reads an empty path: the current folder
    try:
        info = os.stat(name)
        if stat.S_ISDIR(info.st_mode):
            return None, Diagnostic.at(
                "E001", f"{_shown(name)} is a directory, not a spec file", None
            )
        if not stat.S_ISREG(info.st_mode):  # a FIFO or a device would block or never end
            return None, Diagnostic.at(
                "E001",
                f"{_shown(name)} is not a regular file (a pipe, socket or device), not a spec",
                None,
            )
        size = info.st_size
        if size > MAX_BYTES:
            return None, Diagnostic.at(
                "E004",
                f"{_shown(name)} is {size:,} bytes; specs are limited to {MAX_BYTES:,} bytes",
                None,
            )
        with open(name, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        return None, Diagnostic.at("E001", f"no such file: {_shown(name)}", None)
    except OSError as exc:
        return None, Diagnostic.at(
            "E001", f"cannot read {_shown(name)}: {exc.strerror or exc}", None
        )
    return decode_source(str(path), data)


def _shown(path: str) -> str:
    """``path`` as the messages show it, as pathlib writes it (``./specs//a.dl`` is
    ``specs/a.dl``); pathlib is imported for a file that is not a spec only."""
    from pathlib import Path

    return str(Path(path))


def read_stdin(stream: BinaryIO | None = None) -> tuple[Source | None, Diagnostic | None]:
    """Standard input as a spec, as :func:`read_source` reads a file: at most MAX_BYTES are
    read (a larger input is E004, found without reading the rest)."""
    data = (stream or sys.stdin.buffer).read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        return None, Diagnostic.at(
            "E004", f"standard input is over {MAX_BYTES:,} bytes, the limit for a spec", None
        )
    return decode_source("-", data)


def decode_source(path: str, data: bytes) -> tuple[Source | None, Diagnostic | None]:
    """The text of a spec read from ``path``, or why it is not one (binary, not UTF-8, empty)."""
    p = "standard input" if path == "-" else path
    if b"\0" in data:
        return None, Diagnostic.at("E003", f"{p} is a binary file, not a spec", None)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, Diagnostic.at(
            "E003", f"{p} is not UTF-8 text (byte {exc.start}: {data[exc.start]:#04x})", None
        )
    if not text.strip():
        return None, Diagnostic.at("E002", f"{p} is empty: it defines no model", None)
    return Source(path, text.removeprefix("\ufeff")), None
