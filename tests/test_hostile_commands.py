"""Hostile input to every command (issue 26): outputs that would destroy inputs, options and
metadata out of range, unbounded stdin, text that loses meaning, numbers that overflow. Each
case is a message and exit code 1 or 2 (never exit 70, the internal error that an escaping
exception becomes), and no file but the named outputs changes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from fuzz_surfaces import DIFFUSION_METADATA, denoiser_inputs, denoiser_model, onnx_model

import dlspec
from dlspec.cli import main
from dlspec.crash import EXIT_INTERNAL
from dlspec.train.checkpoint import Checkpoint, save_checkpoint

SPEC = """\
model Small {
    input x: float[4]
    Linear(3)
}
"""


def cli(capsys: pytest.CaptureFixture[str], *args: str | os.PathLike[str]) -> tuple[int, str]:
    """Exit code and stderr of a command; a hostile case never reaches the internal error."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code != EXIT_INTERNAL and "internal error" not in err, err
    return code, err


DIM_SPEC = """\
model Seq(T: dim = 4) {
    input x: float[T]
    Linear(3)
}
"""


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "small.dl"
    path.write_text(SPEC)
    return path


# the top level ---------------------------------------------------------------------------


def test_an_unexpected_exception_is_an_internal_error_with_a_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # read TMPDIR again

    def broken(*_: object) -> object:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("dlspec.commands.check.check_all", broken)
    assert main(["check", "x.dl"]) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "internal error, please report (ZeroDivisionError: a bug)" in err
    assert "Traceback" not in err
    (log,) = (tmp_path / "dlspec-crash").glob("*.log")
    assert str(log) in err and "ZeroDivisionError: a bug" in log.read_text()
    assert "argv: ['check', 'x.dl']" in log.read_text()


# output paths ------------------------------------------------------------------------------


def test_export_refuses_to_write_over_its_spec(
    spec: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = cli(capsys, "export", spec, "--out", spec)
    assert code == 2 and f"--out {spec} is also the spec of this command" in err
    assert spec.read_text() == SPEC


def test_an_output_through_a_link_to_the_input_is_refused(
    spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    link = tmp_path / "link.svg"
    link.symlink_to(spec)
    code, err = cli(capsys, "draw", spec, "--out", link)
    assert code == 2 and "is also the spec of this command" in err
    assert spec.read_text() == SPEC


def test_a_fifo_as_an_output_is_refused_without_blocking(
    spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "out.onnx"
    os.mkfifo(fifo)
    code, err = cli(capsys, "export", spec, "--out", fifo)
    assert code == 2 and "is not a regular file (a device, pipe or socket)" in err
    assert fifo.is_fifo()


def test_import_refuses_one_file_for_two_outputs_and_the_model_as_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not read")
    code, err = cli(capsys, "import", model, "--out", model)
    assert code == 2 and "is also the model of this command" in err
    same = tmp_path / "same.bin"
    code, err = cli(capsys, "import", model, "--out", same, "--weights", same)
    assert code == 2 and f"--weights {same} is also --out of this command" in err
    assert model.read_bytes() == b"not read" and not same.exists()


def test_fmt_writes_through_a_link_and_keeps_the_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "real.dl"
    target.write_text(SPEC.replace("    Linear(3)", "  Linear( 3 )"))
    target.chmod(0o600)
    link = tmp_path / "link.dl"
    link.symlink_to(target)
    assert cli(capsys, "fmt", link)[0] == 0
    assert link.is_symlink() and target.read_text() == SPEC
    assert target.stat().st_mode & 0o777 == 0o600


# bounded inputs ----------------------------------------------------------------------------


def test_stdin_over_the_spec_limit_is_refused_unread(tmp_path: Path) -> None:
    huge = b"#" * (18 * 1024 * 1024)
    result = subprocess.run(
        [sys.executable, "-m", "dlspec", "check", "-"],
        input=huge,
        capture_output=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert b"error[E004]: standard input is over 1,048,576 bytes" in result.stderr


# options -----------------------------------------------------------------------------------

DIGITS = "9" * 400


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["check", "{spec}", "--batch", DIGITS], "argument --batch: expected a whole number"),
        (["plan", "{spec}", "--memory", DIGITS], "argument --memory: expected a size"),
        (["plan", "{spec}", "--memory", "1GiB", "--batch", DIGITS], "argument --batch"),
        (["check", "{spec}", "--max-memory", DIGITS], "argument --max-memory"),
        (["check", "{spec}", "--watch", "--interval", "inf"], "a number of seconds from 0.01"),
        (["check", "{spec}", "--watch", "--interval", "nan"], "a number of seconds from 0.01"),
        (["export", "{spec}", "--seed", str(2**64)], "expected a seed from 0 to"),
        (["sample", "run", "--seed", str(2**64)], "expected a seed from 0 to"),
        (["sample", "run", "--temperature", "1e-320"], "0 or a temperature from 0.01 to 100"),
        (["sample", "run", "--num", "1000000000"], "a number of images from 1 to 10,000"),
        (["predict", "m.onnx", "x.npz", "--threads", "10000"], "a thread count from 1 to"),
    ],
    ids=lambda v: "-".join(v[:3])[:40] if isinstance(v, list) else "",
)
def test_options_out_of_range_are_usage_errors(
    spec: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, err = cli(capsys, *(a.format(spec=spec) for a in args))
    assert code == 2 and message in err


def test_plan_honours_max_layers_and_a_batch_that_does_not_fit_is_an_error(
    spec: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = cli(capsys, "plan", spec, "--memory", "1GiB", "--max-layers", "0")
    assert code == 2  # a layer budget of 0 is not a count
    code, err = cli(capsys, "plan", spec, "--memory", "1MiB", "--max-layers", "1")
    assert code == 0
    code, err = cli(capsys, "plan", spec, "--memory", "1MiB", "--batch", "100000")
    assert code == 1 and "error: batch 100,000 does not fit in 1.00 MiB" in err


@pytest.mark.parametrize(
    ("text", "args", "message"),
    [
        (SPEC, ["--set", "n=" + DIGITS], "a number literal of 400 digits is too large"),
        (DIM_SPEC, ["--set", "T=1e400"], "--set T=1e400: 1e400 is too large for a floating"),
        (DIM_SPEC, ["--set", "T=nan"], "--set T=nan: nan is not a number"),
        (
            "model Up {\n    input x: float[3, 8, 8]\n    Upsample(scale_factor=1e300)\n}\n",
            [],
            "error[E409]: upsample1: Upsample would grow 8 beyond",
        ),
        (
            "\n".join(f"block B{i}(c: int) {{\n    B{i + 1}(c)\n}}" for i in range(300))
            + "\nblock B300(c: int) {\n    Linear(c)\n}\n"
            + "model M {\n    input x: float[4]\n    B0(4)\n}\n",
            [],
            "error[E602]: block calls nest too deeply",
        ),
    ],
    ids=["set-400-digits", "set-dim-1e400", "set-dim-nan", "upsample-1e300", "300-nested-blocks"],
)
def test_numbers_and_nesting_beyond_the_analysis_are_diagnostics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, args: list[str], message: str
) -> None:
    path = tmp_path / "spec.dl"
    path.write_text(text)
    code, err = cli(capsys, "check", path, "-q", *args)
    assert code in (1, 2) and message in err


# metadata and checkpoints ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "metadata", "message"),
    [
        ("predict", {"dlspec.classes": "[]"}, "dlspec.classes: List should have at least 1"),
        ("predict", {"dlspec.normalize": '{"mean": 0, "std": 0}'}, "std must be > 0"),
        ("bench", {"dlspec.index_limit": "abc"}, "dlspec.index_limit: Input should be a valid"),
        (
            "sample",
            {"dlspec.classes": '["a"]', "dlspec.diffusion": '{"timesteps": 2e9}'},
            "dlspec.diffusion.order: Field required",
        ),
    ],
    ids=["classes-empty", "std-zero", "index-limit-text", "timesteps-2e9"],
)
def test_onnx_metadata_of_the_wrong_type_is_a_message(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    metadata: dict[str, str],
    message: str,
) -> None:
    import numpy as np

    model = onnx_model(tmp_path / "m.onnx", metadata)
    np.savez(tmp_path / "x.npz", x=np.zeros((2, 4), np.float32))
    args = {
        "predict": [model, tmp_path / "x.npz"],
        "bench": [model, "--iterations", "1", "--warmup", "1", "--batch", "1"],
        "sample": [model, "--out", tmp_path / "s.png"],
    }[command]
    code, err = cli(capsys, command, *args)
    assert code in (1, 2) and message in err and "Traceback" not in err


def test_diffusion_metadata_asking_for_two_billion_timesteps_is_refused() -> None:
    from dlspec.records import RecordError, export_metadata

    settings = {
        "order": ["image", "timestep", "prompt"],
        "image": [1, 8, 8],
        "prompt_length": 4,
        "token_limit": 10,
        "schedule": "linear",
        "timesteps": 2_000_000_000,
        "prediction": "epsilon",
        "sampler": "ddim",
        "sample_steps": 10,
        "guidance": 1.0,
    }
    metadata = {"dlspec.diffusion": json.dumps(settings)}
    with pytest.raises(RecordError, match="timesteps: Input should be less than or equal"):
        export_metadata(metadata, "m.onnx")
    settings |= {"timesteps": 100, "schedule": "quadratic"}
    with pytest.raises(RecordError, match="schedule: Input should be 'linear' or 'cosine'"):
        export_metadata({"dlspec.diffusion": json.dumps(settings)}, "m.onnx")


def test_checkpoint_info_of_the_wrong_type_is_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    info = {"spec_text": SPEC, "classes": ["a", "b"], "params": [1, 2]}
    save_checkpoint(run / "checkpoint.pt", Checkpoint("0" * 64, 1, {}, {}, [], {}, info=info))
    code, err = cli(capsys, "sample", run)
    assert code == 1 and "the checkpoint's info params: Input should be a valid dictionary" in err


# the language server -----------------------------------------------------------------------


def test_the_language_server_drops_malformed_frames_and_stays_responsive(tmp_path: Path) -> None:
    from fuzz_surfaces import RawServer, initialize

    server = RawServer(tmp_path)
    try:
        assert initialize(server) is not None
        body = b'{"jsonrpc": "2.0", "id": 99, "method": "shutdown"}'
        for header in (b"abc", b"5", b"1000000000000"):
            server.send_bytes(b"Content-Length: " + header + b"\r\n\r\n" + body)
        spec = tmp_path / "small.dl"
        spec.write_text(SPEC)
        uri = spec.as_uri()
        hover = {"textDocument": {"uri": uri}, "position": {"line": 2, "character": 4}}
        assert server.request("textDocument/hover", hover, limit=30) == {
            "jsonrpc": "2.0",
            "id": 2,
            "result": None,  # never opened: not read from disk
        }
    finally:
        assert server.close() == 0
    dropped = [line for line in server.log if "dropped a message" in line]
    assert len(dropped) == 3, server.log  # the client is told why, in log messages
    assert "Content-Length of 'abc'" in dropped[0] and "not JSON" in dropped[1]
    assert "1,000,000,000,000 bytes; the limit is 8,388,608" in dropped[2]
    assert b"Traceback" not in server.stderr


def test_the_language_server_reads_no_unopened_file_and_bounds_documents(tmp_path: Path) -> None:
    from fuzz_surfaces import RawServer, initialize

    fifo = tmp_path / "spec.dl"
    os.mkfifo(fifo)  # reading it would block the server for ever
    server = RawServer(tmp_path)
    try:
        initialize(server)
        for uri in (fifo.as_uri(), "file:///dev/zero"):
            server.notify("textDocument/didSave", {"textDocument": {"uri": uri}})
            hover = {"textDocument": {"uri": uri}, "position": {"line": 0, "character": 0}}
            reply = server.request("textDocument/hover", hover, limit=30)
            assert reply is not None and reply["result"] is None
        big = tmp_path / "big.dl"
        text = SPEC + "# " + "x" * (2 * 1024 * 1024) + "\n"
        item = {"uri": big.as_uri(), "languageId": "dlspec", "version": 1, "text": text}
        server.notify("textDocument/didOpen", {"textDocument": item})
        deadline = time.monotonic() + 30
        published = None
        while published is None and time.monotonic() < deadline:
            message = server.replies.get(timeout=30)
            if message.get("method") == "textDocument/publishDiagnostics":
                published = message["params"]
        assert published is not None and published["uri"] == big.as_uri()
        (diagnostic,) = published["diagnostics"]
        assert diagnostic["code"] == "E004" and "over 1,048,576 characters" in diagnostic["message"]
    finally:
        assert server.close() == 0


# hostile modules for import ----------------------------------------------------------------

HOSTILE_MODULE = """\
import os
import sys

import torch
from torch import nn


class Exits(nn.Module):
    def __init__(self):
        super().__init__()
        sys.exit(0)


class Base(nn.Module):
    def __init__(self):
        super().__init__()
        raise BaseException("not an Exception")


class Hangs(nn.Module):
    def forward(self, x):
        while True:
            pass


class Huge(nn.Module):
    def forward(self, x):
        return torch.ones(1_000_000_000) + x.sum()


class Moves(nn.Module):
    def __init__(self):
        super().__init__()
        os.chdir(os.path.dirname(os.getcwd()))
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)
"""


@pytest.fixture
def hostile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory holding the module ``hostile`` (HOSTILE_MODULE), made the current one."""
    (tmp_path / "hostile.py").write_text(HOSTILE_MODULE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("model", "options", "message"),
    [
        ("Exits", [], "hostile:Exits called sys.exit(0); nothing was written"),
        ("Base", [], "hostile:Base raised BaseException('not an Exception')"),
        ("Hangs", ["--timeout", "5"], "did not finish within 5 s"),
        ("Huge", ["--max-memory", "1G"], "can't allocate memory"),
    ],
)
def test_hostile_model_code_is_bounded_and_writes_nothing(
    hostile: Path,
    capsys: pytest.CaptureFixture[str],
    model: str,
    options: list[str],
    message: str,
) -> None:
    out = hostile / "out.dl"
    args = ["import", f"hostile:{model}", "--input", "float[4]", "--out", out, *options]
    code, err = cli(capsys, *args)
    assert code == 1 and message in err and not out.exists()


@pytest.mark.parametrize(
    ("model", "options", "message"),
    [
        ("Exits", [], "hostile:Exits called sys.exit(0)"),
        ("Hangs", ["--timeout", "3"], "did not finish within 3 s"),
        ("Huge", ["--max-memory", "1G"], "can't allocate memory"),
    ],
)
def test_check_runs_model_code_bounded_as_import_does(
    hostile: Path,
    capsys: pytest.CaptureFixture[str],
    model: str,
    options: list[str],
    message: str,
) -> None:
    """``dlspec check MODULE:CALLABLE`` imports in the same bounded child as ``import``."""
    code, err = cli(capsys, "check", f"hostile:{model}", "--input", "float[4]", *options)
    assert code == 1 and message in err


def test_a_constructor_that_changes_directory_does_not_move_the_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "hostile.py").write_text(HOSTILE_MODULE)
    monkeypatch.chdir(work)
    code, err = cli(capsys, "import", "hostile:Moves", "--input", "float[4]", "--out", "m.dl")
    assert code == 0, err
    assert (work / "m.dl").is_file() and not (tmp_path / "m.dl").exists()
    assert Path.cwd() == work  # the parent's directory is its own


# malformed ONNX files ----------------------------------------------------------------------


def malformed(path: Path, case: str) -> Path:
    """An ONNX file with one defect (``case``)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def value(name: str = "x", dims: tuple[Any, ...] = ("N", 4)) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(dims))

    relu = helper.make_node("Relu", ["x"], ["y"], name="act")
    nodes, inputs, outputs, inits, opset = [relu], [value()], [value("y")], [], 17
    if case == "dangling":
        outputs = [value("z")]
    elif case == "no-outputs":
        outputs = []
    elif case == "bias":
        weight = numpy_helper.from_array(np.ones((3, 4), np.float32), "W")
        bias = numpy_helper.from_array(np.ones((5,), np.float32), "B")
        nodes = [helper.make_node("Gemm", ["x", "W", "B"], ["y"], name="fc", transB=1)]
        outputs, inits = [value("y", ("N", 3))], [weight, bias]
    elif case == "negative-dim":
        inputs, outputs = [value("x", ("N", -4))], [value("y", ("N", -4))]
    elif case == "string":
        inits = [helper.make_tensor("S", TensorProto.STRING, [1], [b"a"])]
    elif case == "opset":
        opset = 99999
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("dangling", "Graph output 'z' is not an output of any node"),
        ("no-outputs", "the graph declares no outputs"),
        ("bias", "ONNX Gemm (fc): RuntimeError: The expanded size of the tensor (3)"),
        ("negative-dim", "x has a dimension of -4"),
        ("string", "the initializer S holds strings, not numbers"),
        ("opset", "opset 99999; this onnx knows opsets 1 to"),
    ],
)
def test_a_malformed_onnx_file_is_a_message_naming_the_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, message: str
) -> None:
    model = malformed(tmp_path / "m.onnx", case)
    code, err = cli(capsys, "import", model, "--out", tmp_path / "m.dl")
    assert code in (1, 2) and message in err and not (tmp_path / "m.dl").exists()


# full disk, non-finite predictions, --watch with JSON -----------------------------------------


def test_a_full_disk_while_writing_a_checkpoint_is_an_oserror_and_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"the previous checkpoint")

    def full(payload: object, file: Path) -> None:
        Path(file).write_bytes(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64")

    monkeypatch.setattr("torch.save", full)
    with pytest.raises(OSError, match="is the disk full"):
        save_checkpoint(path, Checkpoint("0" * 64, 1, {}, {}, [], {}))
    assert path.read_bytes() == b"the previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]

    # import --weights writes a checkpoint too: the same full disk is its message, and the
    # spec is not written without the weights
    (tmp_path / "plain.py").write_text(
        "from torch import nn\n\n\ndef Plain():\n    return nn.Sequential(nn.Linear(4, 2))\n"
    )
    monkeypatch.chdir(tmp_path)
    args = ["import", "plain:Plain", "--input", "float[4]", "--out", "m.dl", "--weights", "w.pt"]
    code, err = cli(capsys, *args)
    assert code == 1 and "dlspec import: cannot write w.pt: [enforce fail" in err
    assert "(is the disk full?)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "plain.py"]


def test_predict_refuses_outputs_that_are_not_finite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np

    model = onnx_model(tmp_path / "m.onnx", {"dlspec.classes": '["a", "b", "c", "d"]'})
    np.savez(tmp_path / "x.npz", x=np.full((2, 4), 1e308))  # float64: inf as float32
    code, err = cli(capsys, "predict", model, tmp_path / "x.npz")
    assert code == 1 and "the model's output holds NaN or infinite values" in err


def test_watch_with_json_keeps_stdout_json(
    spec: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dlspec.commands import watch

    def once(paths: list[str], run: Any, interval: float, status: Any = None) -> int:
        return watch.watch(paths, run, interval, rounds=1, status=status)

    monkeypatch.setattr("dlspec.commands.check.watch", once)
    assert main(["check", str(spec), "--watch", "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["total_params"] == 15  # stdout: the JSON alone
    assert "watching" in captured.err


def test_a_train_memory_argument_given_twice_is_refused() -> None:
    spec = (
        "model M {\n    input x: float[4]\n    Linear(2)\n"
        "    expect total train_memory(batch=2, batch=3) < 1GiB\n}\n"
    )
    with pytest.raises(dlspec.SpecError) as err:
        dlspec.load_text(spec)
    assert [d.code for d in err.value.diagnostics] == ["E213"]
    assert "'batch' given twice" in err.value.diagnostics[0].message


def test_a_model_named_like_a_layer_kind_is_refused() -> None:
    """Generated code defines a class per helper kind (SinusoidalPositionalEncoding): a model
    of that name would hide it."""
    spec = (
        "model SinusoidalPositionalEncoding(T: dim = 4) {\n    input x: long[T]\n"
        "    Embedding(10, 8)\n    SinusoidalPositionalEncoding(8)\n}\n"
    )
    with pytest.raises(dlspec.SpecError) as err:
        dlspec.load_text(spec)
    assert "E206" in [d.code for d in err.value.diagnostics]


def test_every_class_that_generated_code_defines_is_a_name_no_model_may_take() -> None:
    """The helper classes the layer kinds put in generated code (LayerNorm2d, SDPA, RoPE,
    ...) are refused as model and block names, as the kinds' names are: E206 covers them
    because each is its kind's name; a helper of another name would need its own rule."""
    import importlib
    import pkgutil
    import re

    import dlspec.layers
    from dlspec.layers import REGISTRY

    helpers = set()
    for module in pkgutil.iter_modules(dlspec.layers.__path__):
        for value in vars(importlib.import_module(f"dlspec.layers.{module.name}")).values():
            if isinstance(value, str):
                helpers |= set(re.findall(r"^class (\w+)\((?:nn|torch)\.", value, re.MULTILINE))
    assert {"LayerNorm2d", "SDPA", "SinusoidalPositionalEncoding"} <= helpers
    assert helpers <= set(REGISTRY)


# hostile ONNX files: ONNX Runtime runs them bounded ----------------------------------------


def _graph_model(
    path: Path,
    nodes: list[Any],
    initializers: dict[str, Any],
    *,
    shape: tuple[str | int, ...] = ("N", 4),
    extra_inputs: Sequence[Any] = (),
    metadata: dict[str, str] | None = None,
) -> Path:
    """A model of ``nodes`` from x: float[shape] (and ``extra_inputs``) to y: float[shape]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        "hostile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape)), *extra_inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))],
        [numpy_helper.from_array(value, name) for name, value in initializers.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, metadata or {})
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def _endless_loop(**model: Any) -> Callable[[Path], Path]:
    """y = x + 1, 2**62 times over (a Loop's trip count is data): ``_graph_model(**model)``."""

    def write(path: Path) -> Path:
        import numpy as np
        from onnx import TensorProto, helper, numpy_helper

        body = helper.make_graph(
            [
                helper.make_node("Identity", ["go"], ["go_on"]),
                helper.make_node("Add", ["acc", "one"], ["acc_out"]),
            ],
            "body",
            [
                helper.make_tensor_value_info("i", TensorProto.INT64, []),
                helper.make_tensor_value_info("go", TensorProto.BOOL, []),
                helper.make_tensor_value_info("acc", TensorProto.FLOAT, None),
            ],
            [
                helper.make_tensor_value_info("go_on", TensorProto.BOOL, []),
                helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, None),
            ],
            [numpy_helper.from_array(np.array(1.0, np.float32), "one")],
        )
        loop = helper.make_node("Loop", ["trips", "go", "x"], ["y"], body=body)
        trips = {"trips": np.array(2**62), "go": np.array(True)}
        return _graph_model(path, [loop], trips, **model)

    return write


def _eight_gib(**model: Any) -> Callable[[Path], Path]:
    """y = x + the sum of 2**31 zeros (8 GiB of them): ``_graph_model(**model)``."""

    def write(path: Path) -> Path:
        import numpy as np
        from onnx import helper, numpy_helper

        zero = numpy_helper.from_array(np.zeros(1, np.float32))
        nodes = [
            helper.make_node("ConstantOfShape", ["size"], ["zeros"], value=zero),
            helper.make_node("ReduceSum", ["zeros"], ["total"], keepdims=0),
            helper.make_node("Add", ["x", "total"], ["y"]),
        ]
        return _graph_model(path, nodes, {"size": np.array([2**31])}, **model)

    return write


endless_loop, eight_gib = _endless_loop(), _eight_gib()


@pytest.mark.parametrize(
    ("command", "model", "options", "message"),
    [
        ("predict", endless_loop, ["--timeout", "2"], "did not finish within 2 s"),
        ("bench", endless_loop, ["--timeout", "2"], "did not finish within 2 s"),
        ("predict", eight_gib, ["--max-memory", "1G"], "Failed to allocate memory"),
    ],
    ids=["predict-loop", "bench-loop", "predict-8GiB"],
)
def test_onnx_runtime_runs_a_users_model_bounded(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    model: Any,
    options: list[str],
    message: str,
) -> None:
    """An .onnx file is a program: predict and bench run it in a child process bounded in
    time and (on the CPU) memory, and say which bound it ran into."""
    import numpy as np

    path = model(tmp_path / "hostile.onnx")
    np.savez(tmp_path / "x.npz", x=np.zeros((1, 4), np.float32))
    given = [tmp_path / "x.npz"] if command == "predict" else ["--batch", "1"]
    started = time.monotonic()
    code, err = cli(capsys, command, path, *given, "--device", "cpu", *options)
    assert code == 1 and message in err and "ONNX Runtime" in err
    assert time.monotonic() - started < 60


def _diffusion_model() -> dict[str, Any]:
    """``_graph_model`` arguments for a denoiser of 1x2x2 images (x: the image, then the
    timestep and a one-token prompt, unused) with the metadata ``dlspec export`` writes."""
    others = denoiser_inputs()[1:]  # after the image, x
    return {"shape": ("N", 1, 2, 2), "extra_inputs": others, "metadata": DIFFUSION_METADATA}


@pytest.mark.parametrize(
    ("model", "options", "message"),
    [
        (_endless_loop(**_diffusion_model()), ["--timeout", "2"], "did not finish within 2 s"),
        (_eight_gib(**_diffusion_model()), ["--max-memory", "1G"], "Failed to allocate memory"),
    ],
    ids=["loop-2**62", "8GiB"],
)
def test_sample_runs_an_onnx_model_bounded_and_writes_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    model: Callable[[Path], Path],
    options: list[str],
    message: str,
) -> None:
    """`dlspec sample MODEL.onnx` runs the file's graph in the bounded child process as
    predict does, says which bound it ran into, and leaves no output (nor a temporary)."""
    path = model(tmp_path / "hostile.onnx")
    out = tmp_path / "images.png"
    started = time.monotonic()
    code, err = cli(capsys, "sample", path, "--num", "2", "--out", out, *options)
    assert code == 1 and message in err and "ONNX Runtime" in err
    assert time.monotonic() - started < 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.onnx"]


def test_sample_draws_from_an_onnx_model_in_the_bounded_child(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The child writes the images and its report comes through to the user; a denoiser
    that answers infinities is a message naming the file, and writes nothing."""
    import numpy as np
    from onnx import helper

    path = denoiser_model(tmp_path / "identity.onnx")
    out = tmp_path / "images.npz"
    assert main(["sample", str(path), "--num", "3", "--out", str(out), "--timeout", "60"]) == 0
    assert f"wrote {out}: 3 images [1, 2, 2]" in capsys.readouterr().out
    with np.load(out) as arrays:
        assert arrays["images"].shape == (3, 1, 2, 2) and list(arrays["prompts"]) == ["a"] * 3

    divide = [helper.make_node("Div", ["x", "zero"], ["y"])]
    zero = {"zero": np.array(0.0, np.float32)}
    path = _graph_model(tmp_path / "infinite.onnx", divide, zero, **_diffusion_model())
    code, err = cli(capsys, "sample", path, "--out", tmp_path / "inf.png")
    assert code == 1 and f"{path}: the denoiser's output holds NaN or infinite values" in err
    assert not (tmp_path / "inf.png").exists()


def _allocate_torch() -> int:
    import torch

    return int(torch.empty(2**34).numel())  # 64 GiB


def _allocate_python() -> int:
    return len(bytearray(2**34))


def _exit_abruptly() -> int:
    os._exit(127)  # as the C library does when it cannot allocate a thread's memory


@pytest.mark.parametrize(
    ("job", "message"),
    [
        (_allocate_torch, "the job needs more than 1.00 GiB of memory (--max-memory"),
        (_allocate_python, "the job needs more than 1.00 GiB of memory (--max-memory"),
        (_exit_abruptly, "the job ended the process (exit 127) before dlspec t finished (out of"),
    ],
    ids=["torch-allocator", "python", "exit-127"],
)
def test_a_bounded_child_that_runs_out_of_memory_is_a_message(
    capsys: pytest.CaptureFixture[str], job: Callable[[], int], message: str
) -> None:
    """Every way an allocation is refused in the child, torch's allocator (a RuntimeError)
    and the C library's exit included, is the message of the memory bound and exit 1."""
    from dlspec.commands.bounded import run_bounded

    assert run_bounded(job, seconds=60, memory=2**30, what="the job", name="t") == 1
    assert message in capsys.readouterr().err


def test_predict_maps_its_libraries_before_the_memory_bound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The child's imports happen before the bound applies: a small bound is for the model."""
    import numpy as np

    model = onnx_model(tmp_path / "m.onnx", {"dlspec.classes": '["a", "b", "c", "d"]'})
    np.savez(tmp_path / "x.npz", x=np.zeros((2, 4), np.float32))
    code, err = cli(capsys, "predict", model, tmp_path / "x.npz", "--max-memory", "64M")
    assert code == 0, err
