"""`dlspec import`: round trips of every shipped spec, hand-written models, weights, errors."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import ROOT, SPECS
from test_zoo import SMALL as SMALL_ZOO
from test_zoo import _small as zoo_spec

import dlspec
from dlspec.cli import main
from dlspec.importers import torch_fx
from dlspec.importers.emit import write_spec
from dlspec.importers.ir import ImportFailed
from dlspec.importers.pipeline import RTOL, Result, import_model, imported_weights
from dlspec.layers.symbolic import fmt_dim

MODELS = "docs.examples.models"
CHECKED = [p for p in SPECS if p.stem != "seed_prose"]  # seed_prose has a deliberate error
# shorter sequences (and smaller vocabularies) keep the forward passes quick
SMALLER: dict[str, dict[str, int]] = {
    "transformer": {"src_vocab": 100, "tgt_vocab": 100, "S": 12, "T": 10},
    "tiny_gpt": {"T": 8},
    "lstm_lm": {"T": 8},
    "gru_classifier": {"T": 8},
    "rnn": {"T": 8},
}


@pytest.fixture(autouse=True)
def _at_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the example models import as docs.examples.models


def round_trip(spec: dlspec.Spec) -> tuple[Result, dlspec.Spec]:
    """spec -> to_torch() -> import -> the imported spec, checked."""
    torch.manual_seed(0)
    original = spec.to_torch()
    symbols: dict[str, int] = {}
    types = []
    for node in spec.graph.inputs:
        dims = [fmt_dim(d) for d in node.type.shape]
        dims = [f"{d}={spec.graph.bindings[d]}" if d in spec.graph.bindings else d for d in dims]
        types.append(torch_fx.parse_input(f"{node.type.dtype}[{', '.join(dims)}]", symbols))
    imported = torch_fx.capture(original, types, symbols, spec.path)
    examples = [torch_fx.example(t, symbols) for t in types]
    result = Result(write_spec(imported), imported, original, examples)
    return result, dlspec.load_text(result.text, "imported.dl")


@functools.cache
def shipped(name: str) -> tuple[dlspec.Spec, Result, dlspec.Spec]:
    """A shipped spec, and its round trip (made once for the tests that read it)."""
    spec = dlspec.load(ROOT / "specs" / f"{name}.dl", **SMALLER.get(name, {}))
    return spec, *round_trip(spec)


@pytest.mark.parametrize("path", CHECKED, ids=[p.stem for p in CHECKED])
def test_round_trip_of_every_shipped_spec(path: Path) -> None:
    spec, result, again = shipped(path.stem)
    before, after = spec.report, again.report
    assert after.trainable_params == before.trainable_params
    assert after.buffers == before.buffers
    assert after.total_macs == before.total_macs
    assert [o.shape for o in after.outputs] == [o.shape for o in before.outputs]
    assert after.memory.parameters_bytes == before.memory.parameters_bytes
    if "residual" not in path.read_text():
        # a `residual` is imported as an explicit Add, whose output the estimate counts
        assert after.memory == before.memory
    _, error = imported_weights(result, again)
    assert error <= RTOL


def test_blocks_are_recovered_with_their_parameters() -> None:
    _, result, _ = shipped("vgg_block")
    assert "block ConvBNReLU(out_channels: int) {" in result.text
    assert "convs = ConvBNReLU(out_channels) * 2" in result.text
    assert "stage1 = Stage(32)" in result.text and "stage2 = Stage(64)" in result.text


def test_conditioning_kinds_are_recovered() -> None:
    # a time embedding added per channel, an image read as a sequence and back
    _, result, _ = shipped("diffusion")
    assert "t_freq = TimestepEmbedding(16) <- t" in result.text
    assert "reshape = Reshape(16, 1, 1)\n    add = Add <- conv1, reshape" in result.text
    assert "flatten1 = Flatten(1)\n    transpose = Transpose(0, 1)" in result.text
    assert "reshape = Reshape(32, 4, 4)" in result.text


def test_tied_head_and_transformer_stack() -> None:
    _, result, again = shipped("tiny_gpt")
    assert "head = Linear(65, bias=false, tie=tok_emb)" in result.text
    assert "causal=true" in result.text
    assert again.report.trainable_params == 809_856


def test_hand_written_resnet_matches_torch_and_torchinfo() -> None:
    from torchinfo import summary

    result = import_model(f"{MODELS}:ResNet", ["float[3, 32, 32]"])
    spec = dlspec.load_text(result.text, "resnet.dl")
    model = result.original
    assert spec.report.trainable_params == sum(p.numel() for p in model.parameters())
    assert spec.report.buffers == sum(b.numel() for b in model.buffers())
    info = summary(model, input_size=(1, 3, 32, 32), verbose=0)
    assert spec.report.total_macs == info.total_mult_adds
    # one block per structure, the repeated stage folded, the projection shortcut kept
    assert "block BasicBlock(out_channels: int) {" in result.text
    assert "layer1 = BasicBlock(16) * 2" in result.text
    assert (
        "downsample_0 = Conv2d(out_channels, kernel=1, stride=2, bias=false) <- input"
        in result.text
    )
    _, error = imported_weights(result, spec)
    assert error <= RTOL


def test_hand_written_lstm_classifier() -> None:
    result = import_model(f"{MODELS}:LSTMClassifier", ["long[T=20]"])
    spec = dlspec.load_text(result.text, "lstm.dl")
    assert spec.report.trainable_params == sum(p.numel() for p in result.original.parameters())
    assert "input tokens: long[T]" in result.text
    assert "Embedding(1000, 32, padding_idx=0)" in result.text
    assert 'lstm = LSTM(64, num_layers=2, dropout=0.1, returns="hidden")' in result.text
    _, error = imported_weights(result, spec)
    assert error <= RTOL


def test_hand_written_gpt_with_sdpa_and_a_tied_head() -> None:
    result = import_model(f"{MODELS}:GPT", ["long[T=24]"])
    spec = dlspec.load_text(result.text, "gpt.dl")
    original = result.original
    assert spec.report.trainable_params == sum(p.numel() for p in original.parameters())
    for line in (
        "split_0 = Slice(1, start=0, end=32)",
        "sdpa = SDPA(4, causal=true) <- split_0, split_1, split_2",
        "wpe = LearnedPositionalEncoding(32)",
        "h = Block * 2",
        "lm_head = Linear(65, bias=false, tie=wte)",
    ):
        assert line in result.text
    _, error = imported_weights(result, spec)
    assert error <= RTOL


# import maps submodules returning one tensor, and no kind reads torch's .chunk() back yet:
# WaveNet's layers return the residual stream and the sum of skips, and chunk their gates
NOT_IMPORTED = {"wavenet"}


@pytest.mark.parametrize("name", sorted(set(SMALL_ZOO) - NOT_IMPORTED))
def test_round_trip_of_the_zoo(name: str) -> None:
    spec = zoo_spec(name)
    result, again = round_trip(spec)
    assert again.report.trainable_params == spec.report.trainable_params
    assert again.report.buffers == spec.report.buffers
    assert again.report.total_macs == spec.report.total_macs
    assert [o.shape for o in again.report.outputs] == [o.shape for o in spec.report.outputs]
    _, error = imported_weights(result, again)
    assert error <= RTOL


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_import_writes_a_spec_that_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "resnet.dl"
    code, stdout, _ = run(
        capsys, "import", f"{MODELS}:ResNet", "--input", "float[3,32,32]", "--out", str(out)
    )
    assert code == 0, stdout
    assert "175,258 parameters and 1,135 buffer elements" in stdout
    assert run(capsys, "check", str(out))[0] == 0
    code, stdout, _ = run(capsys, "check", f"{MODELS}:ResNet", "--input", "float[3,32,32]")
    assert code == 0 and "total params       175,258" in stdout


def test_exported_onnx_matches_the_original(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnxruntime as ort

    from docs.examples.models import ResNet

    out, weights, onnx = tmp_path / "resnet.dl", tmp_path / "resnet.pt", tmp_path / "resnet.onnx"
    torch.manual_seed(1)  # the weights the constructor draws, made again below
    target, shape = f"{MODELS}:ResNet", "float[3,32,32]"
    code, _, err = run(
        capsys, "import", target, "--input", shape, "--out", str(out), "--weights", str(weights)
    )
    assert code == 0, err
    code, _, err = run(capsys, "export", str(out), "--weights", str(weights), "--out", str(onnx))
    assert code == 0, err
    torch.manual_seed(1)
    original = ResNet().eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        r = original(x).numpy()
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert np.abs(y - r).max() <= RTOL * (np.abs(r) + np.abs(r).max()).min()


def test_build_resumes_from_imported_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, run_dir = tmp_path / "mlp.dl", tmp_path / "run"
    run_dir.mkdir()
    code, _, err = run(
        capsys,
        "import",
        f"{MODELS}:DigitsMLP",
        "--input",
        "float[64]",
        "--out",
        str(out),
        "--weights",
        str(run_dir / "checkpoint.pt"),
    )
    assert code == 0, err
    assert "net = " not in out.read_text()  # the Sequential is unrolled into named layers
    code, _stdout, err = run(
        capsys,
        "build",
        str(out),
        "--out",
        str(run_dir),
        "--resume",
        "--epochs",
        "1",
        "--quiet",
        "--no-plots",
    )
    assert code == 0, err


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        ([f"{MODELS}:Nope", "--input", "float[8]"], 2, "has no attribute 'Nope'"),
        (["no_such_module:Net", "--input", "float[8]"], 2, "cannot import 'no_such_module'"),
        (["models.py", "--input", "float[8]"], 2, "expected MODULE:CALLABLE"),
        (
            [f"{MODELS}:Broken", "--input", "float[8]"],
            1,
            "raised ValueError: width must be positive, got 0 (at models.py:",
        ),
        (
            [f"{MODELS}:ResNet", "--input", "float[3,,32"],
            2,
            "expected a type such as float[3, 224, 224]",
        ),
        ([f"{MODELS}:ResNet", "--input", "float[3, 0, 32]"], 2, "'0' is not a dimension"),
        ([f"{MODELS}:ResNet"], 2, "--input is required"),
        (
            [f"{MODELS}:ResNet", "--input", "image=float[3, 32, 32]"],
            2,
            "--input image=float[3, 32, 32]: ResNet.forward takes no input 'image'; it takes x",
        ),
        (
            [f"{MODELS}:ResNet", "--input", "float[3, 32, 32]", "--input", "x=float[3, 32, 32]"],
            2,
            "'x' is given twice (by position or by name)",
        ),
    ],
)
def test_errors(
    args: list[str], code: int, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model.dl"
    got, _, err = run(capsys, "import", *args, "--out", str(out))
    assert got == code and message in err, err
    assert "Traceback" not in err
    assert not out.exists()


def test_inputs_by_name_follow_the_forwards_order() -> None:
    """``NAME=TYPE`` inputs after the positional ones, in the order of the forward's
    parameters (as the spec's inputs are written), whatever the command line's; a name only
    ``**kwargs`` would take names nothing."""

    class Net(torch.nn.Module):
        def forward(
            self, a: torch.Tensor, b: torch.Tensor | None = None, *, c: Any = None, **kw: Any
        ) -> torch.Tensor:
            return a

    symbols: dict[str, int] = {}
    given = [torch_fx.parse_input(t, symbols) for t in ("c = long[U=3]", "float[4]", "b=float[T]")]
    assert given[0] == torch_fx.InputSpec("long", ("U",), "c") and symbols == {"U": 3, "T": 16}
    bound = torch_fx.bind_inputs(Net(), given)
    assert [(spec.name, spec.dims) for spec in bound] == [
        (None, (4,)),
        ("b", ("T",)),
        ("c", ("U",)),
    ]
    with pytest.raises(ValueError, match=r"Net\.forward takes no input 'kw'; it takes a, b, c$"):
        torch_fx.bind_inputs(Net(), [torch_fx.parse_input("kw=float[4]", symbols)])


def test_unsupported_op_and_control_flow_are_all_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model.dl"
    code, _, err = run(
        capsys, "import", f"{MODELS}:Gated", "--input", "float[8]", "--out", str(out)
    )
    assert code == 1
    # torch.fx is tried first, then torch.export: what each met is listed
    assert "Gated cannot be imported (tried torch.fx, then torch.export)" in err
    assert "torch.fx: act: operator.pow: no dlspec layer kind computes it" in err
    assert (
        "torch.fx: gate: Gate.forward: cannot be traced with torch.fx: symbolically traced "
        "variables cannot be used as inputs to control flow" in err
    )
    assert "torch.export: (model): Gated.forward: cannot be exported: Could not guard" in err
    assert not out.exists()


def test_onnx_file_exported_by_torch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import warnings

    import onnxruntime as ort

    from docs.examples.models import ResNet

    onnx_file = tmp_path / "resnet.onnx"
    torch.manual_seed(0)
    model = ResNet().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.randn(1, 3, 32, 32),),
            str(onnx_file),
            dynamo=False,
            input_names=["image"],
            dynamic_axes={"image": {0: "batch"}},
        )
    out, weights = tmp_path / "resnet.dl", tmp_path / "resnet.pt"
    code, _, err = run(
        capsys, "import", str(onnx_file), "--out", str(out), "--weights", str(weights)
    )
    assert code == 0, err
    text = out.read_text()
    assert "layer2_0_downsample_0 = Conv2d(32, kernel=1, stride=2) <- layer1_1_relu_1" in text
    spec = dlspec.load(out)
    # the exporter folds each BatchNorm into the convolution before it: a bias per conv
    folded = sum(p.numel() for p in model.parameters())
    biases = sum(m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert spec.report.trainable_params == folded - 2 * biases + biases
    imported = spec.to_torch().eval()
    imported.load_state_dict(torch.load(weights, weights_only=True)["model"])
    x = torch.randn(2, 3, 32, 32)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (expected,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        got = imported(x).numpy()
    with torch.no_grad():
        original = model(x).numpy()
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    assert np.abs(got - original).max() <= 1e-4 * np.abs(original).max()


def test_onnx_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    out = tmp_path / "model.dl"
    code, _, err = run(capsys, "import", str(bad), "--out", str(out))
    assert code == 2 and "not an ONNX file" in err
    code, _, err = run(capsys, "import", str(tmp_path / "missing.onnx"), "--out", str(out))
    assert code == 2 and "no such file" in err
    assert not out.exists()


def test_two_inputs_and_two_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "two_headed.py").write_text(
        "import torch\n"
        "from torch import nn\n\n\n"
        "class TwoHeaded(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.a, self.b, self.c = nn.Linear(8, 4), nn.Linear(4, 2), nn.Linear(6, 3)\n\n"
        "    def forward(self, x, y):\n"
        "        return self.b(torch.relu(self.a(x))), self.c(y)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    result = import_model("two_headed:TwoHeaded", ["float[8]", "float[6]"])
    assert "c = Linear(3) <- y" in result.text and "output b, c" in result.text
    spec = dlspec.load_text(result.text, "two.dl")
    assert [o.shape for o in spec.report.outputs] == [[2], [3]]
    _, error = imported_weights(result, spec)
    assert error <= RTOL


SHARED_STACKS = """import torch
from torch import nn


class Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.fc = nn.Embedding(10, 8), nn.Linear(8, 8)

    def forward(self, ids):
        return self.fc(self.embed(ids))


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder, self.decoder = Stack(), Stack()
        self.decoder.embed.weight = self.encoder.embed.weight  # one table, as T5's

    def forward(self, source, target):
        return self.encoder(source).mean(1, keepdim=True) + self.decoder(target)


class Wrapped(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = Pair()

    def forward(self, source, target):
        return self.model(source, target)
"""


def test_stacks_sharing_a_table_are_written_in_the_models_body(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two stacks the model's forward calls, the second's lookup sharing the first's table:
    both written in the model's body, the second's names prefixed by its module's, its
    lookup tied (torch.export reads it; torch.fx, which keeps them blocks, cannot). One
    module further down, the tie would cross a block: the import names both layers."""
    (tmp_path / "stacks.py").write_text(SHARED_STACKS)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = import_model("stacks:Pair", ["long[T]", "long[U]"])
    assert "decoder_embed = Embedding(10, 8, tie=embed) <- target" in result.text
    spec = dlspec.load_text(result.text, "pair.dl")
    assert spec.report.trainable_params == sum(p.numel() for p in result.original.parameters())
    _, error = imported_weights(result, spec)
    assert error <= RTOL
    with pytest.raises(ImportFailed) as failed:
        import_model("stacks:Wrapped", ["long[T]", "long[U]"])
    assert (
        "torch.export: model: module decoder: its embed shares its weight with embed, a layer "
        "outside it; dlspec shares a weight (tie=) with an earlier layer of the same body"
    ) in map(str, failed.value.unmapped)


NEW_KINDS = """model NewKinds {
    input volume: float[2, 4, 6, 6]
    input sound: float[3, 16]
    input image: float[8, 2, 2]
    v = Conv3d(4, kernel=3, padding=1) <- volume
    InstanceNorm3d(affine=true)
    MaxPool3d(2)
    ConvTranspose3d(2, kernel=2, stride=2)
    AvgPool3d(2)
    vol = AdaptiveAvgPool3d(1)
    s = ConvTranspose1d(4, kernel=4, stride=2, padding=1) <- sound
    InstanceNorm1d
    AvgPool1d(2)
    q = AdaptiveMaxPool1d(4)
    k = AdaptiveAvgPool1d(4) <- s
    att = Einsum("td,sd->ts") <- q, k
    p = PixelShuffle(2) <- image
    u = PixelUnshuffle(2)
    output vol, att, u
}"""


def test_volume_signal_and_einsum_kinds_are_recovered() -> None:
    """Modules of the new kinds import by their names and attributes, and ``torch.einsum``
    with a batch subscript as Einsum's per-sample equation."""
    spec = dlspec.load_text(NEW_KINDS, "new_kinds.dl")
    result, again = round_trip(spec)
    used = {leaf.layer.kind for leaf in again.graph.leaves() if leaf.layer is not None}
    assert used == {leaf.layer.kind for leaf in spec.graph.leaves() if leaf.layer is not None}
    assert 'Einsum("td,sd->ts") <- q, k' in result.text
    assert again.report.total_params == spec.report.total_params
    _, error = imported_weights(result, again)
    assert error <= RTOL


def test_a_tensor_times_a_number_is_mul_with_its_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``x * 0.125`` (T5's tied head scales its input so) -> ``Mul(0.125)``: through
    torch.export (its ``aten.mul.Tensor`` on a number; control flow stops torch.fx)."""
    (tmp_path / "scaled.py").write_text(
        "import torch\n"
        "from torch import nn\n\n\n"
        "class Scaled(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(8, 4)\n\n"
        "    def forward(self, x):\n"
        "        if x.shape[-1] == 8:  # Python control flow: torch.fx cannot trace it\n"
        "            return self.fc(x * 0.125) * 3\n"
        "        return x\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    result = import_model("scaled:Scaled", ["float[8]"])
    assert result.imported.tracer == "torch.export"
    assert "mul = Mul(0.125)\n" in result.text and " = Mul(3.0)\n" in result.text
    _, error = imported_weights(result, dlspec.load_text(result.text, "scaled.dl"))
    assert error <= RTOL
