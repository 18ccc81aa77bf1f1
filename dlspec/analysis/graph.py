"""The analyzed model: a tree of nodes with resolved layers, types, parameters and MACs.

This is what every backend consumes. Node paths follow the generated torch module's
``named_modules()`` naming (``stage.0.conv``), so per-layer figures can be checked against torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from dlspec.diagnostics import Span
from dlspec.layers.base import Layer, Shape, TensorType, numel
from dlspec.layers.symbolic import Dim
from dlspec.syntax import ast

Container = Literal["layer", "block", "repeat", "residual"]


@dataclass
class Node:
    """One statement of a spec, analyzed. Leaves (``container == "layer"``) hold a layer;
    blocks, repetitions and residuals hold children."""

    name: str  # attribute name in its scope
    path: str  # dotted path from the model root
    span: Span
    container: Container
    inputs: list[TensorType]
    output: TensorType
    sources: list[str] = field(default_factory=list)  # tensors consumed; [] = previous output
    layer: Layer | None = None
    block: str | None = None  # block name, for blocks
    children: list[Node] = field(default_factory=list)
    shortcut: list[Node] | None = None  # residual projection (None: identity)
    weights: dict[str, Shape] = field(default_factory=dict)
    buffers: dict[str, Shape] = field(default_factory=dict)
    macs: Dim = 0
    tied: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.layer is not None:
            return self.layer.label()
        if self.container == "block":
            return f"{self.block}"
        if self.container == "repeat":
            first = self.children[0]
            return f"{first.label} x {len(self.children)}"
        return "residual" if self.shortcut is None else "residual (projection)"

    def subtree(self) -> list[Node]:
        """This node's descendants (self excluded), in pre-order."""
        out: list[Node] = []
        for child in [*self.children, *(self.shortcut or [])]:
            out.append(child)
            out.extend(child.subtree())
        return out

    def leaves(self) -> list[Node]:
        return (
            [self]
            if self.container == "layer"
            else [n for n in self.subtree() if n.container == "layer"]
        )

    @property
    def params(self) -> int:
        """Trainable parameters (torch's ``sum(p.numel() for p in m.parameters())``)."""
        return sum(
            numel(shape)
            for leaf in self.leaves()
            for name, shape in leaf.weights.items()
            if name not in leaf.tied
        )

    @property
    def buffer_count(self) -> int:
        return sum(numel(s) for leaf in self.leaves() for s in leaf.buffers.values())

    @property
    def total_macs(self) -> Dim:
        total: Dim = 0
        for leaf in self.leaves():
            total = total + leaf.macs
        return total


@dataclass
class InputNode:
    name: str
    type: TensorType
    span: Span


@dataclass
class ModelGraph:
    name: str
    params: dict[str, Any]  # model parameters after defaults and --set overrides
    bindings: dict[str, int]  # values of symbolic dimensions
    symbols: list[str]
    inputs: list[InputNode]
    nodes: list[Node]
    outputs: list[str]  # tensor names
    output_types: list[TensorType]
    train: ast.TrainSection | None
    span: Span
    # bounds on symbolic dimensions that layers set, (dimension, maximum, what it is)
    limits: list[tuple[Dim, int, str]] = field(default_factory=list)

    def all_nodes(self) -> list[Node]:
        out: list[Node] = []
        for node in self.nodes:
            out.append(node)
            out.extend(node.subtree())
        return out

    def leaves(self) -> list[Node]:
        return [n for n in self.all_nodes() if n.container == "layer"]

    @property
    def trainable_params(self) -> int:
        return sum(node.params for node in self.nodes)

    @property
    def buffer_count(self) -> int:
        return sum(node.buffer_count for node in self.nodes)

    @property
    def total_macs(self) -> Dim:
        """MACs per sample, a formula when they depend on symbolic dimensions."""
        total: Dim = 0
        for node in self.nodes:
            total = total + node.total_macs
        return total
