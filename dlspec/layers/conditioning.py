"""Layers that condition an image network on other inputs, as a diffusion U-Net does.

* TimestepEmbedding: a number per sample (a diffusion timestep) -> its sinusoidal features.
* BroadcastAdd: adds a ``[C]`` vector (a projected time embedding) to every position of a
  ``[C, H, W]`` feature map.
* ToTokens and ToImage: ``[C, H, W]`` <-> ``[H*W, C]``, so that attention layers (which read
  sequences) can attend over an image's positions, or from them to a text's tokens.

None of them has parameters or MACs (torchinfo counts none for such modules).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from dlspec.layers.base import (
    Inferred,
    Layer,
    LayerError,
    Saved,
    TensorType,
    TorchCall,
    View,
    concrete,
    expect_float,
    expect_rank,
    register,
)
from dlspec.layers.layout import Layout, elementwise, permute, reshape
from dlspec.layers.symbolic import Dim

Pos = Annotated[int, Field(ge=1)]
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
        kwargs = self.model_dump(exclude_defaults=True, exclude={"dim"})
        return TorchCall(self.kind, (self.dim,), kwargs, helper=_TIMESTEP)

    def label(self) -> str:
        return f"TimestepEmbedding({self.dim})"


@register
class BroadcastAdd(Layer):
    """Adds a vector ``[C]`` (the second input) to every position of a feature map
    ``[C, *]`` (the first), e.g. a time embedding projected to a block's channels:
    ``BroadcastAdd <- h, t``. Output: the first input's shape. No parameters; MACs 0
    (additions, as for ``Add``)."""

    kind = "BroadcastAdd"
    family = "merge"
    arity = (2, 2)

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x, v = inputs
        expect_rank(x, range(2, 9), "[C, *] (channels first)", self.kind)
        for t in (x, v):
            expect_float(t, self.kind)
        if v.shape != x.shape[:1]:
            raise LayerError(
                "E401",
                f"BroadcastAdd adds a vector [C] to a map [C, *]: the map {x} needs a vector "
                f"[{x.shape[0]}], got {v}",
            )
        return Inferred(x)

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        return []  # an addition's gradient needs only the shapes

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        x, v = inputs
        spatial = len(x.sizes) - 2
        stretched = Layout((*v.sizes, *(1,) * spatial), (*v.strides, *(1,) * spatial))
        return elementwise([x, stretched], output.sizes)

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        spatial = ", None" * (len(inputs[0].shape) - 1)
        return TorchCall(None, forward="{x0} + {x1}[:, :" + spatial + "]")  # (B, C, H, W)


def _image(x: TensorType, kind: str) -> None:
    expect_rank(x, (3,), "[C, H, W]", kind)
    expect_float(x, kind)


@register
class ToTokens(View):
    """An image's positions as a sequence of channel vectors: ``[C, H, W]`` ->
    ``[H*W, C]``, row by row (what attention layers read). No parameters; MACs 0."""

    kind = "ToTokens"
    family = "reshape"

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x = inputs[0]
        _image(x, self.kind)
        c, h, w = x.shape
        return Inferred(TensorType((h * w, c)))

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        return TorchCall(None, forward="{x}.flatten(2).transpose(1, 2)")  # (B, H*W, C)

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        batch, c, h, w = inputs[0].sizes
        return permute(reshape(inputs[0], (batch, c, h * w)), (0, 2, 1))


@register
class ToImage(View):
    """The inverse of ToTokens: ``[H*W, C]`` -> ``[C, H, W]`` for the given ``height``
    (``width``: the rest; both checked against the sequence length): a channels-last view
    of a contiguous sequence. No parameters; MACs 0."""

    kind = "ToImage"
    family = "reshape"
    positional = ("height", "width")

    height: Pos
    width: Pos | None = None

    def _size(self, x: TensorType) -> tuple[int, int, Dim]:
        expect_rank(x, (2,), "[H*W, C] (a sequence of positions)", self.kind)
        expect_float(x, self.kind)
        length = concrete(x.shape[0], f"{self.kind}'s sequence length")
        width = self.width if self.width is not None else length // self.height
        if self.height * width != length:
            raise LayerError(
                "E401",
                f"ToImage({self.height}, {width}) needs {self.height * width} positions, "
                f"got a sequence {x}",
                notes=[f"{self.height} x {width} = {self.height * width} != {length}"],
                arg="height",
            )
        return self.height, width, x.shape[1]

    def infer(self, inputs: list[TensorType]) -> Inferred:
        h, w, c = self._size(inputs[0])
        return Inferred(TensorType((c, h, w)))

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        return reshape(permute(inputs[0], (0, 2, 1)), output.sizes)

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        h, w, _ = self._size(inputs[0])
        return TorchCall(
            None, forward=f"{{x}}.transpose(1, 2).reshape({{x}}.shape[0], -1, {h}, {w})"
        )

    def label(self) -> str:
        return f"ToImage({self.height}{'' if self.width is None else f', {self.width}'})"
