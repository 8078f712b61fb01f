"""A From_ spool whose last message is not closed (no final newline, or no empty line after
it: a delivery cut short, a writer that ends mail without one) and a server-mode session that
writes nothing back (update-status-headers off, or an abort): the mail a delivery agent
appends afterwards must stay a message of its own. procmail, like other agents, appends its
`From ` line right after whatever the file ends with; where that is not an empty line, the
line is no separator and the new mail becomes the tail of the last message, under the UID
the client already has, so a client that leaves mail on the server never fetches it. The
login closes the end as it does an MMDF spool's (docs/mbox.md, "What write-back writes").
"""

from __future__ import annotations

import poplib

import pytest

from tests.helpers.sysusers import make_spool
from tests.server_harness import Site, login

FIRST = (b"From one@example.org Wed Nov 25 10:00:00 2026\nSubject: one\n"
         b"Message-Id: <one@example.org>\n\nfirst\n\n")
LAST = (b"From two@example.org Wed Nov 25 10:05:00 2026\nSubject: two\n"
        b"Message-Id: <two@example.org>\n\nsecond")
# what procmail appends (its From_ line with two spaces, the message, an empty line)
NEW = (b"From new@example.org  Wed Nov 25 11:00:00 2026\nSubject: new\n"
       b"Message-Id: <new@example.org>\n\nthird\n\n")
ENDS = {"no final newline": b"", "no empty line": b"\n", "bare CR": b"\r"}
CLOSER = {"no final newline": b"\n\n", "no empty line": b"\n", "bare CR": b"\n\n"}


def wire(client, n):
    return b"".join(line + b"\r\n" for line in client.retr(n)[1])


def uids(client):
    return [line.split()[1] for line in client.uidl()[1]]


@pytest.mark.root
@pytest.mark.timeout(120)
@pytest.mark.parametrize("end", list(ENDS))
@pytest.mark.parametrize("how", ["quit", "abort"])
def test_mail_delivered_after_an_unclosed_last_message_stays_its_own(
        world_tmp, pam_service, system_users, end, how):
    site = Site(world_tmp, pam_service, server_mode=True, update_status_headers=False,
                update_on_abort=False)
    try:
        user = system_users.create()
        path = make_spool(site.spool_dir, user, FIRST + LAST + ENDS[end])
        server = site.server()
        client = login(server, user)
        seen = uids(client)
        served = [wire(client, 1), wire(client, 2)]
        assert served[1].endswith(b"\r\nsecond\r\n")
        if how == "quit":
            assert client.quit().startswith(b"+OK")
        else:
            client.close()                  # no QUIT: the session ends without an update
            site.syslog.wait_for(rf".*Timing for {user.name}@.*")
        with open(path, "ab") as f:         # the delivery agent, after the session
            f.write(NEW)
        again = login(server, user)
        try:
            assert again.stat()[0] == 3
            now = uids(again)
            assert now[:2] == seen and now[2] not in seen
            assert [wire(again, 1), wire(again, 2)] == served
            assert wire(again, 3).endswith(b"\r\n\r\nthird\r\n")
            again.quit()
        finally:
            again.close()
        with open(path, "rb") as f:         # closed by the login, as the write-back closes it
            assert f.read() == FIRST + LAST + ENDS[end] + CLOSER[end] + NEW
    except poplib.error_proto as exc:
        pytest.fail(f"server refused: {exc}")
    finally:
        site.close()
