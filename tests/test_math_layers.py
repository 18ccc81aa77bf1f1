"""Values of the element-wise math, padding, rolling and sampling kinds against torch written
out independently: torch.nn.functional.pad with the tuple the sides name, torch.roll over
the batch's dimension numbers, torch.where, and the reparameterisation's formula; its
evaluation is the mean, deterministic, and ``dlspec export`` says so. (Shapes, parameters,
MACs and saved tensors are in test_layers_oracle.py and test_memory.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from test_layers_oracle import build, forward, make

import dlspec
from dlspec.layers import TensorType
from dlspec.layers.symbolic import Dim


def _run(kind: str, args: dict[str, Any], *xs: torch.Tensor) -> torch.Tensor:
    layer = make(kind, args)
    types = [TensorType(tuple(x.shape[1:])) for x in xs]
    call = layer.torch(types)
    out: torch.Tensor = forward(call, build(call), list(xs))
    shape: tuple[Dim, ...] = layer.infer(types).output.shape
    assert tuple(out.shape[1:]) == shape
    return out


@pytest.mark.parametrize(
    ("args", "pad", "mode"),
    [
        ({"left": 2}, (2, 0), "constant"),
        ({"right": 1, "top": 2}, (0, 1, 2, 0), "constant"),
        ({"padding": (1, 0, 0, 2)}, (1, 0, 0, 2), "constant"),
        ({"left": 1, "right": 2, "bottom": 1, "mode": "reflect"}, (1, 2, 0, 1), "reflect"),
        ({"top": 1, "mode": "replicate"}, (0, 0, 1, 0), "replicate"),
        ({"left": 2, "right": 1, "mode": "circular"}, (2, 1, 0, 0), "circular"),
    ],
)
def test_pad_is_torchs_pad_of_the_sides_it_names(
    args: dict[str, Any], pad: tuple[int, ...], mode: str
) -> None:
    x = torch.randn(2, 3, 4, 5)
    assert torch.equal(_run("Pad", args, x), F.pad(x, pad, mode=mode))


def test_pad_fills_with_its_value() -> None:
    x = torch.randn(2, 3, 4)
    out = _run("Pad", {"left": 2, "value": -1.5}, x)
    assert torch.equal(out[..., :2], torch.full((2, 3, 2), -1.5)) and torch.equal(out[..., 2:], x)


def test_causal_convolution_sees_no_future() -> None:
    """``Pad(left=k - 1)  Conv1d(c, kernel=k)``: each output step depends on its own step and
    the k - 1 before it, and the length stays."""
    spec = dlspec.load_text(
        "model Causal(k: int = 3) {\n  input x: float[2, 9]\n  Pad(left=k - 1)\n"
        "  Conv1d(4, kernel=k)\n}\n"
    )
    assert spec.report.outputs[0].shape_value == [4, 9]
    model = spec.to_torch().eval()
    x = torch.randn(1, 2, 9)
    changed = x.clone()
    changed[..., 5] += 1.0  # a change at step 5 reaches steps 5 .. 7 only
    diff = (model(changed) - model(x)).abs().sum(dim=1)[0]
    assert torch.all(diff[:5] == 0) and torch.all(diff[5:8] > 0) and diff[8] == 0


@pytest.mark.parametrize(
    ("args", "shifts", "dims"),
    [({"shifts": 2}, (2,), (-1,)), ({"shifts": (-1, 3), "dims": (0, 2)}, (-1, 3), (1, 3))],
)
def test_roll_is_torchs_roll_over_per_sample_dims(
    args: dict[str, Any], shifts: tuple[int, ...], dims: tuple[int, ...]
) -> None:
    x = torch.randn(2, 3, 4, 5)
    assert torch.equal(_run("Roll", args, x), torch.roll(x, shifts, dims))


def test_where_and_arithmetic() -> None:
    c = torch.tensor([[[1.0], [0.0], [2.0]]]).expand(2, 3, 1)
    a, b = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    expected = torch.cat([a[:, :1], b[:, 1:2], a[:, 2:]], dim=1)
    assert torch.equal(_run("Where", {}, c, a, b), expected)
    assert torch.equal(_run("Mul", {"value": 0.5}, a), a / 2)
    assert torch.equal(_run("Sub", {}, a, b), a - b)
    assert torch.equal(_run("Sub", {"value": 1}, a), a - 1)
    assert torch.allclose(_run("Div", {}, a, b[:, :, :1]), a / b[:, :, :1])
    assert torch.equal(_run("Clamp", {"min": 0}, a), a.relu())
    assert torch.allclose(_run("Pow", {"exponent": 0.5}, a.abs()), a.abs().sqrt())
    assert torch.allclose(_run("Exp", {}, _run("Log", {}, a.abs() + 1)), a.abs() + 1)


def test_reparameterize_samples_in_training_and_is_the_mean_in_evaluation() -> None:
    spec = dlspec.load_text(
        "model V {\n  input x: float[6]\n  mu = Linear(4) <- x\n  logvar = Linear(4) <- x\n"
        "  z = Reparameterize <- mu, logvar\n}\n"
    )
    torch.manual_seed(0)
    model = spec.to_torch()
    x = torch.randn(3, 6)
    mu, logvar = model.mu(x), model.logvar(x)
    model.eval()
    assert torch.equal(model(x), mu) and torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(1)
    z = model(x)
    torch.manual_seed(1)
    noise = torch.randn_like(mu)
    assert torch.allclose(z, mu + torch.exp(0.5 * logvar) * noise)
    assert not torch.equal(model(x), z)  # fresh noise at every call


def test_export_says_it_exports_the_mean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dlspec.cli import main

    path = tmp_path / "v.dl"
    path.write_text(
        "model V {\n  input x: float[6]\n  mu = Linear(4) <- x\n  logvar = Linear(4) <- x\n"
        "  z = Reparameterize <- mu, logvar\n  output z, logvar\n}\n"
    )
    out = tmp_path / "v.onnx"
    assert main(["export", str(path), "-o", str(out), "--device", "cpu"]) == 0
    notice = "note: z (Reparameterize) exports its evaluation: the mean mu, without sampling"
    assert notice in capsys.readouterr().err.splitlines()
    assert out.exists()


def test_numbers_and_sides_given_by_parameters_are_expressions_in_code() -> None:
    """A block's parameters reach the generated class: ``Mul(s)`` is ``x * self.s`` and
    ``Pad(left=k - 1)`` ``nn.ConstantPad1d((k - 1, 0), ...)``; built with other arguments it
    computes what ``check --set`` analyses."""
    from test_program import _model_class

    text = (
        "block Scale(s: float, k: int, lo: float) {\n  Mul(s)\n  Pad(left=k - 1)\n"
        "  Clamp(min=lo)\n  Pow(s)\n  Roll(k, dims=-1)\n}\n"
        "model M(s: float = 0.5, k: int = 3, lo: float = 0.1) {\n  input x: float[2, 8]\n"
        "  Scale(s, k, lo)\n}\n"
    )
    code = dlspec.load_text(text).code
    assert "x * self.s" in code and "nn.ConstantPad1d((k - 1, 0), 0.0)" in code
    other = {"s": 2.0, "k": 5, "lo": 0.3}
    built = _model_class(dlspec.load_text(text))(**other).eval()
    reference = dlspec.load_text(text, **{k: str(v) for k, v in other.items()}).to_torch().eval()
    x = torch.randn(2, 2, 8)
    assert torch.equal(built(x), reference(x))
    assert reference(x).shape == (2, 2, 12)
