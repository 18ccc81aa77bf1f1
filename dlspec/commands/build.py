"""Build a spec: write the generated PyTorch model.py, then train and test it.

dlspec build SPEC --out DIR writes DIR/model.py, and (unless --no-train) trains on the spec's
train section's data, writing DIR/checkpoint.pt after every epoch, then DIR/metrics.json and
the plots DIR/learning_curves.png and DIR/confusion_matrix.png.
"""

from __future__ import annotations

import argparse
import functools
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlspec.analysis.check import Checked
from dlspec.analysis.report import Report
from dlspec.analysis.train_config import SETTINGS, TrainConfig, TrainConfigError, with_overrides
from dlspec.api import Spec
from dlspec.commands.common import (
    add_run_arguments,
    add_spec_arguments,
    generated,
    load_spec,
    positive_int,
    refuse_memory,
    seed,
    set_pair,
    use_threads,
)
from dlspec.commands.output import Output, add_output_arguments
from dlspec.files import (
    DirectoryLock,
    LockedError,
    OutputError,
    output_path,
    remove_stale_temporaries,
)
from dlspec.train import launch
from dlspec.train.run_dir import (
    CHECKPOINT,
    CONFUSION_PNG,
    CURVES_PNG,
    METRICS_JSON,
    MODEL_PY,
    run_info,
)

if TYPE_CHECKING:
    from torch import nn

EPILOG = f"""\
train settings (the spec's `train {{ ... }}` section, or --train KEY=VALUE):
{textwrap.fill(", ".join(SETTINGS), 88, initial_indent="  ", subsequent_indent="  ")}
  e.g. --train 'optimizer=SGD(lr=0.05)' --train optimizer.momentum=0.8 --train task=regression

exit codes: 0 done, 1 the spec has errors or the data / checkpoint cannot be used,
2 usage (bad option or train setting), 130 interrupted (Ctrl-C; the checkpoint is saved and
--resume continues from it)."""

VOCAB = "vocab"  # a language model's parameter that the data's vocabulary size fills


def _number(text: str) -> str:
    """A --lr value: checked to be a number here, so the error names the option."""
    try:
        float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    return text


def _count(text: str) -> str:
    """An --epochs / --batch-size value: a whole number >= 1, kept as text for the config."""
    return str(positive_int(text))


def _seed(text: str) -> str:
    """A --seed value, kept as text for the config."""
    return str(seed(text))


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    add_spec_arguments(parser)
    parser.add_argument(
        "--out", "-o", metavar="DIR", type=Path, required=True, help="the output directory"
    )
    parser.add_argument("--no-train", action="store_true", help="only write DIR/model.py")
    group = parser.add_argument_group("training (each overrides the spec's train section)")
    group.add_argument(
        "--data",
        help='data set: "digits", "mnist", a directory or .npz/.csv; for task language_model '
        'a text file or "python-docs"',
    )
    group.add_argument("--epochs", type=_count, metavar="N", help="epochs to train")
    group.add_argument("--batch-size", type=_count, metavar="N", help="training batch size")
    group.add_argument("--lr", type=_number, metavar="RATE", help="the optimiser's learning rate")
    group.add_argument("--seed", type=_seed, metavar="N", help="seed for repeatable runs")
    group.add_argument(
        "--checkpointing",
        action="store_true",
        default=None,
        help="activation checkpointing: recompute each block in backward (less memory)",
    )
    group.add_argument(
        "--strategy",
        choices=("ddp", "fsdp"),
        help="with --nproc-per-node: ddp replicates the model in every process (default), "
        "fsdp shards weights, gradients and optimizer state (each block use, then the root)",
    )
    group.add_argument(
        "--train",
        dest="train_overrides",
        metavar="KEY=VALUE",
        type=set_pair,
        action="append",
        default=[],
        help="set any train setting, e.g. --train val_split=0.2 (repeatable)",
    )
    run_group = parser.add_argument_group("running")
    run_group.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.pt")
    run_group.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    add_output_arguments(
        parser, "one object per epoch as it ends, then the test figures (JSON lines)", "errors"
    )
    add_run_arguments(parser)
    launch.add_arguments(parser)


def _overrides(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The command line's train settings, in the order they apply: the options, then
    ``--train`` pairs (so ``--train`` wins)."""
    options = {
        "data": args.data,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "optimizer.lr": args.lr,
        "checkpointing": "true" if args.checkpointing else None,
        "strategy": args.strategy,
    }
    pairs = [(key, value) for key, value in options.items() if value is not None]
    return pairs + list(args.train_overrides)


def _vocabulary_from_data(args: argparse.Namespace, data: str) -> tuple[Checked, int]:
    """The spec checked again with ``vocab`` set to the number of distinct characters of the
    language model's text (a text that cannot be read: its message and exit code 1)."""
    from dlspec.train.data import DataError
    from dlspec.train.text import PYTHON_DOCS, read_text, vocabulary

    if data == PYTHON_DOCS:  # gathered from pydoc: seconds, once per process
        Output(args).note(f"reading {PYTHON_DOCS} (Python's help texts, ~5 s)...")
    try:
        text = read_text(data)[1]
    except DataError as exc:
        return Checked(args.spec, None, None, Report(file=args.spec)), _fail(str(exc))
    size = len(vocabulary(text))
    Output(args).note(f"{VOCAB} = {size}: the distinct characters of {data}")
    args.overrides = [*args.overrides, (VOCAB, str(size))]
    return load_spec(args)


def _data_beside_spec(
    config: TrainConfig, spec_path: str, overrides: list[tuple[str, str]]
) -> TrainConfig:
    """A relative ``data`` path in the spec is relative to the spec's folder (``--data`` on
    the command line stays relative to the current directory). A named source (``digits``,
    ``python-docs``...) stays a name unless a file of that name lies beside the spec."""
    from dlspec.train.data import NAMED_SOURCES
    from dlspec.train.text import PYTHON_DOCS

    data = Path(config.data).expanduser()
    if any(key == "data" for key, _ in overrides) or data.is_absolute():
        return config
    beside = Path(spec_path).parent / data
    named = config.data.strip().lower().replace("_", "-") in (*NAMED_SOURCES, PYTHON_DOCS)
    if beside.exists() or not named:
        return config.model_copy(update={"data": str(beside)})
    return config


def _fail(message: str, code: int = 1) -> int:
    print(f"dlspec build: {message}", file=sys.stderr)
    return code


def _summary(metrics: dict[str, Any]) -> str:
    """The test figures, the classification report and the confusion matrix, as text."""
    test = metrics["test"]
    lines = [f"test loss {test['loss']:.4f}"]
    if test.get("accuracy") is not None:
        lines[0] += f"  accuracy {100 * test['accuracy']:.2f}%"
    if "report_text" in test:
        lines += ["", "classification report:", test["report_text"].rstrip()]
        lines += ["", "confusion matrix (rows: true class, columns: predicted):"]
        width = max(len(str(v)) for row in test["confusion_matrix"] for v in row)
        lines += [" ".join(f"{v:>{width}}" for v in row) for row in test["confusion_matrix"]]
    elif "mae" in test:
        lines[0] += f"  MAE {test['mae']:.4f}  R² {test['r2']:.4f}"
    if test.get("perplexity") is not None:
        lines[0] += f"  perplexity {test['perplexity']:.2f}"
    if "conditional_accuracy" in test:
        lines += [
            f"samples: {test['samples']:,} ({test['sampler']}, {test['sample_steps']} steps, "
            f"guidance {test['guidance']:g}), judged by a classifier with "
            f"{100 * test['judge_accuracy']:.2f}% accuracy on held-out real images",
            f"conditional accuracy {100 * test['conditional_accuracy']:.2f}%  Fréchet distance "
            f"{test['frechet_distance']:.2f} (held-out real images: "
            f"{test['frechet_distance_real']:.2f})",
        ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    checked = _check(args)
    if isinstance(checked, int):
        return checked
    spec, config = checked
    if launch.current_worker() is not None:  # one process of a job: the launcher holds the lock
        return _build(args, spec, config)
    out: Path = args.out
    if out.is_dir():  # the spec, say, is not to be replaced by the model it describes
        try:
            output_path(out / MODEL_PY, "--out", {"the spec": args.spec})
        except OutputError as exc:
            return _fail(str(exc), 2)
    lock = DirectoryLock(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except LockedError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot write to {out}: {exc.strerror or exc}", 2)
    try:
        remove_stale_temporaries(out)  # a killed run's; no writer can be mid-way now
        if launch.requested(args) and not args.no_train:  # start the processes that run this
            return launch.launch(args, args.argv)
        return _build(args, spec, config)
    finally:
        lock.release()


def _check(args: argparse.Namespace) -> tuple[Spec, TrainConfig] | int:
    """The checked spec and its train settings, or the exit code of a refusal (printed)."""
    checked, code = load_spec(args)
    if code or checked.graph is None or checked.source is None:
        return code or 1
    graph = checked.graph
    try:
        config = with_overrides(graph.train, _overrides(args), graph.arguments)
    except TrainConfigError as exc:
        return _fail(str(exc), 2)
    if not args.no_train and (
        code := refuse_memory(checked, args, config.batch_size, training=True)
    ):
        return code
    config = _data_beside_spec(config, checked.path, _overrides(args))
    wanted = VOCAB in graph.arguments and VOCAB not in dict(args.overrides)
    if config.task == "language_model" and wanted and not args.no_train:
        checked, code = _vocabulary_from_data(args, config.data)
        if code or checked.graph is None:
            return code or 1
        graph = checked.graph
    assert checked.source is not None  # a spec that checked has its text
    spec = generated(checked, "build")
    return (spec, config) if spec is not None else 1


def _build(args: argparse.Namespace, spec: Spec, config: TrainConfig) -> int:
    """Write model.py and train (in the locked directory, or as a worker of a job)."""
    out: Path = args.out
    if args.resume and not args.no_train and (problem := _unresumable(spec, out)):
        return _fail(problem)  # before model.py: a command that refuses rewrites nothing
    try:
        out.mkdir(parents=True, exist_ok=True)
        if launch.is_main_process():
            _write_model(out / MODEL_PY, spec.code)
    except OSError as exc:
        return _fail(f"cannot write {out / MODEL_PY}: {exc.strerror or exc}", 2)
    if args.no_train:
        Output(args).info(f"wrote {out / MODEL_PY}")
        return 0
    return _train(spec, config, args)


def _unresumable(spec: Spec, out: Path) -> str | None:
    """Why ``--resume`` cannot continue from ``out``'s checkpoint (None when it can)."""
    from dlspec.train.checkpoint import CheckpointError, load_checkpoint, spec_hash
    from dlspec.train.run_dir import CHECKPOINT

    try:
        load_checkpoint(out / CHECKPOINT, spec_hash(spec.source_text, spec.graph.arguments))
    except CheckpointError as exc:
        return str(exc)
    return None


def _model(spec: Spec, checkpointing: bool) -> nn.Module:
    """A fresh generated model, with activation checkpointing on when asked (a model that
    uses no blocks has nothing to checkpoint: the setting does nothing there)."""
    model = spec.to_torch()
    if checkpointing and hasattr(model, "checkpointing"):
        setattr(model, "checkpointing", True)  # noqa: B010 (not a declared attribute)
    return model


def _write_model(path: Path, code: str) -> None:
    from dlspec.train.checkpoint import atomic_file

    with atomic_file(path) as temporary:
        temporary.write_text(code, encoding="utf-8")


def _train(spec: Spec, config: TrainConfig, args: argparse.Namespace) -> int:
    """Train the built model; map every failure the user can fix to a message."""
    from dlspec.backends.onnx_export import index_limit
    from dlspec.layers.symbolic import value_at
    from dlspec.train.checkpoint import CheckpointError, spec_hash
    from dlspec.train.data import DataError
    from dlspec.train.loop import RunOptions, TrainError, train_model

    graph = spec.graph
    diffusion = config.task == "diffusion"  # three inputs: dlspec.train.diffusion
    if not diffusion and (len(graph.inputs) != 1 or len(graph.outputs) != 1):
        return _fail(
            f"{graph.name} has {len(graph.inputs)} input(s) and {len(graph.outputs)} "
            "output(s); training supports models with one of each"
        )
    out: Path = args.out
    output = Output(args)
    use_threads(args.threads)
    options = RunOptions(
        out=out,
        device=args.device,
        quiet=args.quiet,
        plots=not args.no_plots,
        resume=args.resume,
        on_epoch=lambda entry: output.emit({"event": "epoch", **entry}),
    )
    info = run_info(spec.path, graph.name, graph.arguments, graph.bindings, spec.source_text)
    train = train_model
    worker = launch.current_worker()
    if worker is not None and diffusion:
        return _fail("task diffusion trains in one process; run without --nproc-per-node")
    if worker is not None:  # one process of a torchrun job
        from dlspec.analysis.memory import shard_units
        from dlspec.train.distributed import train_distributed

        units = [unit.path for unit in shard_units(graph)]  # FSDP's, as plan counts them
        train = functools.partial(train_distributed, worker, units=units)
    try:
        if diffusion:
            from dlspec.train.diffusion.trainer import train_diffusion

            result = train_diffusion(
                spec.to_torch,
                graph,
                config,
                spec_hash=spec_hash(spec.source_text, graph.arguments),
                options=options,
                info=info,
                log=output.info,
            )
        else:
            input_type, output_type = graph.inputs[0].type, graph.outputs[0].type
            # symbolic dimensions at their values (T: the training context, --set T=...)
            result = train(
                functools.partial(_model, spec, config.checkpointing),
                config,
                log=output.info,
                input_shape=[value_at(d, graph.bindings) for d in input_type.shape],
                output_shape=[value_at(d, graph.bindings) for d in output_type.shape],
                spec_hash=spec_hash(spec.source_text, graph.arguments),
                options=options,
                info=info,
                token_limit=index_limit(graph) if input_type.dtype == "long" else None,
            )
    except (DataError, TrainError, CheckpointError) as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot write to {out}: {exc.strerror or exc}")
    if worker is not None and not worker.main:  # rank 0 reports
        return 130 if result.interrupted else 0
    if result.interrupted:
        return _fail(
            f"interrupted after {result.epoch} finished epoch(s); the checkpoint is saved in "
            f"{out / CHECKPOINT}: add --resume to continue",
            130,
        )
    output.result(_summary(result.metrics))
    if "notice" in result.metrics["test"]:  # the test collapsed (BatchNorm's statistics)
        output.note(f"notice: {result.metrics['test']['notice']}")
    written = [MODEL_PY, CHECKPOINT, METRICS_JSON]
    if options.plots:
        written += [CURVES_PNG] + [CONFUSION_PNG] * ("confusion_matrix" in result.metrics["test"])
    if diffusion:
        written += ["samples.png", "samples/epoch_*.png"]
    paths = [str(out / name) for name in written]
    output.result(f"wrote {', '.join(paths)}")
    test = {k: v for k, v in result.metrics["test"].items() if k != "report_text"}
    output.emit({"event": "test", **test, "wrote": paths})
    return 0
