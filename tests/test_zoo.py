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
from torch.utils.flop_counter import FlopCounterMode

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


def _vae(channels: int = 3, latent: int = 128, size: int = 64) -> int:
    """PyTorch-VAE's VanillaVAE counted by hand: five stride-2 convolutions with batch norm
    (weight and bias), mean and log-variance heads, the decoder's input layer, five
    transposed convolutions with batch norm, and the 3x3 output convolution."""
    widths = [channels, 32, 64, 128, 256, 512]
    encoder = sum(a * b * 9 + b + 2 * b for a, b in itertools.pairwise(widths))
    flat = 512 * (size // 32) ** 2
    heads = 2 * (flat * latent + latent) + latent * flat + flat
    up = [512, 256, 128, 64, 32, 32]
    decoder = sum(a * b * 9 + b + 2 * b for a, b in itertools.pairwise(up))
    return encoder + heads + decoder + 32 * channels * 9 + channels


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
    "t5_small_encoder": 35_330_816,  # Hugging Face's T5EncoderModel of t5-small
    "unet": _unet(),  # no single published figure: counted by hand above
    "vae": _vae(),  # likewise
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
    "vae": {"size": 32, "latent": 16},
    "vit_b_16": {"image_size": 32, "d": 48, "layers": 2, "heads": 4, "mlp_dim": 96},
    "llama2_7b": {"vocab": 100, "d": 64, "layers": 2, "heads": 4, "kv_heads": 2, "ff": 96, "T": 8},
    "bert_base": {"vocab": 100, "d": 32, "layers": 2, "heads": 4, "ff": 64, "max_len": 16, "T": 10},
    # maps of 16, 8, 4, 2 in windows of 2 (the first three stages' shifted)
    "swin_t": {"size": 32, "patch": 2, "d": 12, "heads": 2, "window": 2, "num_classes": 10},
    "t5_small_encoder": {
        "vocab": 100,
        "d": 32,
        "layers": 2,
        "heads": 4,
        "d_kv": 8,
        "ff": 64,
        "buckets": 8,
        "max_distance": 20,
        "T": 10,
    },
    "wavenet": {"classes": 8, "res": 4, "gate": 4, "skip": 8, "layers": 3, "stacks": 1, "T": 32},
}
# every layer counted by torchinfo's own rule (ConvNeXt's and ViT's Linear layers act on every
# position of a map or sequence, which dlspec counts and torchinfo does not)
TORCHINFO = ["resnet18", "densenet121", "efficientnet_b0", "mobilenet_v3_large", "wavenet"]
# the other zoo kinds export in test_export's kind specs
EXPORT = ["resnet18", "vit_b_16", "wavenet", "bert_base"]


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
    outs = out if isinstance(out, tuple) else (out,)  # the VAE returns mu and logvar too
    assert [list(y.shape) for y in outs] == [[2, *o.shape_value] for o in spec.report.outputs]


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


# Hugging Face's T5 state_dict names -> the zoo spec's
T5_NAMES = [
    (
        r"^encoder\.block\.0\.layer\.0\.SelfAttention\.relative_attention_bias\.",
        "bias.relative_attention_bias.",
    ),
    (r"^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.", r"encoder.\1.attention."),
    (r"^encoder\.block\.(\d+)\.layer\.0\.layer_norm\.", r"encoder.\1.attention_norm."),
    (r"^encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.", r"encoder.\1."),
    (r"^encoder\.block\.(\d+)\.layer\.1\.layer_norm\.", r"encoder.\1.ff_norm."),
    (r"^encoder\.final_layer_norm\.", "final_layer_norm."),
]


def _t5_encoder(settings: dict[str, Any]) -> torch.nn.Module:
    """Hugging Face's T5EncoderModel at the zoo spec's settings (t5-small's by default)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.T5Config(
        vocab_size=settings.get("vocab", 32128),
        d_model=settings.get("d", 512),
        num_layers=settings.get("layers", 6),
        num_heads=settings.get("heads", 8),
        d_kv=settings.get("d_kv", 64),
        d_ff=settings.get("ff", 2048),
        relative_attention_num_buckets=settings.get("buckets", 32),
        relative_attention_max_distance=settings.get("max_distance", 128),
    )
    config._attn_implementation = "eager"  # the scores written out: FLOPs the counter sees
    return transformers.T5EncoderModel(config).eval()


def test_t5_small_encoder_is_hugging_faces() -> None:
    """At t5-small's size (built on the meta device) the parameters are Hugging Face's, and
    at the small size the spec's module, holding Hugging Face's weights, computes its
    last_hidden_state on padded batches; its MACs are FlopCounterMode's FLOPs / 2 but for
    the RMSNorm scales (one MAC per element to dlspec)."""
    pytest.importorskip("transformers")
    from transformers.initialization import no_init_weights

    with torch.device("meta"), no_init_weights():  # shapes only: drawing weights takes seconds
        full = _t5_encoder({})
    full.tie_weights()  # the encoder's embedding is the shared one, as post_init makes it
    assert sum(p.numel() for p in full.parameters()) == PUBLISHED["t5_small_encoder"]
    settings = SMALL["t5_small_encoder"]
    torch.manual_seed(0)
    theirs = _t5_encoder(settings)
    spec = _small("t5_small_encoder")
    ours = spec.to_torch().eval()
    state = {}
    for name, tensor in theirs.state_dict().items():
        if name == "encoder.embed_tokens.weight":
            continue  # shared's, tied
        for pattern, replacement in T5_NAMES:
            name = re.sub(pattern, replacement, name)
        state[name] = tensor
    ours.load_state_dict(state)  # strict: every tensor of each, once
    steps = settings["T"]
    ids = torch.randint(0, settings["vocab"], (2, steps))
    mask = torch.ones(2, steps, dtype=torch.long)
    mask[1, steps // 2 :] = 0  # the second sample padded
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        expected = theirs(input_ids=ids[:1], attention_mask=mask[:1]).last_hidden_state
    torch.testing.assert_close(ours(ids[:1], mask[:1]), expected, rtol=0, atol=1e-5)
    with torch.no_grad():
        padded = theirs(input_ids=ids, attention_mask=mask).last_hidden_state
        torch.testing.assert_close(ours(ids, mask), padded, rtol=0, atol=1e-5)
    norms = (2 * settings["layers"] + 1) * steps * settings["d"]
    assert spec.report.total_macs == counter.get_total_flops() // 2 + norms


class _VanillaVAE(torch.nn.Module):
    """PyTorch-VAE's VanillaVAE (AntixK), written out in torch apart from dlspec."""

    def __init__(self, channels: int, latent: int, size: int) -> None:
        super().__init__()
        nn = torch.nn
        widths = [channels, 32, 64, 128, 256, 512]
        self.encoder = nn.Sequential(
            *(
                nn.Sequential(nn.Conv2d(a, b, 3, 2, 1), nn.BatchNorm2d(b), nn.LeakyReLU())
                for a, b in itertools.pairwise(widths)
            )
        )
        self.side = size // 32
        flat = 512 * self.side**2
        self.fc_mu, self.fc_var = nn.Linear(flat, latent), nn.Linear(flat, latent)
        self.decoder_input = nn.Linear(latent, flat)
        up = [512, 256, 128, 64, 32, 32]
        self.decoder = nn.Sequential(
            *(
                nn.Sequential(
                    nn.ConvTranspose2d(a, b, 3, 2, 1, output_padding=1),
                    nn.BatchNorm2d(b),
                    nn.LeakyReLU(),
                )
                for a, b in itertools.pairwise(up)
            ),
            nn.Conv2d(32, channels, 3, padding=1),
            nn.Tanh(),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = torch.flatten(self.encoder(x), 1)
        mu, logvar = self.fc_mu(h), self.fc_var(h)
        z = mu
        if self.training:
            std = torch.exp(0.5 * logvar)
            z = mu + std * torch.randn_like(std)
        d = self.decoder_input(z).view(-1, 512, self.side, self.side)
        return self.decoder(d), mu, logvar


def _transposed_macs(module: torch.nn.Module, x: torch.Tensor) -> int:
    """dlspec's count of a transposed convolution: every input element times its weights,
    plus a bias per output element (torchinfo counts every weight at every output)."""
    assert isinstance(module, torch.nn.ConvTranspose2d)
    out = module(x)
    kernel = module.kernel_size[0] * module.kernel_size[1]
    return x[0].numel() * module.out_channels * kernel + out[0].numel()


@pytest.mark.parametrize("settings", [{"size": 32, "latent": 16}, {}])
def test_vae_agrees_with_a_vae_written_in_torch(settings: dict[str, int]) -> None:
    """The VAE spec against the model written by hand: parameters, output shapes, MACs
    (torchinfo's per layer, and dlspec's documented count for the transposed convolutions)
    and, at the small size, the bytes autograd saves in training (the sample included)."""
    from saved_oracle import saved_bytes

    from dlspec.analysis.memory import activations, total
    from dlspec.layers.symbolic import value_at

    torchinfo = pytest.importorskip("torchinfo")
    spec = _resized("vae", **settings)
    params = {"in_channels": 3, "latent": 128, "size": 64} | settings
    reference = _VanillaVAE(params["in_channels"], params["latent"], params["size"])
    assert sum(p.numel() for p in reference.parameters()) == spec.report.total_params
    assert spec.report.total_params == _vae(*params.values())
    x = torch.randn(1, params["in_channels"], params["size"], params["size"])
    summary = torchinfo.summary(reference.eval(), input_data=[x], verbose=0)
    assert [list(o.shape) for o in reference(x)] == [
        [1, *o.shape_value] for o in spec.report.outputs
    ]
    inputs: dict[torch.nn.Module, torch.Tensor] = {}

    def keep(module: torch.nn.Module, args: tuple[torch.Tensor, ...], _: Any) -> None:
        inputs[module] = args[0]

    hooks = [
        m.register_forward_hook(keep)
        for m in reference.modules()
        if isinstance(m, torch.nn.ConvTranspose2d)
    ]
    with torch.no_grad():
        reference(x)
    for hook in hooks:
        hook.remove()
    macs = sum(
        _transposed_macs(layer.module, inputs[layer.module])
        if isinstance(layer.module, torch.nn.ConvTranspose2d)
        else layer.macs
        for layer in summary.summary_list
        if layer.is_leaf_layer
    )
    assert macs == spec.report.total_macs
    if settings:  # autograd at the small size (the full one is test_memory's, on fake tensors)
        rows = activations(spec.graph)
        for batch in (2, 3):
            data = torch.randn(batch, *x.shape[1:])
            reference.train()
            measured = saved_bytes(reference, lambda data=data: reference(data))
            assert value_at(total(rows), {"B": batch}) == measured
