"""The authentication cache and the time of a refusal (docs/auth-cache.md, "What is
remembered, and under which key"): a refusal answered from the cache takes what PAM's own
takes, the password step's cost and its failure delay, whether the remembered password was
wrong or right (its account step refusing, or unable to decide). Else a guesser tries each
candidate twice: a wrong one pays the password step on its first try only, a remembered
right one on neither, and the difference of the two times, in which the random delay
cancels, tells them apart."""

from __future__ import annotations

import time

import pytest

from qpopper.auth.policy import Authenticator
from qpopper.auth.policy_checks import PAM_UNAVAILABLE
from qpopper.config import Config
from qpopper.pop3.responses import PopError, RespCode
from tests.helpers.pam_service import installed_pam_service
from tests.helpers.sysusers import is_root
from tests.system.test_pam_account_undecided import Log
from tests.system.test_pam_fail_delay import MemoryCache, _refusal_took

pytestmark = [pytest.mark.skipif(not is_root(), reason="needs root: PAM reads /etc/shadow"),
              pytest.mark.timeout(90)]

TRY_LATER = (RespCode.SYS_TEMP, PAM_UNAVAILABLE)
SLOW_PASSWORD_STEP_S = 0.5
SLOW_STEP = (f"auth     required  pam_exec.so quiet /bin/sleep {SLOW_PASSWORD_STEP_S}\n"
             "auth     required  pam_unix.so nodelay\n")
"""pam_exec's sleep stands for the password step's own cost (pam_unix's yescrypt: 47 ms on
the bench machine, docs/auth-cache.md; a directory bind)."""
CACHED_UNDECIDED = ("auth     required  pam_faildelay.so delay=400000\n" + SLOW_STEP +
                    "account  required  pam_exec.so quiet /bin/false\n")
CACHED_EXPIRED = ("auth     required  pam_faildelay.so delay=200000\n" + SLOW_STEP +
                  "account  required  pam_unix.so\n")


@pytest.fixture
def brakes_file(tmp_path):
    directory = tmp_path / "brakes"
    directory.mkdir(mode=0o700)
    return str(directory / "auth-brakes.sqlite")


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
                auth_brakes_file=brakes_file, auth_cache_negative_ttl=300), log)
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
    from tests.server_harness import Site
    expired = system_users.create(password="pw-right", account_expired=True)
    with installed_pam_service(CACHED_EXPIRED, tag="ce-") as service:
        site = Site(world_tmp, service, auth_cache_size=100, auth_cache_ttl=300,
                    auth_cache_negative_ttl=300, auth_brakes_max_delay=0)
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
                                   "127.0.0.1", check_password_expired=True,
                                   negative_ttl_s=300)
            return result, time.monotonic() - started
        first, first_took = login()               # asked PAM: remembered
        again, again_took = login()
    assert first.ok and again.ok
    assert first_took >= SLOW_PASSWORD_STEP_S > again_took, (first_took, again_took)
