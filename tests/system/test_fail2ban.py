"""The fail2ban filter and jail the Debian package ships (etc/fail2ban/, installed by
debian/install), with Debian's own fail2ban: fail2ban-regex against the REAL server's log lines
(wrong passwords match, policy refusals and every other line do not), in both forms an
administrator's fail2ban reads them (a syslog file written by rsyslog, and journal entries as
the systemd backend renders them); the shipped jail, enabled as README says, starts with the
systemd backend on this machine, which runs no rsyslog; and the documented syslog-file variant
bans an address after five wrong passwords and never after policy refusals. fail2ban runs
with a private configuration copy, socket, pid file and in-memory database, and bans through
an action that only writes the address to a file (no firewall is touched)."""

from __future__ import annotations

import configparser
import contextlib
import pwd
import re
import shutil
import socket
import subprocess
import syslog
import time
from pathlib import Path

import pytest

from qpopper.log import PRELOGIN_PREFIX
from tests.helpers.descriptors import socket_of
from tests.helpers.policy_site import greeted, policy_site, user_pass
from tests.helpers.repo import REPO
from tests.helpers.sysusers import PRELOGIN_USER
from tests.server_harness import processes_of, wait_until

pytestmark = [pytest.mark.timeout(180),
              pytest.mark.skipif(shutil.which("fail2ban-client") is None,
                                 reason="fail2ban is not installed (Makefile DEB_TEST_PACKAGES)")]

SHIPPED = REPO / "etc" / "fail2ban"
FILTER, JAIL = "filter.d/qpopper.conf", "jail.d/qpopper.conf"


@pytest.fixture
def site(system_users, pam_service, world_tmp):
    s = policy_site(system_users, pam_service, world_tmp)
    yield s
    s.close()


def test_the_package_installs_the_filter_and_a_disabled_jail():
    installed = (REPO / "debian" / "install").read_text().splitlines()
    assert f"etc/fail2ban/{FILTER} etc/fail2ban/filter.d/" in installed
    assert f"etc/fail2ban/{JAIL} etc/fail2ban/jail.d/" in installed
    jail = configparser.ConfigParser()
    jail.read(SHIPPED / JAIL)
    assert jail["qpopper"]["enabled"] == "false"         # until the administrator enables it
    assert jail["qpopper"]["backend"] == "systemd" and jail["qpopper"]["filter"] == "qpopper"


@pytest.fixture
def fail2ban_conf(tmp_path):
    """Debian's /etc/fail2ban with the shipped files added, private runtime paths, the jail
    enabled as README says (jail.d/qpopper.local), and no other jail."""
    conf = tmp_path / "fail2ban"
    shutil.copytree("/etc/fail2ban", conf, symlinks=True)
    for name in (FILTER, JAIL):
        shutil.copy(SHIPPED / name, conf / name)
    for local in conf.glob("jail.d/*"):
        if local.name != "qpopper.conf":
            local.unlink()                                     # e.g. Debian's [sshd]
    (conf / "fail2ban.local").write_text(
        f"[Definition]\nsocket = {tmp_path}/f2b.sock\npidfile = {tmp_path}/f2b.pid\n"
        f"dbfile = :memory:\nlogtarget = {tmp_path}/fail2ban.log\n")
    (conf / "action.d" / "qpt-record.conf").write_text(
        f"[Definition]\nactionstart =\nactionstop =\nactioncheck =\n"
        f"actionban = echo <ip> >> {tmp_path}/banned\nactionunban =\n")
    (conf / "jail.d" / "qpopper.local").write_text(
        "[qpopper]\nenabled = true\naction = qpt-record\nignoreself = false\n")
    return conf


@contextlib.contextmanager
def fail2ban_server(conf: Path):
    """fail2ban-server in the foreground with `conf`; stopped (and reaped) afterwards."""
    log = open(conf.parent / "fail2ban-client.out", "wb")
    proc = subprocess.Popen(["fail2ban-client", "-c", str(conf), "-x", "-f", "start"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def pong():
        assert proc.poll() is None, (conf.parent / "fail2ban-client.out").read_text()
        return client(conf, "ping").returncode == 0
    try:
        wait_until(pong, 60, "fail2ban to answer")
        yield
    finally:
        client(conf, "stop")
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def client(conf: Path, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["fail2ban-client", "-c", str(conf), *command], capture_output=True,
                          text=True, timeout=30)


def real_lines(site) -> list[tuple[int, str]]:
    """Five policy refusals and two of an expired account, with the correct password, from
    127.0.0.3 and five wrong passwords from 127.0.0.4, through the real server: every record
    it logged meanwhile (pid, text). The expired account's are answered and logged as wrong
    passwords (docs/operations.md, "An expired account or password"): fail2ban counts
    them, as it does the wrong ones, and no policy refusal."""
    for user in (site.alice, site.carl, site.eve, site.alice, site.carl, site.eve):
        assert user_pass(site, "127.0.0.3", user.name, user.password).startswith(b"-ERR")
    assert user_pass(site, "127.0.0.3", "daemon", "anything").startswith(b"-ERR")
    for i in range(5):
        assert user_pass(site, "127.0.0.4", site.bob.name, f"wrong-{i}").startswith(b"-ERR")
    site.syslog.wait_for(r"LOGIN FAILED, .*ip=\[127\.0\.0\.4\], failures=5, .*")
    records = [(pid, text) for _, pid, text in list(site.syslog.records)]
    assert sum("LOGIN REFUSED (policy)" in text for _, text in records) == 5
    assert sum("LOGIN REFUSED (account)" in text for _, text in records) == 2
    return records


ANSWERED_AS_WRONG = ["127.0.0.3"] * 2 + ["127.0.0.4"] * 5
"""What fail2ban finds in real_lines: the expired account's two, then the five wrong ones."""


def syslog_file_line(pid: int, text: str) -> str:
    """As rsyslog writes /var/log/mail.log (RFC 3164 date, host, tag)."""
    return f"{time.strftime('%b %e %H:%M:%S')} {socket.gethostname()} popper[{pid}]: {text}"


def journal_line(pid: int, text: str) -> str:
    """A journal entry as fail2ban's systemd backend renders it (_HOSTNAME
    SYSLOG_IDENTIFIER[SYSLOG_PID]: MESSAGE), with its time as `journalctl -o short-iso` shows."""
    return (f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {socket.gethostname()} "
            f"popper[{pid}]: {text}")


@pytest.mark.parametrize("form", [syslog_file_line, journal_line])
def test_fail2ban_regex_matches_what_is_answered_as_a_wrong_password_only(site, fail2ban_conf,
                                                                          tmp_path, form):
    records = real_lines(site)
    assert matched(fail2ban_conf, tmp_path, form, records) == ANSWERED_AS_WRONG, records


def matched(fail2ban_conf, tmp_path, form, records) -> list[str]:
    """The addresses fail2ban-regex finds in `records` (pid, text), written in `form`."""
    log = tmp_path / "popper.log"
    log.write_text("".join(form(pid, text) + "\n" for pid, text in records))
    result = subprocess.run(["fail2ban-regex", "-c", str(fail2ban_conf), "-o", "ip", str(log),
                             "qpopper"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.mark.parametrize("form", [syslog_file_line, journal_line])
def test_a_prelogin_process_cannot_forge_a_failure(site, fail2ban_conf, tmp_path, form):
    """A pre-login process the client took over sends what it likes on the descriptors it
    holds: here five failures for 127.0.0.9 at LOG_EMERG on its log socket. Its monitor
    logs them as its records, PRELOGIN_PREFIX first and at LOG_CRIT, so fail2ban matches
    only the real wrong passwords (docs/privsep.md, "The pre-login process's log records")."""
    forged = "LOGIN FAILED, user=x, method=USER, ip=[127.0.0.9], failures=5, brake=0s"
    sock, _ = greeted(site, "127.0.0.5")
    with sock:
        prelogin_uid = pwd.getpwnam(PRELOGIN_USER).pw_uid
        prelogin = wait_until(lambda: processes_of(site.srv, prelogin_uid),
                              what="the pre-login process")[0]
        with socket_of(prelogin, socket.SOCK_DGRAM) as log_end:
            for _ in range(5):
                log_end.send(bytes((syslog.LOG_EMERG,)) + forged.encode())
        site.syslog.wait_for(re.escape(PRELOGIN_PREFIX + forged))
    records = real_lines(site)
    shown = [(priority & 7, text) for priority, _, text in site.syslog.records
             if forged in text]
    assert shown == [(syslog.LOG_CRIT, PRELOGIN_PREFIX + forged)] * 5
    assert matched(fail2ban_conf, tmp_path, form, records) == ANSWERED_AS_WRONG, records


def test_the_shipped_jail_starts_with_the_journal_backend(fail2ban_conf):
    """No rsyslog here (no /var/log/mail.log): the jail as shipped reads the journal."""
    test = client(fail2ban_conf, "-t")
    assert test.returncode == 0 and "OK" in test.stdout + test.stderr, test
    with fail2ban_server(fail2ban_conf):
        status = client(fail2ban_conf, "status", "qpopper")
        assert status.returncode == 0, status
        assert ("Journal matches:\tSYSLOG_IDENTIFIER=popper + SYSLOG_IDENTIFIER=poppassd"
                in status.stdout), status.stdout


def test_the_syslog_file_variant_bans_after_wrong_passwords_only(site, fail2ban_conf,
                                                                  tmp_path):
    mail_log = tmp_path / "mail.log"
    mail_log.write_text("")
    with (fail2ban_conf / "jail.d" / "qpopper.local").open("a") as f:   # README's variant
        f.write(f"backend = auto\nlogpath = {mail_log}\n")
    records = real_lines(site)
    policy = [(pid, text) for pid, text in records if text.startswith("LOGIN REFUSED")]
    failed = [(pid, text) for pid, text in records if text.startswith("LOGIN FAILED")]
    with fail2ban_server(fail2ban_conf):
        with mail_log.open("a") as f:
            f.writelines(syslog_file_line(pid, text) + "\n" for pid, text in policy * 2)
        # ten policy refusals read (the last line is a marker fail2ban must get past) ...
        with mail_log.open("a") as f:
            f.write(syslog_file_line(*failed[0]) + "\n")
        wait_until(lambda: "Total failed:\t1" in client(fail2ban_conf, "status",
                                                        "qpopper").stdout,
                   60, "fail2ban to read the log")
        assert not (tmp_path / "banned").exists()
        # ... and the other four wrong passwords: banned
        with mail_log.open("a") as f:
            f.writelines(syslog_file_line(pid, text) + "\n" for pid, text in failed[1:])
        wait_until(lambda: "127.0.0.4" in client(fail2ban_conf, "status", "qpopper").stdout,
                   60, "the ban")
        status = client(fail2ban_conf, "status", "qpopper").stdout
        assert "Banned IP list:\t127.0.0.4\n" in status + "\n", status
    assert (tmp_path / "banned").read_text().split() == ["127.0.0.4"]
