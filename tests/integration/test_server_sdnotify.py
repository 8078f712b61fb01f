"""qpopper.server.sdnotify: sd_notify datagrams and LISTEN_FDS sockets, against real sockets."""

import os
import socket
import subprocess
import sys

import pytest

from qpopper.server import sdnotify

pytestmark = pytest.mark.timeout(30)


def test_notify_to_a_path_socket(tmp_path):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        assert sdnotify.notify("READY=1\nSTATUS=x", {"NOTIFY_SOCKET": path})
        assert listener.recv(4096) == b"READY=1\nSTATUS=x"


def test_notify_to_an_abstract_socket():
    name = f"qpopper-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        assert sdnotify.notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name})
        assert listener.recv(4096) == b"STOPPING=1"


def test_notify_without_or_with_a_dead_socket_is_quiet(tmp_path):
    assert not sdnotify.notify("READY=1", {})
    assert not sdnotify.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert not sdnotify.notify("READY=1", {"NOTIFY_SOCKET": "relative"})


def test_listen_fds_ignores_variables_meant_for_another_process():
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"}
    assert sdnotify.listen_fds(env) == []
    assert "LISTEN_FDS" not in env and "LISTEN_PID" not in env
    assert sdnotify.listen_fds({"LISTEN_PID": "x", "LISTEN_FDS": "1"}) == []


def test_listen_fds_takes_sockets_from_fd_3_on():
    """A child started the way systemd starts it: sockets at 3 and 4, LISTEN_PID = its pid."""
    a = socket.create_server(("127.0.0.1", 0))
    b = socket.create_server(("127.0.0.1", 0))
    ports = [a.getsockname()[1], b.getsockname()[1]]
    script = ("import os; from qpopper.server import sdnotify; "
              "socks = sdnotify.listen_fds(); "
              "print([s.getsockname()[1] for s in socks], "
              "[os.get_inheritable(s.fileno()) for s in socks], 'LISTEN_FDS' in os.environ)")

    def place_fds():
        os.dup2(a.fileno(), 3)
        os.dup2(b.fileno(), 4)

    try:
        out = subprocess.run(
            ["sh", "-c", f'LISTEN_PID=$$ LISTEN_FDS=2 exec "{sys.executable}" -c "{script}"'],
            preexec_fn=place_fds, pass_fds=(3, 4), capture_output=True, text=True, timeout=20,
            check=True).stdout
    finally:
        a.close()
        b.close()
    assert out.strip() == f"{ports} [False, False] False"
