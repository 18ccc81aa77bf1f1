"""The model zoo (specs/zoo): well-known networks written as torchvision and Hugging Face define
them, checked against their published parameter counts.

Oracles: the published count (the spec's own ``expect total params``, and the table below);
the generated torch module, built on the meta device (no memory) for the big ones, whose
``sum(p.numel())`` and parameter names must equal the analyzer's; a forward pass at full size
for the small ones and at a reduced size (``--set``) for the big ones; torchinfo's mult-adds
on the generated module for the CNNs (its rule counts what their layers do); the diagram and
the ONNX export for the small ones.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from conftest import ROOT

import dlspec
from dlspec.analysis.check import check_file
from dlspec.backends.graphviz_draw import DrawOptions, to_dot
from dlspec.backends.onnx_export import export_onnx

ZOO = ROOT / "specs" / "zoo"

# published counts: torchvision's model docs, Hugging Face's model cards / the papers
PUBLISHED = {
    "resnet18": 11_689_512,
    "vit_b_16": 86_567_656,
    "llama2_7b": 6_738_415_616,
}
# smaller settings for a forward pass (and export) where the published size is too big
SMALL: dict[str, dict[str, Any]] = {
    "resnet18": {"size": 64, "num_classes": 10},
    "vit_b_16": {"image_size": 32, "d": 48, "layers": 2, "heads": 4, "mlp_dim": 96},
    "llama2_7b": {"vocab": 100, "d": 64, "layers": 2, "heads": 4, "kv_heads": 2, "ff": 96, "T": 8},
}
TORCHINFO = ["resnet18"]  # every layer counted by torchinfo's own rule
EXPORT = ["resnet18", "vit_b_16"]  # the small-settings Llama's kinds export in test_export


def test_every_zoo_spec_is_covered() -> None:
    assert {p.stem for p in ZOO.glob("*.dl")} == set(PUBLISHED) == set(SMALL)


def _small(name: str) -> dlspec.Spec:
    """The spec at SMALL's settings, without the published-count expectation."""
    text = (ZOO / f"{name}.dl").read_text()
    text = re.sub(r"\n\s*expect total params == [\d_]+", "", text)
    return dlspec.load_text(text, f"{name}.dl", **SMALL[name])


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_parameter_count(name: str) -> None:
    checked = check_file(ZOO / f"{name}.dl")
    assert checked.ok, [d.message for d in checked.diagnostics]
    assert checked.report.total_params == PUBLISHED[name]
    assert f"expect total params == {PUBLISHED[name]:_}" in (ZOO / f"{name}.dl").read_text()


@pytest.mark.parametrize("name", PUBLISHED)
def test_generated_module_on_the_meta_device(name: str) -> None:
    spec = dlspec.load(ZOO / f"{name}.dl")
    with torch.device("meta"):
        model = spec.to_torch()
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[name]
    weights = {f"{s.path}.{w}" for s in spec.graph.leaves() for w in s.weights if w not in s.tied}
    assert set(dict(model.named_parameters())) == weights


@pytest.mark.parametrize("name", SMALL)
def test_forward_pass_agrees_with_the_report(name: str) -> None:
    spec = _small(name)
    model = spec.to_torch().eval()
    inputs = [
        torch.randint(0, 10, (2, *i.shape_value))
        if i.dtype == "long"
        else torch.randn(2, *i.shape_value)
        for i in spec.report.inputs
    ]
    with torch.no_grad():
        out = model(*inputs)
    assert list(out.shape) == [2, *spec.report.outputs[0].shape_value]
    assert sum(p.numel() for p in model.parameters()) == spec.report.total_params


@pytest.mark.parametrize("name", TORCHINFO)
def test_macs_are_torchinfos(name: str) -> None:
    torchinfo = pytest.importorskip("torchinfo")
    spec = dlspec.load(ZOO / f"{name}.dl")
    shape = spec.report.inputs[0].shape_value
    summary = torchinfo.summary(spec.to_torch(), input_size=(1, *shape), verbose=0)
    assert summary.total_mult_adds == spec.report.total_macs
    assert summary.total_params == PUBLISHED[name]


@pytest.mark.parametrize("name", SMALL)
def test_draw(name: str) -> None:
    spec = _small(name)
    dot = to_dot(spec.graph, DrawOptions())
    assert dot.startswith("digraph") and spec.graph.name in dot


@pytest.mark.parametrize("name", EXPORT)
def test_export(name: str) -> None:
    spec = _small(name)
    torch.manual_seed(0)
    result = export_onnx(spec.to_torch(), spec.graph, device="cpu")
    assert result.comparisons and all(c.passed for c in result.comparisons)
    assert result.initializers.parameters == spec.report.total_params
