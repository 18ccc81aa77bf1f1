"""Running a user's code where it can be bounded: a forked child process with a time limit and
a memory limit (``dlspec import MODULE:CALLABLE`` builds and runs the user's model; ``dlspec
predict`` and ``dlspec bench`` run a user's ONNX file, whose graph can loop 2**62 times or
allocate without end).

The child does the whole job, writing included, to output paths resolved (absolute) before it
starts, so a constructor that changes directory does not move them. The parent only waits:
past the time limit it kills the child's process group; a child that ends without reporting
success (``sys.exit`` or ``os._exit`` in the user's code, a signal, memory exhausted) is a
message and exit 1, never exit 0 with nothing written.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import errno
import os
import sys
import time
from collections.abc import Callable
from typing import NoReturn, TextIO

from dlspec.analysis.render import human_bytes
from dlspec.commands.common import finite_number, size_limit
from dlspec.crash import internal_error

DONE = b"done"  # what the child writes to the parent when the job finished
REPORTED = b"told"  # ... or when the job failed and the child said why
MAX_OUTPUT = 1024 * 1024  # bytes of the child's stdout, and of its stderr, passed on
MAX_MEMORY = 4 * 2**30  # bytes a user's model may allocate by default, beyond dlspec's own


def _address_space() -> int | None:
    """The bytes of address space this process maps now (None where it cannot be read)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def add_limits(
    parser: argparse.ArgumentParser, runs: str, timeout: int, memory: int | None
) -> None:
    """``--timeout`` and, with a default ``memory``, ``--max-memory``: the bounds of the child
    process that runs ``runs`` (the user's code or file)."""
    limits = parser.add_argument_group(f"limits ({runs} runs in a child process)")
    limits.add_argument(
        "--timeout",
        type=lambda text: finite_number(text, 1, 86_400, "a number of seconds"),
        default=timeout,
        metavar="SECONDS",
        help=f"stop running {runs} after this long (default {timeout})",
    )
    if memory is not None:
        limits.add_argument(
            "--max-memory",
            type=size_limit,
            default=memory,
            metavar="SIZE",
            help=f"memory {runs} may allocate, e.g. 16G (default {human_bytes(memory)})",
        )


def run_bounded(
    job: Callable[[], int],
    *,
    seconds: float,
    memory: int | None,
    what: str,
    name: str,
    hint: str = "a constructor or forward that never returns?",
    writes: bool = True,
) -> int:
    """Run ``job`` (which prints its own messages and returns an exit code) in a child
    process that may run ``seconds`` and allocate ``memory`` bytes more than this process
    holds (None: no memory limit); ``what`` names the user's code in messages, ``name`` the
    command, ``hint`` what may keep it running past the limit, ``writes`` whether the job
    writes files (the messages then say nothing was). What the child prints comes back
    through pipes to this process's ``sys.stdout`` and ``sys.stderr`` (at most
    :data:`MAX_OUTPUT` bytes of each)."""
    import selectors  # here, as select and resource below: `dlspec check` imports this module
    import signal  # for add_limits alone, and runs no child

    unwritten = "; nothing was written" if writes else ""
    sys.stdout.flush()
    sys.stderr.flush()
    pipes = {key: os.pipe() for key in ("out", "err", "done")}
    pid = os.fork()
    if pid == 0:  # the child: never returns
        _child(job, memory, what, name, unwritten, {key: w for key, (_, w) in pipes.items()})
    for _, write_end in pipes.values():
        os.close(write_end)
    status, said = None, b""  # what the child wrote to the "done" pipe
    streams = {pipes["out"][0]: sys.stdout, pipes["err"][0]: sys.stderr}
    relays = {fd: _Relay(stream) for fd, stream in streams.items()}
    selector = selectors.DefaultSelector()
    for fd in (*relays, pipes["done"][0]):
        selector.register(fd, selectors.EVENT_READ)
    deadline = time.monotonic() + seconds
    try:
        while status is None and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.05):
                data = os.read(key.fd, 65536)
                if not data:
                    selector.unregister(key.fd)
                elif key.fd in relays:
                    relays[key.fd].write(data)
                else:
                    said += data
            done, code = os.waitpid(pid, os.WNOHANG)
            status = code if done else None
    finally:
        if status is None:  # past the limit, or Ctrl-C: end the child and what it started
            for target in (-pid, pid):
                with contextlib.suppress(OSError):
                    os.kill(target, signal.SIGKILL)
            os.waitpid(pid, 0)
        for fd in (*relays, pipes["done"][0]):  # what is left in the pipes
            while data := _read_ready(fd):
                if fd in relays:
                    relays[fd].write(data)
                else:
                    said += data
            os.close(fd)
        selector.close()
    if status is None:
        print(
            f"dlspec {name}: {what} did not finish within {seconds:g} s ({hint}); --timeout "
            f"raises the limit{unwritten}",
            file=sys.stderr,
        )
        return 1
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        print(
            f"dlspec {name}: {what} was ended by signal {signal.Signals(-code).name} "
            f"(out of memory?){unwritten}",
            file=sys.stderr,
        )
        return 1
    if said not in (DONE, REPORTED):  # os._exit in the user's code, or the C library's
        print(
            f"dlspec {name}: {what} ended the process (exit {code}) before dlspec {name} "
            f"finished{' (out of memory?)' if code else ''}{unwritten}",
            file=sys.stderr,
        )
        return 1
    return code if said == DONE else code or 1


#: What a refused allocation says where it is no MemoryError: torch's CPU allocator (a
#: RuntimeError) and the dynamic loader mapping a library that an import loads (an ImportError).
_NO_MEMORY = ("DefaultCPUAllocator: can't allocate memory", "failed to map segment")


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation that the memory limit refused."""
    if isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno == errno.ENOMEM):
        return True
    return any(sign in str(exc) for sign in _NO_MEMORY)


def _read_ready(fd: int) -> bytes:
    """What can be read from ``fd`` without waiting (b"" when nothing is)."""
    import select

    if not select.select([fd], [], [], 0)[0]:
        return b""
    return os.read(fd, 65536)


class _Relay:
    """Text from a child's pipe to a stream of this process, cut at MAX_OUTPUT bytes."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.decoder = codecs.getincrementaldecoder("utf-8")("backslashreplace")
        self.size = 0

    def write(self, data: bytes) -> None:
        if self.size < MAX_OUTPUT <= self.size + len(data):
            data = data[: MAX_OUTPUT - self.size] + b"\n[... output cut at 1 MiB]\n"
        elif self.size >= MAX_OUTPUT:
            return
        self.size += len(data)
        self.stream.write(self.decoder.decode(data))
        self.stream.flush()


def _child(
    job: Callable[[], int],
    memory: int | None,
    what: str,
    name: str,
    unwritten: str,
    pipes: dict[str, int],
) -> NoReturn:
    import resource

    code, finished = 1, False
    try:
        os.setsid()  # a process group of its own, killed whole at the limit
        sys.stdout = open(pipes["out"], "w", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
        sys.stderr = open(pipes["err"], "w", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
        # the parent's OpenMP thread pool did not survive the fork: a parallel region would
        # wait for its threads forever, so the child's torch computes on one thread
        if (torch := sys.modules.get("torch")) is not None:
            torch.set_num_threads(1)
        mapped = _address_space()
        if mapped is not None and memory is not None:
            limit = mapped + memory
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        code = job()
        finished = True
    except Exception as exc:
        if _out_of_memory(exc):
            print(
                f"dlspec {name}: {what} needs more than {human_bytes(memory or 0)} of memory "
                f"(--max-memory raises the limit){unwritten}",
                file=sys.stderr,
            )
        else:  # the user's code raised through dlspec's own handling: a bug
            code = internal_error(sys.argv[1:], exc)
    except BaseException as exc:  # the user's code: SystemExit, BaseException, ...
        detail = f"({str(exc)[:200]!r})" if str(exc) else ""
        happened = f"raised {type(exc).__name__}{detail}"
        if isinstance(exc, SystemExit):
            happened = f"called sys.exit({exc.code!r})"
        print(f"dlspec {name}: {what} {happened}{unwritten}", file=sys.stderr)
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        with contextlib.suppress(OSError):
            os.write(pipes["done"], DONE if finished else REPORTED)
        os._exit(code)
