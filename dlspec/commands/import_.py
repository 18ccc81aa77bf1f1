"""Import a PyTorch model or an ONNX file as a spec (with its weights, if asked).

dlspec import MODULE:CALLABLE --input [NAME=]TYPE [--input ...] [--set NAME=VALUE ...] --out FILE
dlspec import MODEL.onnx --out FILE
builds the model (a class or factory, called with the --set values as keyword arguments),
traces it on example inputs of the given per-sample types (batch excluded; symbolic sizes as
names: long[T], or long[T=128] with the length to trace at; NAME= passes an input to the
forward by that keyword, e.g. decoder_input_ids=long[U]), maps every module and operation
to dlspec's layer kinds, recovers blocks from repeated module classes, and writes a spec whose
`expect` lines record the counts torch reported. The spec is checked before it is written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dlspec.commands.bounded import MAX_MEMORY
from dlspec.commands.common import add_input_argument, add_set_argument

if TYPE_CHECKING:
    from pathlib import Path

TIMEOUT = 600  # seconds an import may take: tracing a large model takes a minute or two

EPILOG = """\
--weights CHECKPOINT also writes the model's weights as a dlspec checkpoint (state_dict names
mapped to the spec's layers), for `dlspec export --weights`, `dlspec build --resume` (copy it
to DIR/checkpoint.pt) and the API; it is written only when the spec's module, holding them,
reproduces the original's outputs (|y - r| <= 1e-5 * (|r| + max|r|)).

exit codes: 0 written, 1 the model cannot be imported (every unmapped piece is listed, with
its module path and operation; nothing is written), 2 usage (bad target, --input or --out)."""


def configure(parser: argparse.ArgumentParser) -> None:
    from pathlib import Path  # here: a check imports this module, and needs no pathlib

    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "target", help="MODULE:CALLABLE (an nn.Module class or factory) or FILE.onnx"
    )
    add_input_argument(parser)
    add_set_argument(parser, "a keyword argument of the constructor")
    add_output_argument(parser)
    parser.add_argument("--out", type=Path, required=True, help="the spec to write (.dl)")
    parser.add_argument("--weights", type=Path, metavar="CHECKPOINT", help="also write the weights")
    add_limits(parser)


def add_output_argument(parser: argparse.ArgumentParser) -> None:
    """``--output PATH``: which result of a model that returns several to import."""
    parser.add_argument(
        "--output",
        metavar="PATH",
        help="for a model that returns several results (a Hugging Face ModelOutput, a tuple): "
        "the one to import, by name or index, e.g. logits, last_hidden_state, 0 (default: "
        "the first)",
    )


def add_limits(parser: argparse.ArgumentParser, memory: bool = True) -> None:
    """``--timeout`` (and ``--max-memory`` where the command has none): the bounds of the
    child process that runs the user's model code (:func:`bounded`)."""
    from dlspec.commands.bounded import add_limits as add

    add(parser, "the model's code", TIMEOUT, MAX_MEMORY if memory else None)


def settings(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    from dlspec.analysis.infer import parse_override

    return {key: parse_override(value) for key, value in pairs}


def fail(message: str, code: int = 1) -> int:
    print(f"dlspec import: {message}", file=sys.stderr)
    return code


def capture(args: argparse.Namespace, target: str) -> Any:
    """The import of ``target``, or the exit code after printing why there is none."""
    from dlspec.importers.ir import ImportFailed
    from dlspec.importers.pipeline import import_model

    try:
        return import_model(target, args.inputs, settings(args.overrides), args.output)
    except ValueError as exc:
        return fail(str(exc), 2)
    except ImportFailed as exc:
        print(f"dlspec import: {exc.message}", file=sys.stderr)
        for piece in exc.unmapped:
            print(f"  {piece}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace) -> int:
    from dlspec.files import OutputError, output_path

    source = args.target.rpartition(":")[0] if ":" in args.target else args.target
    try:  # absolute: user code that changes directory does not move the outputs
        out = output_path(args.out, "--out", {"the model": source}).absolute()
        weights = None
        if args.weights is not None:
            given = {"the model": source, "--out": out}
            weights = output_path(args.weights, "--weights", given).absolute()
    except OutputError as exc:
        return fail(str(exc), 2)
    return bounded(args, lambda: _import(args, out, weights), "import")


def bounded(args: argparse.Namespace, job: Callable[[], int], name: str) -> int:
    """``job`` (which runs the user's code for ``args.target``) in a child process bounded by
    ``--timeout`` and ``--max-memory``; its exit code."""
    from dlspec.commands.bounded import run_bounded

    _preload(args.target)
    memory = args.max_memory or MAX_MEMORY  # check's --max-memory has no default
    return run_bounded(job, seconds=args.timeout, memory=memory, what=args.target, name=name)


def spec_text(args: argparse.Namespace, path: Path) -> int:
    """Import ``args.target`` and write the spec's text to ``path`` (the job of the child
    process that ``dlspec check MODULE:CALLABLE`` runs)."""
    result = capture(args, args.target)
    if isinstance(result, int):
        return result
    path.write_text(result.text, encoding="utf-8")
    return 0


def _preload(target: str) -> None:
    """Load the libraries the import uses here, before the child's memory limit applies: the
    limit is on address space, and mapping torch's shared libraries takes hundreds of MB."""
    import dlspec.importers.pipeline  # noqa: F401 (torch and the tracer)

    if target.lower().endswith(".onnx"):
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401


def _import(args: argparse.Namespace, out: Path, weights: Path | None) -> int:
    """Import the model, check the spec, write it (and the weights) to ``out`` (``weights``):
    the job of the bounded child process."""
    result = capture(args, args.target)
    if isinstance(result, int):
        return result

    from dlspec.api import SpecError, load_text
    from dlspec.files import write_atomic

    try:
        spec = load_text(result.text, str(args.out))
    except SpecError as exc:  # the importer wrote what dlspec does not accept: show it all
        return fail(f"the imported spec does not check:\n{exc}\n{result.text}")
    imported = result.imported
    report = spec.report
    print(
        f"imported {imported.name} from {imported.source}: {len(spec.graph.leaves())} layers, "
        f"{report.trainable_params:,} parameters and {report.buffers:,} buffer "
        "elements, as torch counts them"
    )
    if weights is not None:
        from dlspec.importers.ir import ImportFailed
        from dlspec.importers.pipeline import RTOL, imported_weights
        from dlspec.train.checkpoint import Checkpoint, save_checkpoint, spec_hash

        try:
            state, error = imported_weights(result, spec)
        except ImportFailed as exc:
            return fail(exc.message)
        if error > RTOL:
            return fail(
                f"the imported model's outputs differ from the original's ({error:.1e} > {RTOL:g})"
            )
        print(f"weights: outputs match the original's (max relative error {error:.1e}, ", end="")
        print(f"tolerance {RTOL:g})")
        checkpoint = Checkpoint(
            spec_hash(spec.source_text, spec.graph.arguments),
            epoch=0,
            model=state,
            optimizer={},
            history=[],
            rng={},
            info={"imported_from": imported.source},
        )
        try:  # a full disk: the file that was there is left as it was
            save_checkpoint(weights, checkpoint)
        except OSError as exc:
            return fail(f"cannot write {args.weights}: {exc.strerror or exc}")
    try:
        write_atomic(out, result.text.encode("utf-8"))
    except OSError as exc:
        return fail(f"cannot write {args.out}: {exc.strerror or exc}")
    written = [str(args.out)] + ([str(args.weights)] if args.weights is not None else [])
    print(f"wrote {', '.join(written)}")
    return 0
