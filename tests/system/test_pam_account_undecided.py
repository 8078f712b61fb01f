"""PAM's account step that cannot decide (pam_sss or pam_ldap in the `account` stack, their
directory down; here pam_exec failing, PAM_SYSTEM_ERR) after a right password: the answer is
"try again later", and from then on every wrong guess gets that answer too, through the brakes
file every connection shares, for a while after the last such answer; the right password is
timed and counted
as a wrong guess, without its `LOGIN FAILED` line (docs/operations.md, "When PAM's account step
cannot decide")."""

from __future__ import annotations

import hashlib
import os
import poplib
import sqlite3
import syslog
import time

import pytest

from qpopper import limits
from qpopper.auth import pam as pam_auth
from qpopper.auth.brakes import ADDRESS, Brakes
from qpopper.auth.policy import Authenticator
from qpopper.auth.policy_checks import BAD_DIGEST, PAM_UNAVAILABLE
from qpopper.config import Config
from qpopper.pop3.responses import PopError, RespCode
from qpopper.tools import poppassd_monitor
from tests.helpers.log_records import Log
from tests.helpers.pam_service import FAST_UNIX, PAM_DIR, installed_pam_service
from tests.helpers.popauth import owned_store
from tests.helpers.sysusers import is_root
from tests.server_harness import Site

pytestmark = [pytest.mark.skipif(not is_root(), reason="needs root: PAM reads /etc/shadow"),
              pytest.mark.timeout(90)]

BASE_S = 0.4
"""pam_faildelay's delay: libpam draws each attempt's from 0.5 to 1.5 times it."""
UNDECIDED = (f"auth     required  pam_faildelay.so delay={int(BASE_S * 1e6)}\n"
             "auth     required  pam_unix.so nodelay\n"
             "account  required  pam_exec.so quiet /bin/false\n")
FAILURE_DELAY = 3
TIMESTAMP = "<1234.5678@review.example>"


@pytest.fixture
def brakes_file(tmp_path):
    directory = tmp_path / "brakes"
    directory.mkdir(mode=0o700)
    return str(directory / "auth-brakes.sqlite")


def attempt(service, brakes_file, log, name, password, client_ip):
    """One connection's attempt: (code, text, what it waited)."""
    auth = Authenticator(Config.defaults().replace(
        pam_service=service, auth_failure_delay=FAILURE_DELAY, pop_auth_file=None,
        auth_brakes_file=brakes_file), log)
    waits: list[float] = []
    auth.sleep = waits.append
    with pytest.raises(PopError) as refused:
        auth.check_password(name, password, client_ip)
    return refused.value.code, refused.value.text, waits


def address_failures(brakes_file: str, client_ip: str) -> int:
    with sqlite3.connect(brakes_file) as db:
        row = db.execute("SELECT count FROM failures WHERE kind = ? AND key = ?",
                         (ADDRESS, client_ip)).fetchone()
    return row[0] if row else 0


def test_after_a_right_password_the_account_step_cannot_decide_every_guess_is_told_the_same(
        system_users, brakes_file):
    user = system_users.create(password="pw-right")
    log = Log()
    with installed_pam_service(UNDECIDED, tag="au-") as service:
        # before the mark: a wrong password is a wrong password
        code, text, _ = attempt(service, brakes_file, log, user.name, "pw-wrong", "127.0.0.2")
        assert code is RespCode.AUTH and "incorrect" in text
        # the right one: try again later, after what a wrong one waits (PAM's drawn delay,
        # owed, then auth-failure-delay), counted by the brakes but not LOGIN FAILED
        code, text, waits = attempt(service, brakes_file, log, user.name, "pw-right",
                                    "127.0.0.3")
        assert (code, text) == (RespCode.SYS_TEMP, PAM_UNAVAILABLE)
        assert len(waits) == 2 and 0.5 * BASE_S <= waits[0] <= 1.5 * BASE_S, waits
        assert waits[1] == FAILURE_DELAY, waits
        assert address_failures(brakes_file, "127.0.0.3") == 1
        assert log.count(r"LOGIN FAILED, user=.*ip=\[127\.0\.0\.3\].*") == 0
        assert log.count(r"PAM's account step \(service qpt-au-\w+\) cannot decide .*") == 1
        # from now on, from any connection: a wrong password, an unknown name, the right
        # password again, all told the same; the wrongs waited inside PAM and are LOGIN FAILED
        answers = [attempt(service, brakes_file, log, name, password, ip)
                   for name, password, ip in ((user.name, "pw-wrong", "127.0.0.4"),
                                              ("qptnosuchuser", "pw-wrong", "127.0.0.5"),
                                              (user.name, "pw-right", "127.0.0.6"))]
        assert [answer[:2] for answer in answers] == [(RespCode.SYS_TEMP, PAM_UNAVAILABLE)] * 3
        assert answers[0][2] == answers[1][2] == [FAILURE_DELAY]
        assert log.count(r"LOGIN FAILED, user=.*ip=\[127\.0\.0\.[45]\].*") == 2
        assert log.count(r"PAM's account step .* cannot decide .*") == 1     # once an outage
        # the directory is back: a login that succeeds does not end the mark (in a partial
        # outage a guesser's own account would), the mark's time does
        with open(os.path.join(PAM_DIR, service), "w") as f:
            f.write(FAST_UNIX)
        auth = Authenticator(Config.defaults().replace(
            pam_service=service, auth_failure_delay=0, pop_auth_file=None,
            auth_brakes_file=brakes_file), log)
        assert auth.check_password(user.name, "pw-right", "127.0.0.7").user == user.name
        assert attempt(service, brakes_file, log, user.name, "pw-wrong", "127.0.0.8")[:2] == \
            (RespCode.SYS_TEMP, PAM_UNAVAILABLE)
        later = Brakes(brakes_file, 30, log,
                       clock=lambda: time.time() + limits.ACCOUNT_UNDECIDED_S + 1)
        auth = Authenticator(Config.defaults().replace(
            pam_service=service, auth_failure_delay=0, pop_auth_file=None,
            auth_brakes_file=brakes_file), log, brakes=later)
        auth.sleep = lambda seconds: None
        with pytest.raises(PopError) as refused:
            auth.check_password(user.name, "pw-wrong", "127.0.0.9")
        assert refused.value.code is RespCode.AUTH and "incorrect" in refused.value.text


def test_an_expired_account_is_answered_as_the_wrong_guesses_are_meanwhile(system_users,
                                                                           brakes_file):
    """A refusal the account step decided, answered as a wrong password, must not stand out
    from the wrong guesses' "try again later" while the mark lasts."""
    user = system_users.create(password="pw-right")
    expired = system_users.create(password="pw-x", account_expired=True)
    log = Log()
    with installed_pam_service(UNDECIDED, tag="ae-") as service:
        attempt(service, brakes_file, log, user.name, "pw-right", "127.0.0.2")
        with open(os.path.join(PAM_DIR, service), "w") as f:
            f.write(FAST_UNIX)                  # pam_unix's account step decides: expired
        assert attempt(service, brakes_file, log, expired.name, "pw-x", "127.0.0.3")[:2] == \
            (RespCode.SYS_TEMP, PAM_UNAVAILABLE)


def test_poppassd_tells_the_right_old_password_and_the_wrong_ones_alike(system_users,
                                                                        brakes_file,
                                                                        monkeypatch):
    monkeypatch.setattr(limits, "POPPASSD_FAILURE_DELAY_S", 0.2)     # its fixed 3 s: shorter
    user = system_users.create(password="pw-right")
    log = Log()
    with installed_pam_service(UNDECIDED, tag="ap-") as service:
        def check(password: str, client_ip: str) -> str:
            keeper = poppassd_monitor.PasswordKeeper(
                log, pam_service=service, client_ip=client_ip,
                brakes=Brakes(brakes_file, 30, log))
            return keeper.check(user.name, password)
        assert check("pw-wrong", "127.0.0.2") == poppassd_monitor.WRONG    # no mark yet
        assert check("pw-right", "127.0.0.3") == poppassd_monitor.LATER
        assert check("pw-wrong", "127.0.0.4") == poppassd_monitor.LATER
        assert address_failures(brakes_file, "127.0.0.3") == 1
        assert log.count(r"LOGIN FAILED, .*ip=\[127\.0\.0\.3\].*") == 0
        assert log.count(r"LOGIN FAILED, .*ip=\[127\.0\.0\.4\].*") == 1


def test_with_the_cache_a_remembered_right_password_waits_the_delay_too(system_users,
                                                                        brakes_file):
    """A cache hit skips the password step, whose delay a wrong password waits inside PAM:
    when the account step then cannot decide, PAM is asked whole, so the right password,
    answered "try again later" like the wrong ones, owes that delay too."""
    from qpopper.auth.password_cache import pam_or_cached
    from tests.system.test_pam_fail_delay import MemoryCache
    user = system_users.create(password="pw-right")
    cache = MemoryCache()
    with installed_pam_service(UNDECIDED, tag="ac-") as service:
        first = pam_or_cached(cache, service, user.name, user.uid, "pw-right", "127.0.0.1",
                              check_password_expired=True)
        assert cache.entries                   # the password step's yes, remembered
        again = pam_or_cached(cache, service, user.name, user.uid, "pw-right", "127.0.0.1",
                              check_password_expired=True)
    for result in (first, again):
        assert result.system_error and result.password_code == pam_auth.PAM_SUCCESS, result
        assert 0.5 * BASE_S <= result.owed_delay_s <= 1.5 * BASE_S, result


def test_through_the_server_each_connection_sees_the_mark(world_tmp, system_users):
    """Each connection's authentication is a process of its own: the mark goes through the
    brakes file, and the outage's line reaches the log once."""
    user = system_users.create(password="pw-right")
    stack = UNDECIDED.replace(f"delay={int(BASE_S * 1e6)}", "delay=0")

    def answer(server, password: str) -> bytes:
        client = poplib.POP3(server.host, server.port, timeout=20)
        try:
            client.user(user.name)
            with pytest.raises(poplib.error_proto) as refused:
                client.pass_(password)
            return refused.value.args[0]
        finally:
            client.close()
    with installed_pam_service(stack, tag="as-") as service:
        site = Site(world_tmp, service)
        try:
            server = site.server()
            assert answer(server, "pw-wrong").startswith(b"-ERR [AUTH] ")
            try_later = b"-ERR [SYS/TEMP] " + PAM_UNAVAILABLE.encode()
            assert answer(server, "pw-right") == try_later
            assert answer(server, "pw-wrong") == try_later
            site.syslog.wait_for(r"login of .* refused: .*\(answered \[SYS/TEMP\]: PAM's "
                                 r"account step cannot decide\)")
            marks = [record for record in site.syslog.records
                     if "cannot decide (its directory down?)" in record[2]]
            assert len(marks) == 1 and marks[0][0] & 7 == syslog.LOG_WARNING, marks
        finally:
            site.close()


# ---- from the review of the mark: paths the tests above left out -------------------------
def test_poppassd_under_its_own_service_sees_popper_s_mark(system_users, brakes_file,
                                                           monkeypatch):
    """popper (pam-service pop3) and poppassd (-s poppassd, its default) share the brakes
    file and the directory: the mark is the host's, so a guesser who turns to poppassd
    during the outage that popper's polling clients marked is told the same for a wrong
    password as for the right one (a mark per PAM service told them apart there)."""
    monkeypatch.setattr(limits, "POPPASSD_FAILURE_DELAY_S", 0.2)     # its fixed 3 s: shorter
    victim = system_users.create(password="pw-right")
    poller = system_users.create(password="pw-poller")
    log = Log()
    with installed_pam_service(UNDECIDED, tag="rp-") as pop3, \
            installed_pam_service(UNDECIDED, tag="rq-") as poppassd_service:
        # the outage: a POP client polls with its right password and marks it
        assert attempt(pop3, brakes_file, log, poller.name, "pw-poller", "127.0.0.2")[:2] \
            == (RespCode.SYS_TEMP, PAM_UNAVAILABLE)
        assert attempt(pop3, brakes_file, log, victim.name, "pw-wrong", "127.0.0.3")[:2] \
            == (RespCode.SYS_TEMP, PAM_UNAVAILABLE)                      # POP: no oracle

        def check(password: str, client_ip: str) -> str:
            keeper = poppassd_monitor.PasswordKeeper(
                log, pam_service=poppassd_service, client_ip=client_ip,
                brakes=Brakes(brakes_file, 30, log))
            return keeper.check(victim.name, password)
        # poppassd, same outage: the wrong guess and the right password must be told alike
        wrong = check("pw-wrong", "127.0.0.4")
        right = check("pw-right", "127.0.0.5")
        assert right == poppassd_monitor.LATER
        assert wrong == right, (wrong, right)


ONE_USER_DECIDES = ("auth     required  pam_unix.so nodelay\n"
                    "account  [success=done default=ignore] pam_succeed_if.so quiet user = {who}\n"
                    "account  required  pam_exec.so quiet /bin/false\n")
"""The directory is down for everyone but `who` (pam_localuser's shape: a local account, an
account of a directory that is up, one sssd still decides offline)."""


def test_another_account_s_login_does_not_end_the_mark(system_users, brakes_file):
    """A partial outage: some accounts are still decided (pam_localuser, a directory that is
    up). A login that succeeds must not end the mark, or a guesser's own account ended it
    at will."""
    victim = system_users.create(password="pw-right")
    guesser = system_users.create(password="pw-own")   # an account whose step decides
    log = Log()
    stack = ONE_USER_DECIDES.format(who=guesser.name)
    with installed_pam_service(stack, tag="rs-") as service:
        # a polling client of the outage (here: the victim's own) marks the service
        assert attempt(service, brakes_file, log, victim.name, "pw-right", "127.0.0.2")[:2] \
            == (RespCode.SYS_TEMP, PAM_UNAVAILABLE)
        assert attempt(service, brakes_file, log, victim.name, "pw-wrong", "127.0.0.3")[:2] \
            == (RespCode.SYS_TEMP, PAM_UNAVAILABLE)
        # the guesser logs in with an account of their own
        auth = Authenticator(Config.defaults().replace(
            pam_service=service, auth_failure_delay=0, pop_auth_file=None,
            auth_brakes_file=brakes_file), log)
        assert auth.check_password(guesser.name, "pw-own", "127.0.0.4").user == guesser.name
        # ... and the victim's wrong and right passwords are still told alike
        wrong = attempt(service, brakes_file, log, victim.name, "pw-wrong", "127.0.0.5")[:2]
        right = attempt(service, brakes_file, log, victim.name, "pw-right", "127.0.0.6")[:2]
        assert right == (RespCode.SYS_TEMP, PAM_UNAVAILABLE)
        assert wrong == right, (wrong, right)


def test_apop_right_proof_marks_and_wrong_proofs_are_told_alike(system_users, brakes_file,
                                                                tmp_path):
    """The proofs' path (APOP here; CRAM-MD5, SCRAM and GSSAPI take the same): a right proof
    whose account step cannot decide marks, and is then told and timed as a wrong one."""
    owner, store = owned_store(system_users, str(tmp_path))
    victim = system_users.create(password="pw-x")
    store.set_secret(victim.name, "apop-right")
    log = Log()
    with installed_pam_service(UNDECIDED, tag="ra-") as service:
        def apop(secret: str, client_ip: str):
            auth = Authenticator(Config.defaults().replace(
                pam_service=service, auth_failure_delay=3, pop_auth_file=store.path,
                pop_auth_owner=owner.name, store_mechanisms="on",
                auth_brakes_file=brakes_file), log)
            waits: list[float] = []
            auth.sleep = waits.append
            digest = hashlib.md5((TIMESTAMP + secret).encode()).hexdigest()
            with pytest.raises(PopError) as refused:
                auth.check_apop(victim.name, TIMESTAMP, digest, client_ip)
            return (refused.value.code, refused.value.text), waits
        assert apop("apop-wrong", "127.0.0.2")[0] == (RespCode.AUTH, BAD_DIGEST)
        right, right_waits = apop("apop-right", "127.0.0.3")
        wrong, wrong_waits = apop("apop-wrong", "127.0.0.4")
        assert right == wrong == (RespCode.SYS_TEMP, PAM_UNAVAILABLE)
        assert right_waits == wrong_waits == [3]


def test_the_connection_cap_closes_right_and_wrong_alike(system_users, brakes_file):
    """MAX_AUTH_FAILURES_PER_CONNECTION: the third refusal closes, whichever it is."""
    victim = system_users.create(password="pw-right")
    log = Log()
    with installed_pam_service(UNDECIDED, tag="rc-") as service:
        attempt(service, brakes_file, log, victim.name, "pw-right", "127.0.0.2")   # the mark
        closes = {}
        for last in ("pw-right", "pw-wrong"):
            auth = Authenticator(Config.defaults().replace(
                pam_service=service, auth_failure_delay=0, pop_auth_file=None,
                auth_brakes_file=brakes_file), log)
            auth.sleep = lambda _s: None
            flags = []
            for password in ("pw-wrong", "pw-wrong", last):
                with pytest.raises(PopError) as refused:
                    auth.check_password(victim.name, password, "127.0.0.3")
                flags.append((refused.value.code, refused.value.text, refused.value.close))
            closes[last] = flags
        assert closes["pw-right"] == closes["pw-wrong"]
        assert closes["pw-right"][-1][2] and not closes["pw-right"][0][2]


def test_through_the_server_an_own_accounts_login_does_not_end_the_mark(world_tmp, system_users):
    from tests.helpers.sysusers import make_spool
    victim = system_users.create(password="pw-right")
    guesser = system_users.create(password="pw-own")

    def answer(server, user, password: str) -> bytes:
        client = poplib.POP3(server.host, server.port, timeout=20)
        try:
            client.user(user.name)
            try:
                return client.pass_(password)
            except poplib.error_proto as refused:
                return refused.args[0]
        finally:
            client.close()
    with installed_pam_service(ONE_USER_DECIDES.format(who=guesser.name), tag="rt-") as service:
        site = Site(world_tmp, service, auth_failure_delay=0)
        try:
            server = site.server()
            make_spool(site.spool_dir, guesser)
            try_later = b"-ERR [SYS/TEMP] " + PAM_UNAVAILABLE.encode()
            assert answer(server, victim, "pw-right") == try_later     # a polling client
            assert answer(server, victim, "pw-wrong") == try_later     # the mark holds
            assert answer(server, guesser, "pw-own").startswith(b"+OK")
            wrong = answer(server, victim, "pw-wrong")
            right = answer(server, victim, "pw-right")
            assert right == try_later
            assert wrong == right, (wrong, right)
        finally:
            site.close()

