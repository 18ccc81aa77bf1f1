"""`dlspec import` of Hugging Face transformers models (through torch.export), built from
small configs in docs/examples/hf.py: counts, MACs and outputs against the originals, and the
spec each becomes (a golden file per model)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from conftest import ROOT, assert_golden
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import dlspec
from dlspec.cli import main
from dlspec.importers.pipeline import Result, import_model, imported_weights
from dlspec.importers.torch_export import pick

pytest.importorskip("transformers")

FACTORIES = "docs.examples.hf"
INPUTS = {
    "gpt2": ["long[T]"],
    "llama": ["long[T]"],
    "vit": ["float[3, 32, 32]"],
    "bert": ["long[T]", "long[T]"],  # input_ids and attention_mask (1 a token, 0 padding)
    "t5_encoder": ["long[T]"],
    # the decoder's ids by name (the forward takes the encoder's mask second), another length
    "t5": ["input_ids=long[T]", "decoder_input_ids=long[U=12]"],
}
# the whole model: the pooler reads the encoder's output; the decoder's logits
OUTPUTS = {"bert": "pooler_output", "t5": "logits"}
MAC_TOLERANCE = 0.02  # a Linear's bias and a norm's scale are MACs to dlspec, not to torch
OUTPUT_TOLERANCE = 1e-5  # the imported weights reproduce the original's outputs (max |y - r|)


@pytest.fixture(autouse=True)
def _at_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the factories import as docs.examples.hf


@functools.cache
def imported(name: str) -> tuple[Result, dlspec.Spec]:
    """The model imported, and its spec checked (once per model for the tests that read it)."""
    result = import_model(f"{FACTORIES}:{name}", INPUTS[name], output=OUTPUTS.get(name))
    return result, dlspec.load_text(result.text, f"{name}.dl")


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_hugging_face_model_imports_as_torch_counts_it(name: str) -> None:
    result, spec = imported(name)
    model = result.original
    report = spec.report
    assert report.trainable_params == sum(p.numel() for p in model.parameters())
    state = model.state_dict()
    assert report.buffers == sum(b.numel() for n, b in model.named_buffers() if n in state)
    # MACs: torch's FLOP counter on the original at the spec's lengths, batch 1, attention
    # computed by plain matrix products (the counter does not see CPU's fused kernel)
    example = [x[:1] for x in result.examples]
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        result.forward(example)
    macs = counter.get_total_flops() / 2
    assert abs(report.total_macs - macs) <= MAC_TOLERANCE * macs, (report.total_macs, macs)
    # the spec's module, holding the imported weights, computes the original's result
    state_dict, _ = imported_weights(result, spec)
    rebuilt = spec.to_torch().eval()
    rebuilt.load_state_dict(state_dict)
    with torch.no_grad():
        ours = rebuilt(*result.examples)
        theirs = pick(result.forward(), result.output)
    assert (ours - theirs).abs().max() <= OUTPUT_TOLERANCE
    assert_golden(ROOT / "tests" / "golden" / "import" / f"{name}.dl", result.text)


def test_the_spec_reads_as_a_person_writes_it() -> None:
    gpt2 = imported("gpt2")[0].text
    for line in (
        "h = GPT2Block * 2",
        'act = GELU("tanh")',  # GPT-2's gelu_new, written out in its forward
        "c_attn = Linear(192)",  # its Conv1D, a Linear with the weight transposed
        "sdpa = SDPA(4, causal=true) <- split_0, split_1, split_2",
        "lm_head = Linear(100, bias=false, tie=wte)",
        "wpe = LearnedPositionalEncoding(64)",
    ):
        assert line in gpt2
    llama = imported("llama")[0].text
    for line in (
        "layers = LlamaDecoderLayer * 2",
        "input_layernorm = RMSNorm(eps=1e-06)",
        "q_proj_rope = RoPE(4) <- q_proj",
        "sdpa = SDPA(4, num_kv_heads=2, causal=true) <- q_proj_rope, k_proj_rope, v_proj",
        "mul = Mul <- act_fn, up_proj",
    ):
        assert line in llama
    vit = imported("vit")[0].text
    assert "cls_token = Parameter(1, 64) <- pixel_values" in vit
    assert "layers = ViTLayer * 2" in vit
    t5 = imported("t5_encoder")[0].text
    for line in (
        # the first layer's table, a lookup by offset buckets, added to unscaled scores
        "relative_attention_bias = BucketedPositionBias(8, 4, max_distance=20) <- input",
        "sdpa = SDPA(4, scale=1.0) <- q, k, v, relative_attention_bias",
        "output relative_attention_bias, o",
        # ... which it returns, and the layers after it read, alike: a repetition
        "relative_attention_bias, block_0 = T5Block",
        "block = T5Block2 * 2 <- block_0, relative_attention_bias",
        "block T5Attention2 <- hidden_states, position_bias {",
        "layer_norm = RMSNorm(eps=1e-06)",  # T5LayerNorm, written out in its forward
        "act = ReLU",
    ):
        assert line in t5

    t5 = imported("t5")[0].text
    for line in (
        "input decoder_input_ids: long[U]",  # passed by name
        # the stacks' layers in the model's body, the decoder's named after it: its lookup
        # and the head read the encoder's table (the shared embedding)
        "block = T5Block2 * 2 <- block_0, relative_attention_bias",
        "decoder_embed_tokens = Embedding(100, 32, tie=embed_tokens) <- decoder_input_ids",
        "decoder_block = T5Block4 * 2 <- decoder_block_0, decoder_relative_attention_bias, "
        "dropout_2",
        f"mul = Mul({32**-0.5!r})",  # the tied head's input scaled by d_model ** -0.5
        "lm_head = Linear(100, bias=false, tie=embed_tokens)",
        "block T5Attention4 <- hidden_states, key_value_states {",  # the cross-attention
    ):
        assert line in t5

    bert = imported("bert")[0].text
    for line in (
        "input attention_mask: long[T]",
        "token_type_ids = Full(0) <- input_ids",  # zeros from a buffer when none are given
        "position_embeddings = LearnedPositionalEncoding(64)",
        "layer = BertLayer * 2 <- dropout, attention_mask",
        "block BertSelfAttention <- hidden_states, attention_mask {",
        "sdpa = SDPA(4) <- query, key, value, attention_mask",  # padding: BERT's mask
        "activation = Tanh",
    ):
        assert line in bert


def test_bert_without_a_mask_attends_to_every_token() -> None:
    """Called without an attention_mask, BERT's mask of all ones, made from the length,
    leaves no trace; its token types are zeros from a buffer (Full). Its first result, the
    last hidden state, reads all but the pooler. One small layer."""
    result = import_model(f"{FACTORIES}:bert", ["long[8]"], {"layers": 1, "hidden": 32})
    assert "sdpa = SDPA(4) <- query, key, value\n" in result.text
    assert "attention_mask" not in result.text
    assert "token_type_ids = Full(0)\n" in result.text
    spec = dlspec.load_text(result.text, "bert.dl")
    model = result.original
    pooler = sum(p.numel() for p in model.pooler.parameters())
    assert spec.report.trainable_params == sum(p.numel() for p in model.parameters()) - pooler
    _, worst = imported_weights(result, spec)
    assert worst <= OUTPUT_TOLERANCE


def test_an_additive_padding_mask_is_the_ids_it_was_made_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A padding mask written as a bias (0 for a token, the most negative number for
    padding), as attention that is not Hugging Face's makes it: SDPA reads the ids."""
    (tmp_path / "padded.py").write_text(
        "import torch\n"
        "import torch.nn.functional as F\n"
        "from torch import nn\n\n\n"
        "class Padded(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.embed = nn.Embedding(10, 16)\n"
        "        self.q, self.k = nn.Linear(16, 16), nn.Linear(16, 16)\n"
        "        self.v = nn.Linear(16, 16)\n\n"
        "    def forward(self, ids, mask):\n"
        "        x = self.embed(ids)\n"
        "        b, t = x.shape[0], x.shape[1]\n"
        "        split = [f(x).view(b, t, 2, 8) for f in (self.q, self.k, self.v)]\n"
        "        q, k, v = (h.transpose(1, 2) for h in split)\n"
        "        bias = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min\n"
        "        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)\n"
        "        return out.transpose(1, 2).reshape(b, t, 16)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    result = import_model("padded:Padded", ["long[T]", "long[T]"])
    assert "sdpa = SDPA(2) <- q, k, v, mask" in result.text
    assert (result.examples[1] == 0).any()  # some keys are padding
    _, worst = imported_weights(result, dlspec.load_text(result.text, "padded.dl"))
    assert worst <= OUTPUT_TOLERANCE


def test_output_picks_a_result(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", f"{FACTORIES}:vit", "--input", "float[3, 32, 32]", "--output", "nope"])
    err = capsys.readouterr().err
    assert code == 2 and "--output nope: no 'nope'; the model returns last_hidden_state" in err
    assert "Traceback" not in err


def test_check_prints_the_report_with_symbolic_lengths(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", f"{FACTORIES}:llama", "--input", "long[T]", "--output", "logits"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "lm_head                       Linear(100)" in out and "[T, 100]" in out
    assert "total params       86,848" in out
    assert "MACs per sample    1,352,704 (1.35M) at T=16; = 256*T^2 + 80448*T" in out


def test_what_neither_tracer_maps_is_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "branching.py").write_text(
        "import torch\n"
        "from torch import nn\n\n\n"
        "class Branching(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(8, 8)\n\n"
        "    def forward(self, x):\n"
        "        if x.shape[-1] == 8:  # Python control flow: torch.fx cannot trace it\n"
        "            return torch.erf(self.fc(x))\n"
        "        return x\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "branching.dl"
    code = main(["import", "branching:Branching", "--input", "float[8]", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "Branching cannot be imported (tried torch.fx, then torch.export)" in err
    assert "torch.fx: (model): Branching.forward: cannot be traced with torch.fx" in err
    # torch.export reads it: the one operation without a kind, with its module path
    assert "torch.export: (model): aten.erf.default: no dlspec layer kind computes it" in err
    assert not out.exists()


def test_a_decoder_stack_with_causal_and_cross_attention(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """T5's decoder stack over encoder states: its self-attention's mask is the position
    bias where the causal mask allows, the most negative number where not -> the decoder's
    bias (buckets for earlier keys only) and ``SDPA(causal=true)``; its cross-attention's
    position bias, zeros made from the lengths and handed from layer to layer, adds nothing
    and leaves no trace. Two small layers."""
    (tmp_path / "decoder.py").write_text(
        "import torch\n"
        "import transformers\n"
        "from torch import nn\n"
        "from transformers.models.t5.modeling_t5 import T5Stack\n\n\n"
        "class Decoder(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        config = transformers.T5Config(\n"
        "            num_layers=2, d_model=32, d_kv=8, d_ff=64, num_heads=4, vocab_size=100,\n"
        "            relative_attention_num_buckets=8, relative_attention_max_distance=20,\n"
        "            use_cache=False, is_decoder=True,\n"
        "        )\n"
        '        config._attn_implementation = "sdpa"\n'
        "        torch.manual_seed(0)\n"
        "        self.stack = T5Stack(config)\n\n"
        "    def forward(self, ids, states):\n"
        "        return self.stack(ids, encoder_hidden_states=states).last_hidden_state\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    result = import_model("decoder:Decoder", ["long[T]", "float[S, 32]"])
    text = " ".join(result.text.split())  # statements as one line each would read
    assert "BucketedPositionBias(8, 4, max_distance=20, bidirectional=false) <- input" in text
    assert "sdpa = SDPA(4, causal=true, scale=1.0) <- q, k, v, relative_attention_bias" in text
    assert "sdpa = SDPA(4, causal=true, scale=1.0) <- q, k, v, position_bias" in text
    assert "sdpa = SDPA(4, scale=1.0) <- q, k, v\n" in result.text  # the cross-attention
    spec = dlspec.load_text(result.text, "decoder.dl")
    assert spec.report.trainable_params == sum(p.numel() for p in result.original.parameters())
    _, worst = imported_weights(result, spec)
    assert worst <= OUTPUT_TOLERANCE


def test_an_input_by_a_name_the_forward_lacks_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["check", f"{FACTORIES}:t5", "--input", "long[T]", "--input", "ids=long[U]"])
    err = capsys.readouterr().err
    message = "T5ForConditionalGeneration.forward takes no input 'ids'; it takes input_ids, "
    assert code == 2 and f"--input ids=long[U]: {message}attention_mask," in err, err
    assert "Traceback" not in err
