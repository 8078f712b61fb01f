"""Qpopper-compatible UNIX mbox: scan a spool, stream RETR/TOP, write messages back at update.

The model and its Qpopper rules (separators, the framing line, MMDF, Content-Length, X-UIDL,
the write-back) are in docs/mbox.md, "The mbox model".

The file is never read whole: `scan` makes one pass in chunks of limits.COPY_CHUNK_OCTETS and
keeps only per-message offsets, so memory follows the number of messages, not the spool size.
Bodies are searched and counted with bytes methods (find/count); a header block is cut from
the buffer in one slice and only the lines that matter are looked at.

One model serves LIST, RETR and the write-back, so their numbers cannot drift apart:
- a message is `offset` (separator line) .. `content_start` .. `header_end` (blank line) ..
  `body_start` .. `body_end` (where RETR stops: the framing line before the next From_
  separator or the end of the file, or the MMDF trailer) .. `trailer_end` .. `end` (next
  message's separator, or the end of the scanned region);
- RETR sends [content_start, body_end) minus the `stripped` header lines (Content-Length,
  X-UIDL), with `X-UIDL: <uid>` inserted at `uidl_insert_at` (the first Status: line, else the
  end of the headers), LF turned into CRLF (a CRLF already in the spool stays one CRLF), NUL sent
  as a space, CRLF added after a last line that lacks one, then dot-stuffed;
- `octets` is the length of exactly that output before dot-stuffing.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterable

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
_DOT_AFTER_LF = re.compile(rb"\n\.")
_CONVERTED = frozenset("\0\r\n")
"""Characters the wire conversion changes (a dot only after LF)."""
_HASHED_HEADERS = (b"received:", b"date:", b"message-id:", b"subject:")
_HASHED_NAMES = frozenset(_HASHED_HEADERS)
_CONTINUATION_BYTES = frozenset(b" \t")
_NOTED_NAMES = frozenset((b"content-length:", b"x-uidl:", b"status:", b"x-imap:", b"from:",
                          *_HASHED_HEADERS))
"""Lowercased names of every header line _classify does something with."""
_UW_SUBJECT_MARKS = (b"DO NOT DELETE", b"DON'T DELETE THIS MESSAGE", b"FOLDER INTERNAL DATA")

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


_FROM_SEPARATOR = re.compile(rb"\nFrom ")


def _find_from_separator(buf: bytes, start: int) -> int:
    """buf.find(b"\\nFrom ", start), faster: re's literal search beats bytes.find on a
    pattern that starts with the most common byte of a mail (LF)."""
    if start < 0:
        start = max(0, start + len(buf))          # as bytes.find reads a negative start
    match = _FROM_SEPARATOR.search(buf, start)
    return match.start() if match else -1


def _pattern_finder(pattern: bytes) -> Callable[[bytes, int], int]:
    return lambda buf, start: buf.find(pattern, start)


def _is_empty_line_before(buf: bytes, k: int) -> bool:
    """buf[k] is LF: is the line it ends empty (just LF or CRLF)?"""
    return (k >= 1 and buf[k - 1] == LF) or (k >= 2 and buf[k - 1] == CR and buf[k - 2] == LF)


def _is_empty(line: bytes) -> bool:
    return line == b"\n" or line == b"\r\n"


# --- UIDs ----------------------------------------------------------------------------------------

def encode_uid(digest: bytes, old_style: bool = False) -> str:
    """Qpopper's UID text for an MD5 digest: 20 base-80 chars, or 32 hex chars (old-style-uid)."""
    if old_style:
        return digest.hex()
    pairs, single = _UID_PAIRS, _UID_DIGITS
    parts = []
    for b0, b1, b2, b3 in (digest[0:4], digest[4:8], digest[8:12], digest[12:16]):
        v = (((b0 << 4) + b1 << 4) + b2 << 4) + b3   # Qpopper shifts by 4, not 8: lossy
        # Five base-80 digits, least significant first, two at a time from a table.
        parts += (pairs[v % 6400], pairs[v // 6400 % 6400], single[v // 40960000 % 80])
    return "".join(parts)


def _header_uid(line: bytes) -> str | None:
    """The value of an `X-UIDL:` line when Qpopper would keep it, else None."""
    value = line[7:].strip(b" \t\r\n")
    if UID_MIN_CHARS <= len(value) <= UID_MAX_CHARS and all(0x21 <= c <= 0x7E for c in value):
        return value.decode("ascii")
    return None


# --- reading -------------------------------------------------------------------------------------

class _Window:
    """A bounded window over [pos, region_end) of an open binary file.

    `buf[i]` is the byte at file offset `base + i`; `cur` is the read position inside `buf`.
    A few bytes before `cur` are kept when the window slides, so "is the previous line empty"
    can always be answered from the buffer.
    """

    KEEP_BEHIND = 8

    def __init__(self, f: BinaryIO, start: int, region_end: int):
        self.f = f
        self.base = start
        self.buf = b""
        self.cur = 0
        self.region_end = region_end

    @property
    def pos(self) -> int:
        return self.base + self.cur

    @property
    def at_eof(self) -> bool:
        """The buffer reaches the end of the region."""
        return self.base + len(self.buf) >= self.region_end

    def more(self, want: int = limits.COPY_CHUNK_OCTETS) -> bool:
        """Slide the window forward and read at least `want` more bytes; False at region end."""
        if self.at_eof:
            return False
        drop = max(0, self.cur - self.KEEP_BEHIND)
        if drop:
            self.buf = self.buf[drop:]
            self.base += drop
            self.cur -= drop
        have_to = self.base + len(self.buf)
        n = min(max(want, limits.COPY_CHUNK_OCTETS), self.region_end - have_to)
        self.f.seek(have_to)
        data = self.f.read(n)
        if not data:                      # file shorter than we were told: treat as its end
            self.region_end = have_to
            return False
        self.buf += data
        return True

    def readline(self, limit: int) -> bytes:
        """The next line through its LF, or `limit` octets of it, or what is left of the region."""
        while True:
            j = self.buf.find(b"\n", self.cur, self.cur + limit)
            if j != -1:
                line = self.buf[self.cur:j + 1]
                break
            if len(self.buf) - self.cur >= limit or not self.more(limit):
                line = self.buf[self.cur:self.cur + limit]
                break
        self.cur += len(line)
        return line


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


# --- scanning ------------------------------------------------------------------------------------

@dataclass(slots=True)
class _Draft:
    """A message being scanned."""

    number: int
    offset: int
    content_start: int
    digest: "hashlib._Hash"
    octets: int = 0
    header_end: int = -1
    body_start: int = -1
    body_end: int = -1
    trailer_end: int = -1
    end: int = -1
    uidl_insert_at: int = -1
    content_length: int | None = None
    header_uid: str | None = None
    retrieved: bool = False
    uw_marks: int = 0
    stripped: list = field(default_factory=list)
    uidl_lines: list = field(default_factory=list)
    status_lines: list = field(default_factory=list)
    last_line_unterminated: bool = False  # the last kept line lacks LF: RETR adds CRLF


class _Scanner:
    def __init__(self, f, start, end, *, update_status_headers, old_style_uid, uw_kludge,
                 content_length, unique_num, first_number):
        self.f = f
        self.start = start
        self.w = _Window(f, start, end)
        self.new_style = not old_style_uid
        self.feed_unique_num = (unique_num is not None and update_status_headers
                                and not old_style_uid)
        self.unique_num = unique_num
        self.uw_kludge = uw_kludge
        self.content_length = content_length
        self.number = first_number
        self.first_number = first_number
        self.mmdf_sep: bytes | None = None
        self.messages: list[Message] = []     # octets still without the X-UIDL line
        self.header_uids: list[str | None] = []
        self.digests: list[bytes] = []

    # the whole region
    def run(self) -> list[Message]:
        w = self.w
        first = w.readline(limits.MAX_SPOOL_LINE_OCTETS)
        if not first:
            return []
        if first.startswith(MMDF_SEP_CHAR):
            self.mmdf_sep = first
        elif not is_from_line(first):
            raise MboxFormatError(self.start)
        sep = first
        sep_at = self.start
        while sep is not None:
            sep, sep_at = self._message(sep, sep_at)
        return self.messages

    def _message(self, sep: bytes, sep_at: int):
        """Scan one message whose separator line `sep` starts at `sep_at` (already consumed).

        Returns the next separator line and its offset, or (None, None) at the region end.
        """
        if not sep.endswith(b"\n"):      # hash as the LF the write-back adds: same UID after it
            sep += b"\n"
        digest = hashlib.md5(sep.translate(_NUL_TO_SPACE))
        if self.feed_unique_num:
            digest.update(struct.pack("=q", self.unique_num))
            self.unique_num += 1
        d = _Draft(self.number, sep_at, self.w.pos, digest)
        self.number += 1
        trailer = self._headers(d)
        if trailer is None and d.body_end < 0:     # headers ended with a blank line
            nxt = self._body(d)
        else:
            nxt = trailer
        if self.new_style:
            d.digest.update(sep.translate(_NUL_TO_SPACE))
        result = self._after_body(d, nxt)
        self._keep(d)
        return result

    def _keep(self, d: _Draft) -> None:
        """Store the finished message compactly: only offsets, flags and a 16-byte digest."""
        self.header_uids.append(d.header_uid)
        self.digests.append(d.digest.digest())
        self.messages.append(Message(
            number=d.number, offset=d.offset, end=d.end,
            octets=d.octets + (2 if d.last_line_unterminated else 0),
            uid="", uid_from_header=False, retrieved=d.retrieved,
            hidden=self.uw_kludge and d.uw_marks >= 2,
            content_start=d.content_start, header_end=d.header_end, body_start=d.body_start,
            body_end=d.body_end, trailer_end=d.trailer_end, uidl_insert_at=d.uidl_insert_at,
            stripped=tuple(d.stripped), uidl_lines=tuple(d.uidl_lines),
            status_lines=tuple(d.status_lines), mmdf=self.mmdf_sep is not None))

    HEADER_WINDOW = 16 * 1024
    """Headers are parsed from one slice when they and their blank line fit in this much."""

    def _headers(self, d: _Draft):
        """Header lines up to the blank line. Returns an MMDF separator met inside the headers
        (a message without a blank line) as the trailer, else None."""
        if self._headers_in_buffer(d):
            return None
        return self._headers_by_line(d)

    def _headers_in_buffer(self, d: _Draft) -> bool:
        """Fast path: the whole header block and its blank line are in the buffer (and no MMDF
        separator in it). Same results as _headers_by_line, from one slice."""
        w = self.w
        if len(w.buf) - w.cur < self.HEADER_WINDOW:
            w.more()
        buf, i = w.buf, w.cur
        lf = buf.find(b"\n\n", i - 1, i + self.HEADER_WINDOW)
        crlf = buf.find(b"\n\r\n", i - 1, lf + 1 if lf != -1 else i + self.HEADER_WINDOW)
        if crlf != -1 and (lf == -1 or crlf < lf):
            blank_at, blank_len = crlf + 1, 2
        elif lf != -1:
            blank_at, blank_len = lf + 1, 1
        else:
            return False
        block = buf[i:blank_at]
        sep = self.mmdf_sep
        if sep is not None and (block.startswith(sep) or b"\n" + sep in block):
            return False
        first_message = d.number == 1 and self.first_number == 1
        # What _classify would do with a hashed header or a continuation line, done here
        # (most noted lines are those); uw-kludge's marks need _classify on message 1.
        inline_hashed = not (first_message and self.uw_kludge)
        hash_continuations = self.new_style
        digest = d.digest
        octets = _octets(block) + 2
        hashing = False
        start = 0
        base = w.base + i
        end = len(block)
        while start < end:
            stop = block.find(b"\n", start) + 1
            if block[start] in _CONTINUATION_BYTES:
                if hashing and hash_continuations:
                    digest.update(block[start:stop].translate(_NUL_TO_SPACE))
                start = stop                    # _classify: "cont", hashing unchanged
                continue
            low = block[start:start + 16].lower()
            name = low[:low.find(b":") + 1]     # as in _classify
            if name not in _NOTED_NAMES:
                hashing = False                 # most lines: nothing to note, skip the call
                start = stop
                continue
            if inline_hashed and name in _HASHED_NAMES:
                digest.update(block[start:stop].translate(_NUL_TO_SPACE))
                hashing = True                  # _classify: "hash"
                start = stop
                continue
            line = block[start:stop]
            kind = self._classify(d, line, base + start, hashing, first_message)
            hashing = kind == "hash" or (kind == "cont" and hashing)
            if kind == "uidl" or kind == "clen":
                octets -= _octets(line)
                d.stripped.append((base + start, base + stop))
                if kind == "uidl":
                    d.uidl_lines.append((base + start, base + stop))
            elif kind == "status":
                d.status_lines.append((base + start, base + stop))
            start = stop
        d.octets += octets
        d.header_end = w.base + blank_at
        w.cur = blank_at + blank_len
        d.body_start = w.pos
        return True

    def _headers_by_line(self, d: _Draft):
        """Slow path: line by line, long lines in pieces of limits.MAX_SPOOL_LINE_OCTETS."""
        w = self.w
        hashing = False          # the previous line was a hashed header: hash its continuations
        kind = None              # kind of the line a long-line piece belongs to
        prev_cr = False
        first_message = d.number == 1 and self.first_number == 1
        line_start = w.pos
        while True:
            piece_at = w.pos
            piece = w.readline(limits.MAX_SPOOL_LINE_OCTETS)
            if not piece:                                   # region ends inside the headers
                d.header_end = d.body_start = d.body_end = piece_at
                return None
            continuing = kind is not None
            hashed = piece
            if not piece.endswith(b"\n") and w.pos >= w.region_end:
                hashed = piece + b"\n"     # the write-back ends it with LF: hash it so already
            if not continuing:
                line_start = piece_at
                if _is_empty(piece):
                    d.header_end = piece_at
                    d.body_start = w.pos
                    d.octets += _octets(piece)
                    d.last_line_unterminated = False
                    return None
                if self.mmdf_sep is not None and piece == self.mmdf_sep:
                    d.header_end = d.body_start = d.body_end = piece_at
                    return piece
                kind = self._classify(d, hashed, line_start, hashing, first_message)
                hashing = kind == "hash" or (kind == "cont" and hashing)
            elif kind == "hash" or (kind == "cont" and hashing):
                d.digest.update(hashed.translate(_NUL_TO_SPACE))
            if kind in ("uidl", "clen"):
                if continuing:
                    d.stripped[-1] = (d.stripped[-1][0], w.pos)
                    if kind == "uidl":
                        d.uidl_lines[-1] = (d.uidl_lines[-1][0], w.pos)
                else:
                    d.stripped.append((line_start, w.pos))
                    if kind == "uidl":
                        d.uidl_lines.append((line_start, w.pos))
            else:
                d.octets += _octets(piece, prev_cr and continuing)
                if kind == "status":
                    if continuing:
                        d.status_lines[-1] = (d.status_lines[-1][0], w.pos)
                    else:
                        d.status_lines.append((line_start, w.pos))
                d.last_line_unterminated = not piece.endswith(b"\n")
            prev_cr = piece.endswith(b"\r")
            if piece.endswith(b"\n"):
                kind = None

    def _classify(self, d: _Draft, line: bytes, line_start: int, hashing: bool,
                  first_message: bool) -> str:
        """Kind of a header line from its first MAX_SPOOL_LINE_OCTETS (all Qpopper looks at);
        feeds the UID digest and notes Content-Length, X-UIDL, Status and uw-kludge marks."""
        if self.content_length and line.startswith(b"Content-Length:"):
            d.digest.update(line.translate(_NUL_TO_SPACE))
            digits = line[15:limits.MAX_SPOOL_LINE_OCTETS].strip(b" \t\r\n")
            if digits.isdigit() and d.content_length is None:
                d.content_length = int(digits)
            return "clen"
        low = line[:16].lower()
        # Every name we look for is shorter than 16 octets and has no colon, so "starts with
        # `name:`" is "the part up to the first colon is `name:`": one comparison.
        name = low[:low.find(b":") + 1]
        if name == b"x-uidl:":
            if d.header_uid is None:
                d.header_uid = _header_uid(line[:limits.MAX_SPOOL_LINE_OCTETS])
            return "uidl"
        if first_message and self.uw_kludge:
            if low.startswith(b"subject:") and any(m in line for m in _UW_SUBJECT_MARKS):
                d.uw_marks += 1
            elif low.startswith(b"x-imap:"):
                d.uw_marks += 1
            elif low.startswith(b"from:") and line[5:].lstrip(b" \t").startswith(
                    b"Mail System Internal Data"):
                d.uw_marks += 1
        if name == b"status:":
            if line.find(b"R", 7, limits.MAX_SPOOL_LINE_OCTETS) != -1:
                d.retrieved = True
            if d.uidl_insert_at < 0:
                d.uidl_insert_at = line_start
            return "status"
        if name in _HASHED_NAMES:
            d.digest.update(line.translate(_NUL_TO_SPACE))
            return "hash"
        if line[:1] in (b" ", b"\t"):
            if hashing and self.new_style:
                d.digest.update(line.translate(_NUL_TO_SPACE))
            return "cont"
        return "other"

    def _content_length_trusted(self, d: _Draft) -> bool:
        """Honour Content-Length only when it points (within the fuzz) at a separator or at the
        region end: a forged or stale value must not swallow the messages after it."""
        target = d.body_start + d.content_length
        region_end = self.w.region_end
        if abs(region_end - target) <= CONTENT_LENGTH_FUZZ:
            return True
        if target > region_end:
            return False
        lo = max(d.body_start, target - CONTENT_LENGTH_FUZZ)
        read_from = max(d.content_start, lo - 3)
        window = _read_at(self.f, read_from,
                          target + CONTENT_LENGTH_FUZZ + limits.MAX_SPOOL_LINE_OCTETS - read_from)
        k = window.find(b"\nFrom ", lo - 1 - read_from)
        while k != -1 and read_from + k + 1 <= target + CONTENT_LENGTH_FUZZ:
            if _is_empty_line_before(window, k):
                eol = window.find(b"\n", k + 1)
                if is_from_line(window[k + 1:eol + 1] if eol != -1 else window[k + 1:]):
                    return True
            k = window.find(b"\nFrom ", k + 1)
        return False

    def _body(self, d: _Draft):
        """Scan the body for the next separator (counting its octets in bulk). Returns the
        separator line, consumed, or None at the region end."""
        w = self.w
        pattern = b"\nFrom " if self.mmdf_sep is None else b"\n" + self.mmdf_sep
        find = _find_from_separator if self.mmdf_sep is None else _pattern_finder(pattern)
        recognise_from = d.body_start
        if (self.mmdf_sep is None and d.content_length is not None
                and self._content_length_trusted(d)):
            recognise_from = max(d.body_start, d.body_start + d.content_length
                                 - CONTENT_LENGTH_FUZZ)
        counted = w.cur            # buf index up to which body octets are counted
        search = w.cur - 1         # the LF ending the blank line may precede a separator
        octets = 0
        prev_cr = False
        while True:
            buf = w.buf
            k = find(buf, search)
            if k != -1 and w.base + k + 1 < recognise_from:
                search = k + 1
                continue
            if k == -1:
                if w.at_eof:
                    stop = len(buf)
                else:
                    stop = max(counted, len(buf) - len(pattern))
                if stop > counted:
                    octets += _octets_of_range(buf, counted, stop, prev_cr)
                    prev_cr = buf[stop - 1] == CR
                    counted = stop
                if w.at_eof:
                    w.cur = counted
                    d.body_end = w.pos
                    d.octets += octets
                    d.last_line_unterminated = (d.body_end > d.body_start
                                                and buf[counted - 1] != LF)
                    if (self.mmdf_sep is None and buf[counted - 1] == LF
                            and _is_empty_line_before(buf, counted - 1)):
                        self._drop_framing_line(d, 2 if buf[counted - 2] == CR else 1)
                    return None
                w.cur = counted
                shift = w.base
                w.more()
                delta = w.base - shift
                counted -= delta
                search = max(0, stop - delta - len(pattern))
                continue
            line_at = k + 1
            eol = buf.find(b"\n", line_at, line_at + limits.MAX_SPOOL_LINE_OCTETS)
            if eol == -1 and len(buf) - line_at < limits.MAX_SPOOL_LINE_OCTETS and not w.at_eof:
                octets += _octets_of_range(buf, counted, line_at, prev_cr)
                prev_cr = False
                counted = line_at
                w.cur = counted
                shift = w.base
                w.more(limits.MAX_SPOOL_LINE_OCTETS)
                delta = w.base - shift
                counted -= delta
                search = max(0, k - delta)
                continue
            line = buf[line_at:eol + 1] if eol != -1 else buf[line_at:line_at
                                                              + limits.MAX_SPOOL_LINE_OCTETS]
            if self.mmdf_sep is not None:
                found = line == self.mmdf_sep
            else:
                found = _is_empty_line_before(buf, k) and is_from_line(line)
            if not found:
                search = k + 1
                continue
            octets += _octets_of_range(buf, counted, line_at, prev_cr)
            d.octets += octets
            w.cur = line_at + len(line)
            d.body_end = w.base + line_at
            if self.mmdf_sep is None:
                self._drop_framing_line(d, 2 if buf[k - 1] == CR else 1)
            return line

    def _drop_framing_line(self, d: _Draft, length: int) -> None:
        """The empty line (`length` octets, LF or CRLF) that ends at d.body_end before a From_
        separator or the end of the file is mbox framing, not content (docs/mbox.md, "The
        framing line"). When the body is empty it is the blank line after the headers."""
        d.body_end -= length
        d.octets -= 2
        if d.body_end < d.body_start:           # it was the blank line ending the headers
            d.body_start = d.body_end = d.header_end
        d.last_line_unterminated = False

    def _after_body(self, d: _Draft, nxt: bytes | None):
        """Close the message: MMDF trailer and junk, ends, next separator."""
        w = self.w
        if d.body_end < 0:
            d.body_end = d.body_start
        if d.uidl_insert_at < 0:
            d.uidl_insert_at = d.header_end
        if nxt is None:
            d.trailer_end = d.body_end
            d.end = w.pos
            return None, None
        line_at = w.pos - len(nxt)
        if self.mmdf_sep is None:
            d.trailer_end = d.body_end
            d.end = line_at
            return nxt, line_at
        # MMDF: `nxt` is this message's trailer; the next separator follows, maybe after junk.
        d.trailer_end = w.pos
        at_line_start = True
        while True:
            at = w.pos
            line = w.readline(limits.MAX_SPOOL_LINE_OCTETS)
            if not line:
                d.end = at
                return None, None
            if at_line_start and line == self.mmdf_sep:
                d.end = at
                return line, at
            at_line_start = line.endswith(b"\n")


def _assign_uids(messages: list[Message], header_uids: list[str | None], digests: list[bytes],
                 *, old_style_uid: bool, taken_uids: Iterable[str]) -> None:
    """Give every message a UID unique in the mailbox, and count its X-UIDL line in octets.

    Existing X-UIDL values win (the first of equal ones); the others get the UID of their digest,
    re-derived deterministically from it while it collides (identical envelope and headers)."""
    taken = set(taken_uids)
    for m, uid in zip(messages, header_uids):
        if uid is not None and uid not in taken:
            taken.add(uid)
            m.uid, m.uid_from_header = uid, True
    for m, digest in zip(messages, digests):
        if not m.uid_from_header:
            uid = encode_uid(digest, old_style_uid)
            n = 0
            while uid in taken:
                n += 1
                uid = encode_uid(hashlib.md5(digest + b"#%d" % n).digest(), old_style_uid)
            taken.add(uid)
            m.uid = uid
        m.octets += len(UIDL_HEADER) + len(m.uid) + 2


def scan(f: BinaryIO, *, start: int = 0, end: int | None = None,
         update_status_headers: bool = True, old_style_uid: bool = False,
         uw_kludge: bool = False, content_length: bool = True, unique_num: int | None = None,
         first_number: int = 1, taken_uids: Iterable[str] = ()) -> list[Message]:
    """Scan the mbox region [start, end) of the open binary file `f` (end: end of file).

    `start` must be the start of a separator line; raises MboxFormatError when it is not.
    `first_number` numbers the messages of a region scanned after others, `taken_uids` are the
    UIDs of those others (generated UIDs avoid them). `unique_num` reproduces Qpopper's
    per-session counter in the UID hash (only with update-status-headers and new-style UIDs);
    leave it None to get UIDs that are stable across sessions even before they are saved.
    uw-kludge hides message 1 of the file when it is the IMAP folder pseudo-message.
    """
    region_end = _file_end(f) if end is None else end
    if region_end <= start:
        return []
    scanner = _Scanner(f, start, region_end, update_status_headers=update_status_headers,
                       old_style_uid=old_style_uid, uw_kludge=uw_kludge,
                       content_length=content_length, unique_num=unique_num,
                       first_number=first_number)
    messages = scanner.run()
    _assign_uids(messages, scanner.header_uids, scanner.digests, old_style_uid=old_style_uid,
                 taken_uids=taken_uids)
    return messages


# --- output ---------------------------------------------------------------------------------------

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
        if self.pending_cr:
            data = b"\r" + data
            self.pending_cr = False
        if not final and data.endswith(b"\r"):    # may be the CR of a CRLF split by a block
            self.pending_cr = True
            data = data[:-1]
        if not data:
            return
        if b"\0" in data:                          # rare: skip translate's copy without one
            data = data.translate(_NUL_TO_SPACE)
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        # dot-stuffing before LF -> CRLF: the regex finds LF-dot faster than bytes.replace does
        data = _DOT_AFTER_LF.sub(b"\n..", data).replace(b"\n", b"\r\n")
        if self.at_line_start and data[:1] == b".":
            data = b"." + data
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
    wire = WireLines(write)
    pending: list[bytes] = []
    pending_size = 0
    buf, buf_at = b"", 0            # file bytes [buf_at, buf_at + len(buf))
    ends_line = True                # the kept bytes so far end with LF (or there are none)

    def splice_uidl() -> None:
        nonlocal pending, pending_size
        if _CONVERTED.isdisjoint(msg.uid):
            pending.append(UIDL_HEADER + msg.uid.encode("ascii") + b"\n")
            pending_size += len(pending[-1])
        else:                       # a uid the conversion would change (a damaged cache)
            wire.feed(b"".join(pending), final=True)
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
            piece = memoryview(buf)[a - buf_at:piece_end - buf_at]     # join copies it once
            pending.append(piece)
            pending_size += len(piece)
            ends_line = piece[-1] == LF
            a = piece_end
            if pending_size >= window:
                wire.feed(b"".join(pending))
                pending, pending_size = [], 0
    if not ends_line:               # a last line without LF gets its CRLF (a CR stays: CR CRLF)
        pending.append(b"\r\n")
    if not inserted:
        splice_uidl()
    wire.feed(b"".join(pending), final=True)


def _copy(f: BinaryIO, start: int, end: int, out: _Coalescer) -> None:
    for data in _chunks(f, start, end):
        out.add(data)


def copy_for_update(f: BinaryIO, msg: Message, write: WriteFn, *, retrieved: bool,
                    update_status_headers: bool, at: int | None = None,
                    number: int | None = None) -> Message | None:
    """Write `msg` back in mbox form for the update at QUIT (docs/mbox.md, "What write-back writes").

    With update_status_headers: the separator line, `X-UIDL: <uid>` right after it, the
    headers without other X-UIDL lines, `Status: RO` replacing existing Status lines when
    retrieved, or a new `Status: RO`/`Status: U` at the end of headers when there was none, then
    the body as stored (LF line ends). Without it, and for a hidden message, the bytes unchanged.
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
        edits = [(a, b, b"") for a, b in msg.uidl_lines]
        if retrieved:
            edits += [(a, b, status) for a, b in msg.status_lines]
        for a, b, replacement in sorted(edits):
            _copy(f, cur, a, out)
            out.add(replacement)
            cur = b
        _copy(f, cur, msg.header_end, out)
        if not msg.status_lines:
            if not out.tail.endswith(b"\n"):
                out.add(b"\n")         # headers ran to the end of the file without a final LF
            out.add(status)
        _copy(f, max(cur, msg.header_end), msg.body_end, out)
        if at is not None and _relocatable(msg):
            relocated = _RelocatedBody(out.total, out.tail)
    else:
        _copy(f, msg.offset, msg.body_end, out)
    if msg.mmdf:
        if not out.tail.endswith(b"\n"):
            out.add(b"\n")
        if msg.trailer_end > msg.body_end:
            _copy(f, msg.body_end, msg.end, out)
        else:
            out.add(_read_at(f, msg.offset, msg.content_start - msg.offset))
    else:
        out.add(FRAMING_LINE if out.tail.endswith(b"\n") else b"\n" + FRAMING_LINE)
    out.flush()
    if relocated is None:
        return None
    return _relocated(f, msg, at, number, retrieved, out.total, relocated)


def separator_padding(tail: bytes) -> bytes:
    """What must follow `tail` (the end of an mbox) before another message can start there: a
    From_ message ends with its framing line (an LF first if its last line lacks one), an MMDF
    message with its trailer (docs/mbox.md, "What write-back writes"). A file ending with an
    empty line already has its framing line."""
    if not tail or tail.endswith((b"\n\n", b"\n\r\n", b"\x01\x01\x01\x01\n")):
        return b""
    return FRAMING_LINE if tail.endswith(b"\n") else b"\n" + FRAMING_LINE


def padding_after(fd: int, size: int) -> bytes:
    """separator_padding for the first `size` octets of fd (an mbox file): what must be
    written at `size` before another message can start there."""
    return separator_padding(os.pread(fd, min(8, size), max(0, size - 8)) if size else b"")


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
            and _header_uid(msg.uidl_line[:-2]) == msg.uid)    # read back as this UID


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
        octets += _octets(b"\n", after_cr=body.tail.endswith(b"\r")) - 2   # RETR added CRLF
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
