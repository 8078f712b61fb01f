"""Scanning an mbox: one pass over a region, in bounded windows, to a list of Message
records (docs/mbox.md, "Separators", "The framing line", "Content-Length").

The file is never read whole: one pass in chunks of limits.COPY_CHUNK_OCTETS keeps only
per-message offsets, so memory follows the number of messages, not the spool size. Bodies
are searched and counted with bytes methods (find/count); a header block is cut from the
buffer in one slice and only the lines that matter are looked at.
"""

from __future__ import annotations

import hashlib
import re
import struct
from typing import BinaryIO, Callable, Iterable

from qpopper import limits
from qpopper.spool import mbox_batch
from qpopper.spool.mbox_format import (CONTENT_LENGTH_FUZZ, CR, LF, MMDF_SEP_CHAR, UIDL_HEADER,
                                       MboxFormatError, Message, _file_end, _NUL_TO_SPACE,
                                       _octets_of_range, _read_at, closer_octets, encode_uid,
                                       is_from_line, leading_padding)
from qpopper.spool.mbox_headers import (_Draft, _HeaderScanner, _is_empty_line_before,
                                        _Window, set_scan_options)

_FROM_SEPARATOR = re.compile(rb"\nFrom ")


def _find_from_separator(buf: bytes, start: int) -> int:
    """buf.find(b"\\nFrom ", start), faster: re's literal search beats bytes.find on a
    pattern that starts with the most common byte of a mail (LF)."""
    if start < 0:
        start = max(0, start + len(buf))          # as bytes.find reads a negative start
    match = _FROM_SEPARATOR.search(buf, start)
    return match.start() if match else -1


_LINE_ENDS_OCTETS = 4
"""The most octets _line_ends_at_end strips: two CRLFs."""


def _line_ends_at_end(tail: bytes) -> int:
    """How many octets of up to two line ends (LF or CRLF) end `tail`: the last line's and the
    framing line's, before a separator or at the end of the file."""
    n = len(tail)
    for _ in range(2):
        if not n or tail[n - 1] != LF:
            break
        n -= 2 if n >= 2 and tail[n - 2] == CR else 1
    return len(tail) - n


def _pattern_finder(pattern: bytes) -> Callable[[bytes, int], int]:
    return lambda buf, start: buf.find(pattern, start)


class _Scanner(_HeaderScanner):
    def __init__(self, f, start, end, *, update_status_headers, old_style_uid, uw_kludge,
                 content_length, unique_num, first_number):
        self.f = f
        self.start = start
        self.w = _Window(f, start, end)
        set_scan_options(self, update_status_headers=update_status_headers,
                         old_style_uid=old_style_uid, uw_kludge=uw_kludge,
                         content_length=content_length, unique_num=unique_num,
                         first_number=first_number)
        self.number = first_number
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
        if first.startswith(MMDF_SEP_CHAR) and len(first) < limits.MAX_SPOOL_LINE_OCTETS:
            self.mmdf_sep = first       # (a longer line would be matched by its first part only)
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
        hashed_sep = sep.translate(_NUL_TO_SPACE)
        digest = hashlib.md5(hashed_sep)
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
            d.digest.update(hashed_sep)
        result = self._after_body(d, nxt)
        self._keep(d)
        return result

    def _keep(self, d: _Draft) -> None:
        """Store the finished message compactly: only offsets, flags and a 16-byte digest."""
        self.header_uids.append(d.header_uid)
        self.digests.append(d.digest.digest())
        self.messages.append(Message(
            number=d.number, offset=d.offset, end=d.end,
            octets=d.octets + d.closer_octets,
            uid="", uid_from_header=False, retrieved=d.retrieved,
            hidden=self.uw_kludge and d.uw_marks >= 2,
            content_start=d.content_start, header_end=d.header_end, body_start=d.body_start,
            body_end=d.body_end, trailer_end=d.trailer_end, uidl_insert_at=d.uidl_insert_at,
            stripped=tuple(d.stripped), uidl_lines=tuple(d.uidl_lines),
            status_lines=tuple(d.status_lines), mmdf=self.mmdf_sep is not None,
            stale_content_length=() if d.content_length_honoured else tuple(
                span for span in d.stripped if span not in d.uidl_lines)))

    def _content_length_trusted(self, d: _Draft) -> bool:
        """Honour Content-Length only when it points (within the fuzz) at a separator or at the
        region end: a forged or stale value must not swallow the messages after it.

        Both are weighed at the same point: where the content ends without its last line end
        and the framing line (_line_ends_at_end). A write-back (which ends the last message
        with its LF and one framing line, LF) or mail appended after the message (a separator
        after the framing line) must not move the message into or out of the slack
        (docs/mbox.md, "Content-Length"; a fuzzing finding, docs/fuzzing.md)."""
        target = d.body_start + d.content_length
        region_end = self.w.region_end
        tail_at = max(d.body_start, region_end - _LINE_ENDS_OCTETS)
        tail = _read_at(self.f, tail_at, region_end - tail_at)
        if tail and not tail.endswith(b"\n"):
            # the write-back's LF: a last line ending in a bare CR then ends in CRLF
            content_end = region_end + 1 - _line_ends_at_end(tail + b"\n")
        else:
            content_end = region_end - _line_ends_at_end(tail)
        if abs(content_end - target) <= CONTENT_LENGTH_FUZZ:
            return True
        if target > region_end:
            return False
        lo = max(d.body_start, target - CONTENT_LENGTH_FUZZ)
        read_from = max(d.content_start, lo - _LINE_ENDS_OCTETS - 1)
        window = _read_at(self.f, read_from,
                          target + CONTENT_LENGTH_FUZZ + limits.MAX_SPOOL_LINE_OCTETS - read_from)
        k = window.find(b"\nFrom ", lo - 1 - read_from)
        while k != -1 and read_from + k + 1 <= target + CONTENT_LENGTH_FUZZ + _LINE_ENDS_OCTETS:
            # the separator's offset less the framing line and the last line's end
            before = window[max(0, d.body_start - read_from, k + 1 - _LINE_ENDS_OCTETS):k + 1]
            if (abs(read_from + k + 1 - _line_ends_at_end(before) - target) <= CONTENT_LENGTH_FUZZ
                    and _is_empty_line_before(window, k)):
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
            d.content_length_honoured = True
            recognise_from = max(d.body_start, d.body_start + d.content_length
                                 - CONTENT_LENGTH_FUZZ)
        counted = w.cur            # buf index up to which body octets are counted
        search = w.cur - 1         # the LF ending the blank line may precede a separator
        octets = 0
        prev_cr = False
        while True:
            buf = w.buf
            k = find(buf, search)
            # a separator inside the Content-Length is content; weighed where
            # _content_length_trusted weighs it (less the line ends before it), or a CRLF
            # spool's write-back would move it across recognise_from
            if k != -1 and w.base + k + 1 - _LINE_ENDS_OCTETS < recognise_from and (
                    w.base + k + 1 - _line_ends_at_end(
                        buf[max(0, k + 1 - _LINE_ENDS_OCTETS, d.body_start - w.base):k + 1])
                    < recognise_from):
                search = k + 1
                continue
            if k == -1:
                if w.at_eof and self.mmdf_sep is not None:
                    bare = b"\n" + self.mmdf_sep[:-1]          # a trailer cut by the file's end
                    line_at = len(buf) - len(bare) + 1
                    if buf.endswith(bare) and line_at >= counted:
                        d.octets += octets + _octets_of_range(buf, counted, line_at, prev_cr)
                        w.cur = len(buf)
                        d.body_end = w.base + line_at
                        return buf[line_at:]
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
                    d.closer_octets = (closer_octets(buf[counted - 1:counted])
                                       if d.body_end > d.body_start else 0)
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
        separator or the end of the file is mbox framing, not content
        (docs/mbox.md, "The framing line"). When the body is empty it is the blank line after
        the headers."""
        d.body_end -= length
        d.octets -= 2
        if d.body_end < d.body_start:           # it was the blank line ending the headers
            d.body_start = d.body_end = d.header_end
        d.closer_octets = 0

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
    # Where each digest's previous message ended its re-derivations: all before are taken
    # (taken only grows), so k equal messages cost k derivations, not k²/2.
    last_n: dict[bytes, int] = {}
    for m, digest in zip(messages, digests):
        if not m.uid_from_header:
            n = last_n.get(digest, -1)
            while True:                         # the digest itself first, then #1, #2, ...
                n += 1
                uid = encode_uid(digest if n == 0 else hashlib.md5(digest + b"#%d" % n).digest(),
                                 old_style_uid)
                if uid not in taken:
                    break
            last_n[digest] = n
            taken.add(uid)
            m.uid = uid
        m.octets += len(UIDL_HEADER) + len(m.uid) + 2


def length_reaches(msg: Message, value: int, end: int) -> bool:
    """Could a Content-Length of `value` in `msg`, not honoured by a scan of a region that
    ended at `end`, come true once mail is appended there? Only a separator or an end of
    file after `end` is new, weighed at its offset less at most _LINE_ENDS_OCTETS of line
    ends, and honoured within CONTENT_LENGTH_FUZZ of the value (_content_length_trusted)."""
    return msg.body_start + value + CONTENT_LENGTH_FUZZ + _LINE_ENDS_OCTETS >= end


def scan(f: BinaryIO, *, start: int = 0, end: int | None = None,
         update_status_headers: bool = True, old_style_uid: bool = False,
         uw_kludge: bool = False, content_length: bool = True, unique_num: int | None = None,
         first_number: int = 1, taken_uids: Iterable[str] = (),
         batch: bool = True) -> list[Message]:
    """Scan the mbox region [start, end) of the open binary file `f` (end: end of file).

    `start` must be the start of a separator line; raises MboxFormatError when it is not. At
    the start of the file the empty lines before the first separator are passed over
    (leading_padding; docs/mbox.md, "Padding before the first message").
    `first_number` numbers the messages of a region scanned after others, `taken_uids` are the
    UIDs of those others (generated UIDs avoid them). `unique_num` reproduces Qpopper's
    per-session counter in the UID hash (only with update-status-headers and new-style UIDs);
    leave it None to get UIDs that are stable across sessions even before they are saved.
    uw-kludge hides message 1 of the file when it is the IMAP folder pseudo-message.
    `batch` False scans with the reference scanner alone (the batch path's yardstick,
    docs/mbox.md, "The batch scan").
    """
    region_end = _file_end(f) if end is None else end
    if start == 0:      # empty lines before the first separator: padding, part of no message
        start = leading_padding(lambda pos, n: _read_at(f, pos, n), region_end)
    if region_end <= start:
        return []
    options = dict(update_status_headers=update_status_headers, old_style_uid=old_style_uid,
                   uw_kludge=uw_kludge, content_length=content_length)

    def reference(at: int, stop: int, number: int, unique: int | None) -> mbox_batch.Scanned:
        scanner = _Scanner(f, at, stop, unique_num=unique, first_number=number, **options)
        return scanner.run(), scanner.header_uids, scanner.digests

    if batch:
        messages, header_uids, digests = mbox_batch.scan_region(
            f, start, region_end, reference, unique_num=unique_num, first_number=first_number,
            **options)
    else:
        messages, header_uids, digests = reference(start, region_end, first_number, unique_num)
    _assign_uids(messages, header_uids, digests, old_style_uid=old_style_uid,
                 taken_uids=taken_uids)
    return messages
