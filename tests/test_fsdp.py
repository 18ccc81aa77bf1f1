"""Sharded training: ``dlspec build --nproc-per-node N --strategy fsdp`` and the figures
``dlspec plan --gpus N --strategy fsdp`` gives for it.

The jobs are real: 2 processes on the CPU (gloo), a spec whose two block uses are FSDP
units, on the embedded digits, without dropout or augmentation, so that the sharded run must
follow the single-process one: the same global batch is cut into 2 shares, each process's
loss weighted by its share, and FSDP's reduce-scatter averages the gradients.

Tolerance: every epoch's losses and the test loss within 1e-5 relative of the single-process
run (measured: <= 1e-7, float32 summation order); a run killed and resumed with the same
number of processes equals the uninterrupted one exactly.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import dlspec
from dlspec.analysis import memory
from dlspec.cli import main

ROOT = Path(__file__).resolve().parents[1]
RELATIVE = 1e-5
JOB_SECONDS = 120  # a job that takes longer has hung: the test fails rather than waits
SPEC = """\
block Mix(width: int) {
    residual {
        LayerNorm
        Linear(2 * width)
        GELU
        Linear(width)
    }
}

model Sharded(width: int = 24, depth: int = 2) {
    input pixels: float[64]
    embed = Linear(width)
    mix = Mix(width) * depth
    head = Linear(10)
    train { epochs = 2  batch_size = 64  optimizer = AdamW(lr=3e-3)  seed = 1 }
}
"""
# one training step in each of 2 processes, then what each holds, written as JSON
MEASURE = """\
import json, sys
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
import dlspec
from dlspec.analysis.memory import shard_units
from dlspec.train.distributed import shard_model
from dlspec.train.loop import make_optimizer

rank = int(sys.argv[3])
dist.init_process_group("gloo", init_method=f"file://{sys.argv[2]}/store", rank=rank, world_size=2)
spec = dlspec.load(sys.argv[1])
torch.manual_seed(0)
model = spec.to_torch()
shard_model(model, [unit.path for unit in shard_units(spec.graph)], None, torch.device("cpu"))
optimizer = make_optimizer(model, spec.graph.train.optimizer)
model(torch.randn(4, 64)).square().mean().backward()
optimizer.step()
params = dict(model.named_parameters())
states = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, DTensor)]
held = {
    "elements": {name: p.to_local().numel() for name, p in params.items()},
    "weights": sum(4 * p.to_local().numel() for p in params.values()),
    "gradients": sum(4 * p.grad.to_local().numel() for p in params.values()),
    "optimizer": sum(v.to_local().numel() * v.element_size() for v in states),
    "sharded": all(isinstance(p, DTensor) for p in params.values()) and len(states) > 0,
}
with open(f"{sys.argv[2]}/{rank}.json", "w") as file:
    json.dump(held, file)
dist.destroy_process_group()
"""


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _build(spec: Path, out: Path, processes: int, *extra: str) -> list[str]:
    options = ["--device", "cpu", "--no-plots", "-q", "--strategy", "fsdp"]
    build = ["build", str(spec), "--out", str(out), *options]
    return [sys.executable, "-m", "dlspec", *build, "--nproc-per-node", str(processes), *extra]


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        command, capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=JOB_SECONDS
    )
    assert done.returncode == 0, done.stderr
    return done


def _metrics(out: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    data = json.loads((out / "metrics.json").read_text())
    epochs = [{k: v for k, v in e.items() if k != "seconds"} for e in data["epochs"]]
    return epochs, data["test"]


def _same_losses(actual: Path, expected: Path) -> None:
    (epochs, test), (want, want_test) = _metrics(actual), _metrics(expected)
    assert len(epochs) == len(want)
    for got, ref in zip(epochs, want, strict=True):
        for key in ("train_loss", "val_loss"):
            assert got[key] == pytest.approx(ref[key], rel=RELATIVE), key
    assert test["loss"] == pytest.approx(want_test["loss"], rel=RELATIVE)


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "sharded.dl"
    path.write_text(SPEC)
    return path


@pytest.fixture(scope="module")
def one_process(spec: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("one-process")
    assert main(["build", str(spec), "--out", str(out), "--device", "cpu", "--no-plots"]) == 0
    return out


@pytest.fixture(scope="module")
def two_sharded(spec: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("two-sharded")
    _run(_build(spec, out, 2))
    return out


def test_two_sharded_processes_train_like_one(
    spec: Path, one_process: Path, two_sharded: Path, tmp_path: Path
) -> None:
    data = json.loads((two_sharded / "metrics.json").read_text())
    assert (data["processes"], data["config"]["strategy"]) == (2, "fsdp")
    _same_losses(two_sharded, one_process)
    # the plain state_dict beside the shards: what export (and so predict) reads
    weights = ["--weights", str(two_sharded / "checkpoint.pt")]
    assert main(["export", str(spec), *weights, "--out", str(tmp_path / "m.onnx")]) == 0
    assert [p.name for p in (two_sharded / "checkpoint.shards").iterdir()] == ["epoch-2"]


def test_accumulated_parts_in_sharded_processes_train_like_one(
    spec: Path, one_process: Path, tmp_path: Path
) -> None:
    """Gradient accumulation under FSDP: each rank's share of a batch runs as two parts, the
    gradients reduce-scattered once, after the last."""
    out = tmp_path / "accumulated"
    _run(_build(spec, out, 2, "--train", "accumulate=2"))
    _same_losses(out, one_process)


def test_each_process_holds_its_shard_as_plan_counts_it(spec: Path, tmp_path: Path) -> None:
    script = tmp_path / "measure.py"
    script.write_text(MEASURE)
    command = [sys.executable, str(script), str(spec), str(tmp_path)]
    ranks = [subprocess.Popen([*command, str(rank)], env=_env(), cwd=ROOT) for rank in (0, 1)]
    assert [process.wait(timeout=JOB_SECONDS) for process in ranks] == [0, 0]
    held = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    assert all(h["sharded"] for h in held)
    graph = dlspec.load(spec).graph
    # every parameter cut in 2 along its first dimension, as torch.chunk cuts it
    shapes = [shape for leaf in graph.leaves() for shape in leaf.weights.values()]
    whole = dict(dlspec.load(spec).to_torch().named_parameters())
    assert set(held[0]["elements"]) == set(whole)
    for name, parameter in whole.items():
        pieces = [p.numel() for p in parameter.chunk(2)]
        assert [h["elements"][name] for h in held] == pieces, name
    assert sorted(map(tuple, shapes)) == sorted(tuple(p.shape) for p in whole.values())
    # rank 0 holds the larger shards: the bytes plan counts per GPU, exactly
    step = memory.training(graph, "fp32", "adamw", parallel=memory.Parallel(2, "fsdp"))
    assert held[0]["weights"] == step.weights - 4 * graph.buffer_count
    assert held[0]["gradients"] == step.gradients
    assert held[0]["optimizer"] == step.optimizer
    assert held[0]["weights"] + held[1]["weights"] == 4 * graph.trainable_params


def _workers(launcher: int) -> dict[int, int]:
    """The torchrun workers of the launcher process ``launcher``: rank -> pid."""
    children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    ranks = {}
    for pid in map(int, children):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        rank = next((v[5:] for v in environ if v.startswith(b"RANK=")), None)
        if rank is not None:
            ranks[int(rank)] = pid
    return ranks


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the workers in /proc")
def test_a_rank_killed_mid_run_resumes_with_the_same_or_another_number_of_processes(
    spec: Path, one_process: Path, two_sharded: Path, tmp_path: Path
) -> None:
    out = tmp_path / "killed"
    checkpoint = out / "checkpoint.pt"
    launcher = subprocess.Popen(
        _build(spec, out, 2),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + JOB_SECONDS
        while not checkpoint.exists() and launcher.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint was written"
            time.sleep(0.001)
        time.sleep(random.Random(0).uniform(0.0, 0.1))  # somewhere in the last epoch
        os.kill(_workers(launcher.pid)[1], signal.SIGKILL)
        _, err = launcher.communicate(timeout=JOB_SECONDS)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert launcher.returncode == 1
    assert "process 1 of 2 was killed by signal SIGKILL" in err
    assert not (out / "metrics.json").exists()  # killed before the end
    other, alone = tmp_path / "in-one", tmp_path / "alone"
    shutil.copytree(out, other)
    shutil.copytree(out, alone)

    _run(_build(spec, out, 2, "--resume"))
    assert _metrics(out) == _metrics(two_sharded)  # as if never killed
    _run(_build(spec, other, 1, "--resume"))  # resharded from 2 processes to 1
    _same_losses(other, one_process)
    # and in one plain process: the weights from checkpoint.pt, Adam's moments from the shards
    resume = ["build", str(spec), "--out", str(alone), "--resume", "--device", "cpu"]
    assert main([*resume, "--no-plots", "-q"]) == 0
    _same_losses(alone, one_process)
