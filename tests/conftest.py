"""Shared test helpers: golden files (set DLSPEC_REGEN_GOLDEN=1 to rewrite them)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import configuration, settings

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.dl"))
REGEN = os.environ.get("DLSPEC_REGEN_GOLDEN") == "1"

# property tests keep no example database in the working directory, and Hypothesis's caches
# go to a temporary directory (tests write only under temporary directories)
settings.register_profile("dlspec", database=None)
settings.load_profile("dlspec")
_HYPOTHESIS_HOME = Path(tempfile.mkdtemp(prefix="dlspec-hypothesis-"))
# and so does dlspec's own cache (the analyzed grammar), for the tests and the processes they
# start
_CACHE = Path(tempfile.mkdtemp(prefix="dlspec-cache-"))
os.environ["DLSPEC_CACHE"] = str(_CACHE)


def pytest_configure(config: pytest.Config) -> None:
    configuration.set_hypothesis_home_dir(_HYPOTHESIS_HOME)  # before collection caches


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_HYPOTHESIS_HOME, ignore_errors=True)
    shutil.rmtree(_CACHE, ignore_errors=True)


def assert_golden(path: Path, actual: str) -> None:
    """Compare ``actual`` with the golden file byte for byte (or rewrite it under REGEN)."""
    if REGEN or not path.exists():
        if not REGEN:
            pytest.fail(f"missing golden file {path}; run with DLSPEC_REGEN_GOLDEN=1")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
        return
    expected = path.read_text(encoding="utf-8")
    assert actual == expected, f"{path.name} differs from its golden file (DLSPEC_REGEN_GOLDEN=1)"
