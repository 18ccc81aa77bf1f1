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

import itertools
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


def _double_conv(c_in: int, c_out: int) -> int:
    """Two bias-free 3x3 convolutions, each with a BatchNorm's weight and bias."""
    return c_in * c_out * 9 + 2 * c_out + c_out * c_out * 9 + 2 * c_out


def _unet() -> int:
    """The U-Net counted by hand: encoder, transposed-convolution decoder, 1x1 output."""
    widths = [64, 128, 256, 512, 1024]
    encoder = _double_conv(3, 64) + sum(_double_conv(a, b) for a, b in itertools.pairwise(widths))
    decoder = sum(
        (a * b * 2 * 2 + b) + _double_conv(a, b)  # up: ConvTranspose2d(a -> b, 2), then 2b -> b
        for a, b in itertools.pairwise(widths[::-1])
    )
    return encoder + decoder + 64 * 2 + 2


def _wavenet(
    classes: int = 256, res: int = 32, gate: int = 32, skip: int = 256, layers: int = 40
) -> int:
    """The WaveNet counted by hand: a 1x1 convolution in, ``layers`` gated causal
    convolutions (kernel 2, to twice the gate width), each with a 1x1 skip convolution and
    all but the last with a 1x1 residual one, then the head's two 1x1 convolutions."""
    gated = res * 2 * gate * 2 + 2 * gate
    residual, skipped = gate * res + res, gate * skip + skip
    head = skip * skip + skip + skip * classes + classes
    return classes * res + res + layers * (gated + skipped) + (layers - 1) * residual + head


# published counts: torchvision's model docs, Hugging Face's model cards / the papers
PUBLISHED = {
    "resnet18": 11_689_512,
    "densenet121": 7_978_856,
    "efficientnet_b0": 5_288_548,
    "mobilenet_v3_large": 5_483_032,
    "convnext_tiny": 28_589_128,
    "vit_b_16": 86_567_656,
    "llama2_7b": 6_738_415_616,
    "bert_base": 109_482_240,  # Hugging Face's BertModel (with the pooler)
    "swin_t": 28_288_354,
    "unet": _unet(),  # no single published figure: counted by hand above
    "wavenet": _wavenet(),  # the same
}
# smaller settings for a forward pass (and export) where the published size is too big
SMALL: dict[str, dict[str, Any]] = {
    "resnet18": {"size": 64, "num_classes": 10},
    "densenet121": {"size": 32, "num_classes": 10},
    "efficientnet_b0": {"size": 32, "num_classes": 10},
    "mobilenet_v3_large": {"size": 32, "num_classes": 10},
    "convnext_tiny": {"size": 32, "num_classes": 10},
    "unet": {"size": 32},
    "vit_b_16": {"image_size": 32, "d": 48, "layers": 2, "heads": 4, "mlp_dim": 96},
    "llama2_7b": {"vocab": 100, "d": 64, "layers": 2, "heads": 4, "kv_heads": 2, "ff": 96, "T": 8},
    "bert_base": {"vocab": 100, "d": 32, "layers": 2, "heads": 4, "ff": 64, "max_len": 16, "T": 10},
    # maps of 16, 8, 4, 2 in windows of 2 (the first three stages' shifted)
    "swin_t": {"size": 32, "patch": 2, "d": 12, "heads": 2, "window": 2, "num_classes": 10},
    "wavenet": {"classes": 16, "res": 8, "gate": 8, "skip": 16, "layers": 4, "stacks": 2, "T": 64},
}
# every layer counted by torchinfo's own rule (ConvNeXt's and ViT's Linear layers act on every
# position of a map or sequence, which dlspec counts and torchinfo does not)
TORCHINFO = ["resnet18", "densenet121", "efficientnet_b0", "mobilenet_v3_large", "wavenet"]
# the other zoo kinds export in test_export's kind specs
EXPORT = ["resnet18", "vit_b_16", "bert_base"]


def test_every_zoo_spec_is_covered() -> None:
    assert {p.stem for p in ZOO.glob("*.dl")} == set(PUBLISHED) == set(SMALL)


def _resized(name: str, **settings: Any) -> dlspec.Spec:
    """The spec at other settings, without its published-count and memory expectations
    (of the published size)."""
    text = (ZOO / f"{name}.dl").read_text()
    text = re.sub(r"\n\s*expect total (params == [\d_]+|train_memory\(.*\) < \w+)", "", text)
    return dlspec.load_text(text, f"{name}.dl", **settings)


def _small(name: str) -> dlspec.Spec:
    return _resized(name, **SMALL[name])


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
    """A forward pass at the small settings; for the CNNs, torchinfo's mult-adds on the same
    module (its rule does not depend on the size)."""
    spec = _small(name)
    model = spec.to_torch().eval()
    inputs = [
        torch.randint(0, 2, (2, *i.shape_value))  # ids every table holds; a 0/1 mask
        if i.dtype == "long"
        else torch.randn(2, *i.shape_value)
        for i in spec.report.inputs
    ]
    expected = spec.report.outputs[0].shape_value
    assert sum(p.numel() for p in model.parameters()) == spec.report.total_params
    if name in TORCHINFO:  # torchinfo's own forward pass, at batch 1
        torchinfo = pytest.importorskip("torchinfo")
        summary = torchinfo.summary(model, input_data=[x[:1] for x in inputs], verbose=0)
        assert summary.total_mult_adds == spec.report.total_macs
        assert summary.summary_list[0].output_size == [1, *expected]
        return
    with torch.no_grad():
        out = model(*inputs)
    assert list(out.shape) == [2, *expected]


def test_llama2_70b_is_the_same_spec_with_grouped_query_attention() -> None:
    """Llama-2-70B: 8 key/value heads for 64 query heads; Hugging Face's 68,976,648,192."""
    sizes = {"d": 8192, "layers": 80, "heads": 64, "kv_heads": 8, "ff": 28672}
    spec = _resized("llama2_7b", **sizes)
    assert spec.report.total_params == 68_976_648_192
    k_proj = next(s for s in spec.graph.leaves() if s.path.endswith("self_attn.k_proj"))
    assert k_proj.weights["weight"] == (1024, 8192)  # 8 heads of 128
    with torch.device("meta"):
        model = spec.to_torch()
    assert sum(p.numel() for p in model.parameters()) == 68_976_648_192


def test_resnet18_macs_at_full_size_are_torchinfos() -> None:
    """1,814,083,944: torchinfo's figure for torchvision's resnet18 at 224 x 224."""
    assert check_file(ZOO / "resnet18.dl").report.total_macs == 1_814_083_944


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


def test_bert_base_macs_are_the_formula_by_hand() -> None:
    """Per layer: four d x d projections, the T x T products Q K^T and weights x V, the
    feed-forward pair, two LayerNorms (all at every step); the embeddings' LayerNorm; the
    pooler once. torchinfo would count the Linear layers once per sample, not per step."""
    d, ff, layers, steps = 768, 3072, 12, 512
    layer = steps * (4 * d * (d + 1) + ff * (d + 1) + d * (ff + 1) + 2 * 2 * d)
    attention = 2 * steps * steps * d
    expected = layers * (layer + attention) + steps * 2 * d + d * (d + 1)
    assert check_file(ZOO / "bert_base.dl").report.total_macs == expected == 48_381_100_800
