"""PAM's failure delay (pam_unix's 2 s unless nodelay, pam_faildelay's) on the REAL PAM stack:
qpopper takes it over from libpam (the PAM_FAIL_DELAY item, qpopper/auth/pam.py), so a wrong
password still waits it, and a right password that only the account step refuses (an expired
account, a pam_access rule) waits it too before its wrong-password answer; else that answer
would come the stack's delay sooner than a wrong guess's and tell the password was right
(docs/operations.md, "An expired account or password")."""

from __future__ import annotations

import subprocess
import time

import pytest

from qpopper.auth import pam as pam_auth
from qpopper.auth import pam_delay
from qpopper.auth.password_cache import RIGHT, pam_or_cached
from qpopper.auth.policy import Authenticator
from qpopper.config import Config
from qpopper.pop3.responses import PopError
from tests.helpers.pam_service import installed_pam_service
from tests.helpers.sysusers import is_root

pytestmark = pytest.mark.skipif(not is_root(), reason="needs root: PAM reads /etc/shadow")

BASE_S = 0.4
"""pam_faildelay's delay here: libpam draws each attempt's from 0.5 to 1.5 times it."""
DELAYED = (f"auth     required  pam_faildelay.so delay={int(BASE_S * 1e6)}\n"
           "auth     required  pam_unix.so nodelay\n"
           "account  required  pam_unix.so\n")


@pytest.fixture
def delayed_service(pam_service):                 # pam_service: the root check, as elsewhere
    with installed_pam_service(DELAYED, tag="fd-") as name:
        yield name


def refusal_waits(service: str, name: str, password: str, *, failure_delay: int) -> list:
    """What popper's authenticator waits (its sleep recorded, not slept) before refusing."""
    auth = Authenticator(Config.defaults().replace(
        pam_service=service, auth_failure_delay=failure_delay, pop_auth_file=None,
        auth_brakes_file=None), lambda priority, text: None)
    waits: list[float] = []
    auth.sleep = waits.append
    with pytest.raises(PopError):
        auth.check_password(name, password, "127.0.0.1")
    return waits


def test_a_wrong_password_still_waits_the_stack_s_delay(delayed_service, system_users):
    user = system_users.create(password="pw-right")
    started = time.monotonic()
    result = pam_auth.authenticate(delayed_service, user.name, "pw-wrong")
    waited = time.monotonic() - started
    assert not result.ok and result.password_code != pam_auth.PAM_SUCCESS
    assert waited >= result.fail_delay_s >= 0.5 * BASE_S, waited   # sleep never ends early


def test_a_right_password_the_account_step_refuses_owes_the_delay(delayed_service,
                                                                   system_users, pam_service):
    expired = system_users.create(password="pw-right", account_expired=True)
    result = pam_auth.authenticate(delayed_service, expired.name, "pw-right")
    assert not result.ok and result.password_code == pam_auth.PAM_SUCCESS
    assert 0.5 * BASE_S <= result.fail_delay_s <= 1.5 * BASE_S, result.fail_delay_s
    # a stack without a delay asks for none
    assert pam_auth.authenticate(pam_service, expired.name, "pw-right").fail_delay_s == 0


def test_the_popper_refusal_waits_it_before_its_own_delay(delayed_service, system_users):
    """The authenticator waits PAM's delay, then auth-failure-delay, as a wrong password
    waits them (its PAM part inside pam_auth)."""
    expired = system_users.create(password="pw-right", account_expired=True)
    waits = refusal_waits(delayed_service, expired.name, "pw-right", failure_delay=3)
    assert len(waits) == 2 and 0.5 * BASE_S <= waits[0] <= 1.5 * BASE_S and waits[1] == 3.0


def test_a_name_nss_does_not_know_whose_password_pam_takes_waits_the_delay(system_users):
    """A password step that says yes for a name NSS does not know (pam_krb5, pam_ldap
    without NSS: here pam_permit) is still refused as "no such user", after the failure
    delay a wrong password waits inside PAM, in popper and in poppassd."""
    from qpopper.tools import poppassd_monitor
    stack = (f"auth     required  pam_faildelay.so delay={int(BASE_S * 1e6)}\n"
             "auth     required  pam_permit.so\n"
             "account  required  pam_permit.so\n")
    with installed_pam_service(stack, tag="fp-") as service:
        waits = refusal_waits(service, "qptnosuchuser", "anything", failure_delay=0)
        assert len(waits) == 1 and 0.5 * BASE_S <= waits[0] <= 1.5 * BASE_S, waits
        keeper = poppassd_monitor.PasswordKeeper(lambda priority, text: None,
                                                 pam_service=service)
        verdict, reason, guessed, result = keeper._check_old_password("qptnosuchuser", "x")
        assert (verdict, reason, guessed) == (poppassd_monitor.WRONG, "no such user", True)
        owed = result.owed_delay_s
        assert 0.5 * BASE_S <= owed <= 1.5 * BASE_S, owed
        # with the cache, a remembered right password of such a name is asked of PAM whole:
        # the account step alone (which says yes here) would draw no delay
        result = pam_or_cached(RememberedRight(), service, "qptnosuchuser", None, "anything",
                               "127.0.0.1", check_password_expired=True)
        assert result.password_code == pam_auth.PAM_SUCCESS
        assert 0.5 * BASE_S <= result.fail_delay_s <= 1.5 * BASE_S, result.fail_delay_s


class RememberedRight:
    """The authentication cache's answer for a password whose step said yes before (the
    cache process itself is tested in tests/system/test_auth_cache.py)."""

    salt = b"s" * 32

    def lookup(self, key):
        return RIGHT

    def remember(self, key, verdict, asked_at):
        self.remembered = verdict


def test_a_cache_hit_the_account_step_refuses_still_owes_the_delay(delayed_service,
                                                                    system_users):
    """A cache hit skips the password step, which alone tells PAM's delay: when the account
    step then refuses, PAM is asked whole, so the refusal is timed as without the cache."""
    expired = system_users.create(password="pw-right", account_expired=True)
    result = pam_or_cached(RememberedRight(), delayed_service, expired.name, None, "pw-right",
                           "127.0.0.1", check_password_expired=True)
    assert not result.ok and result.password_code == pam_auth.PAM_SUCCESS
    assert 0.5 * BASE_S <= result.fail_delay_s <= 1.5 * BASE_S, result.fail_delay_s


class MemoryCache:
    """The cache process's interface, kept in a dict (no TTLs: all tries are within them)."""

    salt = b"r" * 32

    def __init__(self):
        self.entries: dict[bytes, str] = {}

    def lookup(self, key):
        return self.entries.get(key)

    def remember(self, key, verdict, asked_at):
        self.entries[key] = verdict


def test_with_the_cache_a_guess_and_an_expired_account_s_right_password_repeat_alike(
        delayed_service, system_users):
    """Tried three times a second apart: a remembered wrong password waits the delay libpam
    draws in the second it is tried (libpam 1.5 seeds its draw with the second), and so does
    the remembered right password of an account the account step refuses (PAM asked whole):
    each, in each second, what a fresh wrong password would wait then, so a client
    comparing answers' times, or one answer's with a guess sent in the same second, tells
    nothing (docs/auth-cache.md, "Timing")."""
    expired = system_users.create(password="pw-right", account_expired=True)
    cache = MemoryCache()
    base_us = int(BASE_S * 1e6)

    def delays(password: str) -> list[tuple[float, float]]:
        found = []
        for attempt in range(3):
            if attempt:
                time.sleep(1.1)
            second = pam_delay.wall_second()             # libpam's clock, not time.time()
            result = pam_or_cached(cache, delayed_service, expired.name, expired.uid, password,
                                   "127.0.0.1", check_password_expired=True)
            assert not result.ok
            found.append((result.fail_delay_s, pam_delay.drawn_delay_us(second, base_us) / 1e6))
        return found
    guess, right = delays("pw-guess"), delays("pw-right")
    assert all(took == expected for took, expected in guess + right), (guess, right)
    assert cache.entries and all(verdict in ("right", f"7 {base_us} {verdict.split()[-1]}")
                                 for verdict in cache.entries.values()), cache.entries


# --- the authentication cache: each password tried twice -----------------------------------------
CACHED_DELAYED = ("auth     required  pam_faildelay.so delay=1000000\n"
                  "auth     required  pam_unix.so nodelay\n"
                  "account  required  pam_unix.so\n")
"""A stack whose failure delay libpam draws from 0.5 s to 1.5 s: a refusal that waited it
took at least CACHED_DELAY_MIN_S, one that did not answers in a few milliseconds."""
CACHED_DELAY_MIN_S = 0.5


def _refusal_took(server, user, password: str) -> float:
    """Seconds from PASS to its -ERR [AUTH] reply (USER answered first)."""
    import poplib
    client = poplib.POP3(server.host, server.port, timeout=30)
    try:
        client.user(user.name)
        started = time.monotonic()
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
            client.pass_(password)
        return time.monotonic() - started
    finally:
        client.close()


def test_with_the_cache_a_repeated_right_password_of_an_expired_account_is_timed_as_a_wrong_one(
        world_tmp, system_users):
    """Each password tried twice, within auth-cache-negative-ttl, against an account the
    account step refuses: the first tries both ask PAM and wait its delay; the second tries
    are answered from the cache, and alike: the remembered wrong password waits the delay
    PAM waited for it, the remembered right one is asked of PAM whole. (Answering both at
    once would pass here but fail the next test: a right password is remembered longer
    than a wrong one.)"""
    assert _second_tries_alike(world_tmp, system_users, negative_ttl=300, pause_s=0)


def test_with_the_cache_past_the_negative_ttl_a_repeated_right_password_waits_as_a_wrong_one(
        world_tmp, system_users):
    """The guard for any mend of the test above: past auth-cache-negative-ttl (and within
    auth-cache-ttl) a repeated wrong password asks PAM again and waits its delay, so a
    repeated right password of an expired account must wait it too (a hit answered after
    the account step alone would not)."""
    assert _second_tries_alike(world_tmp, system_users, negative_ttl=2, pause_s=2.5)


def _second_tries_alike(world_tmp, system_users, *, negative_ttl: int, pause_s: float) -> bool:
    from tests.server_harness import Site
    expired = system_users.create(password="pw-right", account_expired=True)
    with installed_pam_service(CACHED_DELAYED, tag="fdc-") as service:
        site = Site(world_tmp, service, auth_cache_size=100, auth_cache_ttl=300,
                    auth_cache_negative_ttl=negative_ttl, auth_brakes_max_delay=0)
        try:
            server = site.server()
            first = {password: _refusal_took(server, expired, password)
                     for password in ("pw-guess", "pw-right")}
            assert min(first.values()) >= CACHED_DELAY_MIN_S, first     # both asked PAM
            time.sleep(pause_s)
            again = {password: _refusal_took(server, expired, password)
                     for password in ("pw-guess", "pw-right")}
            waited = {password: took >= CACHED_DELAY_MIN_S for password, took in again.items()}
            assert waited["pw-guess"] == waited["pw-right"], again
            return True
        finally:
            site.close()


class _CallsLibpamDirectly(pam_auth.python_pam.PamAuthenticator):
    """A python-pam that calls libpam's pam_authenticate through a binding of its own, not
    the instance's that qpopper wraps (as a future version might). The binding is the one
    the constructor made: 2.1's class binding, 2.0's (Debian's) per-instance one."""

    def __init__(self):
        super().__init__()
        self._own_binding = self.pam_authenticate

    def authenticate(self, *args, **kwargs):
        self.pam_authenticate = self._own_binding
        return super().authenticate(*args, **kwargs)


def test_a_yes_from_a_python_pam_that_bypassed_the_hook_is_a_system_error(
        delayed_service, system_users, monkeypatch):
    """Without the hook PAM_RHOST is unset and the failure delay is not captured (an expired
    account's right password would be answered a delay sooner than a wrong one): such a yes
    is refused as PAM being unusable, for USER/PASS and for APOP's account step."""
    user = system_users.create(password="pw-right")
    assert pam_auth.authenticate(delayed_service, user.name, "pw-right").ok
    monkeypatch.setattr(pam_auth.python_pam, "PamAuthenticator", _CallsLibpamDirectly)
    result = pam_auth.authenticate(delayed_service, user.name, "pw-right")
    assert not result.ok and result.system_error and result.reason == pam_auth.BYPASSED_WRAPPER
    assert not pam_auth.check_account(delayed_service, user.name).ok


def test_a_bypassed_hook_is_caught_on_an_account_step_refusal_too(delayed_service,
                                                                  system_users, monkeypatch):
    """The case the hook exists for: a right password the account step refuses must not
    come back as an ordinary refusal owing no delay (a wrong one waited it inside libpam)."""
    expired = system_users.create(password="pw-right", account_expired=True)
    monkeypatch.setattr(pam_auth.python_pam, "PamAuthenticator", _CallsLibpamDirectly)
    right = pam_auth.authenticate(delayed_service, expired.name, "pw-right")
    assert right.system_error and right.reason == pam_auth.BYPASSED_WRAPPER, right


class _NoAccountStep(pam_auth.python_pam.PamAuthenticator):
    """A python-pam whose authenticate no longer runs pam_acct_mgmt (made optional, or moved
    to a method of its own), as a future version might: the password step still goes
    through qpopper's hook."""

    def authenticate(self, *args, **kwargs):
        self.pam_acct_mgmt = lambda handle, flags: pam_auth.PAM_SUCCESS
        return super().authenticate(*args, **kwargs)


def test_a_python_pam_that_skips_the_account_step_is_a_system_error(delayed_service,
                                                                   system_users, monkeypatch):
    """Else an expired account would get in, by USER/PASS and by APOP's account step."""
    expired = system_users.create(password="pw-right", account_expired=True)
    assert not pam_auth.authenticate(delayed_service, expired.name, "pw-right").ok
    monkeypatch.setattr(pam_auth.python_pam, "PamAuthenticator", _NoAccountStep)
    for result in (pam_auth.check_account(delayed_service, expired.name),
                   pam_auth.authenticate(delayed_service, expired.name, "pw-right")):
        assert result.system_error and result.reason == pam_auth.BYPASSED_WRAPPER, result


def test_a_wrong_password_never_reaches_the_account_step_that_resets_faillock(
        system_users, tmp_path):
    """pam_faillock (and pam_tally2) count wrong passwords in the password step and reset
    the count in the account step: a wrong password must never be followed by the account
    step, or each POP guess would undo the lockout the site keeps (docs/operations.md, "An
    expired account or password")."""
    tally = tmp_path / "faillock"
    tally.mkdir()
    option = f"deny=5 dir={tally}"
    stack = (f"auth     required                    pam_faillock.so preauth {option}\n"
             "auth     [success=1 default=bad]     pam_unix.so nodelay\n"
             f"auth     [default=die]               pam_faillock.so authfail {option}\n"
             f"auth     sufficient                  pam_faillock.so authsucc {option}\n"
             f"account  required                    pam_faillock.so dir={tally}\n"
             "account  required                    pam_unix.so\n")
    user = system_users.create(password="pw-right")
    with installed_pam_service(stack, tag="fl-") as service:
        auth = Authenticator(Config.defaults().replace(
            pam_service=service, auth_failure_delay=0, pop_auth_file=None,
            auth_brakes_file=None), lambda priority, text: None)
        auth.sleep = lambda seconds: None
        for _ in range(3):
            with pytest.raises(PopError):
                auth.check_password(user.name, "pw-wrong", "127.0.0.1")
            auth.failures = 0
        shown = subprocess.run(["faillock", "--dir", str(tally), "--user", user.name],
                               capture_output=True, text=True, timeout=30, check=True).stdout
        assert sum(" RHOST " in line for line in shown.splitlines()) == 3, shown
