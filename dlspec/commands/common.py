"""Options and steps shared by the commands that read a spec."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, TextIO

from dlspec.analysis.check import Checked, check_file
from dlspec.analysis.limits import MAX_LAYERS, Limits, layer_problem, memory_problem, parse_size
from dlspec.diagnostics import Diagnostic
from dlspec.syntax.bounds import MAX_COUNT
from dlspec.syntax.source import read_source, read_stdin
from dlspec.terminal import printable

if TYPE_CHECKING:
    from dlspec.api import Spec

USAGE_CODES = {"E001", "E211"}  # problems with the command line rather than the spec


def set_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return key.strip(), value.strip()


#: Seeds go to torch's generators, which take a signed 64-bit integer.
MAX_SEED = 2**63 - 1


def bounded_int(text: str, low: int, high: int, what: str = "a whole number") -> int:
    """``text`` as an integer in [low, high], or ArgumentTypeError saying what was expected
    (thousands of digits are refused before converting them)."""
    digits = text.strip().lstrip("+-")
    if len(digits) > len(str(high)) + 1 or not digits.isdigit():
        raise argparse.ArgumentTypeError(
            f"expected {what} from {low:,} to {high:,}, got {text[:60]!r}"
        )
    value = int(text)
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"expected {what} from {low:,} to {high:,}, got {value:,}")
    return value


def whole_number(text: str) -> int:
    """A count that may be 0: a whole number >= 0 (and at most MAX_COUNT)."""
    return bounded_int(text, 0, MAX_COUNT)


def positive_int(text: str) -> int:
    """A count: a whole number >= 1 (and at most MAX_COUNT)."""
    return bounded_int(text, 1, MAX_COUNT)


def seed(text: str) -> int:
    """A --seed value: a whole number that torch's generators take."""
    return bounded_int(text, 0, MAX_SEED, "a seed")


def cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads(text: str) -> int:
    """A --threads value: from 1 to the cores this machine gives the process (more threads
    than cores only wait on each other)."""
    return bounded_int(text, 1, cores(), "a thread count")


def finite_number(text: str, low: float, high: float, what: str = "a number") -> float:
    """``text`` as a float in [low, high] (no inf or nan), or ArgumentTypeError."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text[:60]!r}") from None
    if not low <= value <= high:  # nan fails both comparisons
        raise argparse.ArgumentTypeError(f"expected {what} from {low:g} to {high:g}, got {text}")
    return value


def device_name(text: str) -> str:
    """A --device value: auto, cpu, cuda or cuda:N (the same choices in every command)."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def add_run_arguments(parser: argparse.ArgumentParser, device: str = "auto") -> None:
    """--device and --threads, for the commands that run a model."""
    group = parser.add_argument_group("device")
    group.add_argument(
        "--device",
        type=device_name,
        default=device,
        help=f"auto (CUDA when usable, else CPU), cpu, cuda or cuda:N (default: {device})",
    )
    group.add_argument(
        "--threads",
        type=threads,
        metavar="N",
        help="CPU threads for torch and ONNX Runtime, at most one per core (default: one per core)",
    )


def use_threads(threads: int | None) -> None:
    """Apply --threads to torch (imported here: only commands that run torch call this)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def add_set_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--set NAME=VALUE`` (repeatable) into ``args.overrides``; ``what`` it sets."""
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="NAME=VALUE",
        type=set_pair,
        action="append",
        default=[],
        help=f"{what}, e.g. --set num_classes=43 (repeatable)",
    )


def add_input_argument(parser: argparse.ArgumentParser, what: str = "") -> None:
    """``--input TYPE`` (repeatable) into ``args.inputs``, for importing ``MODULE:CALLABLE``."""
    parser.add_argument(
        "--input",
        dest="inputs",
        metavar="[NAME=]TYPE",
        action="append",
        default=[],
        help=f"{what}the per-sample type of an input, e.g. float[3, 224, 224] or long[T] "
        "(repeatable; in the forward's order, or by its parameter's name: "
        "decoder_input_ids=long[U])",
    )


def add_spec_arguments(parser: argparse.ArgumentParser, several: bool = False) -> None:
    if several:
        parser.add_argument("specs", nargs="+", metavar="SPEC", help="spec files; - reads stdin")
    else:
        parser.add_argument("spec", help="the spec file (.dl)")
    add_set_argument(parser, "override a model parameter")
    parser.add_argument("--model", help="which model, when the spec defines several")
    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--max-layers",
        type=positive_int,
        default=MAX_LAYERS,
        metavar="N",
        help="refuse specs whose analysis builds more layers (a repetition's alike copies "
        f"once), and building models of more (default {MAX_LAYERS:,})",
    )
    limits.add_argument(
        "--max-memory",
        type=size_limit,
        metavar="SIZE",
        help="refuse to allocate models that need more memory, e.g. 512G "
        "(default: this machine's memory)",
    )


#: The largest memory size an option takes (1 EiB): larger sizes only overflow the figures.
MAX_SIZE = 2**60


def size_option(parse: Callable[[str], int], text: str) -> int:
    """A memory size read by ``parse`` (ValueError for bad text), at most MAX_SIZE."""
    if len(text) > 60:
        raise argparse.ArgumentTypeError(f"expected a size such as 64G, got {text[:60]!r}...")
    try:
        value = parse(text)
    except (ValueError, OverflowError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value > MAX_SIZE:
        raise argparse.ArgumentTypeError(f"expected a size of at most 1 EiB, got {text}")
    return value


def size_limit(text: str) -> int:
    """A --max-memory value: 64G, 512M, 1.5T or bytes."""
    return size_option(parse_size, text)


def limits_of(args: argparse.Namespace) -> Limits:
    """The limits the command line sets."""
    return Limits(max_layers=args.max_layers, max_memory=args.max_memory)


def refuse_memory(
    checked: Checked, args: argparse.Namespace, batch: int, *, training: bool = False
) -> int:
    """Print E601 and return 1 when building the model of ``checked`` makes more layers
    than ``--max-layers`` allows, every copy of a repetition counted (checking it analyzed
    alike copies once), or E604 when it needs more memory at ``batch`` than
    ``--max-memory`` allows (``training``: with gradients and Adam's state); else 0."""
    limits = limits_of(args)
    for code, problem in (
        ("E601", layer_problem(checked.graph, limits) if checked.graph else None),
        ("E604", memory_problem(checked.report, batch, training=training, limits=limits)),
    ):
        if problem is not None:
            print(Diagnostic.at(code, problem, None).render(checked.path, None), file=sys.stderr)
            return 1
    return 0


def exit_code(checked: Checked) -> int:
    errors = [d for d in checked.report.diagnostics if d.severity == "error"]
    if any(d.code in USAGE_CODES for d in errors):
        return 2
    return 1 if errors else 0


def print_diagnostics(
    checked: Checked, stream: TextIO | None = None, warnings: bool = True
) -> None:
    """Render the diagnostics and a count. With ``warnings=False`` (commands other than
    check) only errors are shown in full; warnings are counted and left to `dlspec check`."""
    out = stream or sys.stderr
    text = checked.source.text if checked.source else None
    for diag in checked.report.diagnostics:
        if warnings or diag.severity == "error":
            print(diag.render(checked.path, text), file=out)
    errors = sum(d.severity == "error" for d in checked.report.diagnostics)
    count = len(checked.report.diagnostics) - errors
    if errors or count:
        hint = "" if warnings or not count else f" (see `dlspec check {checked.path}`)"
        print(
            f"{printable(checked.path)}: {errors} error{'s' * (errors != 1)}, "
            f"{count} warning{'s' * (count != 1)}{hint}",
            file=out,
        )


def load_spec(args: argparse.Namespace, batch: int = 1) -> tuple[Checked, int]:
    """Check the spec named on the command line; print its diagnostics. Returns the result
    and the exit code to use if the caller must stop (non-zero when the spec has errors)."""
    checked = check_file(
        args.spec, dict(args.overrides), batch=batch, model=args.model, limits=limits_of(args)
    )
    print_diagnostics(checked, warnings=False)
    return checked, exit_code(checked)


def spec_sources(paths: Iterable[str]) -> Iterator[tuple[str, str | None, Diagnostic | None]]:
    """Each path with its text, or with the diagnostic that says why it cannot be read;
    ``-`` is standard input."""
    for path in paths:
        source, problem = read_stdin() if path == "-" else read_source(path)
        yield path, source.text if source else None, problem


def generated(checked: Checked, command: str) -> Spec | None:
    """The spec of a file that checked, its PyTorch code generated; None after saying why the
    code cannot be generated (what it cannot express for every value of an argument)."""
    from dlspec.api import spec_of
    from dlspec.backends.torch_codegen import GenerationError

    spec = spec_of(checked)
    try:
        _ = spec.code
    except GenerationError as exc:
        print(f"dlspec {command}: cannot generate PyTorch code: {exc}", file=sys.stderr)
        return None
    return spec
