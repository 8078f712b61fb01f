"""The extensions through the real `popper` master, as real system users: XTND XMIT runs
mail-command (a recording script standing in for sendmail) as the logged-in user after the
privilege drop, with the user's own group only and none of the server's environment (never
the mail group: the user's MTA configuration could read every mailbox); xtnd-xmit off
refuses it; CAPA announces X-MANGLE and X-MACRO but not XMIT; a `-no-mime` login gets
mangled RETR/TOP with exact octet counts; MDEF over the wire."""

from __future__ import annotations

import grp
import os
import pathlib
import poplib

import pytest

from tests.helpers.maildirs import make_maildir
from tests.helpers.sysusers import make_spool
from tests.server_harness import Site, login

pytestmark = pytest.mark.timeout(120)

SERVER_ONLY_VARIABLE = "QPOPPER_TEST_SERVER_SECRET"

MULTIPART = (b"From sender@example.org Mon Nov  2 10:00:00 2026\n"
             b"From: Sender <sender@example.org>\n"
             b"Subject: with attachment\n"
             b"MIME-Version: 1.0\n"
             b"Content-Type: multipart/mixed; boundary=\"=b=\"\n"
             b"\n"
             b"--=b=\n"
             b"Content-Type: text/plain; charset=us-ascii\n"
             b"\n"
             b"see attached\n"
             b".dot line\n"
             b"--=b=\n"
             b"Content-Type: application/octet-stream\n"
             b"Content-Transfer-Encoding: base64\n"
             b"\n" + (b"QUFB" * 18 + b"\n") * 50
             + b"--=b=--\n\n")

RECORDER = """#!/bin/sh
{{ for arg in "$0" "$@"; do printf '%s\\n' "$arg"; done; id -u; id -g; }} > {out}/argv
for fd in /proc/$$/fd/*; do readlink "$fd"; done > {out}/fds
cat > {out}/stdin
exit 0
"""

IDENTITY_RECORDER = """#!/bin/sh
{{ id; grep -E '^(Uid|Gid|Groups):' /proc/$$/status; }} > {out}/identity
env > {out}/env
cat > /dev/null
exit 0
"""


def install_mta(world_tmp: str, user, name: str, script: str) -> tuple[str, str]:
    """A fake mail-command at world_tmp/NAME from `script` (a template with {out}), recording
    into a directory only `user` (as whom the MTA runs) may write; (mta path, record dir)."""
    record_dir = os.path.join(world_tmp, name + "-record")
    os.mkdir(record_dir, 0o700)
    os.chown(record_dir, user.uid, user.gid)
    mta = os.path.join(world_tmp, name)
    with open(mta, "w") as f:
        f.write(script.format(out=record_dir))
    os.chmod(mta, 0o755)
    return mta, record_dir


@pytest.fixture
def site(system_users, pam_service, world_tmp):
    user = system_users.create("xt")
    mta, record_dir = install_mta(world_tmp, user, "fake-sendmail", RECORDER)
    s = Site(world_tmp, pam_service, mail_command=mta)
    make_spool(s.spool_dir, user, MULTIPART)
    s.user, s.mta, s.record_dir = user, mta, record_dir
    yield s
    s.close()


def test_xmit_runs_mail_command_as_the_user(site):
    srv = site.server()
    client = login(srv, site.user)
    try:
        assert client._shortcmd("XTND XMIT") == b"+OK Start sending message."
        for line in (b"From: " + site.user.name.encode(), b"To: someone@example.org",
                     b"Subject: through POP", b"", b"..starts with a dot", b"."):
            client._putline(line)
        assert client._getresp() == b"+OK Message sent successfully"
        assert client.noop() == b"+OK"
    finally:
        client.quit()
    with open(os.path.join(site.record_dir, "argv")) as f:
        argv = f.read().split("\n")[:-1]
    assert argv == [site.mta, "-t", "-i", "-oem", str(site.user.uid), str(site.user.gid)]
    with open(os.path.join(site.record_dir, "stdin"), "rb") as f:
        assert f.read() == (f"From: {site.user.name}\nTo: someone@example.org\n"
                            f"Subject: through POP\n\n.starts with a dot\n").encode()
    with open(os.path.join(site.record_dir, "fds")) as f:
        open_files = f.read()
    assert "socket:" not in open_files, open_files   # the client connection stays ours
    site.syslog.wait_for(f'Pop transmit from "{site.user.name}" on "127.0.0.1"')
    assert not [n for n in os.listdir(site.spool_dir) if n.startswith(".xmit")]


def send_one_message(client) -> bytes:
    """XTND XMIT of a short message; the final reply."""
    assert client._shortcmd("XTND XMIT") == b"+OK Start sending message."
    for line in (b"To: someone@example.org", b"", b"hello", b"."):
        client._putline(line)
    return client._getresp()


def test_mail_command_runs_without_the_mail_group_or_the_servers_environment(
        system_users, pam_service, world_tmp):
    user = system_users.create("xi")
    mta, record_dir = install_mta(world_tmp, user, "identity-sendmail", IDENTITY_RECORDER)
    s = Site(world_tmp, pam_service, mail_command=mta)
    try:
        make_spool(s.spool_dir, user, MULTIPART)
        client = login(s.server(env={SERVER_ONLY_VARIABLE: "must-not-leak"}), user)
        try:
            assert send_one_message(client) == b"+OK Message sent successfully"
            # the session itself still reaches the spool with the mail group
            assert client.stat()[0] == 1
        finally:
            client.quit()
    finally:
        s.close()
    mail = str(grp.getgrnam("mail").gr_gid)
    with open(os.path.join(record_dir, "identity")) as f:
        identity = f.read()
    status = dict(line.split(":", 1) for line in identity.splitlines()[1:])
    assert status["Uid"].split() == [str(user.uid)] * 4, identity
    assert status["Gid"].split() == [str(user.gid)] * 4, identity     # real, eff., saved, fs
    assert status["Groups"].split() == [], identity
    assert "mail" not in identity.splitlines()[0] and mail not in status["Gid"].split()
    with open(os.path.join(record_dir, "env")) as f:
        variables = dict(line.split("=", 1) for line in f.read().splitlines())
    assert SERVER_ONLY_VARIABLE not in variables
    assert "QPOPPER_SYSLOG_SOCKET" not in variables
    assert set(variables) <= {"PATH", "HOME", "USER", "LOGNAME", "PWD", "SHLVL", "_"}, variables
    assert variables["PATH"] == "/usr/sbin:/usr/bin:/sbin:/bin"
    assert variables["USER"] == variables["LOGNAME"] == user.name


def test_xmit_for_a_maildir_user(system_users, pam_service, world_tmp):
    """A Maildir user's session has left the mail group (docs/privsep.md, "Maildir users"),
    so it cannot write the spool directory: the draft needs no directory at all."""
    user = system_users.create("xm")
    os.chmod(user.home, 0o711)
    make_maildir(pathlib.Path(user.home), [b"Subject: one\n\nbody\n"])
    for top, dirs, files in os.walk(os.path.join(user.home, "Maildir")):
        for name in [top, *(os.path.join(top, n) for n in dirs + files)]:
            os.chown(name, user.uid, user.gid)
    mta, record_dir = install_mta(world_tmp, user, "fake-sendmail", RECORDER)
    s = Site(world_tmp, pam_service, maildir="~/Maildir", mail_command=mta)
    try:
        client = login(s.server(), user)
        try:
            assert client.stat()[0] == 1
            assert send_one_message(client) == b"+OK Message sent successfully"
        finally:
            client.quit()
    finally:
        s.close()
    with open(os.path.join(record_dir, "stdin"), "rb") as f:
        assert f.read() == b"To: someone@example.org\n\nhello\n"
    assert not [n for n in os.listdir(s.spool_dir) if n.startswith(".xmit")]


def test_xmit_switched_off_per_user_by_the_spool_options_file(site):
    """xtnd-xmit is the administrator's (not ~/.qpopper-options): reset in the spool-dir
    options file, that user's XMIT is a disabled command and mail-command never runs."""
    with open(site.config, "a") as config:
        config.write("set spool-options\n")
    options = os.path.join(site.spool_dir, f"{site.user.name}.qpopper-options")
    with open(options, "w") as f:
        f.write("reset xtnd-xmit\n")
    os.chmod(options, 0o644)
    client = login(site.server(), site.user)
    try:
        with pytest.raises(poplib.error_proto, match="-ERR Command not enabled"):
            client._shortcmd("XTND XMIT")
        assert client.noop() == b"+OK"
    finally:
        client.quit()
    assert os.listdir(site.record_dir) == []


def test_capa_and_no_mime_retr_through_the_server(site):
    srv = site.server()
    client = poplib.POP3(srv.host, srv.port, timeout=20)
    try:
        capa = client.capa()
        assert "X-MANGLE" in capa and "X-MACRO" in capa and "XTND" not in capa
        client.user(site.user.name + "-no-mime")
        assert client.pass_(site.user.password).startswith(
            f"+OK {site.user.name} has 1 visible message".encode())
        resp, lines, octets = client.retr(1)
        assert resp == b"+OK %d octets" % octets
        assert lines[-4:] == [b"Content-Type: text/plain; charset=us-ascii", b"",
                              b"see attached", b".dot line"]
        assert not any(line.startswith(b"QUFB") for line in lines)
        resp, lines, _ = client.top(1, 1)
        assert resp == b"+OK Message follows" and lines[-2:] == [b"", b"see attached"]
        assert client._shortcmd("MDEF whole(TEXT=HTML)") == b'+OK Macro "whole" accepted'
        resp, lines, octets = client._longcmd("RETR 1 whole")
        assert resp == b"+OK %d octets" % octets and lines[-1] == b""   # no html part
    finally:
        client.quit()


@pytest.mark.skipif(os.path.exists("/usr/sbin/sendmail"), reason="an MTA is installed here")
def test_default_mail_command_missing_is_an_err(system_users, pam_service, world_tmp):
    """No MTA on this host (none is installed for the tests): XMIT says so, the log names
    the default /usr/sbin/sendmail."""
    user = system_users.create("xd")
    s = Site(world_tmp, pam_service)
    try:
        make_spool(s.spool_dir, user, MULTIPART)
        client = login(s.server(), user)
        try:
            client._shortcmd("XTND XMIT")
            client._putline(b"To: x")
            client._putline(b".")
            with pytest.raises(poplib.error_proto, match="Unable to send message"):
                client._getresp()
        finally:
            client.quit()
        s.syslog.wait_for(r"XTND XMIT from qpt\S+: running /usr/sbin/sendmail: .*")
    finally:
        s.close()
