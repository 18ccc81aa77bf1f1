"""Sequence layer kinds (embeddings, recurrent, attention, Transformers, merges) and the
sequence specs, against torch.

Every kind has examples below. Each example is built from its ``TorchCall`` (executing the
helper source when the kind has one) and run at batch 2 and at two values of the symbolic
lengths T (and S); output shape, parameter and buffer names and shapes, and MACs counted by
hand must agree with the static rules. Every sequence spec checks cleanly, and the torch
model generated from it holds exactly the analyzer's tensors (a tied one once) and maps
random inputs to the analyzer's output shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import dlspec
from dlspec.analysis.check import check_text
from dlspec.layers import REGISTRY, Layer, LayerError, TensorType, TorchCall
from dlspec.layers.symbolic import Dim, Poly, value_at

pytestmark = pytest.mark.filterwarnings(
    "ignore:LSTM with projections is not supported:UserWarning",  # torch picks another kernel
    "ignore:enable_nested_tensor is True:UserWarning",  # nn.Transformer(bias=False)
)

T = Poly.symbol("T")
S = Poly.symbol("S")
BATCH = 2
BINDINGS = ({"T": 3, "S": 4}, {"T": 5, "S": 6})  # every example runs at both
MODULES = ("attention", "embedding", "merge", "recurrent")  # the kinds this file covers


@dataclass(frozen=True)
class Example:
    kind: str
    args: dict[str, Any]
    inputs: tuple[tuple[Dim, ...], ...]  # per-sample shapes, one per input
    macs: Dim  # counted by hand, per sample; a formula in T and S
    dtype: str = "float"
    masked: bool = False  # the last input is a long key-padding mask (ids below 5, 0 padding)

    @property
    def types(self) -> list[TensorType]:
        dtypes = [self.dtype] * len(self.inputs)
        if self.masked:
            dtypes[-1] = "long"
        return [TensorType(s, d) for s, d in zip(self.inputs, dtypes, strict=True)]  # type: ignore[arg-type]

    @property
    def id(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.args.items())
        shapes = "+".join("x".join(map(str, s)) or "scalar" for s in self.inputs)
        return f"{self.kind}({args})@{shapes}".replace(" ", "")


def ex(
    kind: str, args: dict[str, Any], *inputs: tuple[Dim, ...], macs: Dim = 0, **kw: Any
) -> Example:
    return Example(kind, args, inputs, macs, **kw)


# hand counts ----------------------------------------------------------------------------------


def attention_macs(t: Dim, s: Dim, e: int, kdim: int, vdim: int, bias: bool) -> Dim:
    """Q, K, V projections + Q K^T + weights x V + output projection."""
    b = int(bias)
    return (
        t * e * (e + b) + s * e * (kdim + b) + s * e * (vdim + b) + 2 * t * s * e + t * e * (e + b)
    )


def encoder_layer_macs(t: Dim, d: int, ff: int, bias: bool) -> Dim:
    b = int(bias)
    norms = 2 * (1 + b) * t * d
    return attention_macs(t, t, d, d, d, bias) + t * ff * (d + b) + t * d * (ff + b) + norms


def decoder_layer_macs(t: Dim, s: Dim, d: int, ff: int, bias: bool) -> Dim:
    b = int(bias)
    cross = attention_macs(t, s, d, d, d, bias)
    return encoder_layer_macs(t, d, ff, bias) + cross + (1 + b) * t * d  # + norm3


def recurrent_macs(
    gates: int, hidden: int, sizes: list[tuple[int, int]], dirs: int, bias: bool
) -> Dim:
    """T x dirs x sum over layers of gates*hidden x (in + recurrent width) + 2 biases."""
    per_step = sum(
        gates * hidden * (n_in + width) + 2 * gates * hidden * bias for n_in, width in sizes
    )
    return T * dirs * per_step


# fmt: off
EXAMPLES = [
    # embeddings: a lookup, 0 MACs; positional encodings add without multiplying, 0 MACs
    ex("Embedding", {"num_embeddings": 20, "embedding_dim": 8}, (T,), dtype="long"),
    ex("Embedding", {"num_embeddings": 20, "embedding_dim": 4, "padding_idx": -1}, (T, 2),
       dtype="long"),
    ex("Embedding", {"num_embeddings": 7, "embedding_dim": 3, "padding_idx": 0}, (), dtype="long"),
    ex("SinusoidalPositionalEncoding", {"max_len": 16}, (T, 8)),
    ex("SinusoidalPositionalEncoding", {"max_len": 5}, (T, 7)),  # odd width; T = 5 fills it
    ex("LearnedPositionalEncoding", {"max_len": 16}, (T, 8)),
    # recurrent: T x dirs x per layer G*H x (in + H) + 2 x G*H biases (+ proj x H)
    ex("RNN", {"hidden_size": 8}, (T, 6), macs=T * (8 * (6 + 8) + 2 * 8)),
    ex("RNN", {"hidden_size": 8, "nonlinearity": "relu", "num_layers": 2, "bias": False,
               "returns": "last"}, (T, 6), macs=T * (8 * (6 + 8) + 8 * (8 + 8))),
    ex("RNN", {"hidden_size": 8, "bidirectional": True, "returns": "hidden", "input_size": 6},
       (T, 6), macs=T * 2 * (8 * (6 + 8) + 2 * 8)),
    ex("LSTM", {"hidden_size": 8}, (T, 6), macs=T * (32 * (6 + 8) + 2 * 32)),
    ex("LSTM", {"hidden_size": 8, "num_layers": 2, "dropout": 0.1, "bidirectional": True},
       (T, 6), macs=recurrent_macs(4, 8, [(6, 8), (16, 8)], 2, True)),
    ex("LSTM", {"hidden_size": 8, "proj_size": 3, "num_layers": 2, "bidirectional": True,
                "returns": "hidden"}, (T, 6),
       macs=recurrent_macs(4, 8, [(6, 3), (6, 3)], 2, True) + T * 2 * 2 * 3 * 8),
    ex("LSTM", {"hidden_size": 8, "proj_size": 5, "returns": "last"}, (T, 6),
       macs=T * (32 * (6 + 5) + 2 * 32 + 5 * 8)),
    ex("GRU", {"hidden_size": 8, "returns": "last"}, (T, 6), macs=T * (24 * (6 + 8) + 2 * 24)),
    ex("GRU", {"hidden_size": 8, "bidirectional": True, "num_layers": 2, "returns": "hidden",
               "bias": False}, (T, 6), macs=recurrent_macs(3, 8, [(6, 8), (16, 8)], 2, False)),
    ex("GRU", {"hidden_size": 4, "returns": "hidden"}, (T, 6), macs=T * (12 * (6 + 4) + 2 * 12)),
    # attention: projections + 2 x T x S x E (S = T for self-attention)
    ex("MultiheadAttention", {"num_heads": 2}, (T, 8), macs=4 * T * 8 * 9 + 2 * T * T * 8),
    ex("MultiheadAttention", {"embed_dim": 8, "num_heads": 4, "causal": True}, (T, 8),
       macs=4 * T * 8 * 9 + 2 * T * T * 8),
    ex("MultiheadAttention", {"num_heads": 2}, (T, 8), (S, 8),
       macs=2 * T * 8 * 9 + 2 * S * 8 * 9 + 2 * T * S * 8),
    ex("MultiheadAttention", {"num_heads": 2, "dropout": 0.1, "kdim": 5}, (T, 8), (S, 5),
       macs=attention_macs(T, S, 8, 5, 5, True)),
    ex("MultiheadAttention", {"num_heads": 2, "bias": False}, (T, 8), (S, 5), (S, 6),
       macs=2 * T * 8 * 8 + S * 8 * 5 + S * 8 * 6 + 2 * T * S * 8),
    # a bias on some projections only (Whisper): four Linear layers, each b = 1 where named
    ex("MultiheadAttention", {"num_heads": 2, "bias": ("q", "v", "out")}, (T, 8),
       macs=3 * T * 8 * 9 + T * 8 * 8 + 2 * T * T * 8),
    ex("MultiheadAttention", {"num_heads": 2, "bias": ("k",), "dropout": 0.1}, (T, 8), (S, 5),
       (S, 6), macs=2 * T * 8 * 8 + S * 8 * 6 + S * 8 * 6 + 2 * T * S * 8),
    # a key-padding mask (long [S], last) adds nothing to count
    ex("MultiheadAttention", {"num_heads": 2}, (T, 8), (S, 8), (S,),
       macs=2 * T * 8 * 9 + 2 * S * 8 * 9 + 2 * T * S * 8, masked=True),
    ex("MultiheadAttention", {"num_heads": 2, "bias": ("q", "v", "out"), "causal": True},
       (T, 8), (T,), macs=3 * T * 8 * 9 + T * 8 * 8 + 2 * T * T * 8, masked=True),
    # Transformer layers and stacks: the sum of their parts
    ex("TransformerEncoderLayer", {"nhead": 2, "dim_feedforward": 16}, (T, 8),
       macs=encoder_layer_macs(T, 8, 16, True)),
    ex("TransformerEncoderLayer", {"d_model": 8, "nhead": 2, "dim_feedforward": 16,
                                   "activation": "gelu", "norm_first": True, "bias": False,
                                   "causal": True, "dropout": 0.0, "layer_norm_eps": 1e-6},
       (T, 8), macs=encoder_layer_macs(T, 8, 16, False)),
    ex("TransformerDecoderLayer", {"nhead": 2, "dim_feedforward": 16}, (T, 8), (S, 8),
       macs=decoder_layer_macs(T, S, 8, 16, True)),
    ex("TransformerDecoderLayer", {"nhead": 4, "dim_feedforward": 12, "causal": True,
                                   "norm_first": True}, (T, 8), (S, 8),
       macs=decoder_layer_macs(T, S, 8, 12, True)),
    ex("TransformerEncoder", {"nhead": 2, "num_layers": 2, "dim_feedforward": 16}, (T, 8),
       macs=2 * encoder_layer_macs(T, 8, 16, True)),
    ex("TransformerEncoder", {"d_model": 8, "nhead": 2, "num_layers": 3, "dim_feedforward": 16,
                              "final_norm": True, "causal": True, "norm_first": True,
                              "activation": "gelu"}, (T, 8),
       macs=3 * encoder_layer_macs(T, 8, 16, True) + 2 * T * 8),
    ex("TransformerDecoder", {"nhead": 2, "num_layers": 2, "dim_feedforward": 16,
                              "final_norm": True, "causal": True, "bias": False}, (T, 8), (S, 8),
       macs=2 * decoder_layer_macs(T, S, 8, 16, False) + T * 8),
    ex("Transformer", {"d_model": 8, "nhead": 2, "num_encoder_layers": 2,
                       "num_decoder_layers": 1, "dim_feedforward": 16}, (S, 8), (T, 8),
       macs=2 * encoder_layer_macs(S, 8, 16, True) + 2 * S * 8
       + decoder_layer_macs(T, S, 8, 16, True) + 2 * T * 8),
    ex("Transformer", {"nhead": 2, "num_encoder_layers": 1, "num_decoder_layers": 2,
                       "dim_feedforward": 12, "causal": True, "bias": False}, (S, 8), (T, 8),
       macs=encoder_layer_macs(S, 8, 12, False) + S * 8
       + 2 * decoder_layer_macs(T, S, 8, 12, False) + T * 8),
    # RMSNorm: 1 MAC per element for the learned scale
    ex("RMSNorm", {}, (T, 8), macs=T * 8),
    ex("RMSNorm", {"normalized_shape": (3, 8), "eps": 1e-6}, (T, 3, 8), macs=T * 24),
    ex("RMSNorm", {"normalized_shape": 8, "elementwise_affine": False}, (T, 8)),
    # merges: no parameters, no MACs
    ex("Add", {}, (T, 8), (T, 8)),
    ex("Add", {}, (T, 2, 3), (T, 2, 3), (T, 2, 3)),
    ex("Concat", {}, (T, 8), (T, 4)),
    ex("Concat", {"dim": 0}, (T, 8), (S, 8), (2, 8)),
    ex("Concat", {"dim": 1}, (T, 2), (T, 3), dtype="long"),
]
# fmt: on

KINDS = {e.kind for e in EXAMPLES}


def make(kind: str, args: dict[str, Any]) -> Layer:
    return REGISTRY[kind].model_validate(args)


def build(call: TorchCall) -> torch.nn.Module | None:
    """The torch module a TorchCall describes, as generated code would construct it: an
    ``nn`` class, or the class its ``helper`` source defines (run with only torch imported)."""
    if call.cls is None:
        return None
    for value in (*call.args, *call.kwargs.values()):
        assert eval(repr(value)) == value  # generated code renders arguments with repr
    if call.helper is None:
        prefix, _, name = call.cls.partition(".")
        assert prefix == "nn", call.cls
        cls = getattr(torch.nn, name)
    else:
        namespace: dict[str, Any] = {"torch": torch, "nn": torch.nn}
        exec(compile(call.helper, f"<{call.cls}>", "exec"), namespace)
        cls = namespace[call.cls]
    module: torch.nn.Module = cls(*call.args, **call.kwargs)
    return module.eval()


def forward(call: TorchCall, module: torch.nn.Module | None, xs: list[torch.Tensor]) -> Any:
    """Evaluate the TorchCall's forward template, as generated code would."""
    names = [f"x{i}" for i in range(len(xs))]
    expr = call.forward.format(
        module="m", x=names[0], inputs=", ".join(names), **{n: n for n in names}
    )
    return eval(expr, {"m": module, "torch": torch, **dict(zip(names, xs, strict=True))})


def random_input(shape: tuple[int, ...], dtype: str) -> torch.Tensor:
    if dtype == "long":
        return torch.randint(0, 5, (BATCH, *shape))
    return torch.randn(BATCH, *shape)


def concrete(shape: tuple[Dim, ...], bindings: dict[str, int]) -> tuple[int, ...]:
    return tuple(value_at(d, bindings) for d in shape)


def test_every_sequence_kind_has_an_example() -> None:
    ours = {kind for kind, cls in REGISTRY.items() if cls.__module__.rsplit(".", 1)[1] in MODULES}
    # examples in test_layers_oracle.py
    elsewhere = {"SDPA", "RoPE", "Parameter", "Full", "Mul", "Sub", "Div", "Where", "PaddingMask"}
    assert (ours - elsewhere) | {"RMSNorm"} == KINDS  # RMSNorm lives in norm.py


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.id)
def test_layer_agrees_with_torch(example: Example) -> None:
    layer = make(example.kind, example.args)
    types = example.types
    inferred = layer.infer(types)
    call = layer.torch(types)
    module = build(call)

    for bindings in BINDINGS:
        xs = [random_input(concrete(t.shape, bindings), t.dtype) for t in types]
        with torch.no_grad():
            y = forward(call, module, xs)
        assert tuple(y.shape) == (BATCH, *concrete(inferred.output.shape, bindings))
        assert y.dtype == (torch.int64 if inferred.output.dtype == "long" else torch.float32)
        assert value_at(inferred.macs, bindings) == value_at(example.macs, bindings)
    params = {} if module is None else dict(module.named_parameters())
    buffers = {} if module is None else dict(module.named_buffers())
    assert {k: tuple(p.shape) for k, p in params.items()} == inferred.weights
    assert {k: tuple(b.shape) for k, b in buffers.items()} == inferred.buffers
    assert list(params) == list(inferred.weights)  # torch's order too
    assert layer.label().startswith(example.kind)
    assert REGISTRY[example.kind].__doc__


# the figures the issue names -------------------------------------------------------------------


def test_transformer_base_has_torchs_44_140_544_parameters() -> None:
    layer = make(
        "Transformer",
        {
            "d_model": 512,
            "nhead": 8,
            "num_encoder_layers": 6,
            "num_decoder_layers": 6,
            "dim_feedforward": 2048,
        },
    )
    inferred = layer.infer([TensorType((S, 512)), TensorType((T, 512))])
    reference = torch.nn.Transformer(512, 8, 6, 6, 2048, batch_first=True)
    assert sum(math.prod(shape) for shape in inferred.weights.values()) == 44_140_544
    assert sum(p.numel() for p in reference.parameters()) == 44_140_544
    assert {k: tuple(p.shape) for k, p in reference.named_parameters()} == inferred.weights


def test_attention_macs_grow_with_t_squared() -> None:
    """Self-attention E=16, 4 heads, with biases, counted by hand at T=10 and T=20."""
    inferred = make("MultiheadAttention", {"num_heads": 4}).infer([TensorType((T, 16))])
    # Q, K, V and output projections: 4 x T x 16 x (16 + 1); Q K^T and weights x V: 2 x T x T x 16
    assert value_at(inferred.macs, {"T": 10}) == 10_880 + 3_200 == 14_080
    assert value_at(inferred.macs, {"T": 20}) == 21_760 + 12_800 == 34_560
    assert isinstance(inferred.macs, Poly) and inferred.macs.degree("T") == 2


def test_recurrent_mac_rule_by_hand() -> None:
    """LSTM(256, num_layers=2) on [T, 128], as in specs/lstm_lm.dl, at T=1 and T=128."""
    inferred = make("LSTM", {"hidden_size": 256, "num_layers": 2}).infer([TensorType((T, 128))])
    layer0 = 1024 * (128 + 256) + 2 * 1024  # 4 gates x 256 = 1024 rows; two bias vectors
    layer1 = 1024 * (256 + 256) + 2 * 1024
    assert layer0 + layer1 == 921_600 == sum(math.prod(s) for s in inferred.weights.values())
    assert value_at(inferred.macs, {"T": 1}) == 921_600
    assert value_at(inferred.macs, {"T": 128}) == 117_964_800


# what the templates compute -------------------------------------------------------------------


def _run(kind: str, args: dict[str, Any], *xs: torch.Tensor) -> torch.Tensor:
    layer = make(kind, args)
    call = layer.torch([TensorType(tuple(x.shape[1:])) for x in xs])
    torch.manual_seed(0)  # the same weights on every call
    module = build(call)
    with torch.no_grad():
        out: torch.Tensor = forward(call, module, list(xs))
    return out


CAUSAL = [
    ("MultiheadAttention", {"num_heads": 2, "causal": True}, 1),
    ("TransformerEncoderLayer", {"nhead": 2, "dim_feedforward": 16, "causal": True}, 1),
    (
        "TransformerEncoder",
        {
            "nhead": 2,
            "num_layers": 2,
            "dim_feedforward": 16,
            "causal": True,
            "norm_first": True,
            "final_norm": True,
        },
        1,
    ),
    ("TransformerDecoderLayer", {"nhead": 2, "dim_feedforward": 16, "causal": True}, 2),
    ("TransformerDecoder", {"nhead": 2, "num_layers": 2, "dim_feedforward": 16, "causal": True}, 2),
    (
        "Transformer",
        {
            "nhead": 2,
            "num_encoder_layers": 1,
            "num_decoder_layers": 1,
            "dim_feedforward": 16,
            "causal": True,
        },
        2,
    ),
]


@pytest.mark.parametrize(("kind", "args", "n_inputs"), CAUSAL, ids=[c[0] for c in CAUSAL])
def test_causal_output_ignores_later_steps(kind: str, args: dict[str, Any], n_inputs: int) -> None:
    torch.manual_seed(0)
    xs = [torch.randn(BATCH, 6, 8) for _ in range(n_inputs)]
    masked = -1 if kind == "Transformer" else 0  # the input the causal mask is for
    changed = [x.clone() for x in xs]
    changed[masked][:, 4:] = torch.randn(BATCH, 2, 8)  # new steps 4 and 5
    before, after = _run(kind, args, *xs), _run(kind, args, *changed)
    assert torch.allclose(before[:, :4], after[:, :4], atol=1e-5)
    assert not torch.allclose(before[:, 4:], after[:, 4:])
    unmasked = {**args, "causal": False}
    assert not torch.allclose(
        _run(kind, unmasked, *xs)[:, :4], _run(kind, unmasked, *changed)[:, :4]
    )


@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
def test_recurrent_returns(kind: str) -> None:
    x = torch.randn(BATCH, 5, 6)
    args = {"hidden_size": 4, "num_layers": 2, "bidirectional": True}
    layer = make(kind, args)
    call = layer.torch([TensorType((5, 6))])
    module = build(call)
    assert module is not None
    with torch.no_grad():
        output, state = module(x)
        h_n = state[0] if kind == "LSTM" else state
        for returns, expected in [
            ("sequence", output),
            ("last", output[:, -1]),
            ("hidden", torch.cat([h_n[-2], h_n[-1]], dim=-1)),  # last layer, both directions
        ]:
            template = make(kind, {**args, "returns": returns}).torch([TensorType((5, 6))])
            assert torch.equal(forward(template, module, [x]), expected)


def test_sinusoidal_table_values() -> None:
    layer = make("SinusoidalPositionalEncoding", {"max_len": 10})
    module = build(layer.torch([TensorType((T, 6))]))
    assert module is not None
    table = dict(module.named_buffers())["table"]
    t = torch.arange(10.0)
    for i in range(3):
        angle = t / 10000.0 ** (2 * i / 6)
        assert torch.allclose(table[:, 2 * i], torch.sin(angle), atol=1e-6)
        assert torch.allclose(table[:, 2 * i + 1], torch.cos(angle), atol=1e-6)
    assert "table" in module.state_dict()  # persistent: saved with the model
    assert not list(module.parameters())


def test_merge_templates() -> None:
    a, b, c = torch.randn(BATCH, 3, 4), torch.randn(BATCH, 3, 4), torch.randn(BATCH, 3, 4)
    assert torch.equal(_run("Add", {}, a, b, c), a + b + c)
    assert torch.equal(_run("Concat", {"dim": 0}, a, b), torch.cat([a, b], dim=1))
    assert torch.equal(_run("Concat", {}, a, c), torch.cat([a, c], dim=2))


# errors -----------------------------------------------------------------------------------------


LAYER_ERRORS = [
    # (kind, args, inputs, dtype, code, text the message or notes must contain)
    ("Embedding", {"num_embeddings": 10, "embedding_dim": 4}, [(T,)], "float", "E404", "long"),
    (
        "Embedding",
        {"num_embeddings": 10, "embedding_dim": 4, "padding_idx": 10},
        [(T,)],
        "long",
        "E204",
        "padding_idx=10",
    ),
    (
        "SinusoidalPositionalEncoding",
        {"max_len": 64},
        [(128, 16)],
        "float",
        "E401",
        "max_len=64 steps, but its input [128, 16] has 128",
    ),
    ("LearnedPositionalEncoding", {"max_len": 8}, [(16,)], "float", "E404", "[T, D]"),
    ("LearnedPositionalEncoding", {"max_len": 8}, [(4, T)], "float", "E405", "symbolic"),
    ("RNN", {"hidden_size": 8}, [(6,)], "float", "E404", "[T, F]"),
    ("RNN", {"hidden_size": 8}, [(T, 6)], "long", "E404", "embed tokens first"),
    ("GRU", {"hidden_size": 8, "input_size": 7}, [(T, 6)], "float", "E401", "input_size=7"),
    ("GRU", {"hidden_size": 8}, [(6, T)], "float", "E405", "symbolic"),
    ("LSTM", {"hidden_size": 8, "dropout": 0.2}, [(T, 6)], "float", "E204", "num_layers=1"),
    ("LSTM", {"hidden_size": 8, "proj_size": 8}, [(T, 6)], "float", "E204", "proj_size=8"),
    ("MultiheadAttention", {"num_heads": 3}, [(T, 8)], "float", "E204", "8 % 3 = 2"),
    (
        "MultiheadAttention",
        {"num_heads": 2, "embed_dim": 16},
        [(T, 8)],
        "float",
        "E401",
        "embed_dim=16",
    ),
    ("MultiheadAttention", {"num_heads": 2, "kdim": 4}, [(T, 8)], "float", "E401", "kdim=4"),
    (
        "MultiheadAttention",
        {"num_heads": 2},
        [(T, 8), (S, 8), (T, 8)],
        "float",
        "E401",
        "keys [S, 8] and values [T, 8]",
    ),
    (
        "MultiheadAttention",
        {"num_heads": 2, "causal": True},
        [(T, 8), (S, 8)],
        "float",
        "E204",
        "keys as long as the queries",
    ),
    ("TransformerEncoderLayer", {"nhead": 3}, [(T, 8)], "float", "E204", "nhead=3"),
    ("TransformerEncoder", {"nhead": 2, "num_layers": 2}, [(T, 8, 2)], "float", "E404", "[T, d]"),
    (
        "TransformerDecoderLayer",
        {"nhead": 2},
        [(T, 8), (S, 6)],
        "float",
        "E401",
        "second input [S, 6] has width 6",
    ),
    (
        "Transformer",
        {"d_model": 512, "nhead": 8},
        [(S, 256), (T, 256)],
        "float",
        "E401",
        "d_model=512",
    ),
    ("RMSNorm", {"normalized_shape": 6}, [(T, 8)], "float", "E401", "ends with [8]"),
    ("RMSNorm", {"normalized_shape": (2, 3, 8)}, [(3, 8)], "float", "E404", "needs at least 3"),
    ("Add", {}, [(T, 8), (T, 4)], "float", "E401", "[T, 8] + [T, 4]"),
    ("Concat", {}, [(T, 8), (S, 4)], "float", "E401", "got [T, 8], [S, 4]"),
    ("Concat", {"dim": 2}, [(T, 8), (T, 4)], "float", "E204", "dim=2"),
    ("Concat", {}, [(T, 8), (T, 4, 1)], "float", "E401", "every other dimension"),
]


@pytest.mark.parametrize(("kind", "args", "inputs", "dtype", "code", "text"), LAYER_ERRORS)
def test_bad_input_is_a_layer_error(
    kind: str, args: dict[str, Any], inputs: list[tuple[Dim, ...]], dtype: str, code: str, text: str
) -> None:
    with pytest.raises(LayerError) as err:
        make(kind, args).infer([TensorType(s, dtype) for s in inputs])  # type: ignore[arg-type]
    assert err.value.code == code
    assert text in " ".join([err.value.message, *err.value.notes])


def test_mixed_dtypes_do_not_merge() -> None:
    with pytest.raises(LayerError) as err:
        make("Add", {}).infer([TensorType((T,), "long"), TensorType((T,))])
    assert err.value.code == "E404"


BAD_ARGS = [
    ("Embedding", {"num_embeddings": 10}),
    ("LSTM", {"hidden_size": 8, "returns": "final"}),
    ("RNN", {"hidden_size": 8, "nonlinearity": "gelu"}),
    ("GRU", {"hidden_size": 0}),
    ("MultiheadAttention", {"num_heads": 2, "dropout": 1.5}),
    ("TransformerEncoderLayer", {"nhead": 2, "activation": "silu"}),
    ("TransformerEncoder", {"nhead": 2}),
    ("SinusoidalPositionalEncoding", {}),
    ("Linear", {"out_features": 4, "tie": "tok_emb.weight"}),
]


@pytest.mark.parametrize(("kind", "args"), BAD_ARGS)
def test_bad_argument_is_a_validation_error(kind: str, args: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        make(kind, args)


def _codes(text: str) -> list[str]:
    return [d.code for d in check_text(text).report.diagnostics if d.severity == "error"]


def test_arity_and_sources_in_specs() -> None:
    model = "model M(T: dim = 8) {{ input a: float[T, 4]  b = Linear(4)  {body} }}"
    assert _codes(model.format(body="c = Add")) == ["E407"]
    assert _codes(model.format(body="c = Add <- a, b")) == []
    assert _codes(model.format(body="c = MultiheadAttention(num_heads=2) <- a, b, a, b")) == [
        "E407"
    ]
    assert _codes(model.format(body="c = Concat(0) <- a, b  expect shape == [2 * T, 4]")) == []


# weight tying -----------------------------------------------------------------------------------

TIED = """
model LM(vocab: int = 50, T: dim = 16) {
    input tokens: long[T]
    tok_emb = Embedding(vocab, 32)
    head = Linear(vocab, tie="tok_emb")   expect params == vocab
}
"""


def test_tied_weights_are_counted_once() -> None:
    checked = check_text(TIED)
    assert checked.ok, checked.report.diagnostics
    assert checked.graph is not None
    head = checked.graph.steps[-1]
    assert head.tied == {"weight": "tok_emb.weight"}
    assert head.params == 50  # the bias only
    assert checked.report.trainable_params == 50 * 32 + 50
    assert head.label == "Linear(50, tie=tok_emb)"


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (("Linear(vocab,", "Linear(40,"), "E401"),  # [40, 32] cannot share [50, 32]
        (('tie="tok_emb"', 'tie="tok_embed"'), "E406"),
        (('tie="tok_emb"', 'tie="tokens"'), "E406"),  # an input, not a layer
    ],
)
def test_bad_ties_are_diagnosed(change: tuple[str, str], code: str) -> None:
    assert _codes(TIED.replace(*change)) == [code]


# an encoder-decoder's two lookups and its head read one table (T5's shared embedding)
TIED_LOOKUP = """
model Translate(vocab: int = 50, T: dim = 5, U: dim = 3) {
    input source: long[T]
    input target: long[U]
    enc_emb = Embedding(vocab, 16) <- source
    dec_emb = Embedding(vocab, 16, tie=enc_emb) <- target   expect params == 0
    both = Concat(0) <- enc_emb, dec_emb
    head = Linear(vocab, bias=false, tie=dec_emb)  # dec_emb's table: enc_emb's
}
"""


def test_a_tied_lookup_reads_the_earlier_table() -> None:
    """Counted once by the analysis, one Parameter in the generated module, and the lookups
    and the head computed with it, as torch computes them; ONNX holds it once and ONNX
    Runtime agrees with torch."""
    from dlspec.backends.onnx_export import export_onnx

    spec = dlspec.load_text(TIED_LOOKUP, "translate.dl")
    assert not spec.report.diagnostics
    steps = {s.name: s for s in spec.graph.steps}
    assert steps["dec_emb"].tied == {"weight": "enc_emb.weight"}
    assert steps["head"].tied == {"weight": "enc_emb.weight"}  # the tensor it shares, held once
    assert steps["dec_emb"].label == "Embedding(50, 16, tie=enc_emb)"
    assert spec.report.trainable_params == 50 * 16
    torch.manual_seed(0)
    model = spec.to_torch().eval()
    table = model.enc_emb.weight
    assert model.dec_emb.weight is table and model.head.weight is table
    assert [name for name, _ in model.named_parameters()] == ["enc_emb.weight"]
    source, target = torch.randint(0, 50, (2, 5)), torch.randint(0, 50, (2, 3))
    with torch.no_grad():
        expected = torch.cat([F.embedding(source, table), F.embedding(target, table)], 1)
        torch.testing.assert_close(model(source, target), expected @ table.T, rtol=0, atol=0)
    result = export_onnx(model, spec.graph, device="cpu")
    assert all(c.passed for c in result.comparisons)
    assert result.initializers.parameters == spec.report.trainable_params


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (("Embedding(vocab, 16, tie", "Embedding(40, 16, tie"), "E401"),  # [40, 16] vs [50, 16]
        (("tie=enc_emb)", "tie=head)"), "E406"),  # a later layer
        (("tie=enc_emb)", "tie=target)"), "E406"),  # an input, not a layer
        (("tie=dec_emb)", "tie=both)"), "E204"),  # a layer without a weight
    ],
)
def test_bad_tied_lookups_are_diagnosed(change: tuple[str, str], code: str) -> None:
    assert _codes(TIED_LOOKUP.replace(*change)) == [code]


# specs --------------------------------------------------------------------------------------------

SPECS = ["rnn", "lstm_lm", "gru_classifier", "transformer", "tiny_gpt"]


@pytest.mark.parametrize("name", SPECS)
def test_spec_agrees_with_its_generated_torch_model(name: str) -> None:
    """The spec checks without errors; the generated model has exactly the analyzer's
    tensors (a shared one once, under its first name) and maps random inputs to the
    analyzer's output shape."""
    spec = dlspec.load(ROOT / "specs" / f"{name}.dl")
    assert not [d for d in spec.report.diagnostics if d.severity == "error"]
    graph = spec.graph
    torch.manual_seed(0)
    model = spec.to_torch().eval()

    def expected(kind: str) -> dict[str, tuple[int, ...]]:
        return {
            f"{leaf.path}.{tensor}": shape
            for leaf in graph.leaves()
            for tensor, shape in getattr(leaf, kind).items()
            if tensor not in leaf.tied
        }

    assert {k: tuple(p.shape) for k, p in model.named_parameters()} == expected("weights")
    assert {k: tuple(b.shape) for k, b in model.named_buffers()} == expected("buffers")
    assert sum(p.numel() for p in model.parameters()) == spec.report.trainable_params
    assert sum(b.numel() for b in model.buffers()) == spec.report.buffers

    inputs = [
        random_input(concrete(i.type.shape, graph.bindings), i.type.dtype) for i in graph.inputs
    ]
    with torch.no_grad():
        y = model(*inputs)
    [output] = [o.type for o in graph.outputs]
    assert tuple(y.shape) == (BATCH, *concrete(output.shape, graph.bindings))


def test_tiny_gpt_shares_the_embedding() -> None:
    spec = dlspec.load(ROOT / "specs" / "tiny_gpt.dl")
    model = spec.to_torch()
    assert model.get_parameter("head.weight") is model.get_parameter("tok_emb.weight")
    assert {row.name: row.params for row in spec.report.layers}["head"] == 0
    assert spec.report.trainable_params == 809_856  # 65 x 128 counted once


# property test ----------------------------------------------------------------------------------

dims = st.one_of(st.integers(1, 9), st.just(T), st.just(S), st.just(2 * T + 1))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shapes=st.lists(st.lists(dims, min_size=0, max_size=3).map(tuple), min_size=1, max_size=3),
    dtype=st.sampled_from(["float", "long"]),
)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_any_input_gives_a_result_or_a_layer_error(
    kind: str, shapes: list[tuple[Dim, ...]], dtype: str
) -> None:
    """Random (often broken) inputs, within the kind's arity, yield a diagnostic, never a
    crash (E407 where the arguments narrow the arity: ``Add`` without a number takes two)."""
    example = next(e for e in EXAMPLES if e.kind == kind)
    layer = make(kind, example.args)
    lo, hi = layer.arity
    shapes = (shapes * 3)[: max(lo, min(hi, len(shapes)))]
    try:
        layer.infer([TensorType(s, dtype) for s in shapes])  # type: ignore[arg-type]
    except LayerError as err:
        assert err.code in ("E204", "E401", "E402", "E404", "E405", "E407"), err.message
