"""The mbox format's vocabulary: the Message record, separator lines, UIDs, wire octets and
the framing written between messages (docs/mbox.md, "The mbox model")."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import BinaryIO, Callable

from qpopper import limits
from qpopper.pop3.responses import PopError, RespCode

LF = 0x0A
CR = 0x0D
SPACE = 0x20
MMDF_SEP_CHAR = b"\x01"
FRAMING_LINE = b"\n"
"""The empty line written after every From_ message: framing, not content (docs/mbox.md)."""

FORMAT_ERROR_TEXT = ("Unable to process From lines (envelopes), change recognition modes or "
                     "check for corrupted mail drop.")

CONTENT_LENGTH_FUZZ = 25
"""Octets a Content-Length may be off by and still be honoured (Qpopper's slack)."""

UID_MIN_CHARS = 13
UID_MAX_CHARS = 32
"""An existing X-UIDL value is kept when it has this many printable characters, as Qpopper
keeps it (docs/mbox.md, "X-UIDL and Status")."""

UIDL_HEADER = b"X-UIDL: "
_UID_ALPHABET = bytes(0x21 + d if 0x21 + d != ord(".") else ord("~") for d in range(80))
_UID_DIGITS = [chr(c) for c in _UID_ALPHABET]
_UID_PAIRS = [low + high for high in _UID_DIGITS for low in _UID_DIGITS]
"""_UID_PAIRS[v % 6400]: the two base-80 digits of v % 6400, least significant first."""
_NUL_TO_SPACE = bytes.maketrans(b"\0", b" ")
WriteFn = Callable[[bytes], object]


class MboxFormatError(PopError):
    """The spool does not start with a `From ` envelope line or an MMDF separator."""

    def __init__(self, offset: int = 0):
        super().__init__(FORMAT_ERROR_TEXT, RespCode.SYS_PERM,
                         log=f"mbox: no From line or MMDF separator at offset {offset}")
        self.offset = offset


@dataclass(eq=False, slots=True)
class Message:
    """One message of a scanned spool; every position is an absolute file offset."""

    number: int                 # 1-based among all messages of the file (hidden ones included)
    offset: int                 # start of the separator line (`From ` or MMDF)
    end: int                    # just past the message, its MMDF trailer and any junk after it
    octets: int                 # exactly what RETR sends, before dot-stuffing, no terminator
    uid: str
    uid_from_header: bool       # uid came from an X-UIDL header already in the spool
    retrieved: bool             # a Status: header had R when the spool was scanned
    hidden: bool                # uw-kludge: the IMAP folder pseudo-message (never listed)
    content_start: int          # just past the separator line
    header_end: int             # start of the blank line that ends the headers (or body_end)
    body_start: int             # just past that blank line (== header_end when there is none)
    body_end: int               # where the content RETR sends stops
    trailer_end: int            # just past the MMDF trailer (== body_end without one)
    uidl_insert_at: int         # where RETR inserts `X-UIDL: <uid>`
    stripped: tuple[tuple[int, int], ...] = ()      # header lines RETR leaves out
    uidl_lines: tuple[tuple[int, int], ...] = ()    # X-UIDL header lines (dropped at update)
    status_lines: tuple[tuple[int, int], ...] = ()  # Status header lines
    stale_content_length: tuple[tuple[int, int], ...] = ()
    """Content-Length lines the scan did not honour: the write-back drops them, since what
    moves in the new file (deleted neighbours, framing lines, added header lines) could make
    them come true and swallow the next message (docs/mbox.md, "Content-Length")."""
    mmdf: bool = False

    @property
    def uidl_line(self) -> bytes:
        """The header line RETR inserts (and LIST counts)."""
        return UIDL_HEADER + self.uid.encode("ascii") + b"\r\n"


# --- From_ line recognition ---------------------------------------------------------------------

_PLAIN_FROM_LINE = re.compile(
    rb"From [^\r\n]*[^ \r\n] [^ \r\n]{3} [^ \r\n]{3} [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2} "
    rb"[0-9]{4}\r?\n?")
"""The envelope line almost every delivery agent writes (`From user Wed Dec  2 05:53:22 1992`):
every position _from_line_by_position checks holds for it, so a match needs no more checks."""


def is_from_line(line: bytes) -> bool:
    """True when `line` is a `From ` envelope line with a ctime-like date (c-client's VALID).

    Accepts `From user Wed Dec  2 05:53[:22] [TZ|+0700] 1992 [TZ|+0700]` and all of these with
    ` remote from host` appended. A line of limits.MAX_SPOOL_LINE_OCTETS or more is never one:
    Qpopper only sees its first 1023 octets.
    """
    if not line.startswith(b"From ") or len(line) >= limits.MAX_SPOOL_LINE_OCTETS:
        return False
    return _PLAIN_FROM_LINE.fullmatch(line) is not None or _from_line_by_position(line)


def _from_line_by_position(line: bytes) -> bool:
    """c-client's VALID: spaces and colons at fixed distances from the end of the line."""
    n = len(line)
    if line.endswith(b"\n"):
        n -= 1
    if n and line[n - 1] == CR:
        n -= 1
    x = n

    def at(i: int) -> int:
        j = x + i
        return line[j] if 0 <= j < n else -1

    if x >= 41:
        zn = -1
        while at(zn) != SPACE:
            zn -= 1
        if line[x + zn - 12:x + zn] == b" remote from":
            x += zn - 12
    if x < 27:
        return False
    ti = 0
    if at(-5) == SPACE:
        if at(-8) == ord(":"):
            ti = -5
        elif at(-9) == SPACE:
            ti = -9
        elif at(-11) == SPACE and at(-10) in (ord("+"), ord("-")):
            ti = -11
    elif at(-4) == SPACE:
        if at(-9) == SPACE:
            ti = -9
    elif at(-6) == SPACE:
        if at(-11) == SPACE and at(-5) in (ord("+"), ord("-")):
            ti = -11
    if not ti or at(ti - 3) != ord(":"):
        return False
    ti -= 9 if at(ti - 6) == ord(":") else 6
    return at(ti) == SPACE and at(ti - 3) == SPACE and at(ti - 7) == SPACE and at(ti - 11) == SPACE


# --- UIDs ----------------------------------------------------------------------------------------

def uid_text_python(digest: bytes) -> str:
    """Qpopper's 20 base-80 characters for an MD5 digest.

    The definition: the compiled _scan.uid_text must give the same text for every digest
    (docs/accelerators.md, "UID text")."""
    pairs, single = _UID_PAIRS, _UID_DIGITS
    parts = []
    for b0, b1, b2, b3 in (digest[0:4], digest[4:8], digest[8:12], digest[12:16]):
        v = (((b0 << 4) + b1 << 4) + b2 << 4) + b3   # Qpopper shifts by 4, not 8: lossy
        # Five base-80 digits, least significant first, two at a time from a table.
        parts += (pairs[v % 6400], pairs[v // 6400 % 6400], single[v // 40960000 % 80])
    return "".join(parts)


# Every message of a cold scan gets one (and every Maildir file name): the compiled text when
# it was built, else the definition above (docs/accelerators.md, "Fallback").
try:
    from qpopper.spool._scan import uid_text as uid_text_c
except ImportError:
    uid_text_c = None
uid_text = uid_text_c or uid_text_python


def encode_uid(digest: bytes, old_style: bool = False) -> str:
    """Qpopper's UID text for an MD5 digest: 20 base-80 chars, or 32 hex chars (old-style-uid)."""
    return digest.hex() if old_style else uid_text(digest)


def header_uid(line: bytes) -> str | None:
    """The value of an `X-UIDL:` line when Qpopper would keep it, else None."""
    value = line[7:].strip(b" \t\r\n")
    if UID_MIN_CHARS <= len(value) <= UID_MAX_CHARS and all(0x21 <= c <= 0x7E for c in value):
        return value.decode("ascii")
    return None


def content_length_value(line: bytes) -> int | None:
    """The octets a `Content-Length:` header line says, read from its first
    limits.MAX_SPOOL_LINE_OCTETS as Qpopper reads it; None when that holds no number."""
    digits = line[15:limits.MAX_SPOOL_LINE_OCTETS].strip(b" \t\r\n")
    return int(digits) if digits.isdigit() else None


def _read_at(f: BinaryIO, pos: int, n: int) -> bytes:
    f.seek(pos)
    return f.read(n)


def _file_end(f: BinaryIO) -> int:
    return f.seek(0, 2)


def _octets(data: bytes, after_cr: bool = False) -> int:
    """Length of `data` on the wire: every LF becomes CRLF unless it already follows a CR."""
    return _octets_of_range(data, 0, len(data), after_cr)


def _octets_of_range(buf: bytes, start: int, stop: int, after_cr: bool = False) -> int:
    """_octets(buf[start:stop]) without copying the slice."""
    n = stop - start + buf.count(b"\n", start, stop)
    if buf.find(b"\r", start, stop) != -1:     # rare: skip the second pass over LF data
        n -= buf.count(b"\r\n", start, stop)
    if after_cr and start < stop and buf[start] == LF:
        n -= 1
    return n


def closer_octets(last: bytes) -> int:
    """What RETR adds after a message's last kept bytes, given (at least) the last of them:
    nothing after an LF, a CRLF after a last line without one, only the LF after a bare CR,
    which becomes the CR of that CRLF: the write-back adds an LF there, and the same bytes are
    served after it (docs/mbox.md, "The framing line")."""
    if not last or last[-1] == LF:
        return 0
    return 1 if last[-1] == CR else 2


def separator_padding(tail: bytes, mmdf_sep: bytes | None = None,
                      open_message: bool = False) -> bytes:
    """What must follow `tail` (the end of an mbox) before another message can start there: a
    From_ message ends with its framing line (an LF first if its last line lacks one), an MMDF
    message with its trailer (docs/mbox.md, "What write-back writes"). A From_ file ending with
    an empty line already has its framing line. In a From_ file the octets of an MMDF trailer
    are content: new mail after them would join the message. In an MMDF file (`mmdf_sep`: its
    separator line) the tail cannot tell a message still open from junk after a trailer, so
    the caller says which (`open_message`: the last message lacks its trailer): an open one
    gets its trailer; otherwise a tail ending with a trailer, or with an empty line, is
    closed, and anything else (junk) is padded to the start of a line. A trailer cut by the
    end is the caller's to end (closing_octets, padding_after): here a separator line cut by
    the end is junk after a trailer, and stays junk (its LF would make it open a message)."""
    if not tail:
        return b""
    state = "open" if mmdf_sep is not None and open_message else _tail_state(tail, mmdf_sep)
    return end_octets(state, tail, mmdf_sep)


END_STATES = ("open", "cut trailer", "closed", "junk line", "cut junk", "junk")
"""How an mbox ends (docs/mbox.md, "What write-back writes"): an MMDF message still open (its
trailer missing), its trailer cut by the end (it closes), closed (an MMDF trailer, or an
empty line), a line of junk after a trailer (or a From_ message's last line) with its LF,
a separator line cut by the end after a trailer (junk), other octets without a final LF."""
_PADDING = {"cut trailer": b"\n" + FRAMING_LINE, "closed": b"", "junk line": FRAMING_LINE,
            "cut junk": b" \n" + FRAMING_LINE, "junk": b"\n" + FRAMING_LINE}


def end_octets(state: str, tail: bytes, sep: bytes | None, *, closing: bool = False) -> bytes:
    """The one mapping from an end's state (END_STATES; `tail`: the file's last octets, `sep`:
    an MMDF file's separator line) to what is written after it: before another message, or
    with `closing` only what closes it, as a delivery agent's next message needs and a scan
    reads the same messages: a line of junk stays as it is, a cut trailer gets its LF. An
    open message gets its trailer; a cut separator line an octet and LF that keep it junk
    (its LF alone would make it open a message); junk is padded to the start of a line."""
    if state == "open":
        trailer = separator_line(sep)
        return trailer if tail.endswith(b"\n") else b"\n" + trailer
    if closing and state == "cut trailer":
        return b"\n"
    if closing and state == "junk line":
        return b""
    return _PADDING[state]


def _tail_state(tail: bytes, sep: bytes | None) -> str:
    """The state of an end whose last message the caller knows closed (or of a From_ file:
    `sep` None), from its last octets alone."""
    if tail.endswith((b"\n\n", b"\n\r\n")):
        return "closed"
    if sep is not None and tail.endswith((b"\x01\x01\x01\x01\n", b"\n" + sep)):
        return "closed"
    if sep is not None and _ends_with_cut_separator(tail, sep):
        return "cut junk"
    return "junk line" if tail.endswith(b"\n") else "junk"


def _tail(fd: int, size: int, sep: bytes | None) -> bytes:
    n = min(size, max(8, len(sep) + 1 if sep else 0))
    return os.pread(fd, n, size - n)


def mmdf_end(fd: int, size: int, sep: bytes, messages: list[Message] | None = None,
             start: int = 0) -> str:
    """The one rule for the state (END_STATES) of the end of the MMDF file [0, size) of fd
    (`sep`: its separator line), from the scan's `messages`, or without a scan (None) by
    counting separator lines from `start` (_mmdf_ending)."""
    if messages is None:
        state = _mmdf_ending(fd, size, sep, start)
    elif ends_open(messages):
        state = "open"
    elif messages[-1].trailer_end == size and os.pread(fd, 1, size - 1) != b"\n":
        state = "cut trailer"
    else:
        state = "closed"
    return state if state != "closed" else _tail_state(_tail(fd, size, sep), sep)


def separator_line(sep: bytes) -> bytes:
    """The MMDF separator line `sep` (as mmdf_separator gives it) ending with its LF."""
    return sep if sep.endswith(b"\n") else sep + b"\n"


def _ends_with_cut_separator(tail: bytes, sep: bytes) -> bool:
    """Does `tail` end with a line that is the separator line but for its LF?"""
    cut = b"\n" + separator_line(sep)[:-1]
    return (b"\n" + tail).endswith(cut)


def mmdf_separator(first: bytes) -> bytes | None:
    """The separator line of an MMDF file whose first octets are `first` (the scan's: its first
    line, up to limits.MAX_SPOOL_LINE_OCTETS octets), or None for a From_ file."""
    if not first.startswith(MMDF_SEP_CHAR):
        return None
    first = first[:limits.MAX_SPOOL_LINE_OCTETS]
    eol = first.find(b"\n")
    line = first if eol == -1 else first[:eol + 1]
    return line if len(line) < limits.MAX_SPOOL_LINE_OCTETS else None    # as the scan's


def ends_open(messages: list[Message]) -> bool:
    """Is the last of these scanned messages an MMDF message whose trailer is missing (the
    region ended first)? A closed one has its trailer between body_end and trailer_end."""
    return bool(messages) and messages[-1].mmdf and (
        messages[-1].trailer_end == messages[-1].body_end)


def mmdf_ends_open(fd: int, size: int, sep: bytes) -> bool:
    """ends_open for the MMDF file's first `size` octets without a scan, for appends that have
    none (bulletins, a crashed session's drop): the scan's separator lines alternate, opening
    and closing, from the first line, and one cut by the end of the file closes an open
    message (after a closed one it is junk). A pass over the file in chunks (docs/mbox.md,
    "What write-back writes")."""
    return _mmdf_ending(fd, size, sep) == "open"


def _mmdf_ending(fd: int, size: int, sep: bytes, start: int = 0) -> str:
    """"open", "cut trailer" (the closing line cut by the end: it closes) or "closed", for
    [0, size); with `start`, for [start, size) after a closed part ending with an LF at
    start - 1 (the first line, at 0, opens)."""
    line = separator_line(sep)
    closer = re.compile(re.escape(b"\n" + line[:-1]) + b"(?=\n)")
    first = 0
    if start:
        pos, lines = start - 1, 1               # the LF before start; closed there
    else:
        first = padding_of(fd, size)     # where the first line opens
        pos, lines = first + (len(sep) - 1 if sep.endswith(b"\n") else len(sep)), 0   # its LF
    while pos < size:
        # each chunk reads on far enough to see a whole match starting in its first part
        step = min(limits.COPY_CHUNK_OCTETS, size - pos)
        data = os.pread(fd, min(step + len(line), size - pos), pos)
        if not data:
            break
        lines += sum(1 for m in closer.finditer(data) if m.start() < step)
        pos += step
    if lines % 2:
        return "closed"
    if (size - len(line) >= max(start - 1, first + 1)
            and os.pread(fd, len(line), size - len(line)) == b"\n" + line[:-1]):
        return "cut trailer"
    return "open"


def closing_counted(fd: int, size: int, start: int = 0) -> bytes:
    """closing_octets without a scan: what the MMDF file [0, size) of fd needs at its end,
    its separator lines counted from `start` (0, or where a closed part ends with an LF at
    start - 1: mail a write-back copied after the messages it wrote closed). Nothing for a
    From_ file (docs/mbox.md, "What write-back writes")."""
    sep = _file_separator(fd, size)
    if sep is None or size == start:
        return b""
    return end_octets(mmdf_end(fd, size, sep, start=start), _tail(fd, size, sep), sep,
                      closing=True)


def _file_separator(fd: int, size: int) -> bytes | None:
    """The separator line of the MMDF file [0, size) of fd, None for a From_ (or empty) one;
    read after the empty lines it may start with (leading_padding)."""
    if not size:
        return None
    return mmdf_separator(file_head(fd, size))


_EMPTY_LINES = re.compile(rb"(?:\r?\n)*")


def _empty_lines_at(read: Callable[[int, int], bytes], size: int) -> int | None:
    """How many octets of empty lines (LF or CRLF alone) [0, size) starts with, read(offset,
    n) giving its octets a part at a time, however many parts they take; None when the file
    was cut under us."""
    pos = 0
    chunk = limits.MAX_SPOOL_LINE_OCTETS        # the common case: one small read, no padding
    while pos < size:
        data = read(pos, min(chunk, size - pos))
        if not data:
            return None
        n = _EMPTY_LINES.match(data).end()
        if n == 0:
            return pos          # the first octet that starts no empty line (a lone CR cut short)
        chunk = limits.COPY_CHUNK_OCTETS
        pos += n
        if n < len(data) - (data.endswith(b"\r") and pos + 1 < size):
            break                               # (a CR at the chunk's end: read on from it)
    return pos


def leading_padding(read: Callable[[int, int], bytes], size: int) -> int:
    """How many octets of empty lines (LF or CRLF) the file [0, size) starts with before its
    first separator line, read(offset, n) giving its octets: padding a delivery agent wrote
    before its first message, part of no message
    (docs/mbox.md, "Padding before the first message"). The whole file when it holds nothing
    else; 0 when it starts with a separator, and when the first line that is not empty is no
    separator (From_ with its date, or an MMDF separator line, as the scan reads a first
    line): that spool is refused as before."""
    pos = _empty_lines_at(read, size)
    if not pos:
        return 0                                # none, or cut under us: nothing to leave out
    if pos >= size:
        return size
    line = read(pos, min(limits.MAX_SPOOL_LINE_OCTETS, size - pos))
    eol = line.find(b"\n")
    line = line if eol == -1 else line[:eol + 1]
    return pos if is_from_line(line) or mmdf_separator(line) is not None else 0


def padding_of(fd: int, size: int) -> int:
    """leading_padding of the mbox [0, size) of fd."""
    return leading_padding(lambda pos, n: os.pread(fd, n, pos), size)


def file_head(fd: int, size: int) -> bytes:
    """The first line of the mbox [0, size) of fd that is not padding (leading_padding), with
    what follows it, up to limits.MAX_SPOOL_LINE_OCTETS octets: what tells its format."""
    pad = padding_of(fd, size)
    return os.pread(fd, min(size - pad, limits.MAX_SPOOL_LINE_OCTETS), pad)


def padding_after(fd: int, size: int, *, open_message: bool | None) -> bytes:
    """separator_padding for the first `size` octets of fd (an mbox file): what must be
    written at `size` before another message can start there. `open_message`: what the
    scan of those octets said of its last message (ends_open), a trailer cut by the end
    already ended (closing_octets); None when there was no scan, and an MMDF file is then
    counted (mmdf_ends_open)."""
    if not size:
        return b""
    sep = _file_separator(fd, size)
    tail = _tail(fd, size, sep)
    if sep is not None and open_message is None:
        return end_octets(mmdf_end(fd, size, sep), tail, sep)
    return separator_padding(tail, sep, bool(open_message))


def empty_lines_before_from(fd: int, start: int, end: int) -> int:
    """How many octets of empty lines (LF or CRLF) start [start, end) of fd right before a
    `From ` line: padding a delivery agent wrote to close the message before it, which a
    write-back that wrote that message closed leaves out
    (docs/maildrop.md, "Server mode: the update").
    0 when anything else follows them: content is never left out. An empty line is the
    scan's (and leading_padding's): LF or CRLF alone; CR CR LF is a line of content, and a
    `From ` line after it is no separator (docs/mbox.md, "Separators")."""
    skip = _empty_lines_at(lambda offset, n: os.pread(fd, n, start + offset), end - start)
    if not skip:
        return 0
    line = os.pread(fd, min(limits.MAX_SPOOL_LINE_OCTETS, end - start - skip), start + skip)
    if not is_from_line(line[:line.find(b"\n") + 1] or line):
        return 0
    return skip


def closing_octets(fd: int, size: int, messages: list[Message]) -> bytes:
    """What the scanned MMDF file [0, size) of fd needs at its end, so that mail written after
    it, by us or by a delivery agent, starts a message of its own: the trailer of a last
    message left open, the LF of a trailer cut by the end, the end of a last line of junk
    (docs/mbox.md, "What write-back writes"). Nothing for a From_ file."""
    sep = _file_separator(fd, size)
    if not messages or not messages[-1].mmdf or sep is None:
        return b""
    return end_octets(mmdf_end(fd, size, sep, messages), _tail(fd, size, sep), sep,
                      closing=True)
