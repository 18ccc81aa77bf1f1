"""No file of the tree holds a merge's conflict markers (the README once shipped with one)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from conftest import ROOT

# a line that opens a conflict, starts diff3's base or closes it (the divider "=======" is
# also Markdown's heading underline; a conflict always has the others)
OPEN, BASE, CLOSE, MIDDLE = ("<" * 7, "|" * 7, ">" * 7, "=" * 7)
MARKER = re.compile(rf"^({re.escape(OPEN)}|{re.escape(BASE)}|{re.escape(CLOSE)})( |$)", re.M)


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


def markers(text: str) -> list[int]:
    """The 1-based lines of conflict markers in ``text``."""
    return [text.count("\n", 0, m.start()) + 1 for m in MARKER.finditer(text)]


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
