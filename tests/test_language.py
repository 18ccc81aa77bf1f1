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
