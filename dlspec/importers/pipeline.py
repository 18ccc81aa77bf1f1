"""The import steps, for the command line and the API: capture, write, check, weights."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlspec.api import Spec
from dlspec.importers import torch_fx
from dlspec.importers.emit import state_names, transposed_names, write_spec
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
    output: str | None = None  # the result picked, for a model that returns several
    inputs: list[torch_fx.InputSpec] = field(default_factory=list)  # as the examples are

    def forward(self, values: list[torch.Tensor] | None = None) -> Any:
        """The original run on ``values`` (default: the examples), each passed by position
        or by its ``--input`` name."""
        values = self.examples if values is None else values
        return torch_fx.call(self.original, values, [spec.name for spec in self.inputs])


def is_onnx(target: str) -> bool:
    return target.lower().endswith(".onnx")


def import_model(
    target: str,
    inputs: Sequence[str] = (),
    settings: dict[str, Any] | None = None,
    output: str | None = None,
) -> Result:
    """Import ``MODULE:CALLABLE`` (built with ``settings``, traced on ``inputs`` such as
    ``"float[3, 32, 32]"``) or an ``.onnx`` file; ``output`` picks one of the results of a
    model that returns several (``logits``, ``last_hidden_state``, ``0``). Raises ValueError
    for a target, input or output that names nothing usable, ImportFailed when the model
    cannot be imported."""
    symbols: dict[str, int] = {}
    if is_onnx(target):
        from dlspec.importers.onnx_graph import load_onnx

        if inputs or settings or output:
            raise ValueError(
                "an ONNX file carries its own input types and outputs: drop --input, --set "
                "and --output"
            )
        model, specs, source = load_onnx(Path(target), symbols)
        imported = torch_fx.capture(model, specs, symbols, source)
    else:
        specs = [torch_fx.parse_input(text, symbols) for text in inputs]
        if not specs:
            raise ValueError(
                "--input is required: the per-sample type of each input, e.g. float[3, 32, 32]"
            )
        model = torch_fx.load_model(target, dict(settings or {}))
        specs = torch_fx.bind_inputs(model, specs)
        values = ", ".join(f"{k}={v!r}" for k, v in (settings or {}).items())
        source = f"{target}({values})" + (f", output {output}" if output else "")
        imported = capture(model, specs, symbols, source, output)
    examples = [torch_fx.example(spec, symbols) for spec in specs]
    return Result(write_spec(imported), imported, model, examples, output, specs)


def capture(
    model: nn.Module,
    specs: list[torch_fx.InputSpec],
    symbols: dict[str, int],
    source: str,
    output: str | None = None,
) -> Imported:
    """The model read by torch.fx, which keeps what the model's code calls (modules and
    torch functions), else by torch.export, which reads models fx cannot trace (Hugging
    Face's); a result picked by ``output``, or inputs passed by name, are read by
    torch.export. When neither maps the model, ImportFailed lists what each met."""
    from dlspec.importers import torch_export

    failures: list[ImportFailed] = []
    if output is None and all(spec.name is None for spec in specs):
        try:
            return torch_fx.capture(model, specs, symbols, source)
        except ImportFailed as exc:
            failures.append(exc)
    try:
        return torch_export.capture(model, specs, symbols, source, output)
    except ImportFailed as exc:
        failures.append(exc)
    if len(failures) == 1:
        raise failures[0]
    fx_failed, export_failed = failures
    raise ImportFailed(
        f"{type(model).__name__} cannot be imported (tried torch.fx, then torch.export)",
        [*fx_failed.unmapped, *export_failed.unmapped],
    )


def imported_weights(result: Result, spec: Spec) -> tuple[dict[str, torch.Tensor], float]:
    """The original's weights under the names of the module dlspec generates from ``spec``, and
    the largest error of that module's outputs relative to the original's on the example
    inputs, as ``|y - r| / (|r| + max|r|)``. Raises ImportFailed when they do not fit."""
    original = result.original.state_dict()
    transposed = transposed_names(result.imported)
    model = spec.to_torch()
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    state = {}
    for mine, theirs in state_names(result.imported).items():
        tensor = original[theirs].t() if mine in transposed else original[theirs]
        if mine in shapes and tensor.numel() == shapes[mine].numel():
            tensor = tensor.reshape(shapes[mine])  # a class token (1, 1, D) as Parameter(1, D)
        state[mine] = tensor.contiguous()
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
        theirs = result.forward()
    if result.imported.tracer == "torch.export":  # the result it picked
        from dlspec.importers.torch_export import pick

        theirs = pick(theirs, result.output)
    worst = 0.0
    for y, r in zip(_flat(ours), _flat(theirs), strict=True):
        scale = r.abs() + r.abs().max()
        worst = max(worst, float(((y - r).abs() / scale.clamp_min(1e-30)).max()))
    return state, worst


def _flat(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value.float()]
    return [t for v in value for t in _flat(v)]
