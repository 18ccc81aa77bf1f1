"""The import steps, for the command line and the API: capture, write, check, weights."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlspec.api import Spec
from dlspec.importers import torch_fx
from dlspec.importers.emit import state_names, write_spec
from dlspec.importers.ir import Imported, ImportFailed

RTOL = 1e-5  # imported weights must reproduce the original's outputs to this tolerance


@dataclass
class Result:
    """An imported model: the spec text, what was captured, the original module and the
    example inputs it was traced with."""

    text: str
    imported: Imported
    original: nn.Module
    examples: list[torch.Tensor]


def is_onnx(target: str) -> bool:
    return target.lower().endswith(".onnx")


def import_model(
    target: str, inputs: Sequence[str] = (), settings: dict[str, Any] | None = None
) -> Result:
    """Import ``MODULE:CALLABLE`` (built with ``settings``, traced on ``inputs`` such as
    ``"float[3, 32, 32]"``) or an ``.onnx`` file. Raises ValueError for a target or input that
    names nothing usable, ImportFailed when the model cannot be imported."""
    symbols: dict[str, int] = {}
    if is_onnx(target):
        from dlspec.importers.onnx_graph import load_onnx

        if inputs or settings:
            raise ValueError("an ONNX file carries its own input types: drop --input and --set")
        model, specs, source = load_onnx(Path(target), symbols)
    else:
        specs = [torch_fx.parse_input(text, symbols) for text in inputs]
        if not specs:
            raise ValueError(
                "--input is required: the per-sample type of each input, e.g. float[3, 32, 32]"
            )
        model = torch_fx.load_model(target, dict(settings or {}))
        values = ", ".join(f"{k}={v!r}" for k, v in (settings or {}).items())
        source = f"{target}({values})"
    imported = torch_fx.capture(model, specs, symbols, source)
    examples = [torch_fx.example(spec, symbols) for spec in specs]
    return Result(write_spec(imported), imported, model, examples)


def imported_weights(result: Result, spec: Spec) -> tuple[dict[str, torch.Tensor], float]:
    """The original's weights under the names of the module dlspec generates from ``spec``, and
    the largest error of that module's outputs relative to the original's on the example
    inputs, as ``|y - r| / (|r| + max|r|)``. Raises ImportFailed when they do not fit."""
    original = result.original.state_dict()
    state = {mine: original[theirs] for mine, theirs in state_names(result.imported).items()}
    model = spec.to_torch()
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ImportFailed(
            f"the weights do not fit the imported spec: {str(exc).splitlines()[0]}"
        ) from None
    model.eval()
    result.original.eval()
    with torch.no_grad():
        ours = model(*result.examples)
        theirs = result.original(*result.examples)
    worst = 0.0
    for y, r in zip(_flat(ours), _flat(theirs), strict=True):
        scale = r.abs() + r.abs().max()
        worst = max(worst, float(((y - r).abs() / scale.clamp_min(1e-30)).max()))
    return state, worst


def _flat(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value.float()]
    return [t for v in value for t in _flat(v)]
