"""The LALR parser, made once and kept pickled in the user's cache folder.

Made from the grammar, the parser takes about 50 ms; loaded from lark's own cache, 5 ms (it
pickles the analysed tables and builds the parser from them again: rules, parse table, the
contextual lexer's 75 state lexers); unpickled whole, about 1 ms. Its lexers are kept
compiled too: lark compiles a state's lexer (one regular expression over the terminals the
state accepts) when the parser first reaches the state, and ``re`` parses and compiles each
in Python, 4 ms of a first parse of a small spec; pickled as their compiled code (what
``re.compile`` hands ``_sre``), they are made again in 0.5 ms, all of them.

Never lark's ``cache=True``: that is a file of a predictable name in the shared temporary
directory, which another user could plant (it is unpickled).
"""

from __future__ import annotations

import _sre
import contextlib
import copyreg
import hashlib
import importlib
import io
import os
import pickle
import re
import sys
import types
from collections.abc import Callable
from typing import Any

import lark
from lark import Lark
from lark.parsers.lalr_analysis import Action


def cache_folder() -> str | None:
    """Where dlspec keeps what it may rebuild at any time: ``$DLSPEC_CACHE``, else
    ``$XDG_CACHE_HOME/dlspec``, else ``~/.cache/dlspec``; None without a home folder."""
    if os.environ.get("DLSPEC_CACHE"):
        return os.environ["DLSPEC_CACHE"]
    home = os.path.expanduser("~")
    if not os.environ.get("XDG_CACHE_HOME") and home.startswith("~"):
        return None  # no home folder to be found
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache"), "dlspec")


def parser(grammar: str) -> Lark:
    """The LALR parser of ``grammar``: the one kept in :func:`cache_folder`, else made (and
    kept there, where it can be)."""
    path = _kept_at(grammar)
    made = None if path is None else _load(path)
    if made is None:
        made = _make(grammar)
        if path is not None:
            _keep(made, path)
    return made


def _kept_at(grammar: str) -> str | None:
    """The file, named by the hash of the grammar and of the versions of lark, Python and its
    regular expressions' code; None where the cache folder cannot be made."""
    folder = cache_folder()
    if folder is None:
        return None
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return None
    key = f"{grammar}\0lark {lark.__version__}\0python {sys.version}\0sre {_sre.MAGIC}"
    return os.path.join(folder, f"grammar-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pickle")


def _make(grammar: str) -> Lark:
    """The parser as lark's own cache gives it back: saved and loaded again, its names are
    plain strings (made from the grammar, they are lark's tokens, whose ``==`` the parser
    would run for each token it reads) and it holds no grammar. Its lexers are compiled
    where they can be kept compiled (:func:`_compiled_code`)."""
    saved = io.BytesIO()
    Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True).save(saved)
    saved.seek(0)
    made = Lark.load(saved)
    contextual = made.parser.lexer
    if _CODE is not None:
        for lexer in {*contextual.lexers.values(), contextual.root_lexer}:
            lexer.scanner  # noqa: B018  # compiled when first read
    return made


def _load(path: str) -> Lark | None:
    try:
        with open(path, "rb") as file:
            kept = pickle.load(file)
    except Exception:  # missing, or broken: made again
        return None
    return kept if isinstance(kept, Lark) else None


def _keep(made: Lark, path: str) -> None:
    """Write the parser to ``path`` whole, or not at all (a check goes on without it). Its
    lexers go compiled only where the pickle loads back: a Python whose ``_sre`` takes its
    code otherwise gets them uncompiled, not a file that fails to load at every check."""
    part = f"{path}.{os.getpid()}"
    try:
        kept = _pickled(made, _PICKLED)
        try:
            pickle.loads(kept)
        except Exception:  # the compiled lexers do not load back on this Python
            kept = _pickled(made, _PICKLED_UNCOMPILED)
        with open(part, "wb") as file:
            file.write(kept)
        os.replace(part, path)
    except Exception:  # no room, no right to write, or a lark that cannot be pickled
        with contextlib.suppress(OSError):
            os.unlink(part)


def _pickled(made: Lark, dispatch: dict[type, Callable[[Any], Any]]) -> bytes:
    saved = io.BytesIO()
    pickler = pickle.Pickler(saved, pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = dispatch
    pickler.dump(made)
    return saved.getvalue()


def _compiled_code(regex: re.Pattern[str]) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """A compiled regular expression pickled as its code: what ``re.compile`` hands
    ``_sre.compile`` (``re._compiler.compile``'s last step), which makes it again at once."""
    assert _CODE is not None
    parse, code = _CODE
    parsed = parse(regex.pattern, regex.flags)
    names = parsed.state.groupdict
    indexgroup: list[str | None] = [None] * parsed.state.groups
    for name, index in names.items():
        indexgroup[index] = name
    return _sre.compile, (
        regex.pattern,
        regex.flags | parsed.state.flags,
        [int(op) for op in code(parsed, regex.flags)],
        parsed.state.groups - 1,
        dict(names),
        tuple(indexgroup),
    )


def _regex_compiler() -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    """``re``'s parser and code generator, where this Python has them where 3.11 to 3.13
    do (private modules: without them, lexers are pickled uncompiled, as lark leaves them)."""
    try:
        from re import _compiler, _parser  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _parser.parse, _compiler._code


_CODE = _regex_compiler()

# how the parser is pickled: the module lark's lexers hold (``re``) by name, lark's two LALR
# actions as themselves (its parser tells them apart by identity), regular expressions as
# their compiled code
_PICKLED_UNCOMPILED: dict[type, Callable[[Any], Any]] = {
    **copyreg.dispatch_table,
    types.ModuleType: lambda module: (importlib.import_module, (module.__name__,)),
    Action: lambda action: action.name,  # a global's name: Shift or Reduce
}
_PICKLED = dict(_PICKLED_UNCOMPILED)
if _CODE is not None:
    _PICKLED[re.Pattern] = _compiled_code
