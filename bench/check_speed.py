"""`dlspec check` speed: whole-process time against torchinfo on the same model, and scaling.

Prints, side by side:
1. `dlspec check specs/cnn.dl` as a whole process vs a whole process that only imports lark and
   pydantic, check's import floor (goal: at most 1.5x), and vs a whole process that builds the
   same hand-written MY_NET in torch and prints torchinfo's summary (goal: at least 15x
   faster); the three run alternately, so that a busy machine slows each alike;
2. check time for generated specs of 100, 1,000 and 10,000 layers (goal: linear; 10,000 under
   1 s), in-process (parse + analyze + lint + report) and as a whole process;
3. a repetition of one small block (a residual Linear + GELU) 100,000 times: its alike copies
   are analysed once, so it checks as fast as a short spec (goal: under 1 s as a whole
   process), with the totals of 100,000 blocks;
4. with ``--against OTHER_DLSPEC`` (another checkout's ``dlspec`` program, e.g. the one before a
   change): ``dlspec check specs/cnn.dl`` by both, run alternately in this one process, and the
   ratio (goal: no slower).

Run: .venv/bin/python bench/check_speed.py [--repeat N] [--against PATH]
     --smoke: tiny sizes, only to show that the script runs (make bench-smoke)
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dlspec.diagnostics import n

ROOT = Path(__file__).resolve().parents[1]
# the measured processes run as an installed package would: with dlspec's bytecode compiled
# and read, whatever PYTHONDONTWRITEBYTECODE says here (a checkout run with it set compiles
# dlspec on every start, which no installed copy does); --smoke leaves both as they are, so
# that the tests write nothing into the checkout
ENV: dict[str, str] = {}

# a whole process: import torch and torchinfo, build the primer's MY_NET, print the summary
TORCHINFO = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from torchinfo import summary
from seed_net import MyNet

summary(MyNet(), input_size=(1, 3, 48, 48))
"""


def wall(cmd: list[str], repeat: int) -> float:
    """Median wall time of a whole process."""
    return statistics.median(_once(cmd) for _ in range(repeat))


def alternating(commands: dict[str, list[str]], repeat: int) -> dict[str, float]:
    """Median wall time of each whole process, the commands run in turn ``repeat`` times."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, command in commands.items():
            times[name].append(_once(command))
    return {name: statistics.median(t) for name, t in times.items()}


def _once(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        cmd,
        cwd=ROOT,
        env=ENV or None,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return time.perf_counter() - start


def against(other: str, repeat: int) -> None:
    """This checkout's ``dlspec check specs/cnn.dl`` and another's, alternately."""
    mine = [sys.executable, "-m", "dlspec", "check", "specs/cnn.dl"]
    theirs = [other, "check", "specs/cnn.dl"]
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        times[0].append(_once(mine))
        times[1].append(_once(theirs))
    ours, base = statistics.median(times[0]), statistics.median(times[1])
    print(f"\nwhole process, dlspec check specs/cnn.dl, {repeat} alternating runs each")
    print(f"  this checkout               {ours * 1000:8.0f} ms")
    print(f"  {other:<27} {base * 1000:8.0f} ms")
    print(f"  ratio                       {base / ours:8.2f} (> 1: this checkout is faster)")


def layered_spec(layers: int) -> str:
    """A deep MLP-like stack: Linear/ReLU pairs with a block every 10 layers."""
    lines = ["block Pair(w: int) {", "    Linear(w)", "    ReLU", "}", "model Deep(w: int = 64) {"]
    lines.append("    input x: float[64]")
    for i in range(layers // 2):
        lines.append(f"    fc{i} = Linear(w)" if i % 5 else f"    pair{i} = Pair(w)")
        lines.append("    ReLU" if i % 5 else "    Identity")
    lines.append("}")
    return "\n".join(lines) + "\n"


def repeated_spec(copies: int) -> str:
    """One small residual block, repeated ``copies`` times, and a head."""
    return (
        "block Block(d: int) {\n    residual {\n        Linear(d)\n        GELU\n    }\n}\n"
        f"model Repeated(d: int = 16) {{\n    input x: float[d]\n"
        f"    blocks = Block(d) * {copies}\n    head = Linear(1)\n}}\n"
    )


def repeated(copies: int, repeat: int, tmp: Path) -> None:
    """Check time of ``Block * copies``, in-process and as a whole process, and its totals."""
    from dlspec.analysis.check import check_text

    text = repeated_spec(copies)
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        checked = check_text(text, "repeated.dl")
        runs.append(time.perf_counter() - start)
    report = checked.report
    assert report.ok, report.diagnostics[:3]
    block = (16 + 1) * 16  # one Linear(16) on 16 features
    assert report.total_params == copies * block + 16 + 1, report.total_params
    path = tmp / "repeated.dl"
    path.write_text(text)
    proc = wall([sys.executable, "-m", "dlspec", "check", str(path)], repeat)
    print(f"\nBlock * {copies:,}: alike copies analysed once ({n(report.total_params)} params)")
    print(f"  in-process                  {statistics.median(runs) * 1000:8.0f} ms")
    print(f"  whole process               {proc * 1000:8.0f} ms (goal < 1,000 ms)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--against", metavar="DLSPEC", help="another checkout's dlspec program")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check that it runs")
    args = parser.parse_args()
    if args.smoke:
        args.repeat = 1
    py = sys.executable
    if not args.smoke:
        compileall.compile_dir(ROOT / "dlspec", quiet=1)
        ENV.update((k, v) for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE")
    _once([py, "-m", "dlspec", "check", "specs/cnn.dl"])  # the grammar cache, as after install
    times = alternating(
        {
            "check": [py, "-m", "dlspec", "check", "specs/cnn.dl"],
            "floor": [py, "-c", "import lark, pydantic"],
            "torchinfo": [py, "-c", TORCHINFO],
        },
        args.repeat,
    )
    dl, floor, ti = (times[k] for k in ("check", "floor", "torchinfo"))
    print(f"whole process, MY_NET summary, median of {args.repeat} alternating runs")
    if ENV:
        print("  (dlspec's bytecode compiled, PYTHONDONTWRITEBYTECODE unset: as installed)")
    print(f"  dlspec check specs/cnn.dl   {dl * 1000:8.0f} ms")
    print(f"  import lark, pydantic       {floor * 1000:8.0f} ms")
    print(f"  torch + torchinfo.summary   {ti * 1000:8.0f} ms")
    print(f"  check / import floor        {dl / floor:8.2f}x (goal <= 1.5x)")
    print(f"  torchinfo / check           {ti / dl:8.1f}x faster (goal >= 15x)")

    from dlspec.analysis.check import check_text

    print("\nscaling with spec size  in-process   whole process  per layer")
    with tempfile.TemporaryDirectory() as tmp:
        for layers in (100,) if args.smoke else (100, 1_000, 10_000):
            text = layered_spec(layers)
            runs = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                checked = check_text(text, "deep.dl")
                runs.append(time.perf_counter() - start)
            assert checked.report.ok, checked.report.diagnostics[:3]
            path = Path(tmp) / f"deep{layers}.dl"
            path.write_text(text)
            proc = wall([py, "-m", "dlspec", "check", str(path)], max(1, args.repeat // 2))
            inproc = statistics.median(runs)
            ms_in, ms_proc, us_layer = inproc * 1000, proc * 1000, inproc / layers * 1e6
            print(f"  {layers:>6,} layers {ms_in:8.0f} ms {ms_proc:8.0f} ms {us_layer:6.1f} us")
        repeated(1_000 if args.smoke else 100_000, args.repeat, Path(tmp))
    if args.against:
        against(args.against, 4 * args.repeat)


if __name__ == "__main__":
    main()
