"""Write text with a language model that `dlspec build` trained (task language_model).

dlspec sample RUN_DIR [--prompt TEXT] [--length N] [--temperature T] [--top-k K] [--seed S]
rebuilds the model from RUN_DIR/checkpoint.pt (which holds the spec and the vocabulary), then
prints the prompt and its continuation, drawn one character at a time from the model's
predictions over the last T characters (the context length it was trained with).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dlspec.commands.common import add_run_arguments, positive_int, use_threads, whole_number
from dlspec.terminal import printable

EPILOG = """\
sampling: the next character's scores are divided by the temperature (lower: safer, more
repetitive text; 0: always the most likely character) and only the top-k best are drawn from
(--top-k 1 is greedy, --top-k 0 draws from all).

exit codes: 0 done, 1 the run directory holds no language model or the prompt has characters
the model does not know, 2 usage."""


def _temperature(text: str) -> float:
    try:
        value = float(text)
        if not value >= 0 or value == float("inf"):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the --out of `dlspec build`")
    parser.add_argument(
        "--prompt", "-p", default="", metavar="TEXT", help="the text to continue (default: none)"
    )
    parser.add_argument(
        "--length",
        "-n",
        type=positive_int,
        default=300,
        metavar="N",
        help="characters to write (300)",
    )
    parser.add_argument(
        "--temperature", "-t", type=_temperature, default=0.8, metavar="T", help="default 0.8"
    )
    parser.add_argument(
        "--top-k", "-k", type=whole_number, default=20, metavar="K", help="default 20; 0: all"
    )
    parser.add_argument("--seed", type=whole_number, metavar="S", help="seed for a repeatable text")
    add_run_arguments(parser, device="cpu")


def _fail(message: str) -> int:
    print(f"dlspec sample: {message}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    from dlspec.train.generate import RunError, UnknownCharacters, generate, load_language_model
    from dlspec.train.loop import TrainError, select_device

    use_threads(args.threads)
    try:
        device = select_device(args.device)
    except TrainError as exc:
        print(f"dlspec sample: {exc}", file=sys.stderr)
        return 2
    try:
        lm = load_language_model(args.run_dir, device)
    except RunError as exc:
        return _fail(str(exc))
    try:
        generate(lm.model, lm.vocab, args.prompt, 0)  # refuses unknown characters up front
        _write(args.prompt)
        generate(
            lm.model,
            lm.vocab,
            args.prompt,
            args.length,
            temperature=args.temperature,
            top_k=args.top_k or None,
            seed=args.seed,
            context=lm.context,
            on_text=_write,
        )
    except UnknownCharacters as exc:
        return _fail(f"--prompt: {exc}")
    print()
    return 0


def _write(text: str) -> None:
    """Print generated text as it comes (control characters escaped: any character of the
    data may come)."""
    sys.stdout.write(printable(text))
    sys.stdout.flush()
