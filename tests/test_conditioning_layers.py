"""The conditioning kinds of diffusion U-Nets (dlspec/layers/conditioning.py): their values
against formulas written out here, the errors of BroadcastAdd's two inputs, and ONNX export
of a spec that uses them all (shapes and parameters are in test_layers_oracle.py)."""

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


def test_tokens_are_positions_row_by_row_and_to_image_inverts() -> None:
    x = torch.randn(2, 4, 3, 5)
    tokens = _run("ToTokens", {}, x)
    assert torch.equal(tokens[1, 2 * 5 + 4], x[1, :, 2, 4])  # row 2, column 4
    assert torch.equal(_run("ToImage", {"height": 3}, tokens), x)


def test_broadcast_add_adds_the_vector_at_every_position() -> None:
    x, v = torch.randn(2, 4, 3, 5), torch.randn(2, 4)
    out = _run("BroadcastAdd", {}, x, v)
    assert torch.equal(out[1, 2, 1, 3], x[1, 2, 1, 3] + v[1, 2])


@pytest.mark.parametrize(
    ("shapes", "text"),
    [
        (((4, 3, 5), (3,)), "needs a vector [4], got [3]"),
        (((4,), (4,)), "[C, *]"),
        (((4, 3, 5), (4, 1)), "got [4, 1]"),
    ],
)
def test_broadcast_add_refuses_what_does_not_broadcast(
    shapes: tuple[tuple[int, ...], ...], text: str
) -> None:
    with pytest.raises(LayerError) as err:
        REGISTRY["BroadcastAdd"]().infer([TensorType(s) for s in shapes])
    assert text in err.value.message


SPEC = """
model Conditioned {
    input x: float[4, 3, 5]
    input t: float[1]
    e = TimestepEmbedding(8) <- t
    v = Linear(4)
    h = BroadcastAdd <- x, v
    tokens = ToTokens                     expect shape == [15, 4]
    attn = MultiheadAttention(num_heads=2)
    image = ToImage(3)                    expect shape == [4, 3, 5]
}
"""


def test_a_spec_with_every_conditioning_kind_exports_and_verifies() -> None:
    from dlspec.backends.onnx_export import export_onnx

    spec = dlspec.load_text(SPEC)
    torch.manual_seed(0)
    result = export_onnx(spec.to_torch(), spec.graph, device="cpu")
    assert result.comparisons and all(c.passed for c in result.comparisons)
    assert result.initializers.parameters == spec.report.trainable_params
