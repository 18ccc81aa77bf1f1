"""Layers that join several tensors into one: Add and Concat.

They take their inputs from ``<-`` (``both = Add <- a, b``), have no parameters and no torch
module (the generated ``forward`` writes the operation inline), and count 0 MACs: additions
and copies are not multiply-accumulates (as for a residual connection).
"""

from __future__ import annotations

from dlspec.layers.base import (
    Inferred,
    Layer,
    LayerError,
    Saved,
    TensorType,
    TorchCall,
    register,
)
from dlspec.layers.symbolic import Dim

MAX_INPUTS = 16


def _same_dtype(inputs: list[TensorType], kind: str) -> None:
    dtypes = {x.dtype for x in inputs}
    if len(dtypes) > 1:
        listed = ", ".join(f"{x.dtype} {x}" for x in inputs)
        raise LayerError("E404", f"{kind} joins tensors of one element type, got {listed}")


class _Merge(Layer):
    """Shared traits of the merge kinds: 2 to ``MAX_INPUTS`` inputs, no module."""

    family = "merge"
    arity = (2, MAX_INPUTS)

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        return []  # sums and copies need no tensor for their gradient


@register
class Add(_Merge):
    """Element-wise sum of 2 or more tensors of the same shape (no broadcasting); the output
    has that shape. No parameters, MACs 0."""

    kind = "Add"

    def infer(self, inputs: list[TensorType]) -> Inferred:
        _same_dtype(inputs, self.kind)
        if len({x.shape for x in inputs}) > 1:
            raise LayerError(
                "E401",
                "Add needs inputs of one shape, got " + " + ".join(str(x) for x in inputs),
            )
        return Inferred(inputs[0])

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        return TorchCall(None, forward=" + ".join(f"{{x{i}}}" for i in range(len(inputs))))


@register
class Concat(_Merge):
    """Joins 2 or more tensors along per-sample dimension ``dim`` (default: the last; 0 is the
    first after the batch). Their shapes must agree everywhere else; the output's size along
    ``dim`` is the sum of theirs (symbolic sizes add up: ``T + S``). No parameters, MACs 0."""

    kind = "Concat"
    positional = ("dim",)

    dim: int = -1

    def _axis(self, rank: int) -> int:
        if not -rank <= self.dim < rank:
            raise LayerError(
                "E204",
                f"dim={self.dim} is out of range for inputs of rank {rank}",
                arg="dim",
            )
        return self.dim % rank

    def infer(self, inputs: list[TensorType]) -> Inferred:
        _same_dtype(inputs, self.kind)
        first = inputs[0]
        axis = self._axis(len(first.shape))
        rest = first.shape[:axis] + first.shape[axis + 1 :]
        for x in inputs[1:]:
            if len(x.shape) != len(first.shape) or x.shape[:axis] + x.shape[axis + 1 :] != rest:
                raise LayerError(
                    "E401",
                    f"Concat along dim={self.dim} needs inputs that agree in every other "
                    "dimension, got " + ", ".join(str(x) for x in inputs),
                )
        size: Dim = 0
        for x in inputs:
            size = size + x.shape[axis]
        shape = (*first.shape[:axis], size, *first.shape[axis + 1 :])
        return Inferred(TensorType(shape, first.dtype))

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        axis = self._axis(len(inputs[0].shape)) + 1  # torch counts the batch
        return TorchCall(None, forward=f"torch.cat([{{inputs}}], dim={axis})")

    def label(self) -> str:
        return f"Concat(dim={self.dim})"
