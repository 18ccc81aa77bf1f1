"""Run a command again whenever one of its files changes (``dlspec check --watch``)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from dlspec.commands.common import finite_number

CLEAR = "\033[2J\033[H"  # clear the terminal, cursor to the top left


def positive_seconds(text: str) -> float:
    """A --interval value: from 10 ms to an hour."""
    return finite_number(text, 0.01, 3600.0, "a number of seconds")


def _stamps(paths: Sequence[str]) -> list[tuple[int, int] | None]:
    stamps: list[tuple[int, int] | None] = []
    for path in paths:
        try:
            info = os.stat(path)
            stamps.append((info.st_mtime_ns, info.st_size))
        except OSError:
            stamps.append(None)  # missing for now (an editor saving by rename, say)
    return stamps


def watch(
    paths: Sequence[str],
    run: Callable[[], int],
    interval: float,
    rounds: int | None = None,
    status: TextIO | None = None,
) -> int:
    """Call ``run`` now and after every change to ``paths`` (polled every ``interval``
    seconds), clearing the screen first when stdout is a terminal, until Ctrl-C (or
    ``rounds`` runs). Returns the last run's exit code. The line that says it is watching
    goes to ``status`` (stdout by default; stderr where stdout carries only JSON)."""
    seen = None
    code, done = 0, 0
    try:
        while rounds is None or done < rounds:
            stamps = _stamps(paths)
            if stamps != seen:
                seen = stamps
                if sys.stdout.isatty():
                    print(CLEAR, end="")
                code = run()
                done += 1
                stamp = time.strftime("%H:%M:%S")
                print(
                    f"[{stamp}] watching {', '.join(paths)} for changes (Ctrl-C stops)",
                    file=status or sys.stdout,
                )
                sys.stdout.flush()
                sys.stderr.flush()
            else:
                time.sleep(interval)
    except KeyboardInterrupt:
        pass
    return code
