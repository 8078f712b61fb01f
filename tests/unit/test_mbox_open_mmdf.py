"""An MMDF message still open (its trailer missing) when mail is appended after it: the mail
that follows stays a message of its own, whole, and the open message keeps its content, in
normal mode, in server mode with and without the cache, and for bulletins (docs/mbox.md,
"What write-back writes")."""

from __future__ import annotations

import errno
import io
import os
import random
import signal

import pytest

from qpopper import bulletins, limits
from qpopper.auth import Login
from qpopper.config import Config
from qpopper.spool import mbox, mbox_format, server_mode
from qpopper.spool.mbox_format import mmdf_ends_open
from qpopper.spool.maildrop import Maildrop
from qpopper.spool.paths import SpoolPaths
from tests.helpers.bulletin_cases import HOST, STAMP, bulletin_text
from tests.helpers.spoolcheck import append, dies_in_child, killer_at_step, retr, spool_in

USER = "alice"
SEP = b"\x01\x01\x01\x01\n"
pytestmark = pytest.mark.timeout(60)

CLOSED = SEP + b"Subject: 1\n\none\n" + SEP
OPEN_ENDS = {"line": b"two, open\n", "empty line": b"two, open\n\n",
             "no final LF": b"two, open", "headers only": b""}
NEW_MAIL = SEP + b"Subject: 3\n\nthree\n" + SEP


def open_spool(end: str) -> bytes:
    if end == "headers only":
        return CLOSED + SEP + b"Subject: 2\n"
    return CLOSED + SEP + b"Subject: 2\n\n" + OPEN_ENDS[end]


def make(tmp_path, content: bytes, **options):
    return spool_in(tmp_path, USER, content, **options)


def open_drop(cfg, paths) -> Maildrop:
    return Maildrop.open(cfg, paths, USER, lock_step_s=0.05)


def served(data: bytes) -> list[tuple[bytes, bytes]]:
    """(Subject line, body) of every message a fresh scan of `data` finds."""
    f = io.BytesIO(data)
    out = []
    for m in mbox.scan(f):
        headers = data[m.content_start:m.header_end]
        subject = [line for line in headers.split(b"\n") if line.startswith(b"Subject:")]
        out.append((subject[0] if subject else b"", data[m.body_start:m.body_end]))
    return out


def wire(data: bytes) -> list[tuple[str, int, bytes]]:
    """(UID, octets, RETR data) of every message a fresh scan of `data` finds, without the
    `Status: U` line a write-back adds."""
    f = io.BytesIO(data)
    out = []
    for m in mbox.scan(f):
        parts = []
        mbox.send_message(f, m, parts.append)
        data = b"".join(parts)
        status = b"Status: U\r\n"         # what the write-back adds (update-status-headers)
        blank = data.find(b"\r\n\r\n")
        head = data if blank == -1 else data[:blank + 2]
        if status in head:
            data = data.replace(status, b"", 1)
        out.append((m.uid, m.octets - (len(status) if status in head else 0), data))
    return out


def expected(end: str, deleted: set[int]) -> list[tuple[bytes, bytes]]:
    second = OPEN_ENDS[end]
    if end == "no final LF":
        second += b"\n"                 # the write-back ends the last line
    every = [(b"Subject: 1", b"one\n"), (b"Subject: 2", second), (b"Subject: 3", b"three\n")]
    return [m for i, m in enumerate(every) if i not in deleted]


def spool_bytes(paths) -> bytes:
    with open(paths.spool, "rb") as f:
        return f.read()


def end_session(drop, how: str, deleted: set[int]) -> None:
    """QUIT (with `deleted`) or an abort, then close."""
    try:
        if how == "quit":
            drop.update(deleted, set())
        else:
            drop.restore()
    finally:
        drop.close()


SESSIONS = [("quit", set()), ("quit", {0}), ("quit", {1}), ("restore", set())]


@pytest.mark.parametrize("end", list(OPEN_ENDS))
@pytest.mark.parametrize("how,deleted", SESSIONS)
@pytest.mark.parametrize("mode", ["normal", "server", "server without update-status-headers"])
def test_mail_appended_during_a_session_after_an_open_message(tmp_path, mode, how, deleted,
                                                              end):
    options = {}
    if mode != "normal":
        options["server_mode"] = True
    if mode.endswith("update-status-headers"):
        options["update_status_headers"] = False
    cfg, paths = make(tmp_path, open_spool(end), **options)
    drop = open_drop(cfg, paths)
    try:
        assert len(drop.messages) == 2
        before = [(m.uid, m.octets, retr(drop, i)) for i, m in enumerate(drop.messages)]
        append(paths.spool, NEW_MAIL)
    finally:
        end_session(drop, how, deleted)
    after = spool_bytes(paths)
    assert served(after) == expected(end, deleted)
    # every kept message and the new mail as RETR and LIST served them, byte for byte
    kept = [m for i, m in enumerate(before) if i not in deleted]
    assert wire(after) == kept + wire(NEW_MAIL)


@pytest.mark.parametrize("end", list(OPEN_ENDS))
@pytest.mark.parametrize("update_status_headers", [True, False])
def test_mail_appended_between_sessions_after_an_open_message_with_the_cache(
        tmp_path, end, update_status_headers):
    """The first login closed the open message on disk (and cached it so): the mail appended
    after it is served as its own message by the next session, which trusts the cache."""
    cfg, paths = make(tmp_path, open_spool(end), server_mode=True,
                      update_status_headers=update_status_headers)
    drop = open_drop(cfg, paths)
    drop.update(set(), set())       # X-UIDL and Status written (when on); the cache stored
    drop.close()
    assert os.path.exists(paths.cache)
    if update_status_headers:       # the write-back closed the open message
        assert served(spool_bytes(paths)) == expected(end, {2})
        return
    append(paths.spool, NEW_MAIL)
    drop = open_drop(cfg, paths)
    try:
        assert len(drop.messages) == 3
        assert drop.scan_region[0] > 0          # the cache was used
        before = [(m.uid, m.octets, retr(drop, i)) for i, m in enumerate(drop.messages)]
        drop.update(set(), set())
    finally:
        drop.close()
    assert served(spool_bytes(paths)) == expected(end, set())
    assert wire(spool_bytes(paths)) == before


@pytest.mark.parametrize("end", list(OPEN_ENDS))
def test_the_scan_knows_an_open_last_message(end):
    messages = mbox.scan(io.BytesIO(open_spool(end)))
    assert [mbox.ends_open(messages[:i]) for i in (0, 1, 2)] == [False, False, True]
    closed = open_spool(end) + (SEP if open_spool(end).endswith(b"\n") else b"\n" + SEP)
    assert not mbox.ends_open(mbox.scan(io.BytesIO(closed)))


@pytest.mark.parametrize("end", list(OPEN_ENDS))
def test_padding_closes_an_open_message_the_scan_knows(tmp_path, end):
    data = open_spool(end)
    path = tmp_path / "spool"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        known = mbox.padding_after(fd, len(data), open_message=True)
        counted = mbox.padding_after(fd, len(data), open_message=None)
    finally:
        os.close(fd)
    assert known == counted
    assert served(data + known + NEW_MAIL) == expected(end, set())


@pytest.mark.parametrize("end", list(OPEN_ENDS) + ["closed", "junk after a trailer"])
def test_a_bulletin_after_an_open_message_is_a_message_of_its_own(tmp_path, end):
    """Bulletins are appended before the session's scan, as a delivery agent would: the
    separator lines are counted to tell an open last message from junk after a trailer."""
    spool = {"closed": CLOSED, "junk after a trailer": CLOSED + b"junk"}.get(end) or open_spool(end)
    spool_dir, bulldir, home = tmp_path / "spool", tmp_path / "bulls", tmp_path / "home"
    for d in (spool_dir, bulldir, home):
        d.mkdir()
    (bulldir / "1.b").write_bytes(bulletin_text("bulletin"))
    cfg = Config.defaults().replace(spool_dir=str(spool_dir), bulldir=str(bulldir))
    paths = SpoolPaths.for_user(cfg, USER, str(home))
    with open(paths.spool, "wb") as f:
        f.write(spool)
    login = Login(USER, os.geteuid(), os.getegid(), str(home), "USER")
    assert bulletins.deliver(cfg, login, paths, HOST, lambda *_: None, lock_step_s=0.05,
                             clock=lambda: STAMP) == 1
    got = served(spool_bytes(paths))
    before = served(spool + b"\n" if end == "no final LF" else spool)
    assert got[:-1] == before
    assert got[-1] == (b"Subject: bulletin", b"Body.\n")


def random_mmdf(rng) -> bytes:
    sep = rng.choice([SEP, b"\x01\x01\x01\x01\r\n", b"\x01 MMDF\n"])
    tokens = [sep, sep[:-1], SEP, b"\n", b"x", b"Subject: s\n", b"\x01\x01\x01\x01x\n", b"\r\n"]
    return rng.choice([sep, sep[:-1]]) + b"".join(
        rng.choice(tokens) for _ in range(rng.randrange(12)))


@pytest.mark.parametrize("chunk", [limits.COPY_CHUNK_OCTETS, 1, 2, 7])
def test_counting_separator_lines_agrees_with_the_scan(tmp_path, monkeypatch, chunk):
    """mmdf_ends_open (no scan: bulletins, a crashed session's drop) says what the scan says,
    whatever the chunks it reads the file in; and the one end rule (mmdf_end) gives the same
    state from the count as from the scan."""
    monkeypatch.setattr(limits, "COPY_CHUNK_OCTETS", chunk)
    rng = random.Random(4155 + chunk)
    path = tmp_path / "spool"
    for _ in range(1500):
        data = random_mmdf(rng)
        path.write_bytes(data)
        sep = mbox_format.mmdf_separator(data)
        fd = os.open(path, os.O_RDONLY)
        try:
            counted = mmdf_ends_open(fd, len(data), sep)
            counted_end = mbox_format.mmdf_end(fd, len(data), sep)
            monkeypatch.undo()
            messages = mbox.scan(io.BytesIO(data))
            assert counted == mbox.ends_open(messages), data
            assert counted_end == mbox_format.mmdf_end(fd, len(data), sep, messages), data
        finally:
            os.close(fd)
        monkeypatch.setattr(limits, "COPY_CHUNK_OCTETS", chunk)


@pytest.mark.parametrize("end", list(OPEN_ENDS))
def test_mail_absorbed_after_a_crashed_sessions_open_message(tmp_path, end):
    """A crashed session's temporary drop ends with an open message; the spool's mail is
    moved in after it at the next login (no scan yet: the separator lines are counted)."""
    cfg, paths = make(tmp_path, NEW_MAIL, server_mode=True)
    with open(paths.temp_drop, "wb") as f:
        f.write(open_spool(end))
    os.chmod(paths.temp_drop, 0o600)
    drop = open_drop(cfg, paths)
    try:
        assert not drop.server_mode and len(drop.messages) == 3
        drop.update(set(), set())
    finally:
        drop.close()
    assert served(spool_bytes(paths)) == expected(end, set())


def test_a_file_of_only_a_separator_without_its_lf(tmp_path):
    """`^A^A^A^A` alone: one message, empty and open; what follows it gets a line of its own
    and the trailer first, and the write-back ends the separator and the trailer with LF."""
    data = SEP[:-1]
    path = tmp_path / "spool"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert mbox.padding_after(fd, len(data), open_message=None) == b"\n" + SEP
    finally:
        os.close(fd)
    f, out = io.BytesIO(data), io.BytesIO()
    for m in mbox.scan(f):
        mbox.copy_for_update(f, m, out.write, retrieved=False, update_status_headers=False)
    assert out.getvalue() == SEP + SEP
    assert len(served(out.getvalue() + NEW_MAIL)) == 2


def test_a_separator_line_of_max_spool_line_octets_is_not_one():
    long_sep = b"\x01" * (limits.MAX_SPOOL_LINE_OCTETS - 1) + b"\n"
    with pytest.raises(mbox.MboxFormatError):
        mbox.scan(io.BytesIO(long_sep + b"Subject: s\n\nbody\n" + long_sep))
    assert mbox_format.mmdf_separator(long_sep) is None
    assert len(mbox.scan(io.BytesIO(long_sep[1:] + b"Subject: s\n\nbody\n" + long_sep[1:]))) == 1


# --- the login closes the spool's end (server mode) -------------------------------------------


def deliver_bulletin(tmp_path, cfg) -> int:
    bulldir, home = tmp_path / "bulls", tmp_path / "home"
    for d in (bulldir, home):
        d.mkdir(exist_ok=True)
    (bulldir / "1.b").write_bytes(bulletin_text("bulletin"))
    cfg = cfg.replace(bulldir=str(bulldir))
    paths = SpoolPaths.for_user(cfg, USER, str(home))
    login = Login(USER, os.geteuid(), os.getegid(), str(home), "USER")
    return bulletins.deliver(cfg, login, paths, HOST, lambda *_: None, lock_step_s=0.05,
                             clock=lambda: STAMP)


BULLETIN = (b"Subject: bulletin", b"Body.\n")


@pytest.mark.parametrize("end", list(OPEN_ENDS))
@pytest.mark.parametrize("during", [False, True])
@pytest.mark.parametrize("update_status_headers", [True, False])
def test_a_bulletin_after_an_open_message_a_server_mode_session_saw(
        tmp_path, end, during, update_status_headers):
    """The bulletin is delivered while a session that saw the open message runs, or between
    it and the next session, which trusts its cache: every message is served, the bulletin
    as its own."""
    cfg, paths = make(tmp_path, open_spool(end), server_mode=True,
                      update_status_headers=update_status_headers)
    drop = open_drop(cfg, paths)
    try:
        if during:
            assert deliver_bulletin(tmp_path, cfg) == 1
        drop.update(set(), set())
    finally:
        drop.close()
    if not during:
        assert deliver_bulletin(tmp_path, cfg) == 1
    want = expected(end, {2}) + [BULLETIN]
    assert served(spool_bytes(paths)) == want
    drop = open_drop(cfg, paths)
    try:
        assert drop.server_mode and len(drop.messages) == 3
        drop.update(set(), set())
    finally:
        drop.close()
    assert served(spool_bytes(paths)) == want


@pytest.mark.parametrize("end", list(OPEN_ENDS))
@pytest.mark.parametrize("update_status_headers", [True, False])
def test_the_login_closes_an_open_message_and_what_it_serves_stays(tmp_path, end,
                                                                   update_status_headers):
    """The trailer is appended at login: the UIDs and octets the session serves are those a
    fresh scan gives before and after."""
    cfg, paths = make(tmp_path, open_spool(end), server_mode=True,
                      update_status_headers=update_status_headers)
    drop = open_drop(cfg, paths)
    try:
        closed = spool_bytes(paths)
        before = [(m.uid, m.octets, retr(drop, i)) for i, m in enumerate(drop.messages)]
        drop.restore()
    finally:
        drop.close()
    assert closed == open_spool(end) + (SEP if open_spool(end).endswith(b"\n") else b"\n" + SEP)
    assert before == wire(open_spool(end)) == wire(closed)
    assert served(closed + NEW_MAIL) == expected(end, set())


@pytest.mark.parametrize("step", ["open:close-spool-end", "open:fsync-spool", "session"])
def test_a_session_killed_after_it_saw_an_open_message(tmp_path, step):
    """kill -9 of the login or of the session after it: mail a delivery agent appends next is
    a message of its own (the spool closed at login), or the spool is as it was."""
    cfg, paths = make(tmp_path, open_spool("line"), server_mode=True)

    def run():
        hook = killer_at_step(step) if step != "session" else None
        Maildrop.open(cfg, paths, USER, step_hook=hook, lock_step_s=0.05)
        os.kill(os.getpid(), signal.SIGKILL)        # the session dies after its login
    assert dies_in_child(run)
    if step == "open:close-spool-end":
        assert spool_bytes(paths) == open_spool("line")
        return
    append(paths.spool, NEW_MAIL)
    drop = open_drop(cfg, paths)
    try:
        assert len(drop.messages) == 3
        drop.update(set(), set())
    finally:
        drop.close()
    assert served(spool_bytes(paths)) == expected("line", set())


# --- a separator line cut by the end after a trailer is junk ----------------------------------

CRLF_SEP = b"\x01\x01\x01\x01\r\n"
CUT_JUNK = {"LF": (CLOSED + SEP[:-1], NEW_MAIL),
            "CR in an LF file": (CLOSED + SEP[:-1] + b"\r", NEW_MAIL),
            "CRLF": (CRLF_SEP + b"Subject: 1\r\n\r\none\r\n" + CRLF_SEP + CRLF_SEP[:-1],
                     CRLF_SEP + b"Subject: 3\r\n\r\nthree\r\n" + CRLF_SEP)}


@pytest.mark.parametrize("shape", list(CUT_JUNK))
@pytest.mark.parametrize("how", ["quit", "restore"])
@pytest.mark.parametrize("mode", ["normal", "server", "server without update-status-headers"])
def test_mail_after_a_separator_cut_by_the_end_after_a_trailer(tmp_path, shape, how, mode):
    """A delivery cut after its separator's first octets is junk: mail written after it (by
    the write-back, or by a delivery agent after a server-mode login) is its own message."""
    spool, new_mail = CUT_JUNK[shape]
    options = {"server_mode": mode != "normal",
               "update_status_headers": not mode.endswith("update-status-headers")}
    cfg, paths = make(tmp_path, spool, **options)
    drop = open_drop(cfg, paths)
    try:
        before = [(m.uid, m.octets, retr(drop, i)) for i, m in enumerate(drop.messages)]
        append(paths.spool, new_mail)
        drop.update(set(), set()) if how == "quit" else drop.restore()
    finally:
        drop.close()
    assert wire(spool_bytes(paths)) == before + wire(new_mail)


@pytest.mark.parametrize("shape", list(CUT_JUNK))
def test_a_bulletin_after_a_separator_cut_by_the_end_after_a_trailer(tmp_path, shape):
    spool, _ = CUT_JUNK[shape]
    cfg, paths = make(tmp_path, spool)
    assert deliver_bulletin(tmp_path, cfg) == 1
    got = served(spool_bytes(paths))
    assert got[:-1] == served(spool) and got[-1][0] == BULLETIN[0]


@pytest.mark.parametrize("seed", range(4))
def test_mail_after_random_mmdf_files_is_its_own(tmp_path, seed):
    """Whatever a random MMDF file ends with, the padding (counted, or from the scan) keeps
    its messages as they were served and makes the mail after it a message of its own."""
    rng = random.Random(7300 + seed)
    path = tmp_path / "spool"
    for _ in range(400):
        data = random_mmdf(rng)
        line = mbox.separator_line(mbox_format.mmdf_separator(data))
        new_mail = line + b"Subject: 3\n\nthree\n" + line
        path.write_bytes(data)
        messages = mbox.scan(io.BytesIO(data))
        fd = os.open(path, os.O_RDONLY)
        try:
            counted = mbox.padding_after(fd, len(data), open_message=None)
            closing = mbox.closing_octets(fd, len(data), messages)
        finally:
            os.close(fd)
        path.write_bytes(data + closing)
        fd = os.open(path, os.O_RDONLY)
        try:
            closing += mbox.padding_after(fd, len(data + closing), open_message=False)
        finally:
            os.close(fd)
        for pad in (counted, closing):
            got = wire(data + pad + new_mail)
            assert got[:-1] == wire(data), (data, pad)
            assert got[-1][1:] == wire(new_mail)[0][1:], (data, pad)


def test_a_full_disk_when_the_login_closes_an_open_message(tmp_path, monkeypatch):
    """The login's append fails part way: it is cut off again, and the session goes on with
    the end open (the closing is a precaution; an over-quota user must still delete mail)."""
    def one_octet_then_full(fd, data, offset):
        os.pwrite(fd, data[:1], offset)
        raise OSError(errno.ENOSPC, "No space left on device")
    cfg, paths = make(tmp_path, open_spool("line"), server_mode=True)
    monkeypatch.setattr(server_mode, "pwrite_all", one_octet_then_full)
    drop = open_drop(cfg, paths)
    try:
        assert drop.messages and drop.server_mode
        drop.restore()
    finally:
        drop.close()
    assert spool_bytes(paths) == open_spool("line")


FCNTL_PROBE = ("import fcntl, os, sys\n"
               "fd = os.open(sys.argv[1], os.O_WRONLY)\n"
               "try:\n"
               "    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
               "except OSError:\n"
               "    sys.exit(3)\n")


def test_the_login_holds_the_fcntl_lock_while_it_closes_the_end(tmp_path):
    """The scan's mmap closes a duplicate of the spool's descriptor, which drops the fcntl
    lock: taken again before the append, so an agent that locks with fcntl alone (Postfix's
    mailbox_delivery_lock = fcntl) waits, instead of writing where the trailer goes."""
    import subprocess
    import sys
    cfg, paths = make(tmp_path, open_spool("line"), server_mode=True)
    probes = []

    def hook(step):
        if step in ("open:close-spool-end", "open:fsync-spool"):
            probes.append(subprocess.run([sys.executable, "-c", FCNTL_PROBE, paths.spool],
                                         timeout=30).returncode)
    Maildrop.open(cfg, paths, USER, step_hook=hook, lock_step_s=0.05).close()
    assert probes == [3, 3]                 # both steps, the lock held by the login


def test_mail_appended_before_the_lock_is_taken_again_is_left_as_it_is(tmp_path, monkeypatch):
    """Mail an fcntl-only agent appended between the scan and the fcntl lock taken again:
    the login closes nothing (the end it saw is no longer the file's), never writing over
    the new mail nor cutting it off."""
    cfg, paths = make(tmp_path, open_spool("no final LF"), server_mode=True)
    new_mail = SEP + b"Subject: 3\n\nthree\n" + SEP
    real = mbox.closing_octets

    def then_an_agent_appends(fd, size, messages):
        pad = real(fd, size, messages)
        append(paths.spool, new_mail)
        return pad
    monkeypatch.setattr(mbox, "closing_octets", then_an_agent_appends)
    open_drop(cfg, paths).close()
    assert spool_bytes(paths) == open_spool("no final LF") + new_mail


# The write-backs that copy mail delivered during the session: server mode's abort writes
# nothing, and normal mode with the drop's only message deleted writes no spool.
WRITE_BACKS = ([("normal", "quit", set()), ("normal", "restore", set())]
               + [(mode, "quit", deleted) for mode in ("server", "server with fast-update")
                  for deleted in (set(), {0})])


@pytest.mark.parametrize("end", list(OPEN_ENDS))
@pytest.mark.parametrize("mode,how,deleted", WRITE_BACKS)
def test_mail_left_open_during_a_session_is_closed_by_the_write_back(tmp_path, mode, how,
                                                                      deleted, end):
    """Mail delivered during the session ends with an open message; the write-back copies it
    after the kept messages and closes it (its separator lines counted), so a delivery before
    the next login is a message of its own (docs/mbox.md, "What write-back writes")."""
    options = {}
    if mode != "normal":
        options["server_mode"] = True
        options["fast_update"] = mode.endswith("fast-update")
    cfg, paths = make(tmp_path, CLOSED, **options)
    drop = open_drop(cfg, paths)
    try:
        assert drop.server_mode == (mode != "normal")
        append(paths.spool, open_spool(end)[len(CLOSED):])
    finally:
        end_session(drop, how, deleted)
    assert not mbox.ends_open(mbox.scan(io.BytesIO(spool_bytes(paths))))
    append(paths.spool, NEW_MAIL)                   # before the next login
    assert served(spool_bytes(paths)) == expected(end, deleted)


CUT_TRAILER = {"LF": (CLOSED[:-1], NEW_MAIL),
               "CRLF": (CRLF_SEP + b"Subject: 1\r\n\r\none\r\n" + CRLF_SEP[:-1],
                        CRLF_SEP + b"Subject: 3\r\n\r\nthree\r\n" + CRLF_SEP)}


@pytest.mark.parametrize("shape", list(CUT_TRAILER))
@pytest.mark.parametrize("how", ["quit", "restore"])
@pytest.mark.parametrize("mode", ["normal", "server"])
def test_mail_during_a_session_after_a_trailer_cut_by_the_end(tmp_path, shape, how, mode):
    """The last trailer lacks its LF (it still closes: docs/mbox.md, "MMDF"), and mail comes
    during the session. Normal mode's restore puts the drop back with that LF (a scan's
    closing, not only an open message's trailer): padded as junk instead, the trailer would
    stop being one and the new mail's separator would close message 1."""
    spool, new_mail = CUT_TRAILER[shape]
    cfg, paths = make(tmp_path, spool, server_mode=mode == "server")
    drop = open_drop(cfg, paths)
    try:
        before = [(m.uid, m.octets, retr(drop, i)) for i, m in enumerate(drop.messages)]
        append(paths.spool, new_mail)
    finally:
        end_session(drop, how, set())
    assert wire(spool_bytes(paths)) == before + wire(new_mail)
