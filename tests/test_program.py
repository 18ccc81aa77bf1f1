"""The generated classes are functions of their arguments (the spec compiled as a program).

For every spec, the model class generated at the spec's defaults is built at other valid
arguments drawn by hypothesis, and compared with what ``dlspec check --set`` says at those
values (parameters, buffers, output shapes), and with the module generated at those values,
holding the same weights (outputs). Sizes are kept small: the zoo's classes are built at
small widths and image sizes, never at their defaults.
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dlspec
from dlspec.backends.torch_codegen import GenerationError
from dlspec.layers.symbolic import value_at
from dlspec.syntax import ast
from dlspec.syntax.parser import parse

ROOT = Path(__file__).resolve().parents[1]


def _heads(draw: st.DrawFn, widths: list[int], heads: list[int]) -> tuple[int, int]:
    """A width and a number of heads that divides it."""
    head = draw(st.sampled_from(heads))
    return head * draw(st.sampled_from(widths)), head


@st.composite
def _tiny_gpt(draw: st.DrawFn) -> dict[str, Any]:
    d, heads = _heads(draw, [4, 8], [1, 2, 4])
    block = draw(st.integers(4, 12))
    return {
        "vocab": draw(st.integers(2, 40)),
        "d": d,
        "n_layer": draw(st.integers(1, 3)),
        "n_head": heads,
        "block_size": block,
        "T": draw(st.integers(1, block)),
    }


@st.composite
def _llama(draw: st.DrawFn) -> dict[str, Any]:
    kv = draw(st.sampled_from([1, 2]))
    heads = kv * draw(st.sampled_from([1, 2]))
    return {
        "vocab": draw(st.integers(2, 30)),
        "d": heads * draw(st.sampled_from([2, 4])) * 2,  # RoPE pairs the head's features
        "layers": draw(st.integers(1, 3)),
        "heads": heads,
        "kv_heads": kv,
        "ff": draw(st.integers(4, 24)),
        "eps": draw(st.sampled_from([1e-5, 1e-6])),
        "T": draw(st.integers(1, 6)),
    }


@st.composite
def _vit(draw: st.DrawFn) -> dict[str, Any]:
    patch = draw(st.sampled_from([4, 8]))
    d, heads = _heads(draw, [4, 8], [1, 2])
    return {
        "image_size": patch * draw(st.integers(1, 3)),
        "patch": patch,
        "d": d,
        "layers": draw(st.integers(1, 3)),
        "heads": heads,
        "mlp_dim": draw(st.integers(4, 20)),
        "num_classes": draw(st.integers(1, 20)),
    }


@st.composite
def _bert(draw: st.DrawFn) -> dict[str, Any]:
    d, heads = _heads(draw, [2, 4], [1, 2])
    max_len = draw(st.integers(2, 10))
    return {
        "vocab": draw(st.integers(2, 30)),
        "d": d,
        "layers": draw(st.integers(1, 3)),
        "heads": heads,
        "ff": draw(st.integers(4, 20)),
        "max_len": max_len,
        "type_vocab": draw(st.integers(2, 3)),
        "eps": draw(st.sampled_from([1e-12, 1e-5])),
        "T": draw(st.integers(1, max_len)),
    }


@st.composite
def _t5(draw: st.DrawFn) -> dict[str, Any]:
    heads = draw(st.integers(1, 3))
    buckets = draw(st.sampled_from([4, 8, 32]))
    return {
        "vocab": draw(st.integers(2, 30)),
        "d": draw(st.integers(2, 12)),
        "layers": draw(st.integers(1, 3)),
        "heads": heads,
        "d_kv": draw(st.integers(1, 6)),
        "ff": draw(st.integers(4, 20)),
        "buckets": buckets,
        "max_distance": draw(st.integers(max(4, buckets // 4 + 1), 40)),
        "eps": draw(st.sampled_from([1e-6, 1e-5])),
        "T": draw(st.integers(1, 12)),
    }


@st.composite
def _swin(draw: st.DrawFn) -> dict[str, Any]:
    """Maps that windows tile at every stage: size / patch = 8 x window x m."""
    window = 2  # (a window of 1 has no shift: no use would take the shifted branch)
    patch = draw(st.sampled_from([1, 2]))
    heads = draw(st.sampled_from([1, 2]))
    return {
        "size": patch * 8 * window * draw(st.integers(1, 2)),
        "patch": patch,
        "d": heads * draw(st.sampled_from([1, 2])),
        "heads": heads,
        "window": window,
        "drop": draw(st.sampled_from([0.0, 0.2])),
        "num_classes": draw(_classes()),
    }


@st.composite
def _diffusion(draw: st.DrawFn) -> dict[str, Any]:
    groups = draw(st.sampled_from([1, 2, 4]))
    d_text, heads = _heads(draw, [4, 6], [1, 2])
    return {
        "ch": groups * draw(st.sampled_from([2, 4])),
        "groups": groups,
        "vocab": draw(st.integers(2, 20)),
        "L": draw(st.integers(1, 6)),
        "d_text": d_text,
        "heads": heads,
    }


@st.composite
def _transformer(draw: st.DrawFn) -> dict[str, Any]:
    max_len = draw(st.integers(4, 12))
    return {
        "src_vocab": draw(st.integers(2, 50)),
        "tgt_vocab": draw(st.integers(2, 50)),
        "max_len": max_len,
        "S": draw(st.integers(1, max_len)),
        "T": draw(st.integers(1, max_len)),
    }


def _classes(top: int = 30) -> st.SearchStrategy[int]:
    return st.integers(1, top)


# Each spec's parameters, drawn among values `check` accepts (a width that heads divide...)
ARGUMENTS: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "cnn.dl": st.fixed_dictionaries({"num_classes": _classes()}),
    "diffusion.dl": _diffusion(),
    "gru_classifier.dl": st.fixed_dictionaries(
        {"vocab": st.integers(2, 50), "num_classes": _classes(), "T": st.integers(1, 8)}
    ),
    "lstm_lm.dl": st.fixed_dictionaries({"vocab": st.integers(2, 50), "T": st.integers(1, 8)}),
    "mlp.dl": st.fixed_dictionaries(
        {"hidden": st.integers(2, 40), "num_classes": _classes(), "p": st.floats(0, 0.9)}
    ),
    "resnet_block.dl": st.fixed_dictionaries({"num_classes": _classes()}),
    "rnn.dl": st.fixed_dictionaries(
        {
            "T": st.integers(1, 8),
            "features": st.integers(1, 10),
            "hidden": st.integers(1, 20),
            "num_classes": _classes(),
        }
    ),
    "tiny_gpt.dl": _tiny_gpt(),
    "transformer.dl": _transformer(),
    "vgg_block.dl": st.fixed_dictionaries({"num_classes": _classes(), "width": st.integers(1, 12)}),
    "zoo/bert_base.dl": _bert(),
    "zoo/convnext_tiny.dl": st.fixed_dictionaries(
        {"num_classes": _classes(), "size": st.sampled_from([32, 64]), "drop": st.floats(0, 0.5)}
    ),
    "zoo/densenet121.dl": st.fixed_dictionaries(
        {
            "growth": st.integers(1, 6),
            "bn_size": st.integers(1, 3),
            "num_classes": _classes(),
            "size": st.sampled_from([32, 64]),
        }
    ),
    "zoo/efficientnet_b0.dl": st.fixed_dictionaries(
        {"num_classes": _classes(), "size": st.sampled_from([32, 64])}
    ),
    "zoo/llama2_7b.dl": _llama(),
    "zoo/mobilenet_v3_large.dl": st.fixed_dictionaries(
        {"num_classes": _classes(), "size": st.sampled_from([32, 64])}
    ),
    "zoo/resnet18.dl": st.fixed_dictionaries(
        {"num_classes": _classes(), "size": st.sampled_from([32, 64])}
    ),
    "zoo/swin_t.dl": _swin(),
    "zoo/unet.dl": st.fixed_dictionaries(
        {
            "in_channels": st.integers(1, 4),
            "classes": _classes(5),
            "size": st.sampled_from([16, 32]),
        }
    ),
    "zoo/vae.dl": st.fixed_dictionaries(
        {
            "in_channels": st.integers(1, 4),
            "latent": st.integers(1, 24),
            "size": st.sampled_from([32, 64]),
        }
    ),
    "zoo/t5_small_encoder.dl": _t5(),
    "zoo/vit_b_16.dl": _vit(),
    "zoo/wavenet.dl": st.fixed_dictionaries(
        {
            "classes": st.integers(2, 12),
            "res": st.integers(1, 6),
            "gate": st.integers(1, 6),
            "skip": st.integers(1, 8),
            "layers": st.integers(2, 4),
            "stacks": st.integers(1, 2),
            "T": st.integers(1, 24),
        }
    ),
}


def test_every_spec_has_arguments() -> None:
    """Every shipped spec with parameters is drawn at other values (seed_prose.dl claims a
    wrong count on purpose: it does not check)."""
    specs = {str(p.relative_to(ROOT / "specs")) for p in (ROOT / "specs").rglob("*.dl")}
    assert specs - {"seed_prose.dl"} == set(ARGUMENTS)


def _model_class(spec: dlspec.Spec) -> type[torch.nn.Module]:
    module = types.ModuleType("generated")
    exec(compile(spec.code, spec.path, "exec"), module.__dict__)
    cls: type[torch.nn.Module] = module.__dict__[spec.graph.name]
    return cls


def _inputs(spec: dlspec.Spec, batch: int) -> list[torch.Tensor]:
    out = []
    for tensor in spec.graph.inputs:
        shape = [batch, *(value_at(d, spec.graph.bindings) for d in tensor.type.shape)]
        if tensor.type.dtype == "long":
            out.append(torch.randint(0, 2, shape))  # ids every vocabulary holds
        else:
            out.append(torch.randn(shape))
    return out


def _at(path: str, arguments: dict[str, Any]) -> dlspec.Spec:
    """``check --set`` at other values. The spec's `expect` claims are about its defaults
    (the zoo's published totals), so they are blanked out."""
    text = (ROOT / "specs" / path).read_text()
    lines = text.split("\n")
    document, _ = parse(text)
    assert document is not None
    for definition in document.definitions:
        for stmt in _statements(definition.body):
            if isinstance(stmt, ast.ExpectStmt):
                line, column, end_line, end_column = stmt.span
                for i in range(line - 1, end_line):
                    start = column - 1 if i == line - 1 else 0
                    end = end_column - 1 if i == end_line - 1 else len(lines[i])
                    lines[i] = lines[i][:start] + " " * (end - start) + lines[i][end:]
    return dlspec.load_text("\n".join(lines), path, **arguments)


def _statements(body: list[ast.Statement]) -> list[ast.Statement]:
    out: list[ast.Statement] = []
    for stmt in body:
        out.append(stmt)
        if isinstance(stmt, ast.IfStmt):
            out += _statements(stmt.body) + _statements(stmt.orelse)
        elif isinstance(stmt, ast.LayerStmt) and isinstance(stmt.op, ast.Residual):
            out += _statements(stmt.op.body) + _statements(stmt.op.shortcut or [])
    return out


def _compare(defaults: dlspec.Spec, arguments: dict[str, Any], path: str) -> None:
    at = _at(path, arguments)
    symbols = set(defaults.graph.symbols)
    built = _model_class(defaults)(**{k: v for k, v in arguments.items() if k not in symbols})
    assert sum(p.numel() for p in built.parameters()) == at.report.total_params
    assert sum(b.numel() for b in built.buffers()) == at.report.buffers
    reference = at.to_torch()
    reference.load_state_dict(built.state_dict())
    built.eval()
    reference.eval()
    torch.manual_seed(0)
    inputs = _inputs(at, batch=2)
    with torch.no_grad():
        got, want = built(*inputs), reference(*inputs)
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    shapes = [[2, *info.shape_value] for info in at.report.outputs]
    assert [list(t.shape) for t in got] == shapes
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("path", sorted(ARGUMENTS))
def test_generated_class_is_a_function_of_its_arguments(path: str) -> None:
    defaults = dlspec.load(ROOT / "specs" / path)
    torch.manual_seed(0)

    @settings(
        max_examples=3,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(ARGUMENTS[path])
    def check(arguments: dict[str, Any]) -> None:
        _compare(defaults, arguments, path)

    check()


def test_unet_at_another_size() -> None:
    """Regression: 256 channels equal the default ``size``, and were wired to it."""
    unet = dlspec.load(ROOT / "specs" / "zoo" / "unet.dl")
    with torch.device("meta"):
        built = _model_class(unet)(size=512)
    want = _at("zoo/unet.dl", {"size": 512}).report.total_params
    assert sum(p.numel() for p in built.parameters()) == want == 31_037_698


def test_llama_grouped_query_heads() -> None:
    """Regression: the attention got ``heads`` for its key/value heads too."""
    _compare(
        dlspec.load(ROOT / "specs" / "zoo" / "llama2_7b.dl"),
        {"vocab": 11, "d": 16, "layers": 2, "heads": 4, "kv_heads": 2, "ff": 12, "T": 5},
        "zoo/llama2_7b.dl",
    )


COINCIDENCE = """
block CBS(c: int, k: int = 3, s: int = 1) {
    Conv2d(c, kernel=k, stride=s, padding=k // 2, bias=false)
    BatchNorm2d
    SiLU
}

model Detector(na: int = 3, w: int = 8, layers: int = 2) {
    input image: float[3, 16, 16]
    stem = CBS(w, s=2)
    body = CBS(w) * layers
    head = Conv2d(na * 6, kernel=1)
}
"""


def test_a_default_equal_to_an_unrelated_size(tmp_path: Path) -> None:
    """Regression: 3 input channels equal ``na``'s default, and the stem read ``na``."""
    path = tmp_path / "detector.dl"
    path.write_text(COINCIDENCE)
    spec = dlspec.load(path)
    assert "self.stem = CBS(3, w, s=2)" in spec.code
    assert "for _ in range(layers)" in spec.code
    for arguments in ({"na": 5, "w": 4, "layers": 0}, {"na": 1, "w": 6, "layers": 3}):
        built = _model_class(spec)(**arguments)
        at = dlspec.load(path, **arguments)
        assert sum(p.numel() for p in built.parameters()) == at.report.total_params
        assert list(built(torch.randn(2, 3, 16, 16)).shape) == [2, arguments["na"] * 6, 8, 8]


def test_a_branch_on_a_model_parameter_is_refused(tmp_path: Path) -> None:
    """What the generated code cannot express for every value is refused, with the
    parameter named, never written for one value."""
    path = tmp_path / "branch.dl"
    path.write_text(
        "model M(wide: bool = false) {\n    input x: float[4]\n"
        "    if wide { Linear(8) } else { Linear(2) }\n}\n"
    )
    with pytest.raises(GenerationError, match="parameter wide"):
        _ = dlspec.load(path).code


HEADS = """
block Heads(heads: int) {
    h = Reshape(-1, heads, input.shape[1] // heads)
    Transpose(0, 1)
    Transpose(0, 1)
    Flatten(1)
}

model M(d: int = 16, heads: int = 4, T: dim = 5) {
    input x: float[T, d]
    Linear(d)
    Heads(heads)
    Linear(3)
}
"""


def test_sizes_in_forward_are_the_class_arguments(tmp_path: Path) -> None:
    """A size that forward's code holds (a reshape's) is the expression, kept as an
    attribute (``self.heads``), not the number of the defaults."""
    path = tmp_path / "heads.dl"
    path.write_text(HEADS)
    spec = dlspec.load(path)
    assert "x.reshape(x.shape[0], -1, self.heads, self.in_features // self.heads)" in spec.code
    built = _model_class(spec)(d=12, heads=3)
    assert list(built(torch.randn(2, 5, 12)).shape) == [2, 5, 3]


def test_build_refuses_what_code_cannot_express(tmp_path: Path) -> None:
    path = tmp_path / "branch.dl"
    path.write_text(
        "model M(wide: bool = false) {\n    input x: float[4]\n"
        "    if wide { Linear(8) } else { Linear(2) }\n}\n"
    )
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "dlspec", "build", str(path), "--out", str(out), "--no-train"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "cannot generate PyTorch code" in result.stderr and "parameter wide" in result.stderr
    assert not (out / "model.py").exists()


KINDS = """
block Up(c: int, r: int) {
    Conv2d(c * r * r, kernel=3, padding=1)
    PixelShuffle(r)
    InstanceNorm2d(affine=true)
    PixelUnshuffle(r)
}

model Kinds(c: int = 4, r: int = 2, k: int = 4, d: int = 8) {
    input volume: float[2, 4, 6, 6]
    input sound: float[3, 16]
    input image: float[3, 4, 4]
    v = Conv3d(c, kernel=3, padding=1) <- volume
    InstanceNorm3d(affine=true, track_running_stats=true)
    MaxPool3d(2)
    ConvTranspose3d(c, kernel=2, stride=2)
    AvgPool3d(2)
    vol = AdaptiveAvgPool3d(1)
    s = ConvTranspose1d(c, kernel=k, stride=2, padding=1) <- sound
    InstanceNorm1d
    AvgPool1d(2)
    AdaptiveMaxPool1d(4)
    AdaptiveAvgPool1d(4)
    q = Linear(d)
    keys = Linear(d) <- q
    att = Einsum("td,sd->ts") <- q, keys
    i = Up(c, r) <- image
    output vol, att, i
}
"""


def test_volume_signal_and_einsum_kinds_are_functions_of_their_arguments(tmp_path: Path) -> None:
    """3-D and 1-D convolutions and pools, InstanceNorm, pixel shuffles and Einsum take their
    sizes from the class's arguments: built at other values, the class equals ``check`` and
    the module generated at those values."""
    path = tmp_path / "kinds.dl"
    path.write_text(KINDS)
    spec = dlspec.load(path)
    assert "nn.PixelShuffle(r)" in spec.code and "kernel_size=k" in spec.code
    for arguments in ({"c": 2, "r": 3, "k": 3, "d": 5}, {"c": 1, "r": 1, "k": 5, "d": 2}):
        built = _model_class(spec)(**arguments)
        at = dlspec.load(path, **arguments)
        assert sum(p.numel() for p in built.parameters()) == at.report.total_params
        assert sum(b.numel() for b in built.buffers()) == at.report.buffers
        reference = at.to_torch()
        reference.load_state_dict(built.state_dict())
        built.eval()
        reference.eval()
        inputs = _inputs(at, batch=2)
        with torch.no_grad():
            got, want = built(*inputs), reference(*inputs)
        assert [list(t.shape) for t in got] == [[2, *o.shape_value] for o in at.report.outputs]
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b)
