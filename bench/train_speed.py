"""Training speed: `dlspec build`'s model and loop against hand-written PyTorch in the seed's style.

Prints, side by side:
1. one training step (batch 64, forward + backward + Adam) of the generated MY_NET
   (specs/cnn.dl) vs the hand-written MY_NET, both plain fp32 NCHW, in this process with
   malloc keeping freed memory (goal: within 5%);
2. one epoch on 6,000 digit images resized to 48x48 (scikit-learn's digits, repeated), with the
   seed's augmentation: dlspec's loop (data on the device, whole-batch transforms,
   channels-last, fused Adam) vs a hand-written loop in the seed script's style (a DataLoader,
   per-sample tensor transforms, the hand-written MY_NET), then the accuracy of both on the
   same 359 test digits (goal: at most 0.8x the time, the same accuracy);
   dlspec's loop runs in fp32 like the seed, and with precision "auto" (its default: bf16
   autocast on a CPU with native bf16, such as AVX512-BF16 or AMX); the seed-style loop runs
   once more with the malloc setting dlspec's loop makes on a CPU (keep_freed_memory), to show
   what that alone is worth. Each run is a fresh process;
3. each dlspec epoch against the same steps taken bare in the same process: the trainer's own
   step (channels-last, fused Adam, the run's precision) on one fixed, already augmented batch,
   once per batch of the epoch (the limit a loop can reach; goal: the epoch at most 1.05x),
   with the time the epoch spent making its batches (indexing and augmentation) beside it.

Run: .venv/bin/python bench/train_speed.py [--epochs N] [--steps N] [--repeat N]  (about 3 minutes)
     --smoke: tiny sizes, only to show that the script runs (make bench-smoke)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from seed_net import MyNet
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from dlspec.analysis.train_config import read_train, with_overrides
from dlspec.api import load
from dlspec.train.data import Dataset, load_digits
from dlspec.train.loop import Splits, Trainer, autocast_dtype, keep_freed_memory
from dlspec.train.transforms import color_jitter, random_rotation

ROOT = Path(__file__).resolve().parents[1]
SIZE, SAMPLES, BATCH = 48, 6000, 64
SMOKE_SAMPLES = 2 * BATCH
MEAN, STD = 0.1307, 0.3081
SEED_SETTINGS = [
    ("epochs", "1"),
    ("batch_size", str(BATCH)),
    ("optimizer", "Adam(lr=1e-3, weight_decay=1e-4)"),
    ("augment", "[RandomRotation(10), ColorJitter(brightness=0.2, contrast=0.2)]"),
    ("normalize", f"Normalize(mean={MEAN}, std={STD})"),
    ("val_split", "0"),
]


def digits_48(samples: int) -> tuple[Dataset, Dataset]:
    """``samples`` training images (the 1,437 training digits repeated) and the 359 test
    digits, all resized once to 48x48 grayscale in [0, 1]."""
    train, test = load_digits()

    def resize(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)

    index = torch.arange(samples) % len(train)
    big = Dataset(resize(train.x)[index], train.y[index], train.classes, "digits48/train")
    return big, Dataset(resize(test.x), test.y, test.classes, "digits48/test")


# --------------------------------------------------------------------------------------------
# 1. one training step


def training_step(model: nn.Module) -> Callable[[], None]:
    """One training step of ``model`` on a fixed random batch (after two warm-up steps)."""
    x, y = torch.randn(BATCH, 3, SIZE, SIZE), torch.randint(0, 10, (BATCH,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    step()
    step()
    return step


def compare_steps(steps: int, rounds: int = 7) -> None:
    models = {
        "generated": load(ROOT / "specs" / "cnn.dl").to_torch(),
        "hand-written": MyNet(),
    }
    keep_freed_memory()  # no page faults in either: they would dominate the difference
    step = {name: training_step(model) for name, model in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    for round_ in range(rounds):  # A B, B A, ...: background load hits both alike
        for name in list(models)[:: 1 if round_ % 2 == 0 else -1]:
            start = time.perf_counter()
            for _ in range(steps):
                step[name]()
            times[name].append((time.perf_counter() - start) / steps)
    g, h = min(times["generated"]), min(times["hand-written"])
    print(f"1. MY_NET training step (batch 64, fp32, NCHW, Adam), best of {rounds} rounds")
    print(f"   generated (specs/cnn.dl)  {1000 * g:8.1f} ms")
    print(f"   hand-written              {1000 * h:8.1f} ms")
    print(f"   ratio generated / hand    {g / h:8.3f}   (goal: 0.95 .. 1.05)")


# --------------------------------------------------------------------------------------------
# 2. one epoch: the seed's loop against dlspec's


class SeedStyleDigits(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """The seed script's dataset: transforms applied to one sample at a time (tensor ops in
    place of torchvision's: rotation, colour jitter, grayscale to 3 channels, normalise)."""

    def __init__(self, data: Dataset, train: bool) -> None:
        self.data, self.train = data, train

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.data.x[i : i + 1]  # (1, 1, 48, 48)
        if self.train:
            x = random_rotation(x, 10)
            x = color_jitter(x, 0.2, 0.2)
        x = x.repeat(1, 3, 1, 1)
        return ((x - MEAN) / STD)[0], self.data.y[i]


def seed_loop(train: Dataset, test: Dataset, epochs: int, seed: int) -> tuple[float, float]:
    """The seed script's loop, line for line; returns (training seconds, test accuracy)."""
    torch.manual_seed(seed)
    model = MyNet()
    loader = DataLoader(SeedStyleDigits(train, True), batch_size=BATCH, shuffle=True)
    test_loader = DataLoader(SeedStyleDigits(test, False), batch_size=256, shuffle=False)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        running_loss, correct, total = 0.0, 0, 0
        for x, y in tqdm(loader, desc=f"Epoch {epoch}", leave=False, disable=None):
            logits = model(x)
            loss = criterion(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running_loss += loss.item() * x.size(0)
            correct += (logits.argmax(dim=1) == y).sum().item()
            total += y.size(0)
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        preds = torch.cat([model(x).argmax(1) for x, _ in test_loader])
    return seconds, (preds == test.y).float().mean().item()


def bare_steps(trainer: Trainer, epochs: int) -> tuple[float, float]:
    """The steps of ``epochs`` epochs taken bare: the trainer's own step (its model, optimiser,
    memory format and autocast) on one fixed batch made once, at each batch size the epochs
    used; and, apart, the time the epochs' batch making takes (indexing and augmentation).
    Returns (steps seconds, batch-making seconds)."""
    x_all, y_all = trainer.data["train"]
    sizes = [len(index) for index in trainer._batches(len(x_all))]
    fixed = trainer._inputs(x_all[: max(sizes)], training=True)
    start = time.perf_counter()
    for _ in range(epochs):
        for size in sizes:
            trainer._step(fixed[:size], y_all[:size])
    steps = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(epochs):
        for index in trainer._batches(len(x_all)):
            trainer._inputs(x_all[index], training=True)
    return steps, time.perf_counter() - start


def dlspec_loop(train: Dataset, test: Dataset, precision: str, epochs: int) -> dict[str, float]:
    """dlspec's loop on the generated model, set up as `dlspec build` sets it up (CPU memory
    kept for reuse): training seconds and test accuracy, then the same steps bare (see
    :func:`bare_steps`)."""
    keep_freed_memory()
    settings = [*SEED_SETTINGS, ("epochs", str(epochs)), ("precision", precision)]
    config = with_overrides(read_train(None, {})[0], settings, {})
    torch.manual_seed(config.seed)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(
            load(ROOT / "specs" / "cnn.dl").to_torch(),
            config,
            Splits(train, None, test),
            (3, SIZE, SIZE),
            device=torch.device("cpu"),
            checkpoint_path=Path(tmp) / "checkpoint.pt",
            spec_hash="bench",
            progress=sys.stderr.isatty(),
            log=lambda _: None,
        )
        start = time.perf_counter()
        for _ in range(config.epochs):
            trainer.train_epoch()
            trainer.epoch += 1
        seconds = time.perf_counter() - start
        _, accuracy, _ = trainer.evaluate("test")
        trainer.model.train()
        bare, batches = bare_steps(trainer, config.epochs)  # after the test: they train on
    return {
        "seconds": seconds,
        "accuracy": float(accuracy or 0.0),
        "bare": bare,
        "batches": batches,
    }


def loop_figures(name: str, epochs: int, samples: int) -> dict[str, float]:
    """Run one loop of part 2 in this process: its seconds, accuracy (and bare steps)."""
    train, test = digits_48(samples)
    if name == "seed+malloc":
        keep_freed_memory()
    if name.startswith("seed"):
        seconds, accuracy = seed_loop(train, test, epochs, 0)
        return {"seconds": seconds, "accuracy": accuracy}
    return dlspec_loop(train, test, name.removeprefix("dlspec-"), epochs)


def in_subprocess(name: str, epochs: int, samples: int) -> dict[str, float]:
    """One loop in a fresh process: the malloc setting is process-wide and must not leak into
    the other loops' runs."""
    command = [sys.executable, __file__, "--loop", name, "--epochs", str(epochs)]
    command += ["--samples", str(samples)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def compare_epochs(
    epochs: int, fp32_only: bool, repeat: int, samples: int, smoke: bool = False
) -> None:
    """Part 2 and 3; ``smoke``: the seed-style loop and dlspec's fp32 loop once each, in this
    process (the start-up of fresh processes would be most of the time)."""
    auto = autocast_dtype("auto", torch.device("cpu"), images=True)
    auto_name = "fp32" if auto is None else str(auto).removeprefix("torch.")
    labels = {
        "seed": "seed-style loop",
        "dlspec-fp32": "dlspec, fp32",
        "seed+malloc": "seed-style + malloc tweak",
        "dlspec-auto": f"dlspec, auto = {auto_name}",
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in labels}
    schedule = []
    for round_ in range(repeat):  # A B, then B A: background load hits both alike
        schedule += ["seed", "dlspec-fp32"][:: 1 if round_ % 2 == 0 else -1]
    if not smoke:
        schedule += ["seed+malloc"] + ([] if fp32_only or auto is None else ["dlspec-auto"])
    run = loop_figures if smoke else in_subprocess
    for name in schedule:
        runs[name].append(run(name, epochs, samples))
    best = {name: min(r, key=lambda f: f["seconds"]) for name, r in runs.items() if r}
    base = best["seed"]["seconds"]
    print(
        f"\n2. {epochs} epoch(s) on {samples:,} digits at 48x48 with the seed's augmentation, "
        f"batch {BATCH}, MY_NET, Adam; test accuracy on 359 digits; best of {repeat} for the "
        "first two"
    )
    for name, figures in best.items():
        print(
            f"   {labels[name]:26s} {figures['seconds']:7.1f} s   "
            f"{figures['seconds'] / base:5.2f}x   test accuracy {100 * figures['accuracy']:6.2f}%"
        )
    print("   goal: dlspec's loop at most 0.80x the seed-style loop's time, the same accuracy")
    print(
        "   (malloc tweak: glibc keeps freed memory for reuse, as dlspec's loop asks on a CPU; "
        f"precision auto on this CPU: {auto_name})"
    )
    print(
        "\n3. dlspec's epoch against its steps taken bare in the same process (one fixed batch, "
        "channels-last, fused Adam, the same precision)"
    )
    print(f"   {'':26s} {'epoch':>7}   {'bare steps':>10}   {'ratio':>6}   {'making batches':>14}")
    for name, figures in best.items():
        if "bare" in figures:
            print(
                f"   {labels[name]:26s} {figures['seconds']:7.1f} s {figures['bare']:8.1f} s   "
                f"{figures['seconds'] / figures['bare']:5.3f}x   {figures['batches']:12.1f} s"
            )
    print("   goal: the epoch at most 1.05x its bare steps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1, help="epochs in part 2 (default 1)")
    parser.add_argument("--steps", type=int, default=4, help="steps per round in part 1")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each loop in part 2")
    parser.add_argument(
        "--fp32-only", action="store_true", help="in part 2, skip dlspec's run with autocast"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check that it runs")
    parser.add_argument("--loop", help=argparse.SUPPRESS)  # internal: run one loop of part 2
    parser.add_argument("--samples", type=int, default=SAMPLES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loop:
        print(json.dumps(loop_figures(args.loop, args.epochs, args.samples)))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads\n")
    if args.smoke:
        compare_steps(1, rounds=1)
        compare_epochs(1, fp32_only=True, repeat=1, samples=SMOKE_SAMPLES, smoke=True)
        return
    compare_steps(args.steps)
    compare_epochs(args.epochs, args.fp32_only, args.repeat, args.samples)


if __name__ == "__main__":
    main()
