"""poppassd and the POP server share the brute-force brakes (qpopper/auth/brakes.py): the real
poppassd (one process per connection, systemd-socket-activate) and the real POP master read
the same site configuration, so they count failures in the same auth-brakes-file. Guessing
through one slows the other; failures are logged in the fail2ban format the shipped jail
matches; a correct password from another address is not slowed. Client addresses are
loopback ones (127.0.0.x), the client socket bound to each."""

from __future__ import annotations

import configparser
import os
import re
import socket
import sqlite3
import tempfile
import time

import pytest

from qpopper import limits
from qpopper.auth.brakes import Brakes, brake_delay, failure_log_line
from qpopper.tools import poppassd
from tests.helpers.sysusers import make_spool
from tests.helpers.messages import mbox
from tests.helpers.pop_logins import Conn
from tests.helpers.poppassd_service import BAD_OLD, PoppassdService
from tests.server_harness import Site
from tests.helpers.repo import REPO

pytestmark = pytest.mark.timeout(120)

SHIPPED_FAIL2BAN = REPO / "etc" / "fail2ban"
MAX_DELAY = 4
"""The sites' auth-brakes-max-delay: well above the time an unbraked check takes, so "slowed"
and "not slowed" are seconds apart, and low enough to keep the tests short."""
FREE = limits.BRAKE_FREE_FAILURES_PER_ADDRESS
FIXED = limits.POPPASSD_FAILURE_DELAY_S
SLACK_S = 0.05
BOUND = limits.BRAKE_MAX_WAIT_BEFORE_CHECK_S
"""Timer granularity allowed below a lower bound (sleeps never end early)."""
UNBRAKED_S = 2.0
"""An upper bound for a check no brake applies to (PAM with nodelay answers in milliseconds):
half the brake the same check from the guessing address waits."""


def shipped(name: str) -> configparser.ConfigParser:
    """A fail2ban file the package ships (etc/fail2ban/NAME), raw (no interpolation)."""
    parser = configparser.RawConfigParser()
    parser.read(SHIPPED_FAIL2BAN / name)
    return parser


def fail2ban_regex() -> re.Pattern:
    """The shipped filter's failregex (filter.d/qpopper.conf) as Python reads it: common.conf's
    syslog prefix reduced to a syslog file line's (date host daemon[pid]:), <HOST> and the
    user tag as named groups. (tests/test_fail2ban.py runs the real fail2ban-regex.)"""
    definition = shipped("filter.d/qpopper.conf")["Definition"]
    prefix = (rf"\w{{3}} [ \d]\d \d\d:\d\d:\d\d \S+ {definition['_daemon']}(?:\[\d+\])?: ")
    regex = (definition["failregex"].replace("^%(__prefix_line)s", "^" + prefix)
             .replace("<HOST>", r"(?P<host>[^\]]+)")
             .replace("<F-USER>", "(?P<user>").replace("</F-USER>", ")"))
    return re.compile(regex)


def as_syslog_file_line(ident: str, pid: int, text: str) -> str:
    return f"Nov 27 14:00:01 mailhost {ident}[{pid}]: {text}"


def test_shipped_jail_bans_from_pop_and_poppassd_lines():
    jail = shipped("jail.d/qpopper.conf")["qpopper"]
    assert {"pop3", "pop3s", "106"} <= set(jail["port"].split(","))
    regex = fail2ban_regex()
    for ident, method in (("poppassd", poppassd.BRAKE_METHOD), ("popper", "USER")):
        line = as_syslog_file_line(ident, 4242, failure_log_line("alice", method, "192.0.2.7",
                                                                 4, 3.0))
        match = regex.match(line)
        assert match and match["host"] == "192.0.2.7" and match["user"] == "alice", line
    assert not regex.match(as_syslog_file_line("sshd", 1, failure_log_line(
        "alice", "USER", "192.0.2.7", 1, 0)))


def test_names_with_undecodable_bytes_are_counted(tmp_path):
    """poppassd reads its lines as bytes (surrogateescape): such a name is counted and
    cleared like any other, never an exception (sqlite3 refuses lone surrogates)."""
    brakes = Brakes(str(tmp_path / "brakes.sqlite"), MAX_DELAY, lambda p, t: None)
    name = b"\xff\xfeguess".decode("utf-8", "surrogateescape")
    for _ in range(limits.BRAKE_FREE_FAILURES_PER_USER + 1):
        delay = brakes.note_failure("192.0.2.3", name, poppassd.BRAKE_METHOD, 0)
    assert delay == brake_delay(limits.BRAKE_FREE_FAILURES_PER_USER + 1,
                                limits.BRAKE_FREE_FAILURES_PER_USER, MAX_DELAY) > 0
    assert brakes.address_delay("192.0.2.3") > 0
    brakes.record_success(name)
    assert brakes.note_failure("192.0.2.3", name, poppassd.BRAKE_METHOD, 0) == 0


def test_peer_address_writes_an_ipv4_client_of_a_dual_stack_socket_as_ipv4():
    """poppassd.socket listens on [::]:106, so IPv4 clients arrive as ::ffff:a.b.c.d; popper
    writes them as a.b.c.d, and so must poppassd (its fail2ban lines, PAM_RHOST). The
    listener is the dual-stack socket's loopback form: ::ffff:127.0.0.1, IPV6_V6ONLY off."""
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    with listener:
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        listener.bind(("::ffff:127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=10,
                                      source_address=("127.0.0.7", 0)):
            conn, peer = listener.accept()
            with conn:
                assert peer[0] == "::ffff:127.0.0.7"           # what the socket reports
                assert poppassd.peer_address(conn.fileno()) == "127.0.0.7"
    with tempfile.TemporaryFile() as not_a_socket:
        assert poppassd.peer_address(not_a_socket.fileno()) == "unknown"


def make_site(world_tmp, pam_service, system_users, poppassd_listen_host="127.0.0.1"):
    s = Site(world_tmp, pam_service, auth_brakes_max_delay=MAX_DELAY)
    s.srv = s.server()
    s.poppassd = PoppassdService(s, pam_service, poppassd_listen_host)
    s.users = system_users
    return s


@pytest.fixture
def site(world_tmp, pam_service, system_users):
    s = make_site(world_tmp, pam_service, system_users)
    yield s
    s.poppassd.stop()
    s.close()


@pytest.fixture
def dual_stack_site(world_tmp, pam_service, system_users):
    """poppassd on a dual-stack socket (loopback form), the POP server on 127.0.0.1."""
    s = make_site(world_tmp, pam_service, system_users, "[::ffff:127.0.0.1]")
    yield s
    s.poppassd.stop()
    s.close()


def poppassd_pass(site: Site, source: str, user: str, password: str,
                  new_password: str | None = None) -> tuple[bytes, float]:
    """One poppassd dialogue from `source`: the reply to `pass` and how long it took; with
    `new_password` (after a good old one), the password is changed too."""
    with site.poppassd.connect(source) as c:
        assert c.say(f"user {user}") == b"200 Your password please."
        started = time.monotonic()
        reply = c.say(f"pass {password}")
        seconds = time.monotonic() - started
        if reply == BAD_OLD:
            assert c.closed_by_server()
        elif new_password is not None:
            assert c.say(f"newpass {new_password}") == poppassd.CHANGED.encode()
            assert c.say("quit") == poppassd.BYE.encode()
    return reply, seconds


def pop_pass(site: Site, source: str, user: str, password: str) -> tuple[bytes, float]:
    conn = Conn(site.srv, source)
    try:
        return conn.login_seconds(user, password)
    finally:
        conn.close()


def test_guessing_through_pop_and_poppassd_counts_together(site):
    victim = site.users.create("pb")
    make_spool(site.spool_dir, victim, mbox(("hi", "there")))
    user = victim.name

    # POP: the address's free failures, and one more (none of them waits: the brake applies
    # from the next attempt on). 127.0.0.1 now has FREE + 1 failures.
    for i in range(FREE + 1):
        reply, _ = pop_pass(site, "127.0.0.1", user, f"pop-guess-{i}")
        assert reply.startswith(b"-ERR [AUTH]"), reply

    # poppassd, same address: each wrong attempt costs the address's brake (counted with POP's
    # failures: at most BOUND of it before the check, the rest after), then the fixed failure
    # delay. Lower bounds only.
    timings = []
    for i in range(4):
        reply, seconds = poppassd_pass(site, "127.0.0.1", user, f"poppassd-guess-{i}")
        assert reply == BAD_OLD
        timings.append(seconds)
    expected = [brake_delay(FREE + 1 + i, FREE, MAX_DELAY) + FIXED for i in range(4)]
    assert expected == sorted(set(expected)) and expected[0] > FIXED     # growing, all braked
    for seconds, bound in zip(timings, expected):
        assert seconds >= bound - SLACK_S, (timings, expected)

    texts = site.syslog.texts()
    ours = [t for t in texts if t.startswith(f"LOGIN FAILED, user={user}, method=poppassd, "
                                             f"ip=[127.0.0.1], ")]
    assert [re.search(r"failures=(\d+)", t)[1] for t in ours] == [
        str(n) for n in range(FREE + 2, FREE + 6)]
    for i, brake in enumerate(e - FIXED for e in expected):
        assert f"brute-force brake: 127.0.0.1 waits {min(brake, BOUND):.2f}s before its " \
               f"login attempt is checked (its brake is {brake:.2f}s)" in texts, i
    regex = fail2ban_regex()
    for pid, text in ((pid, text) for _, pid, text in list(site.syslog.records)
                      if text.startswith("LOGIN FAILED, ")):
        ident = "poppassd" if f"method={poppassd.BRAKE_METHOD}," in text else "popper"
        match = regex.match(as_syslog_file_line(ident, pid, text))
        assert match and match["host"] == "127.0.0.1" and match["user"] == user, text

    # The real user, from another address, changes the password without waiting ...
    new_password = "changed-while-guessed-9"
    reply, seconds = poppassd_pass(site, "127.0.0.2", user, victim.password, new_password)
    assert reply == poppassd.ASK_NEW_PASSWORD.encode()
    braked = brake_delay(FREE + 5, FREE, MAX_DELAY)       # what 127.0.0.1 waits now
    assert braked >= 2 * UNBRAKED_S and seconds < UNBRAKED_S
    site.syslog.wait_for(rf'password changed for "{user}" from 127\.0\.0\.2')
    assert not any("127.0.0.2 waits" in t for t in site.syslog.texts())

    # ... and POP counts poppassd's failures: from the guessing address the correct password
    # waits the bounded first part of the brake only (nobody is guessing from it right now);
    # from the other address it does not wait at all.
    reply, seconds = pop_pass(site, "127.0.0.1", user, new_password)
    assert reply.startswith(b"+OK"), reply
    site.syslog.wait_for(rf"brute-force brake: 127\.0\.0\.1 waits {min(braked, BOUND):.2f}s "
                         rf"before its login attempt is checked \(its brake is {braked:.2f}s\)")
    reply, seconds = pop_pass(site, "127.0.0.2", user, new_password)
    assert reply.startswith(b"+OK") and seconds < UNBRAKED_S, (reply, seconds)


def test_a_user_name_guessed_from_many_addresses_slows_poppassd_failures_not_its_owner(site):
    victim = site.users.create("pu")
    user = victim.name
    # A distributed guesser: FREE failures from each of three addresses (no address brake
    # applies), through POP, against one name: enough for a name's brake above the fixed delay.
    sources = [f"127.0.0.{n}" for n in range(10, 13)]
    for source in sources:
        conn = Conn(site.srv, source)
        try:
            for i in range(FREE):
                reply, _ = conn.login_seconds(user, f"spread-{i}")
                assert reply.startswith(b"-ERR [AUTH]"), reply
        finally:
            conn.close()
    count = FREE * len(sources)
    user_brake = brake_delay(count + 1, limits.BRAKE_FREE_FAILURES_PER_USER, MAX_DELAY)
    assert user_brake > FIXED + 0.5

    # A wrong password through poppassd from a fresh address: the name's brake, not the
    # fixed delay, decides when the refusal comes.
    reply, seconds = poppassd_pass(site, "127.0.0.20", user, "one-more-guess")
    assert reply == BAD_OLD and seconds >= user_brake - SLACK_S, seconds
    # brake= is the ADDRESS's brake (none after its first failure), not the name's
    site.syslog.wait_for(rf"LOGIN FAILED, user={user}, method=poppassd, ip=\[127\.0\.0\.20\], "
                         rf"failures=1, brake=0\.00s")
    # The owner's correct old password is never slowed by the name's brake.
    reply, seconds = poppassd_pass(site, "127.0.0.21", user, victim.password)
    assert reply == poppassd.ASK_NEW_PASSWORD.encode() and seconds < UNBRAKED_S, seconds


def test_an_ipv4_client_of_dual_stack_poppassd_is_one_client_with_its_pop_logins(
        dual_stack_site):
    """The same IPv4 client guesses through POP (IPv4 listener) and through poppassd on a
    dual-stack socket, where it arrives as ::ffff:127.0.0.14: poppassd waits the brake POP's
    failures earned, and its fail2ban and brake lines name 127.0.0.14, as popper's do."""
    site = dual_stack_site
    victim = site.users.create("pd")
    source = "127.0.0.14"
    for i in range(FREE + 1):
        reply, _ = pop_pass(site, source, victim.name, f"pop-guess-{i}")
        assert reply.startswith(b"-ERR [AUTH]"), reply
    reply, seconds = poppassd_pass(site, source, victim.name, "poppassd-guess")
    assert reply == BAD_OLD
    braked = brake_delay(FREE + 1, FREE, MAX_DELAY)
    assert seconds >= braked + FIXED - SLACK_S, seconds
    site.syslog.wait_for(rf"LOGIN FAILED, user={victim.name}, method=poppassd, "
                         rf"ip=\[127\.0\.0\.14\], failures={FREE + 2},.*")
    texts = site.syslog.texts()
    assert f"brute-force brake: {source} waits {min(braked, BOUND):.2f}s before its login " \
           f"attempt is checked (its brake is {braked:.2f}s)" in texts
    assert not any("::ffff:" in text for text in texts), [t for t in texts if "::ffff:" in t]


def brakes_rows(site: Site, key: str) -> list[tuple]:
    """The shared brakes file's rows for `key` (an address or a user name)."""
    with sqlite3.connect(os.path.join(site.root, "auth-brakes.sqlite")) as db:
        found = db.execute("SELECT kind, key, count FROM failures WHERE key = ?",
                           (key,)).fetchall()
    db.close()
    return found


def test_an_expired_account_s_right_old_password_holds_a_braked_address(site, system_users):
    """poppassd answers the right old password of an expired account as a wrong one, and
    from a braked address holds the address during that answer's wait as a wrong guess
    does, and counts it as one (docs/operations.md, "An expired account or password")."""
    def rows(source):
        return brakes_rows(site, source)

    source = "127.0.0.33"
    gone = system_users.create("pe", account_expired=True)
    for n in range(FREE + 3):
        reply, _ = pop_pass(site, source, f"qptnobody{n}", "guess")
        assert reply.startswith(b"-ERR [AUTH]"), reply
    assert ("held", source, 0) not in rows(source)
    reply, _ = poppassd_pass(site, source, gone.name, gone.password)
    assert reply == BAD_OLD
    found = rows(source)
    assert ("held", source, 0) in found and ("address", source, FREE + 4) in found, found


def test_an_expired_account_s_right_old_password_raises_the_brakes_as_a_wrong_one(site):
    """The right old password of an expired account, answered as a wrong one, is counted
    in the brakes exactly as a wrong old password is (the address, the user name), so the
    next attempt from there is braked alike, and logged as one (`LOGIN FAILED`, which
    fail2ban counts) beside its own `LOGIN REFUSED (account)` line."""
    gone, lost = (site.users.create(tag, account_expired=True) for tag in ("pr", "pw"))
    tries = (("127.0.0.51", gone, gone.password), ("127.0.0.52", lost, "guess"))
    for source, user, password in tries:
        reply, _ = poppassd_pass(site, source, user.name, password)
        assert reply == BAD_OLD
    right, wrong = ([row[::2] for row in brakes_rows(site, source) + brakes_rows(site, user.name)]
                    for source, user, _ in tries)
    assert right == wrong == [("address", 1), ("user", 1)], (right, wrong)
    site.syslog.wait_for(rf"LOGIN REFUSED \(account\), user={gone.name}, method=poppassd, "
                         r"ip=\[127\.0\.0\.51\], .*")
    for source, user, _ in tries:
        site.syslog.wait_for(rf"LOGIN FAILED, user={user.name}, method=poppassd, "
                             rf"ip=\[{re.escape(source)}\], failures=1, .*")
