"""Layers that join several tensors into one: Add, Mul and Concat.

They take their inputs from ``<-`` (``both = Add <- a, b``), have no parameters and no torch
module (the generated ``forward`` writes the operation inline), and count 0 MACs: additions,
element-wise products and copies are not multiply-accumulates with a weight (torchinfo counts
none of them either).
"""

from __future__ import annotations

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
from dlspec.layers.layout import Layout, elementwise, like
from dlspec.layers.symbolic import Dim, product

MAX_INPUTS = 16


def _same_dtype(inputs: list[TensorType], kind: str) -> None:
    dtypes = {x.dtype for x in inputs}
    if len(dtypes) > 1:
        listed = ", ".join(f"{x.dtype} {x}" for x in inputs)
        raise LayerError("E404", f"{kind} joins tensors of one element type, got {listed}")


class _Merge(Layer):
    """Shared traits of the merge kinds: 2 to ``MAX_INPUTS`` inputs, no module; the sum and
    the product lay their output out as element-wise kernels do."""

    family = "merge"
    arity = (2, MAX_INPUTS)

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        return []  # sums and copies need no tensor for their gradient

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        return elementwise(inputs, output.sizes)


@register
class Add(_Merge):
    """Element-wise sum of 2 or more tensors. Shapes broadcast statically, as ``Mul``'s do:
    one rank and, per dimension, equal sizes or 1 (a time embedding reshaped to
    ``[C, 1, 1]`` added to a map ``[C, H, W]``). No parameters, MACs 0."""

    kind = "Add"

    def infer(self, inputs: list[TensorType]) -> Inferred:
        _same_dtype(inputs, self.kind)
        return Inferred(TensorType(_broadcast(inputs, self.kind), inputs[0].dtype))

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        return TorchCall(None, forward=" + ".join(f"{{x{i}}}" for i in range(len(inputs))))


def _broadcast(inputs: list[TensorType], kind: str) -> tuple[Dim, ...]:
    """The shape tensors of one rank broadcast to: per dimension, the sizes must be equal or 1
    (a 1 stretches). Ranks must match, since every tensor also has the batch dimension in
    front: torch would align a shorter shape with the batch."""
    listed = " * ".join(str(x) for x in inputs)
    if len({len(x.shape) for x in inputs}) > 1:
        raise LayerError(
            "E401",
            f"{kind} needs inputs of one rank (write the 1s: [C, 1, 1]), got {listed}",
        )
    shape: list[Dim] = []
    for i, sizes in enumerate(zip(*(x.shape for x in inputs), strict=True)):
        wide = {d for d in sizes if d != 1}
        if len(wide) > 1:
            raise LayerError(
                "E401",
                f"{kind} cannot broadcast {listed}: dim {i} has sizes "
                + ", ".join(str(d) for d in sizes)
                + " (each must be the same or 1)",
            )
        shape.append(wide.pop() if wide else 1)
    return tuple(shape)


@register
class Mul(_Merge):
    """Element-wise product of 2 or more tensors (gates, squeeze-and-excitation, SwiGLU).
    Shapes broadcast statically: they have one rank and, per dimension, equal sizes or 1
    (``[C, H, W] * [C, 1, 1]`` -> ``[C, H, W]``). No parameters, MACs 0 (no weights; torchinfo
    counts none)."""

    kind = "Mul"

    def infer(self, inputs: list[TensorType]) -> Inferred:
        _same_dtype(inputs, self.kind)
        return Inferred(TensorType(_broadcast(inputs, self.kind), inputs[0].dtype))

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        return TorchCall(None, forward=" * ".join(f"{{x{i}}}" for i in range(len(inputs))))

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        """Every input (each factor's gradient is the product of the others), and the
        running products of the first k factors for k = 2 .. n - 1."""
        running = [Saved(f"product{k}", product(output.shape)) for k in range(2, len(inputs))]
        return [*(saved_input(inputs, i) for i in range(len(inputs))), *running]


@register
class Concat(_Merge):
    """Joins 2 or more tensors along per-sample dimension ``dim`` (default: the last; 0 is the
    first after the batch). Their shapes must agree everywhere else; the output's size along
    ``dim`` is the sum of theirs (symbolic sizes add up: ``T + S``). No parameters, MACs 0."""

    kind = "Concat"
    positional = ("dim",)

    dim: int = -1

    def infer(self, inputs: list[TensorType]) -> Inferred:
        _same_dtype(inputs, self.kind)
        first = inputs[0]
        at = axis(self.dim, first)
        rest = first.shape[:at] + first.shape[at + 1 :]
        for x in inputs[1:]:
            if len(x.shape) != len(first.shape) or x.shape[:at] + x.shape[at + 1 :] != rest:
                raise LayerError(
                    "E401",
                    f"Concat along dim={self.dim} needs inputs that agree in every other "
                    "dimension, got " + ", ".join(str(x) for x in inputs),
                )
        size: Dim = 0
        for x in inputs:
            size = size + x.shape[at]
        shape = (*first.shape[:at], size, *first.shape[at + 1 :])
        return Inferred(TensorType(shape, first.dtype))

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        return TorchCall(None, forward=f"torch.cat([{{inputs}}], dim={torch_dim(self.dim)})")

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        """Channels-last where every input suggests it, else contiguous (torch.cat)."""
        formats = {like(x, output.sizes) for x in inputs}
        return formats.pop() if len(formats) == 1 else output

    def label(self) -> str:
        return f"Concat(dim={self.dim})"
