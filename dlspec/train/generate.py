"""Text from a trained language model: autoregressive sampling, and loading the model that
``dlspec build`` trained from its output directory.

:func:`generate` feeds the model the last ``context`` characters (a sliding window of the
length it was trained on), turns the scores for the next character into probabilities
(divided by ``temperature``, cut to the ``top_k`` best), draws one, appends it and repeats.
:func:`load_language_model` rebuilds the model from the checkpoint alone: the checkpoint
holds the spec's text, its parameter values and the vocabulary (``Checkpoint.info``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from dlspec.train.text import decode, encode

if TYPE_CHECKING:
    from dlspec.api import Spec
    from dlspec.train.checkpoint import Checkpoint

__all__ = [
    "LanguageModelRun",
    "RunError",
    "UnknownCharacters",
    "generate",
    "load_language_model",
    "load_run",
    "trained_model",
]


class UnknownCharacters(ValueError):
    """A prompt with characters outside the model's vocabulary; ``characters`` lists them and
    the message names them."""

    def __init__(self, characters: Sequence[str], vocab: Sequence[str]) -> None:
        self.characters = list(characters)
        shown = " ".join(repr(c) for c in self.characters)
        super().__init__(
            f"the prompt has {len(self.characters)} character(s) the model does not know: "
            f"{shown}; it knows {''.join(vocab)!r}"
        )


class RunError(Exception):
    """A run directory whose model cannot be loaded for sampling; the message says why."""


def _start(prompt: str, vocab: Sequence[str]) -> list[int]:
    """The prompt's ids; an empty prompt starts from a newline (or the first character)."""
    unknown = sorted(set(prompt) - set(vocab))
    if unknown:
        raise UnknownCharacters(unknown, vocab)
    if prompt:
        return encode(prompt, vocab).tolist()
    return [list(vocab).index("\n") if "\n" in vocab else 0]


def _draw(
    scores: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None
) -> int:
    """The next character's id from its scores ``(V,)``."""
    if temperature == 0 or top_k == 1:
        return int(scores.argmax())
    scores = scores / temperature
    if top_k is not None and top_k < len(scores):
        kth = torch.topk(scores, top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probabilities = torch.softmax(scores, dim=0)
    return int(torch.multinomial(probabilities, 1, generator=generator))


@torch.no_grad()
def generate(
    model: nn.Module,
    vocab: Sequence[str],
    prompt: str = "",
    length: int = 200,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = None,
    context: int | None = None,
    on_text: Callable[[str], None] | None = None,
) -> str:
    """Continue ``prompt`` with ``length`` characters drawn from ``model``, which maps
    character ids ``(1, t)`` to next-character scores ``(1, t, V)``; ``vocab[i]`` is
    character ``i`` (scores past ``len(vocab)`` are never drawn). Returns the continuation
    only, without the prompt.

    ``context``: the model sees at most the last ``context`` characters (its training length
    T; None: all of them). ``temperature`` divides the scores (below 1: surer, above:
    more varied; 0 always takes the best); ``top_k`` draws only among the ``k`` best
    (``top_k=1`` is greedy). ``seed`` makes the draw repeatable. Raises
    :class:`UnknownCharacters` when the prompt has characters outside ``vocab``, and
    ValueError for an invalid setting. ``on_text`` is called with each character as soon as
    it is drawn (to print the text as it comes).
    """
    if length < 0 or temperature < 0 or (top_k is not None and top_k < 1):
        raise ValueError(
            f"length must be >= 0, temperature >= 0 and top_k >= 1 (got length={length}, "
            f"temperature={temperature}, top_k={top_k})"
        )
    if context is not None and context < 1:
        raise ValueError(f"context must be >= 1, got {context}")
    ids = _start(prompt, vocab)
    start = len(ids)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    training = model.training
    model.eval()
    try:
        for _ in range(length):
            window = ids[-context:] if context else ids
            x = torch.tensor([window], dtype=torch.int64, device=device)
            scores = model(x)[0, -1, : len(vocab)].float().cpu()  # (V,)
            ids.append(_draw(scores, temperature, top_k, generator))
            if on_text is not None:
                on_text(vocab[ids[-1]])
    finally:
        model.train(training)
    return decode(ids[start:], vocab)


@dataclass
class LanguageModelRun:
    """A trained language model, ready to sample: the module (in eval mode), its vocabulary,
    its context length (the T it was trained with), and what it was built from."""

    model: nn.Module
    vocab: list[str]
    context: int
    name: str  # the model's name in its spec
    spec: str  # the spec's path when it was built
    epochs: int  # finished training epochs


def load_run(run_dir: str | os.PathLike[str]) -> tuple[Spec, Checkpoint]:
    """The spec and checkpoint of the model that ``dlspec build`` trained into ``run_dir``:
    the spec is rebuilt from the checkpoint (its text and parameter values are saved in it, so
    the spec file need not exist any more). Raises :class:`RunError` with a message."""
    from dlspec.api import SpecError, load_text
    from dlspec.records import RecordError, run_info
    from dlspec.train.checkpoint import CheckpointError, load_checkpoint, spec_hash
    from dlspec.train.run_dir import CHECKPOINT

    directory = Path(run_dir)
    path = directory / CHECKPOINT
    if not path.is_file():
        what = "no such directory" if not directory.is_dir() else f"no {CHECKPOINT} in it"
        raise RunError(
            f"{directory}: {what}; `dlspec build SPEC --out {directory}` trains a model there"
        )
    try:
        checkpoint = load_checkpoint(path, None)
    except CheckpointError as exc:
        raise RunError(str(exc).rpartition("; ")[0] or str(exc)) from None
    try:
        info = run_info(checkpoint.info, str(path))
    except RecordError as exc:
        raise RunError(str(exc)) from None
    if info.spec_text is None or info.classes is None:
        raise RunError(
            f"{path}: the checkpoint does not hold its spec and vocabulary (it was written by "
            "an older dlspec); build the model again"
        )
    overrides = {**info.params, **info.bindings}
    try:
        spec = load_text(info.spec_text, info.spec, model=info.model, **overrides)
    except (SpecError, TypeError) as exc:
        raise RunError(f"{path}: the spec saved in the checkpoint does not load: {exc}") from None
    if spec_hash(spec.source_text, spec.graph.arguments) != checkpoint.spec_hash:
        raise RunError(f"{path}: the checkpoint's weights do not belong to its saved spec")
    return spec, checkpoint


def trained_model(spec: Spec, checkpoint: Checkpoint, device: torch.device | str) -> nn.Module:
    """``spec``'s module with the checkpoint's weights, on ``device``, in eval mode."""
    model = spec.to_torch()
    try:
        model.load_state_dict(checkpoint.model)
    except (RuntimeError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0]
        raise RunError(f"the checkpoint's weights do not fit the model ({reason})") from None
    return model.to(device).eval()


def load_language_model(
    run_dir: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> LanguageModelRun:
    """The language model that ``dlspec build`` trained into ``run_dir``, rebuilt from its
    checkpoint (:func:`load_run`). Raises :class:`RunError` with a message."""
    from dlspec.layers.symbolic import value_at
    from dlspec.train.run_dir import CHECKPOINT, CLASSES

    spec, checkpoint = load_run(run_dir)
    path = Path(run_dir) / CHECKPOINT
    graph = spec.graph
    inputs, outputs = graph.inputs, [o.type for o in graph.outputs]
    if (
        len(inputs) != 1
        or len(outputs) != 1
        or inputs[0].type.dtype != "long"
        or len(inputs[0].type.shape) != 1
        or len(outputs[0].shape) != 2
    ):
        shapes = ", ".join(f"{i.type.dtype}{i.type}" for i in inputs)
        raise RunError(
            f"{path}: {graph.name} ({shapes} -> {', '.join(map(str, outputs))}) is not a "
            "language model; sampling needs one input long[T] and an output [T, vocab], "
            "trained with task language_model"
        )
    return LanguageModelRun(
        model=trained_model(spec, checkpoint, device),
        vocab=[str(c) for c in checkpoint.info[CLASSES]],
        context=value_at(inputs[0].type.shape[0], graph.bindings),
        name=graph.name,
        spec=spec.path,
        epochs=checkpoint.epoch,
    )
