"""The registry of layer kinds: every kind's name known at once, its class made on first use.

A kind is a validated record (:class:`dlspec.layers.base.Layer`), and making one (evaluating its
fields' annotations) is most of what importing a module of kinds costs; with every module
imported at start-up, that was the largest part of ``dlspec check``'s own time
(bench/check_speed.py). So the registry knows each kind's name and module from :data:`KINDS`
alone, which is enough for names in a spec, ``unknown kind ... did you mean`` and the editor's
completion list, and imports a module the first time one of its kinds is looked up: a spec of
convolutions never makes an attention class. Iterating over the values (the layer reference,
the importers) imports every module.

Adding a layer kind: its class, decorated with :func:`dlspec.layers.base.register`, and its
name in :data:`KINDS` under its module (``register`` refuses a kind not listed there).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dlspec.layers.base import Layer

#: Module of :mod:`dlspec.layers` -> the kinds it defines (modules alphabetical, kinds in the
#: order of their classes).
KINDS: dict[str, tuple[str, ...]] = {
    "activation": (
        "ReLU",
        "Sigmoid",
        "Tanh",
        "SiLU",
        "ReLU6",
        "Hardswish",
        "Hardsigmoid",
        "Mish",
        "LeakyReLU",
        "GELU",
        "Hardtanh",
        "ELU",
        "Softplus",
        "PReLU",
        "Softmax",
        "LogSoftmax",
    ),
    "arithmetic": ("Exp", "Log", "Sqrt", "Neg", "Abs", "Pow", "Clamp"),
    "attention": (
        "MultiheadAttention",
        "TransformerEncoderLayer",
        "TransformerDecoderLayer",
        "TransformerEncoder",
        "TransformerDecoder",
        "Transformer",
        "SDPA",
        "PaddingMask",
        "RoPE",
    ),
    "conditioning": ("TimestepEmbedding",),
    "conv": (
        "Conv1d",
        "Conv2d",
        "Conv3d",
        "ConvTranspose1d",
        "ConvTranspose2d",
        "ConvTranspose3d",
    ),
    "dense": ("Linear", "Einsum"),
    "embedding": (
        "Embedding",
        "SinusoidalPositionalEncoding",
        "LearnedPositionalEncoding",
        "Parameter",
        "Full",
    ),
    "merge": ("Add", "Sub", "Mul", "Div", "Where", "Concat"),
    "norm": (
        "BatchNorm1d",
        "BatchNorm2d",
        "InstanceNorm1d",
        "InstanceNorm2d",
        "InstanceNorm3d",
        "LayerNorm",
        "RMSNorm",
        "GroupNorm",
        "LayerNorm2d",
    ),
    "pad": ("Pad", "Roll"),
    "pool": (
        "MaxPool1d",
        "MaxPool2d",
        "MaxPool3d",
        "AvgPool1d",
        "AvgPool2d",
        "AvgPool3d",
        "AdaptiveAvgPool1d",
        "AdaptiveAvgPool2d",
        "AdaptiveAvgPool3d",
        "AdaptiveMaxPool1d",
    ),
    "recurrent": ("RNN", "LSTM", "GRU"),
    "sampling": ("Reparameterize",),
    "shape": (
        "Flatten",
        "Permute",
        "Transpose",
        "Select",
        "Slice",
        "Chunk",
        "Mean",
        "Sum",
        "Reshape",
        "Identity",
        "Upsample",
        "PixelShuffle",
        "PixelUnshuffle",
        "Dropout",
        "Dropout2d",
        "StochasticDepth",
    ),
    "window": (
        "WindowPartition",
        "WindowMerge",
        "RelativePositionBias",
        "BucketedPositionBias",
        "ShiftedWindowMask",
    ),
}

_ADVICE = {
    "BroadcastAdd": "reshape the vector to [C, 1, 1] and add: `shift = Reshape(C, 1, 1) <- t`, "
    "then `Add <- h, shift` (Add broadcasts)",
    "ToTokens": "write `Flatten(1)` then `Transpose(0, 1)` ([C, H, W] -> [H*W, C])",
    "ToImage": "write `Transpose(0, 1)` then `Reshape(C, H, W)` ([H*W, C] -> [C, H, W])",
}
#: Kinds that were removed -> what a spec writes instead (E201 says it).
RETIRED: dict[str, str] = {
    kind: f"{kind} is no longer a layer kind: {advice}" for kind, advice in _ADVICE.items()
}

PACKAGE = "dlspec.layers"


class Registry(Mapping[str, "type[Layer]"]):
    """Layer kind name -> its class. ``in``, ``len`` and iterating over the names import
    nothing; looking a kind up imports the module that defines it, once."""

    def __init__(self, kinds: Mapping[str, tuple[str, ...]]) -> None:
        self._modules = {kind: module for module, names in kinds.items() for kind in names}
        self._classes: dict[str, type[Layer]] = {}

    def __getitem__(self, kind: str) -> type[Layer]:
        cls = self._classes.get(kind)
        if cls is None:
            module = self._modules[kind]  # KeyError: no such kind
            importlib.import_module(f"{PACKAGE}.{module}")
            if kind not in self._classes:
                raise LookupError(f"{PACKAGE}.{module} defines no layer kind {kind}")
            cls = self._classes[kind]
        return cls

    def __contains__(self, kind: object) -> bool:
        return kind in self._modules

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def __len__(self) -> int:
        return len(self._modules)

    def add(self, cls: type[Layer]) -> None:
        """Make ``cls`` the class of its kind (:func:`dlspec.layers.base.register`)."""
        module = cls.__module__.removeprefix(f"{PACKAGE}.")
        if self._modules.get(cls.kind) != module:
            raise ValueError(
                f"layer kind {cls.kind} of {cls.__module__} is not listed under {module!r} in "
                f"{__name__}.KINDS, where the registry finds every kind without importing it"
            )
        if cls.kind in self._classes:
            raise ValueError(f"layer kind {cls.kind} registered twice")
        self._classes[cls.kind] = cls


#: The one registry of layer kinds.
REGISTRY = Registry(KINDS)
