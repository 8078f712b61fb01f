"""hash-spool through the real server (reference S5): the hashed directories are shared by many
users, so the session creates them as root, owned like the spool directory, before it drops
privileges; a directory the first user to log in created would be that user's, and the user
could then replace or read every other spool hashed into it (root only: real users, PAM).
Group mail may plant links in the spool directory: the session never follows one there."""

from __future__ import annotations

import grp
import os
import poplib
import re
import stat

import pytest

from qpopper.spool.paths import hash_dirs
from tests.helpers.sysusers import make_spool
from tests.helpers.messages import mbox
from tests.server_harness import Site, login

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

SPOOL = mbox(("first", "Body one.\n"), ("second", "Body two.\n"))


@pytest.mark.parametrize("hashing", [1, 2])
def test_first_login_creates_the_hash_dirs_as_the_spool_dirs_owner(world_tmp, pam_service,
                                                                   system_users, hashing):
    site = Site(world_tmp, pam_service, hash_spool=hashing)
    try:
        mail_gid = grp.getgrnam("mail").gr_gid
        server = site.server()
        for user in (system_users.create(), system_users.create()):
            client = login(server, user)
            assert client.stat()[0] == 0
            assert client.quit().startswith(b"+OK")
            path = site.spool_dir
            for part in hash_dirs(user.name, hashing):
                path = os.path.join(path, part)
                st = os.stat(path)
                assert stat.S_ISDIR(st.st_mode)
                # root:mail 2775 like the spool dir, never the user who logged in first
                assert (st.st_uid, st.st_gid) == (0, mail_gid), f"{path} owned by {st.st_uid}"
                assert stat.S_IMODE(st.st_mode) == 0o2775

            # The directory works: mail delivered there is served and updated.
            make_spool(path, user, SPOOL)
            client = login(server, user)
            assert client.stat()[0] == 2
            client.dele(1)
            assert client.quit().startswith(b"+OK")
            with open(os.path.join(path, user.name), "rb") as f:
                left = f.read()
            assert b"Subject: second" in left and b"Subject: first" not in left
    finally:
        site.close()


def refused_login(server, user) -> str:
    """The -ERR text of a login the server refuses."""
    with pytest.raises(poplib.error_proto) as refusal:
        login(server, user).quit()
    return refusal.value.args[0].decode()


def test_a_planted_link_as_the_hashed_dir_is_not_followed(world_tmp, pam_service,
                                                          system_users):
    """Group mail may plant entries in the spool directory: a link where the hashed
    directory should be, to a root file elsewhere. The session (root at that point) neither
    changes the file nor follows the link; the login is refused."""
    site = Site(world_tmp, pam_service, hash_spool=1)
    try:
        user = system_users.create()
        victim = os.path.join(world_tmp, "victim")
        with open(victim, "w") as f:
            f.write("root:secret-hash:19000:0:99999:7:::\n")
        os.chmod(victim, 0o600)
        link = os.path.join(site.spool_dir, hash_dirs(user.name, 1)[0])
        os.symlink(victim, link)
        before = os.stat(victim)
        reply = refused_login(site.server(), user)
        assert reply.startswith("-ERR [SYS/PERM]"), reply
        after = os.stat(victim)
        assert (after.st_uid, after.st_gid, after.st_mode) == (0, 0, before.st_mode)
        assert os.path.islink(link)
        site.syslog.wait_for(rf"check-hash-dir: {re.escape(link)} not used: .*")
    finally:
        site.close()


def test_a_planted_link_as_the_first_of_two_hashed_dirs_is_not_followed(world_tmp, pam_service,
                                                                        system_users):
    """hash-spool 2: a link as the first level to a root directory elsewhere must not get the
    second level made inside it (root:mail 2775 there would give group mail that place)."""
    site = Site(world_tmp, pam_service, hash_spool=2)
    try:
        user = system_users.create()
        elsewhere = os.path.join(world_tmp, "etc")
        os.mkdir(elsewhere, 0o755)
        first, _ = hash_dirs(user.name, 2)
        link = os.path.join(site.spool_dir, first)
        os.symlink(elsewhere, link)
        reply = refused_login(site.server(), user)
        assert reply.startswith("-ERR [SYS/PERM]"), reply
        assert os.listdir(elsewhere) == []
        st = os.stat(elsewhere)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o755)
        site.syslog.wait_for(rf"check-hash-dir: {re.escape(link)} not used: .*")
    finally:
        site.close()
