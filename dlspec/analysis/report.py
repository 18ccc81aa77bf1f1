"""The check report: a documented, stable JSON schema (``schema_version`` 2) and its totals.

Version 2 folds a repetition's alike copies (:class:`dlspec.analysis.graph.Copies`): one row,
with ``copies`` N, stands for N copies in a row whose figures are all the same, and the rows
below it are its first copy's; :func:`expanded` gives version 1's row per copy.

Memory estimates (fp32, 4 bytes per element; :mod:`dlspec.analysis.memory` has the rules):

* parameters: (parameter + buffer elements) x 4;
* activations: the bytes autograd keeps for the backward pass at ``--batch``, each tensor
  once, per layer and as a formula in the batch ``B`` and the symbolic dimensions;
* training with Adam: weights, gradients and two moment estimates (16 bytes per trainable
  parameter, 4 per buffer element), the activations, and the larger of the backward pass's
  transient gradients and the optimizer step's temporaries (the peak of a training step).
"""

from math import prod
from typing import Any, Literal

from pydantic_core import PydanticSerializationError

from dlspec.analysis import memory
from dlspec.analysis.graph import Copies, ModelGraph, Step, Tensor
from dlspec.diagnostics import Diagnostic
from dlspec.layers.symbolic import Dim, Poly, value_at
from dlspec.validation import Field, Validated

BYTES = 4


class TensorInfo(Validated):
    name: str
    dtype: str
    shape: list[int | str]  # per sample; symbolic dimensions as formulas ("T", "2*T")
    shape_value: list[int]  # at the spec's bindings


class LayerRow(Validated):
    name: str  # dotted path, as in the generated module's named_modules()
    kind: str  # layer kind; "block", "repeat" or "residual" for containers
    label: str
    inputs: list[str]  # the tensors it reads, named in its scope ("input": its scope's input)
    depth: int
    container: bool
    # a repetition's alike copies in a row: this row is the first's and stands for them all,
    # its figures (and its descendants' rows) each copy's
    copies: int = 1
    output_shape: list[int | str]  # its first output's (most layers have one)
    outputs: list[TensorInfo]  # every tensor it writes, named in its scope
    params: int  # trainable
    buffers: int  # buffer elements (not parameters)
    macs: int  # per sample, at the spec's bindings
    macs_formula: str | None  # when MACs depend on symbolic dimensions
    activations_bytes: int  # saved for backward at the report's batch (shared tensors once)
    line: int
    column: int


class Memory(Validated):
    batch: int
    parameters_bytes: int
    activations_bytes: int  # saved for backward, training mode, fp32
    activations_formula: str  # the same in the batch B (any B >= 2) and the symbolic dims
    training_adam_bytes: int


class Report(Validated):
    schema_version: Literal[2] = 2
    file: str
    model: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    symbols: dict[str, int] = Field(default_factory=dict)
    inputs: list[TensorInfo] = Field(default_factory=list)
    outputs: list[TensorInfo] = Field(default_factory=list)
    layers: list[LayerRow] = Field(default_factory=list)
    total_params: int = 0  # torch's sum(p.numel() for p in model.parameters())
    trainable_params: int = 0
    non_trainable_params: int = 0  # frozen parameters (requires_grad=False): none yet
    buffers: int = 0  # buffer elements (BatchNorm running statistics...): not parameters
    total_macs: int = 0
    total_macs_formula: str | None = None
    memory: Memory | None = None
    diagnostics: list[Diagnostic] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(d.severity == "error" for d in self.diagnostics)

    def to_json(self) -> str:
        """The report as indented JSON. Text from the command line that is not valid UTF-8 (a
        file name, a --set value) is written as ``\\udcXX`` escapes, still valid JSON."""
        try:
            return self.model_dump_json(indent=2)
        except PydanticSerializationError:  # lone surrogates: pydantic cannot encode them
            import json  # only here: a check that prints a table never needs it

            return json.dumps(self.model_dump(mode="json"), indent=2)


def shape_json(shape: tuple[Dim, ...]) -> list[int | str]:
    return [d if isinstance(d, int) else str(d) for d in shape]


def _tensor(tensor: Tensor, bindings: dict[str, int]) -> dict[str, Any]:
    """A :class:`TensorInfo`'s fields (pydantic-core makes the record of them as it validates
    the row that holds it, where the report has a row per layer)."""
    t = tensor.type
    return {
        "name": tensor.name,
        "dtype": t.dtype,
        "shape": shape_json(t.shape),
        "shape_value": [value_at(d, bindings) for d in t.shape],
    }


class _Saved:
    """The bytes the layers under each path save for backward, from the memory rows (a
    folded row counted for the copies it stands for below that path, not beside it), and
    where the memory arithmetic folded each repetition's copies: (first copy, copies)."""

    def __init__(self, rows: list[memory.LayerMemory], at: dict[str, int]) -> None:
        self.under: dict[str, int] = {}
        self.folds: dict[str, tuple[int, int]] = {}
        for row in rows:
            value = value_at(row.saved, at)
            for repetition, first, copies in row.folds:
                self.folds[repetition] = (first, copies)
            parts = row.path.split(".")
            for end in range(1, len(parts) + 1):
                path = ".".join(parts[:end])
                times = prod(n for r, _, n in row.folds if r == path or r.startswith(path + "."))
                self.under[path] = self.under.get(path, 0) + value * times

    def listed(self, step: Step) -> list[tuple[Step, int]]:
        """The steps a container's rows list, each with the copies its row stands for: a
        repetition's copies one by one, but those the memory arithmetic counted alike (the
        analysis made them alike too) as one."""
        body = step.body
        if not isinstance(body, Copies):
            return [(child, 1) for child in step.children] + [
                (child, 1) for child in (step.shortcut.steps if step.shortcut else [])
            ]
        first, copies = self.folds.get(step.path, (body.count, 0))
        return (
            [(body.copy(i), 1) for i in range(first)]
            + ([(body.copy(first), copies)] if copies else [])
            + [(body.copy(i), 1) for i in range(first + copies, body.count)]
        )


def _rows(
    steps: list[tuple[Step, int]], depth: int, bindings: dict[str, int], saved: _Saved
) -> list[LayerRow]:
    rows = []
    for step, copies in steps:
        macs = step.total_macs
        outputs = [_tensor(t, bindings) for t in step.outputs]
        rows.append(  # from a mapping: one validation makes the row and its TensorInfo
            LayerRow.model_validate(
                {
                    "name": step.path,
                    "kind": step.layer.kind if step.layer is not None else step.form,
                    "label": step.label,
                    "inputs": [t.name for t in step.inputs],
                    "depth": depth,
                    "container": step.form != "layer",
                    "copies": copies,
                    "output_shape": outputs[0]["shape"],
                    "outputs": outputs,
                    "params": step.params,
                    "buffers": step.buffer_count,
                    "macs": value_at(macs, bindings),
                    "macs_formula": str(macs) if isinstance(macs, Poly) else None,
                    "activations_bytes": saved.under.get(step.path, 0),
                    "line": step.span.line,
                    "column": step.span.column,
                }
            )
        )
        if step.body is not None:
            rows.extend(_rows(saved.listed(step), depth + 1, bindings, saved))
    return rows


def expanded(rows: list[LayerRow]) -> list[LayerRow]:
    """The rows with every copy a folded row stands for listed on its own, each with its
    own rows below it, paths renumbered (``layers.0`` x 32 -> ``layers.0`` ... ``layers.31``):
    a row per module, as version 1 of the schema gave them."""
    out: list[LayerRow] = []
    i = 0
    while i < len(rows):
        row = rows[i]
        end = i + 1
        while end < len(rows) and rows[end].depth > row.depth:
            end += 1
        below = expanded(rows[i + 1 : end])
        if row.copies == 1:
            out += [row, *below]
        else:
            head, _, index = row.name.rpartition(".")
            first = int(index)
            for n in range(first, first + row.copies):
                own = f"{head}.{n}"
                outputs = [_renumbered(t, first, n) for t in row.outputs]
                inputs = row.inputs  # the first copy's; a later one reads the one before it
                if n > first:
                    before = [_renumbered(t, first, n - 1).name for t in row.outputs]
                    inputs = before + row.inputs[len(before) :]
                out.append(
                    row.model_copy(
                        update={"name": own, "copies": 1, "inputs": inputs, "outputs": outputs}
                    )
                )
                out += [r.model_copy(update={"name": own + r.name[len(row.name) :]}) for r in below]
        i = end
    return out


def _renumbered(tensor: TensorInfo, first: int, n: int) -> TensorInfo:
    """Copy ``first``'s output ``3`` (or ``3.a``) as copy ``n``'s."""
    _, dot, rest = tensor.name.partition(".")
    return tensor.model_copy(update={"name": f"{n}{dot}{rest}"})


def build_report(
    path: str, graph: ModelGraph | None, diagnostics: list[Diagnostic], batch: int
) -> Report:
    if graph is None:
        return Report(file=path, diagnostics=diagnostics)
    b = graph.bindings
    at = {**b, "B": batch}
    trainable, buffers, macs = graph.trainable_params, graph.buffer_count, graph.total_macs
    per_layer = memory.activations(graph, batch=batch)
    saved = _Saved(per_layer, at)
    # the formula for every batch of 2 or more (at batch 1 torch views some tensors it
    # copies at larger batches: the rows at batch 1 give the figures there only)
    general = per_layer if batch > 1 else memory.activations(graph)
    activations = memory.total(general)
    return Report(
        file=path,
        model=graph.name,
        parameters=graph.arguments,
        symbols=dict(b),
        inputs=[TensorInfo(**_tensor(i, b)) for i in graph.inputs],
        outputs=[TensorInfo(**_tensor(o, b)) for o in graph.outputs],
        layers=_rows([(step, 1) for step in graph.steps], 0, b, saved),
        total_params=trainable,
        trainable_params=trainable,
        non_trainable_params=0,
        buffers=buffers,
        total_macs=value_at(macs, b),
        total_macs_formula=str(macs) if isinstance(macs, Poly) else None,
        memory=Memory(
            batch=batch,
            parameters_bytes=BYTES * (trainable + buffers),
            activations_bytes=value_at(memory.total(per_layer), at),
            activations_formula=str(activations),
            training_adam_bytes=memory.training(graph, rows=per_layer).bytes(at)["total"],
        ),
        diagnostics=diagnostics,
    )
