"""`dlspec draw`: golden DOT for every spec, folding, repetitions, skips, wrapping of long
models, real SVG/PNG rendering, the missing-Graphviz path and bad output paths."""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, SPECS, assert_golden

from dlspec.analysis.check import check_file, check_text
from dlspec.analysis.graph import ModelGraph
from dlspec.backends import graphviz_draw
from dlspec.backends.graphviz_draw import DrawOptions, to_dot
from dlspec.cli import main
from dlspec.commands import draw

GOLDEN = ROOT / "tests" / "golden" / "dot"
HAVE_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAVE_DOT, reason="Graphviz's dot is not installed")

SKIPS = """
model Skips {
    input x: float[3, 16, 16]
    a = Conv2d(8, kernel=3, padding=1)
    ReLU
    b = Conv2d(8, kernel=3, padding=1)
    both = Add <- relu1, b
    ReLU
    cat = Concat(0) <- a, relu2
    Flatten
    fc = Linear(2)
}
"""


def graph_of(text: str) -> ModelGraph:
    checked = check_text(text)
    assert checked.graph is not None, checked.report.diagnostics
    return checked.graph


def spec_graph(name: str) -> ModelGraph:
    graph = check_file(ROOT / "specs" / f"{name}.dl").graph
    assert graph is not None
    return graph


def nodes(dot: str) -> set[str]:
    """The ids of the drawn boxes."""
    return {
        m.group(1) or m.group(2)
        for m in re.finditer(r'^\t+(?:"([^"]+)"|(\S+)) \[label=', dot, re.M)
    }


def edge(dot: str, tail: str, head: str) -> str:
    """The attributes of the edge tail -> head (fails when there is none)."""
    quote = lambda name: f'"{name}"' if re.search(r"[^\w]", name) else name  # noqa: E731
    found = re.search(rf"^\t+{re.escape(quote(tail))} -> {re.escape(quote(head))} (.*)$", dot, re.M)
    assert found, f"no edge {tail} -> {head}"
    return found.group(1)


def deep_spec(blocks: int = 32) -> str:
    """A plain stack of `blocks` x (conv, batch norm, ReLU) with pools: over 100 layers."""
    lines = ["model Deep {", "    input x: float[3, 64, 64]"]
    channels = 16
    for i in range(1, blocks + 1):
        if i % 8 == 0:
            lines.append(f"    pool{i} = MaxPool2d(2)")
            channels *= 2
        lines += [
            f"    conv{i} = Conv2d({channels}, kernel=3, padding=1)",
            f"    bn{i} = BatchNorm2d",
            "    ReLU",
        ]
    lines += ["    AdaptiveAvgPool2d(1)", "    Flatten", "    fc = Linear(10)", "}"]
    return "\n".join(lines)


@pytest.fixture(autouse=True)
def _in_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


# golden DOT ---------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_golden_dot(spec: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checked = check_file(spec)
    if checked.graph is None:  # a spec with errors draws nothing and exits 1
        out = tmp_path / "x.svg"
        assert main(["draw", str(spec), "--out", str(out)]) == 1
        assert not out.exists()
        assert "error" in capsys.readouterr().err
        return
    assert_golden(GOLDEN / f"{spec.stem}.dot", to_dot(checked.graph))


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("vgg_block", DrawOptions(detail="high", expand=True)),
        ("resnet_block", DrawOptions(rankdir="LR", expand=True)),
    ],
    ids=["vgg_block-high-expand", "resnet_block-LR-expand"],
)
def test_golden_dot_options(name: str, options: DrawOptions) -> None:
    variant = f"{options.detail}-{options.rankdir}{'-expand' * options.expand}"
    assert_golden(GOLDEN / f"{name}.{variant}.dot", to_dot(spec_graph(name), options))


def test_cli_dot_output_is_the_golden_source(tmp_path: Path) -> None:
    out = tmp_path / "cnn.dot"
    assert main(["draw", "specs/cnn.dl", "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == (GOLDEN / "cnn.dot").read_text(encoding="utf-8")
    options = ["--detail", "high", "--expand", "--rankdir", "TB"]
    assert main(["draw", "specs/vgg_block.dl", "-o", str(out), *options]) == 0
    golden = GOLDEN / "vgg_block.high-TB-expand.dot"
    assert out.read_text(encoding="utf-8") == golden.read_text(encoding="utf-8")


def test_cli_spec_options(tmp_path: Path) -> None:
    out = tmp_path / "cnn.dot"
    assert main(["draw", "specs/cnn.dl", "--set", "num_classes=43", "-o", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "MyNet(num_classes=43)" in text and "<B>fc2</B>  Linear(43)" in text
    assert main(["draw", "specs/cnn.dl", "--model", "Nope", "-o", str(out)]) == 2


# what the boxes say --------------------------------------------------------------------------


def test_low_detail_folds_activations_dropout_and_reshapes() -> None:
    dot = to_dot(spec_graph("cnn"))
    assert "<B>conv1</B>  Conv2d(32, k=3, p=1) + ReLU<BR/>" in dot
    assert "MaxPool2d(2, s=2) + Flatten<BR/>+ Dropout(0.5)" in dot  # wrapped before Dropout
    assert "[32, 48, 48]  ·  896 params" in dot
    assert nodes(dot) == {
        "input/image",
        *("conv1", "conv2", "pool1", "conv3", "pool2", "fc1", "fc2"),
        "output/fc2",
        "/legend",
    }
    assert 'label=" [18432]"' in edge(dot, "pool2", "fc1")  # the shape after the folded layers
    assert "9,536,074 params (9.54M)  ·  96.66M MACs per sample" in dot


def test_high_detail_draws_every_layer_with_macs() -> None:
    dot = to_dot(spec_graph("cnn"), DrawOptions(detail="high"))
    assert {"relu1", "flatten1", "dropout1", "dropout2"} <= nodes(dot)
    assert "<B>conv1</B>  Conv2d(32, k=3, p=1)<BR/>" in dot
    assert "896 params  ·  2.06M MACs" in dot
    assert '"#BBCC33"' in dot  # the activation colour, now drawn


def test_families_have_consistent_colours_and_a_legend() -> None:
    dot = to_dot(spec_graph("resnet_block"), DrawOptions(expand=True))
    for family in ("convolution", "pooling", "dense", "normalization", "merge"):
        assert f'BGCOLOR="{graphviz_draw.FAMILY_COLOURS[family]}"' in dot
        assert f">{family}</FONT>" in dot
    assert ">activation</FONT>" not in dot  # folded away: not in the key
    conv_fills = set(re.findall(r"Conv2d\(.*? fillcolor=\"(#\w+)\"", dot))
    assert conv_fills == {graphviz_draw.FAMILY_COLOURS["convolution"]}
    assert len(set(graphviz_draw.FAMILY_COLOURS.values())) == len(graphviz_draw.FAMILY_COLOURS)


def test_symbolic_shapes_print_as_formulas() -> None:
    dot = to_dot(
        graph_of(
            "model Seq(T: dim = 16) {\n input x: float[T, 64]\n proj = Linear(512)\n"
            " both = Concat(0) <- proj, proj\n}"
        )
    )
    assert 'label=" [T, 512]"' in edge(dot, "proj", "both")
    assert "[2*T, 512]" in dot
    assert "MACs per sample at T=16" in dot


# structure -----------------------------------------------------------------------------------


def test_blocks_and_repetitions_start_closed_as_in_the_viewer() -> None:
    graph = spec_graph("vgg_block")
    dot = to_dot(graph)
    assert "cluster" not in dot
    drawn = {"input/image", "stage1", "stage2", "stage3", "gap", "head", "output/head", "/legend"}
    assert nodes(dot) == drawn
    assert re.search(
        r"stage1 \[label=<<B>stage1</B>  Stage<BR/>.*?10,208 params.*peripheries=2", dot
    )
    assert 'label=" [32, 16, 16]"' in edge(dot, "stage1", "stage2")


def test_open_shows_a_blocks_layers_in_place() -> None:
    graph = spec_graph("vgg_block")
    dot = to_dot(graph, DrawOptions(open=frozenset({"stage1"})))
    assert 'subgraph "cluster/stage1"' in dot and "ConvBNReLU x 2" in dot
    assert {"stage1.convs", "stage1.pool", "stage2"} <= nodes(dot)
    # a repetition opens into its copies; a path deep inside opens what holds it
    dot = to_dot(graph, DrawOptions(open=frozenset({"stage1.convs.1"})))
    assert 'subgraph "cluster/stage1.convs"' in dot
    assert "ConvBNReLU  <B>x 2</B>" in dot
    assert {"stage1.convs.0", "stage1.convs.1.conv", "stage1.pool"} <= nodes(dot)
    assert 'label=" [32, 32, 32]"' in edge(dot, "stage1.convs.0", "stage1.convs.1.conv")


def test_expand_draws_every_repetition() -> None:
    dot = to_dot(spec_graph("vgg_block"), DrawOptions(expand=True))
    drawn = nodes(dot)
    assert {"stage1.convs.0.conv", "stage1.convs.1.conv", "stage3.convs.2.conv"} <= drawn
    assert 'subgraph "cluster/stage1.convs.1"' in dot
    edge(dot, "stage1.convs.0.bn", "stage1.convs.1.conv")


def test_repeated_plain_layer() -> None:
    text = "model R {\n input x: float[8]\n fcs = Linear(16) * 3\n ReLU\n}"
    folded = to_dot(graph_of(text))
    assert "<B>fcs</B>  Linear(16) x 3<BR/>" in folded
    assert "relu1" in nodes(folded)  # nothing folds into a repetition
    expanded = to_dot(graph_of(text), DrawOptions(expand=True))
    assert {"fcs.0", "fcs.1", "fcs.2"} <= nodes(expanded)
    assert 'label=" [16]"' in edge(expanded, "fcs.1", "fcs.2")


def test_residual_edges() -> None:
    dot = to_dot(spec_graph("resnet_block"), DrawOptions(expand=True))
    # identity shortcut: the block's input straight to the add, dashed
    assert "style=dashed" in edge(dot, "stem_bn", "add/layer1.0.residual1")
    edge(dot, "stem_bn", "layer1.0.residual1.conv2d1")
    edge(dot, "layer1.0.residual1.batchnorm2d2", "add/layer1.0.residual1")
    assert "add + ReLU" in dot  # the ReLU after the residual folds into its junction
    # projection shortcut: its own cluster, from the input through it to the add
    assert 'subgraph "cluster/layer2.residual1.shortcut"' in dot
    edge(dot, "add/layer1.1.residual1", "layer2.residual1.shortcut.conv2d1")
    shortcut = edge(dot, "layer2.residual1.shortcut.batchnorm2d1", "add/layer2.residual1")
    assert "style=dashed" in shortcut and "[32, 16, 16]" in shortcut


CHOSEN_SHORTCUT = """
block Block(planes: int) {
    residual {
        Conv2d(planes, kernel=3, padding=1)
        ReLU
    } shortcut {
        if input.shape[0] != planes {
            Conv2d(planes, kernel=1)
        }
    }
}
model M {
    input x: float[8, 6, 6]
    same = Block(8)
    wider = Block(16)
}
"""


def test_a_shortcut_whose_if_chose_nothing_is_an_identity() -> None:
    """``shortcut { if ... }`` that chose its empty branch adds the input itself: the table
    and the diagram say "residual", with no shortcut box, where the other use projects."""
    checked = check_text(CHOSEN_SHORTCUT)
    assert checked.graph is not None
    labels = {row.name: row.label for row in checked.report.layers}
    assert labels["same.residual1"] == "residual"
    assert labels["wider.residual1"] == "residual (projection)"
    dot = to_dot(checked.graph, DrawOptions(expand=True))
    assert 'subgraph "cluster/same.residual1.shortcut"' not in dot
    assert 'subgraph "cluster/wider.residual1.shortcut"' in dot
    assert "<B>residual1</B>  residual  ·  584 params" in dot
    assert "style=dashed" in edge(dot, "input/x", "add/same.residual1")


def test_named_inputs_draw_an_edge_from_each_tensor() -> None:
    dot = to_dot(graph_of(SKIPS))
    edge(dot, "relu1", "both")
    edge(dot, "b", "both")
    edge(dot, "a", "cat")
    edge(dot, "both", "cat")  # relu2 folded into the Add: its edge leaves the junction
    # `a` is used again later, so the ReLU after it keeps its own box
    assert "relu1" in nodes(dot)
    assert "<B>both</B>  Add + ReLU" in dot
    assert "<B>cat</B>  Concat(dim=0) + Flatten" in dot


def test_several_inputs_and_outputs() -> None:
    dot = to_dot(
        graph_of(
            "model Two {\n input x: float[8]\n input y: float[8]\n z = Linear(8) <- y\n"
            " s = Add <- x, z\n output z, s\n}"
        )
    )
    assert {"input/x", "input/y", "output/z", "output/s"} <= nodes(dot)
    assert "<output z>" in dot and "<output s>" in dot
    edge(dot, "z", "output/z")


def test_deterministic() -> None:
    graph = spec_graph("resnet_block")
    assert to_dot(graph) == to_dot(spec_graph("resnet_block")) == to_dot(graph)


# large models --------------------------------------------------------------------------------


def test_long_model_wraps_into_columns() -> None:
    graph = graph_of(deep_spec())
    assert len(graph.leaves()) > 100
    dot = to_dot(graph)
    same_rank = re.search(r"rank=same\n(.*?)\}", dot, re.S)
    assert same_rank
    heads = re.findall(r"-> (\S+) \[style=invis\]", same_rank.group(1))
    assert len(heads) >= 3  # at least 3 more columns (and the key) beside the first
    back_up = [line for line in dot.splitlines() if "constraint=false" in line]
    assert len(back_up) == len(heads) - 1  # one edge from each column to the next
    assert all("xlabel=" in line for line in back_up)
    assert "LR" not in dot
    for i in (1, 16, 32):
        assert f"<B>conv{i}</B>" in dot


@needs_dot
def test_hundred_layer_spec_renders_legibly(tmp_path: Path) -> None:
    spec = tmp_path / "deep.dl"
    spec.write_text(deep_spec(), encoding="utf-8")
    out = tmp_path / "deep.svg"
    assert main(["draw", str(spec), "--out", str(out)]) == 0
    svg = out.read_text(encoding="utf-8")
    size = re.search(r'<svg width="([\d.]+)pt" height="([\d.]+)pt"', svg)
    assert size
    width, height = (float(v) for v in size.groups())
    assert 0.5 < width / height < 2.5, (width, height)  # a page, not a thin strip
    assert height < 1600  # points: boxes stay at reading size on a screen or two
    assert "conv32" in svg and "fc" in svg


# rendering and the command -------------------------------------------------------------------


@needs_dot
def test_renders_svg_and_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    svg, png = tmp_path / "cnn.svg", tmp_path / "cnn.png"
    assert main(["draw", "specs/cnn.dl", "--out", str(svg)]) == 0
    assert main(["draw", "specs/cnn.dl", "-o", str(png), "--rankdir", "LR"]) == 0
    text = svg.read_text(encoding="utf-8")
    assert "<svg" in text and "conv1" in text and "Conv2d(32, k=3, p=1) + ReLU" in text
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert f"wrote {svg}" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn.png", "cnn.svg"]  # no temp files


@needs_dot
def test_default_output_is_the_spec_name_as_svg(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["draw", str(ROOT / "specs" / "mlp.dl")]) == 0
    assert (tmp_path / "mlp.svg").read_text(encoding="utf-8").lstrip().startswith("<?xml")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    draw.configure(parser)
    return parser.parse_args(argv)


def test_missing_dot_writes_the_source_and_says_how_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cnn.png"
    assert draw.run(parse("specs/cnn.dl", "--out", str(out)), find_dot=lambda: None) == 3
    assert not out.exists()
    written = tmp_path / "cnn.dot"
    assert written.read_text(encoding="utf-8") == to_dot(spec_graph("cnn"))
    err = capsys.readouterr().err
    assert "`dot` program is not installed" in err
    assert "apt-get install graphviz" in err and "brew install graphviz" in err
    assert f"dot -Tpng {written} -o {out}" in err


def test_missing_dot_on_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` anywhere
    assert main(["draw", "specs/mlp.dl", "--out", str(tmp_path / "mlp.svg")]) == 3
    assert (tmp_path / "mlp.dot").exists()
    assert "install Graphviz" in capsys.readouterr().err


def test_dot_output_needs_no_graphviz(tmp_path: Path) -> None:
    out = tmp_path / "mlp.dot"
    assert draw.run(parse("specs/mlp.dl", "--out", str(out)), find_dot=lambda: None) == 0
    assert out.read_text(encoding="utf-8").startswith("digraph MLP {")


@pytest.mark.parametrize("out", ["model.jpg", "model", "model.svg.txt"])
def test_bad_extension_is_a_usage_error(out: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["draw", "specs/cnn.dl", "--out", out])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "use one of .svg, .png, .pdf, .dot" in err and "Traceback" not in err


@pytest.mark.parametrize("fmt", ["dot", "svg"])
def test_unwritable_output_is_a_usage_error(
    fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if fmt == "svg" and not HAVE_DOT:
        pytest.skip("Graphviz's dot is not installed")
    out = tmp_path / "no" / "such" / f"dir.{fmt}"
    assert main(["draw", "specs/mlp.dl", "--out", str(out)]) == 2
    assert f"--out {out}: no directory" in capsys.readouterr().err
    (tmp_path / f"taken.{fmt}").mkdir()  # a directory in the way
    assert main(["draw", "specs/mlp.dl", "--out", str(tmp_path / f"taken.{fmt}")]) == 2
    assert list(tmp_path.glob(".*.tmp")) == []


def test_failed_render_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(source: str, fmt: str) -> bytes:
        raise graphviz_draw.RenderError("dot failed: syntax error in line 1")

    monkeypatch.setattr(graphviz_draw, "render", broken)
    out = tmp_path / "mlp.svg"
    out.write_text("previous", encoding="utf-8")
    assert draw.run(parse("specs/mlp.dl", "--out", str(out)), find_dot=lambda: "dot") == 1
    assert out.read_text(encoding="utf-8") == "previous"
    assert "dot failed" in capsys.readouterr().err


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["draw", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "3 Graphviz's `dot` program is not installed" in re.sub(r"\s+", " ", out)
    for option in ("--rankdir", "--detail", "--expand", "--set"):
        assert option in out


def test_cli_open_and_its_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "vgg.dot"
    assert main(["draw", "specs/vgg_block.dl", "-o", str(out), "--open", "stage2.convs"]) == 0
    dot = out.read_text(encoding="utf-8")
    assert 'subgraph "cluster/stage2.convs"' in dot and "stage2.convs.1" in nodes(dot)
    assert "stage1.convs" not in nodes(dot)
    assert main(["draw", "specs/vgg_block.dl", "-o", str(out), "--open", "stage9"]) == 2
    err = capsys.readouterr().err
    assert "--open stage9: no block or repetition has this path (there are: stage1," in err
    assert main(["draw", "specs/mlp.dl", "-o", str(out), "--open", "fc1"]) == 2
    assert "(the model has none)" in capsys.readouterr().err
