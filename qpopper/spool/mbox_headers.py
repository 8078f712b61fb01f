"""Reading an mbox message's header block: the window over the file, the message being
scanned, and what each header line means for the UID, RETR and the write-back (docs/mbox.md,
"X-UIDL and Status", "Content-Length", "uw-kludge")."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import BinaryIO

from qpopper import limits
from qpopper.spool.mbox_format import (CR, LF, _NUL_TO_SPACE, closer_octets, content_length_value,
                                       header_uid, _octets)

_HASHED_HEADERS = (b"received:", b"date:", b"message-id:", b"subject:")
_HASHED_NAMES = frozenset(_HASHED_HEADERS)
_CONTINUATION_BYTES = frozenset(b" \t")
_NOTED_NAMES = frozenset((b"content-length:", b"x-uidl:", b"status:", b"x-imap:", b"from:",
                          *_HASHED_HEADERS))
"""Lowercased names of every header line _classify does something with."""
_NOTED_AFTER_LF = re.compile(
    rb"\n(?:(received|date|message-id|subject)|content-length|x-uidl|status):")
"""In a lowercased header block with an LF put in front: the start of every line _classify
does something with when uw-kludge is not in play (group 1: a hashed header)."""
_CONTINUATION_LINES = re.compile(rb"(?:[ \t][^\n]*\n)*")
_UW_SUBJECT_MARKS = (b"DO NOT DELETE", b"DON'T DELETE THIS MESSAGE", b"FOLDER INTERNAL DATA")


def _is_empty_line_before(buf: bytes, k: int) -> bool:
    """buf[k] is LF: is the line it ends empty (just LF or CRLF)?"""
    return (k >= 1 and buf[k - 1] == LF) or (k >= 2 and buf[k - 1] == CR and buf[k - 2] == LF)


def _is_empty(line: bytes) -> bool:
    return line == b"\n" or line == b"\r\n"


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
    content_length_honoured: bool = False
    header_uid: str | None = None
    retrieved: bool = False
    uw_marks: int = 0
    stripped: list = field(default_factory=list)
    uidl_lines: list = field(default_factory=list)
    status_lines: list = field(default_factory=list)
    closer_octets: int = 0
    """What RETR adds after a last kept line without LF: CRLF (2), or only LF (1) after a bare
    CR, which becomes the CR of that CRLF (docs/mbox.md, "The framing line")."""


def set_scan_options(scanner, *, update_status_headers: bool, old_style_uid: bool,
                     uw_kludge: bool, content_length: bool, unique_num: int | None,
                     first_number: int) -> None:
    """The options a scan keeps, as the reference (mbox_scan._Scanner) and the batch path
    (mbox_batch._Batch) both read them."""
    scanner.new_style = not old_style_uid
    scanner.feed_unique_num = (unique_num is not None and update_status_headers
                               and not old_style_uid)
    scanner.unique_num = unique_num
    scanner.uw_kludge = uw_kludge
    scanner.content_length = content_length
    scanner.first_number = first_number


class _HeaderScanner:
    """The header part of the scanner (mbox_scan._Scanner adds the bodies): needs `w` (a
    _Window), `mmdf_sep`, `first_number`, `uw_kludge`, `new_style` and `content_length`."""

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
        base = w.base + i
        if first_message and self.uw_kludge:     # its marks need _classify on every line
            octets = self._header_lines_one_by_one(d, block, base, first_message)
        else:
            octets = self._noted_header_lines(d, block, base)
        d.octets += octets
        d.header_end = w.base + blank_at
        w.cur = blank_at + blank_len
        d.body_start = w.pos
        return True

    def _header_lines_one_by_one(self, d: _Draft, block: bytes, base: int,
                                 first_message: bool) -> int:
        """What _headers_by_line does with the lines of a header block (at file offset `base`,
        without its blank line) in one loop over them: notes and hashes them; returns the
        block's octets with the blank line, stripped lines not counted. The reference for
        _noted_header_lines, and what uw-kludge's first message uses."""
        # What _classify would do with a hashed header or a continuation line, done here
        # (most noted lines are those); uw-kludge's marks need _classify on message 1.
        inline_hashed = not (first_message and self.uw_kludge)
        hash_continuations = self.new_style
        digest = d.digest
        octets = _octets(block) + 2
        hashing = False
        start = 0
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
            octets -= _note_line(d, kind, line, base + start)
            start = stop
        return octets

    def _noted_header_lines(self, d: _Draft, block: bytes, base: int) -> int:
        """_header_lines_one_by_one without a Python step per line (no uw-kludge marks to
        look for): one regex search over the lowercased block finds the lines that matter,
        a hashed header is hashed with its continuation lines in one update (MD5 of the
        concatenation), everything else is only counted."""
        digest = d.digest
        octets = _octets(block) + 2
        hash_continuations = self.new_style
        for match in _NOTED_AFTER_LF.finditer(b"\n" + block.lower()):
            start = match.start()               # in block (the LF put in front is at -1)
            stop = block.find(b"\n", start) + 1
            if match.group(1) is not None:
                if hash_continuations:
                    stop = _CONTINUATION_LINES.match(block, stop).end()
                digest.update(block[start:stop].translate(_NUL_TO_SPACE))
                continue
            line = block[start:stop]
            octets -= _note_line(d, self._classify(d, line, base + start, False, False), line,
                                 base + start)
        return octets

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
                    d.closer_octets = 0
                    return None
                if self.mmdf_sep is not None and (piece == self.mmdf_sep or _bare_trailer(
                        piece, self.mmdf_sep, w.pos >= w.region_end)):
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
                d.closer_octets = closer_octets(piece)
            prev_cr = piece.endswith(b"\r")
            if piece.endswith(b"\n"):
                kind = None

    def _classify(self, d: _Draft, line: bytes, line_start: int, hashing: bool,
                  first_message: bool) -> str:
        """Kind of a header line from its first MAX_SPOOL_LINE_OCTETS (all Qpopper looks at);
        feeds the UID digest and notes Content-Length, X-UIDL, Status and uw-kludge marks."""
        if self.content_length and line.startswith(b"Content-Length:"):
            d.digest.update(line.translate(_NUL_TO_SPACE))
            if d.content_length is None:
                d.content_length = content_length_value(line)
            return "clen"
        low = line[:16].lower()
        # Every name we look for is shorter than 16 octets and has no colon, so "starts with
        # `name:`" is "the part up to the first colon is `name:`": one comparison.
        name = low[:low.find(b":") + 1]
        if name == b"x-uidl:":
            if d.header_uid is None:
                d.header_uid = header_uid(line[:limits.MAX_SPOOL_LINE_OCTETS])
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


def _bare_trailer(line: bytes, separator: bytes, at_end: bool) -> bool:
    """An MMDF trailer cut by the end of the file: the separator without its LF, last."""
    return at_end and not line.endswith(b"\n") and line + b"\n" == separator


def _note_line(d: _Draft, kind: str, line: bytes, at: int) -> int:
    """Record where a classified header line at file offset `at` is (stripped: X-UIDL and
    Content-Length; Status); returns the octets it takes off the message (a stripped line)."""
    span = (at, at + len(line))
    if kind == "uidl" or kind == "clen":
        d.stripped.append(span)
        if kind == "uidl":
            d.uidl_lines.append(span)
        return _octets(line)
    if kind == "status":
        d.status_lines.append(span)
    return 0
