"""The update's write-back (qpopper/spool/mbox.py copy_for_update) on arbitrary spools: what
QUIT writes must scan as the same mailbox — as many messages (a written-back spool that
scans as more messages shows the user mail that was never delivered), each with its UID.
Input as for the mbox target; only MboxFormatError may escape the first scan, and the
write-back must always scan.
"""

from __future__ import annotations

import io

from fuzz.targets.mbox import scan_options, written_back
from qpopper.spool.mbox import MboxFormatError, scan

ALLOWED: tuple[type[BaseException], ...] = (MboxFormatError,)
MAX_LEN = 4096


def known_open(spool: bytes, options: dict) -> bool:
    """The open findings (docs/fuzzing.md, Findings; tests/unit/test_fuzz_findings.py, strict
    xfails), left out so that a run can look for others; remove once mbox.py is fixed:
    an MMDF spool whose last line is its separator without a line end, and a Content-Length
    header (when they are honoured) that the write-back's added lines can make come true."""
    first, _, _ = spool.partition(b"\n")
    mmdf_bare_end = (spool.startswith(b"\x01") and not spool.endswith(b"\n")
                     and spool.rpartition(b"\n")[2] == first)
    return mmdf_bare_end or (options["content_length"] and b"content-length:" in spool.lower())


def one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    options = scan_options(data[0])
    if known_open(data[2:], options):
        return
    f = io.BytesIO(data[2:])
    messages = scan(f, **options)
    again = scan(io.BytesIO(written_back(f, messages, options)), **options) if messages else []
    assert len(again) == len(messages), (
        f"the write-back of {len(messages)} messages scans as {len(again)}")
    if options["update_status_headers"]:
        assert [m.uid for m in again] == [m.uid for m in messages], "UIDs changed at update"
