"""The IR: one resolved dataflow graph, which every backend reads.

A :class:`ModelGraph` holds the model's :class:`Graph`: named input tensors, an ordered list of
:class:`Step` values and the output tensors. Every step names the tensors it reads (resolved:
never "the previous output") and the tensors it writes, with their types; so an edge is data,
not something a consumer works out again. A step is a layer, or holds sub-graphs with their own
named inputs and outputs:

* ``block``: a use of a block definition; ``body`` is the block's graph for this use, ``block``
  the definition and the arguments of this use;
* ``repeat``: ``body`` holds the copies ``0``, ``1``, ... each reading the one before;
* ``residual``: ``body`` is the main branch, ``shortcut`` the projection (None: identity);
  the step's output is their sum.

Step paths follow the generated torch module's ``named_modules()`` (``stage.0.conv``), so
per-layer figures can be checked against torch. ``dlspec check --format ir`` prints the graph.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from dlspec.analysis.train_config import TrainConfig
from dlspec.diagnostics import Span
from dlspec.layers.base import Layer, Shape, TensorType, numel
from dlspec.layers.provenance import Tree
from dlspec.layers.symbolic import Dim, fmt_dim
from dlspec.syntax import ast

StepForm = Literal["layer", "block", "repeat", "residual"]


class Tensor(NamedTuple):
    """A named tensor of a graph; ``type`` is its per-sample type (symbolic where it is)."""

    name: str
    type: TensorType

    def __str__(self) -> str:
        return f"{self.name}: {self.type}"


@dataclass(frozen=True, slots=True)
class BlockUse:
    """A use of a block definition: the definition (its signature is ``definition.params``)
    and the values of its parameters for this use, defaults applied."""

    definition: ast.Definition
    arguments: dict[str, Any]  # in the caller's names (:mod:`dlspec.layers.provenance`)
    local: dict[str, Tree] = field(default_factory=dict)  # the bools' and strings' expressions

    @property
    def name(self) -> str:
        return self.definition.name.name


@dataclass(frozen=True, slots=True)
class Choice:
    """What an `if` of the body chose (``taken``: its first branch), with its condition's
    expressions (:mod:`dlspec.layers.provenance`): ``local`` over the names of the class
    the body becomes, ``root`` over the model's parameters."""

    statement: ast.IfStmt
    taken: bool
    local: Tree
    root: Tree


@dataclass(eq=False)
class Graph:
    """A body of steps: the model's, a block use's, a repetition's or a residual branch's.
    Tensor names are local to the graph: ``inputs`` are its own, each step's outputs are
    defined once, and ``outputs`` are what the graph returns."""

    inputs: list[Tensor]
    steps: list[Step]
    outputs: list[Tensor]
    choices: list[Choice] = field(default_factory=list)  # its `if` statements, as decided

    def readers(self) -> dict[str, list[Step]]:
        """Each tensor of the graph and the steps reading it, in order (outputs not counted)."""
        out: dict[str, list[Step]] = {t.name: [] for t in self.inputs}
        for step in self.steps:
            for t in step.outputs:
                out[t.name] = []
        for step in self.steps:
            for t in step.inputs:
                out[t.name].append(step)
        return out

    def edges(self) -> Iterator[tuple[str, Step]]:
        """(tensor name, step reading it) for every input of every step, in order."""
        for step in self.steps:
            for t in step.inputs:
                yield t.name, step


@dataclass(eq=False)
class Step:
    """One statement of a spec, analyzed: it reads ``inputs`` (tensors of the enclosing graph)
    and writes ``outputs``. Layers hold ``layer`` and their parameter shapes; blocks,
    repetitions and residuals hold sub-graphs."""

    name: str  # attribute name in its scope
    path: str  # dotted path from the model root
    span: Span
    form: StepForm  # a layer, or a block use, repetition or residual holding sub-graphs
    inputs: list[Tensor]
    outputs: list[Tensor]
    layer: Layer | None = None
    body: Graph | None = None  # block, repeat, residual main branch
    shortcut: Graph | None = None  # residual projection (None: identity)
    block: BlockUse | None = None
    weights: dict[str, Shape] = field(default_factory=dict)
    buffers: dict[str, Shape] = field(default_factory=dict)
    macs: Dim = 0  # this layer's own, per sample
    tied: dict[str, str] = field(default_factory=dict)  # weight -> path of the shared one
    statement: ast.LayerStmt | None = None  # as written: its arguments' expressions
    count_note: str | None = None  # how a layer's number of outputs came about (Chunk)
    # a block's or residual's body reads its inputs' sizes under names of its own
    # (``in_channels``): their values at this use, in the enclosing body's names
    sizes: dict[str, Any] = field(default_factory=dict)
    count: int = 1  # a repetition's count, as the spec computes it (its expressions kept)
    # a repetition of no copy: the copy it would make, analyzed but not part of the model
    # (what generated code builds when its arguments ask for copies)
    template: Step | None = None
    unexpressed: list[str] = field(default_factory=list)  # arguments whose expressions were lost

    @property
    def output(self) -> Tensor:
        """The step's first (usually only) output."""
        return self.outputs[0]

    @property
    def children(self) -> list[Step]:
        """The steps of the main body (a repetition's copies, a block's statements)."""
        return self.body.steps if self.body is not None else []

    @property
    def label(self) -> str:
        if self.layer is not None:
            return self.layer.label()
        if self.block is not None:
            return self.block.name
        if self.form == "repeat":
            first = self.children[0].label if self.children else "repeated"
            return f"{first} x {len(self.children)}"
        return "residual (projection)" if self.projects else "residual"

    @property
    def projects(self) -> bool:
        """Whether a residual's shortcut computes anything: False for an identity shortcut,
        written as none or as a ``shortcut { if ... }`` whose chosen branch is empty."""
        return self.shortcut is not None and bool(self.shortcut.steps)

    def subtree(self) -> list[Step]:
        """This step's descendants (self excluded), in pre-order."""
        out: list[Step] = []
        if self.body is None:  # a layer
            return out
        for graph in (self.body, self.shortcut):
            for child in graph.steps if graph is not None else []:
                out.append(child)
                out.extend(child.subtree())
        return out

    def leaves(self) -> list[Step]:
        return [self] if self.form == "layer" else [s for s in self.subtree() if s.form == "layer"]

    @property
    def params(self) -> int:
        """Trainable parameters (torch's ``sum(p.numel() for p in m.parameters())``)."""
        if self.body is None:  # a layer
            return sum(numel(s) for name, s in self.weights.items() if name not in self.tied)
        graphs = (self.body, self.shortcut)
        return sum(step.params for graph in graphs if graph is not None for step in graph.steps)

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
class ModelGraph:
    """The analyzed model: its graph, the values of its parameters and symbolic dimensions,
    and its training settings."""

    name: str
    arguments: dict[str, Any]  # model parameter values after defaults and --set overrides
    bindings: dict[str, int]  # values of symbolic dimensions
    symbols: list[str]
    body: Graph
    train: TrainConfig  # the train section, validated (defaults where it is silent)
    span: Span
    # bounds on symbolic dimensions that layers set, (dimension, maximum, what it is)
    limits: list[tuple[Dim, int, str]] = field(default_factory=list)
    # analyzed as a program: numbers carry their expressions (dlspec.layers.provenance)
    program: bool = False

    @property
    def inputs(self) -> list[Tensor]:
        return self.body.inputs

    @property
    def steps(self) -> list[Step]:
        return self.body.steps

    @property
    def outputs(self) -> list[Tensor]:
        return self.body.outputs

    def all_steps(self) -> list[Step]:
        out: list[Step] = []
        for step in self.steps:
            out.append(step)
            out.extend(step.subtree())
        return out

    def leaves(self) -> list[Step]:
        return [s for s in self.all_steps() if s.form == "layer"]

    @property
    def trainable_params(self) -> int:
        return sum(step.params for step in self.steps)

    @property
    def buffer_count(self) -> int:
        return sum(step.buffer_count for step in self.steps)

    @property
    def total_macs(self) -> Dim:
        """MACs per sample, a formula when they depend on symbolic dimensions."""
        total: Dim = 0
        for step in self.steps:
            total = total + step.total_macs
        return total


class Flow(NamedTuple):
    """An edge between layers with the tensor it carries (its per-sample type)."""

    producer: str
    consumer: str
    type: TensorType


def flows(model: ModelGraph) -> list[Flow]:
    """The model's edges between layers, with blocks, repetitions and residuals flattened,
    in execution order: (producer, consumer, type) where each end is a layer's path,
    ``input/NAME``, ``output/NAME`` or a residual's sum ``add/PATH``."""
    edges: dict[Flow, None] = {}  # ordered, each once

    def add(producers: list[str], consumer: str, type_: TensorType) -> None:
        edges.update((Flow(p, consumer, type_), None) for p in producers)

    def flatten(graph: Graph, sources: dict[str, list[str]]) -> dict[str, list[str]]:
        """Adds the graph's edges; ``sources`` maps its inputs to their producers. Returns
        the producers of each of its outputs."""
        where = dict(sources)
        for step in graph.steps:
            if step.form == "layer":
                for t in step.inputs:
                    add(where[t.name], step.path, t.type)
                ends = [[step.path] for _ in step.outputs]
            else:
                assert step.body is not None
                result = flatten(step.body, _fed(step.body, step, where))
                ends = [result[t.name] for t in step.body.outputs]
                if step.form == "residual":
                    main, side = step.body.outputs[0], step.inputs[0]
                    side_ends = where[side.name]
                    if step.shortcut is not None:
                        result = flatten(step.shortcut, _fed(step.shortcut, step, where))
                        side = step.shortcut.outputs[0]
                        side_ends = result[side.name]
                    addition = f"add/{step.path}"
                    add(ends[0], addition, main.type)
                    add(side_ends, addition, side.type)
                    ends = [[addition]]
            for t, producers in zip(step.outputs, ends, strict=True):
                where[t.name] = producers
        return {t.name: where[t.name] for t in graph.outputs}

    result = flatten(model.body, {t.name: [f"input/{t.name}"] for t in model.inputs})
    for t in model.outputs:
        add(result[t.name], f"output/{t.name}", t.type)
    return list(edges)


def dataflow(model: ModelGraph) -> set[tuple[str, str]]:
    """The model's edges between layers (:func:`flows` without the tensors' types)."""
    return {(f.producer, f.consumer) for f in flows(model)}


def _fed(body: Graph, step: Step, where: dict[str, list[str]]) -> dict[str, list[str]]:
    """The producers of a sub-graph's inputs: those of the step's inputs, one to one."""
    return {t.name: where[s.name] for t, s in zip(body.inputs, step.inputs, strict=True)}


def describe(model: ModelGraph) -> str:
    """The graph as text, one step a line (``dlspec check --format ir``)."""
    lines = [f"model {model.name}" + _values(model.arguments)]
    lines += _graph_lines(model.body, 1)
    return "\n".join(lines)


def _values(values: dict[str, Any]) -> str:
    return "(" + ", ".join(f"{k}={v!r}" for k, v in values.items()) + ")" if values else ""


def _tensors(tensors: list[Tensor]) -> str:
    return ", ".join(
        f"{t.name}: {t.type.dtype}[{', '.join(fmt_dim(d) for d in t.type.shape)}]" for t in tensors
    )


def _graph_lines(graph: Graph, depth: int) -> list[str]:
    pad = "  " * depth
    lines = [f"{pad}inputs  {_tensors(graph.inputs)}"]
    for step in graph.steps:
        what = step.label if step.block is None else step.block.name + _values(step.block.arguments)
        reads = ", ".join(t.name for t in step.inputs)
        counts = f"  params={step.params}" if step.params else ""
        lines.append(
            f"{pad}{_tensors(step.outputs)} = {step.form} {what} <- {reads}{counts}"
            f"  @{step.span.line}:{step.span.column}"
        )
        for title, sub in (("body", step.body), ("shortcut", step.shortcut)):
            if sub is not None:
                lines.append(f"{pad}  {title}:")
                lines += _graph_lines(sub, depth + 2)
    lines.append(f"{pad}outputs {', '.join(t.name for t in graph.outputs)}")
    return lines
