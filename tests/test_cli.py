"""The command line's common behaviour: help, several specs and stdin, watch, quiet, usage."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from dlspec.cli import COMMANDS, main
from dlspec.commands.watch import watch

MLP = (ROOT / "specs" / "mlp.dl").read_text()


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse: --help and usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_command(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "help", command)
    assert code == 0
    assert out.startswith(f"usage: dlspec {command} ")
    assert (code, out) == run_cli(capsys, command, "--help")[:2]


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "help")
    assert code == 0
    for command in [*COMMANDS, "help"]:
        assert f"\n    {command} " in out
    code, _, err = run_cli(capsys, "help", "nope")
    assert code == 2
    assert "invalid choice: 'nope'" in err


def test_bad_set_value_gives_only_its_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "check", str(ROOT / "specs/vgg_block.dl"), "--set", "width=abc")
    assert code == 2
    assert "error[E211]: --set width=abc: expected a whole number, got 'abc'" in err
    assert "E208" not in err
    assert err.count("error[") == 1


def test_check_several_specs_and_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.dl"
    broken.write_text(MLP.replace("Linear(hidden)", "Linear(hidden, bogus=1)"))
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(MLP.encode())))
    code, out, err = run_cli(capsys, "check", str(ROOT / "specs/rnn.dl"), "-", str(broken))
    assert code == 1  # the worst of the three
    assert out.startswith("SequenceRNN  (")
    assert "\nMLP  (<stdin>, hidden=128" in out
    assert f"{broken}:4:26: error[E202]" in err

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(MLP.encode())))
    code, out, _ = run_cli(capsys, "check", "-", str(broken), "--format", "json")
    reports = json.loads(out)
    assert [r["file"] for r in reports] == ["<stdin>", str(broken)]
    assert reports[0]["total_params"] == 17_226
    assert [d["code"] for d in reports[1]["diagnostics"]] == ["E202"]

    code, out, err = run_cli(capsys, "check", "--quiet", str(ROOT / "specs/mlp.dl"), str(broken))
    assert code == 1
    assert out == ""
    assert "error[E202]" in err


def test_watch_checks_again_after_each_save(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "net.dl"
    spec.write_text(MLP)
    seen = []

    def check() -> int:
        seen.append(spec.read_text())
        if len(seen) == 1:  # the user saves a change
            spec.write_text(MLP.replace("hidden: int = 128", "hidden: int = 64"))
        return len(seen)

    assert watch([str(spec)], check, interval=0.01, rounds=2) == 2
    assert seen == [MLP, MLP.replace("128", "64", 1)]
    out = capsys.readouterr().out
    assert out.count(f"watching {spec} for changes (Ctrl-C stops)") == 2
    assert "\033[2J" not in out  # the screen is cleared only on a terminal


def _default_ctrl_c() -> None:
    """In the child before exec: Ctrl-C as a terminal gives it. A process that ignores or
    blocks SIGINT passes that on to what it starts (a job started with `&` by a
    non-interactive shell ignores it), and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _signal_masks(pid: int) -> str:
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return "(no /proc)"
    lines = status.read_text().splitlines()
    return "; ".join(line for line in lines if line.startswith(("SigBlk", "SigIgn", "SigCgt")))


def test_check_watch_command(tmp_path: Path) -> None:
    spec = tmp_path / "net.dl"
    spec.write_text(MLP)
    process = subprocess.Popen(
        [sys.executable, "-m", "dlspec", "check", "--watch", "--interval", "0.05", str(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_default_ctrl_c,
    )
    assert process.stdout is not None
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if "watching" in line:
                if sum("watching" in seen for seen in lines) == 2:
                    break
                spec.write_text(MLP.replace("Linear(hidden)", "Linear(hidden, bogus=1)"))
        masks = _signal_masks(process.pid)
        # Ctrl-C; what the process still prints is read, so that a full pipe cannot block it
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=30)
        lines.append(rest)
        assert process.returncode == 1, f"after Ctrl-C: {process.returncode}; {masks}"
    finally:
        if process.poll() is None:
            process.kill()
    text = "".join(lines)
    assert text.startswith("MLP  (")
    assert f"{spec}:4:26: error[E202]" in text.split("watching")[1]


def test_watch_refuses_stdin(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "check", "--watch", "-")
    assert code == 2
    assert "--watch needs spec files" in err


def test_check_needs_only_lark_and_pydantic() -> None:
    """`make demo` runs its first check before the other dependencies are installed."""
    heavy = ("torch", "onnx", "numpy", "sklearn", "matplotlib", "tqdm", "PIL", "pygls")
    code = (
        "import sys; from dlspec.cli import main; main(['check', '-q', 'specs/mlp.dl', "
        f"'specs/cnn.dl']); bad = [m for m in {heavy!r} if m in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    env = dict(os.environ)
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env).returncode == 0


TINY = """\
model Tiny(num_classes: int = 10) {
    input image: float[1, 8, 8]
    Flatten
    fc = Linear(num_classes)
    train { epochs = 2  batch_size = 64 }
}
"""


def test_build_json_lines_and_steady_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("dlspec.train.loop.PROGRESS_SECONDS", 0.0)  # a line every batch
    spec = tmp_path / "tiny.dl"
    spec.write_text(TINY)
    args = ["build", str(spec), "--out", str(tmp_path / "out"), "--no-plots", "--threads", "1"]
    assert main([*args, "--format", "json"]) == 0
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["event"] for r in records] == ["epoch", "epoch", "test"]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert records[:2] == [{"event": "epoch", **e} for e in metrics["epochs"]]
    assert records[2]["accuracy"] == metrics["test"]["accuracy"]
    # the human lines went to stderr, with progress lines for a log (stderr is no terminal)
    assert "epoch 2/2  train loss" in err
    assert "epoch 1/2: 1/21 batches, loss " in err

    assert main([*args, "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")


def test_export_predict_bench_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    model = tmp_path / "mlp.onnx"
    mlp = str(ROOT / "specs" / "mlp.dl")
    assert main(["export", mlp, "-o", str(model), "--format", "json", "--threads", "1"]) == 0
    out, _ = capsys.readouterr()
    (record,) = [json.loads(line) for line in out.splitlines()]
    assert record["file"] == str(model) and record["bytes"] == model.stat().st_size
    assert record["parameters"] == record["check_parameters"] == 17_226
    assert record["verification"] and all(c["passed"] for c in record["verification"])
    assert max(c["max_rel"] for c in record["verification"]) <= record["rtol"]

    assert main(["export", mlp, "-o", str(model), "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")

    npz = tmp_path / "x.npz"
    np.savez(npz, x=np.random.default_rng(0).normal(size=(2, 64)).astype(np.float32))
    assert main(["predict", str(model), str(npz), "--format", "json", "-k", "2"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["input"] for r in records] == [f"{npz}[0]", f"{npz}[1]"]
    for r in records:
        assert len(r["top"]) == 2 and r["top"][0]["probability"] >= r["top"][1]["probability"]
    assert main(["predict", str(model), str(npz), "-k", "2"]) == 0
    text = capsys.readouterr().out.splitlines()
    top = records[0]["top"][0]
    assert text[0].startswith(f"{npz}[0]: {top['class']} {100 * top['probability']:.1f}%")

    bench = ["bench", str(model), "--batch", "1", "--iterations", "1", "--warmup", "1"]
    assert main([*bench, "--format", "json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [(r["device"], r["batch"]) for r in result["rows"]] == [("CPU", 1)]
    assert result["rows"][0]["onnx_seconds"] > 0


@pytest.mark.parametrize("command", ["build", "export", "predict", "bench", "sample"])
def test_device_choices_are_the_same_everywhere(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for good in ("auto", "cpu", "cuda", "cuda:1"):
        with pytest.raises(SystemExit) as info:
            main([command, "--device", good, "--help"])
        assert info.value.code == 0
    with pytest.raises(SystemExit) as info:
        main([command, "x", "--device", "gpu"])
    assert info.value.code == 2
    assert "expected auto, cpu, cuda or cuda:N, got 'gpu'" in capsys.readouterr().err
    _, out, _ = run_cli(capsys, "help", command)
    assert "--threads N" in out
