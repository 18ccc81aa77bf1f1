"""Benchmarks run, or they rot: every script in bench/ runs at its tiny size (``--smoke``), and
bench/gpu_check.sh runs end to end on the CPU (``--dry-run``). `make bench-smoke` runs these
alone; `make test` runs them with the rest."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

BENCH = ROOT / "bench"
# every bench script (seed_net.py is a module they import); gpu_check.py runs through
# gpu_check.sh, below
SCRIPTS = sorted(
    path.name
    for path in BENCH.glob("*.py")
    if "__main__" in path.read_text() and path.name != "gpu_check.py"
)


def run(command: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``command`` from ``tmp_path``, this checkout's dlspec first on the path, one thread."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)


def test_every_bench_script_is_smoke_tested() -> None:
    assert len(SCRIPTS) >= 9 and "train_speed.py" in SCRIPTS and "seed_net.py" not in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_runs_at_its_tiny_size(script: str, tmp_path: Path) -> None:
    done = run([sys.executable, str(BENCH / script), "--smoke"], tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.strip(), "a bench prints its figures"
    assert not list(tmp_path.iterdir()), "a bench writes only under temporary directories"


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_gpu_check_runs_everything_but_cuda_in_a_dry_run(tmp_path: Path) -> None:
    done = run(["bash", str(BENCH / "gpu_check.sh"), "--dry-run"], tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    table = done.stdout
    for check in ("MY_NET training, fp32", "MY_NET training, bf16", "MY_NET inference, batch 2",
                  "DDP, world size 1", "FSDP, world size 1", "diffusion trainer",
                  "plan peak, tiny_gpt.dl"):  # fmt: skip
        assert check in table, check
    assert "gloo" in table and "FAILED" not in table
    assert "6 checks" in table and ", 0 failed" in table


def test_gpu_check_without_cuda_says_to_dry_run(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = run(["bash", str(BENCH / "gpu_check.sh")], tmp_path)
    assert done.returncode == 2 and "--dry-run" in done.stderr
    assert "Traceback" not in done.stderr
