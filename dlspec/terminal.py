"""Text from files, folder names and specs, made safe to print on a terminal.

Class names come from folder names and checkpoint metadata, spec lines are echoed in
diagnostics, and file names come from the command line: any of them may hold control
characters (``ESC [ 2 J`` clears the screen, ``ESC ] 52`` writes the clipboard) or bytes that
are not UTF-8. :func:`printable` escapes them, so that what prints is what is there.
"""

from __future__ import annotations

import unicodedata

_KEEP = frozenset("\n\t")


def _escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(text: str) -> str:
    """``text`` with control and format characters (C0, C1, DEL, bidirectional overrides) and
    undecodable bytes (lone surrogates) written as ``\\xNN`` / ``\\uNNNN``; newlines and tabs
    are kept."""
    if text.isprintable():
        return text
    return "".join(
        _escape(c)
        if c not in _KEEP and unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn")
        else c
        for c in text
    )
