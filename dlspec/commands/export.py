"""Export a spec's model to ONNX, verified against torch with ONNX Runtime.

dlspec export SPEC [--weights CHECKPOINT] [--out model.onnx] [--opset N] [--fp16] [--no-verify]
exports the generated module (random weights, seeded, unless --weights gives a checkpoint of
the same spec) with a dynamic batch axis and dynamic sequence axes, checks it with
onnx.checker, runs it with ONNX Runtime at other sizes, and compares ONNX Runtime with torch on
random inputs. The file is written only when all of that passed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlspec.analysis.lints import unread
from dlspec.backends.onnx_export import (
    DEFAULT_OPSET,
    EXPORTERS,
    MAX_OPSET,
    META_HASH,
    META_PARAMS,
    META_SPEC,
    META_WEIGHTS,
    MIN_OPSET,
    RTOL,
)
from dlspec.commands.common import (
    add_run_arguments,
    add_spec_arguments,
    generated,
    load_spec,
    refuse_memory,
    seed,
    use_threads,
)
from dlspec.commands.output import Output, add_output_arguments
from dlspec.files import OutputError, output_path, write_atomic
from dlspec.train.run_dir import CLASSES, CONFIG, DATA, METRICS_JSON, SPEC_HASH

if TYPE_CHECKING:
    from torch import nn

    from dlspec.analysis.graph import ModelGraph
    from dlspec.api import Spec
    from dlspec.backends.onnx_export import ExportResult

EPILOG = f"""\
verification: ONNX Runtime's outputs y must match torch's (fp32) r on random inputs at batch 1
and 3 (and at the spec's and half the spec's sequence lengths):
|y - r| <= rtol * (|r| + max|r|), rtol {RTOL["fp32"]:g} for fp32 and {RTOL["fp16"]:g} for --fp16.

metadata: dlspec.version, dlspec.spec_hash, dlspec.parameters (trainable, each tensor once),
dlspec.model, dlspec.exporter, dlspec.precision, dlspec.spec, dlspec.params, dlspec.bindings,
dlspec.index_limit, dlspec.weights; dlspec.classes and dlspec.normalize when known (from the
metrics.json beside --weights, and the spec's train section), for `dlspec predict`; and
dlspec.diffusion (the schedule and sampling settings) for a diffusion run's weights, for
`dlspec sample MODEL.onnx`.

exit codes: 0 written, 1 the spec has errors, the weights do not fit, or the export or its
verification failed (nothing is written then), 2 usage (bad option, unwritable --out)."""

VERIFY_BATCH = 3  # the largest batch export runs the model at (onnx_export.PROBE_BATCH)


def _opset(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not MIN_OPSET <= value <= MAX_OPSET:
        raise argparse.ArgumentTypeError(
            f"opset {value} is outside what torch exports ({MIN_OPSET} to {MAX_OPSET})"
        )
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    add_spec_arguments(parser)
    parser.add_argument(
        "--weights", metavar="CHECKPOINT", type=Path, help="a checkpoint.pt of `dlspec build`"
    )
    parser.add_argument(
        "--out", "-o", type=Path, help="the ONNX file to write (default: SPEC's name .onnx)"
    )
    parser.add_argument(
        "--opset", type=_opset, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})"
    )
    parser.add_argument("--fp16", action="store_true", help="export in half precision")
    parser.add_argument("--no-verify", action="store_true", help="skip the comparison with torch")
    parser.add_argument(
        "--exporter",
        choices=EXPORTERS,
        default="auto",
        help="torch's exporter: auto (default: TorchScript, dynamo where that fails), "
        "torchscript or dynamo",
    )
    parser.add_argument(
        "--seed", type=seed, default=0, help="seed of the random weights (without --weights)"
    )
    add_output_arguments(parser, "the export and its verification, one object", "errors")
    add_run_arguments(parser)  # where ONNX Runtime verifies


def _fail(message: str, code: int = 1) -> int:
    print(f"dlspec export: {message}", file=sys.stderr)
    return code


def _checkpoint_advice(message: str) -> str:
    """A checkpoint loader's message, with its advice (for ``dlspec build --resume``) replaced
    by advice for --weights: the messages read ``<what is wrong>; <what to do>``."""
    what = message.rpartition("; ")[0] or message
    return f"--weights {what}; export with the checkpoint of this spec, or without --weights"


def _load_weights(model: nn.Module, path: Path, expected_hash: str) -> str:
    """Load a checkpoint's model state into ``model``; return a description for the
    metadata. Raises ValueError with a message for the user."""
    from dlspec.train.checkpoint import CheckpointError, load_checkpoint

    if not path.is_file():
        raise ValueError(f"--weights {path}: no such file")
    try:
        checkpoint = load_checkpoint(path, expected_hash)
    except CheckpointError as exc:
        raise ValueError(_checkpoint_advice(str(exc))) from None
    try:
        model.load_state_dict(checkpoint.model)
    except (RuntimeError, KeyError) as exc:  # the same spec hash makes this unlikely
        reason = str(exc).strip().splitlines()[0]
        raise ValueError(f"--weights {path}: the weights do not fit the model ({reason})") from None
    trained = f"{checkpoint.epoch} epoch{'s' * (checkpoint.epoch != 1)}"
    if checkpoint.partial:
        trained += f" and part of epoch {checkpoint.epoch + 1}"
    return f"{path.name} ({trained})"


def _training_metadata(spec: Spec, weights: Path | None, spec_hash: str) -> dict[str, str]:
    """Class names and normalisation for `dlspec predict`: from the metrics.json that
    `dlspec build` wrote beside the checkpoint (when it is of this spec), else the spec's own
    train section."""
    from dlspec.backends.onnx_export import META_CLASSES, META_NORMALIZE

    metrics: dict[str, Any] = {}
    if weights is not None and (weights.parent / METRICS_JSON).is_file():
        try:
            loaded = json.loads((weights.parent / METRICS_JSON).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            loaded = {}
        if isinstance(loaded, dict) and loaded.get(SPEC_HASH) == spec_hash:
            metrics = loaded
    config = metrics.get(CONFIG) or {}
    if not config:
        config = spec.graph.train.model_dump(mode="json")
    out = {}
    if isinstance(metrics.get("diffusion"), dict):  # what `dlspec sample MODEL.onnx` needs
        from dlspec.train.diffusion.run import META_DIFFUSION

        out[META_DIFFUSION] = json.dumps(metrics["diffusion"])
    classes = (metrics.get(DATA) or {}).get(CLASSES)
    if classes:
        out[META_CLASSES] = json.dumps([str(c) for c in classes])
    if config.get("mean") is not None or config.get("std") is not None:
        mean = 0.0 if config.get("mean") is None else config["mean"]
        std = 1.0 if config.get("std") is None else config["std"]
        out[META_NORMALIZE] = json.dumps({"mean": mean, "std": std})
    return out


def _checkpoint_overrides(args: argparse.Namespace, params: dict[str, Any]) -> list[str]:
    """``--set`` pairs for the model parameters the --weights checkpoint was trained with,
    where they differ from the spec's and the command line sets none (a language model's
    ``vocab``, say, which `dlspec build` took from its data)."""
    from dlspec.records import RecordError, run_info
    from dlspec.train.checkpoint import CheckpointError, load_checkpoint

    try:
        saved = run_info(load_checkpoint(args.weights, None).info, str(args.weights)).params
    except (CheckpointError, RecordError):
        return []  # _load_weights says what is wrong with it
    given = dict(args.overrides)
    return [
        f"{name}={value}"
        for name, value in saved.items()
        if name in params
        and name not in given
        and params[name] != value
        and isinstance(value, int)
        and not isinstance(value, bool)
    ]


def run(args: argparse.Namespace) -> int:
    checked, code = load_spec(args)
    if code or checked.graph is None or checked.source is None:
        return code or 1
    extra = _checkpoint_overrides(args, checked.graph.arguments) if args.weights else []
    if extra:
        Output(args).note(f"the checkpoint's {', '.join(extra)}")
        args.overrides = [*args.overrides, *(tuple(pair.split("=", 1)) for pair in extra)]
        checked, code = load_spec(args)
    graph, source = checked.graph, checked.source
    if code or graph is None or source is None:
        return code or 1
    if code := refuse_memory(checked, args, VERIFY_BATCH):
        return code

    spec = generated(checked, "export")
    if spec is None:
        return 1
    try:
        out = output_path(
            args.out or Path(Path(args.spec).stem + ".onnx"),
            inputs={"the spec": args.spec, "--weights": args.weights},
        )
    except OutputError as exc:
        return _fail(str(exc), 2)

    import torch

    from dlspec.backends.onnx_export import ExportError, export_onnx
    from dlspec.train.checkpoint import spec_hash

    use_threads(args.threads)
    output = Output(args)
    digest = spec_hash(spec.source_text, spec.graph.arguments)
    digest = spec_hash(spec.source_text, spec.graph.arguments)
    torch.manual_seed(args.seed)
    model = spec.to_torch()
    weights = f"random (seed {args.seed})"
    if args.weights is not None:
        try:
            weights = _load_weights(model, args.weights, digest)
        except ValueError as exc:
            return _fail(str(exc))
    metadata = {
        META_HASH: digest,
        META_SPEC: spec.path,
        META_PARAMS: json.dumps(spec.graph.arguments, sort_keys=True, default=str),
        META_WEIGHTS: weights,
        **_training_metadata(spec, args.weights, digest),
    }
    try:
        result = export_onnx(
            model,
            spec.graph,
            opset=args.opset,
            fp16=args.fp16,
            exporter=args.exporter,
            verify=not args.no_verify,
            metadata=metadata,
            device=args.device,
            threads=args.threads,
            notify=output.note,
        )
    except ExportError as exc:
        return _fail(str(exc))
    for leaf in spec.graph.leaves():
        if leaf.layer is not None and (notice := leaf.layer.export_notice()):
            output.note(f"note: {leaf.path} ({leaf.layer.label()}) {notice}")
    for line in _report(result, spec.graph, spec.report.trainable_params, weights):
        (output.note if line.startswith("note:") else output.result)(line)
    try:
        write_atomic(out, result.data)
    except OSError as exc:
        return _fail(f"cannot write {out}: {exc.strerror or exc}")
    output.result(f"wrote {out} ({len(result.data) / 1e6:.1f} MB)")
    output.emit(_record(result, spec, weights, out))
    return 0


def _record(result: ExportResult, spec: Spec, weights: str, out: Path) -> dict[str, Any]:
    """The export as JSON (``--format json``)."""
    return {
        "file": str(out),
        "bytes": len(result.data),
        "model": spec.graph.name,
        "exporter": result.exporter,
        "opset": result.opset,
        "precision": result.precision,
        "parameters": result.initializers.parameters,
        "check_parameters": spec.report.trainable_params,
        "weights": weights,
        "export_seconds": result.export_seconds,
        "fallback": result.fallback,
        "provider": result.provider,
        "rtol": result.rtol,
        "verify_seconds": result.verify_seconds,
        "verification": [dataclasses.asdict(c) for c in result.comparisons],
    }


def _dropped(result: ExportResult, graph: ModelGraph, expected: int) -> str:
    """Why the file holds fewer parameters than check counts, when the statements that nothing
    reads (W506, which torch keeps and the exporter drops) explain it; else nothing."""
    # a repetition's alike copies are analyzed once: any copy's path stands for all of them
    paths = [copy_pattern(path) for entry in unread(graph) for path in entry.paths]
    dropped: dict[str, None] = {}  # in spec order, each once
    for name in result.initializers.missing:
        owners = [path for path in paths if copy_pattern(name).startswith(path + ".")]
        if not owners:
            return ""
        dropped[min(owners, key=len)] = None  # the outermost statement holding it
    if not dropped:
        return ""
    named = sorted(dropped, key=paths.index)
    return (
        f": the exporter dropped the {expected - result.initializers.parameters:,} of "
        f"{_listed(named)}, whose output nothing reads (W506: torch keeps them, untrained)"
    )


def copy_pattern(path: str) -> str:
    """``path`` with every copy index written ``*`` (``deep.2.spare`` -> ``deep.*.spare``)."""
    return re.sub(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.)", "*", path)


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _report(result: ExportResult, graph: ModelGraph, expected: int, weights: str) -> list[str]:
    """One line per step: notes, export, verification."""
    lines = [result.notice] if result.notice else []
    count = result.initializers.parameters
    name = graph.name
    agreement = "as check counts"
    if count != expected:
        agreement = f"but check counts {expected:,}{_dropped(result, graph, expected)}"
    lines.append(
        f"exported {name} with {result.exporter} (opset {result.opset}, {result.precision}) in "
        f"{result.export_seconds:.2f} s: {count:,} parameters, {agreement}; weights: {weights}"
    )
    if result.comparisons:
        worst_abs = max(c.max_abs for c in result.comparisons)
        worst_rel = max(c.max_rel for c in result.comparisons)
        batches = sorted({c.batch for c in result.comparisons})
        lengths = sorted(
            {", ".join(f"{k}={v}" for k, v in c.lengths.items()) for c in result.comparisons}
        )
        where = " and ".join(str(b) for b in batches)
        if lengths[0]:
            where += f" ({' and '.join(lengths)})"
        lines.append(
            f"verified on {result.provider} with {len(result.comparisons)} random inputs at "
            f"batch {where}: max abs error {worst_abs:.2g}, max rel error {worst_rel:.2g} "
            f"(tolerance {result.rtol:g}), in {result.verify_seconds:.2f} s"
        )
    return lines
