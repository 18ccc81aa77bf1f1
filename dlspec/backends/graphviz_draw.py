"""Architecture diagrams: a :class:`~dlspec.analysis.graph.ModelGraph` -> Graphviz DOT source
-> SVG, PNG or PDF through Graphviz's ``dot`` program.

What a diagram shows:

* one box per layer with its name, label (kind and key arguments), output shape and parameter
  count, filled with the colour of the layer's ``family`` (a colour-blind-safe palette; the
  legend under the title lists the families drawn);
* at low detail, layers of the activation, regularization and reshape families fold into the
  box before them (``conv1 Conv2d(32, k=3, p=1) + ReLU``); high detail draws every layer and
  adds its MACs;
* blocks, repetitions and residuals as clusters; a repetition is drawn once with ``x N``
  unless expanded; a residual ends in an ``add`` box fed by its body and its (dashed)
  shortcut; statements that name their inputs (``<- a, b``) get an edge from each tensor;
* edges labelled with the per-sample tensor shape; input and output boxes; a title with the
  model's totals.

Long models wrap: a sequence taller than :data:`WRAP_RANKS` boxes is cut between statements
into side-by-side columns (rows with ``LR``), so a 100-layer spec gives a picture a person can
read instead of a thin strip. Everything is derived from the graph in spec order and named
after node paths, so the DOT text is deterministic.
"""

from __future__ import annotations

import html
import math
import shutil
from dataclasses import dataclass, field
from typing import Literal, get_args

import graphviz

from dlspec.analysis.graph import ModelGraph, Node
from dlspec.analysis.render import short
from dlspec.diagnostics import n
from dlspec.layers.base import Family, TensorType
from dlspec.layers.symbolic import Dim, evaluate

# Paul Tol's "light" scheme (designed to stay distinct under colour-vision deficiencies and to
# carry black text), extended with two pale tints for the families that usually fold away.
FAMILY_COLOURS: dict[Family, str] = {
    "convolution": "#77AADD",
    "pooling": "#99DDFF",
    "dense": "#EE8866",
    "normalization": "#EEDD88",
    "activation": "#BBCC33",
    "regularization": "#DDDDDD",
    "reshape": "#F2F2F2",
    "embedding": "#44BB99",
    "recurrent": "#FFAABB",
    "attention": "#CCAAEE",
    "merge": "#FFFFFF",
}
FOLDED: frozenset[Family] = frozenset({"activation", "regularization", "reshape"})

WRAP_RANKS = 30  # a sequence taller than this many boxes wraps into columns...
COLUMN_RANKS = 18  # ...of about this many boxes each
LABEL_WIDTH = 34  # characters on a box's first line before the folded parts wrap

FONT = "Helvetica"
INK = "#333333"
SOFT = "#666666"


@dataclass(frozen=True)
class DrawOptions:
    """How to draw: ``rankdir`` TB (top to bottom) or LR; ``detail`` low folds activations,
    dropout and reshapes into the layer before them, high draws every layer with its MACs;
    ``expand`` draws every repetition instead of one with ``x N``."""

    rankdir: Literal["TB", "LR"] = "TB"
    detail: Literal["low", "high"] = "low"
    expand: bool = False


class RenderError(Exception):
    """Graphviz could not render the DOT source (``dot`` missing or failing)."""


def find_dot() -> str | None:
    """The path of Graphviz's ``dot`` program, or None when it is not installed."""
    return shutil.which("dot")


def render(source: str, fmt: str) -> bytes:
    """The DOT source rendered by Graphviz's ``dot`` in format ``fmt`` (``svg``, ``png``,
    ``pdf`` or any other output format ``dot -T`` knows)."""
    try:
        return graphviz.Source(source, engine="dot").pipe(format=fmt, quiet=True)
    except graphviz.ExecutableNotFound as exc:
        raise RenderError("Graphviz's `dot` program was not found") from exc
    except graphviz.CalledProcessError as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        raise RenderError(f"dot failed: {stderr.strip() or exc}") from exc


def to_dot(graph: ModelGraph, options: DrawOptions | None = None) -> str:
    """The DOT source of the model's diagram."""
    options = options or DrawOptions()
    builder = _Builder(graph, options)
    items = builder.build()
    return _emit(graph, options, items, builder.edges)


# the drawing, before it becomes DOT ----------------------------------------------------------


@dataclass
class _Box:
    """One drawn node: a layer (with the layers folded into it), an input, output or add."""

    id: str
    name: str
    parts: list[str]  # labels, joined with " + "
    family: Family | None  # None: an input or output
    output: TensorType
    params: int = 0
    macs: int | None = None  # shown at high detail

    def fold(self, node: Node, bindings: dict[str, int]) -> None:
        self.parts.append(node.label)
        self.output = node.output
        self.params += node.params
        if self.macs is not None:
            self.macs += evaluate(node.total_macs, bindings)


@dataclass
class _Cluster:
    """A block, repetition, residual or shortcut, drawn as a box around its items.
    ``branch`` is a residual's shortcut, which runs beside the body rather than after it."""

    id: str
    title: str
    items: list[_Item] = field(default_factory=list)
    branch: _Cluster | None = None
    columns: list[list[_Item]] = field(default_factory=list)  # its body, cut by _wrap


_Item = _Box | _Cluster


@dataclass
class _Edge:
    tail: str
    head: str
    label: str
    shortcut: bool = False
    constraint: bool = True


@dataclass(frozen=True)
class _End:
    """Where a tensor comes from in the drawing: a box and the type on its outgoing edge."""

    box: str
    type: TensorType


class _Builder:
    """Walks the model graph in spec order and lays out boxes, clusters and edges."""

    def __init__(self, graph: ModelGraph, options: DrawOptions) -> None:
        self.graph = graph
        self.options = options
        self.edges: list[_Edge] = []

    def build(self) -> list[_Item]:
        items: list[_Item] = []
        env: dict[str, _End] = {}
        for inp in self.graph.inputs:
            box = _Box(f"input/{inp.name}", inp.name, [f"input {inp.type.dtype}"], None, inp.type)
            items.append(box)
            env[inp.name] = _End(box.id, inp.type)
        current = self.graph.inputs[-1].name
        self._scope(self.graph.nodes, env, current, items, keep=set(self.graph.outputs))
        single = len(self.graph.outputs) == 1
        for name in self.graph.outputs:
            end = env[name]
            title = "output" if single else f"output {name}"
            box = _Box(f"output/{name}", "", [title], None, end.type)
            items.append(box)
            self._edge(end, box.id)
        return items

    def _edge(self, end: _End, head: str, shortcut: bool = False) -> None:
        self.edges.append(_Edge(end.box, head, str(end.type), shortcut=shortcut))

    def _scope(
        self,
        nodes: list[Node],
        env: dict[str, _End],
        current: str,
        items: list[_Item],
        keep: set[str],
    ) -> _End:
        """Draw one body's statements into ``items``; ``env`` maps the tensor names visible in
        the body to where they are drawn. Returns where the body's last tensor is drawn.
        A tensor named later (``<- name``) or in ``keep`` never has a layer folded onto it,
        since its edge must show the value before that layer."""
        named = keep | {source for node in nodes for source in node.sources}
        target: _Box | None = None  # the box the next activation may fold into
        for node in nodes:
            if (
                target is not None
                and self.options.detail == "low"
                and node.layer is not None
                and node.layer.family in FOLDED
                and not node.sources
                and current not in named
            ):
                target.fold(node, self.graph.bindings)
                env[node.name] = _End(target.id, node.output)
            else:
                ends = [env[source] for source in node.sources or [current]]
                drawn, target = self._draw(node, ends, items)
                env[node.name] = _End(drawn.box, node.output)
            current = node.name
        return env[current]

    def _draw(self, node: Node, ends: list[_End], items: list[_Item]) -> tuple[_End, _Box | None]:
        """Draw one statement fed by ``ends``; returns where its output is drawn and the box a
        following activation may fold into (None after a block or a repetition)."""
        if node.layer is not None:
            box = self._layer_box(node, [node.label], node.layer.family)
            items.append(box)
            for end in ends:
                self._edge(end, box.id)
            return _End(box.id, node.output), box
        if node.container == "residual":
            return self._residual(node, ends[0], items)
        if node.container == "block":
            cluster = _Cluster(f"cluster/{node.path}", self._title(node))
            items.append(cluster)
            end = self._scope(node.children, {"input": ends[0]}, "input", cluster.items, set())
            return _End(end.box, node.output), None
        return self._repeat(node, ends[0], items), None

    def _repeat(self, node: Node, start: _End, items: list[_Item]) -> _End:
        first = node.children[0]
        if not self.options.expand and first.layer is not None:
            box = self._layer_box(node, [node.label], first.layer.family)
            items.append(box)
            self._edge(start, box.id)
            return _End(box.id, node.output)
        cluster = _Cluster(f"cluster/{node.path}", self._title(node))
        items.append(cluster)
        end = start
        if self.options.expand:
            for child in node.children:
                end, _ = self._draw(child, [end], cluster.items)
        elif first.container == "block":  # the cluster stands for the block: no second frame
            end = self._scope(first.children, {"input": start}, "input", cluster.items, set())
        else:
            end, _ = self._draw(first, [start], cluster.items)
        return _End(end.box, node.output)

    def _residual(self, node: Node, start: _End, items: list[_Item]) -> tuple[_End, _Box]:
        cluster = _Cluster(f"cluster/{node.path}", self._title(node))
        items.append(cluster)
        body = self._scope(node.children, {"input": start}, "input", cluster.items, set())
        side = start
        if node.shortcut is not None:
            cluster.branch = _Cluster(f"cluster/{node.path}.shortcut", "shortcut")
            cluster.items.append(cluster.branch)
            side = self._scope(
                node.shortcut, {"input": start}, "input", cluster.branch.items, set()
            )
        add = _Box(f"add/{node.path}", "", ["add"], "merge", node.output)
        if self.options.detail == "high":
            add.macs = 0
        cluster.items.append(add)
        self._edge(body, add.id)
        self._edge(side, add.id, shortcut=True)
        return _End(add.id, node.output), add

    def _layer_box(self, node: Node, parts: list[str], family: Family) -> _Box:
        macs = None
        if self.options.detail == "high":
            macs = evaluate(node.total_macs, self.graph.bindings)
        return _Box(node.path, node.name, parts, family, node.output, node.params, macs)

    @staticmethod
    def _title(node: Node) -> str:
        title = f"<B>{_esc(node.name)}</B>  {_esc(node.label)}"
        return title + (f"  ·  {n(node.params)} params" if node.params else "")


# layout: wrapping long sequences ---------------------------------------------------------------


def _body(cluster: _Cluster) -> list[_Item]:
    """A cluster's items that follow one another (all but a residual's shortcut)."""
    return [i for i in cluster.items if i is not cluster.branch]


def _height(item: _Item) -> int:
    """About how many boxes tall an item is drawn (after its own wrapping)."""
    if isinstance(item, _Box):
        return 1
    tallest = max((sum(_height(i) for i in column) for column in item.columns), default=0)
    if item.branch is not None:
        tallest = max(tallest, _height(item.branch) + 1)  # + the add box
    return tallest + 1  # the title


def _wrap(items: list[_Item]) -> list[list[_Item]]:
    """Cut a sequence into columns of about :data:`COLUMN_RANKS` boxes, wrapping its clusters
    first; one column when it is short enough."""
    for item in items:
        if isinstance(item, _Cluster):
            _wrap_cluster(item)
    heights = [_height(i) for i in items]
    total = sum(heights)
    if total <= WRAP_RANKS:
        return [items]
    target = total / math.ceil(total / COLUMN_RANKS)
    columns: list[list[_Item]] = [[]]
    filled = 0
    for item, height in zip(items, heights, strict=True):
        if columns[-1] and filled + height / 2 > target:
            columns.append([])
            filled = 0
        columns[-1].append(item)
        filled += height
    return columns


def _wrap_cluster(cluster: _Cluster) -> None:
    cluster.columns = _wrap(_body(cluster))
    if cluster.branch is not None:
        _wrap_cluster(cluster.branch)


Placement = tuple[tuple[str, int], ...]  # (sequence, column) from the outermost sequence in


def _placements(
    seq: str, columns: list[list[_Item]], outer: Placement, where: dict[str, Placement]
) -> None:
    for c, column in enumerate(columns):
        for item in column:
            here = (*outer, (seq, c))
            if isinstance(item, _Box):
                where[item.id] = here
                continue
            _placements(item.id, item.columns, here, where)
            if item.branch is not None:
                _placements(item.branch.id, item.branch.columns, here, where)


def _crosses(tail: Placement, head: Placement) -> bool:
    """Whether an edge joins two columns of one wrapped sequence (it then runs back up)."""
    for (seq_a, col_a), (seq_b, col_b) in zip(tail, head, strict=False):
        if seq_a != seq_b:
            return False
        if col_a != col_b:
            return True
    return False


def _column_heads(columns: list[list[_Item]], heads: list[list[str]]) -> None:
    """The first box of each column, per wrapped sequence: drawn on one rank, in order."""
    if len(columns) > 1:
        heads.append([_first_box(column[0]) for column in columns])
    for column in columns:
        for item in column:
            if isinstance(item, _Cluster):
                _column_heads(item.columns, heads)
                if item.branch is not None:
                    _column_heads(item.branch.columns, heads)


def _first_box(item: _Item) -> str:
    while isinstance(item, _Cluster):
        item = item.items[0]
    return item.id


# DOT -------------------------------------------------------------------------------------------


def _esc(text: str) -> str:
    return html.escape(text, quote=False)


def _box_label(box: _Box) -> str:
    """Name and parts on the first line(s), wrapping before a `` + part`` that would make a line
    longer than :data:`LABEL_WIDTH`; then shape, parameters and MACs, small."""
    line = f"<B>{_esc(box.name)}</B>  " if box.name else ""
    width = len(box.name) + 2 if box.name else 0
    rows = []
    for i, part in enumerate(box.parts):
        if i == 0:
            line, width = line + _esc(part), width + len(part)
        elif width + 3 + len(part) > LABEL_WIDTH:
            rows.append(line)
            line, width = f"+ {_esc(part)}", 2 + len(part)
        else:
            line, width = f"{line} + {_esc(part)}", width + 3 + len(part)
    rows.append(line)
    details = []
    if box.family is None:
        if box.name:  # an input: its shape with its element type
            rows[-1] += f" {_esc(str(box.output))}"
    else:
        details.append(str(box.output))
    if box.params:
        details.append(f"{n(box.params)} params")
    if box.macs:
        details.append(f"{short(box.macs)} MACs")
    if details:
        info = _esc("  ·  ".join(details))
        rows.append(f'<FONT POINT-SIZE="9" COLOR="{SOFT}">{info}</FONT>')
    return "<" + "<BR/>".join(rows) + ">"


def _title(graph: ModelGraph, families: list[Family]) -> str:
    params = sum(node.params for node in graph.nodes)
    buffers = sum(node.buffer_count for node in graph.nodes)
    macs: Dim = 0
    for node in graph.nodes:
        macs = macs + node.total_macs
    args = ", ".join(f"{k}={v}" for k, v in graph.params.items())
    name = f"{graph.name}({args})" if args else graph.name
    totals = f"{n(params)} params ({short(params)})"
    if buffers:
        totals += f" + {n(buffers)} buffer elements"
    totals += f"  ·  {short(evaluate(macs, graph.bindings))} MACs per sample"
    if graph.bindings:
        totals += " at " + ", ".join(f"{k}={v}" for k, v in graph.bindings.items())
    rows = [
        f'<FONT POINT-SIZE="16"><B>{_esc(name)}</B></FONT>',
        _esc(totals),
    ]
    if families:
        cells = "".join(
            f'<TD BGCOLOR="{FAMILY_COLOURS[f]}" BORDER="1" COLOR="{SOFT}">'
            f'<FONT POINT-SIZE="9">{f}</FONT></TD>'
            for f in families
        )
        rows.append(f'<TABLE BORDER="0" CELLSPACING="4" CELLPADDING="3"><TR>{cells}</TR></TABLE>')
    body = "".join(f"<TR><TD>{row}</TD></TR>" for row in rows)
    return f'<<TABLE BORDER="0" CELLSPACING="2" CELLPADDING="0">{body}</TABLE>>'


def _families(items: list[_Item]) -> list[Family]:
    seen: set[Family] = set()

    def visit(item: _Item) -> None:
        if isinstance(item, _Box):
            if item.family is not None:
                seen.add(item.family)
        else:
            for child in item.items:
                visit(child)

    for item in items:
        visit(item)
    return [f for f in get_args(Family) if f in seen]


def _emit(graph: ModelGraph, options: DrawOptions, items: list[_Item], edges: list[_Edge]) -> str:
    dot = graphviz.Digraph(name=graph.name)
    dot.attr(
        rankdir=options.rankdir,
        newrank="true",
        nodesep="0.25",
        ranksep="0.3",
        fontname=FONT,
        fontcolor=INK,
        labelloc="t",
        label=_title(graph, _families(items)),
    )
    dot.attr("node", shape="box", style="rounded,filled", fontname=FONT, fontsize="11")
    dot.attr("node", color=SOFT, fontcolor=INK, penwidth="0.8", margin="0.12,0.05")
    dot.attr("edge", fontname=FONT, fontsize="8", fontcolor=SOFT, color=SOFT, arrowsize="0.6")
    columns = _wrap(items)
    where: dict[str, Placement] = {}
    _placements("", columns, (), where)
    heads: list[list[str]] = []
    _column_heads(columns, heads)
    _emit_items(dot, items, depth=0)
    for edge in edges:
        attrs = {"label": f" {edge.label}"}
        if edge.shortcut:
            attrs["style"] = "dashed"
        if _crosses(where[edge.tail], where[edge.head]):
            attrs["constraint"] = "false"
        dot.edge(edge.tail, edge.head, **attrs)
    for group in heads:
        with dot.subgraph() as same:
            same.attr(rank="same")
            for tail, head in zip(group, group[1:], strict=False):
                same.edge(tail, head, style="invis")
    return dot.source


def _emit_items(dot: graphviz.Digraph, items: list[_Item], depth: int) -> None:
    for item in items:
        if isinstance(item, _Box):
            colour = FAMILY_COLOURS[item.family] if item.family else "#FFFFFF"
            attrs = {"fillcolor": colour}
            if item.family is None:
                attrs["penwidth"] = "1.4"
            dot.node(item.id, _box_label(item), **attrs)
            continue
        with dot.subgraph(name=item.id) as sub:
            sub.attr(
                label=f"<{item.title}>",
                labeljust="l",
                style="rounded,filled",
                fillcolor=["#F7F7F7", "#EEEEEE", "#E4E4E4"][min(depth, 2)],
                color="#AAAAAA",
                fontsize="10",
            )
            _emit_items(sub, item.items, depth + 1)
