"""The resolved dataflow graph: every view of a model (generated code, diagram, ONNX graph,
lints, table) shows the edges the IR holds."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

import onnx
import pytest
import torch
import torch.fx
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dlspec
from dlspec.analysis.check import check_text, program_graph
from dlspec.analysis.graph import ModelGraph, dataflow, describe
from dlspec.analysis.render import render_table
from dlspec.backends.graphviz_draw import DrawOptions, to_dot
from dlspec.backends.onnx_export import export_onnx
from dlspec.backends.torch_codegen import generate
from dlspec.cli import main

LATE_INPUT = (ROOT / "docs" / "examples" / "late_input.dl").read_text()

Edges = set[tuple[str, str]]


def analyzed(text: str) -> ModelGraph:
    checked = check_text(text)
    assert checked.ok and checked.graph is not None, checked.report.diagnostics
    return checked.graph


def test_late_input_in_the_ir() -> None:
    graph = analyzed(LATE_INPUT)
    reads = {step.name: [t.name for t in step.inputs] for step in graph.steps}
    assert reads == {"x": ["a"], "y": ["b"]}
    assert dataflow(graph) == {
        ("input/a", "x"),
        ("input/b", "y"),
        ("x", "output/x"),
        ("y", "output/y"),
    }
    assert "x: float[4] = layer Linear(4) <- a" in describe(graph)


def test_late_input_in_the_generated_code() -> None:
    code = generate(program_graph(LATE_INPUT))
    assert "x = self.x(a)" in code and "y = self.y(b)" in code
    traced = fx_edges(dlspec.load_text(LATE_INPUT).to_torch(), ["x", "y"])
    assert traced == dataflow(analyzed(LATE_INPUT))


def test_late_input_in_the_diagram() -> None:
    edges = dot_edges(to_dot(analyzed(LATE_INPUT)))
    assert ("input/a", "x") in edges and ("input/b", "y") in edges
    assert ("input/b", "x") not in edges and ("x", "y") not in edges


def test_late_input_in_the_onnx_graph() -> None:
    spec = dlspec.load_text(LATE_INPUT)
    result = export_onnx(spec.to_torch(), spec.graph, device="cpu")
    proto = onnx.load_from_string(result.data)
    producers = {out: node for node in proto.graph.node for out in node.output}
    for output, source in (("x", "a"), ("y", "b")):
        node = producers[output]
        assert source in node.input, (output, node)


def test_late_input_lints_and_table() -> None:
    checked = check_text(LATE_INPUT)
    assert not [d for d in checked.report.diagnostics if d.code == "W502"]
    table = render_table(checked.report)
    assert re.search(r"^x\s+Linear\(4\) <- a\s", table, re.M)
    assert re.search(r"^y\s+Linear\(2\) <- b\s", table, re.M)
    rows = {row.name: row.inputs for row in checked.report.layers}
    assert rows == {"x": ["a"], "y": ["b"]}


def test_linear_layers_in_a_row_still_warn() -> None:
    text = "model M {\n input a: float[3]\n x = Linear(4)\n Dropout(0.1)\n y = Linear(2)\n}\n"
    codes = [d.code for d in check_text(text).report.diagnostics]
    assert codes == ["W502"]


def test_check_format_ir(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    spec = tmp_path / "m.dl"
    spec.write_text(LATE_INPUT)
    assert main(["check", str(spec), "--format", "ir"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[:3] == [
        "model M",
        "  inputs  a: float[3], b: float[5]",
        "  x: float[4] = layer Linear(4) <- a  params=16  @3:5",
    ]


# three views of one graph --------------------------------------------------------------------


def contract(edges: Iterable[tuple[str, str]], keep: Callable[[str], bool]) -> Edges:
    """The edges between kept nodes, through any chain of nodes that are not kept."""
    successors: dict[str, set[str]] = {}
    for tail, head in edges:
        successors.setdefault(tail, set()).add(head)
    out: Edges = set()
    for start in [n for n in successors if keep(n)]:
        stack, seen = list(successors[start]), set()
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            if keep(node):
                out.add((start, node))
            else:
                stack.extend(successors.get(node, ()))
    return out


def dot_edges(dot: str) -> Edges:
    pattern = re.compile(r'^\s*("?)([^"\s]+)\1 -> ("?)([^"\s]+)\3 \[(.*)\]$')
    edges = set()
    for line in dot.splitlines():
        match = pattern.match(line)
        if match and "invis" not in match.group(5):
            edges.add((match.group(2), match.group(4)))
    return edges


def fx_edges(model: torch.nn.Module, outputs: list[str]) -> Edges:
    """The traced forward's dataflow: inputs, module calls and outputs, by the IR's names."""
    traced = torch.fx.symbolic_trace(model)
    names: dict[torch.fx.Node, str] = {}
    edges: Edges = set()
    for node in traced.graph.nodes:
        if node.op == "placeholder":
            names[node] = f"input/{node.target}"
        elif node.op == "call_module":
            names[node] = str(node.target)
        elif node.op == "output":
            results = node.args[0] if isinstance(node.args[0], tuple) else (node.args[0],)
            for result, name in zip(results, outputs, strict=True):
                edges.add((names[result], f"output/{name}"))
            continue
        else:
            names[node] = f"op/{node.name}"
        edges.update((names[arg], names[node]) for arg in node.all_input_nodes)
    modules = {name for name, _ in model.named_modules()}
    return contract(edges, lambda n: n in modules or n.startswith(("input/", "output/")))


WIDTH = 4
STATEMENTS = st.sampled_from(
    ["linear", "relu", "add", "residual", "repeat", "block", "chunk", "pair"]
)


@st.composite
def random_specs(draw: st.DrawFn) -> str:
    """A model over float[4] tensors: several inputs, some declared late, named skips,
    merges, residuals, repetitions, block uses and splits in two (each half read by a
    Linear of its own), and a block of two inputs and two outputs, repeated or not."""
    kinds = draw(st.lists(STATEMENTS, min_size=1, max_size=8))
    inputs = draw(st.integers(1, 3))
    places = sorted(
        draw(st.lists(st.integers(0, len(kinds)), min_size=inputs - 1, max_size=inputs - 1))
    )
    lines = [f"    input in0: float[{WIDTH}]"]
    tensors = ["in0"]
    named: list[str] = []
    for i, kind in enumerate(kinds):
        for j, place in enumerate(places):
            if place == i:
                lines.append(f"    input in{j + 1}: float[{WIDTH}]")
                tensors.append(f"in{j + 1}")
        skip = ""
        if draw(st.booleans()) or kinds[i - 1 : i] == ["pair"]:  # after two outputs: say which
            skip = f" <- {draw(st.sampled_from(tensors))}"
        op = {
            "linear": f"Linear({WIDTH})",
            "relu": "ReLU",
            "residual": "residual { Linear(4) ReLU }",
            "repeat": f"Linear({WIDTH}) * {draw(st.integers(1, 3))}",
            "block": "Mix()",
        }.get(kind)
        if kind == "add":
            a, b = draw(st.lists(st.sampled_from(tensors), min_size=2, max_size=2))
            op, skip = "Add", f" <- {a}, {b}"
        name = f"t{i}"
        if kind == "pair":
            a, b = draw(st.lists(st.sampled_from(tensors), min_size=2, max_size=2))
            repeat = draw(st.sampled_from(["", " * 2", " * 3"]))
            lines.append(f"    p{i}, {name} = Two(){repeat} <- {a}, {b}")
            tensors += [f"p{i}", name]
            named += [f"p{i}", name]
            continue
        if kind == "chunk":
            source = skip or f" <- {tensors[-1]}"
            lines.append(f"    a{i}, b{i} = Chunk(2){source}")
            lines.append(f"    u{i} = Linear({WIDTH}) <- a{i}")
            tensors.append(f"u{i}")
            named.append(f"u{i}")
            op, skip = f"Linear({WIDTH})", f" <- b{i}"
        lines.append(f"    {name} = {op}{skip}")
        tensors.append(name)
        named.append(name)
    outputs = draw(st.lists(st.sampled_from(named), min_size=1, max_size=3, unique=True))
    lines.append(f"    output {', '.join(outputs)}")
    block = "block Mix {\n    Linear(4)\n    ReLU\n    Linear(4)\n}\n"
    block += (
        "block Two <- x, y {\n    x2 = Linear(4) <- y\n    y2 = Add <- x, y\n    output x2, y2\n}\n"
    )
    return block + "model Random {\n" + "\n".join(lines) + "\n}\n"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_specs())
def test_diagram_generated_forward_and_ir_are_one_graph(text: str) -> None:
    spec = dlspec.load_text(text)
    model = spec.to_torch()
    traced = fx_edges(model, [t.name for t in spec.graph.outputs])
    modules = {name for name, _ in model.named_modules()}

    def keep(node: str) -> bool:
        return node in modules or node.startswith(("input/", "output/"))

    ir = contract(dataflow(spec.graph), keep)
    dot = contract(dot_edges(to_dot(spec.graph, DrawOptions(detail="high", expand=True))), keep)
    assert ir == traced, text
    assert dot == ir, text


# a statement with several outputs ------------------------------------------------------------

SPLIT = """model M {
    input x: float[6, 12]
    qkv = Linear(36)
    q, k, v = Chunk(3) <- qkv
    s = Add <- q, k
    out = Mul <- s, v
}
"""


def test_several_outputs_in_every_view() -> None:
    graph = analyzed(SPLIT)
    assert "q: float[6, 12], k: float[6, 12], v: float[6, 12] = layer Chunk(3) <- qkv" in (
        describe(graph)
    )
    code = generate(program_graph(SPLIT))
    assert "q, k, v = x.chunk(3, dim=-1)  # 3 x (B, 6, 12)" in code
    assert "s = q + k" in code
    dot = to_dot(graph)
    labels = re.findall(r"chunk1 -> (\w+) \[label=\" (\w) \[6, 12\]\"\]", dot)
    assert sorted(labels) == [("out", "v"), ("s", "k"), ("s", "q")]
    checked = check_text(SPLIT)
    (row,) = [r for r in checked.report.layers if r.kind == "Chunk"]
    assert [(t.name, t.shape) for t in row.outputs] == [(n, [6, 12]) for n in "qkv"]
    assert (row.macs, row.params, row.activations_bytes) == (0, 0, 0)
    table = render_table(checked.report)
    assert re.search(r"^chunk1\s+Chunk\(3\)\s+q \[6, 12\]", table, re.M)
    assert re.search(r"^\s+k \[6, 12\]$", table, re.M)


TWO_OUTPUTS = """block Split(d: int) {
    h = Linear(2 * d)
    a, b = Chunk(2) <- h
    g = SiLU <- a
    output g, b
}
block Pair(d: int) <- x, y {
    x2 = Linear(d) <- y
    y2 = Add <- x, y
    output x2, y2
}
model M {
    input x: float[6, 8]
    g, b = Split(8)
    m = Mul <- g, b
    p, q = Pair(8) * 3 <- m, x
    r, s = Pair(8) * 0 <- p, q
    output r, s
}
"""


def test_blocks_of_two_outputs_return_tuples_and_repeat_one_to_one() -> None:
    """Each copy of a repetition reads the copy before's two outputs, in order; zero copies
    pass the inputs on."""
    spec = dlspec.load_text(TWO_OUTPUTS)
    code = spec.code
    assert "def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:" in code
    assert "        return g, b\n" in code and "        return x2, y2\n" in code
    for line in [
        "g, b = self.split1(x)  # 2 x (B, 6, 8)",
        "p, q = self.pair1[0](m, x)",
        "p, q = self.pair1[1](p, q)",
        "p, q = self.pair1[2](p, q)",
        "r, s = p, q",
    ]:
        assert f"        {line}" in code
    model = spec.to_torch()
    x = torch.randn(2, 6, 8)
    g, b = model.split1(x)
    p, q = g * b, x
    for pair in model.pair1:
        p, q = pair(p, q)
    r, s = model(x)
    assert torch.equal(r, p) and torch.equal(s, q)
    steps = {step.name: step for step in spec.graph.steps}
    assert [t.name for t in steps["pair1"].outputs] == ["p", "q"]
    assert [t.name for t in steps["pair1"].body.outputs] == ["2.x2", "2.y2"]
    assert [t.name for t in steps["pair2"].body.outputs] == ["p", "q"]
    assert ("input/x", "pair1.0.x2") in dataflow(spec.graph)
    assert ("pair1.2.y2", "output/s") in dataflow(spec.graph)


GATED = ROOT / "docs" / "examples" / "gated.dl"


def test_gated_example_agrees_with_torch_and_onnx_runtime() -> None:
    """The README's example of several outputs: counts, shapes and code against torch, and
    its export verified by ONNX Runtime."""
    spec = dlspec.load(GATED)
    model = spec.to_torch()
    assert sum(p.numel() for p in model.parameters()) == spec.report.total_params == 24_838
    logits, value = model(torch.randn(3, 16, 32))
    assert (tuple(logits.shape), tuple(value.shape)) == ((3, 5), (3, 1))
    code = spec.code
    assert "gate, up = x.chunk(2, dim=-1)" in code
    assert "logits, value = self.heads1(x)  # (B, classes), (B, 1)" in code
    result = export_onnx(model, spec.graph, device="cpu")
    assert result.comparisons and all(c.passed for c in result.comparisons)
    proto = onnx.load_from_string(result.data)
    assert [o.name for o in proto.graph.output] == ["logits", "value"]


# a repetition's alike copies, held once ---------------------------------------------------

DEEP = """block Block(d: int) {
    residual {
        Linear(d)
        GELU
    }
}
model Deep(d: int = 8, layers: int = 100000) {
    input x: float[d]
    blocks = Block(d) * layers
    head = Linear(2)
}
"""


def torch_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_a_hundred_thousand_alike_copies_check_as_one() -> None:
    # the per-block figure from torch: two builds of a few copies
    two, three = (torch_params(dlspec.load_text(DEEP, layers=n).to_torch()) for n in (2, 3))
    block, head = three - two, two - 2 * (three - two)
    checked = check_text(DEEP)
    assert checked.ok and checked.graph is not None, checked.report.diagnostics
    report = checked.report
    assert report.total_params == head + 100_000 * block
    # the IR holds the one copy the analysis built, standing for all of them
    (blocks,) = [s for s in checked.graph.steps if s.name == "blocks"]
    assert [(run.step.path, run.times) for run in blocks.runs()] == [("blocks.0", 100_000)]
    assert "block Block(d=8) <- input  params=72  @9:14  (x 100000: copies 0-99999 alike)" in (
        describe(checked.graph)
    )
    # figures multiply: activations grow by one copy's bytes per copy
    small = [check_text(DEEP, overrides={"layers": str(n)}).report for n in (2, 3)]
    assert report.memory and small[0].memory and small[1].memory
    per_copy = small[1].memory.activations_bytes - small[0].memory.activations_bytes
    assert report.memory.activations_bytes == small[0].memory.activations_bytes + 99_998 * per_copy
    # the table folds the copies into one row group
    table = render_table(report)
    assert re.search(r"^  0-99999 +Block, each of 100000 +\[8\] +72 +72$", table, re.M), table
    assert len(report.layers) == 6  # blocks, its copy, residual, Linear, GELU, head


def test_copies_derived_from_the_compact_form_are_the_expanded_ones() -> None:
    """Copies after the analyzed ones get their own names, paths and inputs, as the
    analysis would have made them: the generated module's ``named_modules()`` and the
    IR's dataflow agree."""
    spec = dlspec.load_text(DEEP, layers=4)
    (blocks,) = [s for s in spec.graph.steps if s.name == "blocks"]
    assert [c.path for c in blocks.children] == [f"blocks.{i}" for i in range(4)]
    assert [[t.name for t in c.inputs] for c in blocks.children] == [["input"], ["0"], ["1"], ["2"]]
    leaves = {leaf.path for leaf in spec.graph.leaves()}
    modules = {name for name, m in spec.to_torch().named_modules() if not list(m.children())}
    assert leaves == modules
    assert ("add/blocks.2.residual1", "blocks.3.residual1.linear1") in dataflow(spec.graph)
