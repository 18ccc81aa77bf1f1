"""Element-wise nonlinearities and (log-)softmax: no parameters, no MACs."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from dlspec.layers.base import (
    Inferred,
    Layer,
    LayerError,
    Saved,
    TensorType,
    TorchCall,
    register,
    saved_input,
    saved_output,
)


class _Elementwise(Layer):
    """Shape-preserving layer without parameters; ``torch_name`` is its ``nn`` class."""

    family = "activation"
    torch_name: ClassVar[str]
    # what the backward pass reads: the output (ReLU, Sigmoid, Tanh, softmax) or the input
    keeps: ClassVar[Literal["input", "output"]] = "input"

    def _kwargs(self) -> dict[str, object]:
        return self.model_dump(exclude_defaults=True)

    def infer(self, inputs: list[TensorType]) -> Inferred:
        return Inferred(inputs[0])

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        return TorchCall(f"nn.{self.torch_name}", kwargs=self._kwargs())

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        return [saved_output(output) if self.keeps == "output" else saved_input(inputs)]

    def label(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self._kwargs().items())
        return f"{self.kind}({args})" if args else self.kind


def _simple(name: str, doc: str, keeps: Literal["input", "output"]) -> type[Layer]:
    cls = type(
        name,
        (_Elementwise,),
        {"__doc__": doc, "kind": name, "torch_name": name, "keeps": keeps, "__module__": __name__},
    )
    return register(cls)


ReLU = _simple("ReLU", "max(0, x).", "output")
Sigmoid = _simple("Sigmoid", "1 / (1 + exp(-x)).", "output")
Tanh = _simple("Tanh", "Hyperbolic tangent.", "output")
SiLU = _simple("SiLU", "x * sigmoid(x) (swish).", "input")


@register
class LeakyReLU(_Elementwise):
    """max(0, x) + negative_slope * min(0, x)."""

    kind = "LeakyReLU"
    torch_name = "LeakyReLU"
    positional = ("negative_slope",)
    negative_slope: float = 0.01


@register
class GELU(_Elementwise):
    """Gaussian error linear unit (``approximate='tanh'`` for the tanh form)."""

    kind = "GELU"
    torch_name = "GELU"
    positional = ("approximate",)
    approximate: Literal["none", "tanh"] = "none"


class _SoftmaxLike(_Elementwise):
    """Normalises over ``dim`` (default: the last dimension, which torch's implicit choice
    would not always pick). ``dim`` counts per-sample dimensions; 0 is the first after batch."""

    probabilities = True
    keeps = "output"
    positional = ("dim",)
    dim: Annotated[int, Field(ge=-8, le=8)] = -1

    def _torch_dim(self) -> int:
        return self.dim if self.dim < 0 else self.dim + 1

    def infer(self, inputs: list[TensorType]) -> Inferred:
        rank = len(inputs[0].shape)
        if not -rank <= self.dim < rank:
            raise LayerError(
                "E204",
                f"dim={self.dim} is out of range for input {inputs[0]} (rank {rank})",
                arg="dim",
            )
        return Inferred(inputs[0])

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        return TorchCall(f"nn.{self.torch_name}", kwargs={"dim": self._torch_dim()})


@register
class Softmax(_SoftmaxLike):
    """exp(x) / sum(exp(x)) over ``dim``."""

    kind = "Softmax"
    torch_name = "Softmax"


@register
class LogSoftmax(_SoftmaxLike):
    """log(softmax(x)) over ``dim``."""

    kind = "LogSoftmax"
    torch_name = "LogSoftmax"
