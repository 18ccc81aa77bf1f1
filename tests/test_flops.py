"""MACs against a second oracle: ``torch.utils.flop_counter.FlopCounterMode`` on the torch
module (built on the meta device, so no memory and no arithmetic) sees exactly 2 FLOPs per
multiply-accumulate of the matrix products (convolutions, Linear, Q K^T and the weighted sum
of the values, recurrent gates).

dlspec counts more than the matrix products, as torchinfo does: one MAC per bias add and the
scale and shift of every normalization, which FlopCounterMode does not count. The test
removes them from dlspec's count by the same rules (the layer without bias; norm weights
times the rows they scale), per layer kind and per layer of every spec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import SPECS
from test_layers_oracle import EXAMPLES as LAYER_EXAMPLES
from test_layers_oracle import build, forward, make
from test_sequence_layers import EXAMPLES as SEQUENCE_EXAMPLES
from torch.utils.flop_counter import FlopCounterMode

import dlspec
from dlspec.layers import Layer, TensorType
from dlspec.layers.base import numel
from dlspec.layers.symbolic import Dim, value_at

pytestmark = pytest.mark.filterwarnings(
    "ignore:LSTM with projections is not supported:UserWarning",
    "ignore:enable_nested_tensor is True:UserWarning",
)

BATCH = 3
MATMUL_FAMILIES = ("convolution", "dense", "attention", "recurrent", "merge")  # merge: Einsum


def matmul_macs(layer: Layer, types: list[TensorType]) -> Dim:
    """dlspec's MACs without bias adds and normalization (what FLOP counters count)."""
    if layer.family not in MATMUL_FAMILIES:
        return 0
    if "bias" in type(layer).model_fields:
        layer = layer.model_copy(update={"bias": False})
    inferred = layer.infer(types)
    macs = inferred.macs
    for name, shape in inferred.weights.items():
        parts = name.split(".")
        if len(parts) > 1 and parts[-2].startswith("norm"):
            # a decoder's norms scale the target's rows, the rest the first input's
            rows = types[-1].shape[0] if name.startswith("decoder.") else types[0].shape[0]
            macs = macs - rows * numel(shape)
    return macs


CASES = [
    (e.kind, e.args, [TensorType(s, e.dtype) for s in (e.shape, *e.more)], e.bindings)
    for e in LAYER_EXAMPLES
] + [(e.kind, e.args, e.types, {"T": 5, "S": 4}) for e in SEQUENCE_EXAMPLES]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def test_flop_counter_sees_twice_the_matmul_macs(case: tuple[Any, ...]) -> None:
    kind, args, types, bindings = case
    layer = make(kind, args)
    call = layer.torch(types)
    with torch.device("meta"):
        module = build(call)
        xs = [
            torch.zeros(BATCH, *size, dtype=torch.long)
            if t.dtype == "long"
            else torch.randn(BATCH, *size)
            for t in types
            for size in [tuple(value_at(d, bindings) for d in t.shape)]
        ]
    with FlopCounterMode(display=False) as counter:
        forward(call, module, xs)
    expected = 2 * BATCH * value_at(matmul_macs(layer, types), bindings)
    assert counter.get_total_flops() == expected


@pytest.mark.parametrize("path", [p for p in SPECS if p.name != "seed_prose.dl"], ids=str)
def test_flop_counter_agrees_with_every_layer_of_a_spec(path: Path) -> None:
    spec = dlspec.load(path)
    graph = spec.graph
    with torch.device("meta"):
        model = spec.to_torch()
        inputs = [
            torch.zeros(BATCH, *i.shape_value, dtype=torch.long)
            if i.dtype == "long"
            else torch.randn(BATCH, *i.shape_value)
            for i in spec.report.inputs
        ]
    with FlopCounterMode(display=False) as counter:
        model(*inputs)
    counts = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    total = 0
    for leaf in graph.leaves():
        assert leaf.layer is not None
        macs = value_at(matmul_macs(leaf.layer, [t.type for t in leaf.inputs]), graph.bindings)
        total += macs
        assert counts.get(f"{graph.name}.{leaf.path}", 0) == 2 * BATCH * macs, leaf.path
    assert counter.get_total_flops() == 2 * BATCH * total
