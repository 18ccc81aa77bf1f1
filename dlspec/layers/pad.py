"""Moving elements within a tensor: Pad (constant, reflect, replicate, circular) and Roll.

``Pad`` pads the last one to three dimensions, as ``torch.nn.functional.pad``; the sides are
named as an image's (``left``/``right`` the last dimension, ``top``/``bottom`` the one
before, ``front``/``back`` the one before that), so a causal 1-D convolution reads
``Pad(left=k - 1)  Conv1d(c, kernel=k)``; or torch's tuple is given whole, last dimension
first: ``Pad([k - 1, 0])``. ``Roll`` shifts elements cyclically along dimensions (Swin's
shifted windows). Neither has parameters or MACs.
"""

from typing import Annotated, Literal

from dlspec.layers.base import (
    Inferred,
    Layer,
    LayerError,
    Saved,
    TensorType,
    TorchCall,
    axis,
    register,
    saved_input,
    torch_dim,
)
from dlspec.layers.layout import Layout, empty_like, like
from dlspec.layers.symbolic import Dim, fmt_dim
from dlspec.validation import Field

Side = Annotated[int, Field(ge=0)]
# the sides, by dimension from the last: (before, after)
SIDES = (("left", "right"), ("top", "bottom"), ("front", "back"))
# torch's module class per mode, with the number of padded dimensions appended
MODULES = {
    "constant": "ConstantPad",
    "reflect": "ReflectionPad",
    "replicate": "ReplicationPad",
    "circular": "CircularPad",
}


@register
class Pad(Layer):
    """Pads the last 1 to 3 dimensions: by ``left``/``right`` (the last), ``top``/``bottom``
    (the one before) and ``front``/``back``, or by ``padding``, torch's tuple, the last
    dimension first (``(left, right, top, bottom, ...)``). ``mode``: ``"constant"`` (with
    ``value``, default 0), ``"reflect"``, ``"replicate"`` or ``"circular"``, as
    ``torch.nn.functional.pad``; the last three pad every dimension after the channels,
    1 to 3 (``[C, H, W]``: 2, with zeros where no side is named), and reflect and circular
    need a size larger than (reflect) or at least (circular) the padding on each side.
    No parameters, MACs 0; reflect and replicate keep their input for backward."""

    kind = "Pad"
    family = "reshape"
    positional = ("padding",)

    padding: tuple[Side, ...] | None = None
    left: Side = 0
    right: Side = 0
    top: Side = 0
    bottom: Side = 0
    front: Side = 0
    back: Side = 0
    mode: Literal["constant", "reflect", "replicate", "circular"] = "constant"
    value: float = 0.0

    def pads(self) -> tuple[int, ...]:
        """torch's tuple: (before, after) per padded dimension, the last first, without
        trailing pairs of zeros (at least one pair)."""
        named = tuple(getattr(self, side) for pair in SIDES for side in pair)
        if self.padding is not None:
            if any(named):
                raise LayerError(
                    "E204",
                    "Pad takes padding=(...) or the sides by name (left=, right=...), not both",
                    arg="padding",
                )
            if not self.padding or len(self.padding) % 2 or len(self.padding) > 2 * len(SIDES):
                raise LayerError(
                    "E204",
                    f"padding={self.padding} must be pairs (before, after) for 1 to "
                    f"{len(SIDES)} dimensions, the last first: (left, right, top, bottom)",
                    arg="padding",
                )
            named = self.padding
        pads = list(named)
        while len(pads) > 2 and pads[-2:] == [0, 0]:
            del pads[-2:]
        return tuple(pads)

    def pads_for(self, x: TensorType) -> tuple[int, ...]:
        """:meth:`pads` over ``x``: reflect, replicate and circular pad every dimension but
        the first (channels), up to 3, with zeros where no side is named (torch's modules
        take an input of one more dimension than they pad)."""
        pads = self.pads()
        spatial = len(x.shape) - 1
        if self.mode != "constant" and len(pads) // 2 < spatial <= len(SIDES):
            pads = (*pads, *(0,) * (2 * spatial - len(pads)))
        return pads

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x = inputs[0]
        pads = self.pads_for(x)
        dims = len(pads) // 2
        rank = len(x.shape)
        if self.mode != "constant" and rank != dims + 1:
            raise LayerError(
                "E404",
                f"Pad(mode={self.mode!r}) of {dims} dimension(s) needs an input of rank "
                f"{dims + 1} per sample (channels first), got {x}",
            )
        if rank < dims:
            raise LayerError("E404", f"Pad pads {dims} dimensions, but its input is {x}")
        shape = list(x.shape)
        for i in range(dims):
            before, after = pads[2 * i], pads[2 * i + 1]
            size = shape[rank - 1 - i]
            self._fits(size, max(before, after), SIDES[i])
            shape[rank - 1 - i] = size + before + after
        return Inferred(TensorType(tuple(shape), x.dtype))

    def _fits(self, size: Dim, pad: int, sides: tuple[str, str]) -> None:
        """Reflect needs more elements than it pads on a side, circular at least as many."""
        limit = {"reflect": pad + 1, "circular": pad}.get(self.mode, 1)
        if isinstance(size, int) and size < limit:
            raise LayerError(
                "E402",
                f"Pad(mode={self.mode!r}) pads {pad} on the {'/'.join(sides)} of a "
                f"dimension of {fmt_dim(size)}; it needs at least {limit}",
            )

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        pads = self.pads_for(inputs[0])
        cls = f"nn.{MODULES[self.mode]}{len(pads) // 2}d"
        value = (float(self.value),) if self.mode == "constant" else ()
        return TorchCall(cls, (pads, *value))

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        """Reflect and replicate pad through an index their backward recomputes from the
        input; constant and circular padding keep nothing."""
        return [saved_input(inputs)] if self.mode in ("reflect", "replicate") else []

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        """In the input's suggested memory format (channels-last, 2-D or 3-D, where its
        strides are so), as torch's pads allocate it; a circular pad, made of slices
        concatenated, is contiguous; a constant pad of nothing is torch's clone of the
        input, strided as it is."""
        if self.mode == "constant" and not any(self.pads()):
            return empty_like(inputs[0])
        return output if self.mode == "circular" else like(inputs[0], output.sizes)

    def label(self) -> str:
        pads = self.pads()
        sides = [
            f"{side}={pad}"
            for pair, at in zip(SIDES, range(0, len(pads), 2), strict=False)
            for side, pad in zip(pair, pads[at : at + 2], strict=True)
            if pad
        ]
        mode = [] if self.mode == "constant" else [self.mode]
        value = [f"value={self.value:g}"] if self.value else []
        return f"Pad({', '.join([*sides, *mode, *value])})"


@register
class Roll(Layer):
    """Shifts elements cyclically by ``shifts`` along per-sample dimensions ``dims`` (one of
    each, or tuples of one length), as ``torch.roll``: what leaves one end comes back at
    the other. Swin's shifted windows: ``Roll([-3, -3], dims=[0, 1])`` on ``[H, W, C]``.
    No parameters, MACs 0; keeps nothing for backward (the gradient rolls back). Along a
    symbolic length the ONNX export (slices and a concatenation) is right where the length
    exceeds the shift; ``dlspec export`` verifies it at half the length."""

    kind = "Roll"
    family = "reshape"
    positional = ("shifts", "dims")

    shifts: int | tuple[int, ...]
    dims: int | tuple[int, ...] = -1

    def _pairs(self) -> list[tuple[int, int]]:
        shifts = (self.shifts,) if isinstance(self.shifts, int) else self.shifts
        dims = (self.dims,) if isinstance(self.dims, int) else self.dims
        if len(shifts) != len(dims) or not dims:
            raise LayerError(
                "E204",
                f"Roll takes one shift per dimension, got shifts={self.shifts}, dims={self.dims}",
                arg="shifts",
            )
        return list(zip(shifts, dims, strict=True))

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x = inputs[0]
        seen = [axis(d, x, "dims") for _, d in self._pairs()]
        if len(set(seen)) < len(seen):
            raise LayerError("E204", f"Roll names a dimension twice: dims={self.dims}", arg="dims")
        return Inferred(x)

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        """``torch.roll``, each shift along a dimension of a fixed size taken modulo it (the
        same roll, and the one an ONNX export's slices make)."""
        x = inputs[0]
        pairs = self._pairs()
        shifts = tuple(
            s % size if isinstance(size := x.shape[axis(d, x)], int) else s for s, d in pairs
        )
        dims = tuple(torch_dim(d) for _, d in pairs)
        if len(pairs) == 1:
            return TorchCall(None, forward=f"torch.roll({{x}}, {shifts[0]}, dims={dims[0]})")
        return TorchCall(None, forward=f"torch.roll({{x}}, {shifts}, dims={dims})")

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        return []

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        """In the input's suggested memory format, as ``torch.roll`` allocates it."""
        return like(inputs[0], output.sizes)

    def label(self) -> str:
        return f"Roll({self.shifts}, dims={self.dims})"
