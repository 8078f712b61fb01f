"""The authentication cache and the time of a refusal (docs/auth-cache.md, "Timing"): a
refusal takes the password step's cost, whether the remembered password was wrong (the cache
waits the step's remembered time) or right (its account step refusing, or unable to decide:
PAM asked whole). Else a guesser tries each candidate twice: a wrong one paid the password
step on its first try only, a remembered right one on neither, and the difference of the two
times told them apart. The stacks here draw no failure delay, so that the times are the
step's alone (the delay's own redraw: tests/system/test_pam_fail_delay.py)."""

from __future__ import annotations

import os
import poplib
import secrets
import threading
import time

import pytest

from qpopper.auth import pam as pam_auth
from qpopper.auth.password_cache import pam_or_cached
from qpopper.auth.policy import Authenticator
from qpopper.auth.policy_checks import PAM_UNAVAILABLE
from qpopper.config import Config
from qpopper.pop3.responses import PopError, RespCode
from tests.helpers.log_records import Log
from tests.helpers.pam_service import PAM_DIR, installed_pam_service
from tests.helpers.sysusers import is_root
from tests.system.test_pam_fail_delay import MemoryCache, _refusal_took

pytestmark = [pytest.mark.skipif(not is_root(), reason="needs root: PAM reads /etc/shadow"),
              pytest.mark.timeout(90)]

TRY_LATER = (RespCode.SYS_TEMP, PAM_UNAVAILABLE)
SLOW_PASSWORD_STEP_S = 0.5
SLOW_STEP = (f"auth     required  pam_exec.so quiet /bin/sleep {SLOW_PASSWORD_STEP_S}\n"
             "auth     required  pam_unix.so nodelay\n")
"""pam_exec's sleep stands for the password step's own cost (pam_unix's yescrypt: 47 ms on
the bench machine, docs/auth-cache.md; a directory bind)."""
CACHED_UNDECIDED = SLOW_STEP + "account  required  pam_exec.so quiet /bin/false\n"
CACHED_EXPIRED = SLOW_STEP + "account  required  pam_unix.so\n"


@pytest.fixture
def brakes_file(tmp_path):
    directory = tmp_path / "brakes"
    directory.mkdir(mode=0o700)
    return str(directory / "auth-brakes.sqlite")


def cached_site(world_tmp, service):
    """A real server with the cache on, its brakes out of the way."""
    from tests.server_harness import Site
    return Site(world_tmp, service, auth_cache_size=100, auth_cache_ttl=300,
                auth_cache_negative_ttl=300, auth_brakes_max_delay=0)


def _gaps_alike(wrong: list[float], right: list[float]) -> bool:
    """First try's time less the second's, for a wrong candidate and for the right one:
    alike within half the password step's cost."""
    wrong_gap, right_gap = wrong[0] - wrong[1], right[0] - right[1]
    return abs(wrong_gap - right_gap) < SLOW_PASSWORD_STEP_S / 2


def test_with_the_cache_two_tries_of_a_candidate_do_not_tell_it(system_users, brakes_file):
    """The account step cannot decide (docs/operations.md, "When PAM's account step cannot
    decide"): the victim's polling client has the right password remembered; a guesser's
    candidates are each answered "try again later", twice."""
    victim = system_users.create(password="pw-right")
    cache = MemoryCache()
    log = Log()
    with installed_pam_service(CACHED_UNDECIDED, tag="ck-") as service:
        def took(password: str, client_ip: str) -> float:
            auth = Authenticator(Config.defaults().replace(
                pam_service=service, auth_failure_delay=0, pop_auth_file=None,
                auth_brakes_file=brakes_file, auth_cache_negative_ttl=300,
                auth_brakes_max_delay=0), log)
            auth.password_cache = cache
            started = time.monotonic()
            with pytest.raises(PopError) as refused:
                auth.check_password(victim.name, password, client_ip)
            assert (refused.value.code, refused.value.text) == TRY_LATER
            return time.monotonic() - started
        took("pw-right", "127.0.0.2")        # the victim's polling client: marked, remembered
        wrong = [took("pw-guess", f"127.0.0.{3 + i}") for i in range(2)]
        right = [took("pw-right", f"127.0.0.{5 + i}") for i in range(2)]
    assert _gaps_alike(wrong, right), (wrong, right)
    # and the remembered ones took the password step's cost (not just its delay)
    assert min(wrong[1], *right) >= SLOW_PASSWORD_STEP_S, (wrong, right)


def test_through_the_server_two_tries_of_an_expired_account_s_candidate_do_not_tell_it(
        world_tmp, system_users):
    """The account expired since its owner's client logged in (its right password
    remembered): each candidate tried twice through the real server, within
    auth-cache-negative-ttl."""
    expired = system_users.create(password="pw-right", account_expired=True)
    with installed_pam_service(CACHED_EXPIRED, tag="ce-") as service:
        site = cached_site(world_tmp, service)
        try:
            server = site.server()
            _refusal_took(server, expired, "pw-right")        # remembered right
            wrong = [_refusal_took(server, expired, "pw-guess") for _ in range(2)]
            right = [_refusal_took(server, expired, "pw-right") for _ in range(2)]
        finally:
            site.close()
    assert _gaps_alike(wrong, right), (wrong, right)
    assert min(wrong[1], *right) >= SLOW_PASSWORD_STEP_S, (wrong, right)


def test_a_remembered_right_password_the_account_step_lets_in_waits_nothing(system_users):
    """Only refusals replay the password step: a login that succeeds from the cache skips
    it (what the cache is for), here half a second of it."""
    from qpopper.auth.password_cache import pam_or_cached
    user = system_users.create(password="pw-right")
    cache = MemoryCache()
    stack = "auth     required  pam_faildelay.so delay=400000\n" + SLOW_STEP + \
        "account  required  pam_unix.so\n"
    with installed_pam_service(stack, tag="cs-") as service:
        def login():
            started = time.monotonic()
            result = pam_or_cached(cache, service, user.name, user.uid, "pw-right",
                                   "127.0.0.1", check_password_expired=True)
            return result, time.monotonic() - started
        first, first_took = login()               # asked PAM: remembered
        again, again_took = login()
    assert first.ok and again.ok
    assert first_took >= SLOW_PASSWORD_STEP_S > again_took, (first_took, again_took)


# ---- the failure delay's second, and a whole outage (review) -----------------------------
SAME_SECOND_STACK = ("auth     required  pam_faildelay.so delay=2000000\n"
         "auth     required  pam_unix.so nodelay\n"
         "account  required  pam_unix.so\n")


def _took(server, user, password, start_at, out, index):
    client = poplib.POP3(server.host, server.port, timeout=30)
    try:
        client.user(user.name)
        while time.time() < start_at:
            time.sleep(0.001)
        started = time.monotonic()
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
            client.pass_(password)
        out[index] = time.monotonic() - started
    finally:
        client.close()


def _same_second(server, user, passwords):
    """Each password's PASS sent at once, 50 ms after the next whole second."""
    start_at = int(time.time()) + 1.05
    out = [None] * len(passwords)
    threads = [threading.Thread(target=_took, args=(server, user, pw, start_at, out, i))
               for i, pw in enumerate(passwords)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_a_first_try_beside_a_probe_in_the_same_second_does_not_tell_a_hit(world_tmp,
                                                                           system_users):
    """libpam 1.5 draws its failure delay from the wall-clock second: a guesser sends a
    throw-away wrong password and a never-tried candidate in the same second. The remembered
    right password of an expired account must take the probe's time (PAM asked whole: a
    delay remembered from its owner's login, another second's draw, stood out)."""
    expired = system_users.create(password="pw-right", account_expired=True)
    with installed_pam_service(SAME_SECOND_STACK, tag="rv-") as service:
        site = cached_site(world_tmp, service)
        try:
            server = site.server()
            _same_second(server, expired, ["pw-right"])       # its owner's client: remembered
            rounds = []
            for _ in range(2):
                probe, wrong, right = _same_second(
                    server, expired, ["probe-" + secrets.token_hex(6),
                                      "cand-" + secrets.token_hex(6), "pw-right"])
                rounds.append((round(wrong - probe, 3), round(right - probe, 3)))
        finally:
            site.close()
    # a wrong candidate's first try is the probe's time; the right one's must be too (0.1 s:
    # room for three concurrent attempts on a loaded machine; two draws of libpam's 2 s base
    # from different seconds are that close in 17% of cases, both rounds in 3%)
    assert all(abs(right_gap) < 0.1 for _, right_gap in rounds), rounds


UP = ("auth     required  pam_unix.so nodelay\n"
      "account  required  pam_unix.so\n")
DOWN = ("auth     required  pam_exec.so quiet /bin/false\n"
        "auth     required  pam_unix.so nodelay\n"
        "account  required  pam_exec.so quiet /bin/false\n")
"""The directory down for both steps (pam_ldap without offline credentials)."""


def test_in_a_whole_outage_a_hit_and_a_miss_cost_the_same_brakes(system_users, tmp_path):
    """A whole outage: a never-tried candidate's password step errs (no guess judged: not
    counted, not waited), and so must the remembered right password's (PAM asked whole):
    taken for "the account step cannot decide", it was counted and waited as a wrong guess,
    the user name's brake included, once the owner's polling client had passed its free
    failures."""
    victim = system_users.create(password="pw-right")
    brakes_dir = tmp_path / "brakes"
    brakes_dir.mkdir(mode=0o700)
    cache = MemoryCache()
    with installed_pam_service(UP, tag="rb-") as service:
        def attempt(password, client_ip):
            auth = Authenticator(Config.defaults().replace(
                pam_service=service, auth_failure_delay=0, pop_auth_file=None,
                auth_brakes_file=str(brakes_dir / "b.sqlite"),
                auth_cache_negative_ttl=300), lambda p, t: None)
            auth.password_cache = cache
            waits = []
            auth.sleep = waits.append
            try:
                auth.check_password(victim.name, password, client_ip)
                return "+OK", waits
            except PopError as refused:
                return (refused.code, refused.text), waits
        assert attempt("pw-right", "127.0.0.2")[0] == "+OK"     # remembered
        with open(os.path.join(PAM_DIR, service), "w") as f:
            f.write(DOWN)
        for poll in range(6):                                   # the owner's client polls
            attempt("pw-right", f"127.0.1.{poll}")
        miss = attempt("cand-never-tried", "127.0.0.3")
        hit = attempt("pw-right", "127.0.0.4")
    assert miss[0] == hit[0]                                 # both: try again later
    assert miss[1] == hit[1], (miss, hit)


# ---- libpam's clock, and the account step asked once (review 135) ------------------------
def test_a_wrong_password_tried_as_a_second_turns_keeps_the_stack_s_base(system_users,
                                                                        monkeypatch):
    """libpam reads the second with time(NULL), the kernel's coarse clock, a few ms behind
    time.time() after each turn: a base worked back with the wrong second would be kept for
    the whole negative TTL (review 135)."""
    user = system_users.create(password="pw-right")
    stack = ("auth     required  pam_faildelay.so delay=2000000\n"
             "auth     required  pam_unix.so nodelay\n"
             "account  required  pam_unix.so\n")
    monkeypatch.setattr(pam_auth.time, "sleep", lambda s: None)   # the delays: not waited
    with installed_pam_service(stack, tag="rb-") as service:
        pam_auth.preload(service)
        cache = MemoryCache()
        for attempt in range(6):           # pam_authenticate begun at or just after a turn
            turn = int(time.time()) + 1
            while time.time() < turn - 0.004 + attempt * 0.001:
                pass
            pam_or_cached(cache, service, user.name, user.uid, f"guess-{attempt}",
                          "127.0.0.1", check_password_expired=True)
    bases = sorted({verdict.split()[1] for verdict in cache.entries.values()})
    assert bases == ["2000000"], bases


def test_a_remembered_right_password_the_account_step_refuses_runs_it_once(system_users,
                                                                          tmp_path):
    """PAM asked whole after the hit's account step refused is given that answer again, not
    the modules asked twice (a directory's timeout twice in an outage; review 135)."""
    user = system_users.create(password="pw-right")
    ran = tmp_path / "account-step-ran"
    stack = ("auth     required  pam_unix.so nodelay\n"
             f"account  required  pam_exec.so quiet log={ran} /bin/echo ran\n"
             "account  required  pam_exec.so quiet /bin/false\n")
    with installed_pam_service(stack, tag="ra-") as service:
        cache = MemoryCache()
        def login():
            return pam_or_cached(cache, service, user.name, user.uid, "pw-right",
                                 "127.0.0.1", check_password_expired=True)
        first = login()                                  # asked whole: remembered right
        assert first.password_code == pam_auth.PAM_SUCCESS and not first.ok
        runs_before = ran.read_text().count("ran")
        second = login()
        runs = ran.read_text().count("ran") - runs_before
    assert not second.ok and second.system_error, second       # refused as the first was
    assert second.password_code == pam_auth.PAM_SUCCESS
    assert runs == 1, runs
