"""dlspec: describe a neural network in a small spec language; check, build, export, draw it.

``dlspec.load("specs/cnn.dl")`` returns a checked :class:`~dlspec.api.Spec` (report, generated
code, ``to_torch()``). The API is imported on first use, so ``import dlspec`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Spec", "SpecError", "__version__", "load", "load_text"]

if TYPE_CHECKING:
    from dlspec.api import Spec, SpecError, load, load_text

_API = ("Spec", "SpecError", "load", "load_text")


def __getattr__(name: str) -> Any:
    if name in _API:
        from dlspec import api

        return getattr(api, name)
    raise AttributeError(f"module 'dlspec' has no attribute {name!r}")
