"""poppassd (reference §2.10) over real connections: `systemd-socket-activate --accept --inetd`
runs one poppassd per connection on 127.0.0.1, as poppassd.socket / inetd would, for real
`qpt` users through a real PAM service; the changed password then logs in to the real POP
server. Failures cost limits.POPPASSD_FAILURE_DELAY_S each (about 3 s). poppassd reads the
site's configuration (-f), so its brute-force brakes count in the site's private file, never
the host's /run/qpopper (tests/test_poppassd_brakes.py tests the brakes themselves)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from qpopper import QPOPPER_VERSION, __version__, limits
from qpopper.auth import pam as pam_auth
from qpopper.tools import poppassd, poppassd_monitor
from tests.helpers import pam_service as pam_files
from tests.helpers.poppassd_service import BAD_OLD, POPPASSD, PoppassdService
from tests.helpers.sysusers import make_spool
from tests.helpers.messages import mbox
from tests.server_harness import Site, SyslogCapture
from tests.helpers.repo import REPO

pytestmark = pytest.mark.timeout(90)

GREETING_START = f"200 poppassd (qpopper-py {__version__}) ".encode()
"""The product's version, not the Qpopper version popper's banner names."""


@contextlib.contextmanager
def poppassd_service(world_tmp, stack: str):
    """poppassd and a POP server on a PAM service of this stack (auth, account, password)."""
    with pam_files.installed_pam_service(stack, tag="pw-") as pam_service:
        site = Site(world_tmp, pam_service)
        svc = PoppassdService(site, pam_service)
        svc.site = site
        try:
            yield svc
        finally:
            svc.stop()
            site.close()


@pytest.fixture
def service(world_tmp, pam_service):          # pam_service: skips unless root
    with poppassd_service(world_tmp, pam_files.FAST_UNIX_PASSWORD) as svc:
        yield svc


def pop_login_ok(site: Site, user, password: str) -> bool:
    import poplib
    server = site.servers[0] if site.servers else site.server()
    client = poplib.POP3(server.host, server.port, timeout=20)
    try:
        client.user(user.name)
        try:
            client.pass_(password)
        except poplib.error_proto:
            return False
        client.quit()
        return True
    finally:
        client.close()


def test_change_a_password_then_log_in_to_pop_with_it(service, system_users):
    user = system_users.create("pp")
    make_spool(service.site.spool_dir, user, mbox(("hi", "there")))
    new = "new password: with spaces 2"
    with service.connect() as c:
        assert c.greeting.startswith(GREETING_START)
        assert c.greeting.endswith(b") hello, who are you?")
        assert c.say(f"user {user.name}") == b"200 Your password please."
        assert c.say(f"pass {user.password}") == b"200 Your new password please."
        assert c.say(f"newpass {new}") == b"200 Password changed, thank-you."
        assert c.say("quit") == b"200 Bye."
        assert c.closed_by_server()
    assert pam_auth.authenticate(service.site.options["pam_service"], user.name, new).ok
    assert pop_login_ok(service.site, user, new)
    assert not pop_login_ok(service.site, user, user.password)
    record = service.site.syslog.wait_for(rf'password changed for "{user.name}" from 127\.0\.0\.1')
    texts = "\n".join(service.site.syslog.texts())
    assert new not in texts and user.password not in texts        # passwords are never logged
    assert record[0] & 7 == 5                                       # LOG_NOTICE


def change(svc, user, new: str) -> bytes:
    """The dialogue up to the reply to `newpass`."""
    with svc.connect() as c:
        assert c.say(f"user {user.name}") == b"200 Your password please."
        assert c.say(f"pass {user.password}") == b"200 Your new password please."
        return c.say(f"newpass {new}")


def test_the_shipped_pam_service_changes_the_password(world_tmp, pam_service, system_users):
    """pam.d/poppassd as the package installs it: common-auth, -account and -password."""
    shipped = (REPO / "pam.d/poppassd").read_text()
    with poppassd_service(world_tmp, shipped) as svc:
        user = system_users.create("pp")
        assert change(svc, user, "shipped-stack-3") == b"200 Password changed, thank-you."
        assert pam_auth.authenticate(svc.site.options["pam_service"], user.name,
                                     "shipped-stack-3").ok
        assert not pam_auth.authenticate(svc.site.options["pam_service"], user.name,
                                         user.password).ok


def test_the_pam_password_stack_decides(world_tmp, pam_service, system_users):
    """A password stack that refuses every new password (pam_deny, as pam_pwquality refuses
    a weak one): poppassd says so, may be asked again, and the password stays unchanged."""
    with poppassd_service(world_tmp, pam_files.PASSWORD_DENIED) as svc:
        user = system_users.create("pp")
        assert change(svc, user, "denied-by-pam-5") == b"500 New password not acceptable."
        assert pam_auth.authenticate(svc.site.options["pam_service"], user.name,
                                     user.password).ok
        svc.site.syslog.wait_for(rf'new password for "{user.name}" from 127\.0\.0\.1 '
                                 rf"refused: PAM service {svc.site.options['pam_service']}: "
                                 r".* \(20\)")
        assert "denied-by-pam-5" not in "\n".join(svc.site.syslog.texts())


def test_wrong_old_password_and_unknown_user_get_the_same_reply(service, system_users):
    user = system_users.create("pp")
    replies, times = [], []
    for name, password in ((user.name, "not-the-password"), ("qptnosuchuser", "whatever")):
        with service.connect() as c:
            assert c.say(f"USER {name}") == b"200 Your password please."   # verbs: any case
            start = time.monotonic()
            replies.append(c.say(f"pass {password}"))
            times.append(time.monotonic() - start)
            assert c.closed_by_server()                  # a guesser must reconnect
    assert replies == [BAD_OLD, BAD_OLD]
    for elapsed in times:
        assert limits.POPPASSD_FAILURE_DELAY_S - 0.05 <= elapsed < limits.POPPASSD_FAILURE_DELAY_S + 1
    assert pam_auth.authenticate(service.site.options["pam_service"], user.name,
                                 user.password).ok                    # nothing changed
    service.site.syslog.wait_for(rf'password change for "{user.name}" from 127\.0\.0\.1 '
                                 r"refused: PAM service .*")
    service.site.syslog.wait_for(r'password change for "qptnosuchuser" from 127\.0\.0\.1 '
                                 r"refused: no such user")


def test_system_accounts_are_refused_like_a_wrong_password(service):
    # uid <= 10 (here: daemon, uid 1): refused before PAM is asked, with the same reply.
    with service.connect() as c:
        c.say("user daemon")
        assert c.say("pass anything") == BAD_OLD
    service.site.syslog.wait_for(r'password change for "daemon" from 127\.0\.0\.1 refused: '
                                 r"uid 1 is blocked")


def test_over_long_line_is_refused_and_the_connection_closed(service):
    with service.connect() as c:
        c.sock.sendall(b"user " + b"x" * limits.POPPASSD_MAX_LINE_OCTETS + b"\r\n")
        assert c.reply() == b"500 Line too long."
        assert c.closed_by_server()
    with service.connect() as c:                     # a line just within the limit is read
        line = b"user " + b"y" * (limits.POPPASSD_MAX_LINE_OCTETS - 7)
        assert c.say(line) == b"200 Your password please."


def test_commands_out_of_order_and_the_bad_command_budget(service):
    with service.connect() as c:
        assert c.say("pass secret") == b"500 Username required."
        assert c.say("user") == b"500 Username required."          # no argument
        assert c.say("user someone") == b"200 Your password please."
        assert c.say("newpass x") == b"500 Password required."
        assert c.say("frobnicate") == b"500 Password required."
        assert c.say("help") == b"500 Too many bad commands, closing connection."
        assert c.closed_by_server()


def test_new_password_must_be_acceptable(service, system_users):
    user = system_users.create("pp")
    with service.connect() as c:
        c.say(f"user {user.name}")
        assert c.say(f"pass {user.password}") == b"200 Your new password please."
        assert c.say(f"newpass {user.password}") == b"500 New password not acceptable."
        assert c.say(b"newpass bad\x01control") == b"500 New password not acceptable."
        assert c.say(b"newpass \xff\xfe") == b"500 New password not acceptable."
        assert c.say("newpass good-one-7") == b"200 Password changed, thank-you."
    assert pam_auth.authenticate(service.site.options["pam_service"], user.name,
                                 "good-one-7").ok


@contextlib.contextmanager
def poppassd_on_a_socket_pair(world_tmp, pam_service, *flags,
                              config_text="# nothing: the built-in defaults\n"):
    """poppassd run directly on a socket pair (inetd's descriptors): yields (our socket, its
    process); the process is killed if the test leaves it running."""
    config = Path(world_tmp, "empty.config")
    config.write_text(config_text)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        proc = subprocess.Popen([POPPASSD, "-s", pam_service, *flags, "-f", str(config)],
                                stdin=theirs.fileno(), stdout=theirs.fileno(),
                                stderr=subprocess.DEVNULL,
                                env=dict(os.environ, QPOPPER_SYSLOG_SOCKET="/nonexistent"))
        try:
            yield ours, proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


def test_idle_connection_times_out(world_tmp, pam_service):
    with poppassd_on_a_socket_pair(world_tmp, pam_service, "--timeout", "0.5") as (ours, proc):
        with ours.makefile("rb") as f:
            assert f.readline().startswith(GREETING_START)
            start = time.monotonic()
            assert f.readline() == b"500 Timeout, closing connection.\r\n"
            assert time.monotonic() - start < 3
        assert proc.wait(10) == poppassd.EXIT_FAILED


def test_shy_hides_the_version_from_the_greeting(world_tmp, pam_service):
    """`shy` in the configuration poppassd reads: its greeting names no version, as popper's
    banner then does not (a version tells an attacker which flaws to try)."""
    with poppassd_on_a_socket_pair(world_tmp, pam_service,
                                   config_text="set shy\n") as (ours, proc):
        with ours.makefile("rb") as f:
            assert f.readline() == poppassd.SHY_GREETING.encode() + b"\r\n"
            ours.sendall(b"quit\r\n")
            assert f.readline() == b"200 Bye.\r\n"
        assert proc.wait(10) == 0


def test_a_trickling_client_is_cut_off_at_the_deadline(world_tmp, pam_service):
    """One byte every 0.3 s keeps inside a 1 s read timeout, yet the dialogue ends at its
    2 s deadline with the timeout reply: a slow client cannot hold a root process."""
    with poppassd_on_a_socket_pair(world_tmp, pam_service, "--timeout", "1",
                                   "--deadline", "2") as (ours, proc):
        with ours.makefile("rb") as f:
            assert f.readline().startswith(GREETING_START)
            start = time.monotonic()
            for byte in b"user someone-who-types-very-slowly":
                if proc.poll() is not None:
                    break
                with contextlib.suppress(OSError):
                    ours.sendall(bytes([byte]))
                time.sleep(0.3)
            assert proc.wait(10) == poppassd.EXIT_FAILED
            elapsed = time.monotonic() - start
            assert f.readline() == b"500 Timeout, closing connection.\r\n"
    assert 1.5 <= elapsed < 4


def test_the_deadline_defaults_to_its_limit():
    assert poppassd.Settings().deadline == limits.POPPASSD_DEADLINE_S == 120


@pytest.mark.parametrize("argv,message", [
    (["--bogus"], "unexpected argument '--bogus'"),
    (["-s"], "-s needs a value"),
    (["-t", "soon"], "--timeout needs a number of seconds"),
    (["--deadline", "soon"], "--deadline needs a number of seconds"),
    (["--deadline=0"], "--deadline must be between 0 and 3600 seconds"),
    (["-s", "../shadow"], "bad PAM service name"),
    (["-f"], "-f needs a value"),
    (["--config="], "--config needs a file name"),
    (["--auth-brakes-max-delay=900"], "'auth-brakes-max-delay' must be between 0 and 600"),
    (["--auth-brakes-max-delay", "soon"], "'auth-brakes-max-delay' expects an integer"),
    (["--auth-brakes-file"], "--auth-brakes-file needs a value"),
])
def test_bad_arguments_get_one_line_and_exit_2(argv, message):
    result = subprocess.run([POPPASSD, *argv], capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == poppassd.EXIT_USAGE
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr


def test_version_is_the_products():
    result = subprocess.run([POPPASSD, "--version"], capture_output=True, text=True,
                            timeout=30, stdin=subprocess.DEVNULL)
    assert (result.returncode, result.stdout, result.stderr) == (
        0, f"poppassd (qpopper-py) {__version__}\n", "")
    assert QPOPPER_VERSION not in poppassd.GREETING


def test_an_unreadable_configuration_is_said_and_the_client_told_to_come_back(world_tmp):
    """The administrator's mistake (here: a misspelt option in the -f file): one line on
    stderr naming the file and line, a 500 reply instead of silence, exit 1."""
    config = Path(world_tmp, "bad.config")
    config.write_text("set auth-brakes-max-dealy = 3\n")
    ours, theirs = socket.socketpair()
    with ours, theirs:
        result = subprocess.run([POPPASSD, "-f", str(config)], stdin=theirs.fileno(),
                                stdout=theirs.fileno(), stderr=subprocess.PIPE, text=True,
                                timeout=30,
                                env=dict(os.environ, QPOPPER_SYSLOG_SOCKET="/nonexistent"))
        assert result.returncode == poppassd.EXIT_FAILED
        assert result.stderr.count("\n") == 1
        assert f"{config}:1" in result.stderr and "auth-brakes-max-dealy" in result.stderr
        theirs.close()
        with ours.makefile("rb") as f:
            assert f.read() == poppassd.TRY_LATER.encode() + b"\r\n"   # no greeting, no dialogue


def test_under_classic_inetd_the_client_is_not_told_the_configuration_mistake(world_tmp):
    """Classic inetd gives the client's socket to 2 as well: the mistake (the file, its line,
    what is wrong) goes to the log only, and the client gets the 500 reply alone."""
    config = Path(world_tmp, "bad.config")
    config.write_text("set auth-brakes-max-dealy = 3\n")
    ours, theirs = socket.socketpair()
    with ours, theirs:
        result = subprocess.run([POPPASSD, "-f", str(config)], stdin=theirs.fileno(),
                                stdout=theirs.fileno(), stderr=theirs.fileno(), timeout=30,
                                env=dict(os.environ, QPOPPER_SYSLOG_SOCKET="/nonexistent"))
        assert result.returncode == poppassd.EXIT_FAILED
        theirs.close()
        with ours.makefile("rb") as f:
            assert f.read() == poppassd.TRY_LATER.encode() + b"\r\n"


@pytest.mark.parametrize("config_text, line", [
    ("set auth-brakes-max-dealy = 3\n",
     r"configuration: .*bad\.config:1: .*auth-brakes-max-dealy.*; no password changed"),
    ("set prelogin-user = qptnosuchaccount\n",
     r"pre-login sandbox: prelogin-user 'qptnosuchaccount': no such account; no password "
     r"changed"),
])
def test_the_log_says_which_setup_step_refused(world_tmp, config_text, line):
    """The log line names what the administrator must mend: the configuration file, or the
    pre-login sandbox it sets up (docs/privsep.md)."""
    if os.geteuid() != 0:
        pytest.skip("poppassd runs as root only")
    config = Path(world_tmp, "bad.config")
    config.write_text(config_text)
    syslog = SyslogCapture(world_tmp)
    ours, theirs = socket.socketpair()
    try:
        with ours, theirs:
            result = subprocess.run([POPPASSD, "-f", str(config)], stdin=theirs.fileno(),
                                    stdout=theirs.fileno(), stderr=subprocess.PIPE, text=True,
                                    timeout=30,
                                    env=dict(os.environ, QPOPPER_SYSLOG_SOCKET=syslog.path))
            assert result.returncode == poppassd.EXIT_FAILED, result.stderr
            syslog.wait_for(line)
    finally:
        syslog.close()


@pytest.mark.parametrize("name", [
    "", "root:x", "a:", "a/b", "../etc", ".hidden", "-rf", "a b", "a\tb", "x\x01y", "x\x7fy",
    "\u2028x", "\udcff", "a" * (limits.MAX_USER_NAME_OCTETS + 1),
])
def test_hostile_user_names_are_refused_before_any_lookup(name):
    """The one user-name rule (qpopper.auth.is_possible_user_name), and no `:` (it separates
    /etc/passwd's fields): refused like a wrong password, never looked up or authenticated."""
    # The root process checks it (docs/privsep.md, "poppassd").
    keeper = poppassd_monitor.PasswordKeeper(lambda priority, text: None,
                                             pam_service=poppassd.DEFAULT_PAM_SERVICE)
    # (verdict, reason, a guess: counted by the brakes and logged as LOGIN FAILED, no PAM
    # answer: PAM was not asked)
    assert keeper._check_old_password(name, "whatever") == (poppassd_monitor.WRONG,
                                                            "invalid user name", True, None)


def test_an_unknown_name_goes_through_pam_as_an_existing_one_does(pam_service, system_users):
    """A well-formed unknown name is asked of PAM too, and refused as a wrong guess after:
    so a stack that cannot decide (here pam_exec failing: PAM_SYSTEM_ERR, as a directory out
    of reach says) answers "try again later" for it as for an existing name, and a stack's
    longer failure delay is waited for both; neither tells which names exist."""
    keeper = poppassd_monitor.PasswordKeeper(lambda priority, text: None,
                                             pam_service=pam_service)
    verdict, reason, guessed, result = keeper._check_old_password("qptnosuchuser", "whatever")
    assert (verdict, reason, guessed, result.owed_delay_s) == (
        poppassd_monitor.WRONG, "no such user", True, 0.0)
    known = system_users.create("pk")
    outage = ("auth     required  pam_exec.so quiet /bin/false\n"
              "account  required  pam_permit.so\n")
    with pam_files.installed_pam_service(outage, tag="pe-") as service:
        keeper = poppassd_monitor.PasswordKeeper(lambda priority, text: None,
                                                 pam_service=service)
        verdicts = [keeper._check_old_password(name, "whatever")[0]
                    for name in ("qptnosuchuser", known.name)]
    assert verdicts == [poppassd_monitor.LATER, poppassd_monitor.LATER]


@pytest.mark.skipif(shutil.which("man") is None, reason="man (man-db) not installed")
def test_man_page_matches_the_program():
    """man/poppassd.8 is written by hand: its options, replies and numbers are the code's."""
    import re
    from tests.helpers.manpages import rendered
    text = re.sub(r"\s+", " ", rendered(REPO / "man/poppassd.8"))
    synopsis = text.split("DESCRIPTION", 1)[0]
    for word in re.findall(r"(?<![\w-])-{1,2}[a-z][a-z-]*", poppassd.USAGE):
        assert re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", synopsis), word
    for reply in (poppassd.ASK_PASSWORD, poppassd.ASK_NEW_PASSWORD, poppassd.CHANGED,
                  poppassd.BYE, poppassd.BAD_OLD_PASSWORD, poppassd.LINE_TOO_LONG,
                  poppassd.TIMED_OUT, poppassd.NEW_PASSWORD_REFUSED):
        assert reply in text, reply
    assert poppassd.GREETING.replace(poppassd.__version__, "VERSION") in text
    assert f"longer than {limits.POPPASSD_MAX_LINE_OCTETS} octets" in text
    assert f"{limits.POPPASSD_MAX_BAD_COMMANDS} unknown or out-of-order commands" in text
    assert f"{limits.POPPASSD_TIMEOUT_S} seconds of silence" in text
    assert f"not finished within {limits.POPPASSD_DEADLINE_S} seconds" in text
    assert f"{limits.POPPASSD_FAILURE_DELAY_S:g} seconds after" in text
    assert f"uid of {limits.BLOCKED_UID_MAX} or less" in text
    assert f"(default: {poppassd.DEFAULT_PAM_SERVICE})" in text


def test_the_right_password_of_an_expired_account_is_answered_and_logged_as_a_wrong_one(
        service, system_users):
    """An expired account (usermod -e) with its right old password: the client is told what
    a wrong password is told, after as long; the log says why (`LOGIN REFUSED (account)`, as
    popper's does), and has the `LOGIN FAILED` line a wrong password gets, which fail2ban
    counts: else a ban coming one attempt late would tell the password was right."""
    expired = system_users.create("pp", account_expired=True)
    with service.connect() as c:
        assert c.say(f"user {expired.name}") == b"200 Your password please."
        start = time.monotonic()
        assert c.say(f"pass {expired.password}") == BAD_OLD
        elapsed = time.monotonic() - start
        assert c.closed_by_server()
    assert limits.POPPASSD_FAILURE_DELAY_S - 0.05 <= elapsed < limits.POPPASSD_FAILURE_DELAY_S + 1
    service.site.syslog.wait_for(rf"LOGIN REFUSED \(account\), user={expired.name}, "
                                 r"method=poppassd, ip=\[127\.0\.0\.1\], reason=PAM service "
                                 r".*\(13\)")
    service.site.syslog.wait_for(rf'password change for "{expired.name}" from 127\.0\.0\.1 '
                                 r"refused: PAM service .*")
    service.site.syslog.wait_for(rf"LOGIN FAILED, user={expired.name}, method=poppassd, "
                                 r"ip=\[127\.0\.0\.1\], failures=1, .*")


def test_an_expired_password_can_be_changed(service, system_users):
    """chage -d 0 (must change at next login): POP refuses the login, poppassd takes the old
    password and changes it, and POP then takes the new one."""
    stale = system_users.create("pp", password_expired=True)
    make_spool(service.site.spool_dir, stale, mbox(("hi", "there")))
    assert not pop_login_ok(service.site, stale, stale.password)
    assert change(service, stale, "renewed-password-8") == b"200 Password changed, thank-you."
    assert pop_login_ok(service.site, stale, "renewed-password-8")
