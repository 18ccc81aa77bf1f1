"""Hostile input: what a careless or malicious user types or feeds in gives a diagnostic and an
exit code, never a traceback, a hang, a wrong success or a damaged run directory.

Spec-level limits (nesting, literals, layer budget, a layer reading its own output) are
golden cases in ``tests/errors/``; here are the command-level ones: special files, undecodable
argv, memory refused before allocating, damaged data and checkpoints, diverging training, the
run directory's lock and temporary files, and text from data on a terminal and in code.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from dlspec.api import load
from dlspec.cli import main
from dlspec.files import DirectoryLock
from dlspec.terminal import printable
from dlspec.train.checkpoint import load_checkpoint, spec_hash
from dlspec.train.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--quiet", "--no-plots", "--epochs", "1"]

SMALL = """\
model Small(num_classes: int = 3, tag: str = "run") {
    input x: float[4]
    Linear(8)
    ReLU
    Linear(num_classes)
    train { val_split = 0  batch_size = 16 }
}
"""

HUGE = """\
model Huge {
    input x: float[100000]
    wide = Linear(400000)
    Linear(400000)
}
"""


def cli(*args: str | os.PathLike[str]) -> int:
    return main([str(a) for a in args])


def dlspec(*args: str | bytes, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """The command line in a fresh process (argv may hold bytes that are not UTF-8)."""
    command = [sys.executable, "-m", "dlspec", *args]
    return subprocess.run(command, capture_output=True, timeout=timeout, check=False)


@pytest.fixture
def small(tmp_path: Path) -> tuple[Path, Path]:
    """A small classifier spec and an .npz of 96 samples of 3 classes for it."""
    spec = tmp_path / "small.dl"
    spec.write_text(SMALL)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 4)).astype(np.float32)
    data = tmp_path / "data.npz"
    np.savez(data, x=x, y=(x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1))
    return spec, data


# files and argv ------------------------------------------------------------------------------


def test_a_fifo_as_the_spec_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "spec.dl"
    os.mkfifo(fifo)
    result = dlspec("check", str(fifo), timeout=30)  # reading it would block forever
    assert result.returncode == 2
    assert b"not a regular file" in result.stderr and b"Traceback" not in result.stderr


def test_undecodable_argv_with_json_output_is_valid_json() -> None:
    spec = str(ROOT / "specs" / "cnn.dl")
    result = dlspec("check", spec, "--set", b"num_classes=\xff\xfe", "--format", "json")
    assert result.returncode == 2
    report = json.loads(result.stdout)  # valid JSON, the bad bytes escaped
    assert "\udcff" in report["diagnostics"][0]["message"]
    assert b"Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["build", "export", "bench"])
def test_a_model_too_large_for_memory_is_refused_before_allocating(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "huge.dl"
    spec.write_text(HUGE)
    out = tmp_path / "out"
    options = {"build": ["--out", out], "export": ["--out", out / "m.onnx"], "bench": []}
    assert cli(command, spec, *options[command], "--max-memory", "64G") == 1
    err = capsys.readouterr().err
    assert "error[E604]" in err and "--max-memory" in err and "GiB" in err
    assert not (out / "model.py").exists() and not (out / "m.onnx").exists()


def test_max_memory_raises_the_limit(tmp_path: Path) -> None:
    spec = tmp_path / "huge.dl"
    spec.write_text(HUGE)
    assert cli("build", spec, "--out", tmp_path / "o", "--no-train", "--max-memory", "2P") == 0


def test_max_layers_sets_the_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # copies that differ are each analysed: check counts them
    grow = tmp_path / "grow.dl"
    grow.write_text("model M {\n input x: float[4, 8]\n Conv1d(4, 1, padding=1) * 50\n}\n")
    assert cli("check", grow, "--max-layers", "40") == 1
    assert "50 layers, more than the limit of 40" in capsys.readouterr().err
    assert cli("check", grow, "--max-layers", "50") == 0
    # alike copies are analysed once, but building the model makes each of them
    spec = tmp_path / "stack.dl"
    spec.write_text("model M {\n input x: float[4]\n Linear(4) * 50\n}\n")
    assert cli("check", spec, "--max-layers", "1") == 0
    capsys.readouterr()
    assert cli("build", spec, "--out", tmp_path / "o", "--max-layers", "40") == 1
    err = capsys.readouterr().err
    assert "error[E601]" in err and "50 layers, more than the limit of 40" in err
    assert not (tmp_path / "o" / "model.py").exists()


# data and checkpoints ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[: len(b) // 2], "cannot read .npz file"),
        (lambda b: b[:200] + b"\0" * 64 + b[264:], "cannot read .npz file"),
        (lambda b: b"not a zip file", "cannot read .npz file"),
    ],
    ids=["truncated", "corrupt", "not-npz"],
)
def test_damaged_npz_data_names_the_file(
    small: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], damage, message
) -> None:
    spec, data = small
    data.write_bytes(damage(data.read_bytes()))
    assert cli("build", spec, "--out", tmp_path / "out", "--data", data, *FAST) == 1
    err = capsys.readouterr().err
    assert f"{data}: {message}" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.float32(1), "y": np.int64(1)}, "single value"),
        ({"x": np.zeros((0, 4), np.float32), "y": np.zeros(0, np.int64)}, "holds no samples"),
        ({"x": np.full((8, 4), np.inf, np.float32), "y": np.zeros(8, np.int64)}, "NaN or inf"),
        ({"x": np.ones((8, 4), np.float32), "y": -np.ones(8, np.int64)}, "must be >= 0"),
        ({"x": np.ones((8, 4), complex), "y": np.zeros(8, np.int64)}, "must be numeric"),
    ],
    ids=["scalar", "empty", "infinite", "negative-labels", "complex"],
)
def test_invalid_arrays_are_refused_with_the_reason(
    small: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], arrays, message
) -> None:
    spec, data = small
    np.savez(data, **arrays)
    assert cli("build", spec, "--out", tmp_path / "out", "--data", data, *FAST) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("epoch", "abc", "epoch is 'abc'"),
        ("epoch", -1, "epoch is -1, not a whole number >= 0"),
        ("history", "x", "history is a str"),
        ("model", {"0.weight": "w"}, "is not a tensor"),
    ],
)
def test_a_damaged_checkpoint_is_refused_and_model_py_is_left_alone(
    small: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    field: str,
    value: object,
    message: str,
) -> None:
    spec, data = small
    out = tmp_path / "out"
    assert cli("build", spec, "--out", out, "--data", data, *FAST) == 0
    payload = torch.load(out / "checkpoint.pt", weights_only=True)
    payload[field] = value
    torch.save(payload, out / "checkpoint.pt")
    (out / "model.py").write_text("# the user's edits\n")
    capsys.readouterr()
    assert cli("build", spec, "--out", out, "--data", data, *FAST, "--resume") == 1
    err = capsys.readouterr().err
    assert "the checkpoint is damaged" in err and message in err and "Traceback" not in err
    assert (out / "model.py").read_text() == "# the user's edits\n"


def test_non_finite_weights_in_a_checkpoint_are_refused(
    small: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, data = small
    out = tmp_path / "out"
    assert cli("build", spec, "--out", out, "--data", data, *FAST) == 0
    payload = torch.load(out / "checkpoint.pt", weights_only=True)
    next(iter(payload["model"].values())).fill_(float("nan"))
    torch.save(payload, out / "checkpoint.pt")
    assert cli("export", spec, "--weights", out / "checkpoint.pt", "--out", out / "m.onnx") == 1
    assert "hold NaN or infinite values" in capsys.readouterr().err


def test_diverging_training_stops_without_a_checkpoint(
    small: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, data = small
    out = tmp_path / "out"
    diverge = ["--train", "optimizer=SGD(lr=1e30)"]
    assert cli("build", spec, "--out", out, "--data", data, *FAST, *diverge) == 1
    err = capsys.readouterr().err
    assert "training diverged" in err and "no checkpoint was written" in err
    assert not (out / "checkpoint.pt").exists() and not (out / "metrics.json").exists()


def test_diverging_training_keeps_the_last_finite_checkpoint(
    small: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec, data = small
    original = Trainer._step

    def step(self: Trainer, x: torch.Tensor, y: torch.Tensor) -> Any:
        if self.epoch == 1:  # the second epoch blows up
            with torch.no_grad():
                next(self.model.parameters()).mul_(float("inf"))
        return original(self, x, y)

    monkeypatch.setattr(Trainer, "_step", step)
    out = tmp_path / "out"
    assert cli("build", spec, "--out", out, "--data", data, "-q", "--epochs", "3") == 1
    err = capsys.readouterr().err
    assert "training diverged" in err and "keeps epoch 1, the last finite one" in err
    hashed = spec_hash(SMALL, load(spec).graph.arguments)
    assert load_checkpoint(out / "checkpoint.pt", hashed).epoch == 1  # validated: finite
    assert not (out / "metrics.json").exists()


def test_a_test_loss_that_is_not_finite_fails_the_run(
    small: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Weights can stay finite yet so large that outputs overflow (SGD at lr 1e30 on a few
    batches): the test loss then says the run diverged."""
    spec, data = small
    monkeypatch.setattr(Trainer, "test", lambda self: {"loss": float("nan"), "accuracy": 0.0})
    out = tmp_path / "out"
    assert cli("build", spec, "--out", out, "--data", data, *FAST) == 1
    assert "training diverged: the test loss is nan" in capsys.readouterr().err
    assert not (out / "metrics.json").exists()


def test_resuming_with_another_optimiser_is_refused(
    small: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, data = small
    out = tmp_path / "out"
    assert cli("build", spec, "--out", out, "--data", data, *FAST) == 0
    capsys.readouterr()
    sgd = ["--epochs", "2", "--train", "optimizer=SGD(lr=0.1)", "--resume"]
    assert cli("build", spec, "--out", out, "--data", data, "-q", "--no-plots", *sgd) == 1
    err = capsys.readouterr().err
    assert "trained with another optimiser than SGD" in err and "Traceback" not in err


# the run directory -------------------------------------------------------------------------


def test_a_second_build_into_the_same_out_refuses_with_the_holders_pid(
    small: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, data = small
    out = tmp_path / "out"
    out.mkdir()
    lock = DirectoryLock(out)
    lock.acquire()  # as another build would, for its whole run
    try:
        assert cli("build", spec, "--out", out, "--data", data, *FAST) == 1
    finally:
        lock.release()
    err = capsys.readouterr().err
    assert f"in use by process {os.getpid()}" in err
    assert not (out / "model.py").exists()
    assert cli("build", spec, "--out", out, "--data", data, *FAST) == 0  # released


def test_a_killed_runs_temporary_files_are_removed_on_the_next_start(
    small: tuple[Path, Path], tmp_path: Path
) -> None:
    spec, _ = small
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".checkpoint.pt.0123456789ab.tmp"
    stale.write_bytes(b"half a checkpoint")
    kept = out / ".notes.tmp"  # not one of ours
    kept.write_text("mine")
    assert cli("build", spec, "--out", out, "--no-train") == 0
    assert not stale.exists() and kept.exists()


# text from data and specs --------------------------------------------------------------------

ESCAPE = "\x1b[2J\x1b]52;c;cHduZWQ=\x07"  # clear the screen, write the clipboard


def test_printable_escapes_control_characters() -> None:
    assert printable("cat\x1b[31m\u202e\udcff\tdog\n") == "cat\\x1b[31m\\u202e\\udcff\tdog\n"
    assert printable("ünïcode ok") == "ünïcode ok"


def test_class_names_from_folders_print_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in ((f"red{ESCAPE}", 30), ("plain", 220)):
        for i in range(10):
            folder = tmp_path / "images" / name
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("L", (8, 8), value + i).save(folder / f"{i}.png")
    spec = tmp_path / "img.dl"
    spec.write_text(
        "model Img {\n input image: float[1, 8, 8]\n Flatten\n Linear(2)\n"
        " train { val_split = 0 }\n}\n"
    )
    out = tmp_path / "out"
    loud = [a for a in FAST if a != "--quiet"]  # --quiet prints errors only: no class names
    assert cli("build", spec, "--out", out, "--data", tmp_path / "images", *loud) == 0
    printed = capsys.readouterr().out
    assert "\x1b" not in printed and "\x07" not in printed
    assert "red\\x1b[2J" in printed
    assert cli("export", spec, "--weights", out / "checkpoint.pt", "--out", out / "m.onnx") == 0
    capsys.readouterr()
    image = tmp_path / "images" / "plain" / "0.png"
    assert cli("predict", out / "m.onnx", image, "--top", "2") == 0
    printed = capsys.readouterr().out
    assert "\x1b" not in printed and "red\\x1b[2J" in printed


def test_hostile_text_never_becomes_code(tmp_path: Path) -> None:
    """A spec file name and a string parameter full of quotes, backslashes, newlines and
    escapes land in model.py's docstring as text: the file parses and runs nothing."""
    marker = tmp_path / "PWNED"
    name = 'x"""\\\';import os;os.system("touch PWNED")#\x1b.dl'
    spec = tmp_path / name
    spec.write_text(SMALL)
    value = f'"""\nimport os; os.system("touch {marker}")\n\\{ESCAPE}'
    out = tmp_path / "out"
    assert cli("build", spec, "--out", out, "--no-train", "--set", f"tag={value}") == 0
    code = (out / "model.py").read_text()
    tree = ast.parse(code)
    assert isinstance(tree.body[0], ast.Expr)  # the docstring
    assert "import os" in ast.get_docstring(tree)  # type: ignore[operator]
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert imported == ["torch"]
    exec(compile(code, "model.py", "exec"), {})
    assert not marker.exists()


def test_a_model_torch_cannot_run_at_the_verification_batch_is_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Batch statistics over one value per channel: torch refuses batch 1 (found by fuzzing)."""
    spec = tmp_path / "bn.dl"
    spec.write_text(
        "model B {\n    input x: float[3, 1, 1]\n    BatchNorm2d(track_running_stats=false)\n}\n"
    )
    assert cli("export", spec, "--out", tmp_path / "bn.onnx") == 1
    err = capsys.readouterr().err
    assert "torch cannot run the model at batch 1" in err and "Traceback" not in err
    assert not (tmp_path / "bn.onnx").exists()
