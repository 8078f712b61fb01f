"""PAM's failure delay (pam_unix's 2 s unless nodelay, pam_faildelay's) on the REAL PAM stack:
qpopper takes it over from libpam (the PAM_FAIL_DELAY item, qpopper/auth/pam.py), so a wrong
password still waits it, and a right password that only the account step refuses (an expired
account, a pam_access rule) waits it too before its wrong-password answer; else that answer
would come the stack's delay sooner than a wrong guess's and tell the password was right
(docs/operations.md, "An expired account or password")."""

from __future__ import annotations

import time

import pytest

from qpopper.auth import pam as pam_auth
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


def test_a_wrong_password_still_waits_the_stack_s_delay(delayed_service, system_users):
    user = system_users.create(password="pw-right")
    started = time.monotonic()
    result = pam_auth.authenticate(delayed_service, user.name, "pw-wrong")
    waited = time.monotonic() - started
    assert not result.ok and result.password_code != pam_auth.PAM_SUCCESS
    assert waited >= 0.5 * BASE_S, waited          # a lower bound: sleep never ends early
    assert result.fail_delay_s == 0                 # waited already, nothing owed


def test_a_right_password_the_account_step_refuses_owes_the_delay(delayed_service,
                                                                   system_users, pam_service):
    expired = system_users.create(password="pw-right", account_expired=True)
    result = pam_auth.authenticate(delayed_service, expired.name, "pw-right")
    assert not result.ok and result.password_code == pam_auth.PAM_SUCCESS
    assert 0.5 * BASE_S <= result.fail_delay_s <= 1.5 * BASE_S, result.fail_delay_s
    # a stack without a delay owes none; nor does a login that succeeds
    assert pam_auth.authenticate(pam_service, expired.name, "pw-right").fail_delay_s == 0
    fine = system_users.create(password="pw-fine")
    assert pam_auth.authenticate(delayed_service, fine.name, "pw-fine").fail_delay_s == 0


def test_the_popper_refusal_waits_it_before_its_own_delay(delayed_service, system_users):
    """The authenticator waits PAM's delay, then auth-failure-delay, as a wrong password
    waits them (its PAM part inside pam_auth)."""
    expired = system_users.create(password="pw-right", account_expired=True)
    auth = Authenticator(Config.defaults().replace(
        pam_service=delayed_service, auth_failure_delay=3, pop_auth_file=None,
        auth_brakes_file=None), lambda priority, text: None)
    waits: list[float] = []
    auth.sleep = waits.append
    with pytest.raises(PopError):
        auth.check_password(expired.name, "pw-right", "127.0.0.1")
    assert len(waits) == 2 and 0.5 * BASE_S <= waits[0] <= 1.5 * BASE_S and waits[1] == 3.0


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
