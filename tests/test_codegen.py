"""The generated PyTorch code (``dlspec.backends.torch_codegen``) and the Python API
(``dlspec.load``).

* Golden: the code generated for every shipped spec that checks equals
  ``tests/golden/codegen/<spec>.py`` byte for byte. After an intended change, rewrite the files
  with ``DLSPEC_REGEN_GOLDEN=1 .venv/bin/pytest tests/test_codegen.py`` and review the diff.
* Oracle: the module built from the generated code has the report's output shapes, parameter
  and buffer counts (in total and per layer) and exactly the analyzer's tensor names; torchinfo
  counts MY_NET's MACs as the report does.
* Clean and safe: the code is valid Python importing only torch, passes ``ruff check`` and
  ``ruff format --check`` (the project's settings), and spec text never becomes code.
"""

from __future__ import annotations

import ast
import math
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import ROOT, SPECS, assert_golden
from hypothesis import given
from hypothesis import strategies as st

import dlspec
from dlspec.analysis.check import check_file, program_graph
from dlspec.analysis.report import expanded
from dlspec.backends.torch_codegen import generate, literal

GOLDEN = ROOT / "tests" / "golden" / "codegen"
RUFF = Path(sys.executable).with_name("ruff")
BATCH = 2

CHECKED = {path.stem: check_file(path) for path in SPECS}
GOOD = [path for path in SPECS if CHECKED[path.stem].ok]

# Specs that exercise what the shipped ones do not: tensors read by name, merges, a block
# reading its input by name, repetitions of a module-less layer, an input declared late,
# several outputs, residuals repeated, a tied weight, and names long enough to wrap lines.
EXTRA = {
    "branches": """
block Gate(width: int) {
    x = Linear(width)
    gate = Sigmoid <- x
    mixed = Add <- x, gate, input
}
model Branches(width: int = 16, T: dim = 8) {
    input features: float[T, 16]
    stack = Linear(width) * 3
    shaped = Reshape(-1, 16) * 2
    gated = Gate(width) * 2
    left = Linear(width)
    right = Linear(width) <- gated
    both = Concat <- left, right, stack
    input extra: float[4]
    e = Linear(3)
    output both, e, right
}
""",
    "residuals": """
model Residuals {
    input x: float[8]
    emb = Linear(8)
    r = residual {
        a = Linear(8)
        ReLU
        b = Linear(8) <- a
        c = Add <- a, b, input
    } * 2
    res = residual { Linear(4) BatchNorm1d } shortcut { Linear(4) }
    head = Linear(8, bias=false) <- r
    tied = Linear(8, bias=false, tie="head")
}
""",
    "long_names": """
model LongNames(width: int = 512) {
    input first_input_with_a_long_name: float[3, 64, 64]
    input second_input_with_a_long_name: float[3, 64, 64]
    convolution_over_the_first_input = Conv2d(width, kernel=3, stride=2, padding=1,
        bias=false, padding_mode="reflect") <- first_input_with_a_long_name
    convolution_over_the_second_input = Conv2d(width, kernel=3, stride=2, padding=1,
        bias=false, padding_mode="reflect") <- second_input_with_a_long_name
    sum_of_both_convolutions_of_inputs = Add <- convolution_over_the_first_input,
        convolution_over_the_second_input
    deep = Conv2d(width, kernel=3, padding=1, dilation=1, bias=false, padding_mode="reflect") * 2
    output sum_of_both_convolutions_of_inputs, convolution_over_the_first_input, deep
}
""",
}


def _random_inputs(spec: dlspec.Spec) -> list[torch.Tensor]:
    return [
        torch.randint(0, 4, (BATCH, *i.shape_value))
        if i.dtype == "long"
        else torch.randn(BATCH, *i.shape_value)
        for i in spec.report.inputs
    ]


def _ruff(command: str, code: str) -> subprocess.CompletedProcess[str]:
    """Run ``ruff check`` or ``ruff format --diff`` on ``code`` with the project's settings."""
    options = ["--diff"] if command == "format" else []
    return subprocess.run(
        [str(RUFF), command, *options, "--stdin-filename", "model.py", "-"],
        input=code,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )


CASES = [p.stem for p in GOOD] + list(EXTRA)


def _case(name: str) -> dlspec.Spec:
    """A shipped spec (by file stem) or one of EXTRA, loaded."""
    if name in EXTRA:
        return dlspec.load_text(EXTRA[name], f"<{name}>")
    return dlspec.load(ROOT / "specs" / f"{name}.dl")


# golden -------------------------------------------------------------------------------------


ZOO = sorted((ROOT / "specs" / "zoo").glob("*.dl"))


@pytest.mark.parametrize("path", GOOD + ZOO, ids=lambda p: p.stem)
def test_generated_code_matches_golden(path: Path) -> None:
    """The generated model.py of every spec and zoo model, read as a PyTorch engineer would
    read torchvision's resnet.py: classes as functions of their arguments."""
    graph = program_graph(path.read_text())
    name = path.relative_to(ROOT).as_posix()
    assert_golden(GOLDEN / f"{path.stem}.py", generate(graph, name))


def test_every_shipped_spec_but_seed_prose_generates() -> None:
    assert [p.stem for p in SPECS if p not in GOOD] == ["seed_prose"]


# oracle -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_generated_module_agrees_with_the_report(case: str) -> None:
    spec = _case(case)
    model, report, graph = spec.to_torch().eval(), spec.report, spec.graph
    with torch.no_grad():
        outputs = model(*_random_inputs(spec))
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    assert [list(y.shape) for y in outputs] == [[BATCH, *o.shape_value] for o in report.outputs]

    assert (
        sum(p.numel() for p in model.parameters()) == report.total_params == report.trainable_params
    )
    assert sum(b.numel() for b in model.buffers()) == report.buffers
    leaves = graph.leaves()
    weights = {f"{n.path}.{w}" for n in leaves for w in n.weights if w not in n.tied}
    assert set(dict(model.named_parameters())) == weights
    assert set(dict(model.named_buffers())) == {f"{n.path}.{b}" for n in leaves for b in n.buffers}

    parameters = dict(model.named_parameters())
    for row in expanded(report.layers):  # a row per layer, each copy of a repetition too
        if not row.container:
            under = [p for name, p in parameters.items() if name.startswith(f"{row.name}.")]
            assert sum(p.numel() for p in under) == row.params, row.name


@pytest.mark.parametrize("case", CASES)
def test_leaf_params_sum_to_the_total(case: str) -> None:
    report = _case(case).report
    leaves = [row for row in expanded(report.layers) if not row.container]
    assert sum(row.params for row in leaves) == report.trainable_params
    assert sum(row.buffers for row in leaves) == report.buffers


def test_torchinfo_counts_my_net_like_the_report() -> None:
    torchinfo = pytest.importorskip("torchinfo")
    spec = dlspec.load(ROOT / "specs" / "cnn.dl")
    summary = torchinfo.summary(spec.to_torch(), input_size=(1, 3, 48, 48), verbose=0)
    assert summary.total_mult_adds == spec.report.total_macs == 96_663_050
    assert summary.total_params == spec.report.total_params


def test_tied_weights_are_shared() -> None:
    model = _case("residuals").to_torch()
    assert model.tied.weight is model.head.weight
    assert "self.tied.weight = self.head.weight" in _case("residuals").code


# clean code ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_generated_code_is_clean_python_importing_only_torch(case: str) -> None:
    code = _case(case).code
    tree = ast.parse(code)
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert imported and all(m == "torch" or m.startswith("torch.") for m in imported)
    if not RUFF.exists():
        pytest.skip("ruff is not installed next to this Python")
    for command in ("check", "format"):
        result = _ruff(command, code)
        assert result.returncode == 0, f"ruff {command}:\n{result.stdout}{result.stderr}"


def test_generated_code_reads_like_hand_written_code() -> None:
    code = dlspec.load(ROOT / "specs" / "cnn.dl").code
    assert code.startswith('"""Generated by dlspec 0.1.0 from ')
    assert "(num_classes=10)." in code.splitlines()[0]
    assert "class MyNet(nn.Module):" in code
    assert "        x = self.pool1(x)  # (B, 64, 24, 24)\n" in code
    assert "        x = self.relu1(x)\n" in code  # no comment where the shape stays
    gpt = dlspec.load(ROOT / "specs" / "tiny_gpt.dl").code
    assert "x = self.tok_emb(tokens)  # (B, T, d)" in gpt


def test_one_class_per_block_definition_with_its_parameters() -> None:
    spec = dlspec.load_text(
        """
block Pair(width: int) { Linear(width) ReLU }
block Pair2 { ReLU }
model M {
    input x: float[8]
    a = Pair(8)
    b = Pair(8)
    c = Pair(4)
    d = Pair2
}
"""
    )
    code = spec.code
    assert "def __init__(self, in_features: int, width: int) -> None:" in code
    assert "self.linear1 = nn.Linear(in_features, width)" in code
    assert "self.a = Pair(8, 8)" in code and "self.c = Pair(8, 4)" in code
    assert "self.d = Pair2()" in code  # the spec's own block of that name
    assert code.count("class Pair") == 2


def test_uses_that_differ_in_forward_sizes_share_one_class() -> None:
    """A size in forward's code is the class's argument, kept as an attribute, so uses with
    other values are one class (they were a class each when sizes were numbers)."""
    spec = dlspec.load_text(
        """
block Shape(n: int) { Reshape(n, 4 // n) }
model M {
    input x: float[4]
    a = Shape(2)
    b = Shape(4)
}
"""
    )
    code = spec.code
    assert "class Shape(nn.Module):" in code and "class Shape2" not in code
    assert "x = x.reshape(x.shape[0], self.n, 4 // self.n)  # (B, n, 4 // n)" in code
    assert "self.a = Shape(2)" in code and "self.b = Shape(4)" in code


def test_repetitions_are_loops_and_model_parameters_constructor_arguments() -> None:
    code = dlspec.load(ROOT / "specs" / "vgg_block.dl").code
    assert "def __init__(self, num_classes: int = 10, width: int = 32) -> None:" in code
    assert (
        "*[ConvBNReLU(in_channels if i == 0 else channels, channels) for i in range(depth)]" in code
    )
    assert code.count("class ConvBNReLU") == 1 and code.count("class Stage") == 1
    module = types.ModuleType("generated")
    exec(compile(code, "<vgg>", "exec"), module.__dict__)
    wide = module.VGGLike(num_classes=7, width=8)
    reference = dlspec.load(ROOT / "specs" / "vgg_block.dl", num_classes=7, width=8).to_torch()
    shapes = {k: v.shape for k, v in reference.state_dict().items()}
    assert {k: v.shape for k, v in wide.state_dict().items()} == shapes


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.stem)
def test_model_constructor_arguments_build_what_set_analyzes(path: Path) -> None:
    """``Model(name=value)`` from the default spec's code builds the module whose shapes the
    analyzer gives for ``--set name=value``: the arguments are wired, not coincidences."""
    spec = dlspec.load(path)
    module = types.ModuleType("generated")
    exec(compile(spec.code, str(path), "exec"), module.__dict__)
    model_class = module.__dict__[spec.graph.name]
    for name, value in spec.graph.arguments.items():
        if isinstance(value, bool) or not isinstance(value, int):
            continue
        try:
            other = dlspec.load(path, **{name: 2 * value})
        except dlspec.SpecError:
            continue  # a value this spec refuses (e.g. heads no longer divide the width)
        with torch.device("meta"):
            built = model_class(**{name: 2 * value})
        shapes = {k: tuple(v.shape) for k, v in built.state_dict().items()}
        expected = {
            f"{leaf.path}.{w}": tuple(shape)
            for leaf in other.graph.leaves()
            for w, shape in [*leaf.weights.items(), *leaf.buffers.items()]
        }
        assert {k: v for k, v in shapes.items() if k in expected} == expected, name


@pytest.mark.parametrize("name", ["resnet_block", "vgg_block", "tiny_gpt"])
def test_checkpoints_of_earlier_versions_still_load(name: str) -> None:
    """The state_dict names and shapes the generated module had before block classes took
    constructor arguments (recorded in tests/golden/state_dict): its checkpoints load."""
    recorded = (GOLDEN.parent / "state_dict" / f"{name}.txt").read_text().splitlines()
    with torch.device("meta"):
        model = dlspec.load(ROOT / "specs" / f"{name}.dl").to_torch()
    assert [f"{k} {list(v.shape)}" for k, v in model.state_dict().items()] == recorded


def test_generation_is_deterministic() -> None:
    first = _case("branches").code
    assert _case("branches").code == first


# safety -------------------------------------------------------------------------------------


def test_spec_text_cannot_inject_code_through_a_string_value() -> None:
    payload = '""" + __import__("os").system("echo pwned") + """\\'
    spec = dlspec.load_text(
        f"model M(tag: str = '{payload}') {{ input x: float[4]  Linear(2) }}", "<evil\n>"
    )
    tree = ast.parse(spec.code)
    docstring = ast.get_docstring(tree)
    assert docstring is not None
    words = " ".join(docstring.split())  # the docstring is wrapped
    assert "from <evil >" in words and f"(tag={payload!r})." in words
    kinds = [type(n).__name__ for n in tree.body]
    assert kinds == ["Expr", "Import", "ImportFrom", "ClassDef"]
    assert not any(isinstance(n, ast.Name) and n.id == "__import__" for n in ast.walk(tree))


@pytest.mark.parametrize(
    "text",
    [
        "model M { input x: float[4]  __import__ = Linear(2) }",
        "model nn { input x: float[4]  Linear(2) }",
        "block super { ReLU } model M { input x: float[4]  s = super }",
        "model M { input x: float[4]  GELU(approximate='tanh\"); import os; (\"') }",
    ],
    ids=["dunder-layer", "model-nn", "block-super", "quoted-string-argument"],
)
def test_names_and_values_that_would_be_code_are_refused(text: str) -> None:
    with pytest.raises(dlspec.SpecError) as caught:
        dlspec.load_text(text)
    assert any(d.code in ("E204", "E207") for d in caught.value.diagnostics)


@given(st.text())
def test_string_literals_round_trip(text: str) -> None:
    written = literal(text)
    assert ast.literal_eval(written) == text
    assert "\n" not in written


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.lists(inner, max_size=3).map(tuple),
        max_leaves=8,
    )
)
def test_literals_evaluate_to_their_value(value: object) -> None:
    back = eval(literal(value), {"__builtins__": {"float": float}})
    assert repr(back) == repr(value) or (
        isinstance(value, float) and math.isnan(value) and math.isnan(back)
    )


def test_literal_refuses_anything_but_plain_data() -> None:
    from dlspec.layers.symbolic import Poly

    for value in (Poly.symbol("T"), {"a": 1}, object()):
        with pytest.raises(TypeError):
            literal(value)


# the API ------------------------------------------------------------------------------------


def test_load_with_overrides() -> None:
    spec = dlspec.load(ROOT / "specs" / "cnn.dl", num_classes=43)
    assert spec.report.parameters["num_classes"] == 43
    assert spec.report.layers[-1].params == (512 + 1) * 43
    assert "(num_classes=43)." in spec.code.splitlines()[0]
    model = spec.to_torch()
    assert model is not spec.to_torch()
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 43)
    mlp = dlspec.load(ROOT / "specs" / "mlp.dl", hidden=32, p=0.5)
    assert mlp.report.parameters == {"hidden": 32, "num_classes": 10, "p": 0.5}


def test_spec_errors_carry_the_diagnostics() -> None:
    with pytest.raises(dlspec.SpecError) as caught:
        dlspec.load(ROOT / "specs" / "seed_prose.dl")
    error = caught.value
    assert [d.code for d in error.diagnostics if d.severity == "error"] == ["E301"]
    assert "seed_prose.dl:11:" in str(error) and "error[E301]" in str(error)
    assert "^^^" in str(error)  # the caret under the offending text
    with pytest.raises(dlspec.SpecError, match="E001"):
        dlspec.load(ROOT / "specs" / "missing.dl")
    with pytest.raises(dlspec.SpecError, match="E211"):
        dlspec.load(ROOT / "specs" / "cnn.dl", num_clases=3)
    with pytest.raises(TypeError, match="num_classes"):
        dlspec.load(ROOT / "specs" / "cnn.dl", num_classes=[3])


def test_tracebacks_show_the_generated_code() -> None:
    model = dlspec.load(ROOT / "specs" / "mlp.dl").to_torch()
    with pytest.raises(RuntimeError) as caught:
        model(torch.randn(2, 3))  # wrong width
    frames = [f for f in caught.traceback if "dlspec model MLP" in str(f.path)]
    assert frames and "self.fc1" in str(frames[0].statement)


def test_import_dlspec_stays_cheap() -> None:
    probe = "import sys, dlspec; print(sorted({'torch', 'lark', 'pydantic'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr
    assert dlspec.load.__module__ == "dlspec.api"
    with pytest.raises(AttributeError):
        dlspec.no_such_name  # noqa: B018
