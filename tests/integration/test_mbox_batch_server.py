"""The real server on a spool big enough for the batch scan's helper process (more than
mbox_batch.SPLIT_OCTETS): STAT, LIST and UIDL over a real connection say what the reference
scanner says of the same file, in server mode and in normal mode (docs/mbox.md, "The batch
scan", "Two parts at once")."""

from __future__ import annotations

import os
import random

import pytest

from qpopper.spool import mbox, mbox_batch
from tests.helpers.sysusers import make_spool
from tests.server_harness import Site, login

pytestmark = pytest.mark.timeout(180)


def big_spool(seed: int) -> bytes:
    rng = random.Random(seed)
    parts = []
    size = 0
    n = 0
    while size < mbox_batch.SPLIT_OCTETS * 3 // 2:
        n += 1
        head = b"Received: from a by b\n\tid %d\nSubject: message %d\n" % (n, n)
        if n % 3 == 0:
            head += b"X-UIDL: kept-%d-0123456789\nStatus: RO\n" % n
        body = b"".join(rng.choice([b"text line\n", b">From quoted\n", b".\n", b"\n",
                                    b"From not a separator\n", b"x" * 900 + b"\n"])
                        for _ in range(rng.randrange(1, 40)))
        part = b"From s%d@x Wed Dec  2 05:53:22 1992\n" % n + head + b"\n" + body + b"\n"
        parts.append(part)
        size += len(part)
    return b"".join(parts)


@pytest.mark.parametrize("server_mode", [True, False], ids=["server-mode", "normal-mode"])
def test_stat_list_uidl_are_the_reference_scans(server_mode, system_users, pam_service,
                                                world_tmp):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("the helper process needs two CPUs")
    user = system_users.create("bs")
    site = Site(world_tmp, pam_service, server_mode=server_mode)
    try:
        spool = make_spool(site.spool_dir, user, big_spool(7))
        with open(spool, "rb") as f:
            expected = [m for m in mbox.scan(f, batch=False) if not m.hidden]
        client = login(site.server(), user)
        try:
            count, octets = client.stat()
            listing = [line.split() for line in client.list()[1]]
            uids = [line.split() for line in client.uidl()[1]]
            client.quit()
        finally:
            client.close()
    finally:
        site.close()
    assert len(expected) > 1_000
    assert (count, octets) == (len(expected), sum(m.octets for m in expected))
    assert listing == [[b"%d" % n, b"%d" % m.octets] for n, m in enumerate(expected, 1)]
    assert uids == [[b"%d" % n, m.uid.encode()] for n, m in enumerate(expected, 1)]
