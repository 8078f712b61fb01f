"""Who gets server mode (manual "Enabling Server Mode"): the default or -S, then
group-server-mode members get it, then group-no-server-mode members lose it (exclusion wins),
then a per-user option file that sets server-mode has the last word. Real groups (groupadd
`qpt*`, removed afterwards) and real users; root only.

End to end, server mode is recognised by its traces: a clean QUIT leaves `.user.cache` beside
the spool (normal mode never writes one), and during the session the spool keeps its mail
(normal mode moves it into `.user.pop`)."""

from __future__ import annotations

import grp
import os
import secrets
import subprocess
import syslog

import pytest

from qpopper.config import Config
from qpopper.spool.maildrop import resolve_server_mode
from tests.helpers.sysusers import is_root, make_spool
from tests.helpers.messages import mbox
from tests.server_harness import Site, login, write_config

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]
SPOOL = mbox(("one", "first body\n"), ("two", "second body\n"))


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30)


@pytest.fixture
def groups():
    """A factory of real `qpt*` groups, all removed when the test ends."""
    if not is_root():
        pytest.skip("needs root: creates real groups with groupadd")
    made = []

    def create(*members: str) -> str:
        name = f"qptsm{secrets.token_hex(4)}"
        _run("groupadd", name)
        made.append(name)
        for member in members:
            _run("usermod", "--append", "--groups", name, member)
        return name

    yield create
    for name in made:
        subprocess.run(["groupdel", name], capture_output=True, timeout=30)


def mode_for(cfg, user) -> bool:
    return resolve_server_mode(cfg, user.name, user.gid).server_mode


def test_group_precedence_with_real_groups(system_users, groups):
    inside, both, outside = (system_users.create("in"), system_users.create("both"),
                             system_users.create("out"))
    include = groups(inside.name, both.name)
    exclude = groups(both.name)
    cfg = Config.defaults().replace(group_server_mode=include, group_no_server_mode=exclude)
    assert not mode_for(cfg, outside)                  # the default stays off
    assert mode_for(cfg, inside)                       # included
    assert not mode_for(cfg, both)                     # exclusion wins
    on = cfg.replace(server_mode=True)                 # -S
    assert mode_for(on, outside) and mode_for(on, inside) and not mode_for(on, both)
    only_exclude = Config.defaults().replace(server_mode=True, group_no_server_mode=exclude)
    assert mode_for(only_exclude, inside) and not mode_for(only_exclude, both)


def test_a_primary_group_counts_as_membership(system_users):
    user = system_users.create()
    primary = grp.getgrgid(user.gid).gr_name      # useradd --user-group
    cfg = Config.defaults().replace(group_server_mode=primary)
    assert mode_for(cfg, user)
    assert not mode_for(cfg.replace(group_no_server_mode=primary, server_mode=True), user)


def test_an_unknown_group_is_logged_and_changes_nothing(system_users):
    user = system_users.create()
    log = []
    cfg = Config.defaults().replace(group_server_mode="qptsm-no-such-group")
    assert not resolve_server_mode(cfg, user.name, user.gid,
                                   lambda p, t: log.append((p, t))).server_mode
    assert log == [(syslog.LOG_WARNING, "server-mode group 'qptsm-no-such-group' does not exist")]


@pytest.fixture
def site(world_tmp, pam_service):
    s = Site(world_tmp, pam_service, statistics=False, timing=False, log_login="",
             user_options=True)
    yield s
    s.close()


def session_mode(site, server, user) -> str:
    """Log in, look at the files during the session, QUIT without changes."""
    spool = os.path.join(site.spool_dir, user.name)
    cache = os.path.join(site.spool_dir, f".{user.name}.cache")
    if os.path.exists(cache):
        os.unlink(cache)
    client = login(server, user)
    try:
        assert client.stat()[0] == 2
        in_place = os.path.getsize(spool) > 0
        client.quit()
    finally:
        client.close()
    with open(spool, "rb") as f:
        assert f.read().count(b"Subject: ") == 2
    assert os.path.exists(cache) == in_place
    return "server" if in_place else "normal"


def test_sessions_follow_groups_and_user_files(site, system_users, groups):
    inside, both, outside = (system_users.create("in"), system_users.create("both"),
                             system_users.create("out"))
    include = groups(inside.name, both.name)
    exclude = groups(both.name)
    site.options.update(group_server_mode=include, group_no_server_mode=exclude)
    write_config(site.config, **site.options)
    for user in (inside, both, outside):
        make_spool(site.spool_dir, user, SPOOL)
    # the user file decides last: `both` asks for server mode, overriding the exclusion
    options_file = os.path.join(both.home, ".qpopper-options")
    with open(options_file, "w") as f:
        f.write("set server-mode\n")
    os.chown(options_file, both.uid, both.gid)
    server = site.server()
    assert session_mode(site, server, inside) == "server"
    assert session_mode(site, server, outside) == "normal"
    assert session_mode(site, server, both) == "server"
    os.unlink(options_file)
    assert session_mode(site, server, both) == "normal"


@pytest.mark.parametrize("fast_update", [False, True])
def test_server_mode_end_to_end_as_the_user(world_tmp, pam_service, system_users, fast_update):
    """-S through the real server: the session runs as the user with the mail group, reads the
    spool in place, and QUIT rewrites it keeping owner, group and mode."""
    site = Site(world_tmp, pam_service, statistics=False, timing=False, log_login="",
                server_mode=True, fast_update=fast_update)
    try:
        user = system_users.create()
        spool = make_spool(site.spool_dir, user, SPOOL)
        before = os.stat(spool)
        server = site.server()
        client = login(server, user)
        try:
            uid_one = client.uidl(1).split()[2]
            assert os.path.getsize(spool) == len(SPOOL)          # read in place
            client.retr(1)
            client.dele(2)
            client.quit()
        finally:
            client.close()
        after = os.stat(spool)
        with open(spool, "rb") as f:
            data = f.read()
        assert data.count(b"Subject: ") == 1 and b"Subject: one" in data
        assert b"Status: RO" in data and b"X-UIDL: " + uid_one in data
        assert (after.st_uid, after.st_gid, after.st_mode) == (
            before.st_uid, before.st_gid, before.st_mode)
        assert (after.st_ino != before.st_ino) == fast_update
        cache = os.stat(os.path.join(site.spool_dir, f".{user.name}.cache"))
        assert cache.st_uid == user.uid and cache.st_mode & 0o777 == 0o600
        assert not os.path.exists(os.path.join(site.spool_dir, f".{user.name}.pop"))
        client = login(server, user)
        try:
            assert client.stat()[0] == 1 and client.uidl(1).split()[2] == uid_one
            client.quit()
        finally:
            client.close()
    finally:
        site.close()
