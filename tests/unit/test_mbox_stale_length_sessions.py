"""A Content-Length the scan did not honour must not swallow mail delivered after a session
that wrote nothing or put the mail back as it was: server mode's QUIT without DELE (status
headers off, or already written), an abort in either mode. And the server-mode cache must
not scan the new mail on its own when such a length may reach it (docs/mbox.md, "What
write-back writes"; docs/maildrop.md, "Server mode: the update")."""

from __future__ import annotations

import os

import pytest

from qpopper.spool import cache, mbox
from qpopper.spool.maildrop import Maildrop
from tests.helpers.messages import from_line
from tests.helpers.spoolcheck import retr, spool_in

USER = "alice"
PSEUDO_HEADERS = (b"Subject: DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA\n"
                  b"X-IMAP: 1 2\n")
NEW_MAIL = from_line(9) + b"Subject: new mail\n\n" + b"the new mail\n" * 5 + b"\n"
pytestmark = pytest.mark.timeout(60)


def message(n: int, body: bytes, headers: bytes = b"") -> bytes:
    return from_line(n) + b"Subject: %d\n" % n + headers + b"\n" + body + b"\n"


def past_the_end(*after: bytes, headers: bytes = b"") -> bytes:
    """Message 1, whose Content-Length points past the end of the file (not honoured) and
    comes true once NEW_MAIL is delivered after `after`."""
    length = len(b"body 1\n\n") + sum(map(len, after)) + len(NEW_MAIL) - 2
    return message(1, b"body 1\n", headers + b"Content-Length: %d\n" % length) + b"".join(after)


def setup(tmp_path, spool: bytes, **options):
    return spool_in(tmp_path, USER, spool, **options)


def view(cfg, paths) -> list[tuple[str, bytes]]:
    drop = Maildrop.open(cfg, paths, USER, lock_step_s=0.05)
    try:
        return [(m.uid, retr(drop, i)) for i, m in enumerate(drop.messages)]
    finally:
        drop.close()


def deliver(paths) -> None:
    with open(paths.spool, "ab") as f:
        f.write(NEW_MAIL)


def full_view(cfg, paths) -> list[tuple[str, bytes]]:
    if os.path.exists(paths.cache):
        os.unlink(paths.cache)
    return view(cfg, paths)


def assert_new_mail_apart(before, after) -> None:
    assert after[:len(before)] == before and len(after) == len(before) + 1
    assert after[-1][1].endswith(b"\r\n\r\n" + b"the new mail\r\n" * 5)


@pytest.mark.parametrize("status, headers", [
    (False, b""),
    (True, b"X-UIDL: 0123456789abcdefgh\nStatus: RO\n")])     # nothing else to write
def test_server_mode_quit_without_dele_drops_the_stale_length(tmp_path, status, headers):
    spool = past_the_end(headers=headers)
    cfg, paths = setup(tmp_path, spool, server_mode=True, update_status_headers=status)
    drop = Maildrop.open(cfg, paths, USER, lock_step_s=0.05)
    before = [(m.uid, retr(drop, i)) for i, m in enumerate(drop.messages)]
    assert drop.messages[0].stale_content_length
    drop.update(set(), set())
    drop.close()
    deliver(paths)
    assert_new_mail_apart(before, view(cfg, paths))
    assert_new_mail_apart(before, full_view(cfg, paths))


def test_server_mode_quit_drops_the_hidden_message_s_stale_length(tmp_path):
    spool = past_the_end(message(2, b"body 2\n"), headers=PSEUDO_HEADERS)
    cfg, paths = setup(tmp_path, spool, server_mode=True, update_status_headers=False,
                       uw_kluge=True)
    drop = Maildrop.open(cfg, paths, USER, lock_step_s=0.05)
    assert drop.hidden_count == 1
    before = [(m.uid, retr(drop, i)) for i, m in enumerate(drop.messages)]
    drop.update(set(), set())
    drop.close()
    deliver(paths)
    got = full_view(cfg, paths)
    assert_new_mail_apart(before, got)


@pytest.mark.parametrize("server_mode", [False, True])
def test_an_abort_drops_the_stale_length(tmp_path, server_mode):
    """Normal mode puts the drop back, server mode wrote nothing: either way the line goes,
    the rest of the mail is put back as it was."""
    second = message(2, b"body 2\n")
    spool = past_the_end(second)
    cfg, paths = setup(tmp_path, spool, server_mode=server_mode, update_status_headers=False)
    drop = Maildrop.open(cfg, paths, USER, lock_step_s=0.05)
    before = [(m.uid, retr(drop, i)) for i, m in enumerate(drop.messages)]
    drop.restore()
    drop.close()
    with open(paths.spool, "rb") as f:
        data = f.read()
    assert b"Content-Length" not in data and data.endswith(second)
    deliver(paths)
    assert_new_mail_apart(before, view(cfg, paths))
    assert_new_mail_apart(before, full_view(cfg, paths))


def test_the_cache_is_not_trusted_when_a_stale_length_may_reach_new_mail(tmp_path):
    """Message 1 (not the last) says a length past the end of the cached region: the mail
    appended after it brings the end of the file there, and a full scan honours it."""
    spool = past_the_end(message(2, b"body 2\n"))
    cfg, paths = setup(tmp_path, spool, server_mode=True, update_status_headers=False)
    options = cache.scan_options(cfg)
    with open(paths.spool, "rb") as f:
        known = mbox.scan(f, **options)
        assert [bool(m.stale_content_length) for m in known] == [True, False]
        cache.store(paths.cache, USER, cfg, cache.spool_state(f.fileno()), known,
                    lambda step: None)
    deliver(paths)
    got = view(cfg, paths)
    assert got == full_view(cfg, paths)


def test_the_cache_is_trusted_when_a_stale_length_cannot_reach_new_mail(tmp_path):
    """A length that points inside the cached region can never come true by an append."""
    second = message(2, b"x" * 200 + b"\n")
    spool = message(1, b"body 1\n", b"Content-Length: 100\n") + second
    cfg, paths = setup(tmp_path, spool, server_mode=True, update_status_headers=False)
    with open(paths.spool, "rb") as f:
        known = mbox.scan(f, **cache.scan_options(cfg))
        cache.store(paths.cache, USER, cfg, cache.spool_state(f.fileno()), known,
                    lambda step: None)
    deliver(paths)
    drop = Maildrop.open(cfg, paths, USER, lock_step_s=0.05)
    try:
        assert drop.scan_region == (len(spool), len(spool) + len(NEW_MAIL))
        assert len(drop.messages) == 3
    finally:
        drop.close()
