"""No file of the tree holds a merge's conflict markers (the README once shipped with one)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import ROOT

from dlspec.docs import conflict_markers as markers

OPEN, CLOSE, MIDDLE = "<" * 7, ">" * 7, "=" * 7


def tracked_files() -> list[Path]:
    """The checkout's files (git's list where there is one, else every file)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout.decode()
        return [ROOT / name for name in listed.split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "build", "runs", "__pycache__"}
        return [p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.parts)]


def test_no_conflict_markers_in_the_tree() -> None:
    found = []
    for path in tracked_files():
        try:
            data = path.read_bytes()
        except OSError:  # listed but gone (a deletion not yet committed)
            continue
        if b"\0" in data[:8192]:
            continue  # binary
        lines = markers(data.decode("utf-8", errors="replace"))
        found += [f"{path.relative_to(ROOT)}:{line}" for line in lines]
    assert not found, "merge conflict markers: " + ", ".join(found)


def test_the_check_sees_a_conflict() -> None:
    text = f"a\n{OPEN} ours\nb\n{MIDDLE}\nc\n{CLOSE} theirs\nd\n{MIDDLE}\n"
    assert markers(text) == [2, 6]
    assert markers(f"Title\n{MIDDLE}\n") == []  # a Markdown heading
    assert markers(f"x = 1  # {OPEN} not at a line's start\n") == []
