"""The start-up checks a reload and `--check-config` make too (docs/operations.md): what
start-up would refuse, or what would fail unseen after it, is refused in one line naming the
option and where it was set."""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess

import pytest

from qpopper import cli
from qpopper.config import load
from qpopper.server import sdnotify
from tests.server_harness import PopperServer, Site, free_port, read_greeting, wait_for_greeting

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


@pytest.fixture
def site(world_tmp, pam_service):
    s = Site(world_tmp, pam_service)
    yield s
    s.close()


def test_hup_refuses_kerberos_the_system_cannot_serve_as_start_up_does(site):
    """A reload runs the start-up checks: `set kerberos` without python-gssapi or a keytab
    is refused with start-up's line, and the running configuration kept (CAPA offers no
    GSSAPI that would fail every login)."""
    server = site.server(env={"KRB5_KTNAME": os.path.join(site.root, "no.keytab")})
    assert wait_for_greeting(server.host, server.port).startswith(b"+OK Qpopper")
    with open(site.config, "a") as f:
        f.write("set kerberos\n")
    os.kill(server.pid, signal.SIGHUP)
    site.syslog.wait_for(r"reload failed, keeping the running configuration: "
                         r"kerberos \(-k\): Kerberos is served as SASL GSSAPI.*")
    with socket.create_connection((server.host, server.port), timeout=20) as sock:
        read_greeting(sock)
        sock.sendall(b"CAPA\r\n")
        capa = b""
        while not capa.endswith(b"\r\n.\r\n"):
            capa += sock.recv(4096)
    assert b"GSSAPI" not in capa


def test_hup_refuses_a_fifo_as_auth_file_at_once_and_keeps_accepting(site):
    """A FIFO where the new auth-file is: the reload's check refuses it at once, as a file
    it cannot read, instead of the master waiting in open(2) for a writer (accepting no one
    meanwhile)."""
    server = site.server()
    assert wait_for_greeting(server.host, server.port).startswith(b"+OK Qpopper")
    fifo = os.path.join(site.root, "auth-fifo")
    os.mkfifo(fifo, 0o600)
    with open(site.config, "a") as f:
        f.write(f'set auth-file = "{fifo}"\n')
    try:
        os.kill(server.pid, signal.SIGHUP)
        site.syslog.wait_for(rf"reload failed, keeping the running configuration: auth-file "
                             rf"{re.escape(fifo)} .*: not a regular file; .*")
        with socket.create_connection((server.host, server.port), timeout=20) as sock:
            assert read_greeting(sock).startswith(b"+OK")
    finally:
        try:                                # a master stuck in open(2) is let go
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def test_daemon_mode_refuses_a_pid_file_it_could_not_write_before_detaching(site):
    """python-daemon takes the pid file after detaching: a directory that is not there
    failed unseen, with exit status 0 and no server. The check and the start refuse it."""
    pid_file = os.path.join(site.root, "no-such-dir", "popper.pid")
    popper = PopperServer(site.root, None).argv[0]
    listen = f"127.0.0.1:{free_port()}"
    checked = subprocess.run([popper, "--check-config", listen, "-f", site.config, "--daemon",
                              f"--pid-file={pid_file}"], capture_output=True, text=True,
                             timeout=30)
    started = subprocess.run([popper, listen, "-f", site.config,
                              "--daemon", f"--pid-file={pid_file}"],
                             env=dict(os.environ, QPOPPER_SYSLOG_SOCKET=site.syslog.path),
                             stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=30)
    line = (f"popper: pid-file {pid_file} (set at argv --pid-file): "
            f"{os.path.dirname(pid_file)} is not a directory this server can write in\n")
    assert (checked.returncode, checked.stderr) == (1, line)
    assert (started.returncode, started.stderr) == (1, line)


def test_the_check_of_inetd_mode_looks_at_no_pid_file(site):
    """Without listen entries popper serves one connection on stdin (inetd mode), which never
    detaches nor writes a pid file, whatever daemon says: the check of that mode does not
    look at pid-file, and the connection is served."""
    pid_file = os.path.join(site.root, "no-such-dir", "popper.pid")
    popper = PopperServer(site.root, None).argv[0]
    args = ["-f", site.config, "--daemon", f"--pid-file={pid_file}"]
    checked = subprocess.run([popper, "--check-config", *args], capture_output=True,
                             text=True, timeout=30)
    assert (checked.returncode, checked.stderr) == (0, "")
    client, connection = socket.socketpair()
    with client, connection:
        inetd = subprocess.Popen([popper, *args], stdin=connection, stdout=connection,
                                 stderr=subprocess.DEVNULL,
                                 env=dict(os.environ, QPOPPER_SYSLOG_SOCKET=site.syslog.path))
        connection.close()
        client.settimeout(20)
        assert read_greeting(client).startswith(b"+OK")
        client.sendall(b"QUIT\r\n")
        assert read_greeting(client).startswith(b"+OK")
        assert inetd.wait(30) == 0
    assert not os.path.exists(os.path.dirname(pid_file))


@pytest.mark.parametrize("systemd_runs_the_machine", [False, True])
def test_the_check_from_a_shell_of_a_pid_file_only_a_detaching_start_writes(
        site, monkeypatch, capsys, systemd_runs_the_machine):
    """A master with daemon, checked from a shell (no NOTIFY_SOCKET). Without systemd the
    start will detach: the check refuses the pid-file directory as that start does. On a
    machine systemd runs, the packaged Type=notify unit ignores daemon and writes no pid
    file: the check warns and passes (a start that does detach still refuses, above)."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setattr(sdnotify, "booted", lambda: systemd_runs_the_machine)
    pid_file = os.path.join(site.root, "no-such-dir", "popper.pid")
    cfg, _ = load([f"127.0.0.1:{free_port()}", "-f", site.config, "--daemon",
                   f"--pid-file={pid_file}"])
    line = (f"pid-file {pid_file} (set at argv --pid-file): {os.path.dirname(pid_file)} is "
            f"not a directory this server can write in")
    problem = cli.check_site(cfg)
    warned = capsys.readouterr().err
    if systemd_runs_the_machine:
        assert problem is None
        assert warned == (f"popper: warning: {line}; only a start that detaches (daemon, "
                          f"outside systemd's unit) writes it, and that start refuses it\n")
    else:
        assert (problem, warned) == (line, "")


def test_a_brakes_file_in_a_directory_others_can_write_is_refused_by_the_check(site):
    """The brakes, as root, want their directory root's and writable by root only; in /tmp
    they turned themselves off at the first failed login. The check says so first."""
    popper = PopperServer(site.root, None).argv[0]
    checked = subprocess.run([popper, "--check-config", "-f", site.config,
                              "--auth-brakes-file=/tmp/qpt-brakes.sqlite"],
                             capture_output=True, text=True, timeout=30)
    assert (checked.returncode, checked.stderr) == (
        1, "popper: auth-brakes-file /tmp/qpt-brakes.sqlite (set at argv --auth-brakes-file): "
           "/tmp must be a directory owned by root and writable by root only\n")
    assert not os.path.exists("/tmp/qpt-brakes.sqlite")


def test_a_store_whose_mechanisms_are_off_is_warned_of_by_the_check_and_start_up(site):
    """With the default store-mechanisms (auto) and user-database system, APOP and the
    store's AUTH mechanisms are off, and so is clear-text-password default's refusal for the
    store's users (docs/compatibility.md, "Clear-text passwords"): said, not silent."""
    store = os.path.join(site.root, "pop.auth")
    with open(store, "wb"):
        pass
    os.chmod(store, 0o600)
    popper = PopperServer(site.root, None).argv[0]
    warning = (f"pop-auth-file {store} exists, but store-mechanisms auto with user-database "
               f"system offers none of APOP, CRAM-MD5 and SCRAM, so clear-text-password "
               f"default does not refuse clear text to the store's users; set "
               f"store-mechanisms = on once their secrets are in the store")
    checked = subprocess.run([popper, "--check-config", "-f", site.config,
                              f"--pop-auth-file={store}"],
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    assert f"popper: warning: {warning}\n" in checked.stderr
    checked = subprocess.run([popper, "--check-config", "-f", site.config,
                              f"--pop-auth-file={store}", "--store-mechanisms=on"],
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0 and "store-mechanisms" not in checked.stderr, checked.stderr
    for other in ("always", "tls", "never"):        # these do not depend on the store
        checked = subprocess.run([popper, "--check-config", "-f", site.config,
                                  f"--pop-auth-file={store}", f"--clear-text-password={other}"],
                                 capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0 and "store-mechanisms" not in checked.stderr, (
            other, checked.stderr)
    site.server(extra_args=[f"--pop-auth-file={store}"])
    site.syslog.wait_for(re.escape(warning))


def test_a_tracefile_that_cannot_be_written_is_one_line_not_a_traceback(site):
    """-t names a file in a directory that is not there: the check, the master and an inetd
    connection refuse it in one line (inetd: in the log only, its stderr may be the
    client's socket), where a traceback came before."""
    trace = os.path.join(site.root, "no-such-dir", "trace")
    refused_by_check_master_and_inetd(
        site, ["-t", trace],
        f"tracefile {trace} (set at argv -t): {os.path.dirname(trace)} is not a directory")


def test_kerberos_the_system_cannot_serve_is_refused_by_each_way_of_serving(site):
    """Refused once by each (the master's site check no longer repeats an earlier one); in
    inetd mode in the log only, where it went to stderr, the client's socket under inetd.
    --show-config prints without checks, as documented."""
    env = {"KRB5_KTNAME": os.path.join(site.root, "no.keytab")}
    line = refused_by_check_master_and_inetd(site, ["-k"], None, env)
    assert line.startswith("kerberos (-k): Kerberos is served as SASL GSSAPI")
    assert line.endswith(" (kerberos set at argv -k)")      # where, as every other check
    with open(site.config, "a") as config:
        config.write("set kerberos\n")
    with open(site.config) as config:
        line_number = config.read().count("\n")
    line = refused_by_check_master_and_inetd(site, [], None, env)
    assert line.endswith(f" (kerberos set at {site.config}:{line_number})"), line
    popper = PopperServer(site.root, None).argv[0]
    shown = subprocess.run([popper, "--show-config", "-f", site.config, "-k"],
                           env=dict(os.environ, **env), capture_output=True, text=True,
                           timeout=30)
    assert shown.returncode == 0 and "kerberos" in shown.stdout, shown.stderr


def refused_by_check_master_and_inetd(site, args, line, env=None) -> str:
    """--check-config, the standalone master and an inetd connection, each with `args`,
    refuse with exit status 1 and the same one line (`line`, or whatever the check says
    when None): on stderr, and for inetd in the log only (nothing reaches the client)."""
    popper = PopperServer(site.root, None).argv[0]
    env = dict(os.environ, QPOPPER_SYSLOG_SOCKET=site.syslog.path, **(env or {}))
    checked = subprocess.run([popper, "--check-config", "-f", site.config, *args], env=env,
                             capture_output=True, text=True, timeout=30)
    if line is None:
        line = checked.stderr.removeprefix("popper: ").removesuffix("\n")
    started = subprocess.run([popper, f"127.0.0.1:{free_port()}", "-f", site.config, *args],
                             env=env, stdin=subprocess.DEVNULL, capture_output=True,
                             text=True, timeout=30)
    assert (checked.returncode, checked.stderr) == (1, f"popper: {line}\n")
    assert (started.returncode, started.stderr) == (1, f"popper: {line}\n")
    client, connection = socket.socketpair()
    with client, connection:
        inetd = subprocess.run([popper, "-f", site.config, *args], env=env,
                               stdin=connection, stdout=connection, stderr=connection,
                               timeout=30)
        connection.close()
        client.settimeout(10)
        assert (inetd.returncode, client.recv(4096)) == (1, b"")
    site.syslog.wait_for(re.escape(line))
    return line


def test_a_relative_pid_file_is_refused_before_the_daemon_detaches(site):
    """A relative pid-file would be checked from where popper was started and written by a
    daemon working from / (docs/options.md, "Paths"): refused where it is read, with the
    flag named, before anything detaches; no daemon, no pid file."""
    relative = f"qpt-run-{secrets.token_hex(4)}"        # a name / does not have
    os.makedirs(os.path.join(site.root, relative))
    port = free_port()
    popper = PopperServer(site.root, None).argv[0]
    started = subprocess.run([popper, f"127.0.0.1:{port}", "-f", site.config, "--daemon",
                              f"--pid-file={relative}/popper.pid"], cwd=site.root,
                             env=dict(os.environ, QPOPPER_SYSLOG_SOCKET=site.syslog.path),
                             stdin=subprocess.DEVNULL, capture_output=True, text=True,
                             timeout=30)
    assert (started.returncode, started.stderr) == (
        2, f"popper: argv --pid-file: 'pid-file' must be an absolute path (beginning with /), "
           f"got '{relative}/popper.pid'\n")
    assert os.listdir(os.path.join(site.root, relative)) == []
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_sandbox_and_tls_complaints_say_where_the_option_was_set(site):
    """The pre-login sandbox's and the TLS identity's complaints name their option first;
    the check adds where it was set, as for every other option (docs/operations.md,
    "Start-up checks")."""
    popper = PopperServer(site.root, None).argv[0]
    crowded = os.path.join(site.root, "crowded")
    os.makedirs(crowded)
    open(os.path.join(crowded, "something"), "w").close()
    checked = subprocess.run([popper, "--check-config", "-f", site.config,
                              f"--prelogin-chroot={crowded}"],
                             capture_output=True, text=True, timeout=30)
    assert (checked.returncode, checked.stderr) == (
        1, f"popper: prelogin-chroot {crowded} must be empty (prelogin-chroot set at argv "
           f"--prelogin-chroot)\n")
    config = os.path.join(site.root, "tls.config")
    with open(site.config) as original:
        text = original.read() + ("set tls-support = stls\n"
                                  "set tls-server-cert-file = /nonexistent/qpt-cert.pem\n")
    with open(config, "w") as f:
        f.write(text)
    line_number = text.count("\n")
    checked = subprocess.run([popper, "--check-config", "-f", config],
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 1
    assert checked.stderr.startswith("popper: TLS: tls-server-cert-file "
                                     "/nonexistent/qpt-cert.pem"), checked.stderr
    assert checked.stderr.endswith(f" (tls-server-cert-file set at {config}:{line_number})\n"), \
        checked.stderr


def test_the_check_makes_a_missing_prelogin_chroot_as_start_up_does_and_says_so(site):
    """A missing prelogin-chroot is created by --check-config, as by every start (the
    default is under /run, emptied at boot): on purpose, and README and docs/operations.md
    ("Start-up checks") list it with the check's other side effects."""
    from tests.helpers.repo import REPO
    chroot = os.path.join(site.root, "qpt-run", "empty")
    popper = PopperServer(site.root, None).argv[0]
    checked = subprocess.run([popper, "--check-config", "-f", site.config,
                              f"--prelogin-chroot={chroot}"],
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    st = os.stat(chroot)
    assert (st.st_uid, st.st_mode & 0o7777, os.listdir(chroot)) == (0, 0o755, [])
    readme = " ".join((REPO / "README.md").read_text().split())
    assert "as root it creates the empty `prelogin-chroot`, root 0755, when missing" in readme
    operations = " ".join((REPO / "docs/operations.md").read_text().split())
    assert "a missing `prelogin-chroot` is created, empty, root 0755, by the check" in operations
