"""Layers that move elements around without parameters: Flatten, Reshape, Identity, Upsample,
and the regularizers Dropout and Dropout2d. None of them has MACs."""

from __future__ import annotations

import math
from typing import Annotated, Literal

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
    register,
)
from dlspec.layers.symbolic import Dim, Poly, SymbolicError, fmt_dim, product

Pos = Annotated[int, Field(ge=1)]
PosFloat = Annotated[float, Field(gt=0)]
Probability = Annotated[float, Field(ge=0, le=1)]


def _dims(shape: tuple[Dim, ...]) -> str:
    return " x ".join(fmt_dim(d) for d in shape)


@register
class Flatten(Layer):
    """Merges dimensions ``start_dim..end_dim`` (inclusive) into one. Dimensions count as in
    torch, where 0 is the batch: the default ``Flatten()`` (1, -1) turns ``[C, H, W]`` into
    ``[C*H*W]``, and ``Flatten(2)`` turns ``[C, H, W]`` into ``[C, H*W]``. Flattening the
    batch (``start_dim=0``) is refused: dlspec shapes are per sample. MACs 0."""

    kind = "Flatten"
    family = "reshape"
    positional = ("start_dim", "end_dim")

    start_dim: int = 1
    end_dim: int = -1

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x = inputs[0]
        if not x.shape:
            raise LayerError("E404", f"Flatten needs at least one dimension per sample, got {x}")
        full = len(x.shape) + 1  # torch's rank, batch included
        dims = []
        for name in ("start_dim", "end_dim"):
            value = getattr(self, name)
            dim = value + full if value < 0 else value
            if not 0 <= dim < full:
                raise LayerError(
                    "E204",
                    f"{name}={value} is out of range for input {x}: with the batch, dimensions "
                    f"run from {-full} to {full - 1}",
                    arg=name,
                )
            dims.append(dim)
        start, end = dims
        if start == 0:
            raise LayerError(
                "E204",
                "start_dim=0 would flatten the batch into the samples; dimension 0 is the batch "
                "and dlspec shapes are per sample",
                arg="start_dim",
            )
        if start > end:
            raise LayerError(
                "E204",
                f"start_dim={self.start_dim} comes after end_dim={self.end_dim} "
                f"(dimensions {start} and {end} with the batch as 0)",
                arg="start_dim",
            )
        a, b = start - 1, end  # per-sample slice [a, b)
        shape = (*x.shape[:a], product(x.shape[a:b]), *x.shape[b:])
        return Inferred(TensorType(shape, x.dtype))

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        return TorchCall("nn.Flatten", kwargs=self.model_dump(exclude_defaults=True))

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        return []

    def aliases_input(self) -> bool:
        return True

    def label(self) -> str:
        args = self.model_dump(exclude_defaults=True)
        return "Flatten" if not args else f"Flatten({self.start_dim}, {self.end_dim})"


@register
class Reshape(Layer):
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

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        return []

    def aliases_input(self) -> bool:
        return True

    def label(self) -> str:
        return f"Reshape({', '.join(map(str, self.shape))})"


@register
class Identity(Layer):
    """Passes its input through unchanged (``nn.Identity``). MACs 0."""

    kind = "Identity"
    family = "reshape"

    def infer(self, inputs: list[TensorType]) -> Inferred:
        return Inferred(inputs[0])

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        return TorchCall("nn.Identity")

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        return []

    def aliases_input(self) -> bool:
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

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        return TorchCall("nn.Upsample", kwargs=self.model_dump(exclude_defaults=True))

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


@register
class Dropout(Layer):
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
        """The scaled keep-mask, in the activations' dtype (nothing when ``p`` is 0)."""
        return [Saved("mask", self._mask(inputs[0]))] if self.p else []

    def _mask(self, x: TensorType) -> Dim:
        return product(x.shape)

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
