"""The batch scan: the common mbox (From_ separators, no CR, no Content-Length) without a
Python step per line and with few per message (docs/mbox.md, "The batch scan").

The region is mapped, every separator is found with one regex pass, and each message between
two separators is cut out once: its header block is walked once (header_block), its line
ends counted with one `count`, its UID digest taken from one joined string. What this path
does not handle goes to the reference scanner (mbox_scan._Scanner) through `reference`: the
whole region (CR anywhere, MMDF, no envelope first, no mappable file), one message (headers
past the header window, uw-kludge's first message, the last message of the region), or
everything from a message on (a Content-Length line, which may move the next separator).
A big region is scanned in two parts at once, the second by a forked helper process
(docs/mbox.md, "Two parts at once"), and worked through in parts of CHUNK_OCTETS whose pages
are released as they are done. The results are the reference's, field for field: the
differential tests and the `mbox` fuzz target hold the two paths to that (docs/fuzzing.md).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import struct
import time
from typing import BinaryIO, Callable

from qpopper import limits
from qpopper.server.children import ForkedCall
from qpopper.spool.mbox_format import (MMDF_SEP_CHAR, Message, _NUL_TO_SPACE, _PLAIN_FROM_LINE,
                                       header_uid, is_from_line)
from qpopper.spool.mbox_headers import _HeaderScanner, set_scan_options

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
SPLIT_OCTETS = 48 * 1024 * 1024
"""A region this big is scanned in two parts at once, the second by a forked helper. The fork
costs the session ~3-4 ms of CPU and the helper has to be scheduled: with the compiled pass
the split was no faster at 16 MB and gained 0-4 ms at 32 MB for 5-7 ms more CPU
(docs/mbox.md, "Two parts at once")."""
CHUNK_OCTETS = 16 * 1024 * 1024
"""The batch path works through a mapped region this much at a time."""
BIG_MESSAGE_OCTETS = CHUNK_OCTETS
"""A message this big is left to the reference, which reads it in small windows (the batch
path would copy it whole)."""
HELPER_TIMEOUT = 120
"""Seconds a helper may take; past them it is ended and its part scanned by the session."""
RECORD_FIELDS = 13
"""Items in a record of _Batch._record (what keep() unpacks); a helper's answer is checked
against it."""
HELPER_SHARE = 0.58
"""The helper's part of such a region: more than half, since the parent still has the UIDs,
the helper's records and the unmapping to do when both parts are scanned."""
_REST = object()
"""_record's answer for a message from which on the reference must scan."""


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


def _is_separator(view, m: re.Match) -> bool:
    """A `From ` line match (_FROM_LINE) is a separator: an empty line before it, and
    is_from_line's shape."""
    return view[m.start() - 2:m.start()] == b"\n\n" and is_from_line(m.group())


def python_candidates(view, start: int, end: int):
    """_scan.candidates in Python, the fallback and yardstick: the `From ` lines of [start,
    end) that may be separators (the first line, then every one after an empty line, each
    with its LF before end) as (offsets, line ends, None), or None when the part does not
    start with one or holds a CR. Where the compiled pass has its LF counts, None: the batch
    path then counts each message's LFs itself."""
    first = _FROM_LINE.match(view, start, end)
    if first is None or view.find(b"\r", start, end) != -1:
        return None
    ats = [start]
    eols = [first.end()]
    for m in _FROM_LINE.finditer(view, first.end(), end):
        if view[m.start() - 2:m.start()] == b"\n\n":
            ats.append(m.start())
            eols.append(m.end())
    return ats, eols, None


def python_header_block(view, at: int, eol: int, stop: int, continuations: bool):
    """_scan.header_block in Python, the fallback and yardstick: for the message whose
    separator line is view[at:eol], (blank, text, other) — the offset after the first LF of
    its header block's end (the first LF LF from eol - 1 on, before stop), the UID's hashed
    text (the separator line, the hashed headers each with its LF — their continuation lines
    too when `continuations`, new-style UIDs — and, new-style, the separator line again; NUL
    turned into space), and whether a Content-Length, X-UIDL or Status line is among the
    headers — or None when the block does not end before stop."""
    blank = view.find(b"\n\n", eol - 1, stop) + 1
    if blank == 0:
        return None
    sep = view[at:eol]
    pattern = _HASHED_LINES if continuations else _HASHED_LINES_ONLY
    hashed = pattern.findall(view, eol - 1, blank)          # headers, the LF before each
    if hashed:
        hashed.append(b"")                                 # each hashed piece ends with its LF
    text = b"".join((sep, b"\n".join(hashed), sep) if continuations
                    else (sep, b"\n".join(hashed))).translate(_NUL_TO_SPACE)
    return blank, text, _OTHER_NOTED.search(view, eol - 1, blank) is not None


def python_plain_from_lines(view, ats: list, eols: list, max_octets: int) -> bytes:
    """_scan.plain_from_lines in Python, its yardstick: one octet per candidate line
    view[ats[i]:eols[i]], 1 when it is shorter than max_octets and has the envelope's common
    shape (_PLAIN_FROM_LINE, the first thing is_from_line tries), else 0 (then is_from_line
    decides)."""
    fullmatch = _PLAIN_FROM_LINE.fullmatch
    return bytes(eol - at < max_octets and fullmatch(view[at:eol]) is not None
                 for at, eol in zip(ats, eols))


def no_plain_lines(view, ats: list, eols: list, max_octets: int) -> bytes:
    """The fallback without the compiled pass: every line left to is_from_line, which tries
    the same regex first (python_plain_from_lines would run it twice on a line it refuses)."""
    return bytes(len(ats))


try:
    from qpopper.spool._scan import candidates as compiled_candidates
    from qpopper.spool._scan import header_block as compiled_header_block
    from qpopper.spool._scan import plain_from_lines as compiled_plain_from_lines
except ImportError:         # built without a compiler: the same in Python, slower
    compiled_candidates = compiled_header_block = compiled_plain_from_lines = None
candidates = compiled_candidates or python_candidates
"""The one pass the batch path makes over each part (docs/mbox.md, "The batch scan")."""
header_block = compiled_header_block or python_header_block
"""Each message's header block, in one walk (docs/accelerators.md, "The header block")."""
plain_from_lines = compiled_plain_from_lines or no_plain_lines
"""The separators' common shape, for a part's candidates at once (docs/accelerators.md,
"The separator shape")."""


class _NotBatchable(Exception):
    """The region is not for the batch path: the reference scans all of it."""


class _Stop(Exception):
    """A helper met a message only the reference can scan: it stops there."""

    def __init__(self, at: int):
        super().__init__(at)
        self.at = at


class _Batch:
    def __init__(self, view, *, update_status_headers: bool, old_style_uid: bool,
                 uw_kludge: bool, content_length: bool, unique_num: int | None,
                 first_number: int):
        self.view = view
        set_scan_options(self, update_status_headers=update_status_headers,
                         old_style_uid=old_style_uid, uw_kludge=uw_kludge,
                         content_length=content_length, unique_num=unique_num,
                         first_number=first_number)
        self.messages: list[Message] = []
        self.header_uids: list = []
        self.digests: list[bytes] = []

    # --- collecting -------------------------------------------------------------------------

    def _next_unique(self) -> int | None:
        return None if self.unique_num is None else self.unique_num + len(self.messages)

    def keep(self, record: tuple) -> None:
        """Store one message made in batch (a record of _record)."""
        (at, nxt, octets, retrieved, cs, header_end, body_start, body_end, uidl_insert_at,
         stripped, status_lines, uid, digest) = record
        self.messages.append(Message(
            self.first_number + len(self.messages), at, nxt, octets, "", False, retrieved,
            False, cs, header_end, body_start, body_end, body_end, uidl_insert_at, stripped,
            stripped, status_lines, (), False))
        self.header_uids.append(uid)
        self.digests.append(digest)

    def keep_scanned(self, got: Scanned) -> None:
        self.messages += got[0]
        self.header_uids += got[1]
        self.digests += got[2]

    # --- walking the messages ---------------------------------------------------------------

    def walk(self, start: int, stop: int, stop_is_separator: bool, may_hide_first: bool,
             keep: Callable[[tuple], None], fallback: Callable[[int, int, bool], bool]) -> bool:
        """Make the messages of [start, stop) in batch and give them to `keep`; a message the
        batch path cannot make goes to fallback(at, next, rest): `rest` when everything from
        it on must go to the reference (fallback returns True when the walk is over then).
        The last message goes to fallback too unless `stop_is_separator`; so does the first
        when `may_hide_first` (uw-kludge's message 1). True when the reference took the rest.

        The region is worked through CHUNK_OCTETS at a time (cut at separators), each part's
        pages released when it is done; a message longer than that is only searched through,
        and scanned by the reference."""
        pos = start
        while pos < stop:
            limit = min(pos + CHUNK_OCTETS, stop)
            seps, lfs, cut = self._part(pos, limit, min(limit + _MAX_LINE + 1, stop), stop)
            if self._messages(seps, lfs, cut, cut < stop or stop_is_separator, may_hide_first,
                              keep, fallback):
                return True
            self._release(pos, cut)
            pos = cut
            may_hide_first = False
        return False

    def _part(self, pos: int, limit: int, search_end: int, stop: int):
        """The separators of [pos, limit) as (offset, end of line), the LFs after each
        separator line up to the next (None when not counted: _record counts), and where
        the part ends: the first separator at or past limit, or stop. One candidates() pass
        over [pos, search_end) finds them (a separator line is shorter than _MAX_LINE)."""
        view = self.view
        found = candidates(view, pos, search_end)
        if found is None:
            raise _NotBatchable                    # a CR, or no From_ line first
        ats, eols, lfs_before = found
        kept = []                                  # indexes of the separators before limit
        cut_index = None
        plain = plain_from_lines(view, ats, eols, _MAX_LINE)
        for i, (at, eol) in enumerate(zip(ats, eols)):
            if not (plain[i] or is_from_line(view[at:eol])):
                if i == 0:
                    raise _NotBatchable
                continue
            if at >= limit:
                cut_index = i
                break
            kept.append(i)
        if cut_index is not None:
            cut = ats[cut_index]
        else:
            cut = self.next_separator(limit, stop) if limit < stop else stop
        seps = [(ats[i], eols[i]) for i in kept]
        if lfs_before is None:
            return seps, None, cut
        # LFs in [at, next) less the separator line's own.
        lfs = [lfs_before[j] - lfs_before[i] - 1 for i, j in zip(kept, kept[1:])]
        if cut_index is not None:
            lfs.append(lfs_before[cut_index] - lfs_before[kept[-1]] - 1)
        elif cut == search_end:
            lfs.append(lfs_before[-1] - lfs_before[kept[-1]] - 1)
        else:
            lfs.append(None)                       # past the pass: _record counts
        return seps, lfs, cut

    def _messages(self, seps: list[tuple[int, int]], lfs: list | None, stop: int,
                  stop_is_separator: bool, may_hide_first: bool, keep, fallback) -> bool:
        """walk() for one part, whose separators are `seps` (the LFs of each message:
        `lfs`)."""
        view = self.view
        bounds = [s for s, _ in seps[1:]]
        bounds.append(stop)
        if lfs is None:
            lfs = [None] * len(seps)
        last = len(seps) - 1
        record = self._record
        for i, ((at, eol), nxt, lf) in enumerate(zip(seps, bounds, lfs)):
            one = None
            whole = i < last or stop_is_separator
            if whole and not (may_hide_first and i == 0) and nxt - at < BIG_MESSAGE_OCTETS:
                one = record(at, eol, nxt, lf)
            if one is None and whole and self.content_length:
                blank = view.find(b"\n\n", eol - 1, nxt)      # where the headers end
                if view.find(b"Content-Length:", at, nxt if blank == -1 else blank) != -1:
                    one = _REST     # its value may be honoured: only the reference can tell
            if one is _REST:
                if fallback(at, nxt, True):
                    return True
            elif one is None:
                fallback(at, nxt, False)
            else:
                keep(one)
        return False

    def next_separator(self, at: int, stop: int) -> int:
        """The first separator at or past `at`, or `stop`. The octets passed are checked for
        CR, and the pages of a long search released as it goes."""
        while at < stop:
            upto = min(at + CHUNK_OCTETS, stop)
            found = upto
            for m in _FROM_LINE.finditer(self.view, at, min(upto + _MAX_LINE + 1, stop)):
                if m.start() >= upto:
                    break
                if _is_separator(self.view, m):
                    found = m.start()
                    break
            if self.view.find(b"\r", at, found) != -1:
                raise _NotBatchable
            if found < upto:
                return found
            self._release(at, upto)
            at = upto
        return stop

    def _release(self, start: int, stop: int) -> None:
        """Drop this process's mapping of the whole pages in [start, stop) (the page cache
        keeps them): resident memory follows CHUNK_OCTETS, not the spool."""
        if isinstance(self.view, mmap.mmap):
            first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
            length = stop // mmap.PAGESIZE * mmap.PAGESIZE - first
            if length > 0:
                self.view.madvise(mmap.MADV_DONTNEED, first, length)

    def _record(self, at: int, eol: int, nxt: int, lfs: int | None = None):
        """The message [at, nxt) whose separator line ends at eol and which has `lfs` LFs
        after that line (None: count them), as a record for keep(); None to have the
        reference scan it, _REST to have it scan from it on. The header block is searched
        in the region itself, not in a copy."""
        view = self.view
        found = header_block(view, at, eol, min(eol + _HEADER_WINDOW, nxt), self.new_style)
        if found is None:
            return None                            # headers past the window: line by line
        blank, text, other_noted = found
        cs = eol - at                              # content start, in text
        if self.feed_unique_num:               # Qpopper's counter right after the separator
            md5 = hashlib.md5(text[:cs])
            md5.update(struct.pack("=q", self._next_unique()))
            md5.update(text[cs:])
            digest = md5.digest()
        else:
            digest = hashlib.md5(text).digest()
        if lfs is None:
            lfs = view[eol:nxt].count(b"\n")
        octets = nxt - eol + lfs - 2               # CRLF line ends, less the framing line
        header_end = blank
        uidl_insert_at = header_end
        uid = None
        retrieved = False
        stripped: tuple = ()
        status_lines: tuple = ()
        if other_noted:
            noted = self._other_noted(view[eol - 1:blank], eol - 1)
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
        return (at, nxt, octets, retrieved, eol, header_end, body_start, body_end,
                uidl_insert_at, stripped, status_lines, uid, digest)

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
    try:
        if view is None or len(view) < end or view[start:start + 1] == MMDF_SEP_CHAR:
            return reference(start, end, first_number, unique_num)
        batch = _Batch(view, update_status_headers=update_status_headers,
                       old_style_uid=old_style_uid, uw_kludge=uw_kludge,
                       content_length=content_length, unique_num=unique_num,
                       first_number=first_number)
        try:
            _scan(batch, start, end, reference)
        except _NotBatchable:
            return reference(start, end, first_number, unique_num)
        return batch.messages, batch.header_uids, batch.digests
    finally:
        if isinstance(view, mmap.mmap):
            view.close()


def _scan(batch: _Batch, start: int, end: int, reference: Reference) -> None:
    """Scan [start, end) into `batch`: a big region in two parts at once (the second by a
    helper process, while this one does the first), else in one walk."""
    def fallback(at: int, nxt: int, rest: bool) -> bool:
        stop = end if rest else nxt
        batch.keep_scanned(reference(at, stop, batch.first_number + len(batch.messages),
                                     batch._next_unique()))
        return rest

    helper = None
    if (end - start >= SPLIT_OCTETS and not batch.feed_unique_num
            and len(os.sched_getaffinity(0)) >= 2):     # one CPU: the helper would only wait
        split = _split_point(batch, start, end)
        if split is not None:
            helper = _Helper.start(batch, split, end)
    may_hide = batch.uw_kludge and batch.first_number == 1
    if helper is None:
        batch.walk(start, end, False, may_hide, batch.keep, fallback)
        return
    try:
        done = batch.walk(start, helper.split, True, may_hide, batch.keep, fallback)
    except BaseException:
        helper.discard()
        raise
    if done:                    # the reference scanned the helper's part too
        helper.discard()
        return
    got = helper.result()
    resume = helper.split
    if got is not None:
        if not got[0]:
            raise _NotBatchable                    # a CR in the helper's part
        for record in got[1]:
            batch.keep(record)
        resume = got[2]
    if resume < end:
        batch.walk(resume, end, False, False, batch.keep, fallback)


def _split_point(batch: _Batch, start: int, end: int) -> int | None:
    """The first separator of the helper's part of [start, end), or None."""
    at = batch.next_separator(end - int((end - start) * HELPER_SHARE), end)
    return at if at < end else None


def _helper_part(batch: _Batch, start: int, end: int) -> tuple:
    """What the helper sends back: (True, records, where the parent resumes) for the messages
    of [start, end) up to the first that needs the reference, (False,) when the part is not
    for the batch path."""
    records: list[tuple] = []

    def stop(at: int, nxt: int, rest: bool) -> bool:
        raise _Stop(at)

    try:
        batch.walk(start, end, False, False, records.append, stop)
    except _NotBatchable:
        return (False,)
    except _Stop as stopped:
        return True, records, stopped.at
    return True, records, end


class _Helper:
    """A forked process scanning the second part of a mapped region, as this process's user,
    after login (docs/mbox.md, "Two parts at once"): a children.ForkedCall, which keeps
    nothing of the session's but the map and its pipe. When it fails in any way the parent
    scans that part itself."""

    def __init__(self, call: ForkedCall, split: int, end: int):
        self.call = call
        self.split = split
        self.end = end

    @classmethod
    def start(cls, batch: _Batch, split: int, end: int) -> "_Helper | None":
        call = ForkedCall.start(lambda: _helper_part(batch, split, end))
        return None if call is None else cls(call, split, end)

    def result(self):
        """The helper's answer, or None when it did not give a whole one in HELPER_TIMEOUT
        seconds (then it is ended)."""
        got = self.call.result(time.monotonic() + HELPER_TIMEOUT)
        if got == (False,) or (isinstance(got, tuple) and len(got) == 3 and got[0] is True
                               and isinstance(got[1], list) and isinstance(got[2], int)
                               and self.split <= got[2] <= self.end
                               and all(isinstance(r, tuple) and len(r) == RECORD_FIELDS
                                       for r in got[1])):
            return got
        return None

    def discard(self) -> None:
        self.call.discard()
