"""The update's write-back (qpopper/spool/mbox.py copy_for_update) on arbitrary spools: what
QUIT writes must scan as the same mailbox — as many messages as were kept (a written-back
spool that scans as more messages shows the user mail that was never delivered, fewer has
merged two), each with its UID (with update-status-headers a visible one's even after a
deletion: it is written as its X-UIDL line), and each with the bytes RETR sent before (with
update-status-headers, Status lines aside). Input as for the mbox target, but the second byte says which messages the
session deleted: message n when bit (n - 1) % 8 is set (a hidden one is always kept). Only
MboxFormatError may escape the first scan, and the write-back must always scan.
"""

from __future__ import annotations

import io

from fuzz.targets.mbox import scan_options, written_back
from qpopper.spool.mbox import MboxFormatError, scan, send_message

ALLOWED: tuple[type[BaseException], ...] = (MboxFormatError,)
MAX_LEN = 4096


def sent(f, messages) -> list[bytes]:
    """What RETR sends of each message, less the X-UIDL line it inserts (its UID's)."""
    out = []
    for m in messages:
        data = io.BytesIO()
        send_message(f, m, data.write)
        out.append(data.getvalue().replace(m.uidl_line, b"", 1))
    return out


def one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    options = scan_options(data[0])
    deleted = data[1]
    f = io.BytesIO(data[2:])
    messages = scan(f, **options)
    kept = [m for m in messages if m.hidden or not deleted >> (m.number - 1) % 8 & 1]
    g = io.BytesIO(written_back(f, kept, options))
    again = scan(g, **options) if kept else []
    assert len(again) == len(kept), (
        f"the write-back of {len(kept)} messages scans as {len(again)}")
    if len(kept) == len(messages):
        # (a deletion may change the UID of a message that shared its headers or X-UIDL
        # value with one deleted: docs/mbox.md, "X-UIDL and Status")
        assert [m.uid for m in again] == [m.uid for m in messages], "UIDs changed at update"
    if options["update_status_headers"]:
        # each visible kept message's UID is written as its X-UIDL line, deletions or not
        assert [m.uid for m in again if not m.hidden] == [m.uid for m in kept if not m.hidden], (
            "UIDs of kept messages changed at update")
        assert list(map(without_status, sent(g, again))) == list(map(without_status,
                                                                     sent(f, kept))), (
            "RETR sends other bytes after the update (Status lines aside)")
    else:
        assert sent(g, again) == sent(f, kept), "RETR sends other bytes after the update"


def without_status(data: bytes) -> bytes:
    """RETR's bytes less the Status header lines, which the update writes or replaces."""
    lines = data.split(b"\r\n")
    blank = lines.index(b"") if b"" in lines else len(lines)      # the end of the headers
    return b"\r\n".join([line for line in lines[:blank] if line[:7].lower() != b"status:"]
                        + lines[blank:])            # (the scan finds Status lines in any case)
