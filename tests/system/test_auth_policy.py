"""The authenticator: real PAM service files, real users, a real pop.auth store.

Root-only tests (system users, /etc/pam.d) skip with the reason otherwise; the pop-auth user
database tests run either way (as root the store's users map to a `qpt` owner account).
"""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import stat
import subprocess
import syslog
import threading
import time

import pytest

from qpopper import limits
from qpopper.auth import Login
from qpopper.auth import policy, policy_checks, scram
from qpopper.auth.policy import Authenticator
from qpopper.auth.store import PopAuthStore
from qpopper.config import Config
from qpopper.pop3.responses import PopError, RespCode
from qpopper.spool.paths import SpoolPaths
from tests.helpers import pam_service as pam_files
from tests.helpers.descriptors import descriptors_on
from tests.helpers.log_records import Log
from tests.helpers import sysusers

pytestmark = pytest.mark.timeout(60)

needs_root = pytest.mark.skipif(not sysusers.is_root(),
                                reason="needs root: real users, /etc/pam.d and /etc/shadow")

LOG_LOGIN = '(v%0) POP login by user "%1" at (%2) %3'
CLIENT_IP = "127.0.0.1"
CLIENT_HOST = "localhost"
TIMESTAMP = "<4242.1700000000.abcdef@mail.example>"


def config(**changes) -> Config:
    base = dict(auth_failure_delay=0, pop_auth_file=None, auth_brakes_file=None)
    base.update(changes)
    return Config.defaults().replace(**base)


def refused(call) -> PopError:
    with pytest.raises(PopError) as info:
        call()
    return info.value


def apop_digest(timestamp: str, secret: str) -> str:
    return hashlib.md5((timestamp + secret).encode()).hexdigest()


def failure_record(user: str) -> tuple[int, str]:
    return (syslog.LOG_NOTICE,
            f"[AUTH] Failed attempted login to {user} from host ({CLIENT_HOST}) {CLIENT_IP}")


# ---- fixtures ------------------------------------------------------------------------------
@pytest.fixture
def owned_store(tmp_path, request):
    """A pop.auth store owned as the server expects, and the config keys that find it.

    Not root: owned by the current user. Root: owned by a fresh `qpt` account, which is
    also the account pop-auth users run as."""
    path = str(tmp_path / "pop.auth")
    if sysusers.is_root():
        users = request.getfixturevalue("system_users")
        owner = users.create("own")
        store = PopAuthStore.create(path, owner.uid, owner.gid)
        return store, {"pop_auth_file": path, "pop_auth_owner": owner.name,
                       "store_mechanisms": "on"}, owner.uid
    store = PopAuthStore.create(path)
    return store, {"pop_auth_file": path, "store_mechanisms": "on"}, os.getuid()


@pytest.fixture
def pam_probe(tmp_path):
    """A PAM service that records each module call (PAM_TYPE, PAM_USER, PAM_RHOST, via
    pam_exec) before pam_unix decides: proves when PAM was, or was not, asked."""
    if not sysusers.is_root():
        pytest.skip("needs root: installs a PAM service file in /etc/pam.d")
    record = tmp_path / "pam-calls"
    script = tmp_path / "probe.sh"
    script.write_text(f'#!/bin/sh\necho "$PAM_TYPE $PAM_USER $PAM_RHOST" >> {record}\n')
    script.chmod(0o700)
    stack = (f"auth     required  pam_exec.so quiet {script}\n"
             "auth     required  pam_unix.so nodelay\n"
             f"account  required  pam_exec.so quiet {script}\n"
             "account  required  pam_unix.so\n")
    with pam_files.installed_pam_service(stack, tag="probe-") as service:
        yield service, (lambda: record.read_text().splitlines() if record.exists() else [])


# ---- system users through PAM ------------------------------------------------------------------
@needs_root
def test_pam_login_through_the_shipped_pop3_stack(system_users, stock_pam_service):
    alice = system_users.create(password="S3cret-alice")
    log = Log()
    auth = Authenticator(config(pam_service=stock_pam_service, log_login=LOG_LOGIN), log)
    login = auth.check_password(alice.name, "S3cret-alice", CLIENT_IP, client_host=CLIENT_HOST)
    assert login == Login(user=alice.name, uid=alice.uid, gid=alice.gid, home=alice.home,
                          mechanism="USER")
    assert log.records == [(syslog.LOG_NOTICE,
                            f'(v4.1.0) POP login by user "{alice.name}" at ({CLIENT_HOST}) '
                            f"{CLIENT_IP}")]
    log.assert_never_mentions("S3cret-alice")


@needs_root
def test_non_utf8_password_logs_in_with_its_original_bytes(system_users, pam_service):
    """A Latin-1 password reaches the authenticator as surrogate escapes (the protocol decodes
    client text as UTF-8 with surrogateescape): PAM must get the client's original bytes."""
    gina = system_users.create()
    latin1_password = b"caf\xe9-cr\xe8me"
    subprocess.run(["chpasswd"], input=gina.name.encode() + b":" + latin1_password + b"\n",
                   check=True, capture_output=True, timeout=30)
    as_received = latin1_password.decode("utf-8", "surrogateescape")
    log = Log()
    auth = Authenticator(config(pam_service=pam_service), log)
    assert auth.check_password(gina.name, as_received, CLIENT_IP).uid == gina.uid
    # ... and those bytes only: the same text in UTF-8 is another password.
    error = refused(lambda: auth.check_password(gina.name, "caf\u00e9-cr\u00e8me", CLIENT_IP))
    assert error.code is RespCode.AUTH
    assert not any("NUL byte" in text for text in log.texts()), log.texts()


@needs_root
def test_no_log_login_line_unless_configured(system_users, pam_service):
    bob = system_users.create(password="pw-bob")
    log = Log()
    Authenticator(config(pam_service=pam_service), log).check_password(bob.name, "pw-bob",
                                                                        CLIENT_IP)
    assert log.records == []


@needs_root
def test_wrong_password_and_unknown_user_get_the_same_reply(system_users, pam_service):
    carol = system_users.create(password="right-pw")
    log = Log()
    auth = Authenticator(config(pam_service=pam_service), log)
    wrong = refused(lambda: auth.check_password(carol.name, "wrong-pw", CLIENT_IP,
                                                client_host=CLIENT_HOST))
    ghost_name = carol.name[:-1] + ("x" if carol.name[-1] != "x" else "y")
    ghost = refused(lambda: auth.check_password(ghost_name, "wrong-pw", CLIENT_IP,
                                                client_host=CLIENT_HOST))
    for error, name in ((wrong, carol.name), (ghost, ghost_name)):
        expected = f'-ERR [AUTH] Password supplied for "{name}" is incorrect.\r\n'
        assert error.render() == expected.encode()
    assert failure_record(carol.name) in log.records
    assert failure_record(ghost_name) in log.records
    log.assert_never_mentions("wrong-pw")
    log.assert_never_mentions("right-pw")


@needs_root
@pytest.mark.parametrize("state", ["account_expired", "locked"])
def test_expired_or_locked_account_is_refused_with_the_right_password(system_users, pam_service,
                                                                       state):
    user = system_users.create(password="pw-ok", **{state: True})
    log = Log()
    auth = Authenticator(config(pam_service=pam_service), log)
    error = refused(lambda: auth.check_password(user.name, "pw-ok", CLIENT_IP))
    assert error.code is RespCode.AUTH
    reasons = " ".join(log.texts())
    if state == "account_expired":
        # PAM's password step said yes (docs/internals.md, "Failures and policy refusals"),
        # but answered and logged as a wrong guess: only an expired password is told
        assert error.text == f'Password supplied for "{user.name}" is incorrect.'
        assert "LOGIN REFUSED (account)" in reasons and "expired" in reasons
        assert "LOGIN FAILED" in reasons
    else:
        # usermod -L: the password step itself refuses
        assert error.text == f'Password supplied for "{user.name}" is incorrect.'
        assert "Authentication failure" in reasons and "LOGIN FAILED" in reasons


@needs_root
def test_an_expired_account_s_right_password_waits_as_long_as_a_wrong_one(system_users,
                                                                          pam_service, tmp_path):
    """Answered as a wrong guess, the refusal also takes as long as one (the failure delay,
    and a user name's brake), or the quick answer would tell the password was right; and it
    is counted as one, or the next attempt's brake would tell it (docs/operations.md,
    "An expired account or password"); and logged as one (LOGIN FAILED), or a ban would."""
    user = system_users.create(password="pw-ok", account_expired=True)
    log = Log()
    auth = Authenticator(config(pam_service=pam_service, auth_failure_delay=3,
                                auth_brakes_file=str(tmp_path / "brakes.sqlite")), log)
    waits: list[float] = []
    auth.sleep = waits.append
    right = refused(lambda: auth.check_password(user.name, "pw-ok", CLIENT_IP))
    wrong = refused(lambda: auth.check_password(user.name, "nope", CLIENT_IP))
    assert right.render() == wrong.render()
    assert waits == [3.0, 3.0]
    assert sum(text.startswith("LOGIN FAILED") for text in log.texts()) == 2

    # Two brakes files with the same history, far enough past the user name's free failures
    # that its brake outgrows the failure delay (0.25 s doubling): twice the right password
    # through one, twice a wrong one through the other, from one address each; both wait
    # the same brakes, the second time too (the first was counted alike).
    def braked(name: str) -> Authenticator:
        braked_auth = Authenticator(config(pam_service=pam_service, auth_failure_delay=3,
                                           auth_brakes_file=str(tmp_path / name)), Log())
        braked_auth.sleep = lambda seconds: None
        for _ in range(limits.BRAKE_FREE_FAILURES_PER_USER + 4):
            refused(lambda: braked_auth.check_password(user.name, "nope", "127.0.0.8"))
        braked_auth.sleep = waits.append
        return braked_auth
    for password, source, name in (("pw-ok", "127.0.0.9", "r.sqlite"),
                                   ("nope", "127.0.0.10", "w.sqlite")):
        waits.clear()
        braked_auth = braked(name)
        for _ in range(2):
            refused(lambda: braked_auth.check_password(user.name, password, source))
        if password == "pw-ok":
            right_waits = list(waits)
    assert right_waits == waits and 3.0 < waits[0] < waits[1], (right_waits, waits)


@needs_root
def test_expired_password_follows_check_password_expired(system_users, pam_service):
    dave = system_users.create(password="pw-dave", password_expired=True)
    strict = Authenticator(config(pam_service=pam_service), Log())
    error = refused(lambda: strict.check_password(dave.name, "pw-dave", CLIENT_IP))
    assert error.code is RespCode.AUTH
    lenient_log = Log()
    lenient = Authenticator(config(pam_service=pam_service, check_password_expired=False),
                            lenient_log)
    assert lenient.check_password(dave.name, "pw-dave", CLIENT_IP).uid == dave.uid
    assert any("has expired" in text for text in lenient_log.texts())
    # ... but never with a wrong password
    error = refused(lambda: lenient.check_password(dave.name, "nope", CLIENT_IP))
    assert error.code is RespCode.AUTH


@needs_root
def test_unknown_user_costs_the_same_time_as_a_wrong_password(system_users, stock_pam_service):
    """Timing must not reveal which accounts exist: the stock stack's pam_unix makes every
    failure wait its ~2 s (randomised by libpam) delay, so an unknown name must go through
    PAM too instead of being refused at once."""
    frank = system_users.create(password="pw-frank")
    ghost_name = frank.name[:-1] + ("x" if frank.name[-1] != "x" else "y")
    auth = Authenticator(config(pam_service=stock_pam_service), Log())

    def seconds_to_refuse(name: str) -> float:
        started = time.monotonic()
        error = refused(lambda: auth.check_password(name, "wrong-pw", CLIENT_IP))
        assert error.text == f'Password supplied for "{name}" is incorrect.'
        return time.monotonic() - started

    wrong_password = seconds_to_refuse(frank.name)
    unknown_user = seconds_to_refuse(ghost_name)
    assert wrong_password > 1.0, "the stock stack's failure delay is missing: test is void"
    # libpam randomises the delay (about +-25 %): a factor of 2 either way is generous, while
    # an early refusal answers in milliseconds.
    assert unknown_user > wrong_password / 2, (wrong_password, unknown_user)
    assert wrong_password > unknown_user / 2, (wrong_password, unknown_user)


@needs_root
@pytest.mark.parametrize("low_user", ["root", "daemon", "bin"])
def test_low_uids_are_blocked_before_pam_is_asked(system_users, pam_probe, low_user):
    service, pam_calls = pam_probe
    log = Log()
    auth = Authenticator(config(pam_service=service), log)
    error = refused(lambda: auth.check_password(low_user, "anything", CLIENT_IP,
                                                client_host=CLIENT_HOST))
    assert error.render() == b"-ERR [AUTH] Access is blocked for UIDs below 10\r\n"
    assert pam_calls() == []
    # A policy refusal, not a failed guess: its own line, nothing fail2ban or the brakes count
    assert [text for _, text in log.records] == [
        f"LOGIN REFUSED (policy), user={low_user}, method=USER, ip=[{CLIENT_IP}], "
        f"reason=uid {pwd.getpwnam(low_user).pw_uid} is blocked"]
    # The probe itself works: a normal user's login goes through both PAM phases, with the
    # client address as PAM_RHOST.
    erin = system_users.create(password="pw-erin")
    auth.check_password(erin.name, "pw-erin", "127.0.0.9")
    assert pam_calls() == [f"auth {erin.name} 127.0.0.9", f"account {erin.name} 127.0.0.9"]


@needs_root
def test_auth_file_admits_only_listed_users(system_users, pam_service, tmp_path):
    fay, gus = system_users.create(password="pw-f"), system_users.create(password="pw-g")
    listed = tmp_path / "allowed"
    listed.write_text(f"# allowed POP users\n{fay.name}\n\n")
    auth = Authenticator(config(pam_service=pam_service, auth_file=str(listed)), Log())
    assert auth.check_password(fay.name, "pw-f", CLIENT_IP).user == fay.name
    error = refused(lambda: auth.check_password(gus.name, "pw-g", CLIENT_IP))
    assert error.render() == b"-ERR [AUTH] Permission denied.\r\n"
    # An auth-file or nonauth-file that cannot be read admits nobody (and the log says
    # why), with [SYS/PERM]: the password was right, [AUTH] would have the client ask again.
    for name in ("auth_file", "nonauth_file"):
        log = Log()
        broken = Authenticator(config(pam_service=pam_service, **{name: str(tmp_path / "gone")}),
                               log)
        error = refused(lambda: broken.check_password(fay.name, "pw-f", CLIENT_IP))
        assert error.render() == b"-ERR [SYS/PERM] POP access list not available\r\n"
        assert any("cannot read user list" in text for text in log.texts())


@needs_root
def test_a_fifo_as_auth_file_or_nonauth_file_refuses_the_login_at_once(system_users,
                                                                      pam_service, tmp_path):
    """A FIFO put where auth-file or nonauth-file is read (after start-up checked it) is no
    list: the login is refused [SYS/PERM] at once, as for an unreadable one, instead of
    waiting in open(2) for a writer that never comes."""
    kim = system_users.create(password="pw-k")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for name in ("auth_file", "nonauth_file"):
        log = Log()
        auth = Authenticator(config(pam_service=pam_service, **{name: str(fifo)}), log)
        outcome: list[PopError] = []
        checking = threading.Thread(
            target=lambda: outcome.append(refused(lambda: auth.check_password(
                kim.name, "pw-k", CLIENT_IP))), daemon=True)
        checking.start()
        checking.join(15)
        if checking.is_alive():             # blocked in open(2): let it go, then fail
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            checking.join(15)
            pytest.fail(f"the login waited on the {name} FIFO")
        assert outcome[0].render() == b"-ERR [SYS/PERM] POP access list not available\r\n"
        assert f"cannot read user list {fifo}: not a regular file" in log.texts()


@needs_root
def test_nonauth_file_refuses_listed_users(system_users, pam_service, tmp_path):
    hank, iris = system_users.create(password="pw-h"), system_users.create(password="pw-i")
    denied = tmp_path / "denied"
    denied.write_text(f"{hank.name}\n")
    auth = Authenticator(config(pam_service=pam_service, nonauth_file=str(denied)), Log())
    error = refused(lambda: auth.check_password(hank.name, "pw-h", CLIENT_IP))
    assert error.text == "Permission denied."
    assert auth.check_password(iris.name, "pw-i", CLIENT_IP).user == iris.name


@needs_root
def test_check_shell_refuses_nologin_accounts_only_after_the_password(system_users, pam_service):
    mail_only = system_users.create(password="pw-m", shell="/usr/sbin/nologin")
    shell_user = system_users.create(password="pw-s", shell="/bin/bash")
    auth = Authenticator(config(pam_service=pam_service, check_shell=True), Log())
    error = refused(lambda: auth.check_password(mail_only.name, "pw-m", CLIENT_IP))
    assert error.render() == f'-ERR [AUTH] "{mail_only.name}": shell not found.\r\n'.encode()
    # A wrong password says nothing about the shell.
    assert refused(lambda: auth.check_password(mail_only.name, "bad", CLIENT_IP)).text.startswith(
        "Password supplied for")
    assert auth.check_password(shell_user.name, "pw-s", CLIENT_IP).user == shell_user.name
    # check-shell off (the default, like Qpopper's CHECK_SHELL): nologin users may read mail.
    default = Authenticator(config(pam_service=pam_service), Log())
    assert default.check_password(mail_only.name, "pw-m", CLIENT_IP).user == mail_only.name


def test_shells_file_rules(tmp_path):
    shells = tmp_path / "shells"
    shells.write_text("# comment\n/bin/sh\n/bin/bash\n")
    assert policy_checks.shell_allowed("/bin/bash", str(shells)) is None
    assert policy_checks.shell_allowed("/usr/sbin/nologin", str(shells)) == policy_checks.SHELL_NOT_FOUND
    assert policy_checks.shell_allowed("", str(shells)) == policy_checks.NO_SHELL
    shells.write_text("/bin/sh\n/POPPER/ANY/SHELL/\n")
    assert policy_checks.shell_allowed("/usr/sbin/nologin", str(shells)) is None


# ---- clear-text-password (reference P8) ---------------------------------------------------------
def test_loopback_detection():
    for address in ("127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"):
        assert policy_checks.is_loopback(address)
    for address in ("192.0.2.1", "::ffff:192.0.2.1", "2001:db8::1", "", "garbage"):
        assert not policy_checks.is_loopback(address)


@needs_root
def test_clear_text_password_never_local_tls(system_users, pam_service):
    jan = system_users.create(password="pw-j")

    def attempt(policy_value, client_ip=CLIENT_IP, tls_active=False):
        auth = Authenticator(config(pam_service=pam_service, clear_text_password=policy_value),
                             Log())
        return auth.check_password(jan.name, "pw-j", client_ip, tls_active=tls_active)

    # no store mechanisms and no Kerberos here: the refusal sends the client nowhere else
    assert refused(lambda: attempt("never")).render() == (
        b"-ERR [AUTH] Clear text passwords are not permitted, and this server offers no other "
        b"way to log in\r\n")
    assert attempt("local", "127.0.0.1").user == jan.name
    assert attempt("local", "::1").user == jan.name
    assert refused(lambda: attempt("local", "192.0.2.7")).code is RespCode.AUTH
    assert refused(lambda: attempt("tls")).text == policy_checks.CLEAR_TEXT_TLS_ONLY
    assert attempt("tls", tls_active=True).user == jan.name
    assert attempt("always", "192.0.2.7").user == jan.name


@needs_root
def test_default_policy_makes_apop_users_use_apop(system_users, pam_service, owned_store):
    store, store_cfg, _ = owned_store
    kim, lee = system_users.create(password="pw-k"), system_users.create(password="pw-l")
    store.set_secret(kim.name, "kim-apop-secret")
    log = Log()
    auth = Authenticator(config(pam_service=pam_service, **store_cfg), log)
    assert auth.apop_enabled
    assert auth.has_apop_secret(kim.name) and not auth.has_apop_secret(lee.name)
    error = refused(lambda: auth.check_password(kim.name, "pw-k", CLIENT_IP))
    assert error.text == policy_checks.NEEDS_STRONGER_AUTH
    assert auth.check_password(lee.name, "pw-l", CLIENT_IP).user == lee.name
    # APOP works for kim, with PAM's account check (PAM_TYPE account only, no password step)
    login = auth.check_apop(kim.name, TIMESTAMP, apop_digest(TIMESTAMP, "kim-apop-secret"),
                            CLIENT_IP)
    assert (login.user, login.uid, login.mechanism) == (kim.name, kim.uid, "APOP")
    always = Authenticator(config(pam_service=pam_service, clear_text_password="always",
                                  **store_cfg), Log())
    assert always.check_password(kim.name, "pw-k", CLIENT_IP).user == kim.name
    log.assert_never_mentions("kim-apop-secret")


@needs_root
def test_name_policies_answer_only_after_pam_accepted_the_password(system_users, pam_probe,
                                                                    owned_store, tmp_path):
    """clear-text-password default (a user with a pop.auth secret), auth-file and nonauth-file
    refuse by name. Refusing before the password told a guesser, at once and in other words,
    which names hold a secret or are listed. Now a wrong password gets the bad-password reply
    whatever the name, after PAM was asked (the same pam_unix failure delay); only the right
    password earns the policy's own refusal."""
    service, pam_calls = pam_probe
    store, store_cfg, _ = owned_store
    kim, gus, hank = (system_users.create(password=f"pw-{n}") for n in ("k", "g", "h"))
    store.set_secret(kim.name, "kim-apop-secret")
    ghost = kim.name[:-1] + ("x" if kim.name[-1] != "x" else "y")     # no such account
    allowed, denied = tmp_path / "allowed", tmp_path / "denied"
    allowed.write_text(f"{hank.name}\n")
    denied.write_text(f"{hank.name}\n")

    def reply(name, password, **options) -> bytes:
        auth = Authenticator(config(pam_service=service, **store_cfg, **options), Log())
        error = refused(lambda: auth.check_password(name, password, CLIENT_IP))
        return error.render().replace(name.encode(), b"NAME")

    bad_password = b'-ERR [AUTH] Password supplied for "NAME" is incorrect.\r\n'
    for user, options in ((kim, {}), (gus, {"auth_file": str(allowed)}),
                          (hank, {"nonauth_file": str(denied)})):
        before = len(pam_calls())
        assert reply(user.name, "wrong", **options) == reply(ghost, "wrong", **options) == \
            bad_password, options
        assert pam_calls()[before:] == [f"auth {user.name} {CLIENT_IP}",
                                        f"auth {ghost} {CLIENT_IP}"]
    assert reply(kim.name, "pw-k") == (b"-ERR [AUTH] You must use stronger authentication "
                                      b"such as AUTH or APOP to access this account\r\n")
    assert reply(gus.name, "pw-g", auth_file=str(allowed)) == \
        b"-ERR [AUTH] Permission denied.\r\n"
    assert reply(hank.name, "pw-h", nonauth_file=str(denied)) == \
        b"-ERR [AUTH] Permission denied.\r\n"
    # APOP: an unlisted name with a wrong digest says "authentication failure", like anyone.
    store.set_secret(gus.name, "gus-apop-secret")
    auth = Authenticator(config(pam_service=service, auth_file=str(allowed), **store_cfg), Log())
    assert refused(lambda: auth.check_apop(gus.name, TIMESTAMP, apop_digest(TIMESTAMP, "guess"),
                                           CLIENT_IP)).text == policy.BAD_DIGEST
    assert refused(lambda: auth.check_apop(
        gus.name, TIMESTAMP, apop_digest(TIMESTAMP, "gus-apop-secret"),
        CLIENT_IP)).text == policy_checks.PERMISSION_DENIED


@needs_root
def test_apop_for_system_users_runs_pam_account_management_only(system_users, pam_probe,
                                                                 owned_store):
    service, pam_calls = pam_probe
    store, store_cfg, _ = owned_store
    ok_user = system_users.create(password="pw-1")
    expired = system_users.create(password="pw-2", account_expired=True)
    for user in (ok_user, expired):
        store.set_secret(user.name, "apop-" + user.name)
    auth = Authenticator(config(pam_service=service, **store_cfg), Log())
    auth.check_apop(ok_user.name, TIMESTAMP, apop_digest(TIMESTAMP, "apop-" + ok_user.name),
                    "127.0.0.5")
    assert pam_calls() == [f"account {ok_user.name} 127.0.0.5"]
    error = refused(lambda: auth.check_apop(expired.name, TIMESTAMP,
                                            apop_digest(TIMESTAMP, "apop-" + expired.name),
                                            CLIENT_IP))
    assert error.render() == f"-ERR [AUTH] {policy.BAD_DIGEST}\r\n".encode()


@needs_root
def test_apop_blocks_low_uids(pam_service, owned_store):
    store, store_cfg, _ = owned_store
    store.set_secret("daemon", "daemon-secret")
    auth = Authenticator(config(pam_service=pam_service, **store_cfg), Log())
    error = refused(lambda: auth.check_apop("daemon", TIMESTAMP,
                                            apop_digest(TIMESTAMP, "daemon-secret"), CLIENT_IP))
    assert error.text == policy_checks.UID_BLOCKED


# ---- the pop-auth user database (demo mode; runs with or without root) ---------------------------
def test_pop_auth_users_log_in_with_user_pass_and_apop(owned_store):
    store, store_cfg, owner_uid = owned_store
    store.set_secret("demo", "demo-pw")
    log = Log()
    auth = Authenticator(config(user_database="pop-auth", log_login=LOG_LOGIN, **store_cfg), log)
    assert auth.apop_enabled
    login = auth.check_password("demo", "demo-pw", CLIENT_IP, client_host=CLIENT_HOST)
    assert (login.user, login.uid, login.mechanism) == ("demo", owner_uid, "USER")
    digest = apop_digest(TIMESTAMP, "demo-pw")
    assert auth.check_apop("demo", TIMESTAMP, digest, CLIENT_IP).mechanism == "APOP"
    assert auth.check_apop("demo", TIMESTAMP, digest.upper(), CLIENT_IP).user == "demo"
    login_line = f'(v4.1.0) POP login by user "demo" at ({CLIENT_HOST}) {CLIENT_IP}'
    assert log.texts().count(login_line) == 1
    log.assert_never_mentions("demo-pw")


def test_pop_auth_users_have_no_home_of_their_own(owned_store, tmp_path):
    """They share one account: its home is not theirs. With its home, home-dir-mail put amy's
    and bob's mail in ONE file and its ~/.qpopper-options applied to all of them."""
    store, store_cfg, _ = owned_store
    store.set_secret("amy", "amy-pw")
    store.set_secret("bob", "bob-pw")
    auth = Authenticator(config(user_database="pop-auth", **store_cfg), Log())
    amy = auth.check_password("amy", "amy-pw", CLIENT_IP)
    bob = auth.check_apop("bob", TIMESTAMP, apop_digest(TIMESTAMP, "bob-pw"), CLIENT_IP)
    assert amy.home is None and bob.home is None
    # and the spool refuses home-dir-mail for them, even past config.load's own check
    cfg = config(spool_dir=str(tmp_path), home_dir_mail=".mail")
    with pytest.raises(PopError) as refusal:
        SpoolPaths.for_user(cfg, amy.user, amy.home)
    assert refusal.value.code == RespCode.SYS_PERM
    assert SpoolPaths.for_user(config(spool_dir=str(tmp_path)), amy.user, amy.home).spool == \
        str(tmp_path / "amy")


def test_pop_auth_refusals_do_not_reveal_who_exists(owned_store):
    store, store_cfg, _ = owned_store
    store.set_secret("demo", "demo-pw")
    log = Log()
    auth = Authenticator(config(user_database="pop-auth", **store_cfg), log)
    assert refused(lambda: auth.check_password("demo", "nope", CLIENT_IP)).text == \
        'Password supplied for "demo" is incorrect.'
    assert refused(lambda: auth.check_password("nobody-here", "nope", CLIENT_IP)).text == \
        'Password supplied for "nobody-here" is incorrect.'
    wrong_digest = refused(lambda: auth.check_apop("demo", TIMESTAMP,
                                                   apop_digest(TIMESTAMP, "guess"), CLIENT_IP))
    not_in_store = refused(lambda: auth.check_apop("nobody-here", TIMESTAMP,
                                                   apop_digest(TIMESTAMP, "guess"), CLIENT_IP))
    other_timestamp = refused(lambda: auth.check_apop(
        "demo", TIMESTAMP, apop_digest("<1.2@elsewhere>", "demo-pw"), CLIENT_IP))
    for error in (wrong_digest, not_in_store, other_timestamp):
        assert error.render() == b"-ERR [AUTH] authentication failure\r\n"
    assert log.texts().count(
        f"[AUTH] Failed attempted login to demo from host ({CLIENT_IP}) {CLIENT_IP}") == 3
    log.assert_never_mentions("demo-pw")


def test_store_with_wrong_mode_is_sys_perm(owned_store):
    store, store_cfg, _ = owned_store
    store.set_secret("demo", "demo-pw")
    os.chmod(store.path, 0o640)
    auth = Authenticator(config(user_database="pop-auth", **store_cfg), Log())
    for attempt in (lambda: auth.check_apop("demo", TIMESTAMP, apop_digest(TIMESTAMP, "demo-pw"),
                                            CLIENT_IP),
                    lambda: auth.check_password("demo", "demo-pw", CLIENT_IP)):
        assert refused(attempt).render() == (
            b"-ERR [SYS/PERM] POP authentication DB has wrong mode (0640)\r\n")


@needs_root
def test_store_owned_by_the_wrong_account_is_sys_perm(system_users, owned_store):
    store, store_cfg, _ = owned_store
    store.set_secret("demo", "demo-pw")
    stranger = system_users.create("str")
    os.chown(store.path, stranger.uid, -1)
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    auth = Authenticator(config(user_database="pop-auth", **store_cfg), Log())
    error = refused(lambda: auth.check_password("demo", "demo-pw", CLIENT_IP))
    assert error.code is RespCode.SYS_PERM


def test_no_store_means_no_apop(tmp_path):
    auth = Authenticator(config(pop_auth_file=str(tmp_path / "absent")), Log())
    assert not auth.apop_enabled
    assert not auth.has_apop_secret("anyone")
    error = refused(lambda: auth.check_apop("anyone", TIMESTAMP, "0" * 32, CLIENT_IP))
    assert error.code is RespCode.AUTH


@pytest.mark.parametrize("name", ["", "a/b", "x" * (limits.MAX_USER_NAME_OCTETS + 1),
                                  "tab\there", "nul\0", "sp ace"])
def test_malformed_names_get_the_bad_password_reply(owned_store, name):
    store, store_cfg, _ = owned_store
    auth = Authenticator(config(user_database="pop-auth", **store_cfg), Log())
    error = refused(lambda: auth.check_password(name, "pw", CLIENT_IP))
    assert error.code is RespCode.AUTH and error.text.startswith("Password supplied for")


# ---- the failure delay --------------------------------------------------------------------
def test_failures_wait_the_failure_delay_successes_do_not(owned_store):
    store, store_cfg, _ = owned_store
    store.set_secret("demo", "demo-pw")
    auth = Authenticator(config(user_database="pop-auth", auth_failure_delay=1, **store_cfg),
                         Log())
    started = time.monotonic()
    refused(lambda: auth.check_password("demo", "wrong", CLIENT_IP))
    assert time.monotonic() - started >= 1.0
    started = time.monotonic()
    auth.check_password("demo", "demo-pw", CLIENT_IP)
    assert time.monotonic() - started < 0.5


@needs_root
def test_a_missing_owner_account_makes_the_store_unusable(owned_store, pam_service):
    store, store_cfg, _ = owned_store
    store.set_secret("demo", "demo-pw")
    log = Log()
    auth = Authenticator(config(pam_service=pam_service, pop_auth_file=store.path,
                                pop_auth_owner="qptnosuchowner", store_mechanisms="on"), log)
    error = refused(lambda: auth.check_apop("demo", TIMESTAMP, apop_digest(TIMESTAMP, "demo-pw"),
                                            CLIENT_IP))
    assert error.code is RespCode.SYS_PERM
    assert any("'qptnosuchowner' does not exist" in text for text in log.texts())
    pop_auth = Authenticator(config(user_database="pop-auth", pop_auth_file=store.path,
                                    pop_auth_owner="qptnosuchowner"), Log())
    assert refused(lambda: pop_auth.check_password("demo", "demo-pw", CLIENT_IP)).code is \
        RespCode.SYS_PERM


@needs_root
def test_a_broken_pam_stack_is_a_temporary_system_failure(system_users):
    """A module that will not load is the administrator's problem: [SYS/TEMP], logged, and
    not a 'wrong password' that would make the user doubt their password."""
    kai = system_users.create(password="pw-kai")
    broken_stack = "auth required pam_qpt_no_such_module.so\naccount required pam_unix.so\n"
    with pam_files.installed_pam_service(broken_stack, tag="broken-") as service:
        auth = Authenticator(config(pam_service=service), Log())
        errors = [refused(lambda: auth.check_password(kai.name, "pw-kai", CLIENT_IP))
                  for _ in range(limits.MAX_AUTH_FAILURES_PER_CONNECTION)]
    error = errors[0]
    assert error.render() == (b"-ERR [SYS/TEMP] Unable to check your credentials now; "
                              b"try again later\r\n")
    assert "Module is unknown" in error.log and service in error.log
    # each one may have cost a directory's timeout: they count towards the connection's cap,
    # whose last refusal closes it, as failed logins do
    assert [e.close for e in errors] == [False] * (len(errors) - 1) + [True]
    assert all(e.code is RespCode.SYS_TEMP for e in errors)


# ---- SCRAM's server half (auth/challenges.py) -------------------------------------------------
def scram_client_proof(server_first: str, bare: str, password: str) -> tuple[str, bytes]:
    """(client-final-without-proof, proof) for SCRAM-SHA-256, as a client computes them."""
    attrs = dict(part.split("=", 1) for part in server_first.split(","))
    salted = scram.salted_password("SCRAM-SHA-256", password.encode(),
                                   base64.b64decode(attrs["s"]), int(attrs["i"]))
    without_proof = f"c=biws,r={attrs['r']}"
    auth_message = f"{bare},{server_first},{without_proof}".encode()
    return without_proof, scram.client_proof("SCRAM-SHA-256", salted, auth_message)


def test_a_scram_proof_becomes_a_login_only_until_a_new_server_first(owned_store):
    """scram_accepted records the proof scram_prove accepted — unless scram_begin started
    another exchange since: then there is nothing to accept (the monitor ends a pre-login
    process that asks anyway), and no login is logged."""
    store, keys, _ = owned_store
    store.set_secret("demo", "demo-pw")
    log = Log()
    auth = Authenticator(config(user_database="pop-auth", log_login=LOG_LOGIN, **keys), log)
    bare = "n=demo,r=client-nonce"
    server_first = auth.scram_begin("demo", "SCRAM-SHA-256", "client-nonce")
    without_proof, proof = scram_client_proof(server_first, bare, "demo-pw")
    login, _ = auth.scram_prove(bare, without_proof, proof, CLIENT_IP)
    assert login.user == "demo"
    auth.scram_begin("demo", "SCRAM-SHA-256", "another-nonce")
    assert auth.scram_accepted(CLIENT_IP) is None
    assert not any("POP login by" in text for _, text in log.records)
    # the straight way: proof, then accepted
    server_first = auth.scram_begin("demo", "SCRAM-SHA-256", "client-nonce")
    without_proof, proof = scram_client_proof(server_first, bare, "demo-pw")
    auth.scram_prove(bare, without_proof, proof, CLIENT_IP)
    assert auth.scram_accepted(CLIENT_IP).user == "demo"
    assert any("POP login by" in text for _, text in log.records)


def store_monitor(owned_store, **changes):
    """A Monitor of a connection (not forked: no pre-login process) over the pop.auth store,
    where demo's secret is demo-pw; ask(kind, *fields) sends a request through its own
    decode-and-answer path; auth_log is what its Authenticator logged."""
    from qpopper.server import monitor as monitor_mod
    from qpopper.server import monitor_wire as wire
    store, keys, _ = owned_store
    store.set_secret("demo", "demo-pw")
    cfg = config(user_database="pop-auth", **keys, **changes)
    mon = monitor_mod.Monitor(cfg, Log(), hostname="test.host", peer=(CLIENT_IP, 4000),
                              client=monitor_mod.Client(-1, -1, None))
    auth_log = Log()
    mon.authenticator = Authenticator(cfg, auth_log)

    def ask(kind, *fields) -> wire.Frame:
        return wire.decode(mon._answer(wire.decode(wire.encode(kind, *fields))))
    return mon, ask, auth_log


def prove_scram(ask):
    """demo's SCRAM-SHA-256 BEGIN and PROVE through a store_monitor's channel; the answer to
    PROVE."""
    from qpopper.server import monitor_wire as wire
    bare = "n=demo,r=client-nonce"
    server_first = ask(wire.Kind.SCRAM_BEGIN, "SCRAM-SHA-256", "demo", "client-nonce").text(0)
    without_proof, proof = scram_client_proof(server_first, bare, "demo-pw")
    return ask(wire.Kind.SCRAM_PROVE, bare, without_proof, proof, "")


def test_the_monitor_hands_over_a_scram_login_only_when_it_was_accepted(owned_store):
    """A pre-login process that sends PROVE, BEGIN again, then ACCEPTED gets no login."""
    from qpopper.server import monitor as monitor_mod
    from qpopper.server import monitor_wire as wire
    mon, ask, _ = store_monitor(owned_store)
    assert prove_scram(ask).kind is wire.Kind.LOGIN
    assert mon.login is None                       # a proof is not a login yet
    ask(wire.Kind.SCRAM_BEGIN, "SCRAM-SHA-256", "demo", "other-nonce")
    with pytest.raises(monitor_mod.ProtocolViolation):
        ask(wire.Kind.SCRAM_ACCEPTED)
    assert mon.login is None


@pytest.mark.parametrize("way", ["password", "scram"])
def test_after_a_verified_login_the_monitor_takes_nothing_but_the_handover(owned_store,
                                                                           tmp_path, way):
    """Every request kind but HANDOVER, sent after a login the monitor verified (a password,
    or a SCRAM proof the client accepted), breaks the protocol (the connection ends) and
    reaches neither the authenticator nor the brakes file."""
    from qpopper.server import monitor as monitor_mod
    from qpopper.server import monitor_wire as wire
    brakes_file = str(tmp_path / "auth-brakes.sqlite")
    mon, ask, auth_log = store_monitor(owned_store, auth_brakes_file=brakes_file)
    assert mon.login is None
    ask(wire.Kind.CRAM_CHALLENGE)                  # before a login: answered
    if way == "password":
        assert ask(wire.Kind.PASSWORD, "demo", "demo-pw", "USER", "", False, "").kind \
            is wire.Kind.LOGIN
    else:
        assert prove_scram(ask).kind is wire.Kind.LOGIN
        assert mon.login is None                   # a proof is not a login yet
        assert ask(wire.Kind.SCRAM_ACCEPTED).kind is wire.Kind.DATA
    login = mon.login
    assert login is not None and descriptors_on(brakes_file) == []
    kinds = sorted(wire.REQUESTS - {wire.Kind.HANDOVER})
    assert wire.Kind.PASSWORD in kinds and wire.Kind.PROXIED in kinds
    for kind in kinds:
        fields = [False if limit == 1 else "demo" for limit in wire.FIELD_LIMITS[kind]]
        with pytest.raises(monitor_mod.ProtocolViolation, match="after a verified login"):
            ask(kind, *fields)
        assert mon.login is login and descriptors_on(brakes_file) == [], kind.name
    assert not any("Failed attempted login" in text for _, text in auth_log.records)


def test_the_user_session_never_holds_what_the_authentication_process_opened(
        owned_store, tmp_path, monkeypatch):
    """A login closes the brakes file (record_success), but an attempt begun after it stays
    open until its outcome: a SCRAM proof is not an outcome (only ACCEPTED is). The requests
    refuse any request after a verified login (the test above), so only our own code could
    leave one open. Whatever the authenticator holds, the monitor lets go of it when it forks
    the authentication process, which answers the requests from then on: the monitor, which
    becomes the user session, must never hold root's descriptor on everyone's failure counts
    (server/monitor_auth.py). Here the real authentication process is forked, takes the
    HANDOVER, and the monitor gets the login back; then the user session's last step is kept,
    not run."""
    import socket
    from qpopper.log import ForwardedRecords
    from qpopper.server import monitor_handover
    from qpopper.server import monitor_wire as wire
    brakes_file = str(tmp_path / "auth-brakes.sqlite")
    mon, ask, _ = store_monitor(owned_store, auth_brakes_file=brakes_file)
    assert ask(wire.Kind.PASSWORD, "demo", "demo-pw", "USER", "", False, "").kind \
        is wire.Kind.LOGIN
    login = mon.login
    assert login is not None and descriptors_on(brakes_file) == []   # the login closed it
    # An attempt opened behind the request channel (which refuses it after a login).
    auth = mon.authenticator
    bare = "n=demo,r=client-nonce"
    server_first = auth.scram_begin("demo", "SCRAM-SHA-256", "client-nonce")
    without_proof, proof = scram_client_proof(server_first, bare, "demo-pw")
    auth.scram_prove(bare, without_proof, proof, CLIENT_IP)
    assert descriptors_on(brakes_file) != []                  # the proof's attempt holds it open
    prelogin = subprocess.Popen(["sleep", "60"])              # stands for the pre-login process
    mon.prelogin_pid = prelogin.pid
    records_ours, records_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    mon.records = ForwardedRecords(records_ours, mon.log)
    requests, prelogin_end = wire.channel_pair()
    sessions = []
    monkeypatch.setattr(monitor_handover, "exit_after",
                        lambda log, what, session: sessions.append(what))
    try:
        wire.send(prelogin_end, wire.Kind.HANDOVER, b"", False, CLIENT_HOST, "0", False)
        handover = mon._authenticate(requests, None)
        assert handover is not None and handover.kind is wire.Kind.HANDOVER
        # the login as the outcome carried it (a copy: the monitor checked nothing itself)
        assert mon.login == login and mon.login is not login and mon.authenticator is None
        assert descriptors_on(brakes_file) == [], "the user session would hold the brakes file"
        records_theirs.send(bytes((syslog.LOG_NOTICE,)) + b"its last record")
        mon._become_user_session(mon.login, os.getgid(), b"", False, CLIENT_HOST, 0, None)
    finally:
        prelogin_end.close()
        records_theirs.close()
        if prelogin.poll() is None:
            prelogin.kill()
            prelogin.wait()
    assert sessions == ["session of demo"]
    # what the ended pre-login process sent last is logged, and its socket closed
    assert "pre-login: its last record" in mon.log.texts()
    assert mon.records.sock.fileno() == -1
