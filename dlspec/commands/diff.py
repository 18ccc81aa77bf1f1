"""Compare two specs: per-layer and total deltas of parameters, MACs, memory and shapes."""

from __future__ import annotations

import argparse

from dlspec.analysis.check import check_file
from dlspec.analysis.diff import Diff, DiffRow, diff
from dlspec.analysis.render import align, human_bytes
from dlspec.commands.common import (
    add_set_argument,
    exit_code,
    positive_int,
    print_diagnostics,
)
from dlspec.diagnostics import n


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("a", metavar="A", help="the spec before (.dl)")
    parser.add_argument("b", metavar="B", help="the spec after (.dl)")
    add_set_argument(parser, "override a model parameter in both specs")
    parser.add_argument("--model", help="which model, when the specs define several")
    parser.add_argument(
        "--batch", type=positive_int, default=1, help="batch size for the memory figures"
    )
    parser.add_argument("--format", choices=("table", "json"), default="table")


def run(args: argparse.Namespace) -> int:
    checked = []
    for path in (args.a, args.b):
        one = check_file(path, dict(args.overrides), args.batch, args.model)
        print_diagnostics(one, warnings=False)
        checked.append(one)
    code = max(exit_code(c) for c in checked)
    if any(c.graph is None for c in checked):
        return code or 1
    result = diff(checked[0].report, checked[1].report)
    print(result.model_dump_json(indent=2) if args.format == "json" else render(result))
    return 0


def render(result: Diff) -> str:
    """The changed layers, then the totals before and after."""
    a, b = result.a, result.b
    lines = [f"{a.model} ({a.file})  ->  {b.model} ({b.file})", ""]
    saved = f"saved (batch {result.batch})"
    header = ["layer", "change", "params", "MACs", saved, "output (per sample)"]
    body = [_cells(r) for r in result.layers]
    if body:
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
        rule = ["-" * w for w in widths]
        lines += [*align([header, rule, *body], (False, False, True, True, True, False)), ""]
        if any(r.copies > 1 for r in result.layers):
            lines += ["(each of N: the row is one copy's, and N copies changed alike)", ""]
    else:
        lines += ["no layer changed", ""]
    totals = [
        ["", "A", "B", "B - A"],
        ["params", n(a.params), n(b.params), _signed(result.delta["params"])],
        ["MACs per sample", n(a.macs), n(b.macs), _signed(result.delta["macs"])],
        [saved, *_bytes(a.activations_bytes, b.activations_bytes)],
        [
            f"training, Adam (batch {result.batch})",
            *_bytes(a.training_adam_bytes, b.training_adam_bytes),
        ],
    ]
    lines += align(totals, (False, True, True, True))
    return "\n".join(lines)


def _cells(row: DiffRow) -> list[str]:
    name = "  " * row.depth + row.path
    if row.a is None:
        assert row.b is not None
        change, shape = f"added {row.b.label}", _shape(row.b.output_shape)
    elif row.b is None:
        change, shape = f"removed {row.a.label}", _shape(row.a.output_shape)
    else:
        change = _relabel(row.a.label, row.b.label)
        shape = _shape(row.b.output_shape)
        if row.a.output_shape != row.b.output_shape:
            shape = f"{_shape(row.a.output_shape)} -> {shape}"
    if row.copies > 1:
        change += f", each of {row.copies}"
    d = row.delta
    return [
        name,
        change,
        _signed(d["params"]),
        _signed(d["macs"]),
        _signed_bytes(d["activations_bytes"]),
        shape,
    ]


def _relabel(a: str, b: str) -> str:
    """``Linear(4096) -> Linear(1024)``; a repetition's count: ``Block x 2 -> x 3``."""
    if a == b:
        return a
    base_a, _, count_a = a.rpartition(" x ")
    base_b, _, count_b = b.rpartition(" x ")
    if base_a and base_a == base_b and count_a.isdigit() and count_b.isdigit():
        return f"{base_a} x {count_a} -> x {count_b}"
    return f"{a} -> {b}"


def _shape(shape: list[int | str]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _signed(value: int) -> str:
    return f"{value:+,}" if value else "0"


def _signed_bytes(value: int) -> str:
    return ("+" if value > 0 else "-") + human_bytes(abs(value)) if value else "0"


def _bytes(a: int, b: int) -> list[str]:
    return [human_bytes(a), human_bytes(b), _signed_bytes(b - a)]
