"""Write-back: a scanned message in mbox form for the update at QUIT, and where it lands in
the new file (docs/mbox.md, "What write-back writes")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

from qpopper import limits
from qpopper.spool.mbox_format import (FRAMING_LINE, UIDL_HEADER, Message, WriteFn,
                                       closer_octets, content_length_value, header_uid, _octets,
                                       _read_at)

class _Coalescer:
    """Collects small pieces and hands `write` buffers of about limits.COPY_CHUNK_OCTETS."""

    def __init__(self, write: WriteFn):
        self.write = write
        self.parts: list[bytes] = []
        self.size = 0
        self.total = 0              # every octet added so far
        self.tail = b""             # the last few bytes added

    def add(self, data: bytes) -> None:
        if not data:
            return
        self.tail = (self.tail + data[-3:])[-3:]
        self.parts.append(data)
        self.size += len(data)
        self.total += len(data)
        if self.size >= limits.COPY_CHUNK_OCTETS:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            data = b"".join(self.parts)
            self.parts = []
            self.size = 0
            self.write(data)


def _chunks(f: BinaryIO, start: int, end: int):
    pos = start
    while pos < end:
        data = _read_at(f, pos, min(limits.COPY_CHUNK_OCTETS, end - pos))
        if not data:
            return
        pos += len(data)
        yield data


def _copy(f: BinaryIO, start: int, end: int, out: _Coalescer) -> None:
    for data in _chunks(f, start, end):
        out.add(data)


def copy_for_update(f: BinaryIO, msg: Message, write: WriteFn, *, retrieved: bool,
                    update_status_headers: bool, at: int | None = None,
                    number: int | None = None) -> Message | None:
    """Write `msg` back in mbox form for the update at QUIT
    (docs/mbox.md, "What write-back writes").

    With update_status_headers: the separator line, `X-UIDL: <uid>` right after it, the
    headers without other X-UIDL lines, `Status: RO` replacing existing Status lines when
    retrieved, or a new `Status: RO`/`Status: U` at the end of headers when there was none, then
    the body as stored (LF line ends). Without it, and for a hidden message, the bytes unchanged
    but for a Content-Length not honoured (_copy_without_stale_length).
    Either way the message is closed so what follows stays a separate message: a From_ message
    ends with one framing line (docs/mbox.md, "The framing line"; an LF first when its last
    line lacks one), an MMDF message with its trailer.

    With `at` (where the copy starts in the new file) and `number` (its number there): returns
    the Message a scan of the new file finds for the copy, when that is certain from what was
    written (see _relocated); None when only a scan can tell.
    """
    out = _Coalescer(write)
    relocated = None
    if update_status_headers and not msg.hidden:
        out.add(_read_at(f, msg.offset, msg.content_start - msg.offset))
        if not out.tail.endswith(b"\n"):
            out.add(b"\n")             # a separator line cut by the end of the file
            at = None                  # (a scan may read the new file differently)
        out.add(UIDL_HEADER + msg.uid.encode("ascii") + b"\n")
        cur = msg.content_start
        status = b"Status: RO\n" if retrieved else b"Status: U\n"
        edits = [(a, b, b"") for a, b in (*msg.uidl_lines, *msg.stale_content_length)]
        if retrieved:
            edits += [(a, b, status) for a, b in msg.status_lines]
        cur = _copy_edited(f, cur, sorted(edits), out)
        # Headers running to the end of the file whose last line is a lone CR: RETR sends it as
        # the empty line that ends them, so the new Status line goes before it, not after.
        lone_cr = (not msg.status_lines and msg.header_end == msg.body_end > cur
                   and _read_at(f, msg.header_end - 2, 2) == b"\n\r")
        _copy(f, cur, msg.header_end - lone_cr, out)
        if not msg.status_lines:
            if not out.tail.endswith(b"\n"):
                out.add(b"\n")         # headers ran to the end of the file without a final LF
            out.add(status)
        if lone_cr:
            out.add(b"\r")
            at = None                  # (the scan reads the new file's headers anew)
        _copy(f, max(cur, msg.header_end), msg.body_end, out)
        if at is not None and _relocatable(msg):
            relocated = _RelocatedBody(out.total, out.tail)
    elif says_a_stale_length(f, msg):
        _copy_without_stale_length(f, msg, out)
    else:
        _copy(f, msg.offset, msg.body_end, out)
    if msg.mmdf:
        if not out.tail.endswith(b"\n"):
            out.add(b"\n")
        if msg.trailer_end > msg.body_end:
            _copy(f, msg.body_end, msg.trailer_end, out)
            if not out.tail.endswith(b"\n"):
                out.add(b"\n")             # a trailer cut by the end of the file gets its LF
            _copy(f, msg.trailer_end, msg.end, out)     # junk after it: as it was
        else:
            out.add(_read_at(f, msg.offset, msg.content_start - msg.offset))
            if not out.tail.endswith(b"\n"):
                out.add(b"\n")             # a separator cut by the end of the file
    else:
        out.add(FRAMING_LINE if out.tail.endswith(b"\n") else b"\n" + FRAMING_LINE)
    out.flush()
    if relocated is None:
        return None
    return _relocated(f, msg, at, number, retrieved, out.total, relocated)


def stale_lengths(f: BinaryIO, msg: Message) -> list[int]:
    """The numbers in this From_ message's Content-Length lines that its scan did not honour.
    (An MMDF message's are never weighed; a line without a number can never come true.)"""
    if msg.mmdf:
        return []
    values = (content_length_value(_read_at(f, a, min(b - a, limits.MAX_SPOOL_LINE_OCTETS)))
              for a, b in msg.stale_content_length)
    return [value for value in values if value is not None]


def says_a_stale_length(f: BinaryIO, msg: Message) -> bool:
    """Has this From_ message a Content-Length with a number that its scan did not honour?"""
    return bool(msg.stale_content_length) and bool(stale_lengths(f, msg))


def stale_length_edits(f: BinaryIO, msg: Message) -> list[tuple[int, int, bytes]]:
    """What _copy_without_stale_length changes in a message that says_a_stale_length, as
    (start, end, replacement) in file order: `X-UIDL: <uid>` after the separator line when
    the UID did not come from such a line, and each stale Content-Length line gone."""
    edits = []
    if (not msg.uid_from_header and msg.content_start > msg.offset
            and _read_at(f, msg.content_start - 1, 1) == b"\n"):
        edits.append((msg.content_start, msg.content_start,
                      UIDL_HEADER + msg.uid.encode("ascii") + b"\n"))
    return edits + [(a, b, b"") for a, b in sorted(msg.stale_content_length)]


def _copy_without_stale_length(f: BinaryIO, msg: Message, out: _Coalescer) -> None:
    """The unchanged copy of a From_ message, less the Content-Length lines its scan did not
    honour: moved by the write-back (deleted neighbours, framing lines, added headers) a stale
    value could come true and swallow the messages after it. Those lines feed the UID hash,
    so a message whose UID did not come from an X-UIDL line gets `X-UIDL: <uid>` after its
    separator, to scan with the same UID; RETR and LIST leave both kinds of line out, so the
    client sees the same message (docs/mbox.md, "What write-back writes")."""
    cur = _copy_edited(f, msg.offset, stale_length_edits(f, msg), out)
    _copy(f, cur, msg.body_end, out)


def _copy_edited(f: BinaryIO, cur: int, edits, out: _Coalescer) -> int:
    """Copy from `cur` through the (start, end, replacement) `edits`, in file order, each
    [start, end) written as its replacement; returns where the copy stopped (the last end)."""
    for a, b, replacement in edits:
        _copy(f, cur, a, out)
        out.add(replacement)
        cur = b
    return cur


# --- where a written-back message lands ----------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _RelocatedBody:
    """What copy_for_update had written when the body was out: octets, and their last bytes."""

    written: int
    tail: bytes


def _relocatable(msg: Message) -> bool:
    """Messages whose scan in the written-back file follows from arithmetic alone: a From_
    message whose separator line ends with LF, whose headers end with a blank line, and with
    no Content-Length (whether one is honoured depends on where the message's neighbours
    are). The write-back keeps their separator, lines and blank line and only adds LFs after
    the body, so the new scan cuts them where the old one did."""
    return (not msg.mmdf and not msg.hidden and msg.stripped == msg.uidl_lines
            and msg.header_end < msg.body_start <= msg.body_end
            and msg.content_start > msg.offset
            and header_uid(msg.uidl_line[:-2]) == msg.uid)    # read back as this UID


def _relocated(f: BinaryIO, msg: Message, at: int, number: int, retrieved: bool,
               written: int, body: _RelocatedBody) -> Message | None:
    """The Message a scan finds for the copy of `msg` that copy_for_update wrote at `at`.

    The copy is: separator line, `X-UIDL: <uid>`, the header lines (old X-UIDL lines gone,
    Status lines replaced by `Status: RO` when retrieved), `Status: RO`/`Status: U` before
    the blank line when there was no Status, the blank line, the body, then the framing line
    (after an LF ending a last line that had none).
    Every edit is a whole line, so an old offset outside the edits moves by the growth of the
    edits before it.
    """
    uidl_len = len(UIDL_HEADER) + len(msg.uid) + 1
    content_start = at + (msg.content_start - msg.offset)
    moved = content_start + uidl_len - msg.content_start
    replacement = b"Status: RO\n"
    edits = [(a, b, b"") for a, b in msg.uidl_lines]
    if retrieved:
        edits += [(a, b, replacement) for a, b in msg.status_lines]
    edits.sort()
    octets = msg.octets

    def new_offset(old: int) -> int:
        return old + moved + sum(len(text) - (b - a) for a, b, text in edits if b <= old)

    status_lines = []
    for a, b in msg.status_lines:
        start = new_offset(a)
        if retrieved:
            octets += _octets(replacement) - _octets(_read_at(f, a, b - a))
            status_lines.append((start, start + len(replacement)))
        else:
            status_lines.append((start, start + b - a))
    header_end = new_offset(msg.header_end)
    if not msg.status_lines:
        added = b"Status: RO\n" if retrieved else b"Status: U\n"
        status_lines.append((header_end, header_end + len(added)))
        octets += _octets(added)
        header_end += len(added)
    body_start = header_end + (msg.body_start - msg.header_end)
    closing_len = written - body.written
    body_end = body_start + (msg.body_end - msg.body_start)
    if closing_len == 2:            # a last line without LF got one, then the framing line
        # RETR added CRLF (only LF after a bare CR): the LF written in its place counts now
        octets += _octets(b"\n", after_cr=body.tail.endswith(b"\r")) - closer_octets(body.tail)
        body_end += 1
    end = body_end + len(FRAMING_LINE)
    if end - at != written or closing_len not in (1, 2):
        return None                 # not the shape described above: let a scan decide
    uidl_line = ((content_start, content_start + uidl_len),)
    return Message(
        number=number, offset=at, end=end, octets=octets, uid=msg.uid, uid_from_header=True,
        retrieved=retrieved or msg.retrieved, hidden=False,
        content_start=content_start, header_end=header_end, body_start=body_start,
        body_end=body_end, trailer_end=body_end, uidl_insert_at=status_lines[0][0],
        stripped=uidl_line, uidl_lines=uidl_line, status_lines=tuple(status_lines), mmdf=False)
