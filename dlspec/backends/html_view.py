"""The interactive viewer: one self-contained HTML file holding a model's diagram and its
analysis (``dlspec draw SPEC --format html``).

The page carries the model as data and lays it out itself (``viewer/viewer.js``, plain
JavaScript, no library and no network), so it works without Graphviz:

* one node per step of the IR (:mod:`dlspec.analysis.graph`) in a tree: blocks and
  repetitions are containers that start collapsed to one box, residuals start open; inputs,
  outputs and residual sums (``add/PATH``) are nodes too;
* the edges between layers with the tensor type they carry (:func:`~dlspec.analysis.graph.flows`);
  the page maps each end to its nearest visible container, so a collapsed block has the edges
  of the layers inside it;
* per node, the row of ``dlspec check --format json`` (kind and arguments, shapes, parameters,
  MACs and their formula, bytes saved for backward and their formula in ``B``) and the spec
  line that wrote it.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from importlib import resources
from typing import Any

from dlspec.analysis import memory
from dlspec.analysis.check import Checked
from dlspec.analysis.graph import ModelGraph, Step, Tensor, flows
from dlspec.analysis.report import LayerRow, Report, expanded
from dlspec.backends.graphviz_draw import FAMILY_COLOURS
from dlspec.layers.symbolic import Dim, Poly

ASSETS = resources.files("dlspec.backends") / "viewer"


def to_html(checked: Checked, expand: bool = False, open_: Sequence[str] = ()) -> str:
    """The viewer page of a checked spec: the model, or with errors as far as it analyzed
    (the errors then head the page). It starts with every block and repetition open
    (``expand``), or those at the paths ``open_`` and around them."""
    assert checked.source is not None
    text = checked.source.text
    if checked.graph is not None:
        data = view_data(checked.graph, checked.report, text)
    else:
        assert checked.partial is not None and checked.partial_report is not None
        data = view_data(checked.partial, checked.partial_report, text)
    errors = [d for d in checked.report.diagnostics if d.severity == "error"]
    data["errors"] = [d.render(checked.path, text) for d in errors]
    data["open"] = {"all": expand, "paths": list(open_)}
    # inside <script>, "</" could close the element: JSON allows escaping the slash
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    page = (ASSETS / "viewer.html").read_text(encoding="utf-8")
    return (
        page.replace("/*TITLE*/", html.escape(data["model"]["name"]))
        .replace("/*STYLE*/", (ASSETS / "viewer.css").read_text(encoding="utf-8"))
        .replace("/*SCRIPT*/", (ASSETS / "viewer.js").read_text(encoding="utf-8"))
        .replace("/*DATA*/", payload)  # last: nothing is replaced inside the data
    )


def view_data(graph: ModelGraph, report: Report, text: str) -> dict[str, Any]:
    """What the page shows, as JSON-ready data: the model's totals, the node tree (pre-order,
    each with its report row) and the edges."""
    assert report.memory is not None
    lines = text.splitlines()
    rows = {row.name: row for row in expanded(report.layers)}
    saved = memory.saved_by_path(memory.activations(graph))
    nodes: list[dict[str, Any]] = []

    def terminal(kind: str, tensor: Tensor) -> dict[str, Any]:
        return {
            "id": f"{kind}/{tensor.name}",
            "parent": None,
            "name": tensor.name,
            "kind": kind,
            "label": f"{kind} {tensor.type.dtype}",
            "shape": str(tensor.type),
        }

    def visit(step: Step, parent: str | None, branch: str = "main") -> None:
        row = rows[step.path]
        formula: Dim = 0
        for leaf in step.leaves():
            formula = formula + saved.get(leaf.path, 0)
        nodes.append(
            {
                "id": step.path,
                "parent": parent,
                "name": step.name,
                "kind": step.form,
                "label": step.label,
                "family": step.layer.family if step.layer is not None else None,
                "shape": str(step.output.type),
                "row": _row(row, str(formula) if isinstance(formula, Poly) else None),
                "source": lines[step.span.line - 1].strip() if step.span.line <= len(lines) else "",
                "branch": branch,  # a residual's shortcut is drawn dashed into its sum
            }
        )
        for child in step.children:
            visit(child, step.path)
        for child in step.shortcut.steps if step.shortcut is not None else []:
            visit(child, step.path, "shortcut")
        if step.form == "residual":
            nodes.append(
                {
                    "id": f"add/{step.path}",
                    "parent": step.path,
                    "name": "add",
                    "kind": "add",
                    "label": "add",
                    "family": "merge",
                    "shape": str(step.output.type),
                }
            )

    nodes += [terminal("input", t) for t in graph.inputs]
    for step in graph.steps:
        visit(step, None)
    nodes += [terminal("output", t) for t in graph.outputs]
    return {
        "model": {
            "name": graph.name,
            "file": report.file,
            "arguments": graph.arguments,
            "symbols": graph.bindings,
            "params": report.trainable_params,
            "buffers": report.buffers,
            "macs": report.total_macs,
            "macs_formula": report.total_macs_formula,
            "batch": report.memory.batch,
            "saved": report.memory.activations_bytes,
            "saved_formula": report.memory.activations_formula,
            "training_adam": report.memory.training_adam_bytes,
        },
        "families": FAMILY_COLOURS,
        "nodes": nodes,
        "edges": [[f.producer, f.consumer, str(f.type)] for f in flows(graph)],
    }


def _row(row: LayerRow, saved_formula: str | None) -> dict[str, Any]:
    """The figures of a node's report row that the page shows."""
    return {
        "kind": row.kind,
        "label": row.label,
        "inputs": row.inputs,
        "outputs": [
            {"name": t.name, "dtype": t.dtype, "shape": t.shape, "value": t.shape_value}
            for t in row.outputs
        ],
        "params": row.params,
        "buffers": row.buffers,
        "macs": row.macs,
        "macs_formula": row.macs_formula,
        "saved": row.activations_bytes,
        "saved_formula": saved_formula,
        "line": row.line,
        "column": row.column,
    }
