"""What `dlspec check` does before it checks: the analyzed grammar cached in the user's cache
folder only, and nothing imported or looked up that a check does not need."""

from __future__ import annotations

import _sre
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from lark import Lark, Token
from lark.exceptions import UnexpectedInput

from dlspec.syntax import parser_cache
from dlspec.syntax.parser import grammar_text


def check(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``dlspec check`` in a fresh process whose cache folder is ``cache``."""
    return subprocess.run(
        [sys.executable, "-m", "dlspec", "check", "-q", *args],
        cwd=ROOT,
        env=dict(os.environ, DLSPEC_CACHE=str(cache)),
        capture_output=True,
        text=True,
    )


def test_the_analyzed_grammar_is_cached_in_the_cache_folder_and_read_back(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert check(cache, "specs/mlp.dl").returncode == 0
    [kept] = cache.iterdir()  # made by the first run, with the folder
    assert kept.name.startswith("grammar-") and kept.stat().st_size > 0
    written = kept.stat().st_mtime_ns
    assert check(cache, "specs/mlp.dl").returncode == 0
    assert kept.stat().st_mtime_ns == written  # read, not made again


def test_a_kept_parser_that_does_not_load_is_made_again(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert check(cache, "specs/mlp.dl").returncode == 0
    [kept] = cache.iterdir()
    kept.write_bytes(b"not a pickle")  # cut short, or written by another version
    result = check(cache, "specs/mlp.dl")
    assert result.returncode == 0, result.stderr
    assert [p.name for p in cache.iterdir()] == [kept.name] and kept.stat().st_size > 100


def _parsed(parser: Lark, text: str) -> object:
    """The parse tree, flat (some error tests nest too deep to compare trees), or the error."""
    try:
        tree = parser.parse(text)
    except UnexpectedInput as error:
        return type(error), error.line, error.column
    return [(t.data, [_leaf(c) for c in t.children]) for t in tree.iter_subtrees_topdown()]


def _leaf(child: object) -> object:
    """A token with its place, or a subtree's rule (the subtree is compared on its own)."""
    if isinstance(child, Token):
        return child.type, str(child), child.line, child.column
    return getattr(child, "data", child)


def test_the_kept_parser_parses_as_one_made_anew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its tables and its lexers, pickled compiled, load back as they were made: every spec,
    and every spec of the error tests (syntax errors too), parses alike."""
    monkeypatch.setenv("DLSPEC_CACHE", str(tmp_path))
    made = parser_cache.parser(grammar_text())
    kept = parser_cache.parser(grammar_text())
    assert kept is not made
    paths = [*ROOT.glob("specs/*.dl"), *ROOT.glob("tests/errors/*.dl")]
    texts = [p.read_bytes().decode(errors="replace") for p in paths]
    assert len(texts) > 40
    assert [_parsed(kept, t) for t in texts] == [_parsed(made, t) for t in texts]


def test_check_works_where_no_cache_can_be_kept(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder would be")
    result = check(blocked / "cache", "specs/mlp.dl")
    assert result.returncode == 0, result.stderr
    assert sorted(tmp_path.iterdir()) == [blocked]


def _run(code: str) -> list[str]:
    """The words ``code`` prints in a fresh Python."""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, **TEXT)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


TEXT: dict[str, bool] = {"capture_output": True, "text": True}


def test_check_imports_nothing_only_other_paths_need() -> None:
    """Not pydantic beyond its core (BaseModel's machinery, and with it importlib.metadata for
    its plugin discovery), nor what only a child process (signal, resource, selectors) or a
    misspelt name (difflib) needs."""
    unneeded = ("pydantic.main", "importlib.metadata", "signal", "resource", "selectors", "difflib")
    code = (
        "import sys; from dlspec.cli import main; rc = main(['check', '-q', 'specs/cnn.dl']); "
        f"print(rc, *[m for m in {unneeded!r} if m in sys.modules])"
    )
    assert _run(code) == ["0"]


def test_the_program_lets_the_collector_ignore_what_it_imported() -> None:
    """Run as the program, a check freezes its imports (gc.freeze); run for a caller with
    ``argv``, it leaves the caller's collector as it was."""
    code = (
        "import gc, sys; from dlspec.cli import main; "
        "main(['check', '-q', 'specs/mlp.dl']); called = gc.get_freeze_count(); "
        "sys.argv = ['dlspec', 'check', '-q', 'specs/mlp.dl']; main(); "
        "print(called, gc.get_freeze_count() > 0, gc.isenabled())"
    )
    assert _run(code) == ["0", "True", "True"]


def test_lexers_that_would_not_load_back_compiled_are_kept_uncompiled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a Python whose ``_sre`` takes compiled code otherwise, the file still loads."""
    made = parser_cache._make(grammar_text())
    broken = {**parser_cache._PICKLED, re.Pattern: lambda regex: (_sre.compile, ("no code",))}
    monkeypatch.setattr(parser_cache, "_PICKLED", broken)
    parser_cache._keep(made, str(tmp_path / "kept"))
    loaded = parser_cache._load(str(tmp_path / "kept"))
    text = (ROOT / "specs" / "cnn.dl").read_text()
    assert loaded is not None and _parsed(loaded, text) == _parsed(made, text)
