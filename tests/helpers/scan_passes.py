"""The batch scan's two passes held to each other (docs/mbox.md, "The batch scan"): used by
tests/unit/test_mbox_scan_accel.py and the `mbox` fuzz target."""

from __future__ import annotations

from qpopper import limits
from qpopper.spool import mbox_batch
from qpopper.spool.mbox_format import is_from_line


def assert_same_candidates(data, start: int, end: int) -> None:
    """The compiled pass lists what the pure-Python one does over data[start:end], and its LF
    counts (before each candidate, then before end) are right. Needs the compiled pass."""
    want = mbox_batch.python_candidates(data, start, end)
    got = mbox_batch.compiled_candidates(data, start, end)
    if want is None:
        assert got is None, (data[start:end], got)
        return
    assert got is not None, data[start:end]
    ats, eols, lfs = got
    assert (ats, eols) == want[:2], data[start:end]
    assert lfs == [bytes(data[start:at]).count(b"\n") for at in ats + [end]], data[start:end]


def assert_same_header_block(data, at: int, eol: int, stop: int) -> None:
    """The compiled header block is the pure-Python one, old- and new-style, for the message
    whose separator line is data[at:eol]. Needs the compiled pass."""
    for continuations in (True, False):
        want = mbox_batch.python_header_block(data, at, eol, stop, continuations)
        got = mbox_batch.compiled_header_block(data, at, eol, stop, continuations)
        assert got == want, (bytes(data[at:stop]), continuations, got, want)


def assert_same_plain_from_lines(data, ats: list, eols: list, max_octets: int) -> None:
    """The compiled separator shape check says what the pure-Python one does for each line,
    and never more than is_from_line. Needs the compiled pass."""
    want = mbox_batch.python_plain_from_lines(data, ats, eols, max_octets)
    got = mbox_batch.compiled_plain_from_lines(data, ats, eols, max_octets)
    assert got == want, [(bytes(data[a:e]), g, w) for a, e, g, w in zip(ats, eols, got, want)
                         if g != w][:5]
    for at, eol, flag in zip(ats, eols, got):
        assert not flag or max_octets > limits.MAX_SPOOL_LINE_OCTETS or is_from_line(
            bytes(data[at:eol])), bytes(data[at:eol])
