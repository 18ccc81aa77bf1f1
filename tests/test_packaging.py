"""`pip install .` (not editable) gives a working `dlspec check`: the grammar is in the wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import ROOT


def test_wheel_carries_grammar_and_checks(tmp_path: Path) -> None:
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), "."],
        cwd=ROOT,
        check=True,
    )
    wheel = next((tmp_path / "dist").glob("dlspec-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "dlspec/grammar/dlspec.lark" in names
    # the HTML viewer's page, style and program (`dlspec draw --format html`)
    assert {f"dlspec/backends/viewer/viewer.{ext}" for ext in ("html", "css", "js")} <= set(names)
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    # Run from a directory with no source tree around: the installed copy must stand alone.
    spec = tmp_path / "net.dl"
    spec.write_text((ROOT / "specs" / "cnn.dl").read_text())
    env = dict(os.environ, PYTHONPATH=str(site))
    code = (
        "import dlspec, sys; from dlspec.cli import main; "
        f"assert dlspec.__file__.startswith({str(site)!r}), dlspec.__file__; "
        "sys.exit(main(['check', 'net.dl']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "total params       9,536,074" in result.stdout
