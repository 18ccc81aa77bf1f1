"""Training memory, statically: what autograd keeps for the backward pass, and the peak of a
training step.

Activations are the tensors torch's autograd saves for the backward pass in training mode
(:meth:`dlspec.layers.base.Layer.saves`), each storage once: a tensor two layers keep (ReLU's
output is the next convolution's input) is counted once, at the first layer that keeps it,
and a view (Flatten, Reshape, Identity) is the tensor it views. Parameters are not
activations; they are counted as weights.

The training peak adds the weights (fp32 master copies, buffers included), their gradients,
the optimizer's state, and the largest transient of the backward pass: the gradients of one
layer's output and inputs, alive together while that layer's backward runs. Under bf16/fp16
autocast, floating activations take 2 bytes and the half-precision weight copies that
matrix products keep are added to the activations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dlspec.analysis.graph import ModelGraph, Node
from dlspec.layers.base import FIXED_BYTES, Saved
from dlspec.layers.symbolic import Dim, Poly, evaluate, product

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16", "fp16")
# moment tensors per trainable parameter
OPTIMIZER_STATES = {"sgd": 0, "sgd-momentum": 1, "adam": 2, "adamw": 2, "rmsprop": 1, "adagrad": 1}
BATCH = Poly.symbol("B")


def float_bytes(precision: Precision) -> int:
    return 4 if precision == "fp32" else 2


def saved_bytes(saved: Saved, precision: Precision = "fp32") -> Dim:
    """Bytes of one saved tensor, a formula in the batch size ``B`` and symbolic dims."""
    size = FIXED_BYTES.get(saved.dtype) or float_bytes(precision)
    return saved.elements * size * (BATCH if saved.batched else 1)


@dataclass
class Step:
    """One layer applied, in execution order: the ids of the tensors it reads and writes."""

    node: Node
    inputs: list[int]
    output: int


@dataclass
class Dataflow:
    """The model's layers in execution order, with tensor identities (views share one id)."""

    steps: list[Step] = field(default_factory=list)
    inputs: dict[str, int] = field(default_factory=dict)
    count: int = 0

    def new(self) -> int:
        self.count += 1
        return self.count


def dataflow(graph: ModelGraph) -> Dataflow:
    """Walk the graph's scopes (blocks, repetitions, residual branches) into steps."""
    flow = Dataflow()
    tensors = {}
    for inp in graph.inputs:
        tensors[inp.name] = flow.inputs[inp.name] = flow.new()
    current = flow.inputs[graph.inputs[-1].name] if graph.inputs else 0
    _body(flow, graph.nodes, tensors, current)
    return flow


def _body(flow: Dataflow, nodes: list[Node], tensors: dict[str, int], current: int) -> int:
    for node in nodes:
        inputs = [tensors[s] for s in node.sources] if node.sources else [current]
        current = tensors[node.name] = _apply(flow, node, inputs)
    return current


def _apply(flow: Dataflow, node: Node, inputs: list[int]) -> int:
    if node.container == "layer":
        assert node.layer is not None
        output = inputs[0] if node.layer.aliases_input() else flow.new()
        flow.steps.append(Step(node, inputs, output))
        return output
    x = inputs[0]
    if node.container == "block":
        return _body(flow, node.children, {"input": x}, x)
    if node.container == "repeat":
        for child in node.children:
            x = _apply(flow, child, [x])
        return x
    _body(flow, node.children, {"input": x}, x)  # residual: body + shortcut, then their sum
    _body(flow, node.shortcut or [], {"input": x}, x)
    return flow.new()


@dataclass(frozen=True)
class LayerMemory:
    """Bytes a layer adds to the saved activations (tensors shared with an earlier layer are
    counted there), as a formula in ``B``."""

    path: str
    saved: Dim


def activations(graph: ModelGraph, precision: Precision = "fp32") -> list[LayerMemory]:
    """Per layer, in execution order, the bytes of the tensors it saves for backward that
    no earlier layer saved; their sum is the model's saved activations."""
    flow = dataflow(graph)
    seen: set[tuple[int, ...] | tuple[int, str]] = set()
    rows = []
    for index, step in enumerate(flow.steps):
        assert step.node.layer is not None
        total: Dim = 0
        for saved in step.node.layer.saves(step.node.inputs, step.node.output):
            key = _identity(saved.tensor, step, index)
            if key not in seen:
                seen.add(key)
                total = total + saved_bytes(saved, precision)
        rows.append(LayerMemory(step.node.path, total))
    return rows


def _identity(tensor: str, step: Step, index: int) -> tuple[int, ...] | tuple[int, str]:
    if tensor == "output":
        return (step.output,)
    if tensor.startswith("input") and tensor[5:].isdigit():
        return (step.inputs[int(tensor[5:])],)
    return (index, tensor)


def total(rows: list[LayerMemory]) -> Dim:
    out: Dim = 0
    for row in rows:
        out = out + row.saved
    return out


def transient(graph: ModelGraph, precision: Precision = "fp32") -> Dim:
    """The largest gradient buffers alive together in the backward pass: one layer's output
    gradient and its input gradients (float tensors only), at the largest such layer."""
    size = float_bytes(precision)
    best: Dim = 0
    best_value = -1
    probe = {**graph.bindings, "B": 1}
    for node in graph.leaves():
        elements: Dim = product(node.output.shape)
        for x in node.inputs:
            if x.dtype == "float":
                elements = elements + product(x.shape)
        value = evaluate(elements, probe)
        if value > best_value:
            best, best_value = elements * size * BATCH, value
    return best
