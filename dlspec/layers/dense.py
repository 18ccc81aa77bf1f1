"""Matrix products: Linear (a weight), Einsum (a contraction of two tensors)."""

import math
import string
from typing import Annotated

from dlspec.layers.base import (
    Given,
    Inferred,
    Layer,
    LayerError,
    Saved,
    Shape,
    StatementName,
    TensorType,
    TorchCall,
    check_given,
    expect_float,
    register,
    saved_input,
    tie_label,
    tied_weight,
)
from dlspec.layers.layout import (
    BATCH,
    Layout,
    contiguous,
    elementwise,
    permute,
    reduced,
    reshape,
    unsqueezed,
)
from dlspec.layers.symbolic import Dim, product
from dlspec.structs import Struct
from dlspec.validation import Field


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
    tie: StatementName | None = None

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
        output = TensorType((*x.shape[:-1], self.out_features))
        return Inferred(output, weights, macs=macs, tied=tied_weight(self.tie))

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        kwargs = {} if self.bias else {"bias": False}
        return TorchCall("nn.Linear", (inputs[0].shape[-1], self.out_features), kwargs)

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        """The input as the matrix product reads it: rows of its last dimension (a copy
        where torch cannot view it so, e.g. a slice or a transpose of a sequence)."""
        return [saved_input(inputs, reads="rows")]

    def label(self) -> str:
        return f"Linear({self.out_features}{tie_label(self.tie)})"


# two operands of 1 to 8 subscripts each and the output's (none: a number per sample)
EQUATION = r"^[A-Za-z]{1,8},[A-Za-z]{1,8}->[A-Za-z]{0,16}$"


class _Plan(Struct):
    """How torch's ``einsum`` contracts two operands (``sumproduct_pair``), by positions in
    ``labels``: the batch's, the output's, then the contracted subscripts (torch's order:
    capitals first). Each operand is permuted to ``labels`` (size 1 where it lacks one),
    sums out ``alone[k]`` (subscripts only it has, not in the output), and the two are
    multiplied by one batched matrix product over ``lro`` (in both and the output), ``lo``
    (left only), ``ro`` (right only) and ``sum`` (in both, contracted), or element-wise where
    ``sum`` is empty."""

    labels: str
    outputs: int  # how many of ``labels`` the output has
    alone: tuple[tuple[int, ...], tuple[int, ...]]
    sum: tuple[int, ...]
    lro: tuple[int, ...]
    lo: tuple[int, ...]
    ro: tuple[int, ...]


@register
class Einsum(Layer):
    """A contraction of two tensors written as an equation over their per-sample subscripts
    (the batch is implicit, as everywhere): ``Einsum("td,sd->ts") <- q, k`` is ``q k^T`` of
    two sequences, ``Einsum("hts,hsd->htd") <- attn, v`` applies attention per head, and
    ``Einsum("cn,dn->cd")`` mixes. One letter per dimension, the same size wherever a
    letter stands; a letter missing from the output is summed over. ``forward`` calls
    ``torch.einsum`` with a letter for the batch added; MACs count the batched matrix product
    torch computes: the sizes of the output's and the contracted letters multiplied, 0 when
    nothing is contracted (an element-wise or outer product, as ``Mul``)."""

    kind = "Einsum"
    family = "merge"  # a product of two tensors, as Mul: no weights, not a linear layer
    positional = ("equation",)
    arity = (2, 2)
    torchinfo_macs = "the contraction's products, as FlopCounterMode counts them (torchinfo: 0)"

    equation: Annotated[str, Field(pattern=EQUATION)]

    def _subscripts(self) -> tuple[str, str, str]:
        operands, out = self.equation.split("->")
        a, b = operands.split(",")
        return a, b, out

    def _batch(self) -> str:
        """A letter for the batch that the equation does not use."""
        return next(c for c in "bnz" + string.ascii_letters if c not in self.equation)

    def _sizes(self, inputs: list[TensorType]) -> dict[str, Dim]:
        """Each letter's size, checked against the inputs."""
        a, b, out = self._subscripts()
        sizes: dict[str, Dim] = {}
        for i, (letters, x) in enumerate(zip((a, b), inputs, strict=True)):
            expect_float(x, self.kind)
            if len(set(letters)) != len(letters):
                raise LayerError(
                    "E204",
                    f"operand {i}'s subscripts {letters!r} repeat a letter (a diagonal); "
                    "Einsum contracts distinct dimensions",
                    arg="equation",
                )
            if len(letters) != len(x.shape):
                raise LayerError(
                    "E404",
                    f"Einsum's operand {i} is {x} ({len(x.shape)} dimensions per sample), but "
                    f"the equation gives it {len(letters)} subscripts, {letters!r}",
                    arg="equation",
                )
            for letter, size in zip(letters, x.shape, strict=True):
                if sizes.setdefault(letter, size) != size:
                    raise LayerError(
                        "E401",
                        f"subscript {letter} is {sizes[letter]} in operand 0 but {size} in "
                        f"operand 1 ({inputs[0]} and {inputs[1]})",
                        arg="equation",
                    )
        if len(set(out)) != len(out) or not set(out) <= set(a + b):
            raise LayerError(
                "E204",
                f"the output's subscripts {out!r} must be distinct letters of the operands",
                arg="equation",
            )
        return sizes

    def _plan(self, unit: set[str]) -> _Plan:
        """torch's plan, given the letters of size 1 (``unit``)."""
        a, b, out = self._subscripts()
        batch = self._batch()
        contracted = sorted(set(a + b) - set(out), key=lambda c: (c.islower(), c))
        labels = batch + out + "".join(contracted)
        # which operand has each label, torch telling them by a size other than 1
        has = [[c == batch or (c in x and c not in unit) for c in labels] for x in (a, b)]
        alone: tuple[list[int], list[int]] = ([], [])
        both: list[int] = []
        for p in range(len(out) + 1, len(labels)):
            if has[0][p] and has[1][p]:
                both.append(p)
            elif has[0][p] or has[1][p]:
                alone[0 if has[0][p] else 1].append(p)
        lro: list[int] = []  # what the product keeps: in both operands, the left's, the right's
        lo: list[int] = []
        ro: list[int] = []
        for p in range(len(labels)):
            left, right = has[0][p] and p not in alone[0], has[1][p] and p not in alone[1]
            if both and p not in both:
                (lro if left and right else lo if left else ro).append(p)
        return _Plan(
            labels,
            len(out) + 1,
            (tuple(alone[0]), tuple(alone[1])),
            tuple(both),
            *map(tuple, (lro, lo, ro)),
        )

    def infer(self, inputs: list[TensorType]) -> Inferred:
        sizes = self._sizes(inputs)
        _, _, out = self._subscripts()
        plan = self._plan({c for c, n in sizes.items() if n == 1})
        macs: Dim = 0
        if plan.sum:
            summed = {*plan.alone[0], *plan.alone[1]}  # of size 1 by then
            iterated = (*plan.lro, *plan.lo, *plan.sum, *plan.ro)
            macs = product([sizes[plan.labels[p]] for p in iterated if p and p not in summed])
        return Inferred(TensorType(tuple(sizes[c] for c in out)), macs=macs)

    def torch(self, inputs: list[TensorType]) -> TorchCall:
        a, b, out = self._subscripts()
        n = self._batch()
        return TorchCall(None, forward=f'torch.einsum("{n}{a},{n}{b}->{n}{out}", {{x0}}, {{x1}})')

    def _run(self, plan: _Plan, layouts: list[Layout]) -> tuple[list[Layout], list[bool], Layout]:
        """torch's steps on the inputs' layouts: the two tensors the product reads (and
        whether each is a view of its input) and the output's layout."""
        a, b, _ = self._subscripts()
        batch = self._batch()
        operands = []
        for k, (x, letters) in enumerate(zip(layouts, (batch + a, batch + b), strict=True)):
            order = []
            for c in plan.labels:
                if c not in letters:
                    x = unsqueezed(x)
                order.append(letters.index(c) if c in letters else len(x.sizes) - 1)
            x = permute(x, order)
            if plan.alone[k]:
                kept = [1 if p in plan.alone[k] else n for p, n in enumerate(x.sizes)]
                x = reduced(kept)
            operands.append(x)
        reads = list(operands)
        views = [not plan.alone[0], not plan.alone[1]]
        if not plan.sum:  # an element-wise product
            sizes = [max(p, q) for p, q in zip(*(x.sizes for x in operands), strict=True)]
            result = elementwise(operands, sizes)
        else:

            def size(x: Layout, positions: tuple[int, ...]) -> int:
                return math.prod(x.sizes[p] for p in positions)

            lro, lo, ro, both = plan.lro, plan.lo, plan.ro, plan.sum
            first, second = 0, 1
            if lo and ro and ro[-1] < lo[0]:  # torch swaps them: the product's rows come first
                first, second, lo, ro = 1, 0, ro, lo
            left, right = operands[first], operands[second]
            reads[first] = reshape(
                permute(left, (*lro, *lo, *both, *ro)),
                (size(left, lro), size(left, lo), size(left, both)),
            )
            reads[second] = reshape(
                permute(right, (*lro, *both, *ro, *lo)),
                (size(right, lro), size(right, both), size(right, ro)),
            )
            views = [view and not x.copied for view, x in zip(views, reads, strict=True)]
            done = (*lro, *lo, *both, *ro)  # the product's dimensions, as positions of labels
            flat = contiguous(
                [1 if p in both else (right if p in ro else left).sizes[p] for p in done]
            )
            result = permute(flat, [done.index(p) for p in range(len(done))])
        if len(plan.labels) == plan.outputs:  # nothing contracted: torch returns the product
            return reads, views, result
        return reads, views, reshape(result, result.sizes[: plan.outputs])

    def _layouts(self, inputs: list[TensorType], given: Given) -> list[Layout]:
        """Where the inputs lie: as the analysis says, else contiguous (a symbolic size
        stands in as 2, which no rule here tells from another size above 1)."""
        if given.layouts:
            return list(given.layouts)
        return [
            contiguous((BATCH, *(d if isinstance(d, int) else 2 for d in x.shape))) for x in inputs
        ]

    def saves_given(
        self, inputs: list[TensorType], output: TensorType, given: Given
    ) -> list[Saved]:
        """The two tensors the product reads (both, as a batched matrix product or an
        element-wise one keeps them): a view of the input, or a tensor of its own where
        torch summed out a subscript only it has or could not view it as a matrix. Each is
        kept for the other's gradient: not where the other is data (needs none)."""
        sizes = self._sizes(inputs)
        layouts = self._layouts(inputs, given)
        plan = self._plan(self._unit(layouts))
        _, views, _ = self._run(plan, layouts)
        saved = []
        for k, letters in enumerate(self._subscripts()[:2]):
            if not given.needs_grad(1 - k):
                continue
            if views[k]:
                saved.append(saved_input(inputs, k))
            else:
                summed = {plan.labels[p] for p in plan.alone[k]}
                kept = [sizes[c] for c in letters if c not in summed]
                saved.append(Saved(("left", "right")[k], product(kept)))
        return saved

    def saves(self, inputs: list[TensorType], output: TensorType) -> list[Saved]:
        return self.saves_given(inputs, output, Given.plain(2))

    def _unit(self, layouts: list[Layout]) -> set[str]:
        """The letters of size 1 where the inputs lie so."""
        a, b, _ = self._subscripts()
        return {
            c
            for letters, x in zip((a, b), layouts, strict=True)
            for c, n in zip(letters, x.sizes[1:], strict=True)
            if n == 1
        }

    def layout(self, inputs: list[Layout], output: Layout) -> Layout:
        return self._run(self._plan(self._unit(inputs)), inputs)[2]

    def label(self) -> str:
        return f"Einsum({self.equation})"
