"""`dlspec draw --format html`: the interactive viewer. Its data agrees with `dlspec check
--format json` and the IR's edges; the page needs no network and no Graphviz; and, in headless
Chromium, blocks start closed, open in place, search highlights, and a click shows the layer's
figures."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

from dlspec.analysis.check import check_file
from dlspec.analysis.graph import dataflow
from dlspec.analysis.report import LayerRow, expanded
from dlspec.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def check_json(spec: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["check", str(spec), "--format", "json"]) in (0, 1)
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    return report


def draw_html(spec: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["draw", str(spec), "--format", "html", "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote {out}\n"
    return out.read_text(encoding="utf-8")


def page_data(page: str) -> dict[str, Any]:
    found = re.search(r'<script type="application/json" id="model-data">(.*?)</script>', page, re.S)
    assert found is not None
    data: dict[str, Any] = json.loads(found.group(1))
    return data


@pytest.mark.parametrize("name", ["tiny_gpt", "zoo/unet", "zoo/densenet121", "resnet_block"])
def test_the_page_holds_the_check_report_and_the_irs_edges(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = ROOT / "specs" / f"{name}.dl"
    report = check_json(spec, capsys)
    data = page_data(draw_html(spec, tmp_path / "model.html", capsys))
    # the page shows every module, a repetition's alike copies each on its own
    rows = {r.name: r.model_dump() for r in expanded([LayerRow(**r) for r in report["layers"]])}
    figures = {n["id"]: n["row"] for n in data["nodes"] if "row" in n}
    assert figures.keys() == rows.keys()
    for path, row in rows.items():
        shown = figures[path]
        for field in ("params", "buffers", "macs", "macs_formula", "label", "line"):
            assert shown[field] == row[field], (path, field)
        assert shown["saved"] == row["activations_bytes"]
    assert data["model"]["params"] == report["trainable_params"]
    assert data["model"]["saved"] == report["memory"]["activations_bytes"]
    graph = check_file(spec).graph
    assert graph is not None
    assert {(a, b) for a, b, _ in data["edges"]} == dataflow(graph)
    ids = {n["id"] for n in data["nodes"]}
    assert all(n["parent"] is None or n["parent"] in ids for n in data["nodes"])


def test_the_page_needs_no_network_and_no_graphviz(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` to be found
    monkeypatch.chdir(tmp_path)
    assert main(["draw", str(ROOT / "specs" / "mlp.dl"), "--format", "html"]) == 0
    assert capsys.readouterr().out == "wrote mlp.html\n"
    page = (tmp_path / "mlp.html").read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "</script>" not in page_data(page)["model"]["name"]


def test_a_script_end_in_the_spec_cannot_close_the_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "m.dl"
    spec.write_text(
        "model M {\n    input x: float[4]\n    fc = Linear(2)  # </script><script>alert(1)\n}\n"
    )
    page = draw_html(spec, tmp_path / "m.html", capsys)
    assert page.count("</script>") == 2  # the data's and the program's
    fc = next(n for n in page_data(page)["nodes"] if n["id"] == "fc")
    assert fc["source"].endswith("# </script><script>alert(1)")


def test_format_and_out_must_agree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "a.svg"
    assert main(["draw", str(ROOT / "specs" / "mlp.dl"), "--format", "html", "-o", str(out)]) == 2
    assert "--format html but --out" in capsys.readouterr().err
    assert not out.exists()


# In a real browser --------------------------------------------------------------------------


def browser() -> Any:
    """Headless Chromium (Debian's package, which `make install` installs) driven by
    playwright; a machine without them skips, except in CI, where they must be there."""
    if os.environ.get("CI"):
        assert CHROMIUM, "CI must have Chromium: `make install` installs it"
    playwright = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium, or `make install`)")
    return playwright.sync_playwright()


def open_viewer(chromium: Any, page_path: Path) -> Any:
    page = chromium.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(page_path.as_uri())
    page.wait_for_selector("body[data-ready=true]", timeout=20_000)
    page.errors = errors
    return page


def shown(page: Any) -> set[str]:
    return set(page.eval_on_selector_all(".node", "nodes => nodes.map(n => n.dataset.id)"))


@pytest.mark.parametrize(
    ("name", "block", "inside", "layer"),
    [
        ("llama2_7b", "layers", "layers.0", "layers.0.residual1.self_attn.q_proj"),
        ("unet", "down2", "down2.conv", "down2.conv.conv2d1"),
    ],
)
def test_the_viewer_in_chromium(
    name: str,
    block: str,
    inside: str,
    layer: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = ROOT / "specs" / "zoo" / f"{name}.dl"
    rows = {row["name"]: row for row in check_json(spec, capsys)["layers"]}
    page_path = tmp_path / f"{name}.html"
    data = page_data(draw_html(spec, page_path, capsys))
    containers = {n["id"] for n in data["nodes"] if n["kind"] in ("block", "repeat")}
    with browser() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = open_viewer(chromium, page_path)
        # blocks and repetitions start closed: no layer inside one is drawn
        top = shown(page)
        assert block in top
        assert not any(i.startswith(c + ".") for i in top for c in containers)
        page.screenshot(path=str(tmp_path / f"{name}-closed.png"))
        # a double click opens a block in place; what it holds is drawn, itself as a frame
        page.dblclick(f'.node[data-id="{block}"]')
        opened = shown(page)
        assert block not in opened and inside in opened
        assert page.locator(f'.frame[data-id="{block}"]').count() == 1
        while layer not in shown(page):
            closed = [c for c in shown(page) if layer.startswith(c + ".")]
            page.dblclick(f'.node[data-id="{closed[0]}"]')
        # a click shows the layer's row: the figures `dlspec check --format json` prints
        page.click(f'.node[data-id="{layer}"]')
        assert page.text_content("#panel h2") == layer
        for field in ("params", "macs"):
            value = page.get_attribute(f'#panel td[data-field="{field}"]', "data-value")
            assert value == str(rows[layer][field])
        assert page.locator(f'.node.selected[data-id="{layer}"]').count() == 1
        # searching a name highlights its box, and the closed blocks that hold it
        leaf = layer.rsplit(".", 1)[1]
        page.fill("#search", leaf)
        assert page.locator(f'.node.match[data-id="{layer}"]').count() == 1
        copies = [i for i in shown(page) if i.startswith(block + ".") and i != inside]
        if copies:  # the other copies of a repetition hold their own match
            assert page.locator(".node.contains").count() >= 1
        page.screenshot(path=str(tmp_path / f"{name}-open.png"))
        # a frame's title closes it again
        page.click(f'.frame[data-id="{block}"] .title')
        assert shown(page) == top
        # a search finds what closed blocks hold, marks them, and Enter opens them
        page.fill("#search", "")
        page.fill("#search", leaf)
        assert page.locator(f'.node.contains[data-id="{block}"]').count() == 1
        page.press("#search", "Enter")
        assert page.locator(f'.node.match[data-id="{layer}"]').count() == 1
        assert page.errors == []
        chromium.close()
    assert (tmp_path / f"{name}-open.png").stat().st_size > 10_000


def test_the_page_starts_as_expand_and_open_say(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, out = ROOT / "specs" / "vgg_block.dl", tmp_path / "v.html"
    assert page_data(draw_html(spec, out, capsys))["open"] == {"all": False, "paths": []}
    assert main(["draw", str(spec), "-o", str(out), "--open", "stage1.convs.0"]) == 0
    assert page_data(out.read_text())["open"] == {"all": False, "paths": ["stage1.convs.0"]}
    assert main(["draw", str(spec), "-o", str(out), "--expand"]) == 0
    assert page_data(out.read_text())["open"]["all"] is True


def test_a_spec_with_errors_is_drawn_as_far_as_it_analyzes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The viewer keeps the figures of the statements before the error (those of the spec
    once fixed), says the error, and exits 1; the static formats draw nothing."""
    text = (ROOT / "specs" / "cnn.dl").read_text()
    broken = tmp_path / "broken.dl"
    broken.write_text(text.replace("conv3 = Conv2d(128, kernel=3", "conv3 = Conv2d(128, kernel=99"))
    page = tmp_path / "broken.html"
    assert main(["draw", str(broken), "--format", "html", "-o", str(page)]) == 1
    captured = capsys.readouterr()
    assert "error[E402]" in captured.err and captured.out == f"wrote {page}\n"
    data = page_data(page.read_text())
    assert len(data["errors"]) == 1 and "error[E402]: conv3" in data["errors"][0]
    fixed = {r["name"]: r for r in check_json(ROOT / "specs" / "cnn.dl", capsys)["layers"]}
    shown = {n["id"]: n["row"] for n in data["nodes"] if "row" in n}
    assert list(shown) == ["conv1", "relu1", "conv2", "relu2", "pool1"]
    for path, row in shown.items():
        assert (row["params"], row["macs"]) == (fixed[path]["params"], fixed[path]["macs"])
    assert main(["draw", str(broken), "-o", str(tmp_path / "broken.dot")]) == 1
    assert not (tmp_path / "broken.dot").exists()
    with browser() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        viewer = open_viewer(chromium, page)
        assert viewer.is_visible("#errors") and "1 error" in viewer.text_content("#errors summary")
        assert shown.keys() <= set(
            viewer.eval_on_selector_all(".node", "n => n.map(e => e.dataset.id)")
        )
        assert viewer.errors == []
        chromium.close()
