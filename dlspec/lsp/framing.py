"""The language server's input, framed defensively: only well-formed messages of bounded size
reach pygls.

An editor's server must not die or block on one bad message. pygls trusts the
``Content-Length`` header: a length of ``abc`` is skipped and the body then read as headers, a
length shorter than the body leaves the rest to spoil the next message, and ``10^12`` makes it
wait for (and buffer) a terabyte. :class:`FramedInput` sits between stdin and pygls: it reads
the header block itself, accepts a length of at most :data:`MAX_MESSAGE` bytes, and when a
header is malformed or too large it drops that message and finds the next ``Content-Length``
header in the stream, discarding what lies between in fixed-size chunks; a body that is not
a JSON object (cut short by a wrong length) is dropped too. Each dropped message
becomes a ``$/dlspec/dropped`` notification to the server, which tells the client in a log
message; the client's later messages are served as usual.
"""

from __future__ import annotations

import json
import re
from io import BufferedIOBase

#: The largest message accepted: a spec is at most 1 MiB (E004), and JSON may escape each of
#: its characters in up to 6 bytes.
MAX_MESSAGE = 8 * 1024 * 1024
MAX_HEADER = 8 * 1024  # a header block is a line or two
CHUNK = 64 * 1024
DROPPED = "$/dlspec/dropped"  # the notification a dropped message becomes

_LENGTH = re.compile(rb"Content-Length:[ \t]*([^\r\n]*)\r?\n", re.IGNORECASE)
_KEY = b"content-length:"


class FramedInput:
    """A binary stream for pygls (``readline`` and ``read``) that yields only well-formed
    frames read from ``stream``, and a ``$/dlspec/dropped`` notification in place of each
    malformed one."""

    def __init__(self, stream: BufferedIOBase, limit: int = MAX_MESSAGE) -> None:
        self.stream = stream
        self.limit = limit
        self._buffer = b""  # read from the stream, not yet framed
        self._out = b""  # the current clean frame, as pygls reads it
        self._eof = False

    # pygls's side -------------------------------------------------------------------------

    def readline(self) -> bytes:
        if not self._out:
            self._out = self._next_frame()
        end = self._out.find(b"\n") + 1 or len(self._out)
        line, self._out = self._out[:end], self._out[end:]
        return line

    def read(self, size: int = -1) -> bytes:
        size = len(self._out) if size < 0 else size
        data, self._out = self._out[:size], self._out[size:]
        return data

    # the stream's side --------------------------------------------------------------------

    def _fill(self) -> bool:
        """Read more of the stream into the buffer; False at its end."""
        if self._eof:
            return False
        chunk = self.stream.read1(CHUNK)  # what is there, without waiting for a full chunk
        if not chunk:
            self._eof = True
            return False
        self._buffer += chunk
        return True

    def _next_frame(self) -> bytes:
        """The next well-formed frame (header and body), a dropped-message notification, or
        b"" at the end of the stream."""
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEADER:
                    self._skip_to_header()
                    return self._dropped("a header longer than 8 KiB")
                if not self._fill():
                    return b""
                continue
            header, self._buffer = self._buffer[: end + 2], self._buffer[end + 4 :]
            # text before the last Content-Length is what a short length left of a body
            start = header.lower().rfind(_KEY)
            match = _LENGTH.match(header, start) if start >= 0 else None
            value = match.group(1).strip() if match else b""
            if not value.isdigit() or len(value) > 15:
                self._skip_to_header()
                shown = value[:40].decode("ascii", "backslashreplace")
                return self._dropped(f"a Content-Length of {shown!r}, not a number of bytes")
            length = int(value)
            if length > self.limit:
                self._skip_to_header()
                return self._dropped(
                    f"a message of {length:,} bytes; the limit is {self.limit:,} "
                    "(documents are at most 1 MiB)"
                )
            while len(self._buffer) < length and self._fill():
                pass
            if len(self._buffer) < length:
                return b""  # the stream ended within the body
            body, self._buffer = self._buffer[:length], self._buffer[length:]
            try:  # a length shorter than the body cuts it: pygls would log a traceback
                message = json.loads(body)
            except ValueError as exc:
                return self._dropped(f"a body of {length:,} bytes that is not JSON ({exc})")
            if not isinstance(message, dict):
                return self._dropped(f"a body that is a JSON {type(message).__name__}")
            return _frame(body)

    def _skip_to_header(self) -> None:
        """Drop the buffer up to the next Content-Length header (keeping at most a header's
        worth of bytes while looking for it)."""
        while True:
            at = self._buffer.lower().find(_KEY)
            if at >= 0:
                self._buffer = self._buffer[at:]
                return
            self._buffer = self._buffer[-len(_KEY) :]  # a header split across two reads
            if not self._fill():
                self._buffer = b""
                return

    def _dropped(self, reason: str) -> bytes:
        message = {"jsonrpc": "2.0", "method": DROPPED, "params": {"reason": reason}}
        return _frame(json.dumps(message).encode("utf-8"))


def _frame(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n\r\n" % len(body) + body
