"""Prompts as the text encoder reads them, and which of a model's inputs is which.

A prompt is text; each character is a token id ``1..V`` (its place in :attr:`PromptCodec.chars`,
the characters of the data's class names, sorted) and id 0 pads the prompt to the model's
length ``L``. An all-padding prompt is the "no prompt" of classifier-free guidance.

A diffusion model has three inputs, in whatever order its spec declares them: the noisy
image ``float[C, H, W]``, the timestep ``float[1]`` and the prompt ``long[L]``
(:class:`DiffusionInputs`), and one output shaped like the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dlspec.train.generate import UnknownCharacters

__all__ = ["DiffusionInputs", "PromptCodec", "PromptError"]


class PromptError(ValueError):
    """A prompt, or a set of class names, that the model cannot read; the message says why."""


@dataclass(frozen=True)
class PromptCodec:
    """Text <-> token ids for prompts of at most ``length`` characters out of ``chars``."""

    chars: str
    length: int

    @classmethod
    def for_classes(cls, classes: Sequence[str], length: int, limit: int) -> PromptCodec:
        """The codec of a data set's class names, for a model that reads ``length`` tokens
        below ``limit`` (its Embedding's size). Raises PromptError when they do not fit."""
        chars = "".join(sorted(set("".join(classes))))
        if len(chars) + 1 > limit:
            raise PromptError(
                f"the class names use {len(chars)} characters, which with the padding id 0 "
                f"need {len(chars) + 1} token ids, but the model's Embedding holds {limit}; "
                f"give it more (e.g. --set vocab={len(chars) + 1})"
            )
        longest = max(classes, key=len, default="")
        if len(longest) > length:
            raise PromptError(
                f"the class name {longest!r} has {len(longest)} characters, but the model "
                f"reads prompts of {length}; give it longer ones (e.g. --set L={len(longest)})"
            )
        return cls(chars, length)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """``(N, length)`` int64 token ids of ``texts``, padded with 0. Raises
        :class:`UnknownCharacters` or :class:`PromptError` (too long)."""
        unknown = sorted(set("".join(texts)) - set(self.chars))
        if unknown:
            raise UnknownCharacters(unknown, list(self.chars))
        ids = torch.zeros((len(texts), self.length), dtype=torch.int64)
        for row, text in enumerate(texts):
            if len(text) > self.length:
                raise PromptError(
                    f"the prompt {text!r} has {len(text)} characters; the model reads at "
                    f"most {self.length}"
                )
            ids[row, : len(text)] = torch.tensor([self.chars.index(c) + 1 for c in text])
        return ids


@dataclass(frozen=True)
class DiffusionInputs:
    """Where a diffusion model's image, timestep and prompt go among its inputs."""

    order: tuple[str, ...]  # "image", "timestep", "prompt", in the model's input order
    image: tuple[int, ...]  # (C, H, W)
    prompt_length: int

    @classmethod
    def of(
        cls, inputs: Sequence[tuple[str, str, Sequence[int]]], outputs: Sequence[Sequence[int]]
    ) -> DiffusionInputs:
        """From the model's inputs ``(name, dtype "float" or "long", per-sample shape)`` and
        output shapes. Raises ValueError saying what a diffusion model needs."""
        roles: dict[str, tuple[str, tuple[int, ...]]] = {}
        for name, dtype, shape in inputs:
            dims = tuple(int(d) for d in shape)
            role = (
                "prompt"
                if dtype == "long" and len(dims) == 1
                else "image"
                if dtype == "float" and len(dims) == 3
                else "timestep"
                if dtype == "float" and dims == (1,)
                else None
            )
            if role is None or role in roles:
                roles = {}
                break
            roles[role] = (name, dims)
        image = roles.get("image", ("", ()))[1]
        if len(roles) != 3 or len(inputs) != 3 or [tuple(o) for o in outputs] != [image]:
            described = ", ".join(f"{n}: {d}{list(s)}" for n, d, s in inputs)
            shown = ", ".join(str(list(o)) for o in outputs)
            raise ValueError(
                "task diffusion needs a model with three inputs, a noisy image float[C, H, W], "
                "its timestep float[1] and a prompt long[L], and one output shaped like the "
                f"image; this one reads {described} and outputs {shown}"
            )
        order = tuple(
            next(role for role, (n, _) in roles.items() if n == name) for name, _, _ in inputs
        )
        return cls(order, image, roles["prompt"][1][0])

    def arrange(
        self, image: torch.Tensor, timestep: torch.Tensor, prompt: torch.Tensor
    ) -> list[torch.Tensor]:
        """The three tensors in the model's input order."""
        given = {"image": image, "timestep": timestep, "prompt": prompt}
        return [given[role] for role in self.order]
