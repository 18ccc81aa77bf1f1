"""What hovering over a layer statement shows, from the rows of the check report."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping

from dlspec.analysis.render import human_bytes
from dlspec.analysis.report import LayerRow, Report
from dlspec.layers import REGISTRY

BYTES = 4  # fp32
MAX_ROWS = 4  # a statement inside a block appears once per instance; show a few

_OPERATORS: dict[type[ast.operator], Callable[[int, int], int]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Pow: operator.pow,
}


def dim_value(dim: int | str, symbols: Mapping[str, int]) -> int:
    """A report dimension (``64`` or a formula such as ``"2*T"``) at the spec's bindings."""
    if isinstance(dim, int):
        return dim

    def value(node: ast.expr) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            return symbols[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"unexpected dimension {dim!r}")

    return value(ast.parse(dim.replace("^", "**"), mode="eval").body)


def _shape(shape: list[int | str]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _output(shape: list[int | str], symbols: Mapping[str, int]) -> str:
    """``[T, 64] = [16, 64] at T=16``: a shape, with its value where it is symbolic."""
    text = _shape(shape)
    used = sorted({s for s in symbols if any(s in str(d) for d in shape)})
    if used:
        values = [dim_value(d, symbols) for d in shape]
        text += f" = {_shape(list(values))} at " + ", ".join(f"{s}={symbols[s]}" for s in used)
    return text


def row_text(row: LayerRow, symbols: Mapping[str, int]) -> list[str]:
    """One layer's hover lines: kind, output, params, MACs, memory."""
    layer = REGISTRY.get(row.kind)
    kind = f"{row.kind} ({layer.family})" if layer is not None else row.kind
    outputs = [_output(t.shape, symbols) for t in row.outputs]
    if len(outputs) > 1:  # several: each named
        outputs = [f"{t.name} {text}" for t, text in zip(row.outputs, outputs, strict=True)]
    macs = f"{row.macs:,}"
    if row.macs_formula is not None:
        macs += f" = {row.macs_formula}"
    weights = human_bytes(BYTES * (row.params + row.buffers))
    elements = sum(math.prod(dim_value(d, symbols) for d in t.shape) for t in row.outputs)
    activation = human_bytes(BYTES * elements)
    buffers = f" (+ {row.buffers:,} in buffers)" if row.buffers else ""
    return [
        f"{row.name}: {row.label}",
        f"kind     {kind}",
        *(f"{'output' if i == 0 else '':9}{text}" for i, text in enumerate(outputs)),
        f"params   {row.params:,}{buffers}",
        f"MACs     {macs}",
        f"memory   weights {weights}, output {activation} per sample (fp32)",
    ]


def hover_text(report: Report, line: int, bound: Mapping[int, list[str]]) -> str | None:
    """Markdown for the layers whose statement starts on ``line`` (1-based), or for the
    `let` there (``bound``: each let's values by line, one per use of its block), or None."""
    rows = [row for row in report.layers if row.line == line]
    if not rows and line in bound:
        values = bound[line]
        text = "\n".join(values[:MAX_ROWS])
        if len(values) > MAX_ROWS:
            text += f"\n... and {len(values) - MAX_ROWS} more values"
        return f"```text\n{text}\n```"
    if not rows:
        return None
    blocks = [row_text(row, report.symbols) for row in rows[:MAX_ROWS]]
    text = "\n\n".join("\n".join(block) for block in blocks)
    if len(rows) > MAX_ROWS:
        text += f"\n\n... and {len(rows) - MAX_ROWS} more instances"
    return f"```text\n{text}\n```"
