"""Hugging Face transformers models built from small configs (no download), for
`dlspec import` and `dlspec check MODULE:CALLABLE` (the manual and the tests). Each factory
seeds torch, so that the weights it draws are the same every time; ``layers`` and ``hidden``
set the size."""

from __future__ import annotations

import torch
import transformers
from torch import nn

ATTENTION = "sdpa"  # torch's fused attention: one call per layer, its mask made from sizes


def _built(cls: type[nn.Module], config: transformers.PretrainedConfig) -> nn.Module:
    torch.manual_seed(0)
    config._attn_implementation = ATTENTION
    return cls(config).eval()


def gpt2(layers: int = 2, hidden: int = 64) -> nn.Module:
    """GPT-2 with its language-model head (the head's weight is the token embedding's)."""
    config = transformers.GPT2Config(
        n_layer=layers,
        n_embd=hidden,
        n_head=4,
        vocab_size=100,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    return _built(transformers.GPT2LMHeadModel, config)


def llama(layers: int = 2, hidden: int = 64) -> nn.Module:
    """Llama with grouped-query heads (4 query heads share 2 key/value heads), RoPE,
    RMSNorm and a SwiGLU feed-forward."""
    config = transformers.LlamaConfig(
        num_hidden_layers=layers,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
        max_position_embeddings=64,
    )
    return _built(transformers.LlamaForCausalLM, config)


def vit(layers: int = 2, hidden: int = 64) -> nn.Module:
    """A ViT encoder over 32 x 32 images in 8 x 8 patches, without the pooler."""
    config = transformers.ViTConfig(
        num_hidden_layers=layers,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    torch.manual_seed(0)
    config._attn_implementation = ATTENTION
    return transformers.ViTModel(config, add_pooling_layer=False).eval()


def t5_encoder(layers: int = 3, hidden: int = 64) -> nn.Module:
    """T5's encoder: relative position bias computed by the first layer and shared by the
    others, attention without the 1/sqrt(d) scaling, RMSNorm and a ReLU feed-forward. Three
    layers: the first holds the bias table, the two after it are alike."""
    return _built(transformers.T5EncoderModel, _t5_config(layers, hidden))


def _t5_config(layers: int, hidden: int) -> transformers.T5Config:
    """A small T5: 4 heads, a feed-forward twice as wide, 8 position buckets."""
    return transformers.T5Config(
        num_layers=layers,
        d_model=hidden,
        d_kv=hidden // 4,
        d_ff=2 * hidden,
        num_heads=4,
        vocab_size=100,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        use_cache=False,  # no key/value cache: a decoder run once over its ids
    )


def bert(layers: int = 2, hidden: int = 64) -> nn.Module:
    """A BERT encoder with its pooler: token, position and token-type embeddings, post-norm
    layers whose attention skips padding (the ``attention_mask``, when it is given)."""
    config = transformers.BertConfig(
        num_hidden_layers=layers,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_attention_heads=4,
        vocab_size=100,
        max_position_embeddings=64,
    )
    return _built(transformers.BertModel, config)


def t5(layers: int = 3, hidden: int = 32) -> nn.Module:
    """T5 with its language-model head (tied to the shared embedding): the encoder as
    t5_encoder's, and a decoder whose layers attend causally to its ids and to the encoder's
    output, the first of each stack holding its relative position bias table. Its forward
    takes the decoder's ids by name (``--input decoder_input_ids=long[U]``)."""
    return _built(transformers.T5ForConditionalGeneration, _t5_config(layers, hidden))
