"""Fully connected layers."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from dlspec.layers.base import (
    Inferred,
    Layer,
    LayerError,
    Saved,
    Shape,
    TensorType,
    TorchCall,
    check_given,
    expect_float,
    register,
    saved_input,
)
from dlspec.layers.symbolic import product


@register
class Linear(Layer):
    """``y = x W^T + b`` over the last dimension; leading dimensions (e.g. sequence steps) are
    kept. Layout ``weight (out, in)``, ``bias (out,)``; MACs = leading elements x out x
    (in + bias). ``tie="tok_emb"`` shares the weight of the earlier layer ``tok_emb`` (e.g. an
    Embedding(out, in): a language model's output projection); it is counted once."""

    kind = "Linear"
    family = "dense"
    positional = ("out_features",)
    references = ("tie",)
    torchinfo_macs = "T x for a sequence [T, D], once per step (torchinfo: once per sample)"

    out_features: Annotated[int, Field(ge=1)]
    bias: bool = True
    in_features: Annotated[int, Field(ge=1)] | None = None
    tie: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x = inputs[0]
        if not x.shape:
            raise LayerError("E404", f"Linear expects at least one dimension, got a scalar {x}")
        expect_float(x, self.kind)
        source = "the last dimension of its input" if len(x.shape) > 1 else "features"
        n_in = check_given(self.in_features, x.shape[-1], "in_features", self.kind, source)
        weights: dict[str, Shape] = {"weight": (self.out_features, n_in)}
        if self.bias:
            weights["bias"] = (self.out_features,)
        lead = product(x.shape[:-1])
        macs = lead * self.out_features * (n_in + (1 if self.bias else 0))
        tied = {"weight": f"{self.tie}.weight"} if self.tie else {}
        output = TensorType((*x.shape[:-1], self.out_features))
        return Inferred(output, weights, macs=macs, tied=tied)

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        kwargs = {} if self.bias else {"bias": False}
        return TorchCall("nn.Linear", (inputs[0].shape[-1], self.out_features), kwargs)

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        """The input as the matrix product reads it: rows of its last dimension (a copy
        where torch cannot view it so, e.g. a slice or a transpose of a sequence)."""
        return [saved_input(inputs, reads="rows")]

    def label(self) -> str:
        tie = f", tie={self.tie}" if self.tie else ""
        return f"Linear({self.out_features}{tie})"
