"""Maildir users on the real master (root: real users, PAM, the privilege drop): mail
delivered by Debian's procmail into ~/Maildir and by Python's mailbox.Maildir, fetched with
poplib, curl and fetchmail byte for byte; UIDs stable across sessions; DELE/RSET/QUIT and an
abort as for mbox; an mbox user and a Maildir user on one master."""

from __future__ import annotations

import mailbox
import os
import poplib
import re
import shutil
import socket
import subprocess

import pytest

from qpopper.spool import maildir
from tests.helpers.sysusers import make_spool
from tests.helpers.messages import mbox
from tests.server_harness import POPPER, Site, login, write_config

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

needs_procmail = pytest.mark.skipif(shutil.which("procmail") is None,
                                    reason="procmail not installed (make test installs it)")
needs_fetchmail = pytest.mark.skipif(shutil.which("fetchmail") is None,
                                     reason="fetchmail not installed (make test installs it)")


def as_user(user, fn):
    """Run `fn` in a child as `user` (files a delivery agent makes are the user's)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(user.gid)
            os.setuid(user.uid)
            fn()
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def deliver_with_mailbox(user, messages: list[bytes]) -> None:
    def add():
        box = mailbox.Maildir(os.path.join(user.home, "Maildir"), create=True)
        for data in messages:
            box.add(data)
        box.close()
    as_user(user, add)


def deliver_with_procmail(user, message: bytes) -> None:
    """Debian's procmail as the MDA, with the user's .procmailrc naming the Maildir."""
    rc = os.path.join(user.home, ".procmailrc")
    with open(rc, "w") as f:
        f.write(f"DEFAULT={user.home}/Maildir/\nLOGFILE=/dev/null\n")
    os.chown(rc, user.uid, user.gid)
    os.chmod(rc, 0o600)
    subprocess.run(["procmail", "-d", user.name], input=message, check=True, timeout=30)


def files_of(user) -> dict[str, bytes]:
    """{base name: bytes} of the messages in the user's Maildir."""
    path = os.path.join(user.home, "Maildir")
    found = {}
    for sub in ("new", "cur"):
        for name in os.listdir(os.path.join(path, sub)):
            with open(os.path.join(path, sub, name), "rb") as f:
                found[maildir.base_name(name)] = f.read()
    return found


def crlf(data: bytes) -> list[bytes]:
    """poplib's view of a message: its lines, dot-unstuffed, without line ends."""
    return data.replace(b"\r\n", b"\n").rstrip(b"\n").split(b"\n") if data.strip() else []


@pytest.fixture
def site(world_tmp, pam_service):
    s = Site(world_tmp, pam_service, maildir="~/Maildir")
    yield s
    s.close()


@pytest.fixture
def maildir_user(site, system_users):
    user = system_users.create()
    os.chmod(user.home, 0o711)
    return user


@needs_procmail
def test_procmail_and_mailbox_deliveries_come_out_byte_for_byte_with_stable_uids(
        site, maildir_user):
    user = maildir_user
    deliver_with_mailbox(user, [b"From: a@example.org\nSubject: one\n\n.leading dot\nbody\n",
                                b"Subject: two\n\nno final newline"])
    deliver_with_procmail(user, b"From sender@example.org  Sat Dec  5 12:00:00 2026\n"
                                b"From: sender@example.org\nSubject: three\n\nvia procmail\n")
    files = files_of(user)
    assert len(files) == 3
    server = site.server()
    client = login(server, user)
    try:
        count, _ = client.stat()
        assert count == 3
        uids = {int(n): uid for n, uid in (line.split() for line in
                                              (x.decode() for x in client.uidl()[1]))}
        assert set(uids.values()) == set(files)
        for n, uid in uids.items():
            _, lines, octets = client.retr(n)
            assert lines == crlf(files[uid])
        client.quit()
    finally:
        client.close()
    site.syslog.wait_for(rf"Stats: {user.name} 0 0 3 \d+ .*")
    again = login(server, user)
    try:
        assert {x.decode().split()[1] for x in again.uidl()[1]} == set(files)   # stable
        again.quit()
    finally:
        again.close()


def test_seen_marking_keeps_a_messages_separator_and_uses_the_option_for_new_ones(
        site, maildir_user):
    """docs/maildir.md, "Info separators": a message another reader flagged after `!` keeps
    `!`; one in new/ gets maildir-info-separator's; their UIDs are the base names."""
    user = maildir_user
    deliver_with_mailbox(user, [b"Subject: new\n\nin new/\n"])

    message = mailbox.MaildirMessage(b"Subject: flagged\n\nin cur/\n")   # parsed as root
    message.set_subdir("cur")
    message.set_flags("F")

    def flagged_by_another_reader():
        box = mailbox.Maildir(os.path.join(user.home, "Maildir"))
        box.colon = "!"
        box.add(message)
        box.close()
    as_user(user, flagged_by_another_reader)
    site.options["maildir_info_separator"] = "semicolon"
    write_config(site.config, **site.options)
    bases = sorted(files_of(user))
    client = login(site.server(), user)
    try:
        assert sorted(x.decode().split()[1] for x in client.uidl()[1]) == bases
        client.retr(1)
        client.retr(2)
        client.quit()
    finally:
        client.close()
    cur = sorted(os.listdir(os.path.join(user.home, "Maildir", "cur")))
    assert sorted(maildir.base_name(name) for name in cur) == bases
    assert sorted(name[len(maildir.base_name(name)):] for name in cur) == ["!2,FS", ";2,S"]


def test_dele_rset_quit_and_abort_as_for_mbox(site, maildir_user):
    user = maildir_user
    deliver_with_mailbox(user, [b"Subject: %d\n\nbody %d\n" % (n, n) for n in range(4)])
    server = site.server()
    client = login(server, user)
    uids = [x.decode().split()[1] for x in client.uidl()[1]]
    client.dele(1)
    client.rset()                                   # undone
    client.dele(2)
    client.retr(3)
    client.quit()
    left = files_of(user)
    assert sorted(left) == sorted(uids[:1] + uids[2:])
    cur = os.listdir(os.path.join(user.home, "Maildir", "cur"))
    assert [name for name in cur if name.startswith(uids[2])] == [uids[2] + ":2,S"]
    # An abort with update-on-abort off (the shipped default) changes nothing.
    site.options["update_on_abort"] = False
    write_config(site.config, **site.options)
    quiet = site.server()
    aborted = login(quiet, user)
    aborted.dele(1)
    aborted.sock.shutdown(socket.SHUT_RDWR)         # the client hangs up without QUIT
    aborted.close()
    site.syslog.wait_for(rf".*{user.name}.*(EOF|without QUIT|abort).*", timeout=20)
    again = login(quiet, user)
    try:
        assert len(again.uidl()[1]) == 3
        again.quit()
    finally:
        again.close()


def test_a_second_session_is_in_use_and_a_delivery_during_it_is_kept(site, maildir_user):
    user = maildir_user
    deliver_with_mailbox(user, [b"Subject: first\n\nx\n"])
    server = site.server()
    first = login(server, user)
    try:
        with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
            login(server, user)
        deliver_with_mailbox(user, [b"Subject: during\n\ny\n"])
        first.dele(1)
        first.quit()
    finally:
        first.close()
    after = login(server, user)
    try:
        count, _ = after.stat()
        assert count == 1
        assert b"Subject: during" in after.retr(1)[1]
        after.quit()
    finally:
        after.close()


def uidl_by_subject(server, user) -> dict[bytes, str]:
    """{Subject line: UID} of one session, ended with QUIT (RETR'd messages marked seen)."""
    client = login(server, user)
    try:
        result = {}
        for line in client.uidl()[1]:
            number, uid = line.decode().split()
            result[client.top(int(number), 0)[1][0]] = uid
            client.retr(int(number))
        client.quit()
        return result
    finally:
        client.close()


def test_a_message_mbsync_renames_into_its_own_base_name_keeps_its_uidl(site, maildir_user):
    """mbsync keeps its UID in the base name (`new/B` -> `cur/B,U=7:2,S`): a client that leaves
    mail on the server must not fetch it again. A copy under a gone message's base name and a
    tail (another inode, the same size and time: cp -p) is another file: no UID of the gone
    one (docs/maildir.md, "What a message is")."""
    user = maildir_user
    deliver_with_mailbox(user, [b"Subject: synced\n\nA\n", b"Subject: copied\n\nB\n"])
    server = site.server()
    first = uidl_by_subject(server, user)
    synced, copied = first[b"Subject: synced"], first[b"Subject: copied"]
    box = os.path.join(user.home, "Maildir")
    cur = os.listdir(os.path.join(box, "cur"))
    assert sorted(cur) == sorted([f"{synced}:2,S", f"{copied}:2,S"])    # marked seen at QUIT
    os.rename(os.path.join(box, "cur", f"{synced}:2,S"),
              os.path.join(box, "cur", f"{synced},U=7:2,F"))             # mbsync's rename
    as_user(user, lambda: shutil.copy2(os.path.join(box, "cur", f"{copied}:2,S"),
                                       os.path.join(box, "cur", f"{copied},U=8:2,S")))
    os.unlink(os.path.join(box, "cur", f"{copied}:2,S"))
    assert uidl_by_subject(server, user) == {b"Subject: synced": synced,
                                             b"Subject: copied": f"{copied},U=8"}
    # UPDATE marked it seen under its new base name: `cur/B,U=7:2,FS`, the same UID after
    assert f"{synced},U=7:2,FS" in os.listdir(os.path.join(box, "cur"))
    assert uidl_by_subject(server, user)[b"Subject: synced"] == synced


@needs_fetchmail
def test_curl_and_fetchmail_fetch_the_delivered_bytes(site, maildir_user, world_tmp):
    user = maildir_user
    message = b"From: x@example.org\nSubject: fetched\n\nline one\n..two dots\nend\n"
    deliver_with_mailbox(user, [message])
    server = site.server()
    curl = subprocess.run(["curl", "-sS", "--max-time", "20",
                           f"pop3://127.0.0.1:{server.port}/1", "-u",
                           f"{user.name}:{user.password}"], capture_output=True, timeout=30)
    assert curl.returncode == 0, curl.stderr
    assert curl.stdout.replace(b"\r\n", b"\n") == message
    out = os.path.join(world_tmp, "fetched")
    rc = os.path.join(world_tmp, "fetchmailrc")
    with open(rc, "w") as f:
        f.write(f"poll 127.0.0.1 service {server.port} protocol pop3 auth password\n"
                f"  user '{user.name}' password '{user.password}' is root here\n"
                f"  keep sslproto '' mda \"/bin/sh -c 'cat > {out}'\"\n")
    os.chmod(rc, 0o600)
    result = subprocess.run(["fetchmail", "-f", rc, "--invisible", "--nosyslog", "-v",
                             "--pidfile", os.path.join(world_tmp, "fetchmail.pid")],
                            capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, HOME=world_tmp))
    assert result.returncode == 0, result.stdout + result.stderr
    with open(out, "rb") as f:
        fetched = f.read()
    assert fetched.endswith(message), fetched


def test_an_mbox_user_and_a_maildir_user_on_one_master(site, system_users, maildir_user):
    mbox_user = system_users.create()
    make_spool(site.spool_dir, mbox_user, mbox(("spooled", "in the mbox\n")))
    deliver_with_mailbox(maildir_user, [b"Subject: in the maildir\n\nhere\n"])
    server = site.server()
    for user, subject in ((mbox_user, b"Subject: spooled"),
                          (maildir_user, b"Subject: in the maildir")):
        client = login(server, user)
        try:
            assert client.stat()[0] == 1
            assert subject in client.retr(1)[1]
            client.dele(1)
            client.quit()
        finally:
            client.close()
    assert files_of(maildir_user) == {}
    with open(os.path.join(site.spool_dir, mbox_user.name), "rb") as f:
        assert f.read() == b""
    assert not os.path.exists(os.path.join(site.spool_dir, maildir_user.name))


@pytest.mark.parametrize("linked", ["cur", "new"])
def test_a_maildir_linked_to_the_spool_directory_reaches_no_other_users_mail(
        site, system_users, maildir_user, linked):
    """docs/privsep.md, "Maildir users": a Maildir's paths are the user's to point anywhere,
    so the session has no spool group: `cur` (or `new`) made a link to the spool directory
    (root:mail 2775, spools user:mail 0660) shows, sends and removes none of the spools."""
    victim = system_users.create()
    spool = make_spool(site.spool_dir, victim, mbox(("secret", "for the victim only\n")),
                       mode=0o660)
    with open(spool, "rb") as f:
        before = f.read()
    path = os.path.join(maildir_user.home, "Maildir")
    deliver_with_mailbox(maildir_user, [b"Subject: own\n\nmine\n"])
    shutil.rmtree(os.path.join(path, linked))
    os.symlink(site.spool_dir, os.path.join(path, linked))
    os.lchown(os.path.join(path, linked), maildir_user.uid, maildir_user.gid)
    server = site.server()
    seen = b""
    try:
        client = login(server, maildir_user)
    except poplib.error_proto as refused:          # the spools could not be read: refused
        assert b"[SYS/TEMP]" in refused.args[0]
    else:
        try:
            count = client.stat()[0]
            for n in range(1, count + 1):
                try:
                    seen += b"\n".join(client.retr(n)[1])
                except poplib.error_proto:
                    pass
                client.dele(n)
            client.quit()
        finally:
            client.close()
    assert b"for the victim only" not in seen
    with open(spool, "rb") as f:
        assert f.read() == before                 # still there, unchanged
    assert sorted(os.listdir(site.spool_dir)) == sorted([victim.name])


def refused_for_the_lock_file(server, user) -> None:
    with pytest.raises(poplib.error_proto) as refusal:
        login(server, user)
    assert refusal.value.args[0] == (b"-ERR [SYS/PERM] Unable to use the lock file in your "
                                     b"Maildir; contact your administrator")


@pytest.mark.parametrize("kind", ["root's file", "directory"])
def test_a_lock_file_the_user_cannot_open_is_sys_perm_naming_the_file(site, maildir_user, kind):
    """qpopper-pop3.lock left as root's 0600 file (a restore, a tool run as root) or made a
    directory: no retry clears it, so the login gets the lock file's [SYS/PERM] reply, and
    the log names the file (it was the generic [SYS/TEMP] "Unable to open your maildrop").
    Once the administrator removes it, the mail is served."""
    deliver_with_mailbox(maildir_user, [b"Subject: kept\n\nhere\n"])
    lock = os.path.join(maildir_user.home, "Maildir", "qpopper-pop3.lock")
    if kind == "directory":
        os.mkdir(lock, 0o700)
        os.chown(lock, maildir_user.uid, maildir_user.gid)
    else:
        with open(lock, "wb"):
            pass
        os.chmod(lock, 0o600)                                   # root's, as made here
    server = site.server()
    refused_for_the_lock_file(server, maildir_user)
    site.syslog.wait_for(rf"Maildir lock file {re.escape(lock)} cannot be used: "
                         rf"{'Is a directory' if kind == 'directory' else 'Permission denied'}"
                         rf"; it must be the user's own plain file, or absent")
    (os.rmdir if kind == "directory" else os.unlink)(lock)
    client = login(server, maildir_user)
    assert client.stat()[0] == 1
    client.quit()


def test_a_maildir_directory_the_user_cannot_write_is_named_in_the_log(site, maildir_user):
    """No lock file, and the Maildir directory root's (a restore as root): the log names the
    directory the user may not write in, not a lock file that is not there."""
    deliver_with_mailbox(maildir_user, [b"Subject: kept\n\nhere\n"])
    maildir = os.path.join(maildir_user.home, "Maildir")
    lock = os.path.join(maildir, "qpopper-pop3.lock")
    assert not os.path.lexists(lock)
    os.chown(maildir, 0, 0)
    os.chmod(maildir, 0o755)
    server = site.server()
    refused_for_the_lock_file(server, maildir_user)
    site.syslog.wait_for(rf"Maildir lock file {re.escape(lock)} cannot be made: Permission "
                         rf"denied; the Maildir directory {re.escape(maildir)} must be "
                         rf"writable by the user")
    assert not os.path.lexists(lock)
    os.chown(maildir, maildir_user.uid, maildir_user.gid)
    client = login(server, maildir_user)
    assert client.stat()[0] == 1
    client.quit()


def test_top_xlst_and_euidl_end_the_header_at_the_same_line(site, maildir_user):
    """A header line of a lone CR (CR CR LF) is content for TOP, so the From and X-Late
    lines after it are header lines: XTND XLST lists X-Late and EUIDL shows that From, where
    both took the lone CR for the header's end and found neither (docs/maildir.md, "What a
    message is")."""
    deliver_with_mailbox(maildir_user, [b"Subject: placeholder\n\nx\n"])
    [name] = os.listdir(os.path.join(maildir_user.home, "Maildir", "new"))
    with open(os.path.join(maildir_user.home, "Maildir", "new", name), "wb") as f:
        f.write(b"Subject: s\n\r\r\nFrom: late@example.org\nX-Late: y\n\nbody\n")
    server = site.server()
    client = login(server, maildir_user)
    top = client.top(1, 0)[1]
    assert top == [b"Subject: s", b"\r", b"From: late@example.org", b"X-Late: y", b""]
    assert client._longcmd("XTND XLST X-Late")[1] == [b"1 X-Late: y"]
    assert client._shortcmd("EUIDL 1").endswith(b" late@example.org")
    client.quit()


def test_check_config_shows_the_maildir_option(site):
    result = subprocess.run([POPPER, "--check-config", "-f", site.config],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert any(line.split()[:2] == ["maildir", "~/Maildir"] for line in result.stdout.splitlines())


def test_kill_at_every_update_step_of_the_real_session_is_exact(site, maildir_user):
    """The session SIGKILLed at each step of a Maildir UPDATE (the session's test-only fault
    hook): the next login sees the update done exactly once (after the journal's commit) or
    not at all (before it), every message once, under the same UID."""
    user = maildir_user
    from tests.server_harness import PopperServer
    step_log = os.path.join(site.root, "maildir-steps")

    def fresh_box():
        shutil.rmtree(os.path.join(user.home, "Maildir"), ignore_errors=True)
        deliver_with_mailbox(user, [b"Subject: %d\n\nbody %d\n" % (n, n) for n in range(5)])
        with open(step_log, "w"):
            pass
        os.chmod(step_log, 0o666)

    def session(server, act: bool) -> tuple[bool, dict]:
        client = login(server, user)
        try:
            uids = {int(n): uid for n, uid in (x.decode().split() for x in client.uidl()[1])}
            if act:
                client.dele(1)
                client.dele(4)
                client.retr(2)
                client.retr(3)
            client.quit()
            return True, uids
        except (poplib.error_proto, OSError, EOFError):
            return False, uids
        finally:
            client.close()

    fresh_box()
    with PopperServer(site.root, site.config, syslog=site.syslog,
                      env={"QPOPPER_TEST_STEP_LOG": step_log}) as server:
        answered, _ = session(server, act=True)
    assert answered
    with open(step_log) as f:
        steps = [line.strip() for line in f if line.startswith("update:")]
    points = list(dict.fromkeys(steps)) + ["update:unlink#2", "update:rename#2"]
    assert {"update:journal-commit-rename", "update:unlink", "update:rename"} <= set(points)
    for point in points:
        fresh_box()
        with PopperServer(site.root, site.config, syslog=site.syslog,
                          env={"QPOPPER_TEST_CRASH_AT": point}) as server:
            quit_answered, uids = session(server, act=True)
        assert not quit_answered, f"no crash at {point}"
        with PopperServer(site.root, site.config, syslog=site.syslog) as server:
            answered, _ = session(server, act=False)     # the next login finishes the journal
        assert answered, f"no session after a crash at {point}"
        files = {}
        for sub in ("new", "cur"):
            for name in os.listdir(os.path.join(user.home, "Maildir", sub)):
                files[maildir.base_name(name)] = maildir.flags_of(name)
        deleted, seen_now = {uids[1], uids[4]}, {uids[2], uids[3]}
        committed = points.index(point) > points.index("update:journal-commit-rename") \
            if point in steps else True
        if committed:
            assert set(files) == set(uids.values()) - deleted, point
            assert all("S" in files[uid] for uid in seen_now), point
        else:
            assert set(files) == set(uids.values()), point
