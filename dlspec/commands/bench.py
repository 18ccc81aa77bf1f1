"""Time a model in torch (eager) and in ONNX Runtime, side by side.

dlspec bench SPEC|model.onnx prints the latency (median of --iterations runs) and throughput
of both at batch 1 and 64 (--batch), on CPU with the same thread count, and on CUDA when
torch and ONNX Runtime can both use it. A spec is exported first (random weights, as
`dlspec export --no-verify` would); an .onnx file from `dlspec export` is timed as it is, with
torch eager timed on the model rebuilt from the spec its metadata names, when that spec is
there and unchanged. Inputs are random: N(0, 1) floats, token ids below the vocabulary size.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dlspec.commands.bounded import add_limits
from dlspec.commands.common import (
    add_run_arguments,
    add_spec_arguments,
    generated,
    load_spec,
    positive_int,
    refuse_memory,
)
from dlspec.commands.output import Output, add_output_arguments
from dlspec.commands.predict import TIMEOUT, run_onnx

if TYPE_CHECKING:
    from torch import nn

    from dlspec.backends.runtime import Session

EPILOG = """\
An .onnx file is first run once at each batch size in a child process bounded by --timeout and
--max-memory (a graph can loop or allocate without end); the timed runs follow.

exit codes: 0 done, 1 the spec has errors or the model cannot be exported or run (or ran past a
limit), 2 usage."""


class BenchError(Exception):
    """A model that cannot be timed as asked; the message says why."""


@dataclass(frozen=True)
class Row:
    """One batch size on one device: median seconds per call (None: not measured)."""

    device: str
    batch: int
    torch_seconds: float | None
    onnx_seconds: float

    @property
    def speedup(self) -> float | None:
        """torch eager's latency over ONNX Runtime's."""
        return None if self.torch_seconds is None else self.torch_seconds / self.onnx_seconds


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    add_spec_arguments(parser)
    parser.add_argument(
        "--batch", type=positive_int, nargs="+", default=[1, 64], help="batch sizes (1 64)"
    )
    parser.add_argument("--iterations", type=positive_int, default=20, help="timed runs (20)")
    parser.add_argument("--warmup", type=positive_int, default=3, help="untimed runs first (3)")
    add_output_arguments(parser, "the settings and one row per device and batch size")
    add_run_arguments(parser)  # auto: CPU, and CUDA too when usable
    # --max-memory (add_spec_arguments) bounds ONNX Runtime on an .onnx file too
    add_limits(parser, "ONNX Runtime on an .onnx file", TIMEOUT, None)


def median_seconds(
    call: Callable[[], object], *, warmup: int, iterations: int, sync: Callable[[], None]
) -> float:
    """Median wall time of ``call()`` over ``iterations`` runs after ``warmup`` runs;
    ``sync`` waits for queued device work (a no-op on CPU)."""
    for _ in range(warmup):
        call()
    sync()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def random_feeds(session: Session, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for an exported model, from its inputs and dlspec metadata (the lengths
    of its symbolic dimensions and the token-id bound)."""
    from dlspec.records import RecordError, export_metadata

    try:
        metadata = export_metadata(session.metadata, "the model")
    except RecordError as exc:
        raise BenchError(str(exc)) from None
    bindings: dict[str, int] = metadata.bindings
    limit = metadata.index_limit
    rng = np.random.default_rng(seed)
    feeds = {}
    for info in session.inputs:
        shape = [batch]
        for d in info.shape[1:]:
            length = d if isinstance(d, int) else bindings.get(d or "")
            if not isinstance(length, int):
                raise BenchError(
                    f"input {info.name} has a dynamic axis {d!r} of unknown length (models "
                    "from `dlspec export` record their lengths)"
                )
            shape.append(length)
        if np.issubdtype(info.dtype, np.integer):
            feeds[info.name] = rng.integers(0, limit, shape).astype(info.dtype)
        else:
            feeds[info.name] = rng.standard_normal(shape).astype(info.dtype)
    return feeds


def measure(
    model: nn.Module | None,
    session: Session,
    device: str,
    batches: Sequence[int],
    *,
    warmup: int,
    iterations: int,
) -> list[Row]:
    """Time ``model`` (torch eager, no grad; None: skipped) and ``session`` (on the same
    device: IO binding of torch CUDA tensors on a GPU) at each batch size."""
    import torch

    on_gpu = device.startswith("cuda")
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    rows = []
    for batch in batches:
        feeds = random_feeds(session, batch)
        tensors = {k: torch.from_numpy(v).to(device) for k, v in feeds.items()}
        onnx_call: Callable[[], object] = (
            functools.partial(session.run_bound, tensors)
            if on_gpu
            else functools.partial(session.run, feeds)
        )
        onnx_seconds = median_seconds(onnx_call, warmup=warmup, iterations=iterations, sync=sync)
        torch_seconds = None
        if model is not None:
            with torch.inference_mode():
                torch_seconds = median_seconds(
                    functools.partial(model, *tensors.values()),
                    warmup=warmup,
                    iterations=iterations,
                    sync=sync,
                )
        rows.append(Row(device.upper(), batch, torch_seconds, onnx_seconds))
    return rows


def format_rows(rows: Sequence[Row]) -> list[str]:
    """A table: latency and throughput of torch eager and ONNX Runtime, and the ratio."""

    def cell(seconds: float | None, batch: int) -> str:
        if seconds is None:
            return f"{'-':>22}"
        return f"{seconds * 1e3:>9.3f} ms {batch / seconds:>8,.0f}/s"

    lines = [
        f"{'device':<7}{'batch':>6}  {'torch eager':>22}  {'ONNX Runtime':>22}  {'speed-up':>8}"
    ]
    for row in rows:
        ratio = "-" if row.speedup is None else f"{row.speedup:.2f}x"
        lines.append(
            f"{row.device:<7}{row.batch:>6}  {cell(row.torch_seconds, row.batch)}  "
            f"{cell(row.onnx_seconds, row.batch)}  {ratio:>8}"
        )
    return lines


def _fail(message: str, code: int = 1) -> int:
    print(f"dlspec bench: {message}", file=sys.stderr)
    return code


def _from_spec(args: argparse.Namespace) -> tuple[nn.Module, bytes] | int:
    """The spec's model (seed 0) and its export; an exit code on failure."""
    checked, code = load_spec(args)
    if code or checked.graph is None or checked.source is None:
        return code or 1
    if code := refuse_memory(checked, args, max(args.batch)):
        return code
    import torch

    from dlspec.backends.onnx_export import ExportError, export_onnx

    spec = generated(checked, "bench")
    if spec is None:
        return 1
    torch.manual_seed(0)
    model = spec.to_torch().eval()
    try:
        result = export_onnx(model, spec.graph, verify=False, device="cpu")
    except ExportError as exc:
        return _fail(str(exc))
    Output(args).info(
        f"exported {spec.graph.name} with {result.exporter} in {result.export_seconds:.2f} s"
    )
    return model, result.data


def _rebuilt(session: Session) -> tuple[nn.Module | None, str | None]:
    """The torch model of an exported file, rebuilt from the spec its metadata names when
    that spec is still there and unchanged; else None and the reason."""
    import torch

    from dlspec.api import SpecError, load
    from dlspec.records import RecordError, export_metadata
    from dlspec.train.checkpoint import spec_hash

    try:
        metadata = export_metadata(session.metadata, "the model")
    except RecordError as exc:
        return None, f"torch eager skipped: {exc}"
    path = metadata.spec
    if path is None or not Path(path).is_file():
        return None, "torch eager skipped: the model's spec is not at hand (bench the spec)"
    try:
        spec = load(path, model=metadata.model, **metadata.params)
    except (SpecError, ValueError, TypeError):
        return None, f"torch eager skipped: {path} no longer builds this model"
    if spec_hash(spec.source_text, spec.graph.arguments) != metadata.spec_hash:
        return None, f"torch eager skipped: {path} has changed since the export"
    torch.manual_seed(0)
    model = spec.to_torch().eval()
    if metadata.precision == "fp16":
        model = model.half()
    return model, None


def _probe(args: argparse.Namespace, model: Path) -> int:
    """Run a user's ``model`` once at each batch size on the CPU, with the inputs the timed
    runs use: the job of the bounded child process."""
    from dlspec.backends.runtime import RuntimeSetupError, Session

    try:
        session = Session(model, device="cpu", threads=args.threads)
        for batch in args.batch:
            session.run(random_feeds(session, batch))
    except (RuntimeSetupError, BenchError) as exc:
        return _fail(str(exc))
    except Exception as exc:  # ONNX Runtime's own types: a graph it cannot run
        return _fail(f"{model}: ONNX Runtime failed: {str(exc).strip().splitlines()[0]}")
    return 0


def run(args: argparse.Namespace) -> int:
    from dlspec.backends.runtime import RuntimeSetupError, Session

    target = Path(args.spec)
    model: nn.Module | None
    if target.suffix.lower() == ".onnx":
        if not target.is_file():
            return _fail(f"{target}: no such file")
        if code := run_onnx(args, lambda: _probe(args, target), target, "bench"):
            return code
        source: Path | bytes = target
    else:
        built = _from_spec(args)
        if isinstance(built, int):
            return built
        model, source = built

    import torch

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    cuda = args.device.startswith("cuda")
    devices = [] if cuda else ["cpu"]
    if args.device != "cpu" and torch.cuda.is_available():
        devices.append(args.device if cuda else "cuda")
    elif cuda:
        return _fail(f"--device {args.device}: torch sees no CUDA device")
    rows: list[Row] = []
    try:
        for device in devices:
            try:
                session = Session(source, device=device, threads=threads, prefer_nhwc=True)
            except RuntimeSetupError as exc:
                if device == "cpu" or cuda:
                    raise
                print(f"note: no CUDA timings: {exc}", file=sys.stderr)
                continue
            if isinstance(source, Path):
                model, reason = _rebuilt(session)
                if reason:
                    print(f"note: {reason}", file=sys.stderr)
            if model is not None:
                model.to(device)
            rows += measure(
                model,
                session,
                device,
                args.batch,
                warmup=args.warmup,
                iterations=args.iterations,
            )
    except (RuntimeSetupError, BenchError) as exc:
        return _fail(str(exc))
    output = Output(args)
    if output.json:
        rows_json = [{**dataclasses.asdict(row), "speedup": row.speedup} for row in rows]
        runs = {"iterations": args.iterations, "warmup": args.warmup, "threads": threads}
        output.emit({**runs, "rows": rows_json})
        return 0
    print(
        f"median of {args.iterations} runs after {args.warmup} warm-up runs; "
        f"CPU: {threads} thread{'s' * (threads != 1)} for both"
    )
    for line in format_rows(rows):
        print(line)
    return 0
