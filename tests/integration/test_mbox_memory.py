"""Memory stays bounded whatever the spool size (issue 3: RETR a 200 MB message from a 500 MB
spool with a peak RSS under 100 MB). The scan and the RETR run in a child process that reports
its own peak RSS (VmHWM); the spool is written here with repeated blocks and removed afterwards."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tests.helpers.repo import REPO

MB = 1024 * 1024
PEAK_RSS_LIMIT_KB = 100 * 1024
LINE = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0NTY3\n"
DOT_LINE = b".a line that starts with a dot and is stuffed\n"
BLOCK = LINE * 13000 + DOT_LINE                    # about 1 MB, one dot line per block

CHILD = r"""
import json, sys
from qpopper.spool import mbox
sent = 0
writes = 0
def sink(data):
    global sent, writes
    sent += len(data)
    writes += 1
with open(sys.argv[1], "rb") as f:
    messages = mbox.scan(f)
    big = max(messages, key=lambda m: m.octets)
    mbox.send_message(f, big, sink)
status = open("/proc/self/status").read()
peak_kb = int(next(l.split()[1] for l in status.splitlines() if l.startswith("VmHWM:")))
print(json.dumps({"messages": len(messages), "octets": big.octets, "number": big.number,
                  "sent": sent, "writes": writes, "peak_kb": peak_kb}))
"""


def write_message(out, sender: str, subject: str, blocks: int) -> int:
    out.write(b"From %s Wed Nov 25 10:00:00 2026\nSubject: %s\n\n" % (sender.encode(),
                                                                     subject.encode()))
    for _ in range(blocks):
        out.write(BLOCK)
    out.write(b"\n")
    return blocks


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_retr_of_200mb_message_from_500mb_spool_stays_under_100mb_rss(tmp_path):
    spool = tmp_path / "spool"
    try:
        with open(spool, "wb", buffering=4 * MB) as out:
            for i in range(20):
                write_message(out, f"small{i}@x", f"small {i}", 1)
            write_message(out, "before@x", "150 MB before", 140)
            big_blocks = write_message(out, "big@x", "the 200 MB one", 200)
            write_message(out, "after@x", "150 MB after", 140)
        assert spool.stat().st_size > 480 * MB
        child = subprocess.run([sys.executable, "-c", CHILD, str(spool)], capture_output=True,
                               text=True, timeout=110, cwd=REPO)
        assert child.returncode == 0, child.stderr[-2000:]
        report = json.loads(child.stdout)
    finally:
        spool.unlink(missing_ok=True)
    header = b"Subject: the 200 MB one\n"
    expected_octets = (len(header) + 1 + 2                       # header line, blank line
                       + big_blocks * (len(BLOCK) + BLOCK.count(b"\n"))       # body (its framing
                       # line before the next From_ line is not content: docs/mbox.md)
                       + len(b"X-UIDL: \r\n") + 20)
    assert report["messages"] == 20 + 3 and report["number"] == 22
    assert report["octets"] == expected_octets
    assert report["sent"] == expected_octets + big_blocks         # one stuffed dot per block
    assert report["writes"] < report["sent"] // (32 * 1024)      # big writes, not per line
    print("child report:", report)
    assert report["peak_kb"] < PEAK_RSS_LIMIT_KB, report
