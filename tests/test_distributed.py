"""Distributed training: ``dlspec build --nproc-per-node`` and ``torchrun -m dlspec build``.

The jobs are real: 2 processes on the CPU (gloo over loopback, a free port), specs/mlp.dl on
the embedded digits without dropout (``--set p=0``) and without augmentation, so that they
must follow the single-process run: the same global batch of 64 is cut into 2 shares of 32
(the last, 13 samples, into 7 and 6) and the gradients are averaged by share.

Tolerance: every epoch's training and validation loss, and the test loss, within 1e-5
relative of the single-process run (measured on this machine: <= 2e-6 over 5-10 epochs, the
difference being float32 summation order in the all-reduce); accuracies within 2 samples
(measured: identical).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from dlspec.cli import main
from dlspec.train.distributed import FAULT_VARIABLE, TIMEOUT_VARIABLE, shares
from dlspec.train.launch import Worker, current_worker, is_main_process

ROOT = Path(__file__).resolve().parents[1]
MLP = str(ROOT / "specs" / "mlp.dl")
# on the CPU (gloo), without dropout: nothing random but the order
RUN = [MLP, "--set", "p=0", "--device", "cpu", "--no-plots"]
TWO_PROCESSES = ["-m", "dlspec", "build", *RUN, "--nproc-per-node", "2"]  # after `python`
RELATIVE = 1e-5
JOB_SECONDS = 90  # a job that takes longer has hung: the test fails rather than waits


def metrics(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "metrics.json").read_text())
    return data


def assert_same_epoch(actual: dict[str, Any], expected: dict[str, Any], samples: int) -> None:
    for key in ("train_loss", "val_loss"):
        assert actual[key] == pytest.approx(expected[key], rel=RELATIVE), key
    for key in ("train_accuracy", "val_accuracy"):
        assert abs(actual[key] - expected[key]) <= 2 / samples, key


def job(command: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """``python COMMAND...`` with ``env`` added to the environment, run to its end; a job
    still running after JOB_SECONDS has hung: it is killed, with its workers, and fails."""
    with subprocess.Popen(
        [sys.executable, *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
        start_new_session=True,  # its own process group: the workers go with it
    ) as process:
        try:
            out, err = process.communicate(timeout=JOB_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"hung for {JOB_SECONDS} s: {' '.join(command)}")
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """metrics.json of the single-process run, 2 epochs."""
    out = tmp_path_factory.mktemp("one-process")
    assert main(["build", *RUN, "--epochs", "2", "--out", str(out)]) == 0
    return metrics(out)


# ---------------------------------------------------------------------------------------------
# the pieces


@pytest.mark.parametrize(("samples", "size", "processes"), [(10, 4, 2), (13, 5, 3), (9, 4, 2)])
def test_shares_cover_every_batch_once_with_weights_that_average_to_the_batch(
    samples: int, size: int, processes: int
) -> None:
    batches = list(torch.randperm(samples).split(size))
    parts = [shares(batches, rank, processes) for rank in range(processes)]
    steps = len(parts[0])
    assert all(len(p) == steps for p in parts)  # every process takes every step
    # a last batch smaller than the processes joined the one before it
    assert steps == len(batches) - (len(batches[-1]) < processes)
    for step in range(steps):
        pieces = [parts[rank][step] for rank in range(processes)]
        sizes = [len(part) for part, _ in pieces]
        assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
        # weight_r / processes = n_r / n: the processes' mean gradients average to the batch's
        assert sum(weight for _, weight in pieces) == pytest.approx(processes)
        for part, weight in pieces:
            assert weight / processes == pytest.approx(len(part) / sum(sizes))
    everything = torch.cat([part for rank in range(processes) for part, _ in parts[rank]])
    assert sorted(everything.tolist()) == list(range(samples))


def test_the_worker_comes_from_torchruns_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert current_worker() is None and is_main_process()
    for name, value in {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert current_worker() == Worker(rank=3, local_rank=1, world_size=4, local_world_size=2)
    assert not is_main_process()


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_process_count_is_a_usage_error(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["build", *RUN, "--out", str(tmp_path), "--nproc-per-node", value])
    assert stop.value.code == 2
    assert "--nproc-per-node" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--nproc-per-node", "4096"], "CPU core"),
        (["--nproc-per-node", "1", "--nnodes", "2"], "needs --master-addr"),
        (["--nproc-per-node", "1", "--nnodes", "2", "--node-rank", "2"], "expected 0 .. 1"),
        (["--nnodes", "2", "--master-addr", "10.0.0.1"], "need --nproc-per-node"),
    ],
)
def test_launcher_options_that_cannot_work_are_usage_errors(
    options: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["build", *RUN, "--out", str(tmp_path), *options])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "model.py").exists()  # nothing started


def test_build_without_training_starts_no_processes(tmp_path: Path) -> None:
    assert main(["build", MLP, "--no-train", "--out", str(tmp_path), "--nproc-per-node", "2"]) == 0
    assert (tmp_path / "model.py").exists()


def test_the_build_command_does_not_import_torch() -> None:
    probe = "import sys, dlspec.commands.build; assert 'torch' not in sys.modules"
    assert job(["-c", probe]).returncode == 0


# ---------------------------------------------------------------------------------------------
# real jobs: 2 processes on the CPU


def test_two_processes_train_like_one_and_resume_in_one(
    reference: dict[str, Any], tmp_path: Path
) -> None:
    done = job([*TWO_PROCESSES, "--epochs", "1", "--out", str(tmp_path)])
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("test loss") == 1  # rank 0 alone reports
    assert {p.name for p in tmp_path.iterdir()} == {"model.py", "checkpoint.pt", "metrics.json"}
    two = metrics(tmp_path)
    assert (two["processes"], two["backend"]) == (2, "gloo")
    samples = two["data"]["sizes"]["train"]
    assert_same_epoch(two["epochs"][0], reference["epochs"][0], samples)

    # the 2-process checkpoint resumes in one process, as the uninterrupted run continues
    assert main(["build", *RUN, "--epochs", "2", "--resume", "--out", str(tmp_path)]) == 0
    resumed = metrics(tmp_path)
    assert "processes" not in resumed
    assert_same_epoch(resumed["epochs"][1], reference["epochs"][1], samples)
    assert resumed["test"]["loss"] == pytest.approx(reference["test"]["loss"], rel=RELATIVE)


def test_torchrun_resumes_a_one_process_checkpoint_in_two(
    reference: dict[str, Any], tmp_path: Path
) -> None:
    assert main(["build", *RUN, "--epochs", "1", "--out", str(tmp_path)]) == 0
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    build = ["-m", "dlspec", "build", *RUN, "--epochs", "2", "--resume", "--out", str(tmp_path)]
    done = job([*torchrun, *build])
    assert done.returncode == 0, done.stderr
    resumed = metrics(tmp_path)
    assert resumed["processes"] == 2
    samples = resumed["data"]["sizes"]["train"]
    assert_same_epoch(resumed["epochs"][1], reference["epochs"][1], samples)
    assert resumed["test"]["loss"] == pytest.approx(reference["test"]["loss"], rel=RELATIVE)


def test_a_rank_that_fails_ends_the_job_with_its_error(tmp_path: Path) -> None:
    command = [*TWO_PROCESSES, "--epochs", "2", "--out", str(tmp_path)]
    # the failing rank writes its crash log under the temporary folder: this test's own
    done = job(command, **{FAULT_VARIABLE: "1:raise", "TMPDIR": str(tmp_path)})
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    # the injected exception is unexpected: the rank reports an internal error (exit 70)
    assert last.startswith("dlspec build: process 1 of 2 failed with exit code 70: RuntimeError")
    assert "rank 1 fails on purpose" in last
    assert not (tmp_path / "metrics.json").exists()


def test_a_rank_that_stops_answering_times_the_job_out(tmp_path: Path) -> None:
    command = [*TWO_PROCESSES, "--epochs", "2", "--out", str(tmp_path)]
    done = job(command, **{FAULT_VARIABLE: "1:hang", TIMEOUT_VARIABLE: "3"})
    assert done.returncode == 1
    assert "lost contact with the other processes" in done.stderr
    assert "did not answer within 3 s" in done.stderr
    # rank 0 (or, should rank 0 get there first under load, rank 1 waiting for it to start)
    assert re.search(r"dlspec build: process [01] of 2 failed with exit code 1", done.stderr)
