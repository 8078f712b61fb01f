"""The batch scan: the common mbox (From_ separators, no CR, no Content-Length) without a
Python step per line and with few per message (docs/mbox.md, "The batch scan").

The region is mapped, every separator is found with one regex pass, and each message between
two separators is cut out once: its header block is searched with two regex calls, its line
ends counted with one `count`, its UID digest taken from one joined string. What this path
does not handle goes to the reference scanner (mbox_scan._Scanner) through `reference`: the
whole region (CR anywhere, MMDF, no envelope first, no mappable file), one message (headers
past the header window, uw-kludge's first message, the last message of the region), or
everything from a message on (a Content-Length line, which may move the next separator).
The results are the reference's, field for field; tests/unit/test_mbox_batch_differential.py
and the `mbox` fuzz target hold the two paths to that.
"""

from __future__ import annotations

import hashlib
import mmap
import re
import struct
from typing import BinaryIO, Callable

from qpopper import limits
from qpopper.spool.mbox_format import (MMDF_SEP_CHAR, Message, _NUL_TO_SPACE, header_uid,
                                       is_from_line)
from qpopper.spool.mbox_headers import _HeaderScanner

Scanned = tuple[list[Message], list, list[bytes]]
"""Messages (octets without the X-UIDL line), their X-UIDL values (or None), their digests."""
Reference = Callable[[int, int, int, "int | None"], Scanned]
"""reference(start, end, first_number, unique_num): the reference scanner on [start, end)."""

_FROM_LINE = re.compile(rb"From [^\n]*\n")
"""A `From ` through its LF: a separator when an empty line precedes it and it passes
is_from_line (the LF-less last line of a region is left to the reference)."""
_HASHED_LINES = re.compile(
    rb"\n((?:received|date|message-id|subject):[^\n]*(?:\n[ \t][^\n]*)*)", re.IGNORECASE)
"""In a header block with the separator's LF in front: every hashed header with its
continuation lines, without the last LF (new-style UIDs hash continuations)."""
_HASHED_LINES_ONLY = re.compile(rb"\n((?:received|date|message-id|subject):[^\n]*)",
                                re.IGNORECASE)
"""The same without continuation lines (old-style UIDs)."""
_OTHER_NOTED = re.compile(rb"\n(?:content-length|x-uidl|status):[^\n]*", re.IGNORECASE)
"""The other header lines the scan notes (_HeaderScanner._classify), without their LF (the
next line's match starts with it)."""
_HEADER_WINDOW = _HeaderScanner.HEADER_WINDOW
_MAX_LINE = limits.MAX_SPOOL_LINE_OCTETS
_REST = object()
"""_one_message's answer for a message from which on the reference must scan."""


def region_view(f: BinaryIO, end: int):
    """The bytes [0, end) of `f` as a sliceable, searchable object (a read-only map of a real
    file, the value of an in-memory one), or None when it has none."""
    getvalue = getattr(f, "getvalue", None)
    if getvalue is not None:
        return getvalue()[:end]
    try:
        fd = f.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    try:
        return mmap.mmap(fd, end, prot=mmap.PROT_READ)
    except (OSError, ValueError, OverflowError):
        return None


def separators(view, start: int, end: int) -> list[tuple[int, int]] | None:
    """(offset, end of line) of every From_ separator of [start, end), or None when the
    region's first line is not one. A separator line without LF (only the region's last line
    can be one) is not listed: the reference scans the last message."""
    first = _FROM_LINE.match(view, start, end)
    if first is None or not is_from_line(first.group()):
        return None
    found = [(start, first.end())]
    for m in _FROM_LINE.finditer(view, first.end(), end):
        at = m.start()
        if view[at - 2:at] == b"\n\n" and is_from_line(m.group()):
            found.append((at, m.end()))
    return found


class _Batch:
    def __init__(self, view, *, update_status_headers: bool, old_style_uid: bool,
                 uw_kludge: bool, content_length: bool, unique_num: int | None,
                 first_number: int):
        self.view = view
        self.new_style = not old_style_uid
        self.hashed_lines = _HASHED_LINES if self.new_style else _HASHED_LINES_ONLY
        self.feed_unique_num = (unique_num is not None and update_status_headers
                                and not old_style_uid)
        self.unique_num = unique_num
        self.uw_kludge = uw_kludge
        self.content_length = content_length
        self.first_number = first_number

    def run(self, seps: list[tuple[int, int]], end: int, reference: Reference) -> Scanned:
        messages: list[Message] = []
        header_uids: list = []
        digests: list[bytes] = []
        bounds = [s for s, _ in seps[1:]] + [end]
        for i, ((at, eol), nxt) in enumerate(zip(seps, bounds)):
            number = self.first_number + i
            unique_num = self.unique_num + i if self.unique_num is not None else None
            last = i == len(seps) - 1
            one = None
            if not last and not (self.uw_kludge and number == 1):
                one = self._one_message(at, eol, nxt, number, unique_num)
            if (one is None and not last and self.content_length
                    and self.view.find(b"Content-Length:", at, nxt) != -1):
                one = _REST         # its value may be honoured: only the reference can tell
            if one is _REST:
                nxt = end
            if one is None or one is _REST:
                got = reference(at, nxt, number, unique_num)
                messages += got[0]
                header_uids += got[1]
                digests += got[2]
                if one is _REST:
                    break
                continue
            messages.append(one[0])
            header_uids.append(one[1])
            digests.append(one[2])
        return messages, header_uids, digests

    def _one_message(self, at: int, eol: int, nxt: int, number: int, unique_num: int | None):
        """The message [at, nxt) whose separator line ends at eol, as (Message, X-UIDL value,
        digest); None to have the reference scan it, _REST to have it scan from it on."""
        msg = self.view[at:nxt]
        cs = eol - at                              # content start, in msg
        blank = msg.find(b"\n\n", cs - 1, cs + _HEADER_WINDOW) + 1     # the blank line
        if blank == 0:
            return None                            # headers past the window: line by line
        block = msg[cs - 1:blank]                  # the header lines, an LF in front
        sep = msg[:cs]
        hashed = self.hashed_lines.findall(block)
        if hashed:
            hashed.append(b"")                     # each hashed piece ends with its LF
        text = b"".join((sep, b"\n".join(hashed), sep) if self.new_style
                        else (sep, b"\n".join(hashed))).translate(_NUL_TO_SPACE)
        if self.feed_unique_num:               # Qpopper's counter right after the separator
            md5 = hashlib.md5(text[:cs])
            md5.update(struct.pack("=q", unique_num))
            md5.update(text[cs:])
            digest = md5.digest()
        else:
            digest = hashlib.md5(text).digest()
        octets = nxt - at - cs + msg.count(b"\n", cs) - 2    # CRLF line ends, framing line
        header_end = at + blank
        uidl_insert_at = header_end
        uid = None
        retrieved = False
        stripped: tuple = ()
        status_lines: tuple = ()
        if _OTHER_NOTED.search(block) is not None:
            noted = self._other_noted(block, at + cs - 1)
            if noted is None:
                return _REST
            uid, retrieved, stripped, status_lines, octets_off = noted
            octets -= octets_off
            if status_lines:
                uidl_insert_at = status_lines[0][0]
        body_start = header_end + 1
        body_end = nxt - 1
        if body_end < body_start:                  # the blank line was the framing line
            body_start = body_end = header_end
        return Message(number, at, nxt, octets, "", False, retrieved, False, at + cs,
                       header_end, body_start, body_end, body_end, uidl_insert_at, stripped,
                       stripped, status_lines, (), False), uid, digest

    def _other_noted(self, block: bytes, base: int):
        """X-UIDL and Status lines of a header block at file offset `base` (_HeaderScanner
        ._classify and _note_line's rules): (X-UIDL value, retrieved, X-UIDL spans, Status
        spans, octets stripped); None for a Content-Length the reference must weigh."""
        uid = None
        retrieved = False
        stripped = []
        status_lines = []
        octets_off = 0
        for m in _OTHER_NOTED.finditer(block):
            line = m.group()[1:] + b"\n"
            span = (base + m.start() + 1, base + m.end() + 1)
            if line.startswith(b"Content-Length:") and self.content_length:
                return None
            name = line[:line.find(b":") + 1].lower()
            if name == b"x-uidl:":
                if uid is None:
                    uid = header_uid(line[:_MAX_LINE])
                stripped.append(span)
                octets_off += len(line) + 1
            elif name == b"status:":
                if line.find(b"R", 7, _MAX_LINE) != -1:
                    retrieved = True
                status_lines.append(span)
        return uid, retrieved, tuple(stripped), tuple(status_lines), octets_off


def scan_region(f: BinaryIO, start: int, end: int, reference: Reference, *,
                update_status_headers: bool, old_style_uid: bool, uw_kludge: bool,
                content_length: bool, unique_num: int | None, first_number: int) -> Scanned:
    """Scan [start, end) of `f` as the reference does, the common messages in batch."""
    view = region_view(f, end)
    seps = None
    if view is not None and len(view) >= end:
        if view.find(b"\r", start, end) == -1 and view[start:start + 1] != MMDF_SEP_CHAR:
            seps = separators(view, start, end)
    try:
        if seps is None:
            return reference(start, end, first_number, unique_num)
        batch = _Batch(view, update_status_headers=update_status_headers,
                       old_style_uid=old_style_uid, uw_kludge=uw_kludge,
                       content_length=content_length, unique_num=unique_num,
                       first_number=first_number)
        return batch.run(seps, end, reference)
    finally:
        if isinstance(view, mmap.mmap):
            view.close()
