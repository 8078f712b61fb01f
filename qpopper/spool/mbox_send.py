"""RETR and TOP: a scanned message as POP3 multi-line data, streamed in bounded windows
(docs/mbox.md, "X-UIDL and Status")."""

from __future__ import annotations

import os
import re
from typing import BinaryIO, Callable

from qpopper import limits
from qpopper.spool.mbox_format import (CR, LF, UIDL_HEADER, Message, WriteFn, _NUL_TO_SPACE,
                                       _read_at, closer_octets)

_DOT_AFTER_LF = re.compile(rb"\n\.")
_CONVERTED = frozenset("\0\r\n")
"""Characters the wire conversion changes (a dot only after LF)."""


def wire_bytes_python(data: bytes, at_line_start: bool = True) -> bytes:
    """Spool bytes as POP3 multi-line data (CRLF line ends, NUL as space, dot-stuffing), each
    step one C pass over the whole block; `data` must not end inside a CRLF.

    The definition: the compiled _wire.wire_bytes must give the same bytes for every input
    (docs/accelerators.md, "The wire conversion")."""
    if b"\0" in data:                              # rare: skip translate's copy without one
        data = data.translate(_NUL_TO_SPACE)
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
    # dot-stuffing before LF -> CRLF. A line starting with a dot is rare: searching is cheaper
    # than sub (which builds its result list even without a match), and the regex finds LF-dot
    # faster than bytes.find does.
    if _DOT_AFTER_LF.search(data) is not None:
        data = _DOT_AFTER_LF.sub(b"\n..", data)
    data = data.replace(b"\n", b"\r\n")
    if at_line_start and data[:1] == b".":
        data = b"." + data
    return data


def wire_join_python(pieces: list, at_line_start: bool = True) -> bytes:
    """wire_bytes of the pieces joined: the definition of the compiled _wire.wire_join, which
    converts them without the joined copy (docs/accelerators.md, "A message's pieces")."""
    return wire_bytes_python(b"".join(pieces), at_line_start)


# The compiled conversion when it was built (one pass instead of four or five), else the
# definitions above (docs/accelerators.md, "Fallback"). The server converts with wire_join
# only (one buffer is one piece); tests and the fuzz target also use the one-buffer forms.
try:
    from qpopper.spool._wire import wire_bytes as wire_bytes_c, wire_join as wire_join_c
except ImportError:
    wire_bytes_c = wire_join_c = None
wire_join = wire_join_c or wire_join_python


class WireLines:
    """Turns spool bytes into POP3 multi-line data: CRLF line ends, NUL as space, dot-stuffing.

    Works on whole blocks with bytes methods (each a C loop over the block), never per line;
    the only state carried from one block to the next is a trailing CR (maybe half a CRLF) and
    whether the next block starts a line."""

    def __init__(self, write: WriteFn):
        self.write = write
        self.at_line_start = True
        self.pending_cr = False

    def feed(self, data: bytes, final: bool = False) -> None:
        self.feed_pieces([data], final)

    def feed_pieces(self, pieces: list, final: bool = False) -> None:
        """The next block, given as buffers converted as if joined (wire_join: without the
        joined copy)."""
        if self.pending_cr:
            pieces = [b"\r", *pieces]
            self.pending_cr = False
        if not final:                   # a CR at the end may be half a CRLF split by a block
            for i in range(len(pieces) - 1, -1, -1):
                if len(pieces[i]):
                    if pieces[i][-1] == CR:
                        self.pending_cr = True
                        pieces = [*pieces[:i], memoryview(pieces[i])[:-1]]
                    break
        data = wire_join(pieces, self.at_line_start)
        if not data:
            return
        self.at_line_start = data[-1] == LF
        self.write(data)

    def raw_line(self, line: bytes) -> None:
        """A CRLF-ended line sent as it is, at a line start (after a final feed)."""
        self.write(line)
        self.at_line_start = True


def _kept_ranges(msg: Message, stop: int) -> list[tuple[int, int]]:
    """[content_start, stop) minus the stripped header lines, split at the X-UIDL insert point."""
    ranges = []
    cur = msg.content_start
    for a, b in msg.stripped:
        if a > cur:
            ranges.append((cur, min(a, stop)))
        cur = max(cur, b)
    if cur < stop:
        ranges.append((cur, stop))
    split = []
    p = msg.uidl_insert_at
    for a, b in ranges:
        if a < p < b:
            split += [(a, p), (p, b)]
        elif a < b:
            split.append((a, b))
    return split


def _top_stop(f: BinaryIO, msg: Message, body_lines: int) -> int:
    """File offset just past the headers, the blank line and `body_lines` body lines."""
    if body_lines <= 0 or msg.body_start >= msg.body_end:
        return msg.body_start
    read = _pread_of(f)
    need = body_lines
    pos = msg.body_start
    while pos < msg.body_end:
        data = read(pos, min(limits.COPY_CHUNK_OCTETS, msg.body_end - pos))
        if not data:
            break
        n = data.count(b"\n")
        if n >= need:
            i = -1
            for _ in range(need):
                i = data.index(b"\n", i + 1)
            return pos + i + 1
        need -= n
        pos += len(data)
    return msg.body_end


def _pread_of(f: BinaryIO) -> Callable[[int, int], bytes]:
    """read(pos, n) without moving `f`: one pread(2) on a real file (no lseek, no buffer copy)."""
    try:
        fd = f.fileno()
    except (AttributeError, OSError, ValueError):   # io.BytesIO and friends
        return lambda pos, n: _read_at(f, pos, n)
    return lambda pos, n: os.pread(fd, n, pos)


def send_message(f: BinaryIO, msg: Message, write: WriteFn, body_lines: int | None = None) -> None:
    """Stream RETR (or TOP with `body_lines`) data for `msg`: CRLF lines, dot-stuffed.

    Not the `+OK` line, not the `.` terminator. The kept bytes (the stripped header lines cut
    out, `X-UIDL: <uid>` spliced in) are read in windows of limits.COPY_CHUNK_OCTETS and
    converted a block of about that size at a time: a message that fits a window is one read and
    one write, a big one a few big writes, and memory stays bounded. The X-UIDL line is spliced
    LF-ended (the conversion makes it msg.uidl_line; a CR in it would cost a CRLF pass over the
    whole block), and every cut or splice sits at a line start, so converting the spliced stream
    equals converting its pieces one by one.
    """
    stop = msg.body_end if body_lines is None else _top_stop(f, msg, body_lines)
    window = limits.COPY_CHUNK_OCTETS
    read = _pread_of(f)
    if (stop - msg.content_start <= window and _CONVERTED.isdisjoint(msg.uid)
            and _send_whole(read, msg, stop, write)):
        return
    wire = WireLines(write)
    pending: list[bytes] = []
    pending_size = 0
    buf, buf_at = b"", 0            # file bytes [buf_at, buf_at + len(buf))
    last_piece = b""                # the last kept bytes read (none yet)

    def splice_uidl() -> None:
        nonlocal pending, pending_size
        if _CONVERTED.isdisjoint(msg.uid):
            pending.append(UIDL_HEADER + msg.uid.encode("ascii") + b"\n")
            pending_size += len(pending[-1])
        else:                       # a uid the conversion would change (a damaged cache)
            wire.feed_pieces(pending, final=True)
            pending, pending_size = [], 0
            wire.raw_line(msg.uidl_line)

    inserted = False
    for a, b in _kept_ranges(msg, stop):
        if not inserted and a >= msg.uidl_insert_at:
            splice_uidl()
            inserted = True
        while a < b:
            if not buf_at <= a < buf_at + len(buf):
                buf, buf_at = read(a, min(window, stop - a)), a
                if not buf:
                    break           # the file shrank under us: send what there is
            piece_end = min(b, buf_at + len(buf), a + max(window - pending_size, 1))
            piece = memoryview(buf)[a - buf_at:piece_end - buf_at]     # converted, not copied
            pending.append(piece)
            pending_size += len(piece)
            last_piece = piece
            a = piece_end
            if pending_size >= window:
                wire.feed_pieces(pending)
                pending, pending_size = [], 0
    pending += _line_closer(last_piece)
    if not inserted:
        splice_uidl()
    wire.feed_pieces(pending, final=True)


def _line_closer(last_piece: bytes | memoryview) -> list[bytes]:
    """What follows the message's last kept bytes: a last line without LF gets its CRLF, one
    ending in a bare CR only the LF (that CR is the CR of its CRLF, as after the write-back,
    which adds the LF: mbox_format.closer_octets counts it); nothing after an LF or when
    nothing was kept."""
    closer = (b"", b"\n", b"\r\n")[closer_octets(last_piece[-1:])]
    return [closer] if closer else []


def _send_whole(read: Callable[[int, int], bytes], msg: Message, stop: int,
                write: WriteFn) -> bool:
    """send_message for what fits one window (most messages): one read, the stripped lines cut
    and X-UIDL spliced in by one join, one conversion, one write. False, with nothing written,
    when the file no longer holds the bytes or X-UIDL goes after the last kept byte: the
    general path then does it (it sends what there is, and closes a last line first)."""
    start = msg.content_start
    data = read(start, stop - start)
    if len(data) != stop - start:
        return False
    view = memoryview(data)
    pieces = []
    inserted = False
    for a, b in _kept_ranges(msg, stop):
        if not inserted and a >= msg.uidl_insert_at:
            pieces.append(UIDL_HEADER + msg.uid.encode("ascii") + b"\n")   # CRLF once converted
            inserted = True
        pieces.append(view[a - start:b - start])
    if not inserted:                        # after the last kept byte: the general path's case
        return False
    pieces += _line_closer(pieces[-1])
    write(wire_join(pieces))
    return True
