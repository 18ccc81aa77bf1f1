"""`make demo` installs only what dlspec needs to run; `make test` adds the dev tools."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT


def dry_run(tmp_path: Path, target: str) -> str:
    """What ``make TARGET`` would run on a fresh clone (no .venv yet)."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    done = subprocess.run(
        ["make", "-n", target], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    return done.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_demo_checks_first_and_installs_runtime_dependencies_only(tmp_path: Path) -> None:
    demo = dry_run(tmp_path, "demo")
    # the first check needs only lark and pydantic (at pyproject's versions): it runs before
    # torch and the rest are installed
    check = demo.index("dlspec check specs/cnn.dl")
    assert demo.index("pip install -q --no-deps -e .") < check < demo.index("torch==")
    assert "grep -oE '\"(lark|pydantic)" in demo
    assert "pip install -q -e .\n" in demo[check:]
    assert "[dev]" not in demo
    test = dry_run(tmp_path, "test")
    assert "pip install -q -e .\n" in test and "pip install -q -e '.[dev]'" in test
    assert test.index("'.[dev]'") < test.index("ruff format --check")


def test_checker_requirements_are_in_pyproject() -> None:
    """The Makefile's first step reads lark's and pydantic's versions from pyproject."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    found = re.findall(r'"((?:lark|pydantic)[<>=!~][^"]*)"', pyproject)
    assert [f.split(">")[0] for f in found] == ["lark", "pydantic"]
