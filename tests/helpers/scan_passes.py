"""The batch scan's two passes held to each other (docs/mbox.md, "The batch scan"): used by
tests/unit/test_mbox_scan_accel.py and the `mbox` fuzz target."""

from __future__ import annotations

from qpopper.spool import mbox_batch


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
