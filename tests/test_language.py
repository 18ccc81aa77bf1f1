"""The language's functions of several tensors, compile-time choices and shapes in expressions.

Oracles: the generated torch module (a forward pass and its parameter count) agrees with the
analyzer for each feature; the chosen branch of an `if` is the one the arithmetic says; a
repetition threads its first input and hands the others to every copy.
"""

from __future__ import annotations

import pytest
import torch

import dlspec
from dlspec.analysis.check import check_text

DECODER = """
block DecoderLayer(heads: int, ff: int) <- tgt, memory {
    residual {
        self_attn = MultiheadAttention(num_heads=heads, causal=true)
    }
    n1 = LayerNorm
    cross = MultiheadAttention(num_heads=heads) <- n1, memory
    h = Add <- n1, cross
    residual {
        Linear(ff)  ReLU  Linear(input.shape[-1])   # a residual body reads `input`
    }
}

model Seq2Seq(layers: int = 3, T: dim = 5, S: dim = 7) {
    input tgt: float[T, 16]
    input memory: float[S, 16]
    stack = DecoderLayer(4, 32) * layers <- tgt, memory
    torch_stack = TransformerDecoderLayer(16, 4, 32) * 2 <- stack, memory
}
"""


def _forward(spec: dlspec.Spec) -> torch.Tensor:
    model = spec.to_torch().eval()
    inputs = [torch.randn(2, *i.shape_value) for i in spec.report.inputs]
    with torch.no_grad():
        out: torch.Tensor = model(*inputs)
    assert list(out.shape) == [2, *spec.report.outputs[0].shape_value]
    assert sum(p.numel() for p in model.parameters()) == spec.report.total_params
    return out


def test_block_of_two_inputs_repeated_threads_the_first() -> None:
    spec = dlspec.load_text(DECODER)
    layer = 2 * (3 * 16 * 16 + 3 * 16 + 16 * 16 + 16) + 2 * 16 + (16 * 32 + 32 + 32 * 16 + 16)
    torch_layer = layer + 2 * 2 * 16  # torch's layer has three norms, this one one
    assert spec.report.total_params == 3 * layer + 2 * torch_layer
    stack = spec.graph.steps[0]
    copies = stack.children
    assert [[t.name for t in c.inputs] for c in copies] == [
        ["tgt", "memory"],
        ["0", "memory"],
        ["1", "memory"],
    ]
    _forward(spec)
    assert "for layer in self.stack:\n            stack = layer(stack, memory)" in spec.code


@pytest.mark.parametrize(("layers", "count"), [(0, 0), (1, 1)])
def test_repeat_counts_from_zero(layers: int, count: int) -> None:
    spec = dlspec.load_text(DECODER, layers=layers)
    assert len(spec.graph.steps[0].children) == count
    _forward(spec)


def test_arity_diagnostic_names_the_signature() -> None:
    checked = check_text(DECODER.replace("* layers <- tgt, memory", "<- tgt"))
    [diagnostic] = checked.report.diagnostics
    assert diagnostic.code == "E407"
    assert diagnostic.message == "block DecoderLayer takes 2 inputs, got 1 (tgt)"
    assert diagnostic.notes == ["its signature: DecoderLayer(heads: int, ff: int) <- tgt, memory"]


MBCONV = """
block MBConv(out: int, expand: int, stride: int) {
    if expand != 1 {
        Conv2d(input.shape[0] * expand, kernel=1, bias=false)  BatchNorm2d  ReLU6
    }
    dw = Conv2d(input.shape[0] * expand, kernel=3, stride=stride, padding=1,
                groups=input.shape[0] * expand, bias=false)
    project = Conv2d(out, kernel=1, bias=false)
    if stride == 1 and input.shape[0] == out {
        Add <- input, project
    } else if not stride == 1 {
        Identity
    } else {
        Dropout(0.1)
    }
}

model Net {
    input image: float[16, 8, 8]
    same = MBConv(16, 1, 1)
    down = MBConv(24, 6, 2)
    wider = MBConv(32, 6, 1)
}
"""


def test_if_else_and_shapes_choose_per_use() -> None:
    spec = dlspec.load_text(MBCONV)
    kinds = {
        step.name: [c.layer.kind for c in step.children if c.layer is not None]
        for step in spec.graph.steps
    }
    assert kinds == {
        "same": ["Conv2d", "Conv2d", "Add"],
        "down": ["Conv2d", "BatchNorm2d", "ReLU6", "Conv2d", "Conv2d", "Identity"],
        "wider": ["Conv2d", "BatchNorm2d", "ReLU6", "Conv2d", "Conv2d", "Dropout"],
    }
    dw = spec.graph.steps[1].children[3]
    assert dw.weights["weight"] == (96, 1, 3, 3)  # depthwise: groups = 16 x 6 channels
    _forward(spec)


def test_errors_in_a_body_point_at_the_call() -> None:
    checked = check_text(MBCONV.replace("groups=input.shape[0] * expand", "groups=input.shape[3]"))
    assert {d.code for d in checked.report.diagnostics} == {"E204"}
    first = checked.report.diagnostics[0]
    assert first.message.startswith("input.shape[3] is out of range: input is [16, 8, 8]")
    assert first.notes == ["in MBConv, used at line 20:12"]  # same = MBConv(16, 1, 1)


# indexed repetitions, lets and powers ---------------------------------------------------

POWERS = [
    "-2 ** 2",
    "2 ** 3 ** 2",
    "2 ** -1",
    "(-2) ** 2",
    "2 * 3 ** 2",
    "-2 ** -2 * 3",
    "9 ** 0.5",
]


@pytest.mark.parametrize("text", POWERS)
def test_power_binds_as_in_python(text: str) -> None:
    """``**`` binds tighter than a minus on its left and looser than one on its right, and
    groups from the right: the value is Python's, and ``fmt`` writes it back unchanged."""
    from dlspec.syntax.format import format_text

    spec = f"model M(v: float = {text}) {{\n    input x: float[2]\n    Linear(2)\n}}\n"
    assert dlspec.load_text(spec).graph.arguments["v"] == eval(text)
    assert format_text(spec)[0] == spec


DILATED = """
block Dilated(c: int, dilation: int) {
    Conv1d(c, kernel=3, dilation=dilation, padding=dilation)
    Tanh
}

model Stack(c: int = 4, n: int = 3, T: dim = 12) {
    input x: float[2, T]
    let width = 2 * c
    h = Conv1d(width, kernel=1)
    Dilated(width, dilation=2 ** i) for i in range(n)
    residual { Conv1d(width, kernel=3, padding=i + 1, dilation=i + 1) } for i in range(2)
    Conv1d(1, kernel=1)
}
"""


def test_each_copy_of_an_indexed_repetition_has_its_index() -> None:
    spec = dlspec.load_text(DILATED)
    copies = spec.graph.steps[1].children
    dilations = [c.children[0].layer.dilation for c in copies]  # type: ignore[union-attr]
    assert dilations == [1, 2, 4]
    assert spec.graph.steps[0].weights["weight"] == (8, 2, 1)  # let width = 2 * c
    assert "*[Dilated(2 * c, 2 * c, 2 ** i) for i in range(n)]" in spec.code
    assert "*[StackResidual(2 * c, c, i) for i in range(2)]" in spec.code
    _forward(spec)


@pytest.mark.parametrize("arguments", [{"c": 3, "n": 0}, {"c": 2, "n": 5, "T": 7}])
def test_the_generated_loop_is_a_function_of_its_count(arguments: dict[str, int]) -> None:
    """The class generated at the defaults, built at other arguments, is what check --set
    describes there (parameters, and outputs with the same weights)."""
    from test_program import _model_class

    defaults = dlspec.load_text(DILATED)
    at = dlspec.load_text(DILATED, **arguments)
    built = _model_class(defaults)(**{k: v for k, v in arguments.items() if k != "T"})
    assert sum(p.numel() for p in built.parameters()) == at.report.total_params
    reference = at.to_torch()
    reference.load_state_dict(built.state_dict())
    x = torch.randn(2, 2, arguments.get("T", 12))
    torch.testing.assert_close(built(x), reference(x))


def test_a_let_is_local_to_its_body() -> None:
    """A let in a block takes a value per use; one in a residual's body is not seen after
    it (E208)."""
    text = """
block Half {
    let half = input.shape[0] // 2
    Linear(half)
}
model M {
    input x: float[12]
    Half
    Half
    residual { let k = 3  Linear(k)  Linear(input.shape[0]) }
    Linear(k)
}
"""
    checked = check_text(text)
    assert [d.code for d in checked.report.diagnostics] == ["E208"]
    assert checked.bound[3] == ["half = 6", "half = 3"]
    assert checked.partial is not None
    assert [s.output.type.shape for s in checked.partial.steps] == [(6,), (3,), (3,)]


def test_slice_on_a_symbolic_length() -> None:
    """Negative bounds and sizes count from the end of a symbolic length, in check and in
    the generated code, at every length."""
    text = """
model M(T: dim = 9) {
    input x: float[3, T]
    Conv1d(3, kernel=3, padding=2)
    Slice(1, end=-2)
    Slice(1, 1, x.shape[1] - 1)
}
"""
    assert "x[:, :, 1:-1]" in dlspec.load_text(text).code
    for length in (3, 9):
        spec = dlspec.load_text(text, T=length)
        assert spec.report.outputs[0].shape_value == [3, length - 2]
        _forward(spec)
    assert [d.code for d in check_text(text, overrides={"T": "1"}).report.diagnostics] == ["E402"]


def test_a_size_from_the_index_reaches_the_next_copy() -> None:
    """Copy i reads what copy i - 1 computed from its own index: in generated code, the
    width ``w + i`` of one copy is ``w + i - 1`` in the next, and ``w + n - 1`` after."""
    from test_program import _model_class

    text = "model M(w: int = 3, n: int = 3) {\n    input x: float[5]\n"
    text += "    Linear(w + i) for i in range(n)\n    Linear(2)\n}\n"
    defaults = dlspec.load_text(text)
    assert "nn.Linear(5 if i == 0 else i + w - 1, i + w) for i in range(n)" in defaults.code
    assert "nn.Linear(n + w - 1, 2)" in defaults.code
    for arguments in ({"w": 2, "n": 4}, {"w": 5, "n": 1}):
        built = _model_class(defaults)(**arguments)
        at = dlspec.load_text(text, **arguments)
        assert sum(p.numel() for p in built.parameters()) == at.report.total_params


BRANCHES = """
block B(wide: bool) {
    if wide { let k = 2 * input.shape[0] } else { let k = input.shape[0] }
    Linear(k)
    Linear(input.shape[0])
}

model M(d: int = 4) {
    input x: float[d]
    B(true)
    B(false)
    let big = d > 3
    B(big)
}
"""


def test_lets_in_branches_and_a_condition_as_a_let() -> None:
    """A let each branch binds is the size the class's flag chooses (named after it), and a
    condition's let is its expression where a block's argument reads it."""
    from test_program import _model_class

    defaults = dlspec.load_text(BRANCHES)
    assert "nn.Linear(in_features, 2 * in_features if self.use_k else in_features)" in (
        defaults.code
    )
    assert "self.b3 = B(d, d > 3)" in defaults.code
    for d in (2, 7):
        built = _model_class(defaults)(d=d)
        assert sum(p.numel() for p in built.parameters()) == (
            dlspec.load_text(BRANCHES, d=d).report.total_params
        )


def test_a_long_indexed_repetition_builds() -> None:
    """Regression: each copy's sizes were expressions of the one before, nested 250 deep
    (Python's recursion limit) in generated code's analysis; handed on simplified, they
    stay the input's."""
    text = "model M(n: int = 250) {\n    input x: float[2, 8]\n"
    text += "    Conv1d(2, kernel=3, dilation=i % 4 + 1, padding=i % 4 + 1) for i in range(n)\n}\n"
    code = dlspec.load_text(text).code
    assert "nn.Conv1d(2, 2, kernel_size=3, padding=i % 4 + 1, dilation=i % 4 + 1)" in code
    assert "for i in range(n)" in code


def test_syntax_tree_nodes_are_frozen_records() -> None:
    """The nodes behave as the frozen, slotted dataclasses they replace (made cheaper)."""
    import copy
    import dataclasses
    import pickle

    from dlspec.syntax import ast
    from dlspec.syntax.parser import parse

    text = "model M {\n    input x: float[4]\n    Linear(2)  expect params == 10\n}\n"
    (first, _), (again, _) = parse(text), parse(text)
    assert first is not None and first == again and first != parse(text.replace("2", "3"))[0]
    stmt = first.definitions[0].body[1]
    assert isinstance(stmt, ast.LayerStmt) and isinstance(stmt.op, ast.Call)
    assert hash(stmt.op.name) == hash(again.definitions[0].body[1].op.name)  # type: ignore[union-attr]
    assert repr(stmt.op.name) == f"Ident(span={stmt.op.name.span!r}, name='Linear')"
    assert pickle.loads(pickle.dumps(first)) == first == copy.deepcopy(first)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stmt.op.name.name = "Conv2d"  # type: ignore[misc]
    assert not hasattr(stmt, "__dict__")
    span = stmt.span
    checks = [ast.Check(span, ast.Ident(span, "params"), "==", ast.Num(span, 1, "1")) for _ in "ab"]
    assert checks[0].args == [] and checks[0].args is not checks[1].args  # a fresh list each
    match checks[0]:
        case ast.Check(_, ast.Ident(_, quantity), op):
            assert (quantity, op) == ("params", "==")
