"""What changed between two versions of a model: their check reports compared layer by layer.

Layers are matched by path (the generated module's ``named_modules()`` names). A row is a
layer or container present in both and different (``changed``), or in one only (``added``,
``removed``: the outermost such node stands for what it holds). A container whose kind or
number of copies changed (``x 2 -> x 3``, a block that became a repetition) is one row, not a
row per layer inside it. Copies of a repetition that changed alike are one row whose path
says which copies (``layers.*.mlp.up_proj``, ``layers.[1-31]...``) with ``copies`` their count.
Every figure is a report's; a delta is B's minus A's.
"""

import re
from typing import Any, Literal

from dlspec.analysis.report import LayerRow, Report, expanded
from dlspec.validation import Validated

Change = Literal["added", "removed", "changed"]
FIGURES = ("params", "macs", "activations_bytes")


class Figures(Validated):
    """A node's figures in one version (its report row's)."""

    kind: str
    label: str
    output_shape: list[int | str]
    params: int
    buffers: int
    macs: int
    activations_bytes: int


class DiffRow(Validated):
    path: str  # B's (A's when removed); a repetition's changed-alike copies as * or [i-j]
    depth: int
    change: Change
    copies: int = 1  # how many copies of a repetition this row stands for
    a: Figures | None
    b: Figures | None
    delta: dict[str, int]  # params, macs, activations_bytes: B - A, per copy


class Totals(Validated):
    file: str
    model: str
    params: int
    macs: int
    activations_bytes: int  # saved for backward at the batch
    training_adam_bytes: int  # the peak of a training step with Adam (as plan counts it)


class Diff(Validated):
    batch: int
    a: Totals
    b: Totals
    delta: dict[str, int]  # the totals' differences, B - A
    layers: list[DiffRow]


def diff(a: Report, b: Report) -> Diff:
    """The difference of two reports (both of analyzed models, at the same batch)."""
    assert a.memory is not None and b.memory is not None and a.model and b.model
    ta, tb = _totals(a), _totals(b)
    fields = ("params", "macs", "activations_bytes", "training_adam_bytes")
    tree_a, tree_b = _Tree(expanded(a.layers)), _Tree(expanded(b.layers))
    rows = _compare(tree_a, tree_b, tree_a.top, tree_b.top, 0)
    return Diff(
        batch=b.memory.batch,
        a=ta,
        b=tb,
        delta={f: getattr(tb, f) - getattr(ta, f) for f in fields},
        layers=rows,
    )


def _totals(report: Report) -> Totals:
    assert report.memory is not None and report.model is not None
    return Totals(
        file=report.file,
        model=report.model,
        params=report.trainable_params,
        macs=report.total_macs,
        activations_bytes=report.memory.activations_bytes,
        training_adam_bytes=report.memory.training_adam_bytes,
    )


class _Tree:
    """A report's rows as a tree: each path's row and its children's paths."""

    def __init__(self, rows: list[LayerRow]) -> None:
        self.row = {r.name: r for r in rows}
        self.children: dict[str, list[str]] = {r.name: [] for r in rows}
        self.top: list[str] = []
        parents: list[str] = []
        for r in rows:
            del parents[r.depth :]
            (self.children[parents[-1]] if parents else self.top).append(r.name)
            parents.append(r.name)

    def figures(self, path: str) -> Figures:
        return Figures.model_validate(self.row[path].model_dump(include=set(Figures.model_fields)))

    def signature(self, path: str, prefix: str) -> list[Any]:
        """The node's figures and its descendants', paths relative to ``prefix``."""
        out: list[Any] = [path.removeprefix(prefix), self.figures(path)]
        for child in self.children[path]:
            out += self.signature(child, prefix)
        return out


def _delta(a: Figures | None, b: Figures | None) -> dict[str, int]:
    return {f: (getattr(b, f) if b else 0) - (getattr(a, f) if a else 0) for f in FIGURES}


def _merged(a: list[str], b: list[str]) -> list[str]:
    """Both lists' paths once each, in B's order, with A's own ones where A has them (what
    was removed before what was added in its place)."""
    shared = set(a) & set(b)
    out: list[str] = []
    i = j = 0
    while i < len(a) or j < len(b):
        if i < len(a) and (a[i] not in shared or a[i] in out):
            if a[i] not in shared:
                out.append(a[i])
            i += 1
        else:
            if b[j] not in out:
                out.append(b[j])
            j += 1
    return out


def _compare(ta: _Tree, tb: _Tree, pa: list[str], pb: list[str], depth: int) -> list[DiffRow]:
    rows: list[DiffRow] = []
    for path in _merged(pa, pb):
        fa = ta.figures(path) if path in ta.row else None
        fb = tb.figures(path) if path in tb.row else None
        if fa is None or fb is None:
            change: Change = "added" if fa is None else "removed"
            rows.append(
                DiffRow(path=path, depth=depth, change=change, a=fa, b=fb, delta=_delta(fa, fb))
            )
            continue
        if ta.signature(path, path) == tb.signature(path, path):
            continue
        rows.append(
            DiffRow(path=path, depth=depth, change="changed", a=fa, b=fb, delta=_delta(fa, fb))
        )
        ca, cb = ta.children[path], tb.children[path]
        if fa.kind != fb.kind or (fa.kind == "repeat" and len(ca) != len(cb)):
            continue  # another structure: the row says it whole
        if fa.kind == "repeat":
            rows += _copies(ta, tb, path, ca, cb, depth + 1)
        else:
            rows += _compare(ta, tb, ca, cb, depth + 1)
    return rows


def _copies(
    ta: _Tree, tb: _Tree, path: str, ca: list[str], cb: list[str], depth: int
) -> list[DiffRow]:
    """The rows of a repetition's copies (as many in A as in B); copies that changed alike
    give their rows once, for all of them."""
    groups: list[tuple[list[int], list[DiffRow], list[DiffRow]]] = []  # copies, rows, key
    for index, (a, b) in enumerate(zip(ca, cb, strict=True)):
        rows = _compare(ta, tb, [a], [b], depth)
        key = [r.model_copy(update={"path": r.path.removeprefix(b)}) for r in rows]
        same = next((g for g in groups if g[2] == key), None)
        if same is None:
            groups.append(([index], rows, key))
        else:
            same[0].append(index)
    out: list[DiffRow] = []
    for indices, rows, _ in groups:
        name = "*" if len(indices) == len(cb) > 1 else _ranges(indices)
        own = f"{path}.{indices[0]}"
        for r in rows:
            copy = re.sub(rf"^{re.escape(own)}(?=\.|$)", f"{path}.{name}", r.path)
            out.append(r.model_copy(update={"path": copy, "copies": len(indices) * r.copies}))
    return out


def _ranges(indices: list[int]) -> str:
    """[0] -> 0; [1, 2, 3, 7] -> [1-3,7]."""
    if len(indices) == 1:
        return str(indices[0])
    parts, start = [], indices[0]
    for prev, cur in zip(indices, [*indices[1:], None], strict=True):
        if cur != prev + 1:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = cur if cur is not None else start
    return "[" + ",".join(parts) + "]"
