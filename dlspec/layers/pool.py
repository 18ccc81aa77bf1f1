"""Pooling: MaxPool1d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d. No parameters and, as in
torchinfo, no MACs."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field

from dlspec.layers.base import (
    Inferred,
    Layer,
    LayerError,
    Saved,
    TensorType,
    TorchCall,
    expect_float,
    expect_rank,
    pair,
    register,
    saved_input,
    window_drops,
    window_out,
)
from dlspec.layers.layout import Layout, like
from dlspec.layers.symbolic import Dim, fmt_dim, product

Pos = Annotated[int, Field(ge=1)]
NonNeg = Annotated[int, Field(ge=0)]

_UNITS = {
    "length": ("position", "positions"),
    "height": ("row", "rows"),
    "width": ("column", "columns"),
}


def _fmt(value: int | tuple[int, ...]) -> str:
    return "x".join(map(str, value)) if isinstance(value, tuple) else str(value)


class _PoolNd(Layer):
    """Shared rule of the windowed pools: per spatial axis,
    ``out = floor((size + 2*padding - dilation*(kernel-1) - 1) / stride) + 1`` (``ceil`` with
    ``ceil_mode``, dropping a last window that would start in the right padding). ``stride``
    defaults to the kernel size and ``padding`` may be at most half the kernel, as in torch.
    Channels pass through; no parameters, MACs 0. Windows that leave trailing rows or columns
    unread add a W503 warning with the arithmetic."""

    family = "pooling"
    positional = ("kernel_size", "stride", "padding")
    spatial: ClassVar[int]

    kernel_size: Pos | tuple[Pos, ...] = Field(validation_alias="kernel")
    stride: Pos | tuple[Pos, ...] | None = None
    padding: NonNeg | tuple[NonNeg, ...] = 0
    ceil_mode: bool = False

    def _axes(self) -> tuple[str, ...]:
        return ("length",) if self.spatial == 1 else ("height", "width")

    def _dilation(self) -> tuple[int, ...]:
        return (1,) * self.spatial

    def _geometry(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        for name in ("kernel_size", "stride", "padding"):
            value = getattr(self, name)
            if isinstance(value, tuple) and len(value) != self.spatial:
                raise LayerError(
                    "E204", f"{name} needs {self.spatial} values, got {len(value)}", arg=name
                )
        k = pair(self.kernel_size, self.spatial)
        s = k if self.stride is None else pair(self.stride, self.spatial)
        p = pair(self.padding, self.spatial)
        for ki, pi in zip(k, p, strict=True):
            if 2 * pi > ki:
                raise LayerError(
                    "E204",
                    f"padding={pi} is more than half the kernel size {ki}; torch refuses it",
                    notes=[f"padding must be at most {ki} // 2 = {ki // 2}"],
                    arg="padding",
                )
        return k, s, p

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x = inputs[0]
        expect_rank(
            x, (self.spatial + 1,), "[C, L]" if self.spatial == 1 else "[C, H, W]", self.kind
        )
        expect_float(x, self.kind)
        k, s, p = self._geometry()
        d = self._dilation()
        sizes = x.shape[1:]
        out: list[Dim] = []
        drops: list[tuple[str, int, str]] = []  # (axis, rows dropped, arithmetic)
        for size, ki, si, pi, di, axis in zip(sizes, k, s, p, d, self._axes(), strict=True):
            n = window_out(size, ki, si, pi, di, axis, ceil_mode=self.ceil_mode)
            out.append(n)
            dropped = window_drops(size, ki, si, pi, di, ceil_mode=self.ceil_mode)
            if dropped:
                pad = f" + 2*{pi}" if pi else ""
                reach = f"{fmt_dim(size)}{pad} - {di * (ki - 1) + 1}"
                count = f"ceil(({reach}) / {si})" if self.ceil_mode else f"({reach}) // {si}"
                covered = f"{fmt_dim(size - dropped)} of {fmt_dim(size)}"
                drops.append((axis, dropped, f"{count} + 1 = {n} windows cover {covered}"))
        result = Inferred(TensorType((x.shape[0], *out)))
        if drops:
            result.warnings.append(("W503", self._drop_message(drops)))
        return result

    def _drop_message(self, drops: list[tuple[str, int, str]]) -> str:
        counts = " and ".join(
            f"{n} {_UNITS[axis][0] if n == 1 else _UNITS[axis][1]}" for axis, n, _ in drops
        )
        sums = [arith for _, _, arith in drops]
        if len(set(sums)) == 1:
            explained = sums[0]
        else:
            explained = "; ".join(f"{axis} {arith}" for axis, _, arith in drops)
        return f"{self.label()} drops {counts}: {explained}"

    def _torch_kwargs(self) -> dict[str, object]:
        kwargs = self.keywords()
        kwargs.pop("kernel_size", None)
        return kwargs

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        return TorchCall(f"nn.{self.kind}", (self.kernel_size,), self._torch_kwargs())

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        return like(inputs[0], output.sizes)

    def label(self) -> str:
        parts = [_fmt(self.kernel_size)]
        if self.stride is not None:
            parts.append(f"s={_fmt(self.stride)}")
        if self.padding != 0:
            parts.append(f"p={_fmt(self.padding)}")
        if self.ceil_mode:
            parts.append("ceil")
        return f"{self.kind}({', '.join(parts)})"


class _MaxPoolNd(_PoolNd):
    dilation: Pos | tuple[Pos, ...] = 1

    def _dilation(self) -> tuple[int, ...]:
        if isinstance(self.dilation, tuple) and len(self.dilation) != self.spatial:
            raise LayerError(
                "E204",
                f"dilation needs {self.spatial} values, got {len(self.dilation)}",
                arg="dilation",
            )
        return pair(self.dilation, self.spatial)

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        """The input and the argmax of every window (int64, one per output element)."""
        return [saved_input(inputs), Saved("indices", product(output.shape), "long")]

    def label(self) -> str:
        text = super().label()
        return text if self.dilation == 1 else f"{text[:-1]}, d={_fmt(self.dilation)})"


@register
class MaxPool1d(_MaxPoolNd):
    """Max over windows of ``[C, L]`` -> ``[C, L']``; ``L'`` by the window rule of
    :class:`MaxPool2d`. MACs 0."""

    kind = "MaxPool1d"
    spatial = 1

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        """torch pools ``(B, C, L)`` as ``(B, C, 1, L)`` (with indices, in training): a
        channels-last view of that (a sequence of tokens transposed) keeps its order."""
        (b, c, length), (sb, sc, sl) = inputs[0].sizes, inputs[0].strides
        wide = Layout((b, c, 1, length), (sb, sc, length * sl, sl))
        out = like(wide, (*output.sizes[:2], 1, output.sizes[2]))
        return Layout((*out.sizes[:2], out.sizes[3]), (*out.strides[:2], out.strides[3]))

    def layout_given(self, inputs: list[Layout], output: Layout, grads: tuple[bool, ...]) -> Layout:
        """Without a gradient to follow (over data) torch's CPU kernel pools without
        indices, into a contiguous tensor."""
        return self.layout(inputs, output) if any(grads) else output


@register
class MaxPool2d(_MaxPoolNd):
    """Max over windows of ``[C, H, W]`` -> ``[C, H', W']`` with, per axis,
    ``H' = floor((H + 2*padding - dilation*(kernel-1) - 1) / stride) + 1`` (``ceil`` with
    ``ceil_mode``); ``stride`` defaults to ``kernel_size``. MACs 0."""

    kind = "MaxPool2d"
    spatial = 2


@register
class AvgPool2d(_PoolNd):
    """Mean over windows of ``[C, H, W]`` -> ``[C, H', W']`` with, per axis,
    ``H' = floor((H + 2*padding - kernel) / stride) + 1`` (``ceil`` with ``ceil_mode``);
    ``stride`` defaults to ``kernel_size``. ``count_include_pad`` and ``divisor_override``
    change the divisor, not the shape. MACs 0 (as torchinfo)."""

    kind = "AvgPool2d"
    spatial = 2

    count_include_pad: bool = True
    divisor_override: Pos | None = None


@register
class AdaptiveAvgPool2d(Layer):
    """Mean over a grid of ``output_size`` windows: ``[C, H, W]`` -> ``[C, oh, ow]`` whatever
    H and W are (an output larger than the input repeats elements). ``output_size`` is an int
    (square) or a pair whose ``None`` entries keep that input size. MACs 0."""

    kind = "AdaptiveAvgPool2d"
    family = "pooling"
    positional = ("output_size",)

    output_size: Pos | tuple[Pos | None, Pos | None]

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x = inputs[0]
        expect_rank(x, (3,), "[C, H, W]", self.kind)
        expect_float(x, self.kind)
        sizes = pair(self.output_size) if isinstance(self.output_size, int) else self.output_size
        out = tuple(
            size if want is None else want for size, want in zip(x.shape[1:], sizes, strict=True)
        )
        return Inferred(TensorType((x.shape[0], *out)))

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        return TorchCall("nn.AdaptiveAvgPool2d", (self.output_size,))

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        return like(inputs[0], output.sizes)

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        """Nothing for a 1 x 1 output (torch takes a mean, whose gradient needs only the
        shape); the input otherwise."""
        return [] if output.shape[1:] == (1, 1) else [saved_input(inputs)]

    def label(self) -> str:
        if isinstance(self.output_size, int):
            return f"AdaptiveAvgPool2d({self.output_size})"
        return "AdaptiveAvgPool2d({})".format("x".join(str(v or "*") for v in self.output_size))
