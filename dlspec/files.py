"""Writing outputs so that nothing is lost: a temporary file beside the target, then a rename."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path


class OutputError(ValueError):
    """An output path that a command must not write: the message says why and what to do."""


def output_path(
    path: str | os.PathLike[str],
    option: str = "--out",
    inputs: Mapping[str, str | os.PathLike[str] | None] | None = None,
) -> Path:
    """Check an output file before any work starts; return it as given (a symbolic link is
    checked as the file it names: :func:`atomic_file` writes the target, the link stays).
    Refused with :class:`OutputError`: a directory, a device, pipe or socket (a regular file
    would replace it), a file or directory that cannot be written, a missing directory, and a
    path that is the same file as one of ``inputs`` (what the command reads, or another of its
    outputs: description -> path)."""
    given = Path(path)
    target = Path(os.path.realpath(given))
    try:
        info = target.stat()
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise OutputError(f"{option} {given}: {exc.strerror or exc}") from None
    if info is not None:
        if stat.S_ISDIR(info.st_mode):
            raise OutputError(f"{option} {given} is a directory; name the file to write")
        if not stat.S_ISREG(info.st_mode):
            raise OutputError(
                f"{option} {given} is not a regular file (a device, pipe or socket); "
                "name a file to write"
            )
        if not os.access(target, os.W_OK):
            raise OutputError(f"{option} {given}: the file is not writable")
    if not target.parent.is_dir():
        raise OutputError(f"{option} {given}: no directory {given.parent}")
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {given}: the directory {given.parent} is not writable")
    for what, other in (inputs or {}).items():
        if other is not None and Path(os.path.realpath(other)) == target:
            raise OutputError(
                f"{option} {given} is also {what} of this command; write to another file"
            )
    return given


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an exception, the
    temporary file replaces ``path`` in one step, so readers see the old file or the new one,
    never half of one. On an exception (Ctrl-C included) the temporary file is removed.
    As editors do, a symbolic link is followed (its target is replaced, the link stays) and
    a file that exists keeps its permissions."""
    target = Path(os.path.realpath(path))
    # a fresh name, not a mkstemp file: the writer creates it with the usual permissions
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    try:
        yield temporary
        with contextlib.suppress(FileNotFoundError):
            os.chmod(temporary, stat.S_IMODE(target.stat().st_mode))
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_file`."""
    with atomic_file(path) as temporary:
        temporary.write_bytes(data)


_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")  # the names atomic_file gives


def remove_stale_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that :func:`atomic_file` left in ``directory`` when its
    process was killed (SIGKILL, power loss) before it could clean up; returns them. Call it
    while holding the directory's :class:`DirectoryLock`, so that no writer is mid-way."""
    removed = []
    for path in Path(directory).glob(".*.tmp"):
        if _TEMPORARY.fullmatch(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


class LockedError(Exception):
    """Another process holds the directory's lock; ``pid`` is its process id (None when it
    could not be read)."""

    def __init__(self, directory: Path, pid: int | None) -> None:
        holder = f"process {pid}" if pid is not None else "another process"
        super().__init__(
            f"{directory} is in use by {holder} (another dlspec build writing there); wait for "
            "it to finish, or choose another --out directory"
        )
        self.pid = pid


class DirectoryLock:
    """An exclusive lock on a directory, held while a command writes into it: the lock file
    ``.dlspec.lock`` holds the owner's pid and is removed on release; the operating system
    releases the lock when the process ends, however it ends (a killed build leaves the file,
    but no lock: the next command takes it over).
    :meth:`acquire` raises :class:`LockedError` at once when another process holds it."""

    NAME = ".dlspec.lock"

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return self.directory / self.NAME

    def acquire(self) -> None:
        """Take the lock (the directory must exist)."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                pid = os.read(fd, 32).decode("ascii", "replace").strip()
                os.close(fd)
                raise LockedError(self.directory, int(pid) if pid.isdigit() else None) from None
            try:  # the holder may have removed the file between our open and our lock
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode("ascii"))
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file and give up the lock."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None
