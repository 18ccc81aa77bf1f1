"""The check report: a documented, stable JSON schema (``schema_version`` 1) and its totals.

Memory estimates (fp32, 4 bytes per element; :mod:`dlspec.analysis.memory` has the rules):

* parameters: (parameter + buffer elements) x 4;
* activations: the bytes autograd keeps for the backward pass at ``--batch``, each tensor
  once, per layer and as a formula in the batch ``B`` and the symbolic dimensions;
* training with Adam: weights, gradients and two moment estimates (16 bytes per trainable
  parameter, 4 per buffer element), the activations, and the larger of the backward pass's
  transient gradients and the optimizer step's temporaries (the peak of a training step).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticSerializationError

from dlspec.analysis import memory
from dlspec.analysis.graph import ModelGraph, Step, Tensor
from dlspec.diagnostics import Diagnostic
from dlspec.layers.symbolic import Dim, Poly, value_at

BYTES = 4


class TensorInfo(BaseModel):
    model_config = ConfigDict(defer_build=True)

    name: str
    dtype: str
    shape: list[int | str]  # per sample; symbolic dimensions as formulas ("T", "2*T")
    shape_value: list[int]  # at the spec's bindings


class LayerRow(BaseModel):
    model_config = ConfigDict(defer_build=True)

    name: str  # dotted path, as in the generated module's named_modules()
    kind: str  # layer kind; "block", "repeat" or "residual" for containers
    label: str
    inputs: list[str]  # the tensors it reads, named in its scope ("input": its scope's input)
    depth: int
    container: bool
    output_shape: list[int | str]  # its first output's (most layers have one)
    outputs: list[TensorInfo]  # every tensor it writes, named in its scope
    params: int  # trainable
    buffers: int  # buffer elements (not parameters)
    macs: int  # per sample, at the spec's bindings
    macs_formula: str | None  # when MACs depend on symbolic dimensions
    activations_bytes: int  # saved for backward at the report's batch (shared tensors once)
    line: int
    column: int


class Memory(BaseModel):
    model_config = ConfigDict(defer_build=True)

    batch: int
    parameters_bytes: int
    activations_bytes: int  # saved for backward, training mode, fp32
    activations_formula: str  # the same in the batch B and the symbolic dimensions
    training_adam_bytes: int


class Report(BaseModel):
    model_config = ConfigDict(defer_build=True)

    schema_version: Literal[1] = 1
    file: str
    model: str | None = None
    parameters: dict[str, Any] = {}
    symbols: dict[str, int] = {}
    inputs: list[TensorInfo] = []
    outputs: list[TensorInfo] = []
    layers: list[LayerRow] = []
    total_params: int = 0  # torch's sum(p.numel() for p in model.parameters())
    trainable_params: int = 0
    non_trainable_params: int = 0  # frozen parameters (requires_grad=False): none yet
    buffers: int = 0  # buffer elements (BatchNorm running statistics...): not parameters
    total_macs: int = 0
    total_macs_formula: str | None = None
    memory: Memory | None = None
    diagnostics: list[Diagnostic] = []

    @property
    def ok(self) -> bool:
        return not any(d.severity == "error" for d in self.diagnostics)

    def to_json(self) -> str:
        """The report as indented JSON. Text from the command line that is not valid UTF-8 (a
        file name, a --set value) is written as ``\\udcXX`` escapes, still valid JSON."""
        try:
            return self.model_dump_json(indent=2)
        except PydanticSerializationError:  # lone surrogates: pydantic cannot encode them
            return json.dumps(self.model_dump(mode="json"), indent=2)


def shape_json(shape: tuple[Dim, ...]) -> list[int | str]:
    return [d if isinstance(d, int) else str(d) for d in shape]


def _tensor(tensor: Tensor, bindings: dict[str, int]) -> dict[str, Any]:
    """A :class:`TensorInfo`'s fields (pydantic builds the model from them, in its fast
    core, where the report has a row per layer)."""
    t = tensor.type
    return {
        "name": tensor.name,
        "dtype": t.dtype,
        "shape": shape_json(t.shape),
        "shape_value": [value_at(d, bindings) for d in t.shape],
    }


def _rows(
    steps: list[Step], depth: int, bindings: dict[str, int], saved: dict[str, int]
) -> list[LayerRow]:
    rows = []
    for step in steps:
        macs = step.total_macs
        outputs = [_tensor(t, bindings) for t in step.outputs]
        rows.append(
            LayerRow(
                name=step.path,
                kind=step.layer.kind if step.layer is not None else step.form,
                label=step.label,
                inputs=[t.name for t in step.inputs],
                depth=depth,
                container=step.form != "layer",
                output_shape=outputs[0]["shape"],
                outputs=outputs,  # validated into TensorInfo
                params=step.params,
                buffers=step.buffer_count,
                macs=value_at(macs, bindings),
                macs_formula=str(macs) if isinstance(macs, Poly) else None,
                activations_bytes=sum(saved.get(leaf.path, 0) for leaf in step.leaves()),
                line=step.span.line,
                column=step.span.column,
            )
        )
        shortcut = step.shortcut.steps if step.shortcut is not None else []
        rows.extend(_rows([*step.children, *shortcut], depth + 1, bindings, saved))
    return rows


def build_report(
    path: str, graph: ModelGraph | None, diagnostics: list[Diagnostic], batch: int
) -> Report:
    if graph is None:
        return Report(file=path, diagnostics=diagnostics)
    b = graph.bindings
    at = {**b, "B": batch}
    trainable, buffers, macs = graph.trainable_params, graph.buffer_count, graph.total_macs
    per_layer = memory.activations(graph)
    saved = {row.path: value_at(row.saved, at) for row in per_layer}
    activations = memory.total(per_layer)
    return Report(
        file=path,
        model=graph.name,
        parameters=graph.arguments,
        symbols=dict(b),
        inputs=[TensorInfo(**_tensor(i, b)) for i in graph.inputs],
        outputs=[TensorInfo(**_tensor(o, b)) for o in graph.outputs],
        layers=_rows(graph.steps, 0, b, saved),
        total_params=trainable,
        trainable_params=trainable,
        non_trainable_params=0,
        buffers=buffers,
        total_macs=value_at(macs, b),
        total_macs_formula=str(macs) if isinstance(macs, Poly) else None,
        memory=Memory(
            batch=batch,
            parameters_bytes=BYTES * (trainable + buffers),
            activations_bytes=value_at(activations, at),
            activations_formula=str(activations),
            training_adam_bytes=memory.training(graph, rows=per_layer).bytes(at)["total"],
        ),
        diagnostics=diagnostics,
    )
