"""Layers that move elements around without parameters: Flatten, Permute, Transpose, Select,
Slice, Chunk (several outputs), Mean, Sum, Reshape, Identity, Upsample, PixelShuffle,
PixelUnshuffle, and the regularizers
Dropout, Dropout2d and StochasticDepth. None of them has MACs. Every ``dim`` counts per-sample
dimensions (0 is the first after the batch; negative dims count from the end)."""

import itertools
import math
import re
from typing import Annotated, Any, ClassVar, Literal

from dlspec.layers.base import (
    Inferred,
    Layer,
    LayerError,
    Pos,
    Saved,
    SymbolicSize,
    TensorType,
    TorchCall,
    View,
    axis,
    expect_float,
    expect_rank,
    register,
    sample_dim,
    torch_dim,
)
from dlspec.layers.layout import (
    Layout,
    contiguous,
    elementwise,
    empty_like,
    like,
    permute,
    reshape,
    select,
    slice_of,
)
from dlspec.layers.symbolic import Dim, Poly, SymbolicError, fmt_dim, product
from dlspec.syntax.bounds import MAX_LITERAL
from dlspec.validation import Field

PosFloat = Annotated[float, Field(gt=0)]
Probability = Annotated[float, Field(ge=0, le=1)]


def _dims(shape: tuple[Dim, ...]) -> str:
    return " x ".join(fmt_dim(d) for d in shape)


@register
class Flatten(View):
    """Merges per-sample dimensions ``start_dim..end_dim`` (inclusive) into one. Dims count per
    sample, as every ``dim`` in dlspec (0 is the first after the batch; negative from the
    end): the default ``Flatten()`` (0, -1) turns ``[C, H, W]`` into ``[C*H*W]``, and
    ``Flatten(1)`` turns ``[C, H, W]`` into ``[C, H*W]`` (torch's ``flatten(2)``). MACs 0."""

    kind = "Flatten"
    family = "reshape"
    positional = ("start_dim", "end_dim")

    start_dim: int = 0
    end_dim: int = -1

    @classmethod
    def torch_arguments(cls, module: Any) -> dict[str, Any]:
        """The dims of a torch ``nn.Flatten``, per sample (for importing a torch model)."""
        return {"start_dim": sample_dim(module.start_dim), "end_dim": sample_dim(module.end_dim)}

    def _range(self, x: TensorType) -> tuple[int, int]:
        if not x.shape:
            raise LayerError("E404", f"Flatten needs at least one dimension per sample, got {x}")
        start, end = axis(self.start_dim, x, "start_dim"), axis(self.end_dim, x, "end_dim")
        if start > end:
            raise LayerError(
                "E204",
                f"start_dim={self.start_dim} comes after end_dim={self.end_dim} in {x} "
                f"(dimensions {start} and {end})",
                arg="start_dim",
            )
        return start, end

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x = inputs[0]
        start, end = self._range(x)
        shape = (*x.shape[:start], product(x.shape[start : end + 1]), *x.shape[end + 1 :])
        return Inferred(TensorType(shape, x.dtype))

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        start, end = torch_dim(self.start_dim), torch_dim(self.end_dim)
        return TorchCall("nn.Flatten", () if (start, end) == (1, -1) else (start, end))

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        """A reshape, but torch's ``flatten`` of one dimension returns its input as it lies
        (a reshape would restride its size-1 dimensions)."""
        x = inputs[0]
        return x if x.sizes == output.sizes else reshape(x, output.sizes)

    def label(self) -> str:
        args = self.keywords()
        return "Flatten" if not args else f"Flatten({self.start_dim}, {self.end_dim})"


class _Rearrange(View):
    """Shared traits of Permute and Transpose: no module, no parameters, MACs 0."""

    family = "reshape"

    def _order(self, x: TensorType) -> list[int]:
        raise NotImplementedError

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x = inputs[0]
        return Inferred(TensorType(tuple(x.shape[i] for i in self._order(x)), x.dtype))

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        rank = len(inputs[0].sizes) - 1
        order = self._order(TensorType((1,) * rank))
        return permute(inputs[0], [0, *(i + 1 for i in order)])


@register
class Permute(_Rearrange):
    """Reorders the per-sample dimensions: ``Permute(1, 2, 0)`` turns ``[C, H, W]`` into
    ``[H, W, C]`` (``dims`` name every dimension once; negative ones count from the end).
    ``forward`` calls ``x.permute(0, ...)`` with the batch kept first. MACs 0."""

    kind = "Permute"
    variadic = "dims"

    dims: tuple[int, ...] = Field(min_length=1)

    def _order(self, x: TensorType) -> list[int]:
        order = [axis(d, x, "dims") for d in self.dims]
        if sorted(order) != list(range(len(x.shape))):
            raise LayerError(
                "E204",
                f"Permute{self.dims} must name each of the {len(x.shape)} dimensions of {x} "
                "exactly once",
                arg="dims",
            )
        return order

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        order = ", ".join(str(i + 1) for i in self._order(inputs[0]))
        return TorchCall(None, forward=f"{{x}}.permute(0, {order})")

    def label(self) -> str:
        return f"Permute({', '.join(map(str, self.dims))})"


@register
class Transpose(_Rearrange):
    """Swaps two per-sample dimensions: ``Transpose(0, 1)`` turns ``[T, D]`` into ``[D, T]``.
    MACs 0."""

    kind = "Transpose"
    positional = ("dim0", "dim1")

    dim0: int
    dim1: int

    def _order(self, x: TensorType) -> list[int]:
        a, b = axis(self.dim0, x, "dim0"), axis(self.dim1, x, "dim1")
        order = list(range(len(x.shape)))
        order[a], order[b] = b, a
        return order

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        a, b = torch_dim(self.dim0), torch_dim(self.dim1)
        return TorchCall(None, forward=f"{{x}}.transpose({a}, {b})")

    def label(self) -> str:
        return f"Transpose({self.dim0}, {self.dim1})"


def _index(value: int, size: Dim, what: str, arg: str) -> int:
    """``value`` (negative from the end) as an index into a dimension of ``size``; a negative
    index needs a concrete size."""
    if value >= 0:
        return value
    if isinstance(size, Poly):
        raise LayerError(
            "E405", f"{arg}={value} counts from the end of the symbolic {what} {size}", arg=arg
        )
    return value + size


@register
class Select(View):
    """Picks position ``index`` (negative: from the end) along per-sample dimension ``dim``,
    which disappears: ``Select(0, 0)`` turns a sequence ``[T, D]`` into its first step ``[D]``
    (a ViT's class token; torch's ``x[:, 0]``). MACs 0."""

    kind = "Select"
    family = "reshape"
    positional = ("dim", "index")

    dim: int
    index: int

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x = inputs[0]
        at = axis(self.dim, x)
        size = x.shape[at]
        index = _index(self.index, size, f"dimension {self.dim} of {x}", "index")
        if index < 0 or (isinstance(size, int) and index >= size):
            raise LayerError(
                "E204",
                f"index={self.index} is outside dimension {self.dim} of {x}, of size {size}",
                arg="index",
            )
        return Inferred(TensorType(x.shape[:at] + x.shape[at + 1 :], x.dtype))

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        return TorchCall(None, forward=f"{{x}}.select({torch_dim(self.dim)}, {self.index})")

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        return select(inputs[0], self.dim % (len(inputs[0].sizes) - 1) + 1)

    def label(self) -> str:
        return f"Select({self.dim}, {self.index})"


def _slice(parts: list[str]) -> str:
    """``start:end:step`` as ruff formats it: a bound other than a name or a number (with its
    sign) makes each colon spaced where a bound stands beside it (``: -self.dilation``)."""
    if all(re.fullmatch(r"-?(\d+|[A-Za-z_]\w*)", p) for p in parts if p):
        return ":".join(parts)
    text = parts[0]
    for before, after in itertools.pairwise(parts):
        text += (" " if before else "") + ":" + (" " if after else "") + after
    return text


@register
class Slice(View):
    """Keeps positions ``start``, ``start + step``, ... before ``end`` (default: to the end;
    negative values count from the end) along per-sample dimension ``dim``:
    ``Slice(0, 1)`` drops the first step of ``[T, D]`` (torch's ``x[:, 1:]``). On a
    symbolic length ``T`` a negative value counts from the end too (``Slice(0, 0, -1)``
    keeps ``T - 1``), and ``start``/``end`` may be sizes (``end=input.shape[0]``) that
    differ from the length by a fixed number. MACs 0."""

    kind = "Slice"
    family = "reshape"
    positional = ("dim", "start", "end", "step")

    dim: int
    start: int | SymbolicSize = 0
    end: int | SymbolicSize | None = None
    step: Annotated[int, Field(ge=1)] = 1

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x = inputs[0]
        at = axis(self.dim, x)
        size = x.shape[at]
        what = f"dimension {self.dim} of {x}"
        limits: list[tuple[Dim, int, str]] = []
        start = self._bound(self.start, size, what, "start", limits)
        end = size if self.end is None else self._bound(self.end, size, what, "end", limits)
        if isinstance(size, int) and isinstance(end, int) and isinstance(start, int):
            start, end = max(0, min(start, size)), max(0, min(end, size))
        try:
            kept = (end - start + self.step - 1) // self.step
        except SymbolicError as exc:
            raise LayerError("E405", f"Slice of the symbolic {what}: {exc}", arg="step") from exc
        if isinstance(kept, int) and kept <= 0:
            raise LayerError(
                "E402",
                f"Slice({self.dim}, {self.start}, {self.end}) keeps nothing of {what}, "
                f"of size {fmt_dim(size)}",
                arg="start",
            )
        out = TensorType((*x.shape[:at], kept, *x.shape[at + 1 :]), x.dtype)
        return Inferred(out, limits=limits)

    @staticmethod
    def _bound(
        value: int | Poly, size: Dim, what: str, arg: str, limits: list[tuple[Dim, int, str]]
    ) -> Dim:
        """``start`` or ``end`` as a position in a dimension of ``size``. On a symbolic size a
        position is the size minus a fixed number (a negative value, or a size such as
        ``T - 1``), whose range the analyzer checks at the spec's bindings (``limits``)."""
        if not isinstance(size, Poly):
            if isinstance(value, Poly):
                raise LayerError(
                    "E405", f"{arg}={value} is symbolic, but {what} is fixed ({size})", arg=arg
                )
            return _index(value, size, what, arg)
        position = size + value if isinstance(value, int) and value < 0 else value
        back = size - position  # how far before the end
        if isinstance(value, Poly) and not isinstance(back, int):
            raise LayerError(
                "E405",
                f"{arg}={value} on the symbolic {what}: a position there is its length "
                "minus a fixed number (write e.g. -1, or input.shape[i] - 1)",
                arg=arg,
            )
        if isinstance(back, int) and back < 0:
            raise LayerError(
                "E402", f"{arg}={value} is past the end of the symbolic {what}", arg=arg
            )
        # 0 <= position <= size at the spec's bindings: checked there (E409)
        needs = f"Slice's {arg}={value} needs {fmt_dim(size)} >= "
        if not isinstance(back, int):
            limits.append((-back, 0, needs + fmt_dim(position)))
        if isinstance(position, Poly):
            limits.append((-position, 0, needs + fmt_dim(back)))
        return position

    @staticmethod
    def _written(value: int | Poly, size: Dim) -> str:
        """A position as forward's code writes it: symbolic ones from the end (``-1``)."""
        return str(value - size) if isinstance(value, Poly) else str(value)

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        at = self.dim % (len(inputs[0].sizes) - 1) + 1
        return slice_of(inputs[0], at, output.sizes[at], self.step)

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        at = axis(self.dim, inputs[0])
        lead = ":, " * (at + 1)  # the batch and the dims before
        size = inputs[0].shape[at]
        symbolic_end = isinstance(self.end, Poly) and self.end == size
        end = "" if self.end is None or symbolic_end else self._written(self.end, size)
        start = self._written(self.start, size) if self.start else ""
        parts = [start, end] + ([] if self.step == 1 else [str(self.step)])
        return TorchCall(None, forward=f"{{x}}[{lead}{_slice(parts)}]")

    def label(self) -> str:
        end = "" if self.end is None else str(self.end)
        step = "" if self.step == 1 else f":{self.step}"
        return f"Slice({self.dim}, {self.start}:{end}{step})"


@register
class Chunk(View):
    """Splits per-sample dimension ``dim`` (default: the last) into ``chunks`` pieces, as
    ``torch.chunk`` does: each piece has ``ceil(size / chunks)`` positions and the last what
    is left, so an uneven split may give FEWER pieces than asked (5 in 4 chunks: 2 + 2 + 1,
    three pieces). It has several outputs, named where it is used: ``q, k, v = Chunk(3) <-
    qkv`` splits ``[T, 3*D]`` into three ``[T, D]``. The pieces are views of the input; MACs
    0."""

    kind = "Chunk"
    family = "reshape"
    positional = ("chunks", "dim")

    chunks: Pos
    dim: int = -1

    def _sizes(self, x: TensorType) -> tuple[list[Dim], str]:
        """The pieces' sizes along ``dim``, and the arithmetic behind their count."""
        size = x.shape[axis(self.dim, x)]
        what = f"dim={self.dim} of {x}, of size {fmt_dim(size)}"
        if isinstance(size, Poly):
            try:
                each = size // self.chunks
            except SymbolicError as exc:
                raise LayerError(
                    "E405", f"Chunk({self.chunks}) of the symbolic {what}: {exc}", arg="chunks"
                ) from exc
            return [each] * self.chunks, f"{what}: {self.chunks} x {fmt_dim(each)}"
        each = -(-size // self.chunks)
        count = -(-size // each)
        sizes: list[Dim] = [*[each] * (count - 1), size - each * (count - 1)]
        note = f"{what}: pieces of ceil({size} / {self.chunks}) = {each}"
        if count != self.chunks or sizes[-1] != each:
            note += f", ceil({size} / {each}) = {count} of them: " + " + ".join(map(str, sizes))
        return sizes, note

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x = inputs[0]
        at = axis(self.dim, x)
        sizes, note = self._sizes(x)
        outputs = [TensorType((*x.shape[:at], s, *x.shape[at + 1 :]), x.dtype) for s in sizes]
        return Inferred(outputs[0], several=outputs, count_note=note)

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        at = self.dim % (len(inputs[0].sizes) - 1) + 1
        return slice_of(inputs[0], at, output.sizes[at], 1)

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        """``x.chunk(chunks)``; an uneven split as what torch.chunk does, ``x.split`` into
        the pieces' sizes, which the ONNX exporters turn into a plain Split (TorchScript
        exports an uneven chunk as a sequence ONNX Runtime cannot split at other batch
        sizes, and a split by one size wrongly where it does not know the input's)."""
        sizes, _ = self._sizes(inputs[0])
        dim = torch_dim(self.dim)
        if len(set(sizes)) == 1 and len(sizes) == self.chunks:
            return TorchCall(None, forward=f"{{x}}.chunk({self.chunks}, dim={dim})")
        return TorchCall(None, forward=f"{{x}}.split([{', '.join(map(str, sizes))}], dim={dim})")

    def label(self) -> str:
        dim = "" if self.dim == -1 else f", dim={self.dim}"
        return f"Chunk({self.chunks}{dim})"


class _Reduce(Layer):
    """Shared rule of Mean and Sum over per-sample ``dim`` (one or several; default: all),
    dropping the reduced dimensions unless ``keepdim``. No module; MACs 0 (torchinfo counts
    no reductions)."""

    family = "reshape"
    positional = ("dim",)
    method: ClassVar[str]

    dim: int | tuple[int, ...] | None = None
    keepdim: bool = False

    def _axes(self, x: TensorType) -> list[int]:
        if self.dim is None:
            return list(range(len(x.shape)))
        dims = (self.dim,) if isinstance(self.dim, int) else self.dim
        axes = [axis(d, x) for d in dims]
        if len(set(axes)) != len(axes):
            raise LayerError("E204", f"dim={self.dim} names a dimension twice", arg="dim")
        return axes

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x = inputs[0]
        if self.method == "mean":  # torch averages floats only
            expect_float(x, self.kind)
        axes = self._axes(x)
        shape = tuple(
            1 if i in axes else d for i, d in enumerate(x.shape) if self.keepdim or i not in axes
        )
        return Inferred(TensorType(shape, x.dtype))

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        return []  # a sum's or a mean's gradient needs only the shape

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        dims = tuple(torch_dim(d) for d in self._axes(inputs[0]))
        dim = dims[0] if len(dims) == 1 else dims
        keep = ", keepdim=True" if self.keepdim else ""
        return TorchCall(None, forward=f"{{x}}.{self.method}(dim={dim}{keep})")

    def label(self) -> str:
        dims = "" if self.dim is None else f"dim={self.dim}"
        keep = ", keepdim" if self.keepdim else ""
        return f"{self.kind}({dims}{keep})" if dims or keep else self.kind


@register
class Mean(_Reduce):
    """Average over per-sample ``dim`` (an int, a list, or all by default): ``Mean(0)`` turns
    ``[T, D]`` into ``[D]``; ``Mean([1, 2], keepdim=true)`` turns ``[C, H, W]`` into
    ``[C, 1, 1]``. MACs 0."""

    kind = "Mean"
    method = "mean"


@register
class Sum(_Reduce):
    """Sum over per-sample ``dim``, by the rule of Mean. MACs 0."""

    kind = "Sum"
    method = "sum"


@register
class Reshape(View):
    """Reshapes each sample to ``shape`` (written variadically: ``Reshape(64, 7, 7)``); one
    entry may be -1, "whatever is left". The element count must stay the same. No torch
    module: ``forward`` calls ``x.reshape(x.shape[0], *shape)``. MACs 0."""

    kind = "Reshape"
    family = "reshape"
    variadic = "shape"

    shape: tuple[Annotated[int, Field(ge=-1)], ...] = Field(min_length=1)

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x = inputs[0]
        target = list(self.shape)
        if 0 in target:
            raise LayerError(
                "E204",
                f"Reshape{self.shape}: sizes must be positive, or -1 for the rest",
                arg="shape",
            )
        if target.count(-1) > 1:
            raise LayerError(
                "E204", f"Reshape{self.shape}: at most one size may be -1", arg="shape"
            )
        n = product(x.shape)
        known = math.prod(d for d in target if d != -1)
        written = "[" + ", ".join(map(str, target)) + "]"
        count = f"{n:,}" if isinstance(n, int) else fmt_dim(n)
        have = f"its input {x} has {count}" + (f" = {_dims(x.shape)}" if len(x.shape) > 1 else "")
        out: list[Dim] = list(target)
        if -1 in target:
            try:
                rest, left = n // known, n % known
            except SymbolicError as exc:
                raise LayerError("E405", f"Reshape to {written}: {exc}", arg="shape") from exc
            if left:
                raise LayerError(
                    "E401",
                    f"Reshape to {written} needs a multiple of {known:,} elements, but {have}",
                    notes=[f"{fmt_dim(n)} % {known} = {left}"],
                    arg="shape",
                )
            out[target.index(-1)] = rest
        elif isinstance(n, Poly):
            raise LayerError(
                "E405",
                f"Reshape to {written} needs a fixed element count, but {have}; "
                "write -1 for the symbolic part",
                arg="shape",
            )
        elif n != known:
            raise LayerError(
                "E401",
                f"Reshape to {written} needs {known:,} elements, but {have}",
                notes=[f"{_dims(tuple(target))} = {known:,} != {n:,}"],
                arg="shape",
            )
        return Inferred(TensorType(tuple(out), x.dtype))

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        sizes = ", ".join(map(str, self.shape))
        return TorchCall(None, forward=f"{{x}}.reshape({{x}}.shape[0], {sizes})")

    def label(self) -> str:
        return f"Reshape({', '.join(map(str, self.shape))})"


@register
class Identity(View):
    """Passes its input through unchanged (``nn.Identity``). MACs 0."""

    kind = "Identity"
    family = "reshape"

    def infer(self, inputs: list[TensorType]) -> Inferred:
        return Inferred(inputs[0])

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        return TorchCall("nn.Identity")

    def returns_input(self) -> bool:
        return True


_INTERPOLATING = ("linear", "bilinear", "bicubic")


@register
class Upsample(Layer):
    """Resizes the spatial axes of ``[C, L]`` or ``[C, H, W]`` to ``size`` or by
    ``scale_factor`` (exactly one of them, always by name): each axis becomes
    ``floor(size * scale_factor)``, as torch computes it. ``linear`` needs ``[C, L]``,
    ``bilinear``/``bicubic`` need ``[C, H, W]``; ``align_corners`` only applies to those.
    MACs 0 (interpolation is not counted, as in torchinfo)."""

    kind = "Upsample"
    family = "pooling"

    size: Pos | tuple[Pos, ...] | None = None
    scale_factor: PosFloat | tuple[PosFloat, ...] | None = None
    mode: Literal["nearest", "nearest-exact", "linear", "bilinear", "bicubic"] = "nearest"
    align_corners: bool | None = None

    def _check(self, x: TensorType) -> int:
        """The number of spatial axes, after checking the arguments against the input."""
        if (self.size is None) == (self.scale_factor is None):
            raise LayerError(
                "E204",
                "Upsample needs exactly one of size and scale_factor",
                arg="size" if self.size is not None else None,
            )
        if self.mode == "linear":
            expect_rank(x, (2,), "[C, L] (mode='linear')", self.kind)
        elif self.mode in ("bilinear", "bicubic"):
            expect_rank(x, (3,), f"[C, H, W] (mode={self.mode!r})", self.kind)
        else:
            expect_rank(x, (2, 3), "[C, L] or [C, H, W]", self.kind)
        expect_float(x, self.kind)
        if self.align_corners is not None and self.mode not in _INTERPOLATING:
            raise LayerError(
                "E204",
                f"align_corners only applies to the modes {', '.join(_INTERPOLATING)}, "
                f"not {self.mode!r}",
                arg="align_corners",
            )
        spatial = len(x.shape) - 1
        for name in ("size", "scale_factor"):
            value = getattr(self, name)
            if isinstance(value, tuple) and len(value) != spatial:
                raise LayerError(
                    "E204",
                    f"{name} has {len(value)} values, but input {x} has {spatial} spatial axes",
                    arg=name,
                )
        return spatial

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x = inputs[0]
        spatial = self._check(x)
        if self.size is not None:
            out: tuple[Dim, ...] = (
                (self.size,) * spatial if isinstance(self.size, int) else self.size
            )
            return Inferred(TensorType((x.shape[0], *out)))
        assert self.scale_factor is not None
        scales = (
            (self.scale_factor,) * spatial
            if isinstance(self.scale_factor, float)
            else self.scale_factor
        )
        sizes: list[Dim] = []
        for size, scale in zip(x.shape[1:], scales, strict=True):
            if isinstance(size, Poly):
                if not scale.is_integer():
                    raise LayerError(
                        "E405",
                        f"scale_factor={scale} over the symbolic length {size} has no exact size",
                        arg="scale_factor",
                    )
                sizes.append(size * int(scale))
                continue
            if size * scale > MAX_LITERAL:
                raise LayerError(
                    "E409",
                    f"Upsample would grow {size} beyond {MAX_LITERAL:,} (2^63 - 1), "
                    "the largest size torch holds",
                    notes=[f"{size} * {scale:g} = {size * scale:g}"],
                    arg="scale_factor",
                )
            new = math.floor(size * scale)
            if new < 1:
                raise LayerError(
                    "E402",
                    f"Upsample would shrink {size} to {new}",
                    notes=[f"floor({size} * {scale}) = {new}"],
                    arg="scale_factor",
                )
            sizes.append(new)
        return Inferred(TensorType((x.shape[0], *sizes)))

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        return []  # the gradient of a resize needs only the sizes

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        return like(inputs[0], output.sizes)

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        return TorchCall("nn.Upsample", kwargs=self.keywords())

    def label(self) -> str:
        if self.size is not None:
            what = "size=" + (
                str(self.size) if isinstance(self.size, int) else "x".join(map(str, self.size))
            )
        else:
            assert self.scale_factor is not None
            scales = (
                (self.scale_factor,) if isinstance(self.scale_factor, float) else self.scale_factor
            )
            what = "x" + "x".join(f"{s:g}" for s in scales)
        return f"Upsample({what}, {self.mode})"


class _PixelShuffling(Layer):
    """Shared rule of PixelShuffle and PixelUnshuffle over the last three per-sample
    dimensions ``[*, C, H, W]``: ``r x r`` blocks of pixels move between the channels and
    the map. No parameters, MACs 0, nothing kept for the backward pass."""

    family = "reshape"
    up: ClassVar[bool]  # channels into pixels (PixelShuffle), or back

    def _factor(self) -> int:
        raise NotImplementedError

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x = inputs[0]
        expect_rank(x, range(3, 9), "[*, C, H, W]", self.kind)
        r = self._factor()
        *lead, c, h, w = x.shape
        if self.up:
            out = (*lead, _divided(c, r * r, "channels", x, self.kind), h * r, w * r)
        else:
            h2, w2 = (
                _divided(d, r, what, x, self.kind) for d, what in ((h, "height"), (w, "width"))
            )
            out = (*lead, c * r * r, h2, w2)
        return Inferred(TensorType(out, x.dtype))

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        """Torch's CPU kernel refuses a 5-D input whose strides suggest channels-last 3-D
        (``Unsupported memory format``; a Permute makes one, fuzz seed 8,000,530): a 5-D
        input is handed over as a contiguous copy, the format torch uses for every other.
        ``contiguous()`` would not do: a tensor with sizes of one can be both contiguous and
        channels-last 3-D, and is then returned as it is (ConvTranspose3d's output of one
        channel at batch 2, strides (11, 1, 11, 1, 1): fuzz seed 10,001,538)."""
        forward = (
            "{module}({x}.clone(memory_format=torch.contiguous_format))"
            if len(inputs[0].shape) == 4
            else "{module}({x})"
        )
        return TorchCall(f"nn.{self.kind}", (self._factor(),), forward=forward)

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        return []  # the gradient moves the elements back

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        """In the input's suggested memory format; a 5-D input is handed over contiguous
        (:meth:`torch`)."""
        return output if len(inputs[0].sizes) == 5 else like(inputs[0], output.sizes)

    def label(self) -> str:
        return f"{self.kind}({self._factor()})"


def _divided(size: Dim, by: int, what: str, x: TensorType, kind: str) -> Dim:
    """``size / by``, which must be whole (E401 with the remainder; E405 where a symbolic
    size has no exact quotient)."""
    try:
        quotient, left = size // by, size % by
    except SymbolicError as exc:
        raise LayerError("E405", f"{kind} of {x}: {what} {size} / {by}: {exc}") from exc
    if left:
        raise LayerError(
            "E401",
            f"{kind} needs {what} divisible by {by}, but {x} has {fmt_dim(size)}",
            notes=[f"{fmt_dim(size)} % {by} = {left}"],
        )
    return quotient


@register
class PixelShuffle(_PixelShuffling):
    """Moves channels into pixels (sub-pixel convolution, ESPCN; super-resolution heads):
    ``[*, C*r^2, H, W]`` -> ``[*, C, H*r, W*r]`` with ``r = upscale_factor``. No parameters,
    MACs 0."""

    kind = "PixelShuffle"
    positional = ("upscale_factor",)
    up = True

    upscale_factor: Pos

    def _factor(self) -> int:
        return self.upscale_factor


@register
class PixelUnshuffle(_PixelShuffling):
    """Moves ``r x r`` blocks of pixels into channels (space-to-depth):
    ``[*, C, H*r, W*r]`` -> ``[*, C*r^2, H, W]`` with ``r = downscale_factor``. No
    parameters, MACs 0."""

    kind = "PixelUnshuffle"
    positional = ("downscale_factor",)
    up = False

    downscale_factor: Pos

    def _factor(self) -> int:
        return self.downscale_factor


class _Dropping(Layer):
    """A kind that zeroes values with probability ``p`` while training; at ``p`` = 0 it
    returns its input itself (the same tensor object)."""

    p: Probability

    def aliases_input(self) -> bool:
        return self.p == 0

    def returns_input(self) -> bool:
        return self.p == 0


@register
class Dropout(_Dropping):
    """Zeroes each element with probability ``p`` while training (scaling the rest by
    ``1/(1-p)``); the identity in evaluation. Shape unchanged; MACs 0."""

    kind = "Dropout"
    family = "regularization"
    positional = ("p",)

    p: Probability = 0.5

    def infer(self, inputs: list[TensorType]) -> Inferred:
        expect_float(inputs[0], self.kind)
        return Inferred(inputs[0])

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        return TorchCall(f"nn.{self.kind}", (self.p,))  # p always written: it reads clearer

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        """The scaled keep-mask, in the activations' dtype; at ``p`` = 1 the zero torch
        multiplies by, at 0 nothing (the output is the input)."""
        if self.p == 1:
            return [Saved("zero", 1, batched=False)]
        return [Saved("mask", self._mask(inputs[0]))] if self.p else []

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        """The input's at ``p`` = 0; else the product of the input and the mask's."""
        x = inputs[0]
        if self.p == 0:
            return x
        return elementwise([x] if self.p == 1 else [x, self._noise(x)], x.sizes)

    def _mask(self, x: TensorType) -> Dim:
        return product(x.shape)

    def _noise(self, x: Layout) -> Layout:
        return empty_like(x)

    def label(self) -> str:
        return f"{self.kind}({self.p:g})"


@register
class Dropout2d(Dropout):
    """Zeroes whole channels of ``[C, H, W]`` with probability ``p`` while training. Shape
    unchanged; MACs 0."""

    kind = "Dropout2d"

    def infer(self, inputs: list[TensorType]) -> Inferred:
        expect_rank(inputs[0], (3,), "[C, H, W]", self.kind)
        return super().infer(inputs)

    def _mask(self, x: TensorType) -> Dim:
        return x.shape[0]  # one per channel

    def _noise(self, x: Layout) -> Layout:
        return contiguous((*x.sizes[:2], 1, 1))


_STOCHASTIC_DEPTH = '''class StochasticDepth(nn.Module):
    """Drops the whole input (per sample, or for the whole batch) with probability p while
    training, scaling what is kept by 1/(1-p): torchvision.ops.StochasticDepth."""

    def __init__(self, p: float, mode: str = "row") -> None:
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        shape = [x.shape[0]] + [1] * (x.ndim - 1) if self.mode == "row" else [1] * x.ndim
        keep = x.new_empty(shape).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p) if self.p < 1.0 else x * keep
'''


@register
class StochasticDepth(_Dropping):
    """Stochastic depth (torchvision's ``StochasticDepth``): while training, zeroes a
    residual branch with probability ``p``, per sample (``mode='row'``) or for the whole batch
    (``'batch'``), scaling the rest by ``1/(1-p)``; the identity in evaluation. Shape
    unchanged; no parameters; MACs 0."""

    kind = "StochasticDepth"
    family = "regularization"
    positional = ("p", "mode")

    p: Probability
    mode: Literal["row", "batch"] = "row"

    def infer(self, inputs: list[TensorType]) -> Inferred:
        expect_float(inputs[0], self.kind)
        return Inferred(inputs[0])

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        return TorchCall(self.kind, (self.p, self.mode), helper=_STOCHASTIC_DEPTH)

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        """The keep-mask: one value per sample (``"row"``) or one for the batch."""
        if not self.p:
            return []
        return [Saved("mask", 1, batched=self.mode == "row")]

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        x = inputs[0]
        if self.p == 0:
            return x
        keep = (x.sizes[0] if self.mode == "row" else 1, *(1,) * (len(x.sizes) - 1))
        return elementwise([x, contiguous(keep)], x.sizes)

    def label(self) -> str:
        return f"StochasticDepth({self.p:g}, {self.mode})"
