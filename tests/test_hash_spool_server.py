"""hash-spool through the real server (reference S5): the hashed directories are shared by many
users, so the session creates them as root, owned like the spool directory, before it drops
privileges; a directory the first user to log in created would be that user's, and the user
could then replace or read every other spool hashed into it (root only: real users, PAM)."""

from __future__ import annotations

import grp
import os
import stat

import pytest

from qpopper.spool.paths import hash_dirs
from tests.helpers.sysusers import make_spool
from tests.server_harness import Site, login, mbox

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
