"""Write text or draw images with a model that `dlspec build` trained.

dlspec sample RUN_DIR [--prompt TEXT]... [--length N] [--temperature T] [--top-k K] [--seed S]
rebuilds a language model (task language_model) from RUN_DIR/checkpoint.pt (which holds the
spec and the vocabulary), then prints each prompt and its continuation, drawn one character at
a time from the model's predictions over the last T characters (the context length it was
trained with).

dlspec sample RUN_DIR|MODEL.onnx --out FILE [--prompt TEXT]... [--num N] [--steps S]
[--guidance W] [--sampler ddim|ddpm] [--seed S] [--runtime torch|onnx] draws N images per
prompt with a diffusion model (task diffusion), from its run directory or its `dlspec export`,
and writes them as a PNG grid (a row per prompt, when there are several) or a .npz of arrays.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dlspec.commands.bounded import MAX_MEMORY, add_limits, run_bounded
from dlspec.commands.common import (
    add_run_arguments,
    bounded_int,
    finite_number,
    positive_int,
    seed,
    use_threads,
    whole_number,
)
from dlspec.terminal import printable

EPILOG = """\
language models: the next character's scores are divided by the temperature (lower: safer,
more repetitive text; 0: always the most likely character) and only the top-k best are drawn
from (--top-k 1 is greedy, --top-k 0 draws from all).

diffusion models: the prompt is a class name of the training data ("7" for the digits;
without --prompt the N images cycle through all of them); each --prompt draws N images, and
several prompts (--prompt 0 --prompt 3 --prompt 5) make a grid row each. DDIM (default) is
deterministic given the seed's starting noise; DDPM adds fresh noise at every step.
--guidance W mixes the prompted and unprompted predictions, uncond + W * (cond - uncond): 1
is the prompted one alone, larger follows the prompt more closely. --out FILE.png writes a
grid, FILE.npz the arrays `images` [N, C, H, W] (float32 in [0, 1]) and `prompts`. Steps,
guidance and sampler default to the run's train settings.

an .onnx file is a program (a Loop can run 2**62 times, a ConstantOfShape allocate
terabytes): it is sampled in a child process bounded by --timeout and --max-memory, and a
model that runs past a bound writes nothing. A run directory holds dlspec's own code and
samples in this process.

exit codes: 0 done, 1 the run holds no such model, the prompt has characters the model
does not know, or an .onnx model failed or ran past a bound, 2 usage (bad option, step count
or --out)."""


def _non_negative(text: str) -> float:
    return finite_number(text, 0.0, 1e6, "a number")


def _temperature(text: str) -> float:
    """0 (always the likeliest) or a divisor of the scores from 0.01 to 100: below 0.01 the
    divided scores overflow."""
    value = finite_number(text, 0.0, 100.0, "a temperature")
    if 0 < value < 0.01:
        raise argparse.ArgumentTypeError(
            f"expected 0 or a temperature from 0.01 to 100, got {text}"
        )
    return value


#: The most images one command draws (64 a grid; each is a full denoising run).
MAX_IMAGES = 10_000
#: Seconds an .onnx model may take to draw all the images (each is a full denoising run).
TIMEOUT = 3600


def _images(text: str) -> int:
    return bounded_int(text, 1, MAX_IMAGES, "a number of images")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument(
        "run_dir",
        type=Path,
        metavar="RUN_DIR",
        help="the --out of `dlspec build`, or the .onnx export of a diffusion model",
    )
    parser.add_argument(
        "--prompt",
        "-p",
        metavar="TEXT",
        action="append",
        help="the text to continue (default: none), or the image to draw (default: every "
        "class); repeat it for several, continued in turn or drawn a grid row each",
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
    parser.add_argument("--seed", type=seed, metavar="S", help="seed for a repeatable text")
    add_run_arguments(parser, device="cpu")
    images = parser.add_argument_group("diffusion models")
    images.add_argument("--out", "-o", type=Path, metavar="FILE", help="FILE.png or FILE.npz")
    images.add_argument(
        "--num",
        type=_images,
        default=64,
        metavar="N",
        help="images to draw per prompt, or in all without --prompt (64)",
    )
    images.add_argument("--steps", type=positive_int, metavar="S", help="denoising steps")
    images.add_argument("--guidance", type=_non_negative, metavar="W", help="guidance scale")
    images.add_argument("--sampler", choices=("ddim", "ddpm"), help="ddim or ddpm")
    images.add_argument(
        "--runtime",
        choices=("torch", "onnx"),
        default="torch",
        help="run the denoiser with torch (default) or ONNX Runtime (an .onnx file always is)",
    )
    add_limits(parser, "an .onnx model", TIMEOUT, MAX_MEMORY)


def _fail(message: str) -> int:
    print(f"dlspec sample: {message}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    from dlspec.train.diffusion.run import is_diffusion_run
    from dlspec.train.generate import RunError, UnknownCharacters, generate, load_language_model
    from dlspec.train.loop import TrainError, select_device

    use_threads(args.threads)
    if args.out is not None or is_diffusion_run(args.run_dir):
        return _draw(args)
    try:
        device = select_device(args.device)
    except TrainError as exc:
        print(f"dlspec sample: {exc}", file=sys.stderr)
        return 2
    try:
        lm = load_language_model(args.run_dir, device)
    except RunError as exc:
        return _fail(str(exc))
    prompts = args.prompt or [""]
    try:
        for prompt in prompts:  # refuses unknown characters up front
            generate(lm.model, lm.vocab, prompt, 0)
        for index, prompt in enumerate(prompts):
            if index:
                print()  # a blank line between continuations
            _write(prompt)
            generate(
                lm.model,
                lm.vocab,
                prompt,
                args.length,
                temperature=args.temperature,
                top_k=args.top_k or None,
                seed=args.seed,
                context=lm.context,
                on_text=_write,
            )
            print()
    except UnknownCharacters as exc:
        return _fail(f"--prompt: {exc}")
    return 0


def _usage(message: str) -> int:
    print(f"dlspec sample: {message}", file=sys.stderr)
    return 2


def _draw(args: argparse.Namespace) -> int:
    """Images from a diffusion model (run directory or .onnx file) to ``args.out``; an .onnx
    file, a program from anywhere, is sampled in a bounded child process."""
    from dlspec.files import OutputError, output_path
    from dlspec.train.loop import TrainError, select_device

    out: Path | None = args.out
    if out is None or out.suffix not in (".png", ".npz"):
        given = "" if out is None else f" (got {out})"
        return _usage(f"a diffusion model draws images: give --out FILE.png or FILE.npz{given}")
    try:
        resolved = output_path(out, inputs={"the model": args.run_dir}).absolute()
    except OutputError as exc:
        return _usage(str(exc))
    try:
        device = str(select_device(args.device))
    except TrainError as exc:
        return _usage(str(exc))
    if not str(args.run_dir).endswith(".onnx"):
        return _draw_images(args, device, resolved)
    import onnxruntime  # noqa: F401 (its libraries, and PIL's, mapped here: outside the bound)
    import PIL.Image  # noqa: F401

    return run_bounded(
        lambda: _draw_images(args, device, resolved),
        seconds=args.timeout,
        memory=args.max_memory,
        what=f"ONNX Runtime on {args.run_dir}",
        name="sample",
        hint="a graph that loops or computes without end?",
    )


def _draw_images(args: argparse.Namespace, device: str, out: Path) -> int:
    """Load the model, draw the images and write them to ``out`` (absolute, checked): the
    job of the bounded child process for an .onnx file."""
    import time

    from dlspec.train.diffusion.grid import save_images
    from dlspec.train.diffusion.prompts import PromptError
    from dlspec.train.diffusion.run import load_diffusion
    from dlspec.train.diffusion.schedule import sampling_steps
    from dlspec.train.generate import RunError, UnknownCharacters

    try:
        model = load_diffusion(args.run_dir, runtime=args.runtime, device=device)
    except RunError as exc:
        return _fail(str(exc))
    steps = args.steps or model.settings["sample_steps"]
    try:
        sampling_steps(model.schedule.timesteps, steps)
    except ValueError as exc:
        return _usage(f"--steps {steps}: {exc}")
    classes = model.classes
    asked: list[str] = args.prompt or []
    if asked:
        prompts = [p for p in asked for _ in range(args.num)]  # a row of N per prompt
    else:
        prompts = [classes[i % len(classes)] for i in range(args.num)]
    started = time.perf_counter()
    try:
        images = model.sample(
            prompts, steps=steps, guidance=args.guidance, sampler=args.sampler, seed=args.seed or 0
        )
    except (UnknownCharacters, PromptError) as exc:
        return _fail(f"--prompt: {exc}")
    except RunError as exc:
        return _fail(str(exc))
    seconds = time.perf_counter() - started
    columns = None  # one prompt: about square
    if len(asked) > 1:
        columns = args.num
    elif not asked and args.num % len(classes) == 0:
        columns = len(classes)
    try:
        save_images(images, out, prompts, columns)
    except OSError as exc:
        return _usage(f"cannot write {args.out}: {exc.strerror or exc}")
    guidance = model.settings["guidance"] if args.guidance is None else args.guidance
    what = "every class in turn"
    if len(asked) == 1:
        what = f"prompt {asked[0]!r}"
    elif asked:
        what = "prompts " + ", ".join(repr(p) for p in asked) + " (a row each)"
    print(
        f"wrote {args.out}: {len(images)} images {list(images.shape[1:])}, {what}, "
        f"{args.sampler or model.settings['sampler']} {steps} steps, guidance {guidance:g}, "
        f"seed {args.seed or 0}, {model.runtime}, {seconds:.1f} s"
    )
    return 0


def _write(text: str) -> None:
    """Print generated text as it comes (control characters escaped: any character of the
    data may come)."""
    sys.stdout.write(printable(text))
    sys.stdout.flush()
