"""The real server on a spool that starts with empty lines before its first separator (a
delivery agent's padding, docs/mbox.md, "Padding before the first message"): the login is
served, STAT, LIST and RETR see the messages as they would without the padding, and the
first write-back leaves it out of the spool, in normal and in server mode; a spool with
anything else before its first separator is still refused, and left as it is."""

from __future__ import annotations

import os
import poplib

import pytest

from tests.helpers.sysusers import make_spool
from tests.server_harness import Site, login, wait_until

pytestmark = pytest.mark.timeout(120)

MESSAGES = [
    b"From a@b Wed Dec  2 05:53:22 1992\nSubject: one\nX-UIDL: first-message-uid-0001\n\n"
    b"body one\n.dot line\n\n",
    b"From c@d Wed Dec  2 05:53:23 1992\nSubject: two\n\nbody two\n\n",
    b"From e@f Thu Dec  3 01:02:03 1992\nSubject: three\n\nbody three\n\n",
]
MMDF_MESSAGES = [b"\x01\x01\x01\x01\nSubject: one\nX-UIDL: first-message-uid-0001\n\n"
                 b"body one\n.dot line\n\x01\x01\x01\x01\n",
                 b"\x01\x01\x01\x01\nSubject: two\n\nbody two\n\x01\x01\x01\x01\n"]
REFUSED = (b"-ERR [SYS/PERM] Unable to process From lines (envelopes), change recognition "
           b"modes or check for corrupted mail drop.")


def wire(message: bytes, uid: bytes) -> bytes:
    """What RETR's data is for one of the messages above, dot-stuffing undone: CRLF lines
    without the separator, the framing line or the trailer, and the X-UIDL line of `uid` at
    the end of the headers (where the first one's own is)."""
    lines = message.split(b"\n")[1:-2]     # the separator; the framing line (or trailer)
    blank = lines.index(b"")
    lines = ([line for line in lines[:blank] if not line.startswith(b"X-UIDL: ")]
             + [b"X-UIDL: " + uid] + lines[blank:])
    return b"".join(line + b"\r\n" for line in lines)


@pytest.fixture
def site_for(system_users, pam_service, world_tmp):
    sites = []

    def make(**options):
        site = Site(world_tmp, pam_service, update_status_headers=False, **options)
        sites.append(site)
        return site, system_users.create("pd")
    yield make
    for site in sites:
        site.close()


def assert_refused(server, user) -> None:
    """The login is refused for the spool's first line."""
    client = poplib.POP3(server.host, server.port, timeout=20)
    try:
        client.user(user.name)
        with pytest.raises(poplib.error_proto) as info:
            client.pass_(user.password)
        assert info.value.args[0] == REFUSED
    finally:
        client.close()


def spool_bytes(site, user) -> bytes:
    with open(os.path.join(site.spool_dir, user.name), "rb") as f:
        return f.read()


@pytest.mark.parametrize("pad", [b"\n\n", b"\r\n"], ids=["lf-lf", "crlf"])
@pytest.mark.parametrize("server_mode", [False, True], ids=["normal-mode", "server-mode"])
@pytest.mark.parametrize("mmdf", [False, True], ids=["from", "mmdf"])
def test_a_padded_spool_is_served_and_loses_its_padding_at_quit(site_for, pad, server_mode,
                                                                mmdf):
    messages = MMDF_MESSAGES if mmdf else MESSAGES
    site, user = site_for(server_mode=server_mode)
    make_spool(site.spool_dir, user, pad + b"".join(messages))
    server = site.server()
    client = login(server, user)
    try:
        count, octets = client.stat()
        sent = [b"".join(line + b"\r\n" for line in client.retr(n)[1])
                for n in range(1, len(messages) + 1)]
        listing = client.list()[1]
        uids = [line.split()[1] for line in client.uidl()[1]]
        client.dele(1)
        client.quit()
    finally:
        client.close()
    assert uids[0] == b"first-message-uid-0001"
    want = [wire(m, uid) for m, uid in zip(messages, uids)]    # (poplib undoes dot-stuffing)
    assert sent == want
    assert (count, octets) == (len(messages), sum(map(len, want)))
    assert listing == [b"%d %d" % (n, len(w)) for n, w in enumerate(want, 1)]
    # the kept messages byte for byte, the padding gone
    assert spool_bytes(site, user) == b"".join(messages[1:])
    mode = ("starts with empty lines; normal mode for this session" if server_mode
            else "starts with %d octets of empty lines before its first message; left out"
            % len(pad))
    assert any(user.name in text and mode in text for text in site.syslog.texts()), (
        site.syslog.texts())
    # the next session reads the rewritten spool (server mode: in place, its cache written)
    again = login(server, user)
    try:
        assert again.stat()[0] == len(messages) - 1
        assert b"".join(line + b"\r\n" for line in again.retr(1)[1]) == want[1]
        again.quit()
    finally:
        again.close()


@pytest.mark.parametrize("server_mode", [False, True], ids=["normal-mode", "server-mode"])
def test_a_padded_spool_whose_session_deletes_nothing_is_written_without_it(site_for,
                                                                             server_mode):
    site, user = site_for(server_mode=server_mode)
    make_spool(site.spool_dir, user, b"\n" + b"".join(MESSAGES))
    client = login(site.server(), user)
    try:
        assert client.stat()[0] == len(MESSAGES)
        client.quit()
    finally:
        client.close()
    assert spool_bytes(site, user) == b"".join(MESSAGES)


@pytest.mark.parametrize("server_mode", [False, True], ids=["normal-mode", "server-mode"])
def test_a_spool_of_empty_lines_only_is_served_empty_and_emptied(site_for, server_mode):
    """No message at all: the log says so (no "first message"), and the spool is emptied."""
    site, user = site_for(server_mode=server_mode)
    make_spool(site.spool_dir, user, b"\n\r\n\n")
    client = login(site.server(), user)
    try:
        assert client.stat() == (0, 0)
        client.quit()
    finally:
        client.close()
    assert spool_bytes(site, user) == b""
    lines = [text for text in site.syslog.texts() if user.name in text and "empty lines" in text]
    assert any("is 4 octets of empty lines and no message; left out" in text
               for text in lines), lines
    assert not any("first message" in text for text in lines), lines


@pytest.mark.parametrize("server_mode", [False, True], ids=["normal-mode", "server-mode"])
def test_a_spool_with_text_before_its_first_separator_is_still_refused(site_for,
                                                                        server_mode):
    site, user = site_for(server_mode=server_mode)
    content = b"\nxyz\n" + b"".join(MESSAGES)
    make_spool(site.spool_dir, user, content)
    server = site.server()
    for _ in range(2):                      # at every login
        assert_refused(server, user)
        # as before: normal mode moved the mail into the temporary drop, server mode read it
        # in place; not a byte left out or lost
        drop = os.path.join(site.spool_dir, f".{user.name}.pop")
        kept = b""
        if os.path.exists(drop):
            with open(drop, "rb") as f:
                kept = f.read()
        assert kept + spool_bytes(site, user) == content


def make_drop(site, user, content: bytes) -> str:
    """The temporary drop an older version left: the padded spool copied as it was (the scan
    then refused it, and the mail stayed there)."""
    path = os.path.join(site.spool_dir, f".{user.name}.pop")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, content)
        os.fchown(fd, user.uid, -1)
    finally:
        os.close(fd)
    return path


@pytest.mark.parametrize("quit_, update_on_abort", [(True, True), (False, True), (False, False)],
                         ids=["quit", "abort-update", "abort-restore"])
def test_a_padded_drop_left_by_an_older_version_is_served_and_written_back_without_it(
        site_for, quit_, update_on_abort):
    site, user = site_for(update_on_abort=update_on_abort)
    make_spool(site.spool_dir, user, MESSAGES[2])             # delivered since
    drop = make_drop(site, user, b"\r\n\n" + MESSAGES[0] + MESSAGES[1])
    client = login(site.server(), user)
    try:
        assert client.stat()[0] == 3
        if quit_:
            client.quit()
    finally:
        client.close()          # without QUIT: an update, or the drop put back (restore)
    want = b"".join(MESSAGES)
    wait_until(lambda: spool_bytes(site, user) == want, what="the write-back")  # (abort: async)
    assert not os.path.exists(drop) or os.path.getsize(drop) == 0


@pytest.mark.parametrize("mmdf", [False, True], ids=["from", "mmdf"])
def test_padded_mail_delivered_during_a_session_that_deletes_everything_loses_it(site_for,
                                                                                  mmdf):
    """Server mode: the image holds only the new mail, which starts the spool: its padding
    is left out before a separator of either format (the commit engine's append_spool)."""
    messages = MMDF_MESSAGES if mmdf else MESSAGES
    site, user = site_for(server_mode=True)
    spool = make_spool(site.spool_dir, user, messages[0])
    client = login(site.server(), user)
    try:
        client.dele(1)
        with open(spool, "ab") as f:              # a delivery agent that pads its mail
            f.write(b"\r\n\n" + messages[1])
        client.quit()
    finally:
        client.close()
    assert spool_bytes(site, user) == messages[1]


@pytest.mark.parametrize("server_mode", [False, True], ids=["normal-mode", "server-mode"])
@pytest.mark.parametrize("kept", [1, 0], ids=["one-kept", "none-kept"])
def test_mail_delivered_after_a_cr_cr_lf_line_loses_no_octet(site_for, server_mode, kept):
    """CR CR LF is no empty line (docs/mbox.md, "Separators"): mail delivered during a
    session that starts with one is copied whole after the kept messages (its `From ` line
    content, as the scan reads it); a spool that then starts with it is refused as before."""
    site, user = site_for(server_mode=server_mode)
    spool = make_spool(site.spool_dir, user, b"".join(MESSAGES[:2]))
    server = site.server()
    client = login(server, user)
    try:
        for n in range(kept + 1, 3):
            client.dele(n)
        with open(spool, "ab") as f:
            f.write(b"\r\r\n" + MESSAGES[2])
        client.quit()
    finally:
        client.close()
    assert spool_bytes(site, user) == b"".join(MESSAGES[:kept]) + b"\r\r\n" + MESSAGES[2]
    if not kept:
        assert_refused(server, user)


def test_a_cr_cr_lf_line_after_a_crashed_sessions_drop_is_kept(site_for):
    """Normal mode, a drop left by a crashed session: the spool's mail goes after it whole
    when it starts with CR CR LF, that line and the `From ` line after it content of the
    drop's last message, as a scan of the two together reads them."""
    site, user = site_for()
    make_spool(site.spool_dir, user, b"\r\r\n" + MESSAGES[2])
    make_drop(site, user, MESSAGES[0] + MESSAGES[1])
    client = login(site.server(), user)
    try:
        assert client.stat()[0] == 2
        client.quit()
    finally:
        client.close()
    assert spool_bytes(site, user) == MESSAGES[0] + MESSAGES[1] + b"\r\r\n" + MESSAGES[2]
