"""A Content-Length the scan did not honour must not come true after the write-back: with
update-status-headers off (and for uw-kludge's hidden message) the write-back copies a
message unchanged, and deleted neighbours, CRLF framing lines written as LF or headers added
to the messages after it could bring a separator or the end of the file to the stale value,
and the next scan would merge two messages (docs/mbox.md, "What write-back writes").
After any write-back a fresh scan must see the messages the session kept, with the same
UIDs and RETR bytes, and the new mail appended after them as it was delivered."""

from __future__ import annotations

import io
import os
import random

import pytest

from qpopper.config import Config
from qpopper.spool import mbox
from qpopper.spool.maildrop import Maildrop
from qpopper.spool.paths import SpoolPaths
from tests.helpers.messages import from_line
from tests.helpers.spoolcheck import retr

USER = "alice"
PSEUDO_HEADERS = (b"Subject: DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA\n"
                  b"X-IMAP: 1 2\n")
pytestmark = pytest.mark.timeout(60)


def crlf(data: bytes) -> bytes:
    return data.replace(b"\n", b"\r\n")


def sent(f, msg: mbox.Message) -> bytes:
    out = io.BytesIO()
    mbox.send_message(f, msg, out.write)
    return out.getvalue()


def seen(f, messages) -> list[tuple[str, bool, bytes]]:
    """What a client (and uw-kludge) sees of each message: UID, hidden, RETR's bytes."""
    return [(m.uid, m.hidden, sent(f, m)) for m in messages]


def written_back(spool: bytes, keep, *, status: bool = False, uw: bool = False,
                 new_mail: bytes = b"") -> tuple[list, list]:
    """(what the session saw of the kept messages and the new mail, what a scan of the
    written-back file sees): messages numbered in `keep` are kept, the rest deleted, and
    `new_mail` is appended after them as the update does."""
    options = dict(update_status_headers=status, uw_kludge=uw)
    f, out = io.BytesIO(spool), io.BytesIO()
    kept = [m for m in mbox.scan(f, **options) if m.number in keep]
    for m in kept:
        mbox.copy_for_update(f, m, out.write, retrieved=False, update_status_headers=status)
    data = out.getvalue()
    if new_mail:
        data += mbox.separator_padding(data[-8:]) + new_mail
    g, h = io.BytesIO(data), io.BytesIO(new_mail)
    before = seen(f, kept) + (seen(h, mbox.scan(h, **options)) if new_mail else [])
    if status:              # the Status and X-UIDL lines added change RETR's bytes
        before = [(uid, hidden, None) for uid, hidden, _ in before]
        return before, [(m.uid, m.hidden, None) for m in mbox.scan(g, **options)]
    return before, seen(g, mbox.scan(g, **options))


def message(n: int, body: bytes, headers: bytes = b"") -> bytes:
    return from_line(n) + b"Subject: %d\n" % n + headers + b"\n" + body + b"\n"


# --- the shapes, one by one -----------------------------------------------------------------------
def test_a_deleted_message_does_not_bring_a_later_boundary_to_a_stale_length():
    """Message 1's length points into message 2 (not honoured); with message 2 deleted, the
    same octet is the end of message 3's content."""
    third, fourth = message(3, b"body 3\n"), message(4, b"body 4\n")
    length = len(b"body 1\n\n") + len(third) - 2       # to the end of message 3's content
    first = message(1, b"body 1\n", b"Content-Length: %d\n" % length)
    spool = first + message(2, b"x" * 300 + b"\n") + third + fourth
    assert mbox.scan(io.BytesIO(spool))[0].stale_content_length
    before, after = written_back(spool, {1, 3, 4})
    assert after == before and len(after) == 3


@pytest.mark.parametrize("off", range(-27, -23))
def test_a_crlf_framing_line_written_as_lf_does_not_make_a_stale_length_true(off):
    """A CRLF spool: the length ends 26 octets before the end of the file, not honoured; the
    write-back's LF framing line after message 1 brings the end one octet nearer."""
    second = crlf(message(2, b"body 2\n"))
    length = len(crlf(b"body 1\n\n")) + len(second) - 4 + off
    spool = crlf(message(1, b"body 1\n", b"Content-Length: %d\n" % length)) + second
    before, after = written_back(spool, {1, 2})
    assert after == before


def test_the_hidden_message_s_stale_length_does_not_swallow_mail_with_status_headers():
    """uw-kludge's folder message is written back unchanged even with update-status-headers;
    the X-UIDL and Status lines added to message 3 bring its end to the stale length."""
    third, fourth = message(3, b"body 3\n"), message(4, b"body 4\n")
    added = len(b"X-UIDL: \n") + 20 + len(b"Status: U\n")
    length = len(b"pseudo\n\n") + len(third) + added - 2
    first = message(1, b"pseudo\n", PSEUDO_HEADERS + b"Content-Length: %d\n" % length)
    spool = first + message(2, b"x" * 300 + b"\n") + third + fourth
    before, after = written_back(spool, {1, 3, 4}, status=True, uw=True)
    assert after == before and after[0][1]


def test_new_mail_after_the_kept_messages_is_not_swallowed():
    new_mail = message(5, b"new mail\n")
    third = message(3, b"body 3\n")
    length = len(b"body 1\n\n") + len(third) + len(new_mail) - 2
    first = message(1, b"body 1\n", b"Content-Length: %d\n" % length)
    spool = first + message(2, b"x" * 300 + b"\n") + third
    before, after = written_back(spool, {1, 3}, new_mail=new_mail)
    assert after == before and len(after) == 3


# --- what the write-back writes for them ----------------------------------------------------------
def copy(spool: bytes) -> tuple[list, bytes]:
    f, out = io.BytesIO(spool), io.BytesIO()
    messages = mbox.scan(f, update_status_headers=False)
    for m in messages:
        mbox.copy_for_update(f, m, out.write, retrieved=True, update_status_headers=False)
    return messages, out.getvalue()


@pytest.mark.parametrize("length, honoured", [(b"Content-Length: 7\n", True),
                                              (b"Content-Length: abc\n", False), (b"", None)])
def test_a_message_with_an_honoured_or_no_length_is_copied_unchanged(length, honoured):
    """Honoured (7 is the body's length), a value that is no number (it can never come
    true), none: the message is written as it was."""
    spool = message(1, b"body 1\n", length) + message(2, b"body 2\n")
    messages, out = copy(spool)
    assert bool(messages[0].stale_content_length) == (honoured is False)
    assert out == spool


def test_a_stale_length_goes_and_an_x_uidl_line_keeps_the_uid():
    """The Content-Length lines feed the UID hash: without them the message says its UID in
    an X-UIDL line, after its separator, as the write-back with status headers writes it."""
    spool = (message(1, b"body 1\n", b"Content-Length: 300\nContent-Length: 7\n")
             + message(2, b"body 2\n"))
    messages, out = copy(spool)
    uid = messages[0].uid.encode()
    assert out == (from_line(1) + b"X-UIDL: " + uid + b"\nSubject: 1\n\nbody 1\n\n"
                   + message(2, b"body 2\n"))
    assert [m.uid for m in mbox.scan(io.BytesIO(out))] == [m.uid for m in messages]


def test_a_uid_from_an_x_uidl_line_needs_no_other():
    spool = message(1, b"body 1\n", b"X-UIDL: 0123456789abcdef\nContent-Length: 300\n")
    _, out = copy(spool)
    assert out == message(1, b"body 1\n", b"X-UIDL: 0123456789abcdef\n")


# --- a session's update, normal and server mode --------------------------------------------------
@pytest.mark.parametrize("server_mode", [False, True])
def test_a_session_s_update_keeps_the_messages_and_the_new_mail_apart(tmp_path, server_mode):
    new_mail = message(5, b"new mail\n")
    third = message(3, b"body 3\n")
    length = len(b"body 1\n\n") + len(third) + len(new_mail) - 2
    spool = (message(1, b"body 1\n", b"Content-Length: %d\n" % length)
             + message(2, b"x" * 300 + b"\n") + third)
    cfg = Config.defaults().replace(spool_dir=str(tmp_path), update_status_headers=False,
                                    server_mode=server_mode)
    paths = SpoolPaths.for_user(cfg, USER, None)
    with open(paths.spool, "wb") as f:
        f.write(spool)
    os.chmod(paths.spool, 0o660)

    def view():
        drop = Maildrop.open(cfg, paths, USER, lock_step_s=0.05)
        try:
            return [(m.uid, retr(drop, i)) for i, m in enumerate(drop.messages)]
        finally:
            drop.close()

    before = view()
    drop = Maildrop.open(cfg, paths, USER, lock_step_s=0.05)
    with open(paths.spool, "ab") as f:
        f.write(new_mail)
    drop.update({1}, set())
    drop.close()
    after = view()
    assert after[:2] == [before[0], before[2]] and len(after) == 3
    assert after[2][1].endswith(b"\r\n\r\nnew mail\r\n")
    if server_mode:         # the cache says what a scan says
        os.unlink(paths.cache)
        assert view() == after


# --- random spools --------------------------------------------------------------------------------
BODY_LINES = [b"line", b"", b"", b"x" * 30, b">From q", b"From here", b"Status: R",
              b"Content-Length: 3", b" cont", b"From b%d@c Wed Dec  2 05:53:22 1992"]
HEADER_LINES = [b"Date: x", b"Status: R", b"Status: O", b" folded", b"X-UIDL: short",
                b"X-UIDL: uid-%d-abcdefghijk", b"Received: r"]


def random_message(rng: random.Random, n: int, crlf_spool: bool) -> bytes:
    """Message n (its UID-hashed lines its own): LF or CRLF lines, mostly as the spool's,
    X-UIDL and Status lines, Content-Length lines right, off by a few octets, far off,
    not a number."""
    usual = b"\r\n" if crlf_spool != (rng.random() < 0.2) else b"\n"
    other = b"\n" if usual == b"\r\n" else b"\r\n"

    def eol() -> bytes:
        return usual if rng.random() < 0.9 else other

    headers = [b"Subject: %d" % n + eol()]
    for line in HEADER_LINES:
        if rng.random() < 0.15:
            headers.insert(rng.randrange(len(headers) + 1), line.replace(b"%d", b"%d" % n) + eol())
    body = b"".join(rng.choice(BODY_LINES).replace(b"%d", b"%d-%d" % (n, k)) + eol()
                    for k in range(rng.randrange(7)))
    for _ in range(rng.choice([0, 1, 1, 1, 2])):
        right = len(body)
        value = max(0, rng.choice([right, right, right + rng.randrange(-30, 31),
                                   right + rng.randrange(400), rng.randrange(300)]))
        text = b"%d" % value if rng.random() < 0.9 else b"abc"
        headers.insert(rng.randrange(len(headers) + 1),
                       b"Content-Length:" + rng.choice([b" ", b"", b"\t"]) + text + eol())
    blank = eol() if rng.random() < 0.95 else b""
    framing = eol() if rng.random() < 0.9 else b""
    separator = from_line(n).replace(b"\n", eol())
    return separator + b"".join(headers) + blank + body + framing


def random_case(seed: int) -> tuple[list, list]:
    rng = random.Random(seed)
    crlf_spool = rng.random() < 0.3
    status, uw = rng.random() < 0.3, rng.random() < 0.2
    count = rng.randrange(1, 9)
    spool = b"".join(random_message(rng, n, crlf_spool) for n in range(1, count + 1))
    if uw and rng.random() < 0.5:
        spool = message(0, b"pseudo\n", PSEUDO_HEADERS + b"Content-Length: 300\n") + spool
    if rng.random() < 0.15:
        spool = spool.rstrip(b"\r\n")
    new_mail = b""
    if rng.random() < 0.3:
        new_mail = b"".join(random_message(rng, n, crlf_spool) for n in range(100, 102))
    keep = {n for n in range(1, 20) if rng.random() < 0.6} | ({1} if uw else set())
    return written_back(spool, keep, status=status, uw=uw, new_mail=new_mail)


def test_random_spools_scan_alike_after_the_write_back():
    """Seeded: 77 of these 1,500 cases merged messages or changed UIDs before the fix (docs/fuzzing.md,
    "Findings")."""
    wrong = [seed for seed in range(1500) if (lambda got: got[0] != got[1])(random_case(seed))]
    assert wrong == []
