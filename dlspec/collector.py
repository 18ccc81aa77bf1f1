"""Python's cycle collector: paused where dlspec allocates much and leaves no cycles behind,
and told to ignore what a program imports.

The collector runs every few hundred allocations and rescans the objects earlier collections
kept. Importing a command (lark, pydantic-core and dlspec's own modules) allocates modules,
classes and functions that live as long as the process, and a check's pipeline makes many
small, short-lived, acyclic objects: rescanning them finds nothing to free, and costs a large
check much of its time and every check part of its start-up.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused() -> Iterator[None]:
    """No cycle collection inside the block (it resumes after, if it ran before)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def keep_imported() -> None:
    """Let the collector ignore every object allocated so far (:func:`gc.freeze`): for the
    process of a program that has imported what it runs, whose modules, classes and functions
    live to its end. Every full collection would scan them all again, and so would the last,
    at exit (a fifth of a check's whole process)."""
    gc.freeze()
