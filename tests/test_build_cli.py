"""``dlspec build``: model.py, training, metrics, plots, checkpoints and every error path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dlspec.api import load
from dlspec.cli import main
from dlspec.train.checkpoint import load_checkpoint, spec_hash
from dlspec.train.loop import Trainer

ROOT = Path(__file__).resolve().parents[1]
MLP = str(ROOT / "specs" / "mlp.dl")
FAST = ["--quiet", "--no-plots", "--epochs", "1"]

TINY_CNN = """\
model TinyCNN(num_classes: int = 10) {
    input image: float[1, 12, 12]
    Conv2d(4, kernel=3, padding=1)
    ReLU
    MaxPool2d(2)
    Flatten
    fc = Linear(num_classes)
    train { epochs = 2  optimizer = Adam(lr=3e-3)  batch_size = 32
            augment = [RandomRotation(10)]  normalize = Normalize(mean=0.3, std=0.4) }
}
"""

VECTOR_MODEL = """\
model Small {
    input x: float[4]
    hidden = Linear(16)
    ReLU
    out = Linear(1)
    train { epochs = 25  optimizer = Adam(lr=0.02)  batch_size = 32  val_split = 0 }
}
"""


def build(*args: str) -> int:
    return main(["build", *args])


def metrics(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "metrics.json").read_text())
    return data


def without_timing(m: dict[str, Any]) -> tuple[Any, Any]:
    return [{k: v for k, v in e.items() if k != "seconds"} for e in m["epochs"]], m["test"]


@pytest.fixture
def tiny_cnn(tmp_path: Path) -> Path:
    spec = tmp_path / "tiny.dl"
    spec.write_text(TINY_CNN)
    return spec


def vector_data(tmp_path: Path, task: str, labels: str = "int64") -> tuple[Path, Path]:
    """An .npz of 400 samples of 4 features whose labels are a linear function of them (its
    sign for the binary task), and a spec with one output to learn it."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 4)).astype(np.float32)
    w = np.array([1.0, -2.0, 0.5, 1.5], dtype=np.float32)
    y = (x @ w > 0).astype(labels) if task == "binary" else (x @ w + 0.5).astype(np.float32)
    data = tmp_path / f"{task}.npz"
    np.savez(data, x=x, y=y)
    spec = tmp_path / "small.dl"
    spec.write_text(VECTOR_MODEL)
    return spec, data


# --------------------------------------------------------------------------------------------
# what a build writes


def test_build_writes_the_model_metrics_checkpoint_and_plots(
    tiny_cnn: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert build(str(tiny_cnn), "--out", str(out)) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "checkpoint.pt",
        "confusion_matrix.png",
        "learning_curves.png",
        "metrics.json",
        "model.py",
    ]
    for png in ("confusion_matrix.png", "learning_curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "model.py").read_text() == load(tiny_cnn).code
    m = metrics(out)
    assert (m["model"], m["params"], m["channels_last"]) == ("TinyCNN", {"num_classes": 10}, True)
    assert [e["epoch"] for e in m["epochs"]] == [1, 2]
    assert m["data"]["sizes"] == {"train": 1293, "val": 145, "test": 359}
    assert m["config"]["rotation"] == 10 and m["config"]["optimizer"]["lr"] == 3e-3
    test = m["test"]
    assert test["accuracy"] > 0.5
    assert len(test["confusion_matrix"]) == 10 and sum(map(sum, test["confusion_matrix"])) == 359
    assert set(test["report"]) >= {"0", "9", "macro avg", "weighted avg"}
    printed = capsys.readouterr().out
    assert "epoch 2/2" in printed and "test loss" in printed and "confusion matrix" in printed
    saved = load_checkpoint(out / "checkpoint.pt", spec_hash(TINY_CNN, {"num_classes": 10}))
    assert (saved.epoch, saved.partial) == (2, False)


def test_no_train_writes_only_the_model(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "out"
    assert build(MLP, "--out", str(out), "--no-train", "--set", "hidden=32") == 0
    assert [p.name for p in out.iterdir()] == ["model.py"]
    code = (out / "model.py").read_text()
    assert "Linear(64, hidden)" in code and "hidden: int = 32" in code


def test_same_seed_same_metrics(tiny_cnn: Path, tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        assert build(str(tiny_cnn), "--out", str(tmp_path / name), "--quiet", "--no-plots") == 0
        runs.append(without_timing(metrics(tmp_path / name)))
    assert runs[0] == runs[1]
    assert build(MLP, "--out", str(tmp_path / "c"), *FAST, "--seed", "1") == 0
    assert build(MLP, "--out", str(tmp_path / "d"), *FAST, "--seed", "2") == 0
    assert without_timing(metrics(tmp_path / "c")) != without_timing(metrics(tmp_path / "d"))


def test_resume_continues_from_the_saved_epoch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert build(MLP, "--out", str(out), *FAST) == 0
    first = metrics(out)["epochs"]
    assert build(MLP, "--out", str(out), "--no-plots", "--epochs", "3", "--resume") == 0
    assert "resuming from" in capsys.readouterr().out
    resumed = metrics(out)["epochs"]
    assert [e["epoch"] for e in resumed] == [1, 2, 3]
    assert resumed[0] == first[0]
    straight = tmp_path / "straight"
    assert build(MLP, "--out", str(straight), "--quiet", "--no-plots", "--epochs", "3") == 0
    assert without_timing(metrics(straight)) == without_timing(metrics(out))


def test_resume_takes_the_learning_rate_given_now(tmp_path: Path) -> None:
    """The optimiser keeps its state (moments, steps) but takes the settings given now:
    fine-tuning with a lower --lr lowers it."""
    out = tmp_path / "out"
    assert build(MLP, "--out", str(out), *FAST, "--lr", "0.01") == 0
    assert build(MLP, "--out", str(out), "--quiet", "--no-plots", "--epochs", "2", "--resume",
                 "--lr", "0.0005") == 0  # fmt: skip
    saved = torch.load(out / "checkpoint.pt", weights_only=False)
    assert [g["lr"] for g in saved["optimizer"]["param_groups"]] == [0.0005]
    assert saved["optimizer"]["state"]  # the moments came through
    assert metrics(out)["config"]["optimizer"]["lr"] == 0.0005


def test_resume_refuses_a_checkpoint_of_another_spec(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert build(MLP, "--out", str(out), *FAST, "--set", "hidden=32") == 0
    capsys.readouterr()
    assert build(MLP, "--out", str(out), *FAST, "--resume") == 1
    err = capsys.readouterr().err
    assert "checkpoint.pt: this checkpoint was made from a different spec" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(("content", "message"), [(None, "no checkpoint"), (b"junk", "corrupt")])
def test_resume_without_a_usable_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, message: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    if content is not None:
        (out / "checkpoint.pt").write_bytes(content)
    assert build(MLP, "--out", str(out), *FAST, "--resume") == 1
    assert message in capsys.readouterr().err


def test_ctrl_c_saves_a_checkpoint_and_exits_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    original = Trainer._step
    calls = 0

    def step(self: Trainer, x: torch.Tensor, y: torch.Tensor) -> Any:
        nonlocal calls
        calls += 1
        if calls == 30:  # in the second epoch: 21 batches per epoch
            raise KeyboardInterrupt
        return original(self, x, y)

    monkeypatch.setattr(Trainer, "_step", step)
    out = tmp_path / "out"
    assert build(MLP, "--out", str(out), "--quiet", "--no-plots", "--epochs", "2") == 130
    err = capsys.readouterr().err
    assert "interrupted after 1 finished epoch(s)" in err and "--resume" in err
    assert not (out / "metrics.json").exists()
    spec_text = Path(MLP).read_text()
    saved = load_checkpoint(out / "checkpoint.pt", spec_hash(spec_text, load(MLP).graph.arguments))
    assert (saved.epoch, saved.partial) == (1, True)
    monkeypatch.setattr(Trainer, "_step", original)
    assert build(MLP, "--out", str(out), "--quiet", "--no-plots", "--epochs", "2", "--resume") == 0
    assert [e["epoch"] for e in metrics(out)["epochs"]] == [1, 2]


# --------------------------------------------------------------------------------------------
# tasks


@pytest.mark.parametrize("labels", ["int64", "float32"])
def test_binary_task(tmp_path: Path, labels: str) -> None:
    spec, data = vector_data(tmp_path, "binary", labels)
    out = tmp_path / "out"
    args = ["--data", str(data), "--train", "task=binary", "--quiet", "--no-plots"]
    assert build(str(spec), "--out", str(out), *args) == 0
    test = metrics(out)["test"]
    assert test["accuracy"] > 0.9
    assert len(test["confusion_matrix"]) == 2 and sum(map(sum, test["confusion_matrix"])) == 80


def test_regression_task(tmp_path: Path) -> None:
    spec, data = vector_data(tmp_path, "regression")
    out = tmp_path / "out"
    args = ["--data", str(data), "--train", 'loss="mse"', "--quiet"]
    assert build(str(spec), "--out", str(out), *args) == 0
    m = metrics(out)
    assert m["test"]["r2"] > 0.9 and m["test"]["accuracy"] is None
    assert "confusion_matrix" not in m["test"]
    assert sorted(p.name for p in out.glob("*.png")) == ["learning_curves.png"]


# --------------------------------------------------------------------------------------------
# errors: a message and an exit code, never a traceback


def run_failing(capsys: pytest.CaptureFixture[str], code: int, *args: str) -> str:
    assert build(*args) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_missing_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere.npz"
    err = run_failing(capsys, 1, MLP, "--out", str(tmp_path / "o"), *FAST, "--data", str(missing))
    assert f"data source '{missing}' not found" in err


def test_corrupt_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"this is not an npz file")
    err = run_failing(capsys, 1, MLP, "--out", str(tmp_path / "o"), *FAST, "--data", str(bad))
    assert str(bad) in err and "cannot read .npz file" in err


def test_data_that_does_not_fit_the_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "five.npz"
    np.savez(data, x=np.zeros((50, 5), np.float32), y=np.arange(50) % 3)
    err = run_failing(capsys, 1, MLP, "--out", str(tmp_path / "o"), *FAST, "--data", str(data))
    assert f"{data}: the data has 5 features per sample, but the model takes 64" in err


def test_augmenting_tabular_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec, data = vector_data(tmp_path, "regression")
    args = [
        "--data",
        str(data),
        "--train",
        "task=regression",
        "--train",
        "augment=[RandomRotation(5)]",
        *FAST,
    ]
    err = run_failing(capsys, 1, str(spec), "--out", str(tmp_path / "o"), *args)
    assert f"{data}: augmentation (rotation / brightness / contrast) needs image batches" in err


def test_more_classes_than_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = run_failing(capsys, 1, MLP, "--out", str(tmp_path / "o"), *FAST, "--set", "num_classes=5")
    assert "the data has 10 classes but the model outputs 5 class scores" in err
    assert "--set num_classes=10" in err


def test_bad_train_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "bad.dl"
    spec.write_text(TINY_CNN.replace("epochs = 2", "epoch = 2"))
    assert main(["check", str(spec)]) == 1
    err = capsys.readouterr().err
    assert "bad.dl:8:13: error[E214]: unknown train setting 'epoch'" in err
    assert "did you mean epochs?" in err
    run_failing(capsys, 1, str(spec), "--out", str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--train", "epochs=0"], "--train epochs=0: epochs = 0"),
        (["--train", "optimizer=Adamm"], "unknown optimizer 'Adamm'"),
        (["--train", "optimizer.foo=1"], "Adam has no argument 'foo'"),
    ],
)
def test_bad_train_options_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert message in run_failing(capsys, 2, MLP, "--out", str(tmp_path / "o"), *args)


def test_bad_option_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build(MLP, "--out", str(tmp_path), "--epochs", "0")
    assert info.value.code == 2
    assert "expected a whole number from 1 to" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = run_failing(capsys, 1, MLP, "--out", str(tmp_path / "o"), *FAST, "--device", "cuda")
    assert "CUDA is not available here" in err


def test_data_paths_are_relative_to_the_spec(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "specs"
    folder.mkdir()
    spec, _ = vector_data(folder, "binary")  # specs/small.dl and specs/binary.npz
    spec.write_text(VECTOR_MODEL.replace("val_split = 0", 'val_split = 0  data = "binary.npz"'))
    monkeypatch.chdir(tmp_path)
    assert build("specs/small.dl", "--out", "out", *FAST, "--train", "task=binary") == 0
    spec.write_text(VECTOR_MODEL.replace("val_split = 0", 'val_split = 0  data = "gone.npz"'))
    capsys.readouterr()
    assert build("specs/small.dl", "--out", "out", *FAST) == 1
    assert "'specs/gone.npz' not found" in capsys.readouterr().err  # where it looked
