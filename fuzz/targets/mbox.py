"""The mbox scanner (qpopper/spool/mbox.py) on arbitrary spool bytes: scan with each
recognition mode, then RETR and TOP of every message, then the write-back of every message
(its round trip is mbox_writeback's).

Only MboxFormatError (a spool that does not start with an envelope) may escape. Invariants:
- messages lie in order inside the file, with distinct UIDs;
- RETR's data is CRLF lines and, dot-stuffing undone, exactly the message's octets (what
  LIST and STAT report);
- TOP's data is CRLF lines too;
- the batch scan gives the reference scanner's Message records, field for field, with the
  compiled pass (qpopper/spool/_scan.c, when built) and with the pure-Python one; the two
  passes list the same separator candidates of the whole spool, and the compiled one's LF
  counts are right (docs/mbox.md, "The batch scan");
- a spool that starts with empty lines before its first separator scans as the spool without
  them, every offset moved by their length (docs/mbox.md, "Padding before the first
  message"), and the two passes list the same candidates from there;
- from a real file, the empty lines the commit leaves out before a first `From ` line
  (empty_lines_before_from) are that padding before a From_ separator, and none otherwise:
  one rule for an empty line (LF or CRLF alone; CR CR LF is none).

First byte: bit 0 update-status-headers, bit 1 old-style UIDs, bit 2 uw-kludge, bit 3
Content-Length honoured, bit 4 a real file (pread) instead of memory, bit 5 the batch scan in
two parts at once (a forked helper scans the second) and in parts of 256 octets (messages of
128 or more left to the reference); second byte: TOP's body lines. The rest is the spool.
"""

from __future__ import annotations

import dataclasses
import io
import tempfile

from qpopper.spool import mbox_batch
from qpopper.spool.mbox import (Message, MboxFormatError, copy_for_update,
                                empty_lines_before_from, leading_padding, scan, send_message)
from tests.helpers.scan_passes import (assert_same_candidates, assert_same_header_block,
                                       assert_same_plain_from_lines)

ALLOWED: tuple[type[BaseException], ...] = (MboxFormatError,)
MAX_LEN = 8192
SPLIT_OCTETS = mbox_batch.SPLIT_OCTETS
CHUNK_OCTETS = mbox_batch.CHUNK_OCTETS
BIG_MESSAGE_OCTETS = mbox_batch.BIG_MESSAGE_OCTETS
FIELDS = [field.name for field in dataclasses.fields(Message)]
OFFSETS = {"offset", "end", "content_start", "header_end", "body_start", "body_end",
           "trailer_end", "uidl_insert_at"}
OFFSET_PAIRS = {"stripped", "uidl_lines", "status_lines", "stale_content_length"}
PASSES = [p for p in (mbox_batch.compiled_candidates, mbox_batch.python_candidates) if p]
"""The batch path's pass over each part: compiled (when built) and pure Python."""


def wire_lines_ok(data: bytes) -> bool:
    """Non-empty CRLF lines: every LF follows a CR and the data ends with CRLF."""
    return data.endswith(b"\r\n") and data.count(b"\n") == data.count(b"\r\n")


def unstuffed_length(data: bytes) -> int:
    """Length before dot-stuffing: each line starting with `.` got one more."""
    return len(data) - data.startswith(b".") - data.count(b"\n.")


def scan_options(flags: int) -> dict:
    return dict(update_status_headers=bool(flags & 1), old_style_uid=bool(flags & 2),
                uw_kludge=bool(flags & 4), content_length=bool(flags & 8))


def one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    flags, top_lines, spool = data[0], data[1], data[2:]
    same_candidates(spool)
    small = bool(flags & 32)
    mbox_batch.SPLIT_OCTETS = 0 if small else SPLIT_OCTETS
    mbox_batch.CHUNK_OCTETS = 256 if small else CHUNK_OCTETS
    mbox_batch.BIG_MESSAGE_OCTETS = 128 if small else BIG_MESSAGE_OCTETS
    padding = leading_padding(lambda at, n: spool[at:at + n], len(spool))
    if padding:             # (after the split is set: bit 5 holds for the padded scans too)
        same_candidates(spool, padding)
        same_as_without_padding(spool, padding, scan_options(flags))
    if flags & 16:
        with tempfile.TemporaryFile() as f:
            f.write(spool)
            f.flush()
            same_leave_out(f.fileno(), spool, padding)
            check_spool(f, len(spool), top_lines, scan_options(flags))
    else:
        check_spool(io.BytesIO(spool), len(spool), top_lines, scan_options(flags))


def written_back(f, messages, options: dict) -> bytes:
    """The spool as the update at QUIT writes it (odd-numbered messages retrieved)."""
    out = io.BytesIO()
    for msg in messages:
        copy_for_update(f, msg, out.write, retrieved=bool(msg.number % 2),
                        update_status_headers=options["update_status_headers"])
    return out.getvalue()


def rows(messages) -> list[list]:
    return [[getattr(m, name) for name in FIELDS] for m in messages]


def batch_scans(f, options: dict) -> list[Message]:
    """The batch scan with each pass there is, all equal; the first's messages."""
    got = []
    for candidates in PASSES:
        mbox_batch.candidates = candidates
        try:
            got.append(scan(f, **options))
        finally:
            mbox_batch.candidates = PASSES[0]
    for other in got[1:]:
        assert rows(other) == rows(got[0]), "compiled and pure-Python batch scans differ"
    return got[0]


def same_candidates(spool: bytes, start: int = 0) -> None:
    """The compiled pass lists what the pure-Python one does over the spool from `start`, and
    the LFs before each candidate; and each message's compiled header block is the
    pure-Python one."""
    if len(PASSES) == 2:
        assert_same_candidates(spool, start, len(spool))
        found = mbox_batch.python_candidates(spool, start, len(spool))
        if found is not None:                  # each separator and header block, both ways
            ats, eols, _ = found
            assert_same_plain_from_lines(spool, ats, eols, mbox_batch._MAX_LINE)
            for at, eol, nxt in zip(ats, eols, ats[1:] + [len(spool)]):
                assert_same_header_block(spool, at, eol, nxt)


def moved(m: Message, by: int) -> list:
    """m's row with every offset moved by `by`."""
    row = []
    for name in FIELDS:
        value = getattr(m, name)
        if name in OFFSETS:
            value += by
        elif name in OFFSET_PAIRS:
            value = tuple((a + by, b + by) for a, b in value)
        row.append(value)
    return row


def same_as_without_padding(spool: bytes, padding: int, options: dict) -> None:
    """The padded spool's messages are those of the spool without its padding, moved."""
    try:
        want = [moved(m, padding) for m in scan(io.BytesIO(spool[padding:]), **options)]
    except MboxFormatError:
        raise AssertionError("padding passed over before a spool that is refused") from None
    assert rows(scan(io.BytesIO(spool), **options)) == want, "padding changed the messages"
    assert rows(scan(io.BytesIO(spool), batch=False, **options)) == want, (
        "padding changed the reference scan's messages")


def same_leave_out(fd: int, spool: bytes, padding: int) -> None:
    """The commit leaves out before a first `From ` line what the scan passes over as padding,
    and nothing before anything else."""
    skip = empty_lines_before_from(fd, 0, len(spool))
    want = padding if spool[padding:padding + 5] == b"From " else 0
    assert skip == want, f"the commit leaves out {skip} octets, the padding is {want}"


def check_spool(f, size: int, top_lines: int, options: dict) -> None:
    messages = batch_scans(f, options)
    reference = scan(f, batch=False, **options)
    assert rows(messages) == rows(reference), "batch scan and reference scan differ"
    at = 0
    for msg in messages:
        assert at <= msg.offset <= msg.content_start <= msg.body_end <= msg.end <= size, msg
        at = msg.end
    uids = [m.uid for m in messages]
    assert len(set(uids)) == len(uids), f"duplicate UIDs {uids}"
    for msg in messages:
        retr = bytearray()
        send_message(f, msg, retr.extend)
        assert wire_lines_ok(retr), f"RETR {msg.number}: {bytes(retr[-60:])!r}"
        assert unstuffed_length(retr) == msg.octets, (
            f"RETR {msg.number}: {unstuffed_length(retr)} octets sent, LIST says {msg.octets}")
        top = bytearray()
        send_message(f, msg, top.extend, body_lines=top_lines)
        assert wire_lines_ok(top), f"TOP {msg.number} {top_lines}: {bytes(top[-60:])!r}"
    written_back(f, messages, options)
