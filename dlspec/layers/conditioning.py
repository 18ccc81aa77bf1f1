"""Layers that condition an image network on other inputs, as a diffusion U-Net does.

* TimestepEmbedding: a number per sample (a diffusion timestep) -> its sinusoidal features.

A projected time embedding joins a ``[C, H, W]`` map as ``Reshape(C, 1, 1)`` and ``Add``
(which broadcasts), and an image's positions become a sequence for attention as
``Flatten(1)`` and ``Transpose(0, 1)``: kinds of their own (BroadcastAdd, ToTokens, ToImage)
did not earn their place: a spec that names one is told what to write instead.
"""

from typing import Annotated

from dlspec.layers.base import (
    Inferred,
    Layer,
    LayerError,
    Saved,
    TensorType,
    TorchCall,
    expect_float,
    register,
)
from dlspec.validation import Field

Even = Annotated[int, Field(ge=2, multiple_of=2)]

_TIMESTEP = '''class TimestepEmbedding(nn.Module):
    """Sinusoidal features of a number per sample (B, 1) -> (B, dim): the cosines, then the
    sines, of t at frequencies max_period^(-i / (dim/2)), i = 0 .. dim/2 - 1."""

    def __init__(self, dim: int, max_period: float = 10000.0) -> None:
        super().__init__()
        self.dim = dim
        self.max_period = max_period

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        steps = torch.arange(half, device=t.device, dtype=torch.float32) / half
        frequency = self.max_period**-steps  # (dim/2,)
        angle = t * frequency  # (B, dim/2), in fp32 or t's wider type
        return torch.cat([torch.cos(angle), torch.sin(angle)], dim=1)  # (B, dim)
'''


@register
class TimestepEmbedding(Layer):
    """Sinusoidal features of a number per sample, as diffusion models embed their timestep:
    ``[1]`` -> ``[dim]``, ``cos(t * f_i)`` then ``sin(t * f_i)`` for
    ``f_i = max_period^(-i / (dim/2))``, ``i < dim/2`` (``dim`` even). No parameters or
    buffers (the frequencies are computed in ``forward``); MACs 0."""

    kind = "TimestepEmbedding"
    family = "embedding"
    positional = ("dim",)

    dim: Even
    max_period: Annotated[float, Field(gt=1)] = 10000.0

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x = inputs[0]
        expect_float(x, self.kind)
        if x.shape != (1,):
            raise LayerError(
                "E404", f"{self.kind} expects one number per sample, shape [1], got {x}"
            )
        return Inferred(TensorType((self.dim,)))

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        if inputs[0].dtype == "long":  # an integer timestep: nothing needs a gradient
            return []
        half = self.dim // 2  # a float input: cos and sin keep the angles, t * f keeps f
        return [Saved("angle", half), Saved("frequency", half, "float32", batched=False)]

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        kwargs = self.keywords(exclude={"dim"})
        return TorchCall(self.kind, (self.dim,), kwargs, helper=_TIMESTEP)

    def label(self) -> str:
        return f"TimestepEmbedding({self.dim})"
