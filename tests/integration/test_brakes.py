"""Brute-force brakes (qpopper/auth/brakes.py): the delay schedule, the shared SQLite counts
(several processes, bounded size, forgetting), the fail2ban line, and on the REAL server:
50 wrong passwords from 127.0.0.2 are slowed measurably and logged, while a correct login
from 127.0.0.1 is not slowed."""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from qpopper import limits
from qpopper.addresses import parse_networks
from qpopper.auth.brakes import Brakes, brake_delay, failure_log_line
from tests.helpers.descriptors import descriptors_on
from tests.helpers.sysusers import make_spool
from tests.helpers.messages import mbox
from tests.helpers.pop_logins import Conn
from tests.server_harness import Site

# fail2ban's stock filter.d/courier-auth.conf failregex, with common.conf's syslog prefix
# reduced to what a syslog file line has (date, host, daemon[pid]:) and _daemon set as the
# README's jail sets it: filter = courier-auth[_daemon="popper"].
COURIER_AUTH = re.compile(
    r"^\w{3} [ \d]\d \d\d:\d\d:\d\d \S+ popper(?:\[\d+\])?: "
    r"LOGIN FAILED, (?:(?!ip=)(?:user=(?P<user>[^,]*)|\w+=[^,]*), )*ip=\[(?P<host>[^\]]+)\]")


def test_delay_schedule():
    free = limits.BRAKE_FREE_FAILURES_PER_ADDRESS
    assert [brake_delay(n, free, 30) for n in range(free + 1)] == [0.0] * (free + 1)
    first = limits.BRAKE_FIRST_DELAY_S
    assert brake_delay(free + 1, free, 30) == first
    assert brake_delay(free + 2, free, 30) == 2 * first
    assert brake_delay(free + 3, free, 30) == 4 * first
    assert brake_delay(free + 100, free, 30) == 30
    assert brake_delay(free + 100, free, 0) == 0


def test_fail2ban_courier_auth_filter_matches_the_line():
    line = failure_log_line("alice", "APOP", "192.0.2.7", 4, 0.25)
    match = COURIER_AUTH.match(f"Nov 27 14:00:01 mailhost popper[4242]: {line}")
    assert match and match["host"] == "192.0.2.7" and match["user"] == "alice"
    v6 = failure_log_line("a,b", "PLAIN", "2001:db8::5", 1, 0)
    match = COURIER_AUTH.match(f"Nov 27 14:00:01 mailhost popper[1]: {v6}")
    assert match and match["host"] == "2001:db8::5" and match["user"] == "a?b"


def test_brake_field_is_the_address_brake_after_the_failure(tmp_path):
    """brake= in the fail2ban line is the address's brake from now on (README, "Brute-force
    brakes and fail2ban"): 0 while within the free failures, then the schedule's value."""
    log = []
    brakes = Brakes(str(tmp_path / "b.sqlite"), 30, lambda p, t: log.append(t))
    free = limits.BRAKE_FREE_FAILURES_PER_ADDRESS
    for n in range(1, free + 3):
        brakes.note_failure("192.0.2.3", "jo", "USER", 0)
        assert log[-1].endswith(f"failures={n}, brake={brake_delay(n, free, 30):.2f}s"), log
        assert f"brake={brakes.address_delay('192.0.2.3'):.2f}s" in log[-1]
    assert log[-1].endswith(f"brake={2 * limits.BRAKE_FIRST_DELAY_S:.2f}s")


def braked(path, clock, failures: int = 12) -> Brakes:
    """A brakes file whose 192.0.2.4 has `failures` failures (its brake far above the bound)."""
    brakes = Brakes(path, 30, lambda p, t: None, clock=clock)
    for _ in range(failures):
        brakes.record_failure("192.0.2.4", "guessed")
    return brakes


def test_a_correct_password_from_a_braked_address_waits_at_most_the_bound(tmp_path):
    now = [1_000_000.0]
    path = str(tmp_path / "b.sqlite")
    brake = braked(path, lambda: now[0]).address_delay("192.0.2.4")
    bound = limits.BRAKE_MAX_WAIT_BEFORE_CHECK_S
    assert brake == 30 > bound
    # a new connection, a correct password: only the bound before the check, nothing after
    log, slept = [], []
    session = Brakes(path, 30, lambda p, t: log.append(t), clock=lambda: now[0])
    assert session.hold_address("192.0.2.4", slept.append) == bound
    session.record_success("kim")
    assert slept == [bound]
    assert log == [f"brute-force brake: 192.0.2.4 waits {bound:.2f}s before its login attempt "
                   f"is checked (its brake is 30.00s)"]
    # a wrong guess instead: the rest of the brake before its answer, then the failure delay
    guess = Brakes(path, 30, lambda p, t: None, clock=lambda: now[0])
    guess.hold_address("192.0.2.4", lambda s: None)
    assert guess.note_failure("192.0.2.4", "kim", "USER", 2) == 30 - bound + 2


class CountingOpens(Brakes):
    """Real brakes that count how often they open the file."""
    opens = 0

    def _connect(self):
        self.opens += 1
        return super()._connect()


@pytest.mark.parametrize("braked_address", [False, True])
def test_a_login_attempt_opens_the_file_once_and_closes_it_when_over(tmp_path, braked_address):
    """hold_address, then record_success or note_failure: one connection for the attempt
    (a braked address reads its count and its hold), closed when the attempt is over."""
    now = [1_000_000.0]
    path = str(tmp_path / "b.sqlite")
    if braked_address:
        braked(path, lambda: now[0]).close()
    for finish in ("success", "failure"):
        brakes = CountingOpens(path, 30, lambda p, t: None, clock=lambda: now[0])
        brakes.hold_address("192.0.2.4", lambda s: None)
        assert descriptors_on(path) == [path]
        if finish == "success":
            brakes.record_success("kim")
        else:
            brakes.note_failure("192.0.2.4", "kim", "USER", 0)
        assert brakes.opens == 1, finish
        assert descriptors_on(path) == [], finish
        # close() ends an attempt that ended otherwise (a policy refusal, the handover)
        brakes.hold_address("192.0.2.4", lambda s: None)
        brakes.close()
        assert descriptors_on(path) == [] and brakes.opens == 2


def test_while_a_wrong_guess_is_answered_the_address_is_held(tmp_path):
    """A guesser who hangs up once the bounded wait is over without +OK (a wrong guess) and
    tries again at once gains nothing: the new attempt waits until the wrong guess's answer
    is due. Another address is not held."""
    now = [1_000_000.0]
    path = str(tmp_path / "b.sqlite")
    braked(path, lambda: now[0])
    bound = limits.BRAKE_MAX_WAIT_BEFORE_CHECK_S
    first = Brakes(path, 30, lambda p, t: None, clock=lambda: now[0])
    first.hold_address("192.0.2.4", lambda s: None)
    now[0] += bound
    answer_in = first.note_failure("192.0.2.4", "kim", "USER", 0)     # now sleeping ...
    assert answer_in == 30 - bound
    now[0] += 1                                                        # ... 1 s later
    slept = []
    Brakes(path, 30, lambda p, t: None, clock=lambda: now[0]).hold_address("192.0.2.4",
                                                                         slept.append)
    assert slept == [pytest.approx(answer_in - 1)]
    assert Brakes(path, 30, lambda p, t: None).hold_address("192.0.2.5", slept.append) == 0
    # once the answer is out, the next attempt waits the bound again
    now[0] += answer_in
    slept.clear()
    Brakes(path, 30, lambda p, t: None, clock=lambda: now[0]).hold_address("192.0.2.4",
                                                                         slept.append)
    assert slept == [bound]


def test_a_refusal_answered_as_a_wrong_guess_counts_and_holds_as_one(tmp_path):
    """note_failure, for the right password of an expired account too: it takes as long as
    a wrong guess, holds the address, counts and logs as one would (else a guesser with two
    connections, the next attempt's brake, or a ban could tell it apart)."""
    now = [1_000_000.0]
    path = str(tmp_path / "b.sqlite")
    braked(path, lambda: now[0])
    bound = limits.BRAKE_MAX_WAIT_BEFORE_CHECK_S
    log = []
    first = Brakes(path, 30, lambda p, t: log.append(t), clock=lambda: now[0])
    brake = first.address_delay("192.0.2.4")
    first.hold_address("192.0.2.4", lambda s: None)
    log.clear()                                         # the hold's own line
    now[0] += bound
    answer_in = first.note_failure("192.0.2.4", "kim", "USER", 0)
    assert answer_in == brake - bound and len(log) == 1 and log[0].startswith(
        "LOGIN FAILED, user=kim, method=USER, ip=[192.0.2.4], failures=13, ")
    now[0] += 1
    slept = []
    second = Brakes(path, 30, lambda p, t: None, clock=lambda: now[0])
    second.hold_address("192.0.2.4", slept.append)
    assert slept == [pytest.approx(answer_in - 1)]
    second.close()
    with sqlite3.connect(path) as db:                            # counted as a guess
        assert db.execute("SELECT kind, count FROM failures WHERE key IN ('192.0.2.4', 'kim') "
                          "AND kind != 'held' ORDER BY kind").fetchall() == [("address", 13),
                                                                            ("user", 1)]
    db.close()


def test_trusted_networks_are_neither_delayed_nor_recorded(tmp_path):
    path = str(tmp_path / "b.sqlite")
    log = []
    trusted = parse_networks("192.0.2.0/28, 2001:db8:5::/48")
    brakes = Brakes(path, 30, lambda p, t: log.append(t), trusted_networks=trusted)
    for client in ("192.0.2.1", "::ffff:192.0.2.2", "2001:db8:5:1::9"):
        for _ in range(20):
            assert brakes.hold_address(client, lambda s: pytest.fail("slept")) == 0
            assert brakes.note_failure(client, "webmail-user", "USER", 0) == 0
        assert brakes.address_delay(client) == 0
    # logged (fail2ban's ignoreip must name them too), but not counted
    assert len(log) == 60 and all(t.startswith("LOGIN FAILED, user=webmail-user") and
                                  t.endswith("failures=0, brake=0.00s") for t in log)
    assert not os.path.exists(path)                       # nothing was ever written
    # an address outside them is braked as usual, and the user name counts from there
    for _ in range(10):
        brakes.note_failure("192.0.2.16", "webmail-user", "USER", 0)
    assert brakes.address_delay("192.0.2.16") > 0


def test_trusted_networks_option_takes_cidr_lists_and_refuses_anything_else(tmp_path):
    from qpopper.config import ConfigError, load
    path = tmp_path / "qpopper.config"
    path.write_text('set auth-brakes-trusted-networks = "10.0.0.0/8 2001:db8::/32"\n'
                    "set auth-brakes-trusted-networks = 192.0.2.7\n")
    cfg, _ = load(["-f", str(path)])
    brakes = Brakes.from_config(cfg, lambda p, t: None)
    assert [str(n) for n in brakes.trusted_networks] == ["10.0.0.0/8", "2001:db8::/32",
                                                         "192.0.2.7/32"]
    assert brakes.is_trusted("10.1.2.3") and brakes.is_trusted("::ffff:192.0.2.7")
    assert not brakes.is_trusted("192.0.2.8") and not brakes.is_trusted("2001:db9::1")
    path.write_text("set auth-brakes-trusted-networks = 10.0.0.0/33\n")
    with pytest.raises(ConfigError, match=rf"{path}:1: .*'10\.0\.0\.0/33' is not an IPv4 or "
                                          rf"IPv6 network"):
        load(["-f", str(path)])


def test_counts_are_shared_between_processes(tmp_path):
    path = str(tmp_path / "brakes.sqlite")
    log = []
    free = limits.BRAKE_FREE_FAILURES_PER_ADDRESS
    for _ in range(free + 2):
        pid = os.fork()
        if pid == 0:                        # each failure from its own process, as children do
            Brakes(path, 30, lambda p, t: None).record_failure("192.0.2.9", "carol")
            os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
    brakes = Brakes(path, 30, lambda p, t: log.append(t))
    assert brakes.address_delay("192.0.2.9") == 2 * limits.BRAKE_FIRST_DELAY_S
    assert brakes.address_delay("192.0.2.10") == 0
    assert log == []
    assert os.stat(path).st_mode & 0o077 == 0


def test_success_clears_the_user_but_not_the_address(tmp_path):
    brakes = Brakes(str(tmp_path / "b.sqlite"), 30, lambda p, t: None)
    for _ in range(10):
        brakes.record_failure("192.0.2.1", "dave")
    _, user_delay = brakes.record_failure("192.0.2.1", "dave")
    assert user_delay > 0
    brakes.record_success("dave")
    _, user_delay = brakes.record_failure("192.0.2.1", "dave")
    assert user_delay == 0
    assert brakes.address_delay("192.0.2.1") > 0


def test_an_ipv6_host_is_braked_by_its_64_not_by_each_address(tmp_path):
    """One host owns a /64 and may take a fresh address for every guess: failures spread over
    its addresses brake the next address of that /64 as they would brake one address, while
    another /64 is not slowed. The log lines keep each client's own address."""
    path = str(tmp_path / "b.sqlite")
    log = []
    brakes = Brakes(path, 30, lambda p, t: log.append(t))
    free = limits.BRAKE_FREE_FAILURES_PER_ADDRESS
    for n in range(free + 2):                    # each guess from another address of the /64
        brakes.note_failure(f"2001:db8:1:2::{n + 1:x}", f"guess{n}", "USER", 0)
    assert f"ip=[2001:db8:1:2::{free + 2:x}], failures={free + 2}," in log[-1]
    expected = 2 * limits.BRAKE_FIRST_DELAY_S
    assert Brakes(path, 30, lambda p, t: None).address_delay("2001:db8:1:2:ffff::99") == expected
    assert brakes.address_delay("2001:db8:1:3::1") == 0            # the neighbouring /64
    slept = []
    assert expected <= limits.BRAKE_MAX_WAIT_BEFORE_CHECK_S
    assert brakes.hold_address("2001:db8:1:2:abcd::5", slept.append) == expected
    assert slept == [expected]
    assert log[-1].startswith(f"brute-force brake: 2001:db8:1:2:abcd::5 waits {expected:.2f}s")
    # IPv4: by the address, an IPv4-mapped client (dual-stack socket) as that address.
    for _ in range(free + 1):
        brakes.record_failure("::ffff:192.0.2.9", "ivy")
    assert brakes.address_delay("192.0.2.9") == limits.BRAKE_FIRST_DELAY_S
    assert brakes.address_delay("192.0.2.10") == 0


def test_failures_are_forgotten_after_the_window(tmp_path):
    now = [1_000_000.0]
    brakes = Brakes(str(tmp_path / "b.sqlite"), 30, lambda p, t: None, clock=lambda: now[0])
    for _ in range(10):
        brakes.record_failure("192.0.2.1", "erin")
    assert brakes.address_delay("192.0.2.1") > 0
    now[0] += limits.BRAKE_WINDOW_S + 1
    assert brakes.address_delay("192.0.2.1") == 0
    assert brakes.record_failure("192.0.2.1", "erin") == (1, 0.0)


def test_the_table_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "BRAKE_MAX_ROWS", 50)
    path = str(tmp_path / "b.sqlite")
    brakes = Brakes(path, 30, lambda p, t: None)
    for n in range(100):
        brakes.record_failure(f"198.51.100.{n}", "frank")
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM failures").fetchone()[0] <= 50
    db.close()


def test_the_account_step_s_mark_is_never_the_row_the_bound_drops(tmp_path, monkeypatch):
    """Rows are dropped oldest `last` first; held addresses whose answers are due after the
    mark ends must not push it out (docs/operations.md, "When PAM's account step cannot
    decide")."""
    monkeypatch.setattr(limits, "BRAKE_MAX_ROWS", 5)
    now = [1_000_000.0]
    path = str(tmp_path / "b.sqlite")
    brakes = Brakes(path, 30, lambda p, t: None, clock=lambda: now[0])
    assert not brakes.account_undecided()
    brakes.record_failure("198.51.100.250", "frank", account_undecided=True)
    assert brakes.account_undecided()
    for n in range(20):
        brakes._hold(f"198.51.100.{n}", now[0] + limits.ACCOUNT_UNDECIDED_S + 60)
        brakes.record_failure(f"198.51.100.{n}", "frank")
    brakes.close()
    assert Brakes(path, 30, lambda p, t: None, clock=lambda: now[0]).account_undecided()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM failures").fetchone()[0] <= 5
    db.close()
    now[0] += limits.ACCOUNT_UNDECIDED_S + 1              # and it ends by its time
    assert not Brakes(path, 30, lambda p, t: None, clock=lambda: now[0]).account_undecided()


def test_an_unusable_store_degrades_and_says_so(tmp_path):
    log = []
    (tmp_path / "dir").mkdir()
    brakes = Brakes(str(tmp_path / "dir"), 30, lambda p, t: log.append(t))   # a directory
    assert brakes.record_failure("192.0.2.1", "gina") == (0, 0.0)
    assert brakes.address_delay("192.0.2.1") == 0
    assert len(log) == 1 and "not counted across connections" in log[0]


def test_root_refuses_a_brakes_directory_others_can_write(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root: the directory checks apply to root only")
    directory = tmp_path / "open"
    directory.mkdir(mode=0o777)
    os.chmod(directory, 0o777)
    log = []
    brakes = Brakes(str(directory / "b.sqlite"), 30, lambda p, t: log.append(t))
    brakes.record_failure("192.0.2.1", "hank")
    assert log and "writable by root only" in log[0]
    assert not (directory / "b.sqlite").exists()


# --- the real server ----------------------------------------------------------------------------
@pytest.fixture
def site(system_users, pam_service, world_tmp):
    victim = system_users.create("vi")
    s = Site(world_tmp, pam_service, auth_brakes_max_delay=1)
    make_spool(s.spool_dir, victim, mbox(("hi", "there")))
    s.victim = victim
    s.srv = s.server()
    yield s
    s.close()


@pytest.mark.timeout(150)
def test_fifty_wrong_passwords_are_slowed_and_logged_another_address_is_not(site):
    user = site.victim.name
    timings: list[tuple[float, float]] = []         # (when the attempt started, how long)
    lock = threading.Lock()
    closed_by_cap = []

    def guesser(n_attempts: int) -> None:
        conn = Conn(site.srv, "127.0.0.2")
        failures_here = 0
        try:
            for i in range(n_attempts):
                if failures_here == limits.MAX_AUTH_FAILURES_PER_CONNECTION:
                    rest = conn.file.read()            # the server closed it after the cap
                    closed_by_cap.append(rest == b"")
                    conn.close()
                    conn = Conn(site.srv, "127.0.0.2")
                    failures_here = 0
                began = time.monotonic()
                reply, seconds = conn.login_seconds(user, f"wrong-{i}")
                assert reply.startswith(b"-ERR [AUTH]"), reply
                failures_here += 1
                with lock:
                    timings.append((began, seconds))
        finally:
            conn.close()

    # The first few failures cost nothing extra (a mistyped password is not punished) ...
    guesser(limits.BRAKE_FREE_FAILURES_PER_ADDRESS)
    first = list(timings)
    assert max(s for _, s in first) < 0.5, first
    # ... the rest, from ten connections at once, pay the growing brakes.
    with ThreadPoolExecutor(max_workers=10) as pool:
        list(pool.map(guesser, [5] * 9 + [50 - 45 - limits.BRAKE_FREE_FAILURES_PER_ADDRESS]))
    assert len(timings) == 50
    assert closed_by_cap and all(closed_by_cap)
    timings.sort()
    last = timings[-10:]
    # the address brake (up to 1 s, the test's auth-brakes-max-delay) plus the user brake
    assert min(s for _, s in last) >= 0.9, last

    # A correct login from another address is not slowed; from the guessing address (nobody
    # guessing from it right now) it waits only the bounded first part of the brake.
    conn = Conn(site.srv, "127.0.0.1")
    try:
        reply, seconds = conn.login_seconds(user, site.victim.password)
    finally:
        conn.close()
    assert reply.startswith(b"+OK"), reply
    assert seconds < 0.5
    conn = Conn(site.srv, "127.0.0.2")
    try:
        reply, _ = conn.login_seconds(user, site.victim.password)
    finally:
        conn.close()
    assert reply.startswith(b"+OK"), reply
    bound = limits.BRAKE_MAX_WAIT_BEFORE_CHECK_S
    site.syslog.wait_for(rf"brute-force brake: 127\.0\.0\.2 waits {bound:.2f}s before its login "
                         rf"attempt is checked \(its brake is 1\.00s\)")

    failures = [t for t in site.syslog.texts()
                if t.startswith(f"LOGIN FAILED, user={user}, method=USER, ip=[127.0.0.2]")]
    assert len(failures) == 50
    assert any(t.startswith("brute-force brake: 127.0.0.2 waits ") and
               t.endswith("(its brake is 1.00s)") for t in site.syslog.texts())
    assert not any("127.0.0.1 waits" in t for t in site.syslog.texts())
    for text in failures[:3]:
        assert COURIER_AUTH.match(f"Nov 27 14:00:01 mailhost popper[42]: {text}")


def test_undecided_right_credentials_write_the_file_as_often_as_a_wrong_guess(tmp_path,
                                                                             monkeypatch):
    """Right credentials whose account step cannot decide are answered as a wrong guess: the
    host's mark is written in the count's transaction, so the attempt commits to the file as
    often as a wrong guess does (a commit more would be a time of its own)."""
    commits = []
    connect = Brakes._connect

    def traced(self):
        db = connect(self)
        db.set_trace_callback(lambda sql: commits.append(sql)
                              if sql.strip().upper().startswith("COMMIT") else None)
        return db
    monkeypatch.setattr(Brakes, "_connect", traced)
    path = str(tmp_path / "b.sqlite")

    def commits_of(account_undecided: bool) -> int:
        before = len(commits)
        brakes = Brakes(path, 30, lambda p, t: None)
        brakes.hold_address("192.0.2.7", sleep=lambda s: None)
        brakes.account_undecided()                       # the reply's read, both ways
        brakes.note_failure("192.0.2.7", "ursula", "USER", 0,
                            account_undecided=account_undecided)
        return len(commits) - before
    wrong, right = commits_of(False), commits_of(True)
    assert right == wrong >= 1, (wrong, right)
    assert Brakes(path, 30, lambda p, t: None).account_undecided()
