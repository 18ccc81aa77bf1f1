"""ONNX export (``dlspec export``), ONNX Runtime inference (``dlspec predict``, ``dlspec bench``).

* Oracle: every shipped spec that checks exports, passes onnx.checker, and ONNX Runtime agrees
  with torch within the stated tolerance (``RTOL``) on random inputs at two batch sizes (and
  two sequence lengths); its initializers hold exactly the trainable parameters that
  ``dlspec check`` reports (a tied weight once), under torch's names.
* The model has a dynamic batch axis (and dynamic sequence axes) and carries its metadata.
* The CLI: export with and without weights, predict on a PNG and an .npz, bench; every bad
  input (missing or foreign weights, unwritable output, an opset too old, a wrong input shape,
  a failed verification) gives a message and an exit code, and leaves no file behind.

The transformer spec is exported at small vocabularies and lengths (its core is the base
model's 44M parameters either way).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import ROOT, SPECS
from PIL import Image

import dlspec
from dlspec.analysis.check import check_file
from dlspec.analysis.lints import unread
from dlspec.backends import onnx_export
from dlspec.backends.onnx_export import ExportResult, export_onnx
from dlspec.backends.runtime import Session
from dlspec.cli import main
from dlspec.commands.export import copy_pattern
from dlspec.layers.symbolic import value_at
from dlspec.train.checkpoint import Checkpoint, save_checkpoint, spec_hash

# smaller --set values where the spec's own make the export slow
OVERRIDES: dict[str, dict[str, object]] = {
    "transformer": {"src_vocab": 50, "tgt_vocab": 50, "max_len": 16, "S": 8, "T": 8},
}
GOOD = [path.stem for path in SPECS if check_file(path).ok]
NOTICES: dict[str, list[str]] = {}  # what export_onnx announced before a long step, per spec


@cache
def exported(name: str) -> tuple[dlspec.Spec, ExportResult]:
    """A spec (random weights, seed 0) exported and verified on CPU, once per test run."""
    spec = dlspec.load(ROOT / "specs" / f"{name}.dl", **OVERRIDES.get(name, {}))
    torch.manual_seed(0)
    notify = NOTICES.setdefault(name, []).append
    result = export_onnx(spec.to_torch(), spec.graph, device="cpu", notify=notify)
    return spec, result


def metadata(result: ExportResult) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load_from_string(result.data).metadata_props}


def test_every_shipped_spec_is_covered() -> None:
    assert {"cnn", "tiny_gpt", "transformer", "lstm_lm", "gru_classifier", "rnn"} <= set(GOOD)


@pytest.mark.parametrize("name", GOOD)
def test_export_verifies_and_counts_parameters(name: str) -> None:
    spec, result = exported(name)
    assert result.comparisons and all(c.passed for c in result.comparisons)
    assert {c.batch for c in result.comparisons} == set(onnx_export.VERIFY_BATCHES)
    if spec.graph.symbols:  # two sequence lengths
        assert len({tuple(c.lengths.items()) for c in result.comparisons}) == 2
    assert max(c.max_rel for c in result.comparisons) <= onnx_export.RTOL["fp32"]
    counted = result.initializers
    assert counted.parameters == spec.report.trainable_params
    assert counted.missing == ()
    # buffers the graph uses (BatchNorm's running statistics, position tables), never its
    # step counters
    assert counted.buffers <= spec.report.buffers
    meta = metadata(result)
    assert meta[onnx_export.META_VERSION] == dlspec.__version__
    assert meta[onnx_export.META_PARAMETERS] == str(spec.report.trainable_params)
    assert meta[onnx_export.META_MODEL] == spec.graph.name
    onnx.checker.check_model(onnx.load_from_string(result.data), full_check=True)


@pytest.mark.parametrize("name", GOOD)
def test_dynamic_batch_and_sequence_axes(name: str) -> None:
    spec, result = exported(name)
    graph = spec.graph
    session = Session(result.data, device="cpu")
    assert [i.name for i in session.inputs] == [i.name for i in graph.inputs]
    assert [o.name for o in session.outputs] == [o.name for o in graph.outputs]
    assert all(info.shape[0] == "batch" for info in session.inputs)
    lengths = {symbol: 5 for symbol in graph.symbols}  # neither length the export saw
    inputs = onnx_export.sample_inputs(graph, 3, lengths, torch.Generator().manual_seed(2))
    outputs = session.run({k: v.numpy() for k, v in inputs.items()})
    for out, expected in zip(outputs, [o.type for o in graph.outputs], strict=True):
        assert out.shape == (3, *(value_at(d, lengths) for d in expected.shape))


def test_tied_weights_are_stored_once() -> None:
    spec, result = exported("tiny_gpt")
    names = {i.name for i in onnx.load_from_string(result.data).graph.initializer}
    assert len(names & {"tok_emb.weight", "head.weight"}) == 1
    assert result.initializers.parameters == spec.report.trainable_params == 809_856


def test_exporter_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """TorchScript where it exports, attention at any T included; dynamo where it fails,
    announced before it starts, in one line (a quick export is silent)."""
    for name in ("cnn", "lstm_lm", "tiny_gpt"):
        assert exported(name)[1].exporter == "TorchScript" and exported(name)[1].fallback is None
        assert NOTICES[name] == []

    def refused(*_: object) -> None:
        raise RuntimeError("ONNX export of operator X is not supported. Please report it")

    monkeypatch.setattr(onnx_export, "_export_torchscript", refused)
    spec = dlspec.load(ROOT / "specs" / "mlp.dl")
    notices: list[str] = []
    result = export_onnx(spec.to_torch(), spec.graph, device="cpu", notify=notices.append)
    assert result.exporter == "dynamo" and all(c.passed for c in result.comparisons)
    assert result.fallback is not None and result.fallback.startswith("TorchScript: ")
    assert notices == [
        "exporting MLP with the dynamo exporter (TorchScript: ONNX export of operator X is not "
        "supported); this may take ~20 s..."
    ]


RMS_NORM = """
model R(T: dim = 6) {
    input x: float[T, 8]
    a = RMSNorm
    b = Linear(4)
    c = RMSNorm(elementwise_affine=false, eps=1e-3)
}
"""


@pytest.mark.parametrize(("opset", "fp16"), [(17, False), (18, False), (18, True)])
def test_rms_norm_exports_with_torchscript(opset: int, fp16: bool) -> None:
    """TorchScript lacks aten::rms_norm below opset 23; dlspec gives it one (torch's default
    eps, a weight or none), so RMSNorm models export in a second, not dynamo's ~20 s."""
    spec = dlspec.load_text(RMS_NORM, "<rms>")
    torch.manual_seed(0)
    result = export_onnx(spec.to_torch(), spec.graph, opset=opset, fp16=fp16, device="cpu")
    assert result.exporter == "TorchScript" and result.fallback is None
    assert all(c.passed for c in result.comparisons) and len(result.comparisons) == 8
    ops = {node.op_type for node in onnx.load_from_string(result.data).graph.node}
    assert {"ReduceMean", "Sqrt", "Div"} <= ops


# sizes TorchScript cannot see: the batch, and every size after a Chunk (a Slice) or over T
HIDDEN_SIZES = {
    "batch norm": """
model B(T: dim = 6) {
    input x: float[2, T, 9]
    a = BatchNorm2d(track_running_stats=false) <- x
    p, q, r = Chunk(3, dim=2) <- a
    b = BatchNorm2d(affine=false) <- p
    f = Flatten(start_dim=1) <- q
    c = BatchNorm1d(affine=false, track_running_stats=false) <- f
    output b, c
}
""",
    "attention": """
model A(T: dim = 7) {
    input x: float[T, 6]
    input m: float[T, 4]
    s = MultiheadAttention(num_heads=3) <- x
    c = MultiheadAttention(num_heads=2, causal=true) <- s, m
    e = TransformerEncoderLayer(nhead=2, dim_feedforward=8, dropout=0.0, causal=true) <- c
    r = RNN(5, returns="hidden") <- e
    output e, r
}
""",
    "adaptive pooling": """
model P(T: dim = 7) {
    input x: float[3, T, 5]
    a = AdaptiveAvgPool2d(3) <- x
    p, q = Chunk(2, dim=2) <- x
    b = AdaptiveAvgPool2d([2, 1]) <- p
    c = AdaptiveAvgPool2d([4, 1]) <- q
    output a, b, c
}
""",
    "adaptive max pooling": """
model M(T: dim = 7) {
    input x: float[4, T]
    input y: float[2, 7]
    a = AdaptiveMaxPool1d(3) <- x
    b = AdaptiveMaxPool1d(5) <- x
    c = AdaptiveMaxPool1d(3) <- y
    output a, b, c
}
""",
    "pixel shuffles over more than [C, H, W]": """
model S(T: dim = 6) {
    input x: float[T, 8, 2, 4]
    input v: float[2, 3, 4, 6]
    a = PixelShuffle(2) <- x
    b = PixelUnshuffle(2) <- a
    c = PixelUnshuffle(2) <- v
    d = PixelShuffle(2) <- c
    output b, d
}
""",
    "pooling in ceil_mode": """
model C(T: dim = 4) {
    input x: float[T, 4, 5]
    a = AvgPool2d(2, padding=1, ceil_mode=true) <- x
    b = Linear(3) <- a
    m = MaxPool2d(2, padding=1, ceil_mode=true) <- x
    c = Linear(3) <- m
    output b, c
}
""",
    # torch drops the window ceil_mode adds (it would start in the padding), ONNX's
    # inference counts it: ONNX Runtime planned the pool's output into the Linear's buffer,
    # of the size it counted (fuzz seed 13,007,816)
    "pooling in ceil_mode beside a tensor of the size ONNX counts": """
model C(T: dim = 3) {
    input x: float[3, 3, 3, 4]
    input y: float[T, 3]
    l = Linear(3) <- x
    a = AvgPool3d(2, padding=1, ceil_mode=true) <- x
    m = MaxPool3d(2, padding=1, ceil_mode=true) <- x
    z = Linear(2) <- y
    output a, l, m, z
}
""",
    # after a Chunk TorchScript sees no size: pools in ceil_mode are made by hand, their
    # count read at run time (torch drops ceil's last window over 5 rows, keeps it over 6)
    "pooling in ceil_mode over sizes it cannot see": """
model C(T: dim = 5) {
    input x: float[T, 10, 6]
    p, q = Chunk(2, dim=1) <- x
    a = AvgPool2d(3, stride=2, padding=1, ceil_mode=true) <- p
    c = AvgPool2d(3, stride=2, padding=1, ceil_mode=true, count_include_pad=false) <- p
    m = MaxPool2d(2, stride=2, padding=1, ceil_mode=true) <- q
    v = AvgPool2d(2, stride=2, padding=1, ceil_mode=true, divisor_override=3) <- q
    output a, c, m, v
}
""",
    "sizes read after windows and attention": """
model W(T: dim = 6) {
    input x: float[4, 4, 6]
    input y: float[T, 4]
    b = RelativePositionBias(2, 2) <- x
    w = WindowPartition(2) <- x
    a = SDPA(2) <- w, w, w, b
    m = WindowMerge(2) <- a, x
    c = RelativePositionBias(2, 2) <- m
    v = WindowPartition(2) <- m
    u = SDPA(2) <- v, v, v, c
    s = SDPA(2) <- y, y, y
    g = GRU(3) <- s
    d = TransformerDecoderLayer(nhead=2, dim_feedforward=8, dropout=0.0) <- y, s
    output u, g, d
}
""",
    "padded keys over T": """
model K(T: dim = 5) {
    input x: long[T]
    e = Embedding(8, 6) <- x
    a = MultiheadAttention(num_heads=2, causal=true) <- e, x
    b = MultiheadAttention(num_heads=3) <- a, e, x
    output b
}
""",
    "causal attention over a position bias": """
model C(T: dim = 6) {
    input y: float[T, 4]
    b = BucketedPositionBias(4, 2, max_distance=8, bidirectional=false) <- y
    a = SDPA(2, causal=true, scale=1.0) <- y, y, y, b
}
""",
    "inputs that are outputs": """
model I(T: dim = 5) {
    input u: float[2]
    input x: long[T]
    input y: float[T, 3]
    z = Linear(2) <- y
    output x, z, y
}
""",
}


@pytest.mark.parametrize("name", HIDDEN_SIZES)
def test_layers_over_sizes_torchscript_cannot_see_export(name: str) -> None:
    """torch's TorchScript symbolics refuse BatchNorm without a weight or running statistics
    over an unknown batch or channel size, and adaptive pooling over sizes they cannot see or
    divide, and its trace of nn.MultiheadAttention fixes T (with a key padding mask too; and,
    through sizes read after it, an RNN's initial state the batch); dlspec's export them,
    and ONNX Runtime agrees at two batch sizes and two T."""
    spec = dlspec.load_text(HIDDEN_SIZES[name], "<hidden>")
    torch.manual_seed(0)
    result = export_onnx(spec.to_torch(), spec.graph, device="cpu")
    assert result.exporter == "TorchScript" and result.fallback is None
    assert {c.batch for c in result.comparisons} == set(onnx_export.VERIFY_BATCHES)
    assert len({c.lengths["T"] for c in result.comparisons}) == 2
    assert all(c.passed for c in result.comparisons)


INSTANCE_NORMS = """
model I(T: dim = 6) {
    input x: float[3, T]
    input y: float[2, T, 4]
    a = InstanceNorm1d(affine=true, track_running_stats=true) <- x
    b = InstanceNorm2d <- y
    w = Parameter(2, 3, 4, 2) <- x
    c = InstanceNorm3d(track_running_stats=true) <- w
    d = InstanceNorm3d(affine=true) <- w
    output a, b, c, d
}
"""


def test_instance_norm_exports_over_sizes_torchscript_cannot_see() -> None:
    """torch's TorchScript symbolic evaluates InstanceNorm's running statistics through a
    reshape to one sample of batch x channels (so it refuses the dynamic batch) and builds a
    missing weight from the channel size (which it cannot see after a Parameter's expand);
    dlspec's normalises by the running statistics per channel and reads the channels at run
    time. Running statistics and affine weights are random, so that each counts."""
    spec = dlspec.load_text(INSTANCE_NORMS, "<instance>")
    torch.manual_seed(0)
    model = spec.to_torch()
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
            elif tensor.is_floating_point():
                tensor.normal_()
    result = export_onnx(model, spec.graph, device="cpu")
    assert result.exporter == "TorchScript" and result.fallback is None
    assert len(result.comparisons) == 8 and all(c.passed for c in result.comparisons)


PADS_BEFORE_MAX_POOLING = """
model P {
    input x: float[2, 6, 6]
    n = Sub(5.0) <- x
    a = Pad(left=1, right=1, value=0.0) <- n
    b = MaxPool2d(3, stride=1, padding=1) <- a
    c = Pad(left=2, right=1) <- x
    d = MaxPool2d(2, stride=2, padding=1) <- c
    output b, d
}
"""


def test_a_pad_before_max_pooling_keeps_its_value() -> None:
    """ONNX Runtime's Pad_Fusion moves a Pad into the next MaxPool's pads, which pad with
    -inf: the maxima of b's windows over negative values lost the Pad's zeros, and d's fused
    pads (3) exceed its kernel (2), which the session refused. dlspec's sessions run without
    it, and agree with torch."""
    spec = dlspec.load_text(PADS_BEFORE_MAX_POOLING, "<pads>")
    torch.manual_seed(0)
    result = export_onnx(spec.to_torch(), spec.graph, device="cpu")
    assert result.exporter == "TorchScript" and result.fallback is None
    assert len(result.comparisons) == 4 and all(c.passed for c in result.comparisons)


def test_token_ids_stay_below_the_smallest_vocabulary() -> None:
    spec = dlspec.load(ROOT / "specs" / "transformer.dl", src_vocab=30, tgt_vocab=20)
    assert onnx_export.index_limit(spec.graph) == 20
    ids = onnx_export.sample_inputs(spec.graph, 4, spec.graph.bindings, torch.Generator())
    assert all(int(x.max()) < 20 for x in ids.values())


def test_fp16_export_verifies_within_its_tolerance() -> None:
    spec = dlspec.load(ROOT / "specs" / "mlp.dl")
    result = export_onnx(spec.to_torch(), spec.graph, fp16=True, device="cpu")
    assert result.precision == "fp16" and result.rtol == onnx_export.RTOL["fp16"]
    assert all(c.passed for c in result.comparisons)
    assert Session(result.data, device="cpu").inputs[0].dtype == np.float16
    assert result.initializers.parameters == spec.report.trainable_params


def test_verification_failure_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(onnx_export.RTOL, "fp32", 0.0)
    spec = dlspec.load(ROOT / "specs" / "mlp.dl")
    with pytest.raises(onnx_export.ExportError, match=r"verification failed: .* differs"):
        export_onnx(spec.to_torch(), spec.graph, device="cpu")


# the command line ------------------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def test_export_predict_png_and_npz(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Export MY_NET with a checkpoint and the metrics.json beside it (class names,
    normalisation), then predict on a PNG and an .npz."""
    spec = dlspec.load(ROOT / "specs" / "cnn.dl")
    torch.manual_seed(1)
    state = spec.to_torch().state_dict()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    digest = spec_hash(spec.source_text, spec.graph.arguments)
    save_checkpoint(run_dir / "checkpoint.pt", Checkpoint(digest, 3, state, {}, [], {}))
    classes = [f"class{i}" for i in range(10)]
    metrics = {
        "spec_hash": digest,
        "config": {"mean": 0.5, "std": 0.25},
        "data": {"classes": classes},
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    out = tmp_path / "cnn.onnx"
    code, stdout, err = run(
        capsys,
        "export",
        "specs/cnn.dl",
        "--weights",
        str(run_dir / "checkpoint.pt"),
        "-o",
        str(out),
    )
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0].startswith("exported MyNet with TorchScript (opset 18, fp32)")
    assert "9,536,074 parameters, as check counts; weights: checkpoint.pt (3 epochs)" in lines[0]
    assert lines[1].startswith("verified on CPU with 4 random inputs at batch 1 and 3")
    assert lines[2].startswith(f"wrote {out}")
    session = Session(out, device="cpu")
    assert json.loads(session.metadata[onnx_export.META_CLASSES]) == classes
    assert json.loads(session.metadata[onnx_export.META_NORMALIZE]) == {"mean": 0.5, "std": 0.25}
    assert session.metadata[onnx_export.META_HASH] == digest
    # the exported weights are the checkpoint's
    model = spec.to_torch().eval()
    model.load_state_dict(state)
    x = torch.rand(2, 3, 48, 48)
    with torch.inference_mode():
        expected = model(x).numpy()
    np.testing.assert_allclose(session.run({"image": x.numpy()})[0], expected, rtol=1e-4, atol=1e-5)

    png = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), np.uint8)).save(png)
    npz = tmp_path / "batch.npz"
    np.savez(npz, x=np.random.default_rng(1).random((2, 3, 48, 48), np.float32))
    code, stdout, err = run(capsys, "predict", str(out), str(png), str(npz), "--top", "2")
    assert code == 0, err
    lines = stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [str(png), f"{npz}[0]", f"{npz}[1]"]
    for line in lines:
        picks = line.split(": ", 1)[1].split(", ")
        assert len(picks) == 2 and all(p.split()[0] in classes for p in picks)
        assert sum(float(p.split()[1].rstrip("%")) for p in picks) <= 100.0


def test_predict_sequence_model_on_token_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, result = exported("lstm_lm")
    model = tmp_path / "lm.onnx"
    model.write_bytes(result.data)
    npz = tmp_path / "text.npz"
    np.savez(npz, chars=np.array([[1, 2, 3, 4, 5, 6, 7]]))
    code, stdout, _ = run(capsys, "predict", str(model), str(npz), "-k", "1")
    assert code == 0 and stdout.startswith(f"{npz}: ") and stdout.count("%") == 1


def test_predict_wrong_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, result = exported("mlp")
    model = tmp_path / "mlp.onnx"
    model.write_bytes(result.data)
    npz = tmp_path / "bad.npz"
    np.savez(npz, x=np.zeros((4, 10), np.float32))
    code, _, err = run(capsys, "predict", str(model), str(npz))
    assert code == 1
    assert "the data has 10 features per sample, but the model takes 64" in err
    png = tmp_path / "photo.png"
    Image.new("RGB", (5, 5)).save(png)  # 75 values, the model takes 64
    code, _, err = run(capsys, "predict", str(model), str(png))
    assert code == 1 and "images of shape (3, 5, 5) have 75 values" in err
    code, _, err = run(capsys, "predict", str(model), str(tmp_path / "missing.npz"))
    assert code == 1 and "no such file" in err
    code, _, err = run(capsys, "predict", str(npz), str(npz))
    assert code == 1 and "ONNX Runtime cannot load the model" in err


def test_bench_runs(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, err = run(
        capsys, "bench", "specs/mlp.dl", "--batch", "1", "4", "--iterations", "2", "--warmup", "1"
    )
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0].startswith("exported MLP with TorchScript")
    header = lines.index(next(line for line in lines if line.startswith("device")))
    assert "torch eager" in lines[header] and "ONNX Runtime" in lines[header]
    rows = lines[header + 1 :]
    assert [row.split()[:2] for row in rows] == [["CPU", "1"], ["CPU", "4"]]
    assert all(row.endswith("x") for row in rows)


def test_bench_an_exported_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An .onnx file from `dlspec export`: torch eager is timed on the spec it names, when
    that spec is at hand."""
    model = tmp_path / "rnn.onnx"
    assert run(capsys, "export", "specs/rnn.dl", "--no-verify", "-o", str(model))[0] == 0
    code, stdout, err = run(capsys, "bench", str(model), "--batch", "2", "--iterations", "1")
    assert code == 0, err
    assert stdout.splitlines()[-1].split()[:2] == ["CPU", "2"] and stdout.rstrip().endswith("x")
    monkeypatch.chdir(tmp_path)  # specs/rnn.dl is not found from here
    code, stdout, err = run(capsys, "bench", "rnn.onnx", "--batch", "2", "--iterations", "1")
    assert code == 0 and "torch eager skipped" in err and stdout.rstrip().endswith("-")


def test_missing_and_foreign_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.onnx"
    code, _, err = run(
        capsys, "export", "specs/mlp.dl", "--weights", str(tmp_path / "no.pt"), "-o", str(out)
    )
    assert code == 1 and "no.pt: no such file" in err
    other = dlspec.load(ROOT / "specs" / "cnn.dl")
    foreign = tmp_path / "cnn.pt"
    digest = spec_hash(other.source_text, other.graph.arguments)
    save_checkpoint(foreign, Checkpoint(digest, 1, other.to_torch().state_dict(), {}, [], {}))
    code, _, err = run(capsys, "export", "specs/mlp.dl", "--weights", str(foreign), "-o", str(out))
    assert code == 1 and "made from a different spec" in err and "--resume" not in err
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    code, _, err = run(
        capsys, "export", "specs/mlp.dl", "--weights", str(tmp_path / "junk.pt"), "-o", str(out)
    )
    assert code == 1 and "cannot read the checkpoint" in err
    assert files(tmp_path) == {"cnn.pt", "junk.pt"}


def test_unwritable_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "export", "specs/mlp.dl", "-o", str(tmp_path / "no" / "m.onnx"))
    assert code == 2 and "no directory" in err
    code, _, err = run(capsys, "export", "specs/mlp.dl", "-o", str(tmp_path))
    assert code == 2 and "is a directory" in err
    assert files(tmp_path) == set()


def test_opset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "g.onnx"
    with pytest.raises(SystemExit) as usage:
        main(["export", "specs/mlp.dl", "--opset", "3", "-o", str(out)])
    assert usage.value.code == 2
    assert "opset 3 is outside what torch exports (7 to 23)" in capsys.readouterr().err
    args = ["--opset", "9", "--exporter", "torchscript", "-o", str(out)]
    code, _, err = run(capsys, "export", "specs/tiny_gpt.dl", *args)
    assert code == 1
    assert "cannot export TinyGPT to ONNX opset 9: TorchScript: Unsupported" in err
    assert files(tmp_path) == set()


def test_failed_verification_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(onnx_export.RTOL, "fp32", 0.0)
    code, _, err = run(capsys, "export", "specs/mlp.dl", "-o", str(tmp_path / "m.onnx"))
    assert code == 1 and "verification failed" in err and "--no-verify" in err
    assert files(tmp_path) == set()
    code, stdout, _ = run(
        capsys, "export", "specs/mlp.dl", "--no-verify", "-o", str(tmp_path / "m.onnx")
    )
    assert code == 0 and "verified" not in stdout and files(tmp_path) == {"m.onnx"}


def test_default_output_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "export", str(ROOT / "specs" / "mlp.dl"), "--no-verify")[0] == 0
    assert files(tmp_path) == {"mlp.onnx"}


def test_cuda_missing_falls_back_to_cpu_with_a_notice(tmp_path: Path) -> None:
    """With no usable GPU, ONNX Runtime runs on CPU: silently where the machine has no GPU at
    all, with a one-line notice where a GPU is there but hidden or unusable."""
    import onnxruntime as ort

    from dlspec.backends.runtime import gpu_present

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider to fall back from")
    _, result = exported("mlp")
    model = tmp_path / "mlp.onnx"
    model.write_bytes(result.data)
    npz = tmp_path / "x.npz"
    np.savez(npz, x=np.zeros((1, 64), np.float32))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "dlspec", "predict", str(model), str(npz)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    notice = (
        "note: ONNX Runtime cannot use CUDA here (no GPU, or its CUDA / cuDNN libraries are "
        "missing); running on CPU"
    )
    assert done.stderr.splitlines() == ([notice] if gpu_present() else [])
    for device in ("cuda", "cuda:1"):
        done = subprocess.run(
            [*command, "--device", device],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            check=False,
        )
        assert done.returncode == 1 and f"device {device}: ONNX Runtime cannot use CUDA" in (
            done.stderr
        )


# every layer kind exports: tiny specs that together use each kind --------------------------

KIND_SPECS = {
    "activations": """model Acts {
        input x: float[3, 4, 4]
        ReLU6  Hardtanh(-2, 2)  Hardswish  Hardsigmoid  Mish  ELU(0.5)  Softplus(2)
        PReLU(3)  PReLU
    }""",
    "vision": """model Vision {
        input image: float[3, 8, 8]
        patches = Conv2d(16, kernel=4, stride=4)     # [16, 2, 2]
        LayerNorm2d  StochasticDepth(0.1)
        Flatten(1)  tokens = Transpose(0, 1)         # [4, 16]
        cls = Parameter(1, 16) <- tokens
        joined = Concat(0) <- cls, tokens            # [5, 16]
        pos = Parameter(5, 16) <- joined
        h = Add <- joined, pos
        gate = Mean(0, keepdim=true)  Sigmoid
        y = Mul <- h, sigmoid1
        Permute(1, 0)  Sum(-1)  Softmax(0)
    }""",
    "llama": """model TinyLlama(T: dim = 6) {
        input tokens: long[T]
        x = Embedding(50, 16)
        n = RMSNorm
        q = Linear(16, bias=false) <- n
        q_rot = RoPE(4) <- q
        k = Linear(8, bias=false) <- n
        k_rot = RoPE(2) <- k
        v = Linear(8, bias=false) <- n
        a = SDPA(4, 2, causal=true) <- q_rot, k_rot, v
        o = Linear(16, bias=false)
        h = Add <- x, o
        g = Linear(24, bias=false)  SiLU
        u = Linear(24, bias=false) <- h
        m = Mul <- silu1, u
        Linear(50)
    }""",
    "chunk": """model Glu {
        input x: float[5, 8]
        h = Linear(16)
        a, b = Chunk(2) <- h
        g = SiLU <- a
        m = Mul <- g, b
        p, q, r = Chunk(3, dim=0) <- m      # 5 in 3 pieces: 2 + 2 + 1
        output p, r
    }""",
    "masks": """model Masks {
        input tokens: long[5]
        mask = PaddingMask(0)
        e = Embedding(20, 8) <- tokens
        types = Full(0) <- tokens                     # BERT's token types, all 0
        t = Embedding(2, 8) <- types
        x = Add <- e, t
        a = SDPA(2) <- x, x, x, mask                  # padding: BERT's extended mask
        bias = Parameter(2, 5, 5) <- a                # [h, T, S], added to the scores
        t5 = BucketedPositionBias(8, 2, max_distance=6) <- a   # T5's, by offset buckets
        b = SDPA(2, scale=1.0) <- a, a, a, bias, t5   # T5 does not scale its scores
        MultiheadAttention(num_heads=2, bias=["q", "v", "out"])   # Whisper's k_proj: none
    }""",
    "key_padding": """model KeyPadding {          # padded keys: a long [S] mask after the sequences
        input tokens: long[5]
        input memory: float[6, 4]
        input ids: long[6]
        x = Embedding(4, 8) <- tokens                # ids drawn below 4: a quarter padding
        pad = PaddingMask(0) <- ids
        keep = PaddingMask(0) <- tokens
        a = MultiheadAttention(num_heads=2, causal=true) <- x, keep
        b = MultiheadAttention(num_heads=2, kdim=4, vdim=4) <- a, memory, pad
        c = MultiheadAttention(num_heads=2, bias=["q", "v", "out"]) <- b, memory, memory, pad
        MultiheadAttention(num_heads=2, bias=["k"], causal=true) <- c, keep
    }""",
    "windows": """model Windows {                    # Swin's shifted-window attention
        input x: float[4, 4, 8]
        bias = RelativePositionBias(2, 2) <- x       # [2, 4, 4]
        mask = ShiftedWindowMask(2, 1) <- x          # [2, 2, 1, 4, 4]
        windows = WindowPartition(2, 1) <- x         # [2, 2, 4, 8]
        qkv = Linear(24)
        q, k, v = Chunk(3) <- qkv
        a = SDPA(2) <- q, k, v, bias, mask
        WindowMerge(2, 1) <- a, x
    }""",
    "two_outputs": """block Pair(d: int) <- x, y {
        x2 = Linear(d) <- y
        a, b = Chunk(2) <- x
        y2 = Concat <- b, a
        output x2, y2
    }
    model M {
        input x: float[4, 8]
        p, q = Pair(8) * 2 <- x, x
        output q, p
    }""",
    "math": """model Math {
        input x: float[3, 6]
        input m: float[3, 6]
        h = Linear(6)
        mu = Linear(6) <- x
        logvar = Clamp(-4, 4) <- h
        scaled = Mul(0.5)
        std = Exp
        z = Reparameterize <- mu, logvar
        shifted = Sub(1) <- z
        a = Abs <- std
        b = Add(2)
        d = Div <- shifted, b
        Neg  Pow(2)  Sqrt  Add(1)  Log
        third = Div(3) <- std
        w = Where <- m, log1, third
        Pad(left=2, top=1)  Pad(left=1, right=1, mode="reflect")
        Pad([1, 0], mode="replicate")  Pad(right=2, mode="circular")
        Roll([1, -2], dims=[0, 1])
    }""",
    "volumes": """model Volumes {
        input x: float[2, 4, 6, 6]
        Conv3d(4, kernel=3, padding=1)  InstanceNorm3d(affine=true)
        MaxPool3d(2)                              # [4, 2, 3, 3]
        ConvTranspose3d(2, kernel=2, stride=2)    # [2, 4, 6, 6]
        AvgPool3d(2)  AdaptiveAvgPool3d([1, 2, 2])
    }""",
    "signals": """model Signals {
        input x: float[3, 16]
        ConvTranspose1d(4, kernel=4, stride=2, padding=1)   # [4, 32]
        InstanceNorm1d(track_running_stats=true)  AvgPool1d(2)
        m = AdaptiveMaxPool1d(4)                  # [4, 4]
        AdaptiveAvgPool1d(1) <- m
    }""",
    "pixels": """model Pixels {
        input x: float[8, 4, 4]
        PixelShuffle(2)                           # [2, 8, 8]
        InstanceNorm2d(affine=true)
        PixelUnshuffle(4)                         # [32, 2, 2]
    }""",
    "einsum": """model Mixer {
        input x: float[6, 8]
        q = Linear(8) <- x
        k = Linear(8) <- x
        v = Linear(8) <- x
        s = Einsum("td,sd->ts") <- q, k           # [6, 6]
        a = Softmax <- s
        o = Einsum("ts,sd->td") <- a, v           # [6, 8]
        h = Reshape(6, 2, 4) <- o
        Einsum("thd,shd->hts") <- h, h            # [2, 6, 6]
    }""",
}
NEW_KINDS = {
    "ReLU6", "Hardtanh", "Hardswish", "Hardsigmoid", "Mish", "ELU", "PReLU", "Softplus",
    "Mul", "Permute", "Transpose", "Mean", "Sum", "Parameter", "LayerNorm2d",
    "StochasticDepth", "SDPA", "RoPE", "Chunk", "PaddingMask", "WindowPartition", "WindowMerge",
    "Full",
    "RelativePositionBias", "ShiftedWindowMask", "BucketedPositionBias",
    "Sub", "Div", "Where", "Exp", "Log", "Sqrt", "Pow", "Neg", "Abs", "Clamp", "Pad", "Roll",
    "Reparameterize",
    "Conv3d", "ConvTranspose1d", "ConvTranspose3d", "MaxPool3d", "AvgPool1d", "AvgPool3d",
    "AdaptiveAvgPool1d", "AdaptiveMaxPool1d", "AdaptiveAvgPool3d", "InstanceNorm1d",
    "InstanceNorm2d", "InstanceNorm3d", "PixelShuffle", "PixelUnshuffle", "Einsum",
}  # fmt: skip


@pytest.mark.parametrize(("width", "chunks"), [(2, 4), (6, 4), (5, 3), (8, 2)])
def test_chunk_exports_with_torchscript_even_when_uneven(width: int, chunks: int) -> None:
    """The generated code splits as torch.chunk does, and an uneven split (fewer pieces than
    asked, too) exports with TorchScript, not as a sequence ONNX Runtime cannot split."""
    names = ", ".join(f"p{i}" for i in range(len(torch.zeros(width).chunk(chunks))))
    text = (
        f"model C {{ input x: float[5, {width}]  {names} = Chunk({chunks}) <- x  output {names} }}"
    )
    spec = dlspec.load_text(text)
    model = spec.to_torch()
    x = torch.randn(2, 5, width)
    assert all(torch.equal(a, b) for a, b in zip(model(x), x.chunk(chunks, -1), strict=True))
    result = export_onnx(model, spec.graph, device="cpu")
    assert result.exporter == "TorchScript" and all(c.passed for c in result.comparisons)


def test_kind_specs_use_every_new_kind() -> None:
    used = {
        leaf.layer.kind
        for text in KIND_SPECS.values()
        for leaf in dlspec.load_text(text).graph.leaves()
        if leaf.layer is not None
    }
    assert not NEW_KINDS - used, "kinds no spec here uses"


@pytest.mark.parametrize("name", KIND_SPECS)
def test_layer_kinds_export_and_verify(name: str) -> None:
    spec = dlspec.load_text(KIND_SPECS[name])
    torch.manual_seed(0)
    result = export_onnx(spec.to_torch(), spec.graph, device="cpu")
    assert result.comparisons and all(c.passed for c in result.comparisons)
    assert result.initializers.parameters == spec.report.total_params
    onnx.checker.check_model(onnx.load_from_string(result.data), full_check=True)


def test_unread_statements_are_kept_by_torch_and_dropped_by_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """W506's statements: the torch module holds their parameters (check's count is torch's)
    and they get no gradient; the exporter drops exactly those, and export says so."""
    path = ROOT / "tests" / "errors" / "unread.dl"
    spec = dlspec.load(path)
    entries = unread(spec.graph)
    torch.manual_seed(0)
    model = spec.to_torch()
    assert sum(p.numel() for p in model.parameters()) == spec.report.trainable_params
    model(torch.randn(2, 16, 32)).sum().backward()
    # a repetition's alike copies are analyzed once: a copy's path stands for them all
    owner = {name: copy_pattern(name.rpartition(".")[0]) for name, _ in model.named_parameters()}
    untrained = {name for name, p in model.named_parameters() if p.grad is None}
    paths = {copy_pattern(path) for entry in entries for path in entry.paths}
    assert {owner[name] for name in untrained} == paths & set(owner.values()) != set()
    dropped = sum(entry.params for entry in entries)
    assert dropped == sum(p.numel() for name, p in model.named_parameters() if name in untrained)
    code, out, _ = run(capsys, "export", str(path), "--out", str(tmp_path / "u.onnx"))
    assert code == 0
    kept = spec.report.trainable_params - dropped
    assert (
        f"{kept:,} parameters, but check counts {spec.report.trainable_params:,}: the exporter "
        f"dropped the {dropped:,} of layer3.res, probe, r.spare and deep.*.spare, whose output "
        "nothing reads"
    ) in out


PROJECTED_LSTM = """
model L(T: dim = 7) {
    input x: float[T, 5]
    s = LSTM(6, proj_size=4, num_layers=2, bidirectional=true, dropout=0.3) <- x
    h = LSTM(6, proj_size=3, num_layers=3, bias=false, returns="hidden") <- s
    l = LSTM(6, proj_size=2, bidirectional=true, returns="last") <- s
    output s, h, l
}
"""


def test_lstm_with_projections_exports_with_torchscript() -> None:
    """torch's TorchScript symbolic refuses LSTMs with projections; dlspec's runs ONNX's LSTM
    over the unprojected state with the recurrence W_hh W_hr, projecting outputs and final
    states: stacked, bidirectional, without biases, every `returns`, at two batch sizes and
    two T; the file holds the module's parameters (W_hh and W_hr, not their product)."""
    spec = dlspec.load_text(PROJECTED_LSTM, "<lstm>")
    torch.manual_seed(0)
    result = export_onnx(spec.to_torch(), spec.graph, device="cpu")
    assert result.exporter == "TorchScript" and result.fallback is None
    assert all(c.passed for c in result.comparisons) and len(result.comparisons) == 8
    assert result.initializers.parameters == spec.report.trainable_params
    assert result.initializers.missing == ()
    ops = [node.op_type for node in onnx.load_from_string(result.data).graph.node]
    assert ops.count("LSTM") == 6


CEIL_POOLS = [
    f"{kind}({k}, stride={s}, padding={p}, ceil_mode=true{extra})"
    for kind, extra in [
        ("AvgPool2d", ""),
        ("AvgPool2d", ", count_include_pad=false"),
        ("AvgPool2d", ", divisor_override=3"),
        ("MaxPool2d", ""),
        ("MaxPool2d", ", dilation=2"),
    ]
    for k, s, p in [(2, 2, 1), (3, 2, 1), (3, 3, 1), ([2, 3], [2, 3], 1)]
]


# over 5 x 7 torch drops every window ceil_mode adds, over 4 x 6 it keeps them (they reach
# past the padding), over 5 x 6 with [2, 3] windows it drops one axis's and keeps the other's
@pytest.mark.parametrize("size", ["5, 7", "4, 6", "5, 6"])
@pytest.mark.parametrize("pool", CEIL_POOLS)
def test_pools_in_ceil_mode_export_as_torch_computes_them(pool: str, size: str) -> None:
    """Over sizes where torch keeps the window ceil_mode adds on some axes, drops it on
    others, or both: ONNX Runtime's values and shapes are torch's (exported in floor mode
    where torch drops it on every axis where it adds one), with a divisor_override too,
    which torch's own symbolic drops."""
    spec = dlspec.load_text(
        f"model P {{ input x: float[2, {size}]  a = {pool} <- x  b = Linear(3) <- a }}", "<pool>"
    )
    torch.manual_seed(0)
    result = export_onnx(spec.to_torch(), spec.graph, device="cpu")
    assert result.exporter == "TorchScript" and all(c.passed for c in result.comparisons)
