"""Bulletins are read with the session's mail group: they must never carry somebody's mail
(root only; the real server and real users).

A user's ~/.qpopper-options may not set bulldir (a bulldir naming a directory of spools,
user:mail 0660 files whose names start with a digit, would copy them in as bulletins), and a
bulletin file that is not world-readable is skipped and logged whatever set bulldir. A file
chained (config-file) from a user's options file is read without the mail group (so another
user's spool cannot be opened through it), and its errors name the line, never quote it into
the log.
"""

from __future__ import annotations

import grp
import os
import re
import syslog

import pytest

from qpopper import config
from tests.helpers.sysusers import make_spool
from tests.helpers.messages import mbox
from tests.server_harness import Site, login

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

SECRET = b"victim-secret-7f3a"


def message(subject: str, body: bytes) -> bytes:
    return (b"From someone@example.org Mon Nov  2 10:00:00 2026\n"
            b"From: Someone <someone@example.org>\n"
            b"Subject: " + subject.encode() + b"\n\n" + body + b"\n")


def owned_file(path: str, data: bytes, uid: int, gid: int, mode: int) -> str:
    with open(path, "wb") as f:
        f.write(data)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    return path


def retrieved(client) -> bytes:
    return b"\n".join(b"\n".join(client.retr(n)[1]) for n in range(1, client.stat()[0] + 1))


def test_home_options_file_cannot_point_bulldir_at_other_users_mail(world_tmp, pam_service,
                                                                     system_users):
    site = Site(world_tmp, pam_service, user_options=True)
    try:
        attacker, victim = system_users.create("ba"), system_users.create("bv")
        mail_gid = grp.getgrnam("mail").gr_gid
        # A directory of spools as Debian makes them (user:mail 0660); the name starts with a
        # digit as a numeric user name's spool does.
        spools = os.path.join(world_tmp, "other-spools")
        os.mkdir(spools, 0o755)
        owned_file(os.path.join(spools, "1victim"), message("victim mail", SECRET),
                   victim.uid, mail_gid, 0o660)
        owned_file(os.path.join(attacker.home, ".qpopper-options"),
                   f"set bulldir = {spools}\n".encode(), attacker.uid, attacker.gid, 0o644)
        make_spool(site.spool_dir, attacker, mbox(("own", "own mail")))
        client = login(site.server(), attacker)
        try:
            assert client.stat()[0] == 1
            assert SECRET not in retrieved(client)
            client.quit()
        finally:
            client.close()
        with open(os.path.join(site.spool_dir, attacker.name), "rb") as f:
            assert SECRET not in f.read()
        site.syslog.wait_for(r".*option 'bulldir' may not be set in a home-directory.*")
    finally:
        site.close()


def test_bulletin_that_is_not_world_readable_is_skipped_and_logged(world_tmp, pam_service,
                                                                   system_users):
    bulldir = os.path.join(world_tmp, "bulls")
    os.mkdir(bulldir, 0o755)
    mail_gid = grp.getgrnam("mail").gr_gid
    owned_file(os.path.join(bulldir, "00001.public"), message("public bulletin", b"for all"),
               0, 0, 0o644)
    owned_file(os.path.join(bulldir, "00002.group-mail-only"), message("mail only", SECRET),
               0, mail_gid, 0o640)
    site = Site(world_tmp, pam_service, bulldir=bulldir, max_bulletins=10)   # both are new
    try:
        user = system_users.create("bw")
        make_spool(site.spool_dir, user, mbox(("own", "own mail")))
        client = login(site.server(), user)
        try:
            text = retrieved(client)
            assert client.stat()[0] == 2
            assert b"Subject: public bulletin" in text and SECRET not in text
            client.quit()
        finally:
            client.close()
        site.syslog.wait_for(re.escape(f"Bulletin {bulldir}/00002.group-mail-only skipped: "
                                       "not world-readable"))
    finally:
        site.close()


def test_home_options_file_cannot_chain_to_another_users_spool(world_tmp, pam_service,
                                                               system_users):
    """~/.qpopper-options and its chains are read with the user's own group, not the mail
    group (docs/privsep.md, "The user's option files"): a chain to another user's 0660 spool
    is not opened, so whether that spool parses (is empty) cannot show in the user's CAPA."""
    site = Site(world_tmp, pam_service, user_options=True)
    try:
        alice, bob = system_users.create("ba"), system_users.create("bv")
        make_spool(site.spool_dir, alice, mbox(("own", "own mail")))
        bob_spool = make_spool(site.spool_dir, bob, b"", mode=0o660)      # empty: it parses
        owned_file(os.path.join(alice.home, ".qpopper-options"),
                   f"set announce-login-delay = 777\nset config-file = {bob_spool}\n".encode(),
                   alice.uid, alice.gid, 0o644)
        client = login(site.server(), alice)
        try:
            capa = client._longcmd("CAPA")[1]
            client.quit()
        finally:
            client.close()
        assert b"LOGIN-DELAY 777" not in capa
        site.syslog.wait_for(rf".*{re.escape(bob_spool)}.*Permission denied.*")
    finally:
        site.close()


@pytest.mark.parametrize("chained_text", [
    SECRET + b" is the first line of some file\n",               # not a set line
    b"set timeout = " + SECRET + b"\n",                            # a bad value
    b"set " + SECRET + b"\n",                                      # an unknown option
])
def test_file_chained_from_a_user_file_is_never_quoted_in_the_log(tmp_path, chained_text):
    chained = tmp_path / "somebody-elses-file"
    chained.write_bytes(chained_text)
    home_file = tmp_path / ".qpopper-options"
    home_file.write_text(f"set config-file = {chained}\n")
    logged: list[tuple[int, str]] = []
    cfg = config.Config.defaults()
    assert config.apply_user_file(cfg, str(home_file), "home",
                                  lambda level, text: logged.append((level, text))) is cfg
    assert [level for level, _ in logged] == [syslog.LOG_ERR]
    text = logged[0][1]
    assert f"{chained}:1: " in text and text.endswith("; options file ignored")
    assert SECRET.decode() not in text


def test_users_own_options_file_is_still_quoted_in_the_log(tmp_path):
    home_file = tmp_path / ".qpopper-options"
    home_file.write_text("set timeout = soon\n")
    logged: list[str] = []
    config.apply_user_file(config.Config.defaults(), str(home_file), "home",
                           lambda level, text: logged.append(text))
    assert len(logged) == 1 and "'soon'" in logged[0]
