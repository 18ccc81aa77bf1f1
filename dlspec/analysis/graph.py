"""The IR: one resolved dataflow graph, which every backend reads.

A :class:`ModelGraph` holds the model's :class:`Graph`: named input tensors, an ordered list of
:class:`Step` values and the output tensors. Every step names the tensors it reads (resolved:
never "the previous output") and the tensors it writes, with their types; so an edge is data,
not something a consumer works out again. A step is a layer, or holds sub-graphs with their own
named inputs and outputs:

* ``block``: a use of a block definition; ``body`` is the block's graph for this use, ``block``
  the definition and the arguments of this use;
* ``repeat``: ``body`` holds the copies ``0``, ``1``, ... each reading the one before, held
  compactly (:class:`Copies`): the copies the analysis built, the last standing for the alike
  copies after it, which ``body.steps`` derives when a consumer reads them one by one;
* ``residual``: ``body`` is the main branch, ``shortcut`` the projection (None: identity);
  the step's output is their sum.

Step paths follow the generated torch module's ``named_modules()`` (``stage.0.conv``), so
per-layer figures can be checked against torch. ``dlspec check --format ir`` prints the graph.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from dlspec.diagnostics import Span
from dlspec.layers.base import Layer, Shape, TensorType, numel
from dlspec.layers.provenance import Tree
from dlspec.layers.symbolic import Dim, fmt_dim
from dlspec.structs import Struct, replace
from dlspec.syntax import ast

if TYPE_CHECKING:  # a ModelGraph holds one, which the analyzer makes (and imports)
    from dlspec.analysis.train_config import TrainConfig

StepForm = Literal["layer", "block", "repeat", "residual"]


class Tensor(NamedTuple):
    """A named tensor of a graph; ``type`` is its per-sample type (symbolic where it is)."""

    name: str
    type: TensorType

    def __str__(self) -> str:
        return f"{self.name}: {self.type}"


class BlockUse(Struct):
    """A use of a block definition: the definition (its signature is ``definition.params``)
    and the values of its parameters for this use, defaults applied."""

    definition: ast.Definition
    arguments: dict[str, Any]  # in the caller's names (:mod:`dlspec.layers.provenance`)
    local: dict[str, Tree] = field(default_factory=dict)  # the bools' and strings' expressions

    @property
    def name(self) -> str:
        return self.definition.name.name


class Choice(Struct):
    """What an `if` of the body chose (``taken``: its first branch), with its condition's
    expressions (:mod:`dlspec.layers.provenance`): ``local`` over the names of the class
    the body becomes, ``root`` over the model's parameters."""

    statement: ast.IfStmt
    taken: bool
    local: Tree
    root: Tree


class Graph(Struct, frozen=False, eq=False):
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

    def runs(self) -> list[Run]:
        """The steps, each with how many alike copies of it run in a row (always 1 but in
        a repetition's :class:`Copies`): what figures multiply, without the copies built."""
        return [Run(step, 1, i) for i, step in enumerate(self.steps)]


class Run(NamedTuple):
    """A step of a graph and how many alike copies of it run in a row (``first``: its index
    among the graph's steps, expanded): a repetition's copies after the input types repeat
    are one run."""

    step: Step
    times: int
    first: int


class Copies(Graph, frozen=False, eq=False):
    """A repetition's body, held as the analysis built it: the copies ``analyzed`` (``0``,
    ``1``, ...), the last of which stands for itself and every copy after it, up to ``count``.
    The analysis stops building copies where one would read what the one before it read
    (:func:`dlspec.analysis.infer.Analyzer._repeat`): from there on each copy is the same
    analysis again, so figures multiply (:meth:`runs`) and ``steps``, the copies one by one
    with their own names and paths (``layers.7.mlp``), is derived from the last analyzed copy
    when a consumer first reads it."""

    def __init__(
        self, inputs: list[Tensor], analyzed: list[Step], count: int, path: str, threads: int
    ) -> None:
        self.inputs, self.analyzed, self.path = inputs, analyzed, path
        self.count = int(count)  # plain (a program's count carries its expression: Step.count)
        self.threads = threads  # how many inputs of a copy the one before gives, from the first
        self.choices = []
        self._steps: list[Step] | None = None if count > len(analyzed) else analyzed
        last = analyzed[-1]
        self.outputs = [
            _moved_tensor(t, len(analyzed) - 1, count - 1) for t in last.outputs[:threads]
        ]

    @property  # type: ignore[misc]  # Graph's field, derived here from the analyzed copies
    def steps(self) -> list[Step]:
        if self._steps is None:
            self._steps = [self.copy(i) for i in range(self.count)]
        return self._steps

    @steps.setter
    def steps(self, steps: list[Step]) -> None:
        raise AttributeError("a repetition's copies are derived from the analyzed ones")

    def copy(self, i: int) -> Step:
        """Copy ``i``, made on its own (the others are not built)."""
        if self._steps is not None:
            return self._steps[i]
        if i < len(self.analyzed):
            return self.analyzed[i]
        last, k = self.analyzed[-1], len(self.analyzed) - 1
        before = [_moved_tensor(t, k, i - 1) for t in last.outputs[: self.threads]]
        return _copy_of(last, k, i, self.path, [*before, *last.inputs[self.threads :]])

    def runs(self) -> list[Run]:
        out = [Run(step, 1, i) for i, step in enumerate(self.analyzed)]
        last = out.pop()
        return [*out, Run(last.step, self.count - last.first, last.first)]

    def moved(self, path: str) -> Copies:
        """The same copies under another repetition path (a clone of an enclosing copy)."""
        old = self.path
        analyzed = [_moved(s, old, path) for s in self.analyzed]
        return Copies(self.inputs, analyzed, self.count, path, self.threads)


def _moved_tensor(t: Tensor, old: int, new: int) -> Tensor:
    """A copy's output ``3`` (or ``3.a``) as copy ``new``'s."""
    head, dot, rest = t.name.partition(".")
    assert head == str(old)
    return Tensor(f"{new}{dot}{rest}", t.type)


def _copy_of(step: Step, old: int, new: int, repetition: str, reads: list[Tensor]) -> Step:
    """Copy ``new`` of a repetition at ``repetition``, made from its copy ``old`` (an alike
    one): its name, outputs and paths renumbered, reading ``reads``."""
    moved = _moved(step, f"{repetition}.{old}", f"{repetition}.{new}")
    moved.name = str(new)
    moved.inputs = reads
    moved.outputs = [_moved_tensor(t, old, new) for t in step.outputs]
    return moved


def _moved(step: Step, old: str, new: str) -> Step:
    """``step`` with every path under ``old`` (its own included) under ``new`` instead:
    the paths of its descendants and the weights they share."""

    def path(text: str) -> str:
        return new + text[len(old) :] if text == old or text.startswith(old + ".") else text

    body = step.body
    if isinstance(body, Copies):
        body = body.moved(path(body.path))
    elif body is not None:
        body = _moved_graph(body, old, new)
    return replace(
        step,
        path=path(step.path),
        body=body,
        shortcut=None if step.shortcut is None else _moved_graph(step.shortcut, old, new),
        tied={k: path(v) for k, v in step.tied.items()},
        template=None if step.template is None else _moved(step.template, old, new),
    )


def _moved_graph(graph: Graph, old: str, new: str) -> Graph:
    return replace(graph, steps=[_moved(s, old, new) for s in graph.steps])


class Step(Struct, frozen=False, eq=False):
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
            assert self.body is not None
            runs = self.body.runs()
            first = runs[0].step.label if runs else "repeated"
            return f"{first} x {sum(run.times for run in runs)}"
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

    def runs(self) -> list[Run]:
        """The main body's steps with their multiplicities (:meth:`Graph.runs`), then the
        shortcut's."""
        graphs = (self.body, self.shortcut)
        return [run for graph in graphs if graph is not None for run in graph.runs()]

    def counted_leaves(self) -> Iterator[tuple[Step, int]]:
        """The layers below (or this layer), each with how many times it runs: a
        repetition's alike copies are one analyzed copy, counted as many times as they
        are, and not built one by one."""
        if self.body is None:
            yield self, 1
            return
        for run in self.runs():
            for leaf, times in run.step.counted_leaves():
                yield leaf, times * run.times

    @property
    def params(self) -> int:
        """Trainable parameters (torch's ``sum(p.numel() for p in m.parameters())``)."""
        if self.body is None:  # a layer
            return sum(numel(s) for name, s in self.weights.items() if name not in self.tied)
        return sum(run.step.params * run.times for run in self.runs())

    @property
    def buffer_count(self) -> int:
        return sum(
            times * numel(s) for leaf, times in self.counted_leaves() for s in leaf.buffers.values()
        )

    @property
    def total_macs(self) -> Dim:
        total: Dim = 0
        for leaf, times in self.counted_leaves():
            total = total + leaf.macs * times
        return total


class ModelGraph(Struct, frozen=False):
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

    def counted_leaves(self) -> Iterator[tuple[Step, int]]:
        """Every layer with how many times it runs (:meth:`Step.counted_leaves`)."""
        for step in self.steps:
            yield from step.counted_leaves()

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
    """The graph as text, one step a line (``dlspec check --format ir``), as the IR holds
    it: a repetition's alike copies are its last analyzed copy, marked with their count."""
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
    for step, times, first in graph.runs():
        what = step.label if step.block is None else step.block.name + _values(step.block.arguments)
        reads = ", ".join(t.name for t in step.inputs)
        counts = f"  params={step.params}" if step.params else ""
        alike = f"  (x {times}: copies {first}-{first + times - 1} alike)" if times > 1 else ""
        lines.append(
            f"{pad}{_tensors(step.outputs)} = {step.form} {what} <- {reads}{counts}"
            f"  @{step.span.line}:{step.span.column}{alike}"
        )
        for title, sub in (("body", step.body), ("shortcut", step.shortcut)):
            if sub is not None:
                lines.append(f"{pad}  {title}:")
                lines += _graph_lines(sub, depth + 2)
    lines.append(f"{pad}outputs {', '.join(t.name for t in graph.outputs)}")
    return lines
