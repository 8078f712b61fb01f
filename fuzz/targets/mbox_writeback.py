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


def one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    options = scan_options(data[0])
    f = io.BytesIO(data[2:])
    messages = scan(f, **options)
    again = scan(io.BytesIO(written_back(f, messages, options)), **options) if messages else []
    assert len(again) == len(messages), (
        f"the write-back of {len(messages)} messages scans as {len(again)}")
    if options["update_status_headers"]:
        assert [m.uid for m in again] == [m.uid for m in messages], "UIDs changed at update"
