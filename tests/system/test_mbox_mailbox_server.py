"""One generated spool through the real server: RETR over poplib gives, for every message, the
bytes Python's mailbox.mbox reads for it (docs/mbox.md, "The framing line"); LIST and STAT
count exactly those. The pure comparison on 10,000 messages is
tests/unit/test_mbox_mailbox_differential.py.
"""

from __future__ import annotations

import mailbox
import poplib
import random

import pytest

from tests.helpers.mailbox_spools import from_spool, to_wire
from tests.helpers.sysusers import make_spool
from tests.server_harness import Site, login


@pytest.mark.root
@pytest.mark.timeout(120)
def test_a_spool_through_the_real_server_equals_mailbox(world_tmp, pam_service, system_users,
                                                       monkeypatch):
    """RETR through popper and poplib: the same bytes as mailbox.mbox's reading."""
    monkeypatch.setattr(poplib, "_MAXLINE", 8192)           # the long lines
    rng = random.Random(4242)
    raw, texts = from_spool(rng, 120)
    site = Site(world_tmp, pam_service)
    try:
        user = system_users.create()
        path = make_spool(site.spool_dir, user, raw)
        box = mailbox.mbox(path, create=False)
        try:
            reference = [box.get_bytes(key) for key in box.iterkeys()]
        finally:
            box.close()
        server = site.server()
        client = login(server, user)
        count, octets = client.stat()
        assert count == len(reference)
        sizes = [int(line.split()[1]) for line in client.list()[1]]
        total = 0
        for number, text in enumerate(reference, 1):
            _, lines, _ = client.retr(number)
            got = b"".join(line + b"\r\n" for line in lines)    # poplib undid the stuffing
            uidl = [line for line in lines if line.startswith(b"X-UIDL: ")]
            assert len(uidl) == 1
            assert sizes[number - 1] == len(got)
            assert got.replace(uidl[0] + b"\r\n", b"", 1) == to_wire(text), number
            total += len(got)
        assert octets == total
        client.rset()
        assert client.quit().startswith(b"+OK")
    except poplib.error_proto as exc:
        pytest.fail(f"server refused: {exc}")
    finally:
        site.close()
