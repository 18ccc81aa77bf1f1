"""Attention masks and biases: SDPA's fourth input against the formulas it stands for
(BERT's extended attention mask, an additive bias), MultiheadAttention's key-padding mask
against torch's own, the saved tensors against autograd, and the diagnostics for a mask
that does not broadcast over the scores."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from saved_oracle import saved_bytes
from test_layers_oracle import build, forward, make
from test_memory import estimate, measure, rule

import dlspec
from dlspec.layers import LayerError, TensorType, TorchCall
from dlspec.layers.symbolic import Dim

HEADS, HD, T, S = 2, 4, 5, 6


def _types(mask: tuple[Dim, ...], dtype: str, kv_width: int = HEADS * HD) -> list[TensorType]:
    return [
        TensorType((T, HEADS * HD)),
        TensorType((S, kv_width)),
        TensorType((S, kv_width)),
        TensorType(mask, dtype),  # type: ignore[arg-type]
    ]


def _mask(batch: int, shape: tuple[int, ...], dtype: str) -> torch.Tensor:
    if dtype == "long":
        return torch.randint(0, 2, (batch, *shape))
    return torch.randn(batch, *shape, requires_grad=True)


def _reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor,
    scale: float = 1 / math.sqrt(HD),
) -> torch.Tensor:
    """softmax(scale * q k^T + bias) v per head, written out; ``bias`` (B, h|1, T|1, S)."""
    batch = q.shape[0]
    split = [x.view(batch, x.shape[1], HEADS, HD).transpose(1, 2) for x in (q, k, v)]
    scores = split[0] @ split[1].transpose(-1, -2) * scale + bias
    return (scores.softmax(-1) @ split[2]).transpose(1, 2).reshape(batch, T, HEADS * HD)


@pytest.mark.parametrize("shape", [(S,), (1, S), (HEADS, 1, S)])
def test_a_long_mask_is_berts_extended_attention_mask(shape: tuple[int, ...]) -> None:
    """1 attends, 0 is padding: (1 - mask) * finfo.min added to the scores (Hugging Face's
    get_extended_attention_mask), so even a row of padding only stays finite."""
    torch.manual_seed(0)
    types = _types(shape, "long")
    layer = make("SDPA", {"num_heads": HEADS})
    call = layer.torch(types)
    q, k, v = (torch.randn(3, *t.shape) for t in types[:3])  # type: ignore[misc]
    mask = torch.randint(0, 2, (3, *shape))
    mask[0] = 0  # a sample of padding only
    extended = (1.0 - mask.float()) * torch.finfo(torch.float32).min
    bias = extended.reshape(3, *[1] * (3 - len(shape)), *shape)
    with torch.no_grad():
        got = forward(call, build(call), [q, k, v, mask])
    torch.testing.assert_close(got, _reference(q, k, v, bias))
    assert torch.isfinite(got).all()


def test_a_float_mask_is_an_additive_bias_per_head() -> None:
    torch.manual_seed(0)
    types = _types((HEADS, T, S), "float")
    call = make("SDPA", {"num_heads": HEADS}).torch(types)
    q, k, v, bias = (torch.randn(2, *t.shape) for t in types)  # type: ignore[misc]
    with torch.no_grad():
        got = forward(call, build(call), [q, k, v, bias])
    torch.testing.assert_close(got, _reference(q, k, v, bias))


@pytest.mark.parametrize("scale", [1.0, 0.3])
def test_scale_replaces_the_square_root_of_the_head_width(scale: float) -> None:
    """T5 adds its position bias to unscaled scores: ``SDPA(heads, scale=1.0)``."""
    torch.manual_seed(0)
    types = _types((HEADS, T, S), "float")
    call = make("SDPA", {"num_heads": HEADS, "scale": scale}).torch(types)
    q, k, v, bias = (torch.randn(2, *t.shape) for t in types)  # type: ignore[misc]
    with torch.no_grad():
        got = forward(call, build(call), [q, k, v, bias])
    torch.testing.assert_close(got, _reference(q, k, v, bias, scale))


@pytest.mark.parametrize(
    ("shape", "dtype", "args"),
    [
        ((S,), "long", {}),  # flash attention keeps the scores made from the mask
        ((HEADS, 1, S), "long", {}),
        ((S,), "long", {"dropout": 0.1}),  # the plain math
        ((S,), "long", {"num_kv_heads": 1}),
        ((T, S), "float", {}),  # a bias needs its gradient: the plain math
        ((HEADS, T, S), "float", {}),
        ((HEADS, T, S), "float", {"scale": 1.0}),  # T5's
    ],
)
@pytest.mark.parametrize("batch", [2, 5])
def test_masked_attention_saves_what_torch_saves(
    shape: tuple[int, ...], dtype: str, args: dict[str, int], batch: int
) -> None:
    width = HD * args.get("num_kv_heads", HEADS)
    types = _types(shape, dtype, width)
    layer = make("SDPA", {"num_heads": HEADS, **args})
    output = layer.infer(types).output
    call = layer.torch(types)
    module = build(call)
    torch.manual_seed(0)
    xs = [torch.randn(batch, *t.shape, requires_grad=True) for t in types[:3]]  # type: ignore[misc]
    xs.append(_mask(batch, shape, dtype))
    measured = saved_bytes(module, lambda: forward(call, module, xs))
    assert rule(layer.saves(types, output), batch, {}) == measured


def _square(mask: tuple[int, ...], dtype: str) -> list[TensorType]:
    """Queries, keys and values of one length T (causal attention), and a mask over them."""
    types = _types(mask, dtype)
    return [types[0], types[0], types[0], types[3]]


@pytest.mark.parametrize(("shape", "dtype"), [((HEADS, T, T), "float"), ((T,), "long")])
def test_causal_attention_adds_its_mask_to_the_given_one(
    shape: tuple[int, ...], dtype: str
) -> None:
    """``causal=true`` with a mask (T5's decoder: its position bias over causal attention):
    -inf at later keys, added to the bias (or to a padding mask's scores)."""
    torch.manual_seed(0)
    types = _square(shape, dtype)
    call = make("SDPA", {"num_heads": HEADS, "causal": True}).torch(types)
    q, k, v = (torch.randn(2, *t.shape) for t in types[:3])  # type: ignore[misc]
    mask = _mask(2, shape, dtype).detach()
    if dtype == "long":
        mask[:, 0] = 1  # the first key attended: no query sees padding only
    bias = mask if dtype == "float" else (mask == 0).float() * torch.finfo(torch.float32).min
    bias = bias.reshape(2, *[1] * (3 - len(shape)), *shape)
    later = torch.ones(T, T, dtype=torch.bool).triu(1)
    with torch.no_grad():
        got = forward(call, build(call), [q, k, v, mask])
    torch.testing.assert_close(got, _reference(q, k, v, bias.masked_fill(later, -math.inf)))


@pytest.mark.parametrize(("shape", "dtype"), [((HEADS, T, T), "float"), ((T,), "long")])
def test_causal_masked_attention_saves_what_torch_saves(shape: tuple[int, ...], dtype: str) -> None:
    """Flash attention keeps the mask with the causal part added: (T, T) from a key-padding
    mask's (T,); a learned bias still takes the plain math."""
    types = _square(shape, dtype)
    layer = make("SDPA", {"num_heads": HEADS, "causal": True})
    call = layer.torch(types)
    module = build(call)
    torch.manual_seed(0)
    xs = [torch.randn(2, *t.shape, requires_grad=True) for t in types[:3]]  # type: ignore[misc]
    xs.append(_mask(2, shape, dtype))
    measured = saved_bytes(module, lambda: forward(call, module, xs))
    assert rule(layer.saves(types, layer.infer(types).output), 2, {}) == measured


@pytest.mark.parametrize(
    ("shape", "args", "code", "text"),
    [
        ((T,), {}, "E401", "its size 5 along S should be 6 or 1"),
        ((3, T, S), {}, "E401", "along h should be 2 or 1"),
        ((1, 1, 1, S), {}, "E404", "has rank 4"),
    ],
)
def test_a_mask_that_does_not_broadcast_is_refused(
    shape: tuple[int, ...], args: dict[str, bool], code: str, text: str
) -> None:
    with pytest.raises(LayerError) as err:
        make("SDPA", {"num_heads": HEADS, **args}).infer(_types(shape, "long"))
    assert err.value.code == code
    assert text in err.value.message


@pytest.mark.parametrize(
    ("bias", "text"),
    [
        (["q", "q"], "names a projection twice"),
        (["q", "key"], "'q', 'k', 'v' or 'out'"),
    ],
)
def test_a_bias_must_name_projections_once(bias: list[str], text: str) -> None:
    with pytest.raises(ValidationError) as err:
        make("MultiheadAttention", {"num_heads": 2, "bias": bias})
    assert text in str(err.value)


def _t5_bucket(offset: int, buckets: int, distance: int, bidirectional: bool) -> int:
    """The T5 paper's bucket of a key ``offset`` steps after the query, written out."""
    bucket = 0
    if bidirectional:
        buckets //= 2
        bucket, offset = (buckets if offset > 0 else 0), abs(offset)
    else:
        offset = max(-offset, 0)
    exact = buckets // 2
    if offset < exact:
        return bucket + offset
    scaled = math.log(offset / exact) / math.log(distance / exact) * (buckets - exact)
    return bucket + min(exact + int(scaled), buckets - 1)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_t5_bias_is_looked_up_by_the_bucket_of_the_offset(bidirectional: bool) -> None:
    steps, buckets, distance = 40, 8, 20
    args = {"num_buckets": buckets, "num_heads": 2, "max_distance": distance}
    layer = make("BucketedPositionBias", args | {"bidirectional": bidirectional})
    call = layer.torch([TensorType((steps, 4))])
    module = build(call)
    with torch.no_grad():
        out = forward(call, module, [torch.zeros(3, steps, 4)])
    table = module.relative_attention_bias.weight
    assert out.shape == (3, 2, steps, steps)
    for i in range(steps):
        for j in range(steps):
            bucket = _t5_bucket(j - i, buckets, distance, bidirectional)
            assert torch.equal(out[2, :, i, j], table[bucket])


# MultiheadAttention's key-padding mask --------------------------------------------------------


def _attention(args: dict[str, object], steps: int) -> tuple[TorchCall, torch.nn.Module]:
    """Self-attention over ``steps`` with a long [steps] mask: its TorchCall and module."""
    types = [TensorType((steps, HEADS * HD)), TensorType((steps,), "long")]
    call = make("MultiheadAttention", {"num_heads": HEADS, **args}).torch(types)
    module = build(call)
    assert module is not None
    return call, module


@pytest.mark.parametrize("causal", [False, True])
def test_a_key_padding_mask_is_torchs_own(causal: bool) -> None:
    """0 marks a padded key: the output is torch's MultiheadAttention given the boolean
    key_padding_mask (where a query keeps a key to attend), and stays finite where all of
    a sample's keys are padding. Split projections (Whisper's bias on some of them) give
    the same with the same weights."""
    torch.manual_seed(0)
    width, steps = HEADS * HD, T
    call, module = _attention({"causal": causal}, steps)
    x = torch.randn(3, steps, width)
    ids = torch.randint(0, 3, (3, steps))
    ids[:, 0] = 1  # a key every query may attend (the first, for causal ones)
    with torch.no_grad():
        got = forward(call, module, [x, ids])
        later = torch.ones(steps, steps, dtype=torch.bool).triu(1)
        kw = {"attn_mask": later, "is_causal": True} if causal else {}
        want = module(x, x, x, key_padding_mask=ids == 0, need_weights=False, **kw)[0]
        torch.testing.assert_close(got, want)
        split_call, split = _attention({"causal": causal, "bias": ["q", "v", "out"]}, steps)
        weights = module.in_proj_weight.chunk(3)
        biases = module.in_proj_bias.clone().chunk(3)
        for name, weight, bias in zip("qkv", weights, biases, strict=True):
            getattr(split, f"{name}_proj").weight.copy_(weight)
            if name != "k":
                getattr(split, f"{name}_proj").bias.copy_(bias)
        split.out_proj.load_state_dict(module.out_proj.state_dict())
        module.in_proj_bias[width : 2 * width] = 0
        want = module(x, x, x, key_padding_mask=ids == 0, need_weights=False, **kw)[0]
        torch.testing.assert_close(forward(split_call, split, [x, ids]), want)
        ids[0] = 0  # a sample of padding only
        assert torch.isfinite(forward(call, module, [x, ids])).all()
        assert torch.isfinite(forward(split_call, split, [x, ids])).all()


KEY_PADDING = """model M(T: dim = 5) {
    input x: float[T, 8]
    input memory: float[7, 6]
    input ids: long[7]
    input tokens: long[T]
    pad = PaddingMask(0) <- ids
    keep = PaddingMask(0) <- tokens
    a = MultiheadAttention(num_heads=2) <- x, keep
    b = MultiheadAttention(num_heads=2, kdim=6, vdim=6) <- a, memory, pad
    c = MultiheadAttention(num_heads=2, causal=true) <- b, keep
    d = MultiheadAttention(num_heads=2, dropout=0.1) <- c, memory, memory, pad
    e = MultiheadAttention(num_heads=2, bias=["q", "v", "out"]) <- d, keep
    f = MultiheadAttention(num_heads=2, bias=["q", "v", "out"], causal=true) <- e, keep
    g = MultiheadAttention(num_heads=2, bias=["k"], dropout=0.1) <- f, memory, pad
}"""


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_key_padding_saves_what_torch_saves(batch: int) -> None:
    """Flash attention keeps the float mask torch gives it: the key-padding mask expanded to
    every head (h x S per sample; at batch 1 a view of the mask, S), the causal mask added
    (h x T x S); the plain math (dropout) keeps none. Split projections of a time-major
    sequence each copy it (3 copies: fixed with the masks)."""
    spec = dlspec.load_text(KEY_PADDING)
    assert estimate(spec, batch) == measure(spec, batch)


@pytest.mark.parametrize(
    ("mask", "code", "text"),
    [
        (TensorType((T,), "long"), "E401", "mask [5] should be [6]"),
        (TensorType((1, S), "long"), "E401", "mask [1, 6] should be [6]"),
        (TensorType((S, 8)), "E407", "got 4 float inputs"),
    ],
)
def test_a_key_padding_mask_must_be_one_id_per_key(mask: TensorType, code: str, text: str) -> None:
    types = [TensorType((T, 8)), TensorType((S, 8)), TensorType((S, 8)), mask]
    with pytest.raises(LayerError) as err:
        make("MultiheadAttention", {"num_heads": HEADS}).infer(types)
    assert err.value.code == code
    assert text in err.value.message
