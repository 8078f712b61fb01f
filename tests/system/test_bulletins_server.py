"""Bulletins end to end through the real server with real users (root only): delivered once
after the privilege drop, files owned by the user, popbulldir, the SQLite bulletin database
shared by users of the mail group, the [SYS/TEMP] refusal, a session killed between the
append and the record (the next login has the bulletin exactly once), bulletins waiting
while a crashed update's journal is there, and an MMDF site's empty spool (spool-format)."""

from __future__ import annotations

import grp
import os
import poplib
import re
import socket
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest

from qpopper import bulletin_records
from tests.helpers.bulletin_cases import octets_read, post_huge_broken
from tests.helpers.sysusers import make_spool
from tests.helpers.messages import mbox, mbox_of
from tests.server_harness import POPPER, Site, free_port, login, processes_of

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

BULLETIN = (b"From qpop Wed Nov  9 13:31:08 1994\n"
            b"Date: Wed, 9 Nov 1994 13:31:07 -0800 (PST)\n"
            b"To: user@localhost\n"
            b"From: POP Administrator <postmaster@localhost>\n"
            b"Subject: Example bulletin\n"
            b"Status: RO\n"
            b"\n"
            b"The system will be down for maintenance\n"
            b"between 12 Midnight and 6 A.M. on November 30.\n")
UIDL_RE = re.compile(rb"\d{10}\.001")


def make_bulldir(root: str) -> str:
    """root-owned and not writable by users, as the manual asks; bulletins 0644."""
    path = os.path.join(root, "bulls")
    os.mkdir(path, 0o755)
    with open(os.path.join(path, "00001.Example_bulletin"), "wb") as f:
        f.write(BULLETIN)
    return path


def mail_dir(root: str, name: str, mode: int) -> str:
    path = os.path.join(root, name)
    os.mkdir(path)
    os.chown(path, 0, grp.getgrnam("mail").gr_gid)
    os.chmod(path, mode)
    return path


def subjects_and_uids(client) -> list[tuple[bytes, bytes]]:
    out = []
    for n in range(1, client.stat()[0] + 1):
        lines = client.retr(n)[1]
        subject = next(l for l in lines if l.startswith(b"Subject: "))[9:]
        out.append((subject, client.uidl(n).split()[2]))
    return out


def subjects_after_login(server, user) -> list[bytes]:
    """One session: the subjects of the messages it offers, then QUIT."""
    client = login(server, user)
    try:
        subjects = [s for s, _ in subjects_and_uids(client)]
        client.quit()
    finally:
        client.close()
    return subjects


@pytest.fixture
def site(world_tmp, pam_service):
    bulldir = make_bulldir(world_tmp)
    s = Site(world_tmp, pam_service, bulldir=bulldir, statistics=False, timing=False)
    yield s
    s.close()


def test_user_gets_the_bulletin_once_with_to_rewritten(site, system_users):
    user = system_users.create("bu")
    make_spool(site.spool_dir, user, mbox(("hello", "ordinary mail")))
    server = site.server()
    client = login(server, user)
    try:
        assert client.stat()[0] == 2
        lines = client.retr(2)[1]
        assert b"Subject: Example bulletin" in lines
        assert f"To: {user.name}@{socket.gethostname()}".encode() in lines
        assert b"To: user@localhost" not in lines
        assert not any(l.startswith(b"Status:") for l in lines)
        uid = client.uidl(2).split()[2]
        assert UIDL_RE.fullmatch(uid), uid
        client.quit()
    finally:
        client.close()
    popbull = os.path.join(user.home, ".popbull")
    st = os.stat(popbull)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (user.uid, 0o600)   # written as the user
    with open(popbull, "rb") as f:
        assert f.read() == b"1\n"

    client = login(server, user)                # again: not twice, same UID
    try:
        again = subjects_and_uids(client)
        assert [s for s, _ in again] == [b"hello", b"Example bulletin"]
        assert again[1][1] == uid
        client.dele(2)
        client.quit()
    finally:
        client.close()
    client = login(server, user)
    try:
        assert client.stat()[0] == 1            # deleted stays deleted
        client.quit()
    finally:
        client.close()


def test_popbulldir_record_is_created_by_the_user(site, system_users):
    popbulldir = mail_dir(site.root, "popbull", 0o3770)
    with open(site.config, "a") as f:
        f.write(f'set popbulldir = "{popbulldir}"\n')
    user = system_users.create("bp")
    server = site.server()
    client = login(server, user)
    try:
        assert client.stat()[0] == 1
        client.quit()
    finally:
        client.close()
    st = os.stat(os.path.join(popbulldir, user.name + ".popbull"))
    assert st.st_uid == user.uid
    assert not os.path.exists(os.path.join(user.home, ".popbull"))


def test_a_huge_broken_newest_bulletin_costs_no_login_a_whole_read(site, system_users):
    """A broken newest bulletin (no From line) is tried at every login, under the spool
    lock: its head decides, and the 16 MiB file (sparse) is never read whole; the logins go
    on and the bulletin below it goes out once."""
    post_huge_broken(Path(site.root, "bulls", "00002.Broken"))
    with open(site.config, "a") as f:
        f.write("set max-bulletins = 5\n")
    user = system_users.create("bh")
    server = site.server()
    for _ in range(2):
        client = login(server, user)
        try:
            [session] = processes_of(server, user.uid)
            assert octets_read(session) < 4 * 1024 * 1024
            assert [s for s, _ in subjects_and_uids(client)] == [b"Example bulletin"]
            client.quit()
        finally:
            client.close()
    with open(os.path.join(user.home, ".popbull"), "rb") as f:
        assert f.read() == b"1\n"


def test_bulletin_database_shared_by_users_of_the_mail_group(site, system_users):
    mail_dir(os.path.join(site.root, "bulls"), bulletin_records.BULLDB_DIR, 0o2770)
    with open(site.config, "a") as f:
        f.write("set bulldb\n")
    alice, bob = system_users.create("ba"), system_users.create("bb")
    server = site.server()
    for user in (alice, bob, alice):
        client = login(server, user)
        try:
            assert client.stat()[0] == 1        # the bulletin, once
            client.quit()
        finally:
            client.close()
    path = os.path.join(site.root, "bulls", bulletin_records.BULLDB_DIR, bulletin_records.BULLDB_FILE)
    st = os.stat(path)
    assert st.st_gid == grp.getgrnam("mail").gr_gid and stat.S_IMODE(st.st_mode) == 0o660
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT user, last, pending FROM seen ORDER BY user").fetchall()
    finally:
        db.close()
    assert rows == sorted([(alice.name, 1, None), (bob.name, 1, None)])
    assert not os.path.exists(os.path.join(alice.home, ".popbull"))


def check_config(config: str) -> subprocess.CompletedProcess:
    return subprocess.run([POPPER, "--check-config", "-f", config], capture_output=True,
                          text=True, timeout=60)


def test_start_up_and_check_config_make_the_missing_bulldb_directory(site):
    with open(site.config, "a") as f:
        f.write("set bulldb\n")
    bulldb = os.path.join(site.root, "bulls", bulletin_records.BULLDB_DIR)
    result = check_config(site.config)
    assert result.returncode == 0, result.stderr
    st = os.lstat(bulldb)
    assert (st.st_uid, st.st_gid) == (0, grp.getgrnam("mail").gr_gid)
    assert stat.S_IMODE(st.st_mode) == 0o2770
    os.rmdir(bulldb)
    site.server()                                        # the master makes it just the same
    assert stat.S_IMODE(os.lstat(bulldb).st_mode) == 0o2770


def test_check_config_and_start_up_refuse_an_unusable_bulldb_with_one_line(site):
    """What --check-config refuses the server refuses to start with: the same line."""
    with open(site.config, "a") as f:
        f.write("set bulldb\n")
    bulldb = os.path.join(site.root, "bulls", bulletin_records.BULLDB_DIR)
    with open(bulldb, "w") as f:                         # a file where the directory goes
        f.write("not a directory\n")
    checked = check_config(site.config)
    assert checked.returncode == 1 and checked.stdout == ""
    expected = f"popper: bulldb {bulldb} (set at {site.config}:"
    assert checked.stderr.startswith(expected) and checked.stderr.endswith(
        "): not a directory\n") and checked.stderr.count("\n") == 1, checked.stderr
    started = subprocess.run([POPPER, f"127.0.0.1:{free_port()}", "-f", site.config],
                             capture_output=True, text=True, timeout=60,
                             env=dict(os.environ, QPOPPER_SYSLOG_SOCKET=site.syslog.path))
    assert started.returncode == 1 and started.stderr == checked.stderr


def test_unusable_bulletin_database_refuses_the_login_at_once_with_sys_temp(site, system_users):
    with open(site.config, "a") as f:
        f.write("set bulldb\n")                          # bulldb-max-tries: 75
    user = system_users.create("bf")
    make_spool(site.spool_dir, user, mbox(("kept", "mail")))
    server = site.server()
    # broken after the start: a file where the directory was
    bulldb = os.path.join(site.root, "bulls", bulletin_records.BULLDB_DIR)
    os.rmdir(bulldb)
    with open(bulldb, "w") as f:
        f.write("not a directory\n")
    client = poplib.POP3(server.host, server.port, timeout=20)
    try:
        client.user(user.name)
        with pytest.raises(poplib.error_proto) as refused:
            client.pass_(user.password)
        assert refused.value.args[0] == (b"-ERR [SYS/TEMP] Unable to open Bulletin database; "
                                         b"contact your administrator")
    finally:
        client.close()
    # not retried: an error that cannot clear is reported at the first try
    site.syslog.wait_for(rf"Unable to open Bulletin database for {user.name}: "
                         rf"{re.escape(bulldb)}/{bulletin_records.BULLDB_FILE}: Not a directory")
    with open(os.path.join(site.spool_dir, user.name), "rb") as f:
        assert f.read() == mbox(("kept", "mail"))             # untouched


def test_session_killed_after_the_append_then_next_login_has_it_once(site, system_users):
    user = system_users.create("bk")
    make_spool(site.spool_dir, user, mbox(("hello", "ordinary mail")))
    crashing = site.server(env={"QPOPPER_TEST_CRASH_AT": "bulletins:record-seen"})
    with pytest.raises((poplib.error_proto, OSError, EOFError)):
        client = login(crashing, user)
        client.close()
    crashing.stop()
    with open(os.path.join(site.spool_dir, user.name), "rb") as f:
        assert f.read().count(b"Subject: Example bulletin") == 1   # appended, record not
    assert subjects_after_login(site.server(), user) == [b"hello", b"Example bulletin"]
    site.syslog.wait_for(r"Bulletin delivery of an earlier session of .*: delivered")


def test_mmdf_site_bulletin_in_an_empty_spool_keeps_the_next_delivery_apart(site,
                                                                            system_users):
    """spool-format mmdf (docs/bulletins.md, "What a bulletin is"): the empty spool's bulletin
    is MMDF, so the agent's next message is a message of its own, not part of the bulletin,
    and deleting the bulletin leaves it."""
    with open(site.config, "a") as f:
        f.write("set spool-format = mmdf\n")
    user = system_users.create("bm")
    spool = make_spool(site.spool_dir, user, b"")             # an MMDF site, spool emptied
    server = site.server()
    assert subjects_after_login(server, user) == [b"Example bulletin"]
    sep = b"\x01\x01\x01\x01\n"
    with open(spool, "ab") as f:                              # the MMDF delivery agent
        f.write(sep + b"From: friend@example.org\nSubject: real mail\n\nhello\n" + sep)
    client = login(server, user)
    try:
        assert [s for s, _ in subjects_and_uids(client)] == [b"Example bulletin", b"real mail"]
        client.dele(1)
        client.quit()
    finally:
        client.close()
    with open(spool, "rb") as f:
        data = f.read()
    assert b"Subject: real mail" in data and b"Example bulletin" not in data


def test_server_mode_takes_the_bulletin_from_the_spool_once(site, system_users):
    with open(site.config, "a") as f:
        f.write("set server-mode\n")
    user = system_users.create("bs")
    make_spool(site.spool_dir, user, mbox(("hello", "ordinary mail")))
    server = site.server()
    for _ in range(2):
        assert subjects_after_login(server, user) == [b"hello", b"Example bulletin"]


@pytest.mark.parametrize("record", ["popbull", "bulldb"])
def test_maildir_user_gets_the_bulletin_once_as_a_file_of_their_own(site, system_users, record):
    """docs/bulletins.md, "Maildir users": through the real server, after the drop; the
    bulletin database (root:mail 2770) is written with the spool group the Maildir session
    otherwise does without (docs/privsep.md, "Maildir users")."""
    with open(site.config, "a") as f:
        f.write('set maildir = "~/Maildir"\n')
        if record == "bulldb":
            f.write("set bulldb\n")
    if record == "bulldb":
        mail_dir(os.path.join(site.root, "bulls"), bulletin_records.BULLDB_DIR, 0o2770)
    user = system_users.create("bm")
    maildir = os.path.join(user.home, "Maildir")
    for sub in ("", "tmp", "new", "cur"):
        os.mkdir(os.path.join(maildir, sub), 0o700)
        os.chown(os.path.join(maildir, sub), user.uid, user.gid)
    server = site.server()
    client = login(server, user)
    try:
        assert client.stat()[0] == 1, site.syslog.texts()
        lines = client.retr(1)[1]
        assert lines[0].startswith(b"X-UIDL: ") and b"Subject: Example bulletin" in lines
        assert f"To: {user.name}@{socket.gethostname()}".encode() in lines
        assert UIDL_RE.fullmatch(client.uidl(1).split()[2])
        client.quit()
    finally:
        client.close()
    (name,) = os.listdir(os.path.join(maildir, "cur"))      # retrieved: moved to cur/, seen
    assert ".bulletin-1." in name and name.endswith(":2,S")
    st = os.stat(os.path.join(maildir, "cur", name))
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (user.uid, 0o600)
    if record == "popbull":
        with open(os.path.join(user.home, ".popbull"), "rb") as f:
            assert f.read() == b"1\n"
    else:
        path = os.path.join(site.root, "bulls", bulletin_records.BULLDB_DIR,
                            bulletin_records.BULLDB_FILE)
        db = sqlite3.connect(path)
        try:
            assert db.execute("SELECT user, last FROM seen").fetchall() == [(user.name, 1)]
        finally:
            db.close()
    assert subjects_after_login(server, user) == [b"Example bulletin"]    # not twice
    assert not os.path.exists(os.path.join(site.spool_dir, user.name))    # no mbox made


@pytest.mark.parametrize("mode", ["normal", "server"])
def test_a_login_during_a_session_delivers_no_bulletin_and_the_next_one_does(site,
                                                                            system_users, mode):
    """A login during another session of the same user is refused [IN-USE] before it
    delivers a bulletin: its copy, killed half way, would be taken up by that session's
    update as mail (docs/bulletins.md, "Delivery, crash-safe"). The next login delivers it,
    in the MMDF framing of the mail it joins, or it would become junk after the last
    trailer and never be served."""
    if mode == "server":
        with open(site.config, "a") as f:
            f.write("set server-mode\n")
    user = system_users.create("bm")
    sep = b"\x01\x01\x01\x01\n"
    make_spool(site.spool_dir, user, sep + b"Subject: mmdf mail\n\nbody\n" + sep)
    server = site.server()
    first = login(server, user)
    try:
        assert [s for s, _ in subjects_and_uids(first)] == [b"mmdf mail", b"Example bulletin"]
        with open(os.path.join(site.options["bulldir"], "00002.Second"), "wb") as f:
            f.write(BULLETIN.replace(b"Example bulletin", b"Second bulletin"))
        second = poplib.POP3(server.host, server.port, timeout=20)
        try:
            second.user(user.name)
            with pytest.raises(poplib.error_proto, match=r"IN-USE"):
                second.pass_(user.password)
        finally:
            second.close()
        with open(os.path.join(site.spool_dir, user.name), "rb") as f:
            assert b"Second bulletin" not in f.read()
        first.quit()
    finally:
        first.close()
    spool = os.path.join(site.spool_dir, user.name)
    with open(spool, "rb") as f:
        assert b"From qpop" not in f.read()
    assert subjects_after_login(server, user) == [b"mmdf mail", b"Example bulletin",
                                                  b"Second bulletin"]


def test_bulletins_wait_while_a_crashed_update_s_journal_is_there(site, system_users):
    """A session killed in its update leaves a journal; the next login's bulletins wait for
    its recovery (docs/bulletins.md, "Delivery, crash-safe"): that login gets the recovered
    mail without the new bulletin, and the one after gets it, once."""
    user = system_users.create("bj")
    spool = make_spool(site.spool_dir, user, mbox_of(b"Subject: hello\n\nordinary mail\n",
                                                     b"Subject: bye\n\nmore mail\n"))
    crashing = site.server(env={"QPOPPER_TEST_CRASH_AT": "update:write-spool"})
    client = login(crashing, user)
    try:
        assert [s for s, _ in subjects_and_uids(client)] == [b"hello", b"bye", b"Example bulletin"]
        client.dele(1)
        with pytest.raises((poplib.error_proto, OSError, EOFError)):
            client.quit()                                      # killed writing the spool
    finally:
        client.close()
    crashing.stop()
    assert [n for n in os.listdir(site.spool_dir) if n.endswith(".journal")], "no journal left"
    with open(os.path.join(site.root, "bulls", "00002.Second_bulletin"), "wb") as f:
        f.write(BULLETIN.replace(b"Example bulletin", b"Second bulletin"))
    server = site.server()
    assert subjects_after_login(server, user) == [b"bye", b"Example bulletin"]
    site.syslog.wait_for(rf"Bulletins for {user.name} wait for the next login: the maildrop "
                         r"has a journal to recover")
    assert subjects_after_login(server, user) == [b"bye", b"Example bulletin",
                                                  b"Second bulletin"]
    with open(spool, "rb") as f:
        assert f.read().count(b"Subject: Second bulletin") == 1
