"""What an importer captured: a tree of statements, before it is written as a spec.

A traced module becomes a :class:`Body` (a future ``block``); each call inside it becomes a
:class:`Statement` applying a layer kind or another body. The importers build this tree; the
writer (:mod:`dlspec.importers.emit`) turns it into spec text, finding the blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Value = int | float | bool | str | tuple[int | float, ...]


@dataclass
class LayerCall:
    """A layer kind with the arguments to write (field name -> value, defaults left out)."""

    kind: str
    args: dict[str, Value] = field(default_factory=dict)


@dataclass
class Body:
    """A traced module: its class name, its module path and its statements in order, its
    input names and the outputs, when they are not simply the last statement (a block's when
    it returns several tensors)."""

    cls: str
    path: str
    statements: list[Statement] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    # the positions of the forward's results that are zeros made from sizes alone (a T5
    # cross-attention's position bias): left out of ``outputs``, constants to the caller
    zeros: list[int] = field(default_factory=list)
    # statements sharing the weight of a layer of another body (``tie=`` its name there):
    # statement -> (that body's id, the layer); written only where this body is inlined
    # into that one (T5's decoder stack, whose embedding is its encoder's)
    outside: dict[str, tuple[int, str]] = field(default_factory=dict)


@dataclass
class Statement:
    """One statement: ``name = op <- sources``. A statement repeating a block holds every copy
    (``copies``, each traced on its own) and writes ``Block(...) * len(copies)``.

    ``origin`` is the module path the statement came from (``layer1.0.conv1``; empty for a
    function such as ``torch.flatten``) and ``state`` its own state_dict keys, so that
    trained weights can follow it (``transposed``: those the original holds transposed, as
    GPT-2's ``Conv1D`` holds a Linear's weight; ``state_from``: those it names otherwise).
    ``params``, ``buffers`` and ``shape`` are what torch reported for it (per sample;
    dimensions that vary with a symbolic input are names)."""

    name: str
    op: LayerCall | Body
    sources: list[str] = field(default_factory=list)  # [] = the previous statement's output
    origin: str = ""
    state: list[str] = field(default_factory=list)
    copies: list[Body] = field(default_factory=list)
    transposed: list[str] = field(default_factory=list)  # state keys the original holds as W^T
    state_from: dict[str, str] = field(default_factory=dict)  # key -> the original's full name
    params: int = 0
    buffers: int = 0
    shape: tuple[int | str, ...] | None = None
    outputs: list[str] = field(default_factory=list)  # a block's several: `a, b = Block`


@dataclass
class Imported:
    """A captured model: its name, inputs (name, dtype, dims; a dim may be a symbol), symbols
    with their default values, the root body, and the totals torch reported."""

    name: str
    inputs: list[tuple[str, str, tuple[int | str, ...]]]
    symbols: dict[str, int]
    body: Body
    params: int
    buffers: int
    source: str  # where it came from, for the header comment
    tracer: str = "torch.fx"  # how it was read: torch.fx or torch.export


@dataclass(frozen=True)
class Unmapped:
    """A piece of the model that has no dlspec equivalent: where (module path) and what;
    ``tracer`` says which way of reading the model met it (torch.fx or torch.export)."""

    path: str
    op: str
    reason: str
    tracer: str = ""

    def __str__(self) -> str:
        where = f"{self.tracer}: " if self.tracer else ""
        return f"{where}{self.path or '(model)'}: {self.op}: {self.reason}"


class ImportFailed(Exception):
    """The model could not be imported; ``unmapped`` lists every piece that could not be
    mapped (empty when the failure is elsewhere, e.g. the constructor raised)."""

    def __init__(self, message: str, unmapped: list[Unmapped] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.unmapped = list(unmapped or [])
