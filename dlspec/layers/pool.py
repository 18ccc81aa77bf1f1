"""Pooling over 1, 2 or 3 spatial axes: MaxPool1d/2d/3d, AvgPool1d/2d/3d, AdaptiveAvgPool1d/2d/3d
and AdaptiveMaxPool1d. No parameters and, as in torchinfo, no MACs."""

from typing import Annotated, ClassVar

from dlspec.layers.base import (
    AXES,
    LAYOUTS,
    Inferred,
    Layer,
    LayerError,
    Pos,
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
from dlspec.validation import Field

NonNeg = Annotated[int, Field(ge=0)]

_UNITS = {
    "length": ("position", "positions"),
    "depth": ("plane", "planes"),
    "height": ("row", "rows"),
    "width": ("column", "columns"),
}


def _fmt(value: int | tuple[int, ...]) -> str:
    return "x".join(map(str, value)) if isinstance(value, tuple) else str(value)


class _Pooling(Layer):
    """Shared traits of the pools: channels pass through, the spatial axes (``spatial`` of
    them) after them."""

    family = "pooling"
    spatial: ClassVar[int]

    def _input(self, inputs: list[TensorType]) -> TensorType:
        x = inputs[0]
        expect_rank(x, (self.spatial + 1,), LAYOUTS[self.spatial], self.kind)
        expect_float(x, self.kind)
        return x

    def _keeps_channels_last_3d(self, output: Layout) -> bool:
        """Whether torch's 3-D kernel gives ``output`` a channels-last 3-D input's format
        (the average and adaptive pools' kernels return it contiguous)."""
        return False

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        """In the input's suggested memory format; torch pools ``(B, C, L)`` as
        ``(B, C, 1, L)`` (1-D pools call the 2-D kernels): a channels-last view of that (a
        sequence of tokens transposed) keeps its order. A 3-D pool that does not keep the
        channels-last 3-D format returns a contiguous output."""
        if self.spatial == 3 and not self._keeps_channels_last_3d(output):
            return output
        if self.spatial != 1:
            return like(inputs[0], output.sizes)
        (b, c, length), (sb, sc, sl) = inputs[0].sizes, inputs[0].strides
        wide = Layout((b, c, 1, length), (sb, sc, length * sl, sl))
        out = like(wide, (*output.sizes[:2], 1, output.sizes[2]))
        return Layout((*out.sizes[:2], out.sizes[3]), (*out.strides[:2], out.strides[3]))


class _PoolNd(_Pooling):
    """Shared rule of the windowed pools: per spatial axis,
    ``out = floor((size + 2*padding - dilation*(kernel-1) - 1) / stride) + 1`` (``ceil`` with
    ``ceil_mode``, dropping a last window that would start in the right padding). ``stride``
    defaults to the kernel size and ``padding`` may be at most half the kernel, as in torch.
    Channels pass through; no parameters, MACs 0. Windows that leave trailing rows or columns
    unread add a W503 warning with the arithmetic."""

    positional = ("kernel_size", "stride", "padding")

    kernel_size: Pos | tuple[Pos, ...] = Field(validation_alias="kernel")
    stride: Pos | tuple[Pos, ...] | None = None
    padding: NonNeg | tuple[NonNeg, ...] = 0
    ceil_mode: bool = False

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
        x = self._input(inputs)
        k, s, p = self._geometry()
        d = self._dilation()
        sizes = x.shape[1:]
        out: list[Dim] = []
        drops: list[tuple[str, int, str]] = []  # (axis, rows dropped, arithmetic)
        for size, ki, si, pi, di, axis in zip(sizes, k, s, p, d, AXES[self.spatial], strict=True):
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
class MaxPool3d(_MaxPoolNd):
    """Max over windows of ``[C, D, H, W]`` -> ``[C, D', H', W']``, each axis by the window
    rule of :class:`MaxPool2d`. MACs 0."""

    kind = "MaxPool3d"
    spatial = 3

    def _keeps_channels_last_3d(self, output: Layout) -> bool:
        return True


class _AvgPoolNd(_PoolNd):
    """Mean over windows, by the window rule of the pools; ``count_include_pad`` changes the
    divisor, not the shape. MACs 0 (as torchinfo)."""

    count_include_pad: bool = True


@register
class AvgPool1d(_AvgPoolNd):
    """Mean over windows of ``[C, L]`` -> ``[C, L']``, ``L'`` by the window rule of
    :class:`AvgPool2d`. MACs 0 (as torchinfo)."""

    kind = "AvgPool1d"
    spatial = 1


@register
class AvgPool2d(_AvgPoolNd):
    """Mean over windows of ``[C, H, W]`` -> ``[C, H', W']`` with, per axis,
    ``H' = floor((H + 2*padding - kernel) / stride) + 1`` (``ceil`` with ``ceil_mode``);
    ``stride`` defaults to ``kernel_size``. ``count_include_pad`` and ``divisor_override``
    change the divisor, not the shape. MACs 0 (as torchinfo)."""

    kind = "AvgPool2d"
    spatial = 2

    divisor_override: Pos | None = None


@register
class AvgPool3d(_AvgPoolNd):
    """Mean over windows of ``[C, D, H, W]`` -> ``[C, D', H', W']``, each axis by the window
    rule of :class:`AvgPool2d`. MACs 0 (as torchinfo)."""

    kind = "AvgPool3d"
    spatial = 3

    divisor_override: Pos | None = None


class _AdaptivePoolNd(_Pooling):
    """Shared rule of the adaptive pools: a grid of ``output_size`` windows over the spatial
    axes whatever their sizes (an output larger than the input repeats elements).
    ``output_size`` is an int (the same on every axis) or one entry per axis, ``None``
    keeping that input size. MACs 0."""

    positional = ("output_size",)

    output_size: Pos | tuple[Pos | None, ...]

    def _sizes(self) -> tuple[int | None, ...]:
        if isinstance(self.output_size, int):
            return (self.output_size,) * self.spatial
        if len(self.output_size) != self.spatial:
            raise LayerError(
                "E204",
                f"output_size needs {self.spatial} values, got {len(self.output_size)}",
                arg="output_size",
            )
        return self.output_size

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x = self._input(inputs)
        out = tuple(
            size if want is None else want
            for size, want in zip(x.shape[1:], self._sizes(), strict=True)
        )
        return Inferred(TensorType((x.shape[0], *out)))

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        return TorchCall(f"nn.{self.kind}", (self.output_size,))

    def label(self) -> str:
        if isinstance(self.output_size, int):
            return f"{self.kind}({self.output_size})"
        return "{}({})".format(self.kind, "x".join(str(v or "*") for v in self.output_size))


class _AdaptiveAvgPoolNd(_AdaptivePoolNd):
    def _keeps_channels_last_3d(self, output: Layout) -> bool:
        """A global average is a mean, which torch restrides as its input lies."""
        return all(size == 1 for size in output.sizes[2:])

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        """Nothing for an output of one element per channel (torch takes a mean, whose
        gradient needs only the shape); the input otherwise."""
        return [] if all(d == 1 for d in output.shape[1:]) else [saved_input(inputs)]


@register
class AdaptiveAvgPool1d(_AdaptiveAvgPoolNd):
    """Mean over ``output_size`` windows of ``[C, L]`` -> ``[C, output_size]``, whatever L
    is (global average pooling of a sequence of channels at 1). MACs 0."""

    kind = "AdaptiveAvgPool1d"
    spatial = 1

    output_size: Pos


@register
class AdaptiveAvgPool2d(_AdaptiveAvgPoolNd):
    """Mean over a grid of ``output_size`` windows: ``[C, H, W]`` -> ``[C, oh, ow]`` whatever
    H and W are (an output larger than the input repeats elements). ``output_size`` is an int
    (square) or a pair whose ``None`` entries keep that input size. MACs 0."""

    kind = "AdaptiveAvgPool2d"
    spatial = 2


@register
class AdaptiveAvgPool3d(_AdaptiveAvgPoolNd):
    """Mean over a grid of ``output_size`` windows: ``[C, D, H, W]`` -> ``[C, od, oh, ow]``,
    ``output_size`` an int or three entries (``None`` keeps that input size). MACs 0."""

    kind = "AdaptiveAvgPool3d"
    spatial = 3


@register
class AdaptiveMaxPool1d(_AdaptivePoolNd):
    """Max over ``output_size`` windows of ``[C, L]`` -> ``[C, output_size]``, whatever L
    is. MACs 0."""

    kind = "AdaptiveMaxPool1d"
    spatial = 1

    output_size: Pos

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        """The input and the argmax of every window (int64, one per output element)."""
        return [saved_input(inputs), Saved("indices", product(output.shape), "long")]
