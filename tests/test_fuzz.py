"""A quick differential fuzzing run (the long one is `make fuzz`, tests/fuzzing.py): random
valid specs over every layer kind, the analysis against torch and ONNX Runtime."""

from __future__ import annotations

import re

import pytest
from fuzzing import PROPOSALS, failures, generate, onnx_disagreements

from dlspec.analysis.check import check_text
from dlspec.layers import REGISTRY

SEEDS = range(24)


def test_the_generator_covers_every_layer_kind() -> None:
    written = "\n".join(generate(seed) for seed in range(600))  # rare kinds: 3 or more each
    missing = sorted(kind for kind in REGISTRY if not re.search(rf"\b{kind}\b", written))
    assert not missing, f"the fuzzer never writes {missing}; add them to its PROPOSALS"
    assert len(PROPOSALS) >= 8
    statements = [r"\bfor i in range\(", r"\blet \w+ = ", r" \*\* ", r"residual \{ .* for i"]
    assert all(re.search(pattern, written) for pattern in statements)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_spec_agrees_with_torch_and_onnx_runtime(seed: int) -> None:
    text = generate(seed)
    assert check_text(text).ok, text
    not_exported: list[str] = []
    assert failures(text, skipped=not_exported) == [], text
    assert not_exported == [], text  # every spec check accepts exports, with TorchScript


# found by fuzzing: a sum that cancels out to nearly 0 carries rounding errors of unit-scale
# numbers, which a tolerance relative to the output's own magnitude alone refused
CANCELLING = """
block Bt6() { Linear(1, bias=false) Identity Reshape(1) }
model Fuzz(T: dim = 5) {
    input x: float[4, 7, 3]
    input y: float[4, 7, 3]
    t2 = Flatten <- x
    t3 = LayerNorm(bias=false) <- t2
    t5 = residual { Identity } shortcut { Identity } <- t3
    t6 = Bt6() <- t5
}
"""


def test_an_output_that_cancels_out_verifies() -> None:
    assert failures(CANCELLING) == []


# found by fuzzing: a learned tensor as the output still requires grad in inference mode,
# which the export's verification could not turn into an array
LEARNED_OUTPUT = """
model Fuzz {
    input x: float[6, 2]
    t1 = Parameter(2, 3) <- x
}
"""


def test_a_learned_tensor_as_the_output_verifies() -> None:
    assert failures(LEARNED_OUTPUT) == []


# found by fuzzing: a LayerNorm over values an upsampling repeated (and TimestepEmbedding
# cosines) magnifies fp32 rounding past the tolerance, in torch as in ONNX Runtime; the
# float64 answer tells rounding from a mistake
ILL_CONDITIONED = """
model Fuzz {
    input x: float[1]
    t3 = TimestepEmbedding(8, max_period=100.0) <- x
    t4 = Reshape(-1, 2) <- t3
    t5 = Upsample(scale_factor=2, mode="linear") <- t4
    t6 = LayerNorm(elementwise_affine=true) <- t5
}
"""


def test_rounding_in_an_ill_conditioned_spec_is_not_a_disagreement() -> None:
    assert failures(ILL_CONDITIONED) == []


# found by fuzzing: torch's GroupNorm of equal values is exactly 0, ONNX Runtime's is rounding
# noise that the next GroupNorms magnify to O(1); float64 is exact too, so only perturbing the
# layers' outputs by fp32's epsilon shows that no fp32 answer is better than another
EXACTLY_CANCELLING = """
block Bt5() { GroupNorm(1, affine=false) }
model Fuzz {
    input s: float[1]
    t1 = Reshape(-1, 1) <- s
    t2 = Upsample(scale_factor=2, mode="linear") <- t1
    t3 = BatchNorm1d <- t2
    t4 = Upsample(scale_factor=2, mode="linear") <- t3
    t5 = Bt5() * 3 <- t4
}
"""


def test_rounding_magnified_from_an_exact_zero_is_not_a_disagreement() -> None:
    assert failures(EXACTLY_CANCELLING) == []


def test_an_export_that_computes_something_else_is_a_disagreement() -> None:
    import torch

    import dlspec
    from dlspec.backends.onnx_export import export_onnx

    spec = dlspec.load_text(ILL_CONDITIONED, "<fuzz>")
    model = spec.to_torch().eval()
    result = export_onnx(model, spec.graph, device="cpu", exporter="torchscript", verify=False)
    with torch.no_grad():
        model.t6.weight.add_(1e-3)  # torch now computes something ONNX Runtime does not
    conditioned: list[str] = []
    problems = onnx_disagreements(result.data, model, spec.graph, conditioned)
    assert len(problems) == 1 and "ONNX Runtime differs from torch" in problems[0]
    assert conditioned == []


# found by fuzzing: a sum of normalised values cancels out; ONNX Runtime's rounding is 1.2
# times the tolerance, while torch's own rounding stays just under it
NEAR_THE_TOLERANCE = """
model Fuzz {
    input x: float[5, 6]
    t1 = Upsample(scale_factor=2, mode="linear") <- x
    t2 = Upsample(scale_factor=2, mode="linear") <- t1
    t3 = LayerNorm(elementwise_affine=false) <- t2
    t4 = Flatten <- t3
    t5 = residual { Sum([0]) } shortcut { Sum([0]) } <- t4
}
"""


def test_rounding_just_past_the_tolerance_is_not_a_disagreement() -> None:
    assert failures(NEAR_THE_TOLERANCE) == []
