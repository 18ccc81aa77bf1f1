"""`dlspec check`: golden reports for every spec, MY_NET's numbers, diagnostics, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SPECS, assert_golden
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlspec.analysis.check import check_file, check_text
from dlspec.analysis.report import expanded
from dlspec.cli import main
from dlspec.diagnostics import CODES
from dlspec.docs import manual_pages

ERRORS = sorted((ROOT / "tests" / "errors").glob("*.dl"))
GOLDEN = ROOT / "tests" / "golden" / "check"


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _in_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # paths in reports and golden files are relative to the repo


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_golden_table_and_json(spec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rel = str(spec.relative_to(ROOT))
    code, out, err = run_cli(capsys, "check", rel)
    assert_golden(GOLDEN / f"{spec.stem}.txt", f"exit {code}\n{out}{err}")
    code_json, out_json, _ = run_cli(capsys, "check", rel, "--format", "json")
    assert code_json == code
    assert_golden(GOLDEN / f"{spec.stem}.json", out_json)


def test_my_net_numbers() -> None:
    report = check_file("specs/cnn.dl").report
    params = {row.name: row.params for row in report.layers}
    assert params["conv1"] == 896
    assert params["conv2"] == 18_496
    assert params["conv3"] == 73_856
    assert params["fc1"] == 9_437_696
    assert params["fc2"] == 5_130
    assert report.total_params == report.trainable_params == 9_536_074
    assert report.total_macs == 96_663_050  # torchinfo: 96.66M (oracle in test_codegen)
    assert [r.output_shape for r in report.layers if r.name == "pool1"] == [[64, 24, 24]]


def test_set_overrides_num_classes() -> None:
    report = check_file("specs/cnn.dl", {"num_classes": "43"}).report
    fc2 = next(row for row in report.layers if row.name == "fc2")
    assert fc2.params == 22_059
    assert report.total_params == 9_553_003


def test_seed_prose_claim_is_caught(capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run_cli(capsys, "check", "specs/seed_prose.dl")
    assert code == 1
    assert "error[E301]: fc1 was expected to have 3,221,504 parameters" in err
    assert "has 18,874,880" in err
    assert "weight [512 x 36,864] = 18,874,368 + bias [512] = 512 = 18,874,880" in err
    assert "^^^" in err  # the caret under the expectation
    # the two correct claims pass
    assert "conv1 was expected" not in err and "conv2 was expected" not in err


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_leaf_params_sum_to_total(spec: Path) -> None:
    report = check_file(spec).report
    if report.model is None:
        pytest.skip("spec does not analyze")
    # a folded row stands for its copies: expanded, a row per layer
    leaves = [r for r in expanded(report.layers) if not r.container]
    assert sum(r.params for r in leaves) == report.trainable_params
    assert sum(r.buffers for r in leaves) == report.buffers
    assert sum(r.macs for r in leaves) == report.total_macs


def test_json_schema_fields(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run_cli(capsys, "check", "specs/cnn.dl", "--format", "json", "--batch", "64")
    data = json.loads(out)
    for key in ("model", "layers", "total_params", "trainable_params", "total_macs", "diagnostics"):
        assert key in data
    assert data["schema_version"] == 2
    assert set(data["layers"][0]) >= {"name", "kind", "output_shape", "params", "macs"}
    assert set(data["diagnostics"][0]) >= {"severity", "code", "message", "line", "column"}
    assert data["memory"]["batch"] == 64


@pytest.mark.parametrize("spec", ERRORS, ids=lambda p: p.stem)
def test_error_cases(spec: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "check", str(spec.relative_to(ROOT)))
    assert_golden(spec.with_suffix(".expected"), f"exit {code}\n{err}")
    assert "Traceback" not in err


def test_every_code_is_documented_and_used_codes_exist() -> None:
    manual = "".join(page.read_text(encoding="utf-8") for page in manual_pages(ROOT))
    for code in CODES:
        assert code in manual, f"{code} is not documented in the manual"
    for expected in (ROOT / "tests" / "errors").glob("*.expected"):
        for token in expected.read_text().split("["):
            code = token[:4]
            if token[4:5] == "]" and code[:1] in "EW" and code[1:].isdigit():
                assert code in CODES


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["check", "specs/nope.dl"], 2, "no such file: specs/nope.dl"),
        (["check", "specs"], 2, "is a directory"),
        (["check", "specs/cnn.dl", "--set", "num_clases=3"], 2, "did you mean num_classes?"),
        (["check", "specs/cnn.dl", "--set", "num_classes=ten"], 2, "expected a whole number"),
        (["check", "specs/cnn.dl", "--model", "Other"], 2, "no model of that name"),
    ],
)
def test_usage_errors(
    args: list[str], code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    got, _, err = run_cli(capsys, *args)
    assert got == code
    assert message in err


@pytest.mark.parametrize(
    "args", [["check"], ["check", "specs/cnn.dl", "--set", "oops"], ["check", "x", "--batch", "0"]]
)
def test_argparse_usage_exit_2(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2


def test_huge_layer_is_reported_not_allocated() -> None:
    report = check_file("tests/errors/huge.dl").report
    assert report.total_params == 1_000_001_000_000
    assert report.memory is not None and report.memory.parameters_bytes == 4_000_004_000_000
    assert [d.code for d in report.diagnostics] == ["W505"]


@pytest.mark.parametrize(
    "unneeded",
    [
        ("torch", "onnx", "onnxruntime"),
        # its records (layer arguments, the train section, diagnostics, the report) are
        # validated by pydantic-core alone, without BaseModel's machinery (dlspec.validation)
        ("pydantic",),
    ],
)
def test_check_never_imports(unneeded: tuple[str, ...]) -> None:
    code = (
        "import sys; from dlspec.cli import main; "
        "rc = main(['check', '--format', 'json', 'specs/cnn.dl', 'specs/diffusion.dl']); "
        f"sys.exit(3 if any(m in sys.modules for m in {unneeded!r}) else rc)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True)
    assert result.returncode == 0, result.stderr.decode()


def test_python_m_dlspec() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dlspec", "check", "specs/mlp.dl"], cwd=ROOT, capture_output=True
    )
    assert result.returncode == 0
    assert b"MLP" in result.stdout


SOURCE = (ROOT / "specs" / "cnn.dl").read_text()
FRAGMENTS = ["(", ")", "{", "}", "=", "*", ",", "<-", "expect", "[", "]", "-1", "0", "'x'", "\n"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.integers(0, len(SOURCE)), st.integers(0, 8), st.sampled_from([*FRAGMENTS, "", "Q"])
        ),
        min_size=1,
        max_size=4,
    )
)
def test_broken_input_gives_diagnostics_never_a_crash(edits: list[tuple[int, int, str]]) -> None:
    text = SOURCE
    for pos, cut, insert in edits:
        text = text[:pos] + insert + text[pos + cut :]
    checked = check_text(text, "mutant.dl")
    for diag in checked.report.diagnostics:
        assert diag.code in CODES
        diag.render("mutant.dl", text)  # renders without error


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200))
def test_random_text_never_crashes(text: str) -> None:
    checked = check_text(text, "random.dl")
    assert checked.report.ok == (checked.graph is not None)


def test_huge_and_non_utf8_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = tmp_path / "big.dl"
    big.write_text("# padding\n" * 500_000)
    code, _, err = run_cli(capsys, "check", str(big))
    assert code == 1 and "error[E004]" in err and "5,000,000 bytes" in err
    latin = tmp_path / "latin.dl"
    latin.write_bytes("model Caf\xe9 {}".encode("latin-1"))
    code, _, err = run_cli(capsys, "check", str(latin))
    assert code == 1 and "error[E003]" in err and "not UTF-8" in err
