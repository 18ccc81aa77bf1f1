"""`dlspec diff A B`: every delta is the difference of the two `dlspec check --format json`
reports; a repetition whose count changed is one row; copies that changed alike are one."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT

from dlspec.analysis.diff import _ranges
from dlspec.analysis.report import LayerRow, expanded
from dlspec.cli import main

FIGURES = ("params", "macs", "activations_bytes")


def run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Any:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def resnet34(tmp_path: Path) -> Path:
    """ResNet-18's spec with ResNet-34's stages: 3, 4, 6 and 3 basic blocks."""
    text = (ROOT / "specs" / "zoo" / "resnet18.dl").read_text()
    for old, new in [
        ("layer1 = BasicBlock(64) * 2", "layer1 = BasicBlock(64) * 3"),
        ("block Stage(planes: int) {", "block Stage(planes: int, n: int) {"),
        ("rest = BasicBlock(planes)", "rest = BasicBlock(planes) * n"),
        ("Stage(128)", "Stage(128, 3)"),
        ("Stage(256)", "Stage(256, 5)"),
        ("Stage(512)", "Stage(512, 2)"),
        ("expect total params == 11_689_512", "expect total params == 21_797_672"),
    ]:
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "resnet34.dl"
    path.write_text(text)
    return path


def llama(tmp_path: Path, kv_heads: int) -> Path:
    text = (ROOT / "specs" / "zoo" / "llama2_7b.dl").read_text()
    text = text.replace("kv_heads: int = 32", f"kv_heads: int = {kv_heads}")
    path = tmp_path / f"llama_kv{kv_heads}.dl"
    path.write_text(re.sub(r"expect total params == \S+", "", text))
    return path


def per_module(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A check report's rows by path, a repetition's alike copies each on its own."""
    rows = expanded([LayerRow(**row) for row in report["layers"]])
    return {row.name: row.model_dump() for row in rows}


def assert_deltas_are_the_reports(
    a: Path, b: Path, capsys: pytest.CaptureFixture[str], sets: list[str]
) -> dict[str, Any]:
    result = run_json(["diff", str(a), str(b), "--format", "json", *sets], capsys)
    ra = run_json(["check", str(a), "--format", "json", *sets], capsys)
    rb = run_json(["check", str(b), "--format", "json", *sets], capsys)
    rows_a, rows_b = per_module(ra), per_module(rb)
    totals = {
        "params": lambda r: r["trainable_params"],
        "macs": lambda r: r["total_macs"],
        "activations_bytes": lambda r: r["memory"]["activations_bytes"],
        "training_adam_bytes": lambda r: r["memory"]["training_adam_bytes"],
    }
    for field, get in totals.items():
        assert result["delta"][field] == get(rb) - get(ra), field
        assert (result["a"][field], result["b"][field]) == (get(ra), get(rb))
    assert result["layers"], "the specs differ"
    for row in result["layers"]:
        copies = _copies(row["path"], rows_b)
        assert row["copies"] == len(copies)
        for path in copies:
            before, after = rows_a.get(path), rows_b.get(path)
            assert (before is None, after is None) == (row["a"] is None, row["b"] is None)
            for field in FIGURES:
                was = before[field] if before else 0
                now = after[field] if after else 0
                assert row["delta"][field] == now - was, (path, field)
    # the outermost rows add up to the totals (what did not change adds nothing)
    for field in ("params", "macs"):
        top = [r for r in result["layers"] if r["depth"] == 0]
        assert sum(r["delta"][field] for r in top) == result["delta"][field]
    return result


def _copies(path: str, rows: dict[str, Any]) -> list[str]:
    """The paths a row stands for: ``layers.*.x`` at each copy in ``rows``, ``layers.[1-3,7]``
    at copies 1, 2, 3 and 7."""
    found = re.search(r"\.(\*|\[[\d,-]+\])(?=\.|$)", path)
    if found is None:
        return [path]
    head, tail = path[: found.start()], path[found.end() :]
    if found.group(1) == "*":
        indices = [i for i in range(len(rows)) if f"{head}.{i}" in rows]
    else:
        indices = []
        for part in found.group(1)[1:-1].split(","):
            first, _, last = part.partition("-")
            indices += range(int(first), int(last or first) + 1)
    return [p for i in indices for p in _copies(f"{head}.{i}{tail}", rows)]


def test_resnet18_against_resnet34_stages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = ROOT / "specs" / "zoo" / "resnet18.dl", resnet34(tmp_path)
    result = assert_deltas_are_the_reports(a, b, capsys, [])
    paths = [r["path"] for r in result["layers"]]
    assert paths == [
        "layer1",
        "layer2",
        "layer2.rest",
        "layer3",
        "layer3.rest",
        "layer4",
        "layer4.rest",
    ]
    assert result["delta"]["params"] == 21_797_672 - 11_689_512
    assert main(["diff", str(a), str(b)]) == 0
    table = capsys.readouterr().out
    assert re.search(r"^layer1 +BasicBlock x 2 -> x 3 +\+73,984 ", table, re.M)
    assert re.search(r"^  layer2\.rest +BasicBlock -> BasicBlock x 3 ", table, re.M)
    assert re.search(r"^params +11,689,512 +21,797,672 +\+10,108,160$", table, re.M)


def test_gqa_heads_in_llama(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Multi-head against grouped-query attention (8 key/value heads): k_proj and v_proj
    shrink in every decoder layer, one row each for all the copies."""
    sets = ["--set", "layers=4", "--set", "d=256", "--set", "ff=688", "--set", "T=64"]
    a, b = llama(tmp_path, 32), llama(tmp_path, 8)
    result = assert_deltas_are_the_reports(a, b, capsys, sets)
    rows = {r["path"]: r for r in result["layers"]}
    k_proj = rows["layers.*.residual1.self_attn.k_proj"]
    assert k_proj["copies"] == 4
    assert k_proj["delta"]["params"] == 256 * (64 - 256)  # d x (kv_heads x head size)
    assert (k_proj["a"]["output_shape"], k_proj["b"]["output_shape"]) == (["T", 256], ["T", 64])
    assert rows["layers"]["delta"]["params"] == 4 * 2 * k_proj["delta"]["params"]
    assert not any("mlp" in path or "layers.0" in path for path in rows)
    assert main(["diff", str(a), str(b), *sets]) == 0
    table = capsys.readouterr().out
    assert "Linear(256) -> Linear(64), each of 4" in table


def test_tiny_gpt_narrower(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    b = tmp_path / "narrow.dl"
    b.write_text(
        (ROOT / "specs" / "tiny_gpt.dl").read_text().replace("d: int = 128", "d: int = 96")
    )
    result = assert_deltas_are_the_reports(ROOT / "specs" / "tiny_gpt.dl", b, capsys, [])
    assert {r["path"] for r in result["layers"]} >= {"tok_emb", "blocks"}


def test_added_removed_and_the_same(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a.dl", tmp_path / "b.dl"
    spec = "model M {{\n input x: float[8]\n fc1 = Linear(16)\n {}\n out = Linear(2)\n}}\n"
    a.write_text(spec.format("ReLU"))
    b.write_text(spec.format("drop = Dropout(0.1)"))
    result = assert_deltas_are_the_reports(a, b, capsys, [])
    assert [(r["path"], r["change"]) for r in result["layers"]][:2] == [
        ("relu1", "removed"),
        ("drop", "added"),
    ]
    assert main(["diff", str(a), str(a)]) == 0
    assert "no layer changed" in capsys.readouterr().out


def test_a_spec_with_errors_gives_its_diagnostics(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.dl"
    bad.write_text("model M {\n input x: float[8]\n fc = Linear(16) expect params == 3\n}\n")
    assert main(["diff", str(ROOT / "specs" / "mlp.dl"), str(bad)]) == 1
    captured = capsys.readouterr()
    assert "bad.dl:3:" in captured.err and "Traceback" not in captured.err
    assert captured.out == ""


def test_copy_ranges() -> None:
    assert _ranges([0]) == "0"
    assert _ranges([1, 2, 3, 7]) == "[1-3,7]"
    assert _ranges([0, 2]) == "[0,2]"
