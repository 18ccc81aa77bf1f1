"""Layers that join several tensors into one: Add, Sub, Mul, Div, Where and Concat.

They take their inputs from ``<-`` (``both = Add <- a, b``), have no parameters and no torch
module (the generated ``forward`` writes the operation inline), and count 0 MACs: additions,
element-wise products and copies are not multiply-accumulates with a weight (torchinfo counts
none of them either).
"""

from typing import ClassVar

from dlspec.layers.base import (
    Given,
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


class _Arithmetic(_Merge):
    """Add, Sub, Mul and Div: element-wise over inputs whose shapes broadcast statically
    (:func:`_broadcast`), and by a number where one is given (``Mul(0.5) <- logvar`` is
    ``logvar * 0.5``; ``Sub(1) <- x`` is ``x - 1``), the number last. With a number one input
    is enough. No parameters, MACs 0 (no weights; torchinfo counts none)."""

    positional = ("value",)
    arity = (1, MAX_INPUTS)
    symbol: ClassVar[str]  # the Python operator, spaced: " * "
    most: ClassVar[int] = MAX_INPUTS  # tensors it takes at most
    float_only: ClassVar[bool] = False  # division makes floats of integers: floats only

    value: float | None = None

    def infer(self, inputs: list[TensorType]) -> Inferred:
        least = 1 if self.value is not None else 2
        if not least <= len(inputs) <= self.most:
            many = f"{least} to {self.most}" if least < self.most else str(least)
            raise LayerError(
                "E407",
                f"{self.label()} takes {many} input tensors, got {len(inputs)}",
                [f"with a number, one is enough: {self.kind}(0.5) <- x"],
            )
        _same_dtype(inputs, self.kind)
        dtype = inputs[0].dtype
        if dtype != "float" and (self.value is not None or self.float_only):
            raise LayerError("E404", f"{self.label()} takes float tensors, got {dtype} {inputs[0]}")
        return Inferred(TensorType(_broadcast(inputs, self.kind, self.symbol), dtype))

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        terms = [f"{{x{i}}}" for i in range(len(inputs))]
        if self.value is not None:
            terms.append(f"{self.value}")  # an expression of a block's parameters, if one
        return TorchCall(None, forward=self.symbol.join(terms))

    def label(self) -> str:
        return self.kind if self.value is None else f"{self.kind}({self.value:g})"


@register
class Add(_Arithmetic):
    """Element-wise sum of 2 or more tensors, or of a tensor and a number (``Add(1)``).
    Shapes broadcast statically, as ``Mul``'s do: one rank and, per dimension, equal sizes
    or 1 (a time embedding reshaped to ``[C, 1, 1]`` added to a map ``[C, H, W]``). No
    parameters, MACs 0."""

    kind = "Add"
    symbol = " + "


@register
class Sub(_Arithmetic):
    """``a - b`` element-wise, broadcasting as ``Add`` does, or a tensor less a number
    (``Sub(1) <- x``). No parameters, MACs 0; nothing kept for backward."""

    kind = "Sub"
    symbol = " - "
    most = 2


def _broadcast(inputs: list[TensorType], kind: str, symbol: str) -> tuple[Dim, ...]:
    """The shape tensors of one rank broadcast to: per dimension, the sizes must be equal or 1
    (a 1 stretches). Ranks must match, since every tensor also has the batch dimension in
    front: torch would align a shorter shape with the batch. ``symbol`` joins the shapes in
    messages (`` + ``, or ``, `` for a call)."""
    listed = symbol.join(str(x) for x in inputs)
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
class Mul(_Arithmetic):
    """Element-wise product of 2 or more tensors (gates, squeeze-and-excitation, SwiGLU), or
    of a tensor and a number (``Mul(0.5) <- logvar``). Shapes broadcast statically: they
    have one rank and, per dimension, equal sizes or 1 (``[C, H, W] * [C, 1, 1]`` ->
    ``[C, H, W]``). No parameters, MACs 0 (no weights; torchinfo counts none)."""

    kind = "Mul"
    symbol = " * "

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        return self.saves_given(inputs, output, Given.plain(len(inputs)))

    def saves_given(
        self, inputs: list[TensorType], output: TensorType, given: Given
    ) -> list[Saved]:
        """``x0 * x1 * ...`` multiplies left to right; each product keeps its right factor
        where its left one requires a gradient, and its left factor (the first input, then
        the running product of the first k) where its right one does: a factor of data
        (a model input, or what is computed from inputs alone) makes the other not kept. A
        number needs nothing kept."""
        saved = []
        left_grad = given.needs_grad(0)
        for k in range(1, len(inputs)):
            if given.needs_grad(k):
                left = Saved(f"product{k}", product(output.shape))
                saved.append(saved_input(inputs, 0) if k == 1 else left)
            if left_grad:
                saved.append(saved_input(inputs, k))
            left_grad = left_grad or given.needs_grad(k)
        return saved


@register
class Div(_Arithmetic):
    """``a / b`` element-wise, broadcasting as ``Mul`` does, or a tensor over a number
    (``Div(2) <- x``); floats only (torch divides integers into floats). No parameters,
    MACs 0. Keeps ``b`` where ``a`` requires a gradient, and ``a`` and ``b`` where ``b``
    does (its gradient is ``-a / b**2``)."""

    kind = "Div"
    symbol = " / "
    most = 2
    float_only = True

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        return self.saves_given(inputs, output, Given.plain(len(inputs)))

    def saves_given(
        self, inputs: list[TensorType], output: TensorType, given: Given
    ) -> list[Saved]:
        if len(inputs) == 1:  # over a number
            return []
        divisor = [saved_input(inputs, 1)] if given.needs_grad(0) or given.needs_grad(1) else []
        return [*divisor, *([saved_input(inputs, 0)] if given.needs_grad(1) else [])]


@register
class Where(_Merge):
    """``torch.where(condition != 0, a, b)`` <- condition, a, b: ``a`` where the condition
    is not 0, else ``b`` (a mask of 0s and 1s, float or integer). The three shapes
    broadcast as ``Add``'s; ``a`` and ``b`` have one element type, the output's. No
    parameters, MACs 0. Keeps the condition's boolean mask (1 byte an element) where ``a``
    or ``b`` requires a gradient; the condition itself gets none."""

    kind = "Where"
    arity = (3, 3)

    def infer(self, inputs: list[TensorType]) -> Inferred:
        _same_dtype(inputs[1:], self.kind)
        return Inferred(TensorType(_broadcast(inputs, self.kind, ", "), inputs[1].dtype))

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        return TorchCall(None, forward="torch.where({x0} != 0, {x1}, {x2})")

    def output_grad(self, grads: tuple[bool, ...]) -> bool:
        return any(grads[1:])

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        return [Saved("condition", product(inputs[0].shape), "bool")]

    def saves_given(
        self, inputs: list[TensorType], output: TensorType, given: Given
    ) -> list[Saved]:
        differentiated = given.needs_grad(1) or given.needs_grad(2)
        return self.saves(inputs, output) if differentiated else []


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
