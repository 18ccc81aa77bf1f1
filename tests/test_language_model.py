"""Sequence models: the language_model task, text and token-id data, sampling, and GRU
classification of token sequences."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from dlspec.cli import main
from dlspec.train import text as text_module
from dlspec.train.checkpoint import load_checkpoint
from dlspec.train.data import DataError, Dataset, load_arrays
from dlspec.train.generate import UnknownCharacters, generate, load_language_model
from dlspec.train.text import (
    TokenIds,
    decode,
    encode,
    python_docs,
    random_windows,
    read_text,
    text_splits,
    vocabulary,
)

ROOT = Path(__file__).resolve().parents[1]
TINY_GPT = str(ROOT / "specs" / "tiny_gpt.dl")
GRU = str(ROOT / "specs" / "gru_classifier.dl")
CORPUS = "the cat sat on the mat. the dog sat on the log. " * 60  # 14 characters
SMALL_GPT = ["--set", "d=32", "--set", "n_layer=1", "--set", "block_size=16"]
LM = ["--quiet", "--no-plots", "--train", "task=language_model", "--batch-size", "16"]
ASCII = {chr(c) for c in range(32, 127)} | {"\n"}


def metrics(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "metrics.json").read_text())
    return data


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(CORPUS, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def gpt_run(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT trained for 8 epochs on the repetitive corpus."""
    out = tmp_path_factory.mktemp("gpt")
    args = [TINY_GPT, *SMALL_GPT, "--set", "vocab=14", "--out", str(out), *LM]
    train = ["--data", str(corpus), "--epochs", "8", "--batch-size", "8", "--lr", "3e-3"]
    assert main(["build", *args, *train]) == 0
    return out


# --------------------------------------------------------------------------------------------
# text, vocabulary, windows


def test_vocabulary_encode_decode() -> None:
    vocab = vocabulary("hello, world\n")
    assert vocab == sorted(set("hello, world\n"))
    ids = encode("world", vocab)
    assert ids.dtype == torch.int64 and decode(ids.tolist(), vocab) == "world"
    with pytest.raises(ValueError, match=r"2 character\(s\) not in the vocabulary: 'x' 'é'"):
        encode("xé", vocab)


def test_the_embedded_corpus_is_python_help(monkeypatch: pytest.MonkeyPatch) -> None:
    text = python_docs()
    assert text == python_docs() and read_text("python-docs") == ("python-docs", text)
    assert set(text) <= ASCII and text.endswith("\n")
    if text_module._help_topics():  # this Python ships its help texts
        assert 300_000 < len(text) <= text_module.CORPUS_CHARS
        assert text.startswith('The "assert" statement')  # the first topic
    monkeypatch.setattr(text_module, "_help_topics", list)  # a Python without them
    fallback = python_docs()
    assert len(fallback) > 100_000 and set(fallback) <= ASCII
    assert "Return" in fallback and fallback != text


def test_text_splits_are_consecutive_windows(corpus: Path) -> None:
    train, val, test = text_splits(corpus, 8, 0.1, 0.2)
    assert val is not None and train.classes == vocabulary(CORPUS) == val.classes
    for part in (train, val, test):
        assert part.x.dtype == part.y.dtype == torch.int64 and part.x.shape[1] == 8
        assert torch.equal(part.x[:, 1:], part.y[:, :-1])  # y is x one step ahead
        assert torch.equal(part.x[1:, 0], part.y[:-1, -1])  # windows follow each other
    assert decode(train.x[0].tolist(), train.classes) == CORPUS[:8]
    spelled = decode(test.x.reshape(-1).tolist(), test.classes)
    assert spelled == CORPUS[-576:][: len(spelled)]  # the tail: the last 20%
    assert (len(train), len(val), len(test)) == (251, 35, 71)  # 70%, 10%, 20% of 2,880
    with pytest.raises(DataError, match=r"fewer than one window of T \+ 1 = 401.*--set T"):
        text_splits(corpus, 400, 0.1, 0.1)
    with pytest.raises(DataError, match=r"no such file.*python-docs"):
        text_splits(corpus.with_name("missing.txt"), 8, 0.1, 0.1)
    binary = corpus.with_name("binary.txt")
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DataError, match="not UTF-8 text"):
        text_splits(binary, 8, 0.1, 0.1)


def test_random_windows_are_fresh_pieces_of_the_text(corpus: Path) -> None:
    train, _, _ = text_splits(corpus, 8, 0.1, 0.2)
    first = random_windows(train.x, train.y, torch.Generator().manual_seed(1))
    again = random_windows(train.x, train.y, torch.Generator().manual_seed(1))
    other = random_windows(train.x, train.y, torch.Generator().manual_seed(2))
    x, y = first
    assert x.shape == y.shape == train.x.shape and torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(x, again[0]) and not torch.equal(x, other[0])
    spelled = decode(train.x.reshape(-1).tolist(), train.classes)
    assert all(decode(row.tolist(), train.classes) in spelled for row in x[:20])
    assert not torch.equal(x, train.x)


# --------------------------------------------------------------------------------------------
# training a language model


def test_language_model_training(gpt_run: Path) -> None:
    m = metrics(gpt_run)
    vocab = vocabulary(CORPUS)
    assert m["data"]["classes"] == vocab and m["config"]["task"] == "language_model"
    epochs = m["epochs"]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"] - 0.5  # it learns the text
    for entry in epochs:
        assert entry["train_perplexity"] == pytest.approx(math.exp(entry["train_loss"]))
        assert entry["val_perplexity"] == pytest.approx(math.exp(entry["val_loss"]))
        assert 0 <= entry["train_accuracy"] <= 1 and 0 <= entry["val_accuracy"] <= 1
    test = m["test"]
    assert test["perplexity"] == pytest.approx(math.exp(test["loss"]))
    assert test["accuracy"] > 0.5 and "confusion_matrix" not in test
    checkpoint = load_checkpoint(gpt_run / "checkpoint.pt", None)
    assert checkpoint.info["classes"] == vocab and checkpoint.epoch == 8
    assert checkpoint.info["spec_text"] == Path(TINY_GPT).read_text()
    assert checkpoint.info["bindings"] == {"T": 16} and checkpoint.info["params"]["vocab"] == 14


def test_build_prints_the_perplexity(corpus: Path, tmp_path: Path, capsys: Any) -> None:
    args = [TINY_GPT, *SMALL_GPT, "--set", "vocab=14", "--set", "T=8", "--out", str(tmp_path)]
    lm = [a for a in LM if a != "--quiet"]
    assert main(["build", *args, *lm, "--data", str(corpus), "--epochs", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "  ppl " in lines[1] and "perplexity" in lines[-2]  # per epoch, and the test
    assert metrics(tmp_path)["data"]["model_input"] == [8]


def test_resumed_language_model_equals_an_uninterrupted_one(corpus: Path, tmp_path: Path) -> None:
    def run(out: Path, epochs: int, *extra: str) -> list[dict[str, Any]]:
        args = [TINY_GPT, *SMALL_GPT, "--set", "vocab=14", "--set", "T=8", "--out", str(out)]
        code = main(["build", *args, *LM, "--data", str(corpus), "--epochs", str(epochs), *extra])
        assert code == 0
        return [{k: v for k, v in e.items() if k != "seconds"} for e in metrics(out)["epochs"]]

    whole = run(tmp_path / "whole", 2)
    run(tmp_path / "parts", 1)
    assert run(tmp_path / "parts", 2, "--resume") == whole


def test_a_vocabulary_too_small_names_the_setting(
    corpus: Path, tmp_path: Path, capsys: Any
) -> None:
    args = [TINY_GPT, *SMALL_GPT, "--set", "vocab=5", "--out", str(tmp_path), *LM]
    assert main(["build", *args, "--data", str(corpus)]) == 1
    err = capsys.readouterr().err
    assert "the text has 14 distinct characters" in err and "--set vocab=14" in err


def test_language_model_needs_a_model_of_character_ids(tmp_path: Path, capsys: Any) -> None:
    rnn = str(ROOT / "specs" / "rnn.dl")
    assert main(["build", rnn, "--out", str(tmp_path), *LM, "--data", "python-docs"]) == 1
    assert "needs a model that reads character ids" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# sampling


class FixedScores(nn.Module):
    """Scores the next character the same at every step: log of ``probabilities``; records
    the lengths it was given."""

    def __init__(self, probabilities: list[float]) -> None:
        super().__init__()
        self.scores = nn.Parameter(torch.tensor(probabilities).log())
        self.lengths: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.lengths.append(x.shape[1])
        return self.scores.expand(x.shape[0], x.shape[1], -1)


def test_generate_honours_temperature_and_top_k() -> None:
    vocab = ["a", "b", "c", "d"]
    model = FixedScores([0.5, 0.3, 0.1, 0.1])
    text = generate(model, vocab, "ab", 400, seed=0)
    assert len(text) == 400 and set(text) == set(vocab)
    assert text == generate(model, vocab, "ab", 400, seed=0)  # repeatable
    assert text != generate(model, vocab, "ab", 400, seed=1)
    assert set(generate(model, vocab, "", 300, top_k=2, seed=0)) == {"a", "b"}
    assert generate(model, vocab, "", 50, top_k=1) == "a" * 50  # greedy
    assert generate(model, vocab, "", 50, temperature=0) == "a" * 50
    cold = generate(model, vocab, "", 400, temperature=0.25, seed=0)
    hot = generate(model, vocab, "", 400, temperature=4.0, seed=0)
    assert cold.count("a") > text.count("a") > hot.count("a")
    assert generate(model, vocab, "abc", 0) == ""


def test_generate_slides_a_window_of_the_context() -> None:
    model = FixedScores([0.25] * 4)
    generate(model, ["a", "b", "c", "d"], "abcabc", 20, context=4, seed=0)
    assert max(model.lengths) == 4 and model.lengths[0] == 4
    model.lengths.clear()
    generate(model, ["a", "b", "c", "d"], "a", 5, seed=0)
    assert model.lengths == [1, 2, 3, 4, 5]


def test_generate_spares_scores_beyond_the_vocabulary() -> None:
    model = FixedScores([0.1, 0.1, 0.8])  # the third score has no character
    assert set(generate(model, ["x", "y"], "x", 100, seed=0)) <= {"x", "y"}


def test_generate_hands_out_each_character_as_drawn() -> None:
    seen: list[str] = []
    text = generate(FixedScores([0.2, 0.8]), ["a", "b"], "a", 12, seed=1, on_text=seen.append)
    assert seen == list(text) and len(text) == 12


def test_unknown_prompt_characters_are_named() -> None:
    with pytest.raises(UnknownCharacters, match=r"2 character.*'Q' 'é'") as info:
        generate(FixedScores([0.5, 0.5]), ["a", "b"], "aQé", 5)
    assert info.value.characters == ["Q", "é"]
    with pytest.raises(ValueError, match="top_k >= 1"):
        generate(FixedScores([0.5, 0.5]), ["a", "b"], "a", 5, top_k=0)


def test_sample_command(gpt_run: Path, capsys: Any) -> None:
    assert main(["sample", str(gpt_run), "--prompt", "the ", "-n", "60", "--seed", "3"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("the ") and len(first) == len("the ") + 60 + 1  # print's newline
    assert set(first[:-1]) <= set(CORPUS)
    assert main(["sample", str(gpt_run), "--prompt", "the ", "-n", "60", "--seed", "3"]) == 0
    assert capsys.readouterr().out == first
    assert main(["sample", str(gpt_run), "--prompt", "the c", "-n", "9", "--top-k", "1"]) == 0
    greedy = capsys.readouterr().out
    assert main(["sample", str(gpt_run), "--prompt", "the c", "-n", "9", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == greedy and len(greedy) == 15
    lm = load_language_model(gpt_run)
    assert lm.context == 16 and lm.vocab == vocabulary(CORPUS) and lm.name == "TinyGPT"
    # several prompts: each continued in turn, a blank line between them
    args = ["-n", "9", "--top-k", "1"]
    assert main(["sample", str(gpt_run), "--prompt", "the c", "--prompt", "a", *args]) == 0
    both = capsys.readouterr().out
    assert main(["sample", str(gpt_run), "--prompt", "a", *args]) == 0
    assert both == greedy + "\n" + capsys.readouterr().out


def test_sample_errors(gpt_run: Path, tmp_path: Path, capsys: Any) -> None:
    assert main(["sample", str(gpt_run), "--prompt", "THE CAT"]) == 1
    err = capsys.readouterr().err
    assert "--prompt: the prompt has 5 character(s) the model does not know" in err
    assert "'A' 'C' 'E' 'H' 'T'" in err
    assert main(["sample", str(tmp_path)]) == 1
    assert f"{tmp_path}: no checkpoint.pt in it" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", str(gpt_run), "--temperature", "-1"])
    assert exit_info.value.code == 2


# --------------------------------------------------------------------------------------------
# token ids: GRU classification


def token_data(path: Path, length: int, n: int = 480, offset: int = 0) -> Path:
    """Sequences of noise ids 1..39 in which class c plants three ids from 40 + 5c .. 44 + 5c."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, n)
    x = rng.integers(1, 40, (n, length))
    for i in range(n):
        x[i, rng.choice(min(length, 10), 3, replace=False)] = 40 + 5 * y[i] + rng.integers(0, 5, 3)
    np.savez(path, x=(x + offset).astype(np.int64), y=y)
    return path


def test_token_ids_stay_integers(tmp_path: Path) -> None:
    ds = load_arrays(token_data(tmp_path / "t.npz", 16))
    assert ds.x.dtype == torch.int64 and int(ds.x.max()) < 60
    tokens = TokenIds(4, 10)
    batch = torch.tensor([[1, 2], [3, 4]])
    assert torch.equal(tokens.eval(batch), torch.tensor([[1, 2, 0, 0], [3, 4, 0, 0]]))
    assert torch.equal(
        tokens(torch.arange(12).reshape(2, 6)), torch.tensor([[0, 1, 2, 3], [6, 7, 8, 9]])
    )
    assert tokens.eval(torch.tensor([[1.0, 2.0]])).dtype == torch.int64
    good = Dataset(torch.tensor([[1, 9]]), torch.tensor([0]), ["0"], "good")
    assert tokens.check([good, None], "src") is tokens
    for x, message in (
        (torch.tensor([[1, 10]]), r"token id 10 \(sample 0\) is out of range.*--set vocab=11"),
        (torch.tensor([[-1, 2]]), "token id -1"),
        (torch.tensor([[0.5, 2.0]]), "decimal numbers"),
        (torch.zeros(1, 1, 2, 2), "must be \\(N, L\\) ids"),
    ):
        with pytest.raises(DataError, match=message):
            tokens.check([Dataset(x, torch.tensor([0]), ["0"], "bad")], "src")


@pytest.mark.parametrize("length", [16, 8])  # cut to T = 12, padded to it
def test_gru_classifies_token_sequences(length: int, tmp_path: Path) -> None:
    data = token_data(tmp_path / "tokens.npz", length)
    out = tmp_path / "run"
    args = [GRU, "--set", "vocab=64", "--set", "T=12", "--out", str(out), "--quiet", "--no-plots"]
    assert main(["build", *args, "--data", str(data), "--epochs", "4", "--lr", "3e-3"]) == 0
    m = metrics(out)
    assert m["data"]["model_input"] == [12] and m["test"]["accuracy"] > 0.7  # chance: 0.25


def test_token_ids_beyond_the_vocabulary_are_refused(tmp_path: Path, capsys: Any) -> None:
    data = token_data(tmp_path / "big.npz", 12, n=40, offset=30)
    args = [GRU, "--set", "vocab=64", "--set", "T=12", "--out", str(tmp_path / "r"), "--quiet"]
    assert main(["build", *args, "--data", str(data)]) == 1
    err = capsys.readouterr().err
    assert "is out of range: the model's embedding looks up ids 0 to 63" in err
    assert "--set vocab=" in err


def test_sampling_a_classifier_is_refused(tmp_path: Path, capsys: Any) -> None:
    data = token_data(tmp_path / "tokens.npz", 12, n=40)
    args = [GRU, "--set", "vocab=64", "--set", "T=12", "--out", str(tmp_path), "--quiet"]
    assert main(["build", *args, "--no-plots", "--data", str(data), "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main(["sample", str(tmp_path)]) == 1
    assert "is not a language model" in capsys.readouterr().err


def test_vocabulary_and_data_path_come_from_beside_the_spec(
    tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No --set vocab and no --data: the text lies beside the spec, which is read from
    another directory, and the model's vocabulary is the text's 14 characters."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    spec = (ROOT / "specs" / "tiny_gpt.dl").read_text().replace('"python-docs"', '"corpus.txt"')
    (folder / "gpt.dl").write_text(spec)
    monkeypatch.chdir(tmp_path / "project" / "..")
    args = ["build", "project/gpt.dl", *SMALL_GPT, "--out", "out", *LM, "--epochs", "1"]
    assert main([a for a in args if a != "--quiet"]) == 0
    assert "vocab = 14: the distinct characters of project/corpus.txt" in capsys.readouterr().err
    m = metrics(tmp_path / "out")
    assert m["params"]["vocab"] == 14 and m["data"]["classes"] == vocabulary(CORPUS)


def test_export_takes_the_vocabulary_the_checkpoint_was_trained_with(
    corpus: Path, tmp_path: Path, capsys: Any
) -> None:
    lstm = str(ROOT / "specs" / "lstm_lm.dl")
    out = tmp_path / "run"
    train = [a for a in LM if a != "--quiet"] + ["--data", str(corpus), "--epochs", "1"]
    assert main(["build", lstm, "--set", "T=8", "--out", str(out), *train]) == 0
    assert "vocab = 14: the distinct characters of" in capsys.readouterr().err
    model = tmp_path / "lm.onnx"
    export = ["export", lstm, "--set", "T=8", "--weights", str(out / "checkpoint.pt")]
    assert main([*export, "-o", str(model), "--no-verify"]) == 0
    assert "the checkpoint's vocab=14" in capsys.readouterr().err
    assert model.stat().st_size > 0
