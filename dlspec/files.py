"""Writing outputs so that nothing is lost: a temporary file beside the target, then a rename."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an exception, the
    temporary file replaces ``path`` in one step, so readers see the old file or the new one,
    never half of one. On an exception (Ctrl-C included) the temporary file is removed."""
    target = Path(path)
    # a fresh name, not a mkstemp file: the writer creates it with the usual permissions
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_file`."""
    with atomic_file(path) as temporary:
        temporary.write_bytes(data)
