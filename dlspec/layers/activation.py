"""Element-wise nonlinearities and (log-)softmax: no MACs, and no parameters except PReLU's
learned slopes (counted once per sample, as torchinfo does)."""

from typing import Annotated, Any, ClassVar, Literal

from dlspec.layers.base import (
    Inferred,
    Layer,
    LayerError,
    Saved,
    TensorType,
    TorchCall,
    axis,
    expect_float,
    register,
    sample_dim,
    saved_input,
    saved_output,
    torch_dim,
)
from dlspec.layers.layout import Layout, elementwise
from dlspec.validation import Field


class _Elementwise(Layer):
    """Shape-preserving layer without parameters; ``torch_name`` is its ``nn`` class."""

    family = "activation"
    torch_name: ClassVar[str]
    # what the backward pass reads: the output (ReLU, Sigmoid, Tanh, softmax) or the input
    keeps: ClassVar[Literal["input", "output"]] = "input"

    def _kwargs(self) -> dict[str, object]:
        return self.keywords()

    def infer(self, inputs: list[TensorType]) -> Inferred:
        return Inferred(inputs[0])

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        return TorchCall(f"nn.{self.torch_name}", kwargs=self._kwargs())

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        return [saved_output(output) if self.keeps == "output" else saved_input(inputs)]

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        """An element-wise kernel's: the input's order."""
        return elementwise(inputs, output.sizes)

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
ReLU6 = _simple("ReLU6", "min(max(0, x), 6) (MobileNet).", "input")
Hardswish = _simple("Hardswish", "x * ReLU6(x + 3) / 6 (MobileNetV3).", "input")
Hardsigmoid = _simple("Hardsigmoid", "ReLU6(x + 3) / 6 (MobileNetV3's gates).", "input")
Mish = _simple("Mish", "x * tanh(softplus(x)).", "input")


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


@register
class Hardtanh(_Elementwise):
    """x clamped to ``[min_val, max_val]``."""

    kind = "Hardtanh"
    torch_name = "Hardtanh"
    positional = ("min_val", "max_val")
    min_val: float = -1.0
    max_val: float = 1.0

    def infer(self, inputs: list[TensorType]) -> Inferred:
        if self.min_val >= self.max_val:
            raise LayerError(
                "E204",
                f"min_val={self.min_val:g} must be below max_val={self.max_val:g}",
                arg="min_val",
            )
        return Inferred(inputs[0])


@register
class ELU(_Elementwise):
    """x for x > 0, else ``alpha * (exp(x) - 1)``."""

    kind = "ELU"
    torch_name = "ELU"
    positional = ("alpha",)
    alpha: float = 1.0


@register
class Softplus(_Elementwise):
    """``log(1 + exp(beta * x)) / beta``; linear above ``threshold`` for stability."""

    kind = "Softplus"
    torch_name = "Softplus"
    positional = ("beta", "threshold")
    beta: Annotated[float, Field(gt=0)] = 1.0
    threshold: float = 20.0


@register
class PReLU(_Elementwise):
    """max(0, x) + a * min(0, x) with a learned slope ``a``: one shared by every channel
    (``num_parameters=1``, the default) or one per channel (``num_parameters`` = the input's
    first dimension, its channels). Layout ``weight (num_parameters,)``, initialised to
    ``init``. MACs: ``num_parameters`` per sample (torchinfo's count)."""

    kind = "PReLU"
    torch_name = "PReLU"
    positional = ("num_parameters",)
    num_parameters: Annotated[int, Field(ge=1)] = 1
    init: float = 0.25

    def infer(self, inputs: list[TensorType]) -> Inferred:
        x = inputs[0]
        expect_float(x, self.kind)
        n = self.num_parameters
        if n > 1 and (not x.shape or x.shape[0] != n):
            channels = f"{x.shape[0]} channels" if x.shape else "no channels"
            raise LayerError(
                "E401",
                f"PReLU was given num_parameters={n}, but its input {x} has {channels}; "
                "use 1 (one shared slope) or the channel count",
                arg="num_parameters",
            )
        return Inferred(x, weights={"weight": (n,)}, macs=n)


class _SoftmaxLike(_Elementwise):
    """Normalises over ``dim`` (default: the last dimension, which torch's implicit choice
    would not always pick). ``dim`` counts per-sample dimensions; 0 is the first after batch."""

    probabilities = True
    keeps = "output"
    positional = ("dim",)
    dim: int = -1

    @classmethod
    def torch_arguments(cls, module: Any) -> dict[str, Any]:
        """The torch module's ``dim``, per sample (for importing a torch model)."""
        return {} if module.dim is None else {"dim": sample_dim(module.dim)}

    def infer(self, inputs: list[TensorType]) -> Inferred:
        axis(self.dim, inputs[0])
        return Inferred(inputs[0])

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        return TorchCall(f"nn.{self.torch_name}", kwargs={"dim": torch_dim(self.dim)})

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        return output  # torch's softmax kernels return a contiguous tensor


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
