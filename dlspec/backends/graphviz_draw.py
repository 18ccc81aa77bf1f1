"""Architecture diagrams: a :class:`~dlspec.analysis.graph.ModelGraph` -> Graphviz DOT source
-> SVG, PNG or PDF through Graphviz's ``dot`` program.

What a diagram shows:

* one box per layer with its name, label (kind and key arguments), output shape and parameter
  count, filled with the colour of the layer's ``family`` (a colour-blind-safe palette; a key
  beside the first box lists the families drawn);
* at low detail, layers of the activation, regularization and reshape families fold into the
  box before them (``conv1 Conv2d(32, k=3, p=1) + ReLU``); high detail draws every layer and
  adds its MACs;
* blocks and repetitions closed, as the HTML viewer opens them: one grey box with a double
  outline each (``DenseLayer x 6``), unless opened (``DrawOptions.open``) or all expanded; an
  open block is a cluster, an open repetition a cluster of its copies; residuals are clusters
  ending in an ``add`` junction fed by their body and their (dashed) shortcut; statements that
  name their inputs (``<- a, b``) get an edge from each tensor;
* edges labelled with the per-sample tensor shape; input and output boxes; a title with the
  model's totals.

Long models wrap: a sequence longer than :data:`WRAP` allows is cut between statements into
side-by-side columns (rows with ``LR``), so a 100-layer spec gives a picture a person can read
instead of a thin strip. Models with several inputs do not wrap: their branches meet, and dot
lays such a graph out legibly in one piece. Everything is derived from the graph in spec
order and named after node paths, so the DOT text is deterministic.
"""

from __future__ import annotations

import html
import itertools
import math
import shutil
from dataclasses import dataclass, field
from typing import Literal, get_args

import graphviz

from dlspec.analysis import memory
from dlspec.analysis.graph import Graph, ModelGraph, Step
from dlspec.analysis.render import human_bytes, short
from dlspec.diagnostics import n
from dlspec.layers.base import Family, TensorType
from dlspec.layers.symbolic import value_at

# Mostly Paul Tol's "light" scheme (designed to stay distinct under colour-vision deficiencies
# and to carry black text), plus a lilac for attention, pale greys for the families that usually
# fold away, and white for the junctions (drawn as ellipses).
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
CLOSED = "#E8E8E8"  # a closed block or repetition
FOLDED: frozenset[Family] = frozenset({"activation", "regularization", "reshape"})

# Per direction: a sequence longer than the first number of boxes wraps into columns (rows with
# LR) of about the second number each. Boxes are wider than tall, so LR rows hold fewer of them.
WRAP = {"TB": (30, 18), "LR": (16, 9)}
LABEL_WIDTH = 40  # characters on a box's first line before the folded parts wrap

FONT = "Helvetica"
INK = "#333333"  # text
DETAIL = "#454545"  # the small line inside boxes (legible on every fill)
SOFT = "#666666"  # edges, borders, edge labels
CLUSTER_FILLS = ("#F7F7F7", "#EEEEEE", "#E4E4E4")  # by nesting depth
# Node ids: layers are named by their path (no "/" in it), everything else has a "/" in its id.
LEGEND = "/legend"


@dataclass(frozen=True)
class DrawOptions:
    """How to draw: ``rankdir`` TB (top to bottom) or LR; ``detail`` low folds activations,
    dropout and reshapes into the layer before them, high draws every layer with its MACs;
    ``expand`` opens every block and repetition, ``open`` the ones at these paths (and
    those around them); ``activations`` (a batch size) adds the bytes each box keeps for the
    backward pass."""

    rankdir: Literal["TB", "LR"] = "TB"
    detail: Literal["low", "high"] = "low"
    expand: bool = False
    open: frozenset[str] = frozenset()
    activations: int | None = None  # a batch size: show the bytes each box saves for backward


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
    family: Family | None  # None: an input or output, or a closed block (``closed``)
    output: TensorType
    params: int = 0
    macs: int | None = None  # shown at high detail
    saved: int | None = None  # bytes kept for backward, shown with DrawOptions.activations
    closed: bool = False  # a block or repetition drawn as one box

    def fold(self, node: Step, bindings: dict[str, int], saved: int | None) -> None:
        self.parts.append(node.label)
        self.output = node.output.type
        self.params += node.params
        if self.macs is not None:
            self.macs += value_at(node.total_macs, bindings)
        if self.saved is not None and saved is not None:
            self.saved += saved


@dataclass
class _Cluster:
    """A block, repetition, residual or shortcut, drawn as a box around its items.
    ``branch`` is a residual's shortcut, which runs beside the body rather than after it."""

    id: str
    title: str
    items: list[_Item] = field(default_factory=list)
    branch: _Cluster | None = None


_Item = _Box | _Cluster


@dataclass
class _Edge:
    tail: str
    head: str
    label: str
    shortcut: bool = False


@dataclass(frozen=True)
class _End:
    """Where a tensor comes from in the drawing: a box and the type on its outgoing edge."""

    box: str
    type: TensorType
    tensor: str | None = None  # named on the edge: one of a box's several outputs


class _Builder:
    """Walks the model graph in spec order and lays out boxes, clusters and edges."""

    def __init__(self, graph: ModelGraph, options: DrawOptions) -> None:
        self.graph = graph
        self.options = options
        self.saved: dict[str, int] = {}
        if options.activations is not None:
            at = {**graph.bindings, "B": options.activations}
            rows = memory.saved_by_path(memory.activations(graph))
            self.saved = {path: value_at(saved, at) for path, saved in rows.items()}
        self.edges: list[_Edge] = []
        # the paths opened and those around them
        self.opened = {p.rsplit(".", i)[0] for p in options.open for i in range(p.count(".") + 1)}

    def is_open(self, node: Step) -> bool:
        return self.options.expand or node.path in self.opened

    def build(self) -> list[_Item]:
        items: list[_Item] = []
        env: dict[str, _End] = {}
        for inp in self.graph.inputs:
            box = _Box(f"input/{inp.name}", inp.name, [f"input {inp.type.dtype}"], None, inp.type)
            items.append(box)
            env[inp.name] = _End(box.id, inp.type)
        env = self._scope(self.graph.body, env, items)
        single = len(self.graph.outputs) == 1
        for output in self.graph.outputs:
            end = env[output.name]
            title = "output" if single else f"output {output.name}"
            box = _Box(f"output/{output.name}", "", [title], None, end.type)
            items.append(box)
            self._edge(end, box.id)
        return items

    def _edge(self, end: _End, head: str, shortcut: bool = False) -> None:
        label = str(end.type) if end.tensor is None else f"{end.tensor} {end.type}"
        self.edges.append(_Edge(end.box, head, label, shortcut=shortcut))

    def _scope(
        self, graph: Graph, inputs: dict[str, _End], items: list[_Item], fold: bool = True
    ) -> dict[str, _End]:
        """Draw one graph's steps into ``items``; ``inputs`` says where its input tensors are
        drawn. Returns where each of its tensors is drawn. A layer of a folded family folds
        into the box drawing its one input when nothing else reads that tensor (its edge would
        have to show the value before the layer)."""
        env = dict(inputs)
        readers = graph.readers()
        kept = {t.name for t in graph.outputs}
        target: _Box | None = None  # the box the next activation may fold into
        for step in graph.steps:
            source = step.inputs[0].name if len(step.inputs) == 1 else None
            if (
                fold
                and target is not None
                and self.options.detail == "low"
                and step.layer is not None
                and step.layer.family in FOLDED
                and len(step.outputs) == 1
                and source is not None
                and env[source].box == target.id
                and source not in kept
                and [r is step for r in readers[source]] == [True]
            ):
                target.fold(step, self.graph.bindings, self._saved(step))
                env[step.output.name] = _End(target.id, step.output.type)
            else:
                ends = [env[t.name] for t in step.inputs]
                drawn, target = self._draw(step, ends, items)
                # each output leaves from the box drawing it, with its own type on the edge
                env.update(
                    (t.name, _End(e.box, t.type, e.tensor))
                    for t, e in zip(step.outputs, drawn, strict=True)
                )
                if len(step.outputs) > 1:  # a box of several outputs folds nothing in
                    target = None
        return env

    def _body(
        self, graph: Graph, ends: list[_End], items: list[_Item], fold: bool = True
    ) -> list[_End]:
        """Draw a sub-graph fed by ``ends``; returns where its outputs are drawn."""
        env = self._scope(
            graph, dict(zip([t.name for t in graph.inputs], ends, strict=True)), items, fold
        )
        return [env[t.name] for t in graph.outputs]

    def _draw(
        self, node: Step, ends: list[_End], items: list[_Item]
    ) -> tuple[list[_End], _Box | None]:
        """Draw one statement fed by ``ends``; returns where its outputs are drawn and the box
        a following activation may fold into (None after a block or a repetition)."""
        closed = node.form != "residual" and bool(node.runs()) and not self.is_open(node)
        if node.layer is not None or closed:
            box = self._box(node)
            items.append(box)
            for end in ends:
                self._edge(end, box.id)
            several = len(node.outputs) > 1
            drawn = [_End(box.id, t.type, t.name if several else None) for t in node.outputs]
            return drawn, box if node.layer is not None else None
        assert node.body is not None
        if node.form == "residual":
            end, add = self._residual(node, ends, items)
            return [end], add
        if node.form == "block":
            cluster = _Cluster(f"cluster/{node.path}", self._title(node))
            drawn = self._body(node.body, ends, cluster.items)
            _place(cluster, items)
            return drawn, None
        return self._repeat(node, ends, items), None

    def _repeat(self, node: Step, ends: list[_End], items: list[_Item]) -> list[_End]:
        assert node.body is not None
        if not node.runs():  # repeated 0 times: nothing to draw, its inputs flow on
            return [_End(e.box, t.type) for e, t in zip(ends, node.outputs, strict=False)]
        cluster = _Cluster(f"cluster/{node.path}", self._title(node))
        drawn = self._body(node.body, ends, cluster.items, fold=False)
        _place(cluster, items)
        return [_End(e.box, t.type) for e, t in zip(drawn, node.outputs, strict=True)]

    def _residual(self, node: Step, ends: list[_End], items: list[_Item]) -> tuple[_End, _Box]:
        assert node.body is not None
        cluster = _Cluster(f"cluster/{node.path}", self._title(node))
        items.append(cluster)
        body = self._body(node.body, ends, cluster.items)[0]
        side = ends[0]
        if node.shortcut is not None and node.projects:
            branch = _Cluster(f"cluster/{node.path}.shortcut", "shortcut")
            side = self._body(node.shortcut, ends, branch.items)[0]
            cluster.branch = branch
            cluster.items.append(branch)
        add = _Box(f"add/{node.path}", "", ["add"], "merge", node.output.type)
        if self.options.detail == "high":
            add.macs = 0
        cluster.items.append(add)
        self._edge(body, add.id)
        self._edge(side, add.id, shortcut=True)
        return _End(add.id, node.output.type), add

    def _box(self, node: Step) -> _Box:
        """The box of a layer, or of a closed block or repetition."""
        macs = None
        if self.options.detail == "high":
            macs = value_at(node.total_macs, self.graph.bindings)
        family = node.layer.family if node.layer is not None else None
        box = _Box(node.path, node.name, [node.label], family, node.output.type, node.params, macs)
        box.saved = self._saved(node)
        box.closed = node.layer is None
        return box

    def _saved(self, node: Step) -> int | None:
        """Bytes the node's layers keep for backward, when the drawing shows them."""
        if self.options.activations is None:
            return None
        return sum(self.saved.get(leaf.path, 0) for leaf in node.leaves())

    @staticmethod
    def _title(node: Step) -> str:
        """A cluster's title: name, what it is (a repetition's count in bold), parameters."""
        if node.form == "repeat":  # its copies are alike or not: the count, not each
            runs = node.runs()
            what = f"{_esc(runs[0].step.label)}  <B>x {sum(r.times for r in runs)}</B>"
        else:
            what = _esc(node.label)
        title = f"<B>{_esc(node.name)}</B>  {what}"
        return title + (f"  ·  {n(node.params)} params" if node.params else "")


def _place(cluster: _Cluster, items: list[_Item]) -> None:
    """Add a block's or repetition's cluster to ``items`` unless it drew nothing."""
    if cluster.items:
        items.append(cluster)


# layout: wrapping a long model into columns ---------------------------------------------------


def _height(item: _Item) -> int:
    """About how many boxes long an item is drawn along the flow."""
    if isinstance(item, _Box):
        return 1
    body = sum(_height(i) for i in item.items if i is not item.branch)
    if item.branch is not None:
        body = max(body, _height(item.branch) + 1)  # the shortcut runs beside, up to the add
    return body + 1  # the title


def _wrap(items: list[_Item], limits: tuple[int, int]) -> list[list[_Item]]:
    """Cut the model's top-level sequence into columns of about ``limits[1]`` boxes when it is
    longer than ``limits[0]``; statements are never split. (Only the top level wraps: dot keeps
    the order of columns there, but not reliably among clusters nested inside clusters.)"""
    heights = [_height(i) for i in items]
    total = sum(heights)
    longest, column = limits
    if total <= longest:
        return [items]
    count = math.ceil(total / column)
    # the smallest column length that fits the sequence into `count` columns, filled in order
    capacity = max(heights)
    while len(_fill(heights, capacity)) > count:
        capacity += 1
    starts = _fill(heights, capacity)
    return [items[i:j] for i, j in itertools.pairwise([*starts, len(items)])]


def _fill(heights: list[int], capacity: int) -> list[int]:
    """Where each column starts when items fill columns of ``capacity`` in order."""
    starts, filled = [0], 0
    for i, height in enumerate(heights):
        if filled + height > capacity:
            starts.append(i)
            filled = 0
        filled += height
    return starts


def _column_of(columns: list[list[_Item]]) -> dict[str, int]:
    """Each box's column."""
    where: dict[str, int] = {}
    for c, column in enumerate(columns):
        stack = list(column)
        while stack:
            item = stack.pop()
            if isinstance(item, _Box):
                where[item.id] = c
            else:
                stack.extend(item.items)
    return where


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
    if box.family is None and not box.closed:
        if box.name:  # an input: its shape with its element type
            rows[-1] += f" {_esc(str(box.output))}"
    else:
        details.append(str(box.output))
    if box.params:
        details.append(f"{n(box.params)} params")
    if box.macs:
        details.append(f"{short(box.macs)} MACs")
    if box.saved:
        details.append(f"{human_bytes(box.saved)} saved")
    if details:
        info = _esc("  ·  ".join(details))
        rows.append(f'<FONT POINT-SIZE="9" COLOR="{DETAIL}">{info}</FONT>')
    return "<" + "<BR/>".join(rows) + ">"


def _title(graph: ModelGraph) -> str:
    """The model's name and arguments over its totals."""
    params, buffers = graph.trainable_params, graph.buffer_count
    args = ", ".join(f"{k}={v}" for k, v in graph.arguments.items())
    name = f"{graph.name}({args})" if args else graph.name
    totals = f"{n(params)} params ({short(params)})"
    if buffers:
        totals += f" + {n(buffers)} buffer elements"
    totals += f"  ·  {short(value_at(graph.total_macs, graph.bindings))} MACs per sample"
    if graph.bindings:
        totals += " at " + ", ".join(f"{k}={v}" for k, v in graph.bindings.items())
    return f'<<FONT POINT-SIZE="16"><B>{_esc(name)}</B></FONT><BR/>{_esc(totals)}<BR/> >'


def _legend(families: list[Family], rankdir: str) -> str:
    """The colour key: one cell per family drawn, in a row (TB) or a column (LR)."""
    cells = [
        f'<TD BGCOLOR="{FAMILY_COLOURS[f]}" BORDER="1" COLOR="{SOFT}">'
        f'<FONT POINT-SIZE="9">{f}</FONT></TD>'
        for f in families
    ]
    rows = [cells] if rankdir == "TB" else [[cell] for cell in cells]
    body = "".join("<TR>" + "".join(row) + "</TR>" for row in rows)
    return f'<<TABLE BORDER="0" CELLSPACING="3" CELLPADDING="3">{body}</TABLE>>'


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
        label=_title(graph),
    )
    dot.attr("node", shape="box", style="rounded,filled", fontname=FONT, fontsize="11")
    dot.attr("node", color=SOFT, fontcolor=INK, penwidth="0.8", margin="0.12,0.05")
    dot.attr("edge", fontname=FONT, fontsize="8", fontcolor=SOFT, color=SOFT, arrowsize="0.6")
    _emit_items(dot, items, depth=0)
    # several inputs make branches that meet (a U-Net's skips, its conditioning): dot lays
    # such a graph out well in one piece, and columns cut in spec order would tangle it
    columns = _wrap(items, WRAP[options.rankdir]) if len(graph.inputs) == 1 else [items]
    column_of = _column_of(columns)
    heads = [_first_box(column[0]) for column in columns]
    families = _families(items)
    if families:  # the key sits on the first rank, after the last column's head
        dot.node(LEGEND, _legend(families, options.rankdir), shape="plain", style="")
        heads.append(LEGEND)
    if len(heads) > 1:  # the columns' first boxes and the key on one rank, in order
        with dot.subgraph() as same:
            same.attr(rank="same")
            for tail, head in itertools.pairwise(heads):
                same.edge(tail, head, style="invis")
    for edge in edges:
        attrs = {"label": f" {edge.label}"}
        if edge.shortcut:
            attrs["style"] = "dashed"
        if column_of[edge.tail] != column_of[edge.head]:
            # it runs back up to the next column: it must not rank the boxes, and an external
            # label keeps it from stretching the ranks it passes
            attrs.update(constraint="false", xlabel=attrs.pop("label"))
        dot.edge(edge.tail, edge.head, **attrs)
    return dot.source


def _emit_items(dot: graphviz.Digraph, items: list[_Item], depth: int) -> None:
    for item in items:
        if isinstance(item, _Box):
            attrs = {"fillcolor": FAMILY_COLOURS[item.family] if item.family else "#FFFFFF"}
            if item.closed:  # a stack of layers: grey, a double outline
                attrs.update(fillcolor=CLOSED, peripheries="2")
            elif item.family is None:  # inputs and outputs: white, with a heavier outline
                attrs["penwidth"] = "1.4"
            elif item.family == "merge":  # joins read as junctions, not as layers
                attrs["shape"] = "ellipse"
            dot.node(item.id, _box_label(item), **attrs)
            continue
        with dot.subgraph(name=item.id) as sub:
            sub.attr(
                label=f"<{item.title}>",
                labeljust="l",
                style="rounded,filled",
                fillcolor=CLUSTER_FILLS[min(depth, len(CLUSTER_FILLS) - 1)],
                color="#AAAAAA",
                fontsize="10",
            )
            _emit_items(sub, item.items, depth + 1)
