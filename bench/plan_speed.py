"""`dlspec plan` from the command line: the README's two questions (tiny_gpt on 24 GiB;
Llama-2-7B on 80 GiB with bf16 autocast and activation checkpointing), whole-process time
against `dlspec check specs/cnn.dl`'s (mostly start-up), in one run.

Goal: each plan well under a second, little more than the start-up. Both wall-clock and CPU
time (user + system, from the operating system's account of the child) are shown: on a busy
machine the CPU time is the one to read.

Run: .venv/bin/python bench/plan_speed.py [--repeat N]
     --smoke: tiny sizes, only to show that the script runs (make bench-smoke)
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DLSPEC = [sys.executable, "-m", "dlspec"]
COMMANDS = {
    "check cnn (start-up)": ["check", "specs/cnn.dl"],
    "plan tiny_gpt 24GiB": ["plan", "specs/tiny_gpt.dl", "--memory", "24GiB"],
    "plan llama2_7b 80GiB": [
        *("plan", "specs/zoo/llama2_7b.dl", "--memory", "80GiB"),
        *("--precision", "bf16", "--checkpointing", "--optimizer", "sgd"),
    ],
}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def median_times(command: list[str], repeat: int) -> tuple[float, float]:
    """Median wall-clock and CPU seconds of one run of ``dlspec command``."""
    walls, cpus = [], []
    for _ in range(repeat):
        start, cpu = time.perf_counter(), cpu_seconds()
        subprocess.run([*DLSPEC, *command], capture_output=True, cwd=ROOT, check=False)
        walls.append(time.perf_counter() - start)
        cpus.append(cpu_seconds() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check that it runs")
    args = parser.parse_args()
    repeat = 1 if args.smoke else args.repeat
    times = {name: median_times(command, repeat) for name, command in COMMANDS.items()}
    baseline = times["check cnn (start-up)"][1]
    print(f"{'command':24} {'wall':>8} {'CPU':>8} {'CPU / start-up':>15}")
    for name, (wall, cpu) in times.items():
        print(f"{name:24} {wall * 1000:6.0f}ms {cpu * 1000:6.0f}ms {cpu / baseline:14.2f}x")


if __name__ == "__main__":
    main()
