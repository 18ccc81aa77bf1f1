"""Element-wise math on one tensor: Exp, Log, Sqrt, Pow, Neg, Abs and Clamp.

Like the activations they keep the shape and have no parameters; unlike them they have no
``nn`` module: the generated ``forward`` writes the function inline (``torch.exp(x)``), as it
writes Add and Mul. MACs 0 (no weights; torchinfo counts none). Each keeps for backward what
its derivative reads: Exp and Sqrt their output, Log, Pow, Abs and Clamp their input, Neg
nothing. The two-tensor forms (Sub, Div, Where) are merges (:mod:`dlspec.layers.merge`).
"""

from typing import ClassVar, Literal

from dlspec.layers.base import (
    Inferred,
    Layer,
    LayerError,
    Saved,
    TensorType,
    TorchCall,
    expect_float,
    register,
    saved_input,
    saved_output,
)
from dlspec.layers.layout import Layout, elementwise


class _Unary(Layer):
    """An element-wise function of a float tensor: ``call`` is its forward template over
    ``{x}`` and ``keeps`` what its derivative reads."""

    family = "activation"
    call: ClassVar[str]
    keeps: ClassVar[Literal["input", "output", "nothing"]]

    def infer(self, inputs: list[TensorType]) -> Inferred:
        expect_float(inputs[0], self.kind)
        return Inferred(inputs[0])

    def forward(self) -> str:
        """The expression of the output, over ``{x}``."""
        return self.call

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        return TorchCall(None, forward=self.forward())

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        if self.keeps == "nothing":
            return []
        return [saved_output(output) if self.keeps == "output" else saved_input(inputs)]

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        return elementwise(inputs, output.sizes)


def _function(
    name: str, doc: str, call: str, keeps: Literal["input", "output", "nothing"]
) -> type[Layer]:
    cls = type(
        name,
        (_Unary,),
        {"__doc__": doc, "kind": name, "call": call, "keeps": keeps, "__module__": __name__},
    )
    return register(cls)


Exp = _function("Exp", "e ** x (keeps its output).", "torch.exp({x})", "output")
Log = _function("Log", "Natural logarithm (keeps its input).", "torch.log({x})", "input")
Sqrt = _function("Sqrt", "Square root (keeps its output).", "torch.sqrt({x})", "output")
Neg = _function("Neg", "-x (keeps nothing).", "-{x}", "nothing")
Abs = _function("Abs", "|x| (keeps its input, for its sign).", "torch.abs({x})", "input")


@register
class Pow(_Unary):
    """``x ** exponent``, a number (``Pow(2)``; ``Pow(0.5)`` is a square root that keeps
    its input). Keeps its input."""

    kind = "Pow"
    keeps = "input"
    positional = ("exponent",)
    exponent: float

    def forward(self) -> str:
        return f"torch.pow({{x}}, {self.exponent})"

    def label(self) -> str:
        return f"Pow({self.exponent:g})"


@register
class Clamp(_Unary):
    """x limited to ``[min, max]``; either bound may be left out (``Clamp(min=0)``), not
    both. Keeps its input (the gradient passes where it is inside the bounds)."""

    kind = "Clamp"
    keeps = "input"
    positional = ("min", "max")
    min: float | None = None
    max: float | None = None

    def infer(self, inputs: list[TensorType]) -> Inferred:
        if self.min is None and self.max is None:
            raise LayerError("E204", "Clamp needs min, max or both: Clamp(min=0)", arg="min")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise LayerError(
                "E204", f"min={self.min:g} must not be above max={self.max:g}", arg="min"
            )
        return super().infer(inputs)

    def _bounds(self) -> list[str]:
        return [
            f"{name}={value}"
            for name, value in (("min", self.min), ("max", self.max))
            if value is not None
        ]

    def forward(self) -> str:
        return f"torch.clamp({{x}}, {', '.join(self._bounds())})"

    def label(self) -> str:
        bounds = [(n, v) for n, v in (("min", self.min), ("max", self.max)) if v is not None]
        return f"Clamp({', '.join(f'{n}={v:g}' for n, v in bounds)})"
