"""The conditioning kinds of diffusion U-Nets (dlspec/layers/conditioning.py): their values
against formulas written out here, a time embedding added per channel and an image read as a
sequence (what the retired BroadcastAdd, ToTokens and ToImage did), and ONNX export of a spec
that uses them all (shapes and parameters are in test_layers_oracle.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_layers_oracle import build, forward

import dlspec
from dlspec.layers import REGISTRY, LayerError, TensorType


def _run(kind: str, args: dict[str, object], *xs: torch.Tensor) -> torch.Tensor:
    layer = REGISTRY[kind].model_validate(args)
    types = [TensorType(tuple(x.shape[1:])) for x in xs]
    layer.infer(types)
    call = layer.torch(types)
    with torch.no_grad():
        out: torch.Tensor = forward(call, build(call), list(xs))
    return out


def test_timestep_embedding_is_cosines_then_sines() -> None:
    t = torch.tensor([[0.0], [3.0], [999.0]])
    out = _run("TimestepEmbedding", {"dim": 6}, t).numpy()
    for row, step in enumerate((0.0, 3.0, 999.0)):
        frequencies = [10000 ** (-i / 3) for i in range(3)]
        expected = [math.cos(step * f) for f in frequencies] + [
            math.sin(step * f) for f in frequencies
        ]
        np.testing.assert_allclose(out[row], expected, rtol=1e-5, atol=1e-5)


def test_tokens_are_positions_row_by_row_and_back() -> None:
    """An image's positions as a sequence for attention, written with Flatten and Transpose
    (ToTokens' and ToImage's work), and back with Transpose and Reshape."""
    x = torch.randn(2, 4, 3, 5)
    tokens = _run("Transpose", {"dim0": 0, "dim1": 1}, _run("Flatten", {"start_dim": 1}, x))
    assert torch.equal(tokens[1, 2 * 5 + 4], x[1, :, 2, 4])  # row 2, column 4
    columns = _run("Transpose", {"dim0": 0, "dim1": 1}, tokens)
    assert torch.equal(_run("Reshape", {"shape": (4, 3, 5)}, columns), x)


def test_add_adds_a_reshaped_vector_at_every_position() -> None:
    x, v = torch.randn(2, 4, 3, 5), torch.randn(2, 4)
    out = _run("Add", {}, x, _run("Reshape", {"shape": (4, 1, 1)}, v))
    assert torch.equal(out[1, 2, 1, 3], x[1, 2, 1, 3] + v[1, 2])


@pytest.mark.parametrize(
    ("shapes", "text"),
    [
        (((4, 3, 5), (3, 1, 1)), "dim 0 has sizes 4, 3"),
        (((4, 3, 5), (4,)), "one rank"),
    ],
)
def test_add_refuses_what_does_not_broadcast(
    shapes: tuple[tuple[int, ...], ...], text: str
) -> None:
    with pytest.raises(LayerError) as err:
        REGISTRY["Add"]().infer([TensorType(s) for s in shapes])
    assert text in err.value.message


@pytest.mark.parametrize(
    ("kind", "advice"),
    [
        ("BroadcastAdd", "Reshape(C, 1, 1)"),
        ("ToTokens", "Flatten(1)` then `Transpose(0, 1)"),
        ("ToImage(4)", "Reshape(C, H, W)"),
    ],
)
def test_retired_kinds_say_what_to_write(kind: str, advice: str) -> None:
    with pytest.raises(dlspec.SpecError) as err:
        dlspec.load_text(f"model M {{\n    input x: float[4, 2, 2]\n    {kind}\n}}\n")
    [diagnostic] = err.value.diagnostics
    assert diagnostic.code == "E201" and any(advice in note for note in diagnostic.notes)


SPEC = """
model Conditioned {
    input x: float[4, 3, 5]
    input t: float[1]
    e = TimestepEmbedding(8) <- t
    v = Linear(4)
    shift = Reshape(4, 1, 1)
    h = Add <- x, shift
    Flatten(1)
    tokens = Transpose(0, 1)              expect shape == [15, 4]
    attn = MultiheadAttention(num_heads=2)
    Transpose(0, 1)
    image = Reshape(4, 3, 5)              expect shape == [4, 3, 5]
}
"""


def test_a_spec_with_every_conditioning_kind_exports_and_verifies() -> None:
    from dlspec.backends.onnx_export import export_onnx

    spec = dlspec.load_text(SPEC)
    torch.manual_seed(0)
    result = export_onnx(spec.to_torch(), spec.graph, device="cpu")
    assert result.comparisons and all(c.passed for c in result.comparisons)
    assert result.initializers.parameters == spec.report.trainable_params
