"""What an unexpected exception becomes: every exception that escapes a command is a bug in
dlspec, so the user sees one line asking for a report and the path of a log file that holds
the traceback, never the traceback itself."""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dlspec import __version__

if TYPE_CHECKING:
    from pathlib import Path

EXIT_INTERNAL = 70  # EX_SOFTWARE: a bug in dlspec, not a mistake of the user's


def report_internal_error(argv: Sequence[str], error: BaseException) -> Path | None:
    """Write the traceback of an unexpected exception to a log file under the temporary
    directory and return its path (None when even that fails)."""
    import tempfile  # only on a crash: every command imports this module at start-up
    from pathlib import Path

    text = "".join(traceback.format_exception(error))
    header = f"dlspec {__version__}, python {sys.version.split()[0]}\nargv: {list(argv)!r}\n\n"
    try:
        folder = Path(tempfile.gettempdir()) / "dlspec-crash"
        folder.mkdir(mode=0o700, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        log = folder / f"{stamp}-{os.getpid()}.log"
        log.write_text(header + text, encoding="utf-8", errors="backslashreplace")
    except OSError:
        return None
    return log


def internal_error(argv: Sequence[str], error: BaseException) -> int:
    """Say that ``error`` is a bug, with the log file's path; returns EXIT_INTERNAL."""
    log = report_internal_error(argv, error)
    where = f"; details are in {log}" if log else ""
    print(
        f"dlspec: internal error, please report ({type(error).__name__}: "
        f"{str(error)[:200]}){where}",
        file=sys.stderr,
    )
    return EXIT_INTERNAL
