"""The real standalone master (`popper ADDRESS:PORT -f CONFIG`) with real users, a real PAM
service and Python's poplib, on 127.0.0.1 and ::1 (root only: useradd, PAM, privilege drop)."""

from __future__ import annotations

import grp
import os
import poplib
import re
import signal
import socket
import subprocess
import syslog
import time

import pytest

from qpopper.options import lookup
from tests.helpers import strace
from tests.helpers.sysusers import make_spool
from tests.helpers.messages import mbox
from tests.server_harness import (PopperServer, Site, free_port, has_ipv6_loopback, login,
                                  proc_status, proc_title, read_greeting, read_pid_file, spool_text,
                                  wait_for_greeting, wait_until)

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

MESSAGES = (("first", "Body one.\n.dot line\n"), ("second", "Body two.\n"),
            ("third", "Body three.\n"))
SPOOL = mbox(*MESSAGES)


@pytest.fixture
def make_site(world_tmp, pam_service):
    """Site(**options) for a test that needs options of its own; closed after the test."""
    made: list[Site] = []

    def make(**options) -> Site:
        made.append(Site(world_tmp, pam_service, **options))
        return made[-1]

    yield make
    for s in made:
        s.close()


@pytest.fixture
def site(make_site):
    return make_site()


# --- a whole session ---------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_login_fetch_delete_quit(site, system_users, host):
    if host == "::1" and not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback in this environment")
    user = system_users.create()
    make_spool(site.spool_dir, user, SPOOL)
    server = site.server(host)

    client = login(server, user)
    count, octets = client.stat()
    assert count == 3 and octets > 0
    sizes = [int(line.split()[1]) for line in client.list()[1]]
    assert len(sizes) == 3 and sum(sizes) == octets
    uids = [line.split()[1] for line in client.uidl()[1]]
    assert len(set(uids)) == 3
    lines = client.retr(1)[1]
    assert b"Subject: first" in lines and b".dot line" in lines
    assert sum(len(line) + 2 for line in lines) == sizes[0]
    top = client.top(2, 0)[1]
    assert b"Subject: second" in top and b"Body two." not in top
    client.dele(2)
    assert client.quit().startswith(b"+OK")

    text = spool_text(site, user)
    assert text.count("Subject: first") == 1 and text.count("Subject: third") == 1
    assert "Subject: second" not in text
    assert f"X-UIDL: {uids[0].decode()}" in text and f"X-UIDL: {uids[2].decode()}" in text
    assert not os.path.exists(os.path.join(site.spool_dir, f".{user.name}.pop"))

    # the next session sees the two kept messages with the same UIDs
    client = login(server, user)
    assert [line.split()[1] for line in client.uidl()[1]] == [uids[0], uids[2]]
    client.quit()


def test_wrong_password_is_auth_error_and_logged(site, system_users):
    user = system_users.create()
    make_spool(site.spool_dir, user, SPOOL)
    server = site.server()
    with pytest.raises(poplib.error_proto, match=r"^b'-ERR \[AUTH\]"):
        login(server, user, password="not-the-password")
    site.syslog.wait_for(
        rf"\[AUTH\] Failed attempted login to {user.name} from host \(127\.0\.0\.1\) 127\.0\.0\.1")
    assert spool_text(site, user) == SPOOL.decode()


def test_low_uid_account_is_refused(site):
    server = site.server()
    client = poplib.POP3(server.host, server.port, timeout=20)
    try:
        client.user("daemon")                        # uid 1 on Debian
        with pytest.raises(poplib.error_proto, match=r"^b'-ERR \[AUTH\]"):
            client.pass_("anything")
    finally:
        client.close()
    assert os.listdir(site.spool_dir) == []


def test_expired_account_is_refused(site, system_users):
    user = system_users.create(account_expired=True)
    make_spool(site.spool_dir, user, SPOOL)
    server = site.server()
    with pytest.raises(poplib.error_proto, match=r"^b'-ERR \[AUTH\]"):
        login(server, user)
    assert spool_text(site, user) == SPOOL.decode()


def test_second_concurrent_session_is_in_use(site, system_users):
    user = system_users.create()
    make_spool(site.spool_dir, user, SPOOL)
    server = site.server()
    first = login(server, user)
    assert first.stat()[0] == 3
    with pytest.raises(poplib.error_proto, match=r"^b'-ERR \[IN-USE\]"):
        login(server, user)
    assert first.stat()[0] == 3                  # the first session is unharmed
    first.quit()


# --- privileges --------------------------------------------------------------------------------
def test_logged_in_child_runs_as_the_user_with_the_mail_group_only(site, system_users):
    user = system_users.create()
    other = system_users.create()
    make_spool(site.spool_dir, user, SPOOL)
    other_spool = make_spool(site.spool_dir, other, SPOOL)       # 0600 other:mail
    server = site.server()
    client = login(server, user)
    client.stat()

    def child_of_user():
        return [pid for pid in server.children() if f"popper: {user.name}@" in proc_title(pid)]

    pid = wait_until(child_of_user, what="the logged-in child")[0]
    assert "TRANSACTION" in proc_title(pid)
    status = proc_status(pid)
    mail = grp.getgrnam("mail").gr_gid
    assert status["Uid"].split() == [str(user.uid)] * 4         # real, effective, saved, fs
    # the mail group is effective (the spool); the real one is the user's own, for the
    # programs the session runs (privsep.run_user_program)
    assert status["Gid"].split() == [str(user.gid), str(mail), str(mail), str(mail)]
    assert status["Groups"].strip() == ""
    # no capabilities at all: it can neither regain root nor bypass file permissions
    for cap in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(status[cap], 16) == 0, cap
    # and with exactly those credentials another user's 0600 spool cannot be opened
    probe = subprocess.run(
        ["python3", "-c", f"import os\ntry:\n open({other_spool!r}).close(); print('opened')\n"
                          f"except PermissionError: print('denied')\n"
                          f"try:\n os.setuid(0); print('root')\nexcept PermissionError: "
                          f"print('no root')"],
        user=user.uid, group=mail, extra_groups=[], capture_output=True, text=True, timeout=20)
    assert probe.stdout.split() == ["denied", "no", "root"]
    client.quit()


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "x" * 70, "/etc/passwd",
                                  "evil\x01name"])
def test_hostile_user_names_are_refused_without_touching_the_filesystem(site, name):
    victim_dir = os.path.dirname(site.spool_dir)
    server = site.server()
    wait_until(lambda: not server.children(), what="the start-up probe to end")
    before = sorted(os.listdir(victim_dir)), sorted(os.listdir(site.spool_dir))
    with socket.create_connection((server.host, server.port), timeout=10) as s:
        read_greeting(s)
        s.sendall(f"USER {name}\r\n".encode())
        reply = read_greeting(s)
        if reply.startswith(b"+OK"):
            s.sendall(b"PASS whatever\r\n")
            reply = read_greeting(s)
        assert reply.startswith(b"-ERR"), reply
        s.sendall(b"QUIT\r\n")
        read_greeting(s)
    # A refused name is a failed login: only the brake table may record it (auth/brakes.py)
    after = sorted(set(os.listdir(victim_dir)) - {"auth-brakes.sqlite"})
    assert (after, sorted(os.listdir(site.spool_dir))) == before


def test_nul_and_empty_user_names_are_refused(site):
    server = site.server()
    with socket.create_connection((server.host, server.port), timeout=10) as s:
        read_greeting(s)
        for line in (b"USER a\0b\r\n", b"USER\r\n", b"USER \r\n"):
            s.sendall(line)
            assert read_greeting(s).startswith(b"-ERR")
    assert os.listdir(site.spool_dir) == []


# --- log lines ---------------------------------------------------------------------------------
def test_stats_timing_and_log_login_lines(site, system_users):
    user = system_users.create()
    make_spool(site.spool_dir, user, SPOOL)
    server = site.server()
    client = login(server, user)
    sizes = [int(line.split()[1]) for line in client.list()[1]]
    client.dele(1)
    client.quit()
    from qpopper import QPOPPER_VERSION as V
    site.syslog.wait_for(rf'\(v{V}\) POP login by user "{user.name}" at \(127\.0\.0\.1\) 127\.0\.0\.1')
    pri, _pid, text = site.syslog.wait_for(rf"Stats: {user.name} .*")
    assert text == (f"Stats: {user.name} 1 {sizes[0]} 2 {sizes[1] + sizes[2]} "
                    f"127.0.0.1 127.0.0.1")
    assert pri & 7 == 5 and pri >> 3 == 2        # mail.notice
    site.syslog.wait_for(rf"\(v{V}\) Timing for {user.name}@127\.0\.0\.1 \(normal\) "
                         r"auth=\d+ init=\d+ clean=\d+")


def test_reverse_lookup_names_the_client(make_site, system_users):
    s = make_site(reverse_lookup=True)
    user = system_users.create()
    server = s.server()
    with pytest.raises(poplib.error_proto):
        login(server, user, password="wrong")
    name = socket.gethostbyaddr("127.0.0.1")[0]
    s.syslog.wait_for(rf"\[AUTH\] Failed attempted login to {user.name} from host "
                      rf"\({name}\) 127\.0\.0\.1")


def test_idle_client_times_out_with_qpopper_log_line(make_site, system_users):
    s = make_site(timeout=1)
    user = system_users.create()
    make_spool(s.spool_dir, user, SPOOL)
    server = s.server()
    client = login(server, user)
    client.dele(1)
    time.sleep(1.5)                       # the behaviour under test is the idle time
    with pytest.raises((poplib.error_proto, OSError, EOFError)):
        client.stat()
    client.close()
    from qpopper import QPOPPER_VERSION as V
    s.syslog.wait_for(rf"\(v{V}\) Timeout \(1 secs\) during nw read from {user.name} at "
                      r"127\.0\.0\.1 \(127\.0\.0\.1\)")
    # update-on-abort (Qpopper's default): the deletion was committed
    wait_until(lambda: "Subject: first" not in spool_text(s, user), what="the update")


# --- the master's own behaviour ----------------------------------------------------------------
def test_per_address_limit_refuses_with_sys_temp_when_every_slot_is_logged_in(make_site,
                                                                           system_users):
    s = make_site(max_children_per_address=2)
    users = [system_users.create() for _ in range(2)]
    for user in users:
        make_spool(s.spool_dir, user, SPOOL)
    server = s.server()
    wait_until(lambda: not server.children(), what="the start-up probe to end")
    held = [login(server, user) for user in users]
    try:
        for client in held:
            client.stat()
        with socket.create_connection((server.host, server.port), timeout=10) as extra:
            reply = read_greeting(extra)
            assert reply.startswith(b"-ERR [SYS/TEMP]"), reply
            assert extra.recv(100) == b""              # and closed
        for client in held:                            # never displaced
            assert client.stat()[0] == 3
    finally:
        for client in held:
            client.quit()
    # once they are gone, connections are served again
    wait_until(lambda: len(server.children()) == 0, what="children to exit")
    wait_for_greeting(server.host, server.port)


def test_idle_connections_make_room_for_newcomers_from_the_same_address(make_site,
                                                                        system_users):
    """At the per-address limit a newcomer ends the connection that has waited longest
    without logging in (Dovecot's "connection queue full"): idle sockets from one address
    cannot lock that address's users out. Before, the newcomer was refused."""
    s = make_site(max_children_per_address=3)
    user = system_users.create()
    make_spool(s.spool_dir, user, SPOOL)
    server = s.server()
    wait_until(lambda: not server.children(), what="the start-up probe to end")
    logged_in = login(server, user)
    idle = [socket.create_connection((server.host, server.port), timeout=10) for _ in range(2)]
    try:
        for sock in idle:
            assert read_greeting(sock).startswith(b"+OK")
        with socket.create_connection((server.host, server.port), timeout=10) as extra:
            assert read_greeting(extra).startswith(b"+OK")      # served, not refused
            # the oldest idle one is told why, then closed
            assert read_greeting(idle[0]) == (b"-ERR [SYS/TEMP] Too many connections; "
                                              b"try again later\r\n")
            assert idle[0].recv(100) == b""
            extra.sendall(b"CAPA\r\n")
            assert extra.recv(100).startswith(b"+OK")
        idle[1].sendall(b"NOOP\r\n")                        # the younger one still served
        assert idle[1].recv(100).startswith(b"-ERR")
        assert logged_in.stat()[0] == 3                       # a logged-in one never ends
        s.syslog.wait_for(r"3 sessions from 127\.0\.0\.1 \(max-children-per-address 3\): "
                          r"ending a connection from 127\.0\.0\.1 that has not logged in, "
                          r"for one from 127\.0\.0\.1")
    finally:
        logged_in.quit()
        for sock in idle:
            sock.close()


def test_hup_rereads_the_configuration_for_new_connections(site):
    server = site.server()
    assert wait_for_greeting(server.host, server.port).startswith(b"+OK Qpopper")
    with open(site.config, "a") as f:
        f.write("set shy\n")
    os.kill(server.pid, signal.SIGHUP)
    site.syslog.wait_for("configuration reloaded")
    assert wait_for_greeting(server.host, server.port).startswith(b"+OK ready")
    # a broken file is reported and the running configuration kept
    with open(site.config, "a") as f:
        f.write("set no-such-option = 1\n")
    os.kill(server.pid, signal.SIGHUP)
    site.syslog.wait_for(r"reload failed, keeping the running configuration: .*no-such-option.*")
    assert wait_for_greeting(server.host, server.port).startswith(b"+OK ready")


def test_hup_applies_log_facility_and_tracefile_to_new_sessions(site, system_users):
    """debug, tracefile and log-facility are STARTUP options: "takes effect at start-up or
    HUP". The master's log is rebuilt on HUP; new sessions log through it."""
    user = system_users.create()
    make_spool(site.spool_dir, user, SPOOL)
    server = site.server()
    login_line = rf'\(v[\d.]+\) POP login by user "{user.name}" at \(127\.0\.0\.1\) 127\.0\.0\.1'

    def facility_of_last_login() -> int:
        records = [pri for pri, _, text in site.syslog.records
                   if re.fullmatch(login_line, text)]
        return records[-1] & ~7

    login(server, user).quit()
    site.syslog.wait_for(login_line)
    assert facility_of_last_login() == syslog.LOG_MAIL

    with open(site.config, "a") as f:
        f.write("set log-facility = local3\n")
    os.kill(server.pid, signal.SIGHUP)
    reloaded = site.syslog.wait_for("configuration reloaded")
    assert reloaded[0] & ~7 == syslog.LOG_LOCAL3
    login(server, user).quit()
    wait_until(lambda: facility_of_last_login() == syslog.LOG_LOCAL3,
               what="a login record at facility local3")

    trace = os.path.join(site.root, "popper.trace")
    with open(site.config, "a") as f:
        f.write(f"set tracefile = {trace}\n")
    os.kill(server.pid, signal.SIGHUP)

    def traced() -> str:
        try:
            with open(trace) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    wait_until(lambda: "configuration reloaded" in traced(), what="the reload in the tracefile")
    login(server, user).quit()
    wait_until(lambda: re.search(login_line, traced()), what="the login in the tracefile")
    # a tracefile that cannot be opened keeps the running log
    with open(site.config, "a") as f:
        f.write(f"set tracefile = {site.root}/no-such-dir/trace\n")
    os.kill(server.pid, signal.SIGHUP)
    wait_until(lambda: "reload failed, keeping the running configuration" in traced(),
               what="the failed reload in the running tracefile")


def test_term_lets_a_running_session_finish(site, system_users):
    user = system_users.create()
    make_spool(site.spool_dir, user, SPOOL)
    server = site.server()
    client = login(server, user)
    os.kill(server.pid, signal.SIGTERM)
    site.syslog.wait_for(r"SIGTERM: no new connections; waiting for 1 session\(s\)")

    def refused():
        try:
            socket.create_connection((server.host, server.port), timeout=2).close()
        except ConnectionRefusedError:
            return True
        return False

    wait_until(refused, what="the listener to close")
    client.dele(3)
    assert client.quit().startswith(b"+OK")
    assert server.proc.wait(20) == 0
    assert "Subject: third" not in spool_text(site, user)


def test_term_ends_sessions_that_outlive_the_grace_period(make_site, system_users):
    s = make_site(shutdown_grace=1)
    user = system_users.create()
    make_spool(s.spool_dir, user, SPOOL)
    server = s.server()
    client = login(server, user)
    started = time.monotonic()
    os.kill(server.pid, signal.SIGTERM)
    assert server.proc.wait(20) == 0
    assert time.monotonic() - started < 10
    client.close()
    # the session was aborted, not killed mid-way: nothing is left in the temp drop
    assert spool_text(s, user).count("Subject: ") == 3
    assert not os.path.exists(os.path.join(s.spool_dir, f".{user.name}.pop"))
    # the log says the server ended it, not that the client went away
    s.syslog.wait_for(rf"Session of {user.name} at 127\.0\.0\.1 \(127\.0\.0\.1\) ended "
                      r"without QUIT in TRANSACTION: server shutdown \(SIGTERM\)")
    assert not [t for t in s.syslog.texts() if t.startswith("EOF from")]


def test_client_eof_is_logged_as_such(site, system_users):
    user = system_users.create()
    make_spool(site.spool_dir, user, SPOOL)
    server = site.server()
    client = login(server, user)
    client.stat()
    client.close()                        # gone without QUIT
    site.syslog.wait_for(rf"EOF from {user.name} at 127\.0\.0\.1 \(127\.0\.0\.1\) "
                         r"without QUIT")
    assert not [t for t in site.syslog.texts() if t.startswith("Session of ")]


def test_timeout_before_login_names_the_user_even_after_a_failed_password(make_site):
    from qpopper import QPOPPER_VERSION as V
    s = make_site(timeout=1)
    server = s.server()
    with socket.create_connection((server.host, server.port), timeout=20) as sock, \
            sock.makefile("rb") as replies:
        replies.readline()
        sock.sendall(b"USER qpt-nobody-here\r\nPASS wrong\r\n")
        assert replies.readline().startswith(b"+OK")
        assert replies.readline().startswith(b"-ERR [AUTH]")
        assert replies.readline() == b""  # the idle timeout closes it
    s.syslog.wait_for(rf"pre-login: \(v{V}\) Timeout \(1 secs\) during nw read from "
                      r"qpt-nobody-here at 127\.0\.0\.1 \(127\.0\.0\.1\)")


def test_dual_stack_wildcards_bind_together(site):
    if not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback in this environment")
    port = free_port("::1")
    server = PopperServer(site.root, site.config, host="0.0.0.0", port=port,
                          extra_args=[f"[::]:{port}"], syslog=site.syslog)
    site.servers.append(server)
    server.host = "127.0.0.1"
    server.start()
    assert wait_for_greeting("::1", port).startswith(b"+OK")
    assert wait_for_greeting("127.0.0.1", port).startswith(b"+OK")


def test_notify_socket_gets_ready_reloading_stopping(site):
    notify_path = os.path.join(site.root, "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(notify_path)
        notify.settimeout(15)
        server = PopperServer(site.root, site.config, env={"NOTIFY_SOCKET": notify_path},
                              syslog=site.syslog)
        site.servers.append(server)
        server.start()
        assert notify.recv(4096).startswith(b"READY=1")
        os.kill(server.pid, signal.SIGHUP)
        assert notify.recv(4096).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
        assert notify.recv(4096).startswith(b"READY=1")
        os.kill(server.pid, signal.SIGTERM)
        assert notify.recv(4096) == b"STOPPING=1"
        assert server.proc.wait(20) == 0


def test_daemon_mode_detaches_and_writes_the_pid_file(site):
    pid_file = os.path.join(site.root, "popper.pid")
    port = free_port()
    result = subprocess.run(
        [PopperServer(site.root, None).argv[0], f"127.0.0.1:{port}", "-f", site.config,
         "--daemon", f"--pid-file={pid_file}"],
        env=dict(os.environ, QPOPPER_SYSLOG_SOCKET=site.syslog.path),
        stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    pid = wait_until(lambda: read_pid_file(pid_file), what="the pid file")
    try:
        assert wait_for_greeting("127.0.0.1", port).startswith(b"+OK")
        assert proc_status(pid)["PPid"] != str(os.getpid())       # detached
        assert "popper: master" in proc_title(pid)
        site.syslog.wait_for(rf"master listening on 127\.0\.0\.1:{port}")   # after detaching
        again = subprocess.run(
            [PopperServer(site.root, None).argv[0], f"127.0.0.1:{free_port()}", "-f",
             site.config, "--daemon", f"--pid-file={pid_file}"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
        assert again.returncode == 1 and "held by a running master" in again.stderr
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not os.path.exists(pid_file), what="the pid file to go")


def test_daemon_start_refuses_a_relative_spool_dir(site):
    """The detached master works from /: a spool-dir relative to where it was started passes
    the start-up checks there and is looked for under / afterwards (sessions, health checks,
    reloads). The start refuses it, naming the file and line (docs/options.md, "Paths")."""
    relative = os.path.join(site.root, "relative.config")
    with open(relative, "w") as f:
        f.write("set spool-dir = spool\n")              # site.root/spool exists
    pid_file = os.path.join(site.root, "relative.pid")
    result = subprocess.run(
        [PopperServer(site.root, None).argv[0], f"127.0.0.1:{free_port()}", "-f", site.config,
         "-f", relative, "--daemon", f"--pid-file={pid_file}"],
        env=dict(os.environ, QPOPPER_SYSLOG_SOCKET=site.syslog.path), cwd=site.root,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    if result.returncode == 0:              # it detached: stop it before failing
        os.kill(wait_until(lambda: read_pid_file(pid_file), what="the pid file"),
                signal.SIGTERM)
    assert (result.returncode, result.stderr) == (
        2, f"popper: {relative}:1: 'spool-dir' must be an absolute path (beginning with /), "
           f"got 'spool'\n")
    assert not os.path.exists(pid_file)


def test_daemon_reload_reads_a_relative_f_from_where_it_started(site):
    """`popper -f qpopper.config --daemon` typed in the file's directory: the detached
    master works from /, and its reload (SIGHUP) still reads that file, not /qpopper.config."""
    pid_file = os.path.join(site.root, "relative-f.pid")
    port = free_port()
    result = subprocess.run(
        [PopperServer(site.root, None).argv[0], f"127.0.0.1:{port}", "-f",
         os.path.basename(site.config), "--daemon", f"--pid-file={pid_file}"],
        env=dict(os.environ, QPOPPER_SYSLOG_SOCKET=site.syslog.path), cwd=site.root,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    pid = wait_until(lambda: read_pid_file(pid_file), what="the pid file")
    try:
        assert wait_for_greeting("127.0.0.1", port).startswith(b"+OK Qpopper")
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        with open(site.config, "a") as f:
            f.write("set shy\n")
        os.kill(pid, signal.SIGHUP)
        said = site.syslog.wait_for(r"configuration reloaded|reload failed.*")[2]
        assert said == "configuration reloaded"
        assert wait_for_greeting("127.0.0.1", port).startswith(b"+OK ready")
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not os.path.exists(pid_file), what="the pid file to go")


def test_foreground_master_writes_no_pid_file_as_its_help_says(site):
    """pid-file belongs to the detaching (daemon) master: a foreground one under systemd
    cannot write /run (ProtectSystem=strict) and has the service manager to track it."""
    assert "when it detaches (daemon" in lookup("pid-file").help
    pid_file = os.path.join(site.root, "foreground.pid")
    server = site.server(extra_args=[f"--pid-file={pid_file}"])
    assert wait_for_greeting(server.host, server.port).startswith(b"+OK")
    assert not os.path.exists(pid_file)
    assert server.stop() == 0
    assert not os.path.exists(pid_file)


# --- per-user option files (reference §1.4 A1, decision §7.4) -----------------------------------
def plant_spool_options(site, user, text: str, uid: int, gid: int, mode: int) -> str:
    path = os.path.join(site.spool_dir, f"{user.name}.qpopper-options")
    with open(path, "w") as f:
        f.write(text)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    return path


def test_spool_options_file_applies_only_when_root_owns_it_and_alone_may_write_it(
        make_site, system_users):
    """<spool-dir>/<user>.qpopper-options is the administrator's: group mail may create
    files in the spool directory, so a file a mail-group member planted (which the user
    neither owns nor can write), the user's own, a group-writable one and a link to root's
    file are ignored, each with a log line that says why; root's 0644 file is applied."""
    s = make_site(statistics=False, spool_options=True)
    mail = grp.getgrnam("mail").gr_gid
    member = system_users.create("mg")
    subprocess.run(["usermod", "-a", "-G", "mail", member.name], check=True, timeout=30)
    users = {kind: system_users.create() for kind in ("root", "member", "user", "group",
                                                      "link")}
    owners = {"root": (0, 0, 0o644), "member": (member.uid, mail, 0o644),
              "user": (users["user"].uid, mail, 0o644), "group": (0, mail, 0o664),
              "link": (0, 0, 0o644)}
    paths = {}
    for kind, user in users.items():
        make_spool(s.spool_dir, user, SPOOL)
        paths[kind] = plant_spool_options(s, user, "set statistics\n", *owners[kind])
    os.rename(paths["link"], os.path.join(s.root, "root-options"))
    os.symlink(os.path.join(s.root, "root-options"), paths["link"])
    server = s.server()
    for user in users.values():
        login(server, user).quit()
    s.syslog.wait_for(rf"Stats: {users['root'].name} 0 0 3 \d+ 127\.0\.0\.1 127\.0\.0\.1")
    s.syslog.wait_for(rf"Ignoring {re.escape(paths['member'])}: owned by uid {member.uid} "
                      rf"\(must be root\)")
    s.syslog.wait_for(rf"Ignoring {re.escape(paths['user'])}: owned by uid "
                      rf"{users['user'].uid} \(must be root\)")
    s.syslog.wait_for(rf"Ignoring {re.escape(paths['group'])}: writable by group or others "
                      rf"\(mode 0664\)")
    s.syslog.wait_for(rf"Ignoring {re.escape(paths['link'])}: is a symbolic link")
    for kind in ("member", "user", "group", "link"):
        assert not any(t.startswith(f"Stats: {users[kind].name} ") for t in s.syslog.texts())


def test_home_options_file_is_read_after_the_drop_and_scope_checked(make_site, system_users,
                                                                    world_tmp):
    """Root may read any file, so the file's mode proves nothing: strace on the master shows
    that every open of ~/.qpopper-options happens in a process whose user ids are already
    the user's (docs/privsep.md)."""
    s = make_site(statistics=False, user_options=True)
    user = system_users.create()
    make_spool(s.spool_dir, user, SPOOL)
    path = os.path.join(user.home, ".qpopper-options")
    with open(path, "w") as f:
        # statistics may be set there; spool-dir may not (not in ~/.qpopper-options)
        f.write("set statistics\nset spool-dir = /etc\n")
    os.chown(path, user.uid, user.gid)
    os.chmod(path, 0o600)
    server = s.server()
    with strace.traced(server.pid, os.path.join(world_tmp, "strace.out"),
                       "setresuid,setuid,setreuid,open,openat,openat2") as recorded:
        client = login(server, user)
        assert client.stat()[0] == 3          # the spool is still the real one
        client.quit()
        s.syslog.wait_for(rf"Stats: {user.name} 0 0 3 .*")
        s.syslog.wait_for(r".*\.qpopper-options:2: .*spool-dir.*")
        opens = [(call, dropped) for call, dropped in strace.creds_at_each_call(recorded(), user.uid)
                 if call.name.startswith("open") and f'"{path}"' in call.args]
    assert opens, "the trace shows no open of ~/.qpopper-options"
    assert all(dropped for _, dropped in opens), [call for call, dropped in opens if not dropped]


def test_hangup_signal_aborts_the_session_with_update_on_abort(site, system_users):
    user = system_users.create()
    make_spool(site.spool_dir, user, SPOOL)
    server = site.server()
    client = login(server, user)
    client.dele(1)
    pid = wait_until(lambda: [p for p in server.children()
                              if f"popper: {user.name}@" in proc_title(p)],
                     what="the logged-in child")[0]
    os.kill(pid, signal.SIGHUP)
    wait_until(lambda: not os.path.exists(f"/proc/{pid}"), what="the child to end")
    client.close()
    assert "Subject: first" not in spool_text(site, user)       # Qpopper's default commits
    assert spool_text(site, user).count("Subject: ") == 2
    site.syslog.wait_for(rf"Session of {user.name} at .* ended without QUIT in TRANSACTION: "
                         r"hangup \(SIGHUP\)")


def test_a_pipelined_login_is_answered_in_order(site, system_users):
    """USER, PASS, STAT and QUIT in one packet: the pre-login process answers USER, the user
    session the rest — and USER's reply always leaves first (the pre-login process flushes
    before it hands the login over)."""
    user = system_users.create()
    make_spool(site.spool_dir, user, SPOOL)
    server = site.server()
    for _ in range(10):
        with socket.create_connection((server.host, server.port), timeout=10) as client:
            assert read_greeting(client).startswith(b"+OK")
            client.sendall(f"USER {user.name}\r\nPASS {user.password}\r\nSTAT\r\nQUIT\r\n"
                           .encode())
            replies = b""
            while chunk := client.recv(4096):
                replies += chunk
        lines = replies.split(b"\r\n")
        assert lines[0] == f"+OK Password required for {user.name}.".encode(), lines
        assert lines[1].startswith(f"+OK {user.name} has 3 visible".encode()), lines
        assert lines[2].startswith(b"+OK 3 "), lines
        assert lines[3].startswith(b"+OK Pop server at"), lines


def test_daemon_under_a_notify_unit_stays_in_the_foreground_as_its_help_says(site):
    """`set daemon` under the shipped Type=notify unit: detaching would leave systemd's
    main process gone and its READY=1 refused; the master stays, says so once, notifies."""
    assert "under systemd stay in the foreground" in lookup("daemon").help
    notify_path = os.path.join(site.root, "notify.sock")
    # the unit's /run is read-only (ProtectSystem=strict): a pid file nobody writes is not
    # checked either
    pid_file = os.path.join(site.root, "qpt-no-such-dir", "notify-daemon.pid")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(notify_path)
        notify.settimeout(15)
        server = PopperServer(site.root, site.config, env={"NOTIFY_SOCKET": notify_path},
                              syslog=site.syslog,
                              extra_args=["--daemon", f"--pid-file={pid_file}"])
        site.servers.append(server)
        server.start()
        assert notify.recv(4096).startswith(b"READY=1")
        assert server.proc.poll() is None                    # still the main process
        assert wait_for_greeting(server.host, server.port).startswith(b"+OK")
        site.syslog.wait_for(r"daemon ignored: systemd \(NOTIFY_SOCKET\) runs the master in "
                             r"the foreground")
        assert not os.path.exists(pid_file)
        os.kill(server.pid, signal.SIGTERM)
        assert notify.recv(4096) == b"STOPPING=1"
        assert server.proc.wait(20) == 0
