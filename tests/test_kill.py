"""A build killed with SIGKILL (no cleanup, no Ctrl-C handler) at any moment loses nothing:
``--resume`` continues from the last complete epoch, a checkpoint half-written at the kill
is never read (and is removed on the next start), and the finished run equals an
uninterrupted one with the same seed."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# wide enough that writing a checkpoint (weights and Adam's moments, ~13 MB) takes a while
SPEC = """\
model Wide {
    input x: float[4]
    Linear(1024)
    ReLU
    Linear(1024)
    ReLU
    Linear(3)
    train { epochs = 6  batch_size = 16  val_split = 0.25  seed = 3 }
}
"""


def _command(spec: Path, data: Path, out: Path, *extra: str) -> list[str]:
    build = ["build", str(spec), "--out", str(out), "--data", str(data), "-q", "--no-plots"]
    return [sys.executable, "-m", "dlspec", *build, *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}  # the same arithmetic in every process


def _finish(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=600)
    assert result.returncode == 0, result.stderr


def _kill_when(command: list[str], ready: Callable[[], bool], delay: float = 0.0) -> None:
    """Start ``command`` and SIGKILL it ``delay`` s after ``ready()`` turns true (polled)."""
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env()
    )
    try:
        deadline = time.monotonic() + 300
        while not ready() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(delay)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


def _temporaries(out: Path) -> list[Path]:
    return sorted(out.glob(".checkpoint.pt.*.tmp"))


def _result(out: Path) -> tuple[Any, Any]:
    metrics = json.loads((out / "metrics.json").read_text())
    epochs = [{k: v for k, v in e.items() if k != "seconds"} for e in metrics["epochs"]]
    return epochs, metrics["test"]


def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    spec = tmp_path / "wide.dl"
    spec.write_text(SPEC)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 4)).astype(np.float32)
    data = tmp_path / "data.npz"
    np.savez(data, x=x, y=(x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5))

    straight = tmp_path / "straight"
    _finish(_command(spec, data, straight))

    out = tmp_path / "killed"
    checkpoint = out / "checkpoint.pt"
    # 1. during a checkpoint write: the moment its temporary file appears (after epoch 1 or
    #    later), so the kill leaves it half-written
    _kill_when(_command(spec, data, out), lambda: bool(_temporaries(out)) and checkpoint.exists())
    assert _temporaries(out), "the kill should have interrupted a checkpoint write"
    # 2. during an epoch: a random moment after a resumed run wrote its next checkpoint
    written = checkpoint.stat().st_mtime_ns
    _kill_when(
        _command(spec, data, out, "--resume"),
        lambda: checkpoint.stat().st_mtime_ns != written,
        delay=random.Random(0).uniform(0.0, 0.2),
    )
    # 3. resume to the end
    _finish(_command(spec, data, out, "--resume"))
    assert not _temporaries(out)
    assert _result(out) == _result(straight)
