"""What `dlspec check` does before it checks: the analyzed grammar cached in the user's cache
folder only, and nothing imported or looked up that a check does not need."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


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
