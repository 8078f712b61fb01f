"""Client line framing: bytes in whatever pieces the network delivers → complete lines.

Lines end with CRLF or a bare LF (Qpopper accepts both). A line longer than the caller's limit
is reported ONCE as TOO_LONG as soon as it is known to be too long, and the rest of it is
discarded up to the next LF, however many feeds it takes to arrive (RFC 2449 §4).
"""

from __future__ import annotations


class _TooLong:
    def __repr__(self) -> str:
        return "TOO_LONG"


TOO_LONG = _TooLong()
"""next_line()'s answer for an over-long line (its bytes are already discarded)."""


class LineReader:
    """Buffers client bytes; hands out one line at a time under a per-call length limit."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._draining = False   # inside an over-long line already answered: drop to next LF

    def append(self, data: bytes) -> None:
        if self._draining:
            newline = data.find(b"\n")
            if newline < 0:
                return
            data = data[newline + 1:]
            self._draining = False
        self._buf += data

    def next_line(self, limit: int) -> bytes | _TooLong | None:
        """The next line without its line end, TOO_LONG, or None when no full line is buffered.

        `limit` counts the octets of the line as sent, line end included.
        """
        newline = self._buf.find(b"\n")
        if newline < 0:
            if len(self._buf) > limit:
                self._buf.clear()
                self._draining = True
                return TOO_LONG
            return None
        line = bytes(self._buf[:newline + 1])
        del self._buf[:newline + 1]
        if len(line) > limit:
            return TOO_LONG
        line = line[:-1]
        return line[:-1] if line.endswith(b"\r") else line

    def take(self) -> bytes:
        """Every byte buffered and not yet a line (pipelined input), handed to whoever reads
        on; the reader is left empty."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def discard(self) -> None:
        """Forget everything buffered (after STLS: plaintext sent before the handshake must
        never be read as if it came through TLS)."""
        self._buf.clear()
        self._draining = False
