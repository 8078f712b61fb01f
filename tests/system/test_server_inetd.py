"""The session without the master: inetd / systemd Accept=yes (the connection on stdin and
stdout), and the master with its listening socket from systemd (LISTEN_FDS). Root only: real
users, a real PAM service, the privilege drop."""

from __future__ import annotations

import os
import poplib
import pwd
import re
import shutil
import signal
import socket
import subprocess
import types

import pytest

from tests.helpers.sysusers import PRELOGIN_USER, make_spool
from tests.helpers.messages import mbox
from tests.server_harness import (POPPER, Site, descendants_of, free_port, login, proc_status,
                                  spool_text, wait_for_greeting, wait_until)

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

SPOOL = mbox(("first", "Body one.\n"), ("second", "Body two.\n"))


@pytest.fixture
def site(world_tmp, pam_service):
    s = Site(world_tmp, pam_service)
    yield s
    s.close()


class Activator:
    """systemd-socket-activate running popper, as a systemd socket unit would."""

    def __init__(self, site, *args, popper_args=()):
        if shutil.which("systemd-socket-activate") is None:
            pytest.skip("systemd-socket-activate is not installed")
        self.host, self.port = "127.0.0.1", free_port()
        env = dict(os.environ, QPOPPER_SYSLOG_SOCKET=site.syslog.path)
        self.proc = subprocess.Popen(
            ["systemd-socket-activate", *args, "-l", f"{self.host}:{self.port}",
             "-E", f"QPOPPER_SYSLOG_SOCKET={site.syslog.path}", POPPER,
             *popper_args, "-f", site.config],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)

    def stop(self):
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def fetch_and_delete(server, user, site):
    wait_for_greeting(server.host, server.port)
    client = login(server, user)
    assert client.stat()[0] == 2
    assert b"Subject: first" in client.retr(1)[1]
    assert b"Subject: second" in client.top(2, 0)[1]
    client.dele(1)
    assert client.quit().startswith(b"+OK")
    text = spool_text(site, user)
    assert "Subject: first" not in text and text.count("Subject: second") == 1


def test_inetd_mode_under_systemd_socket_activate_accept(site, system_users):
    """`systemd-socket-activate --inetd --accept`: one popper per connection, on stdin/stdout
    (the inetd.conf line and an Accept=yes unit with StandardInput=socket)."""
    user = system_users.create()
    make_spool(site.spool_dir, user, SPOOL)
    activator = Activator(site, "--inetd", "--accept")
    try:
        fetch_and_delete(activator, user, site)
        with pytest.raises(poplib.error_proto, match=r"^b'-ERR \[AUTH\]"):
            login(activator, user, password="wrong")
        site.syslog.wait_for(rf"\[AUTH\] Failed attempted login to {user.name} from host "
                             r"\(127\.0\.0\.1\) 127\.0\.0\.1")
    finally:
        activator.stop()


def test_master_takes_its_socket_from_listen_fds(site, system_users):
    """`systemd-socket-activate` without --accept: LISTEN_FDS=1, the listener on fd 3."""
    user = system_users.create()
    make_spool(site.spool_dir, user, SPOOL)
    activator = Activator(site, popper_args=["1"])      # the port argument selects the master
    try:
        fetch_and_delete(activator, user, site)
        site.syslog.wait_for(rf"master listening on 127\.0\.0\.1:{activator.port}")
    finally:
        activator.stop()


def master_on_fd_3(site, listener: socket.socket, config: str) -> subprocess.Popen:
    """The standalone master with `listener` passed as systemd passes it (fd 3, LISTEN_PID
    its pid, LISTEN_FDS=1); the port argument "1" only selects the master. Closes our copy."""
    def place_socket():
        os.dup2(listener.fileno(), 3)

    proc = subprocess.Popen(
        ["sh", "-c", f'LISTEN_PID=$$ LISTEN_FDS=1 exec "{POPPER}" 1 -f "{config}"'],
        env=dict(os.environ, QPOPPER_SYSLOG_SOCKET=site.syslog.path), preexec_fn=place_socket,
        pass_fds=(3,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    listener.close()
    return proc


def test_master_with_a_socket_handed_over_by_the_caller(site, system_users):
    """The LISTEN_FDS protocol done by hand: the socket at fd 3, LISTEN_PID = popper's pid."""
    user = system_users.create()
    make_spool(site.spool_dir, user, SPOOL)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    proc = master_on_fd_3(site, listener, site.config)
    try:
        fetch_and_delete(types.SimpleNamespace(host="127.0.0.1", port=port), user, site)
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


def test_proxy_protocol_on_a_socket_from_systemd_is_matched_against_that_socket(site):
    """With sockets from systemd the listen entries do not say what is bound (here "1"):
    the proxy-protocol entry is matched against the socket itself, at start-up and at each
    reload, not refused because no listen entry names its address; and what a reload says
    applies to the next connections."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = os.path.join(site.root, "proxied.config")
    with open(site.config) as original:
        plain = original.read()
    proxied = plain + (f"set proxy-protocol = 127.0.0.1:{port}\n"
                       f"set proxy-trusted-networks = 127.0.0.1\n")

    def reload(text: str, logged: str) -> None:
        with open(config, "w") as f:
            f.write(text)
        before = len(site.syslog.records)
        os.kill(proc.pid, signal.SIGHUP)
        wait_until(lambda: any(re.fullmatch(logged, t)
                               for _, _, t in site.syslog.records[before:]),
                   what=f"the reload's line {logged!r}")

    def greeting(header: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(header)
            return sock.recv(4096)
    header = f"PROXY TCP4 203.0.113.7 127.0.0.1 4000 {port}\r\n".encode()
    with open(config, "w") as f:
        f.write(proxied)
    proc = master_on_fd_3(site, listener, config)
    try:
        site.syslog.wait_for(rf"master listening on 127\.0\.0\.1:{port}.*", timeout=30)
        assert greeting(header).startswith(b"+OK")
        reload(plain, "configuration reloaded")          # no PROXY header any more
        assert greeting(b"").startswith(b"+OK")
        reload(proxied, "configuration reloaded")
        assert greeting(header).startswith(b"+OK")
        reload(proxied + f"set proxy-protocol = 127.0.0.2:{port}\n",   # no socket has it
               rf"reload failed, keeping the running configuration: proxy-protocol "
               rf"127\.0\.0\.2:{port}: no listen or tls-listen entry has this address and port")
        assert greeting(header).startswith(b"+OK")
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


def test_inetd_mode_over_pipes(site, system_users):
    """stdin/stdout as pipes (e.g. a tunnel): the real session, no peer address."""
    user = system_users.create()
    make_spool(site.spool_dir, user, SPOOL)
    script = (f"USER {user.name}\r\nPASS {user.password}\r\nSTAT\r\nRETR 2\r\nDELE 2\r\n"
              f"QUIT\r\n").encode()
    result = subprocess.run([POPPER, "-f", site.config], input=script, capture_output=True,
                            env=dict(os.environ, QPOPPER_SYSLOG_SOCKET=site.syslog.path),
                            timeout=30)
    replies = result.stdout.split(b"\r\n")
    assert replies[0].startswith(b"+OK Qpopper")
    assert replies[3].startswith(b"+OK 2 ")                       # STAT
    assert b"Subject: second" in result.stdout
    assert result.stdout.endswith(b"+OK Pop server at " + socket.gethostname().encode() +
                                  b" signing off.\r\n")
    assert "Subject: second" not in spool_text(site, user)
    site.syslog.wait_for(rf"Stats: {user.name} 1 \d+ 1 \d+ unknown unknown")


def test_inetd_mode_makes_a_missing_prelogin_chroot(world_tmp, pam_service, system_users):
    """After a boot /run is empty, and socket units start no master to make prelogin-chroot:
    the first connection makes it, as start-up does, and is served."""
    chroot = os.path.join(world_tmp, "run-qpopper", "empty")
    site = Site(world_tmp, pam_service, prelogin_chroot=chroot)
    try:
        user = system_users.create()
        make_spool(site.spool_dir, user, SPOOL)
        script = f"USER {user.name}\r\nPASS {user.password}\r\nSTAT\r\nQUIT\r\n".encode()
        result = subprocess.run([POPPER, "-f", site.config], input=script, capture_output=True,
                                env=dict(os.environ, QPOPPER_SYSLOG_SOCKET=site.syslog.path),
                                timeout=30)
        assert result.stdout.split(b"\r\n")[3].startswith(b"+OK 2 "), result.stdout
        assert os.stat(chroot).st_uid == 0 and os.listdir(chroot) == []
    finally:
        site.close()


def test_inetd_refuses_a_listening_socket_on_stdin(site):
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        result = subprocess.run([POPPER, "-f", site.config], stdin=listener.fileno(),
                                capture_output=True, timeout=30,
                                env=dict(os.environ, QPOPPER_SYSLOG_SOCKET=site.syslog.path))
    finally:
        listener.close()
    assert result.returncode == 1
    site.syslog.wait_for(r"stdin is a listening socket, not a connection: .*")


def test_inetd_refuses_a_connection_on_a_proxy_protocol_port(site):
    """A connection from inetd is not read for a PROXY header: on a port proxy-protocol
    names, the header would be taken for a command and every client for the balancer. It is
    closed unanswered, with one log line; another port is served."""
    activator = Activator(site, "--inetd", "--accept")
    named = Activator(site, "--inetd", "--accept")
    try:
        assert wait_for_greeting(activator.host, activator.port).startswith(b"+OK")  # it listens
        # the first activator's port is the one proxy-protocol names
        with open(site.config, "a") as config:
            config.write(f"set proxy-protocol = 127.0.0.1:{activator.port}\n"
                         f"set proxy-trusted-networks = 127.0.0.1\n")
        with socket.create_connection((activator.host, activator.port), timeout=20) as sock:
            sock.sendall(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 110\r\n")
            try:
                answer = sock.recv(4096)
            except ConnectionResetError:        # closed with the header unread
                answer = b""
            assert answer == b""
        site.syslog.wait_for(rf"proxy-protocol names port {activator.port}, but a connection "
                             r"from inetd is not read for a PROXY header: .*")
        assert wait_for_greeting(named.host, named.port).startswith(b"+OK")
    finally:
        activator.stop()
        named.stop()


def test_inetd_mode_prelogin_keeps_the_client_on_0_and_1_and_no_stream_on_2(site):
    """Under an Accept=yes unit, descriptor 2 is the journal's stream (StandardError=journal):
    whatever the pre-login process wrote there would be a journal entry under popper's name.
    It keeps the client on 0 and 1 and has /dev/null on 2 (docs/privsep.md, "The pre-login
    process's log records"); its monitor keeps its own 2."""
    prelogin_uid = pwd.getpwnam(PRELOGIN_USER).pw_uid
    client, connection = socket.socketpair()
    stream_r, stream_w = os.pipe()                  # stands in for the journal's stream
    proc = subprocess.Popen([POPPER, "-f", site.config], stdin=connection, stdout=connection,
                            stderr=stream_w, start_new_session=True,
                            env=dict(os.environ, QPOPPER_SYSLOG_SOCKET=site.syslog.path))
    connection.close()
    os.close(stream_w)
    try:
        client.settimeout(20)
        assert client.recv(4096).startswith(b"+OK")

        def prelogin():
            return [pid for pid in descendants_of(proc.pid)
                    if int(proc_status(pid)["Uid"].split()[1]) == prelogin_uid]
        pid = wait_until(prelogin, what="the pre-login process")[0]
        held = {fd: os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (0, 1, 2)}
        assert held[0].startswith("socket:") and held[1] == held[0], held
        assert held[2] == "/dev/null", held
        assert os.readlink(f"/proc/{proc.pid}/fd/2").startswith("pipe:")   # the monitor's
        client.sendall(b"QUIT\r\n")
        assert client.recv(4096).startswith(b"+OK")
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        client.close()
        os.close(stream_r)
