"""The authentication cache (docs/auth-cache.md) with the real master, real `qpt*` users and a
real PAM service whose auth and account stacks each run pam_exec first: every call PAM makes
is a line in a file, so the tests count what PAM was asked, not what the server says it did.
The cache's parts without a server: tests/unit/test_auth_cache_parts.py.

TTLs are a few seconds and the tests wait past them; nothing asserts how long anything took.
"""

from __future__ import annotations

import base64
import os
import poplib
import pwd
import re
import signal
import socket
import subprocess
import time

import pytest

from tests.helpers.pam_service import installed_pam_service
from tests.helpers.sysusers import PRELOGIN_USER, is_root, make_spool
from tests.helpers.messages import mbox
from tests.server_harness import (Site, authentication_process_of, descendants_of, login,
                                  proc_status, proc_title,
                                  processes_of, read_greeting, wait_until)

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

CACHE_TITLE = "popper: auth cache"
SHORT_TTL_S = 3
COUNT_LINES = (r"auth cache: up to \d+ entries, \d+ s, negative \d+ s",
               r"auth cache: \d+ entries forgotten; \d+ hits, \d+ misses")
"""What the cache logs while all is well: its settings and counts (besides, only its own
failures: a process that died, memory it could not lock)."""


# --- a PAM service that writes down each call ------------------------------------------------
class CountedPam:
    """`auth` and `account` stacks of pam_unix, each behind a pam_exec that appends
    "<stack> <user>" to a file."""

    def __init__(self, directory: str):
        self.calls = os.path.join(directory, "pam-calls")
        self.script = os.path.join(directory, "note-pam-call")
        with open(self.script, "w") as f:
            f.write(f'#!/bin/sh\necho "$PAM_TYPE $PAM_USER" >> {self.calls}\n')
        os.chmod(self.script, 0o755)
        self.stack = (f"auth     optional  pam_exec.so quiet {self.script}\n"
                      f"auth     required  pam_unix.so nodelay\n"
                      f"account  optional  pam_exec.so quiet {self.script}\n"
                      f"account  required  pam_unix.so\n")

    def count(self, stack: str, user) -> int:
        try:
            with open(self.calls) as f:
                return sum(1 for line in f if line.split() == [stack, user.name])
        except FileNotFoundError:
            return 0


@pytest.fixture
def counted(world_tmp):
    if not is_root():
        pytest.skip("needs root: installs a PAM service file in /etc/pam.d")
    pam = CountedPam(world_tmp)
    with installed_pam_service(pam.stack, tag="cache-") as service:
        pam.service = service
        yield pam


@pytest.fixture
def make_site(world_tmp, counted):
    sites = []

    def make(**options) -> Site:
        root = os.path.join(world_tmp, f"site{len(sites)}")
        os.mkdir(root)
        os.chmod(root, 0o755)
        site = Site(root, counted.service, **options)
        sites.append(site)
        return site
    yield make
    for site in sites:
        site.close()


def cached(size=100, ttl=300, negative_ttl=300) -> dict:
    return dict(auth_cache_size=size, auth_cache_ttl=ttl, auth_cache_negative_ttl=negative_ttl)


def user_with_spool(site, system_users, **kw):
    user = system_users.create(**kw)
    make_spool(site.spool_dir, user, mbox(("hello", "Body.\n")))
    return user


def log_in_and_quit(server, user, password=None) -> None:
    client = login(server, user, password)
    assert client.stat()[0] == 1
    client.quit()


def refused(server, user, password) -> bool:
    try:
        log_in_and_quit(server, user, password)
    except poplib.error_proto as exc:
        assert str(exc).startswith("b'-ERR [AUTH]")
        return True
    return False


def auth_plain(server, user) -> bytes:
    """AUTH PLAIN with the user's password; the reply line."""
    token = base64.b64encode(f"\0{user.name}\0{user.password}".encode()).decode()
    with socket.create_connection((server.host, server.port), timeout=20) as sock:
        read_greeting(sock)
        sock.sendall(f"AUTH PLAIN {token}\r\n".encode())
        reply = read_greeting(sock)
        sock.sendall(b"QUIT\r\n")
        read_greeting(sock)
    return reply


def set_password(user, password: str) -> None:
    subprocess.run(["chpasswd"], input=f"{user.name}:{password}\n", text=True, check=True,
                   capture_output=True, timeout=30)


def cache_processes(server) -> list[int]:
    found = []
    for pid in descendants_of(server.pid):
        try:
            if proc_title(pid) == CACHE_TITLE:
                found.append(pid)
        except OSError:
            continue
    return found


def logged_lines(site, start: str, count: int) -> list[str]:
    """The log's lines that start with `start`, once there are `count` of them: they come
    through syslog, maybe after the replies, so they are waited for, not raced."""
    def found():
        lines = [text for text in site.syslog.texts() if text.startswith(start)]
        return lines if len(lines) >= count else None
    return wait_until(found, what=f"{count} log lines starting {start!r}")


def wait_past(moment: float, seconds: float) -> None:
    """Sleep until `seconds` (a TTL) plus a margin have passed since `moment` (monotonic)."""
    remaining = moment + seconds + 0.5 - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


# --- with the real server ----------------------------------------------------------------------
def test_a_second_login_with_the_same_password_skips_pams_password_step(make_site, counted,
                                                                        system_users):
    site = make_site(sasl_no_plaintext=False, **cached())
    user = user_with_spool(site, system_users)
    server = site.server()
    log_in_and_quit(server, user)
    log_in_and_quit(server, user)
    assert auth_plain(server, user).startswith(b"+OK")        # AUTH PLAIN shares the entry
    assert counted.count("auth", user) == 1
    assert counted.count("account", user) == 3                 # never remembered


def test_off_by_default_pam_checks_every_password(make_site, counted, system_users):
    site = make_site()
    user = user_with_spool(site, system_users)
    server = site.server()
    log_in_and_quit(server, user)
    log_in_and_quit(server, user)
    assert counted.count("auth", user) == 2
    assert cache_processes(server) == []


def test_a_changed_or_locked_shadow_password_is_not_remembered_any_more(make_site, counted,
                                                                        system_users):
    """The shadow stamp is in the key: the old password's entry no longer matches once
    chpasswd or usermod -L changed the shadow entry (docs/auth-cache.md, "What it trades")."""
    site = make_site(**cached())
    user = user_with_spool(site, system_users)
    server = site.server()
    log_in_and_quit(server, user)
    log_in_and_quit(server, user)
    assert counted.count("auth", user) == 1                     # remembered
    set_password(user, "pw-the-new-one")
    assert refused(server, user, user.password)                 # PAM asked, and it says no
    assert counted.count("auth", user) == 2
    log_in_and_quit(server, user, "pw-the-new-one")
    log_in_and_quit(server, user, "pw-the-new-one")
    assert counted.count("auth", user) == 3
    subprocess.run(["usermod", "--lock", user.name], check=True, capture_output=True, timeout=30)
    assert refused(server, user, "pw-the-new-one")
    assert counted.count("auth", user) == 4


def test_a_recreated_account_with_the_same_name_and_uid_does_not_inherit_the_old_password(
        make_site, counted, system_users):
    """useradd gives the freed uid again: the shadow stamp still tells the accounts apart."""
    site = make_site(**cached())
    old = user_with_spool(site, system_users)
    server = site.server()
    log_in_and_quit(server, old)
    os.unlink(os.path.join(site.spool_dir, old.name))
    subprocess.run(["userdel", "-r", "-f", old.name], check=True, capture_output=True,
                   timeout=30)
    subprocess.run(["useradd", "--uid", str(old.uid), "--user-group", "--create-home",
                    "--shell", "/bin/bash", old.name], check=True, capture_output=True,
                   timeout=30)
    set_password(old, "pw-the-new-owners")
    assert pw_uid(old.name) == old.uid
    make_spool(site.spool_dir, old, mbox(("new owner", "Body.\n")))      # the same uid
    assert refused(server, old, old.password)
    assert counted.count("auth", old) == 2                      # PAM was asked again
    log_in_and_quit(server, old, "pw-the-new-owners")


def test_a_wrong_password_is_remembered_for_the_negative_ttl_and_still_braked(
        make_site, counted, system_users):
    site = make_site(**cached(negative_ttl=SHORT_TTL_S))
    user = user_with_spool(site, system_users)
    server = site.server()
    asked = time.monotonic()
    assert refused(server, user, "pw-not-yet")
    assert refused(server, user, "pw-not-yet")                  # remembered
    assert counted.count("auth", user) == 1
    failures = logged_lines(site, f"LOGIN FAILED, user={user.name},", 2)
    assert len(failures) == 2                                   # both counted for the brakes
    refusals = logged_lines(site, f'login of "{user.name}" refused', 2)
    assert len(refusals) == 2 and refusals[0] == refusals[1]    # the same words either way
    wait_past(asked, SHORT_TTL_S)
    asked_again = time.monotonic()
    assert refused(server, user, "pw-not-yet")                  # forgotten: PAM asked again
    assert counted.count("auth", user) == 2
    assert refused(server, user, "pw-not-yet")
    # remembered again, unless the braked attempts outlasted the TTL (a loaded machine)
    pam_asked = 2 if time.monotonic() - asked_again < SHORT_TTL_S else 3
    assert counted.count("auth", user) == pam_asked
    set_password(user, "pw-not-yet")                            # a new shadow entry: a new key
    log_in_and_quit(server, user, "pw-not-yet")
    assert counted.count("auth", user) == pam_asked + 1


def test_an_account_expired_since_its_password_was_remembered_is_refused_as_without_cache(
        make_site, counted, system_users):
    """A hit skips the password step; the account step, asked afresh, refuses: the password
    was right all the same, so the refusal is `LOGIN REFUSED (account)` as without the
    cache, answered and logged as a wrong password (docs/internals.md, "Failures and policy
    refusals")."""
    site = make_site(**cached())
    user = user_with_spool(site, system_users)
    server = site.server()
    log_in_and_quit(server, user)
    subprocess.run(["usermod", "--expiredate", "1970-01-02", user.name], check=True,
                   capture_output=True, timeout=30)
    with pytest.raises(poplib.error_proto, match=r"is incorrect"):
        log_in_and_quit(server, user)
    # the hit's account step refused: PAM is then asked whole, as without the cache, so the
    # refusal takes what a wrong password takes now, its account step given the answer it
    # just gave, not asked twice (docs/auth-cache.md, "Timing")
    assert counted.count("auth", user) == 2 and counted.count("account", user) == 2
    site.syslog.wait_for(rf"LOGIN REFUSED \(account\), user={user.name}, .*\(13\)")
    site.syslog.wait_for(rf"LOGIN FAILED, user={user.name}, method=USER, .*failures=1, .*")


def test_hup_empties_the_cache_and_the_log_holds_only_counts(make_site, counted, system_users):
    site = make_site(**cached())
    user = user_with_spool(site, system_users)
    server = site.server()
    log_in_and_quit(server, user)
    log_in_and_quit(server, user)
    assert counted.count("auth", user) == 1
    os.kill(server.pid, signal.SIGHUP)
    site.syslog.wait_for(r"auth cache: 1 entries forgotten; 1 hits, 1 misses")
    log_in_and_quit(server, user)
    assert counted.count("auth", user) == 2
    texts = site.syslog.texts()
    about_the_cache = [text for text in texts if "cache" in text.lower()]
    assert len(about_the_cache) >= 3
    assert all(any(re.fullmatch(line, text) for line in COUNT_LINES) for text in about_the_cache)
    assert not [text for text in texts if user.password in text]


def test_the_pre_login_process_and_the_user_session_hold_nothing_of_the_cache(
        make_site, system_users):
    site = make_site(**cached())
    user = user_with_spool(site, system_users)
    server = site.server()
    [cache] = wait_until(lambda: cache_processes(server), what="the cache process")
    ends = seqpacket_inodes(server.pid)
    assert len(ends) == 2 and ends & socket_inodes(cache)
    with socket.create_connection((server.host, server.port), timeout=10) as client:
        assert read_greeting(client).startswith(b"+OK")
        client.sendall(b"USER someone\r\n")
        assert client.recv(100).startswith(b"+OK")
        prelogin = wait_until(lambda: processes_of(server, pw_uid(PRELOGIN_USER)),
                              what="the pre-login process")[0]
        monitor = int(proc_status(prelogin)["PPid"])
        [authentication] = wait_until(lambda: authentication_process_of(monitor),
                                      what="the authentication process")
        assert socket_inodes(authentication) & ends             # its request end
        # the monitor, the user session to be, closes its copy right after the fork
        wait_until(lambda: not socket_inodes(monitor) & ends, what="the monitor's close")
        assert not socket_inodes(prelogin) & ends
    session = login(server, user)
    try:
        [pid] = wait_until(lambda: processes_of(server, user.uid), what="the user session")
        assert not socket_inodes(pid) & ends
    finally:
        session.quit()


def test_a_cache_process_that_dies_is_replaced(make_site, counted, system_users):
    site = make_site(**cached())
    user = user_with_spool(site, system_users)
    server = site.server()
    [first] = wait_until(lambda: cache_processes(server), what="the cache process")
    os.kill(first, signal.SIGKILL)
    [second] = wait_until(lambda: [pid for pid in cache_processes(server) if pid != first],
                          what="a new cache process")
    assert proc_status(second)["Uid"].split()[0] == "0"
    assert proc_status(second)["VmLck"].split()[0] != "0"       # its memory is locked
    log_in_and_quit(server, user)
    log_in_and_quit(server, user)
    assert counted.count("auth", user) == 1


def pw_uid(name: str) -> int:
    return pwd.getpwnam(name).pw_uid


def socket_inodes(pid: int) -> set[int]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        match = re.fullmatch(r"socket:\[(\d+)\]", target)
        if match:
            found.add(int(match[1]))
    return found


def seqpacket_inodes(pid: int) -> set[int]:
    """The master's SOCK_SEQPACKET sockets: the cache's socket pair is its only one."""
    with open("/proc/net/unix") as f:
        next(f)
        seqpacket = {int(fields[6]) for fields in (line.split() for line in f)
                     if fields[4] == "0005"}
    return socket_inodes(pid) & seqpacket
