"""The README is the manual: its generated tables are current, and every `$ ` command in its
console blocks runs and prints what the README shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from dlspec.docs import render

README = (ROOT / "README.md").read_text(encoding="utf-8")


def console_commands() -> list[tuple[str, list[str]]]:
    commands = []
    for block in re.findall(r"```console\n(.*?)```", README, re.S):
        current: tuple[str, list[str]] | None = None
        for line in block.splitlines():
            if line.startswith("$ "):
                current = (line[2:], [])
                commands.append(current)
            elif current is not None:
                current[1].append(line)
    return commands


# Commands whose figures depend on timing or floating-point details of the machine: their
# output must have the README's lines and layout, with any numbers.
MEASURED = (
    "dlspec build",
    "dlspec export",
    "dlspec bench",
    "dlspec predict",
    "dlspec sample",
    "mkdir -p build/import && dlspec import",
)


def _mask(lines: list[str]) -> list[str]:
    return [" ".join(re.sub(r"\d[\d,]*(\.\d+)?", "#", line).split()) for line in lines]


def matches(command: str, expected: list[str], actual: list[str]) -> bool:
    """Line-by-line equality; numbers masked for MEASURED commands."""
    if command.startswith(MEASURED):
        return _mask(expected) == _mask(actual)
    return expected == actual


def test_generated_sections_are_current() -> None:
    assert render(README) == README, "run `make docs`"


@pytest.mark.parametrize(("command", "expected"), console_commands(), ids=lambda c: str(c)[:60])
def test_readme_command(command: str, expected: list[str], tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["COLUMNS"] = "100"
    result = subprocess.run(
        ["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    actual = (result.stdout + result.stderr).rstrip("\n").splitlines()
    assert matches(command, expected, actual), (
        "README shows:\n" + "\n".join(expected) + "\n\ngot:\n" + (result.stdout + result.stderr)
    )
