"""The human-readable report of ``dlspec check``."""

from __future__ import annotations

from collections.abc import Sequence

from dlspec.analysis.report import LayerRow, Report
from dlspec.diagnostics import n
from dlspec.terminal import printable


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.2f} {unit}"
        value /= 1024
    raise AssertionError


def short(count: int) -> str:
    """96,663,050 -> 96.66M (as torchinfo prints totals)."""
    for scale, suffix in ((10**15, "P"), (10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "K")):
        if abs(count) >= scale:
            return f"{count / scale:.2f}{suffix}"
    return str(count)


def align(rows: list[list[str]], right: Sequence[bool]) -> list[str]:
    """Rows of cells as lines of columns two spaces apart, each as wide as its widest cell;
    ``right``: which columns align right (numbers)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)
        ).rstrip()
        for cells in rows
    ]


def _shape(shape: list[int | str]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _rows(row: LayerRow, parent: str, previous: str, activations: bool) -> list[list[str]]:
    """A layer's table row; the kind says ``<- a, b`` when the layer reads other tensors than
    the one written just before it in its scope (``previous``); with ``activations``, the
    bytes it saves for backward. A layer writing several tensors shows each, a line each."""
    name = "  " * row.depth + row.name.removeprefix(parent + ".")
    macs = n(row.macs) if row.macs_formula is None else f"{n(row.macs)}*"
    kind = row.label if row.inputs == [previous] else f"{row.label} <- {', '.join(row.inputs)}"
    if row.copies > 1:  # alike copies of a repetition: 3-31, each of 29
        name += f"-{int(row.name.rpartition('.')[2]) + row.copies - 1}"
        kind += f", each of {row.copies}"
    if len(row.outputs) == 1:
        shapes = [_shape(row.output_shape)]
    else:
        shapes = [f"{t.name} {_shape(t.shape)}" for t in row.outputs]
    cells = [name, kind, shapes[0], n(row.params), macs]
    cells += [human_bytes(row.activations_bytes)] if activations else []
    return [cells] + [["", "", shape] + [""] * (len(cells) - 3) for shape in shapes[1:]]


def render_table(report: Report, activations: bool = False) -> str:
    """The per-layer table and the totals; empty when the spec did not analyze. With
    ``activations``, a column of the bytes each layer saves for backward at the batch."""
    if report.model is None or report.memory is None:
        return ""
    header = ["layer", "kind", "output (per sample)", "params", "MACs"]
    body = [[i.name, f"input {i.dtype}", _shape(i.shape), "0", "0"] for i in report.inputs]
    if activations:
        header.append(f"saved (batch {report.memory.batch})")
        body = [[*row, ""] for row in body]
    parents: list[str] = []
    last = {"": report.inputs[-1].name if report.inputs else ""}  # scope path -> last tensor
    for r in report.layers:
        del parents[r.depth :]
        scope, _, own = r.name.rpartition(".")
        previous = last.get(scope, "input")
        body += _rows(r, parents[-1] if parents else "", previous, activations)
        last[scope] = own
        parents.append(r.name)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    settings = ", ".join(f"{k}={v}" for k, v in {**report.parameters, **report.symbols}.items())
    title = f"{report.model}  ({report.file}{', ' + settings if settings else ''})"
    lines = [printable(title), ""]
    right = (False, False, False, True, True, True)[: len(header)]
    lines += align([header, ["-" * w for w in widths], *body], right)
    lines.append("")
    mem = report.memory
    macs = f"{n(report.total_macs)} ({short(report.total_macs)})"
    if report.total_macs_formula:
        at = ", ".join(f"{k}={v}" for k, v in report.symbols.items())
        macs += f" at {at}; = {report.total_macs_formula}"
    totals = [
        ("total params", f"{n(report.total_params)} ({short(report.total_params)})"),
        ("  trainable", n(report.trainable_params)),
        ("buffers", n(report.buffers)),
        ("MACs per sample", macs),
        ("parameter memory", f"{human_bytes(mem.parameters_bytes)} (fp32)"),
        (
            "activation memory",
            f"{human_bytes(mem.activations_bytes)} (saved for backward, batch {mem.batch})",
        ),
        ("training (Adam)", f"{human_bytes(mem.training_adam_bytes)} (batch {mem.batch})"),
    ]
    width = max(len(k) for k, _ in totals)
    lines += [f"{k.ljust(width)}  {v}" for k, v in totals]
    if any(r.macs_formula for r in report.layers):
        lines.append("* MACs depend on symbolic dimensions; JSON output gives the formulas")
    if any(r.copies > 1 for r in report.layers):
        lines.append("i-j: copies i to j of a repetition, alike; the rows give each copy's figures")
    return "\n".join(lines)
