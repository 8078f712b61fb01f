"""The real poppassd as poppassd.socket or inetd runs it (one process per connection, under
systemd-socket-activate) and a client's conversation with it, for the poppassd tests
(tests/integration/test_poppassd.py, test_poppassd_brakes.py)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.server_harness import Site, free_port

POPPASSD = str(Path(sys.executable).with_name("poppassd"))
BAD_OLD = b"500 Old password is incorrect."


class PoppassdService:
    """systemd-socket-activate listening on 127.0.0.1:<free port>, spawning poppassd with
    the site's configuration file. `listen_host="[::ffff:127.0.0.1]"`: an IPv6 socket that
    also takes IPv4 (dual-stack, as poppassd.socket's ListenStream=106), on loopback only;
    clients still connect to 127.0.0.1 and poppassd sees them as ::ffff:127.0.0.x."""

    def __init__(self, site: Site, pam_service: str, listen_host: str = "127.0.0.1",
                 wrapper: tuple[str, ...] = ()):
        """`wrapper`: a command poppassd runs under (setpriv with fewer capabilities)."""
        if shutil.which("systemd-socket-activate") is None:
            pytest.skip("systemd-socket-activate is not installed")
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["systemd-socket-activate", "--accept", "--inetd", "-l", f"{listen_host}:{self.port}",
             "-E", f"QPOPPER_SYSLOG_SOCKET={site.syslog.path}", *_pythonpath(), *wrapper, POPPASSD,
             "-s", pam_service,
             "-f", site.config],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)

    def connect(self, source: str = "127.0.0.1") -> "Conversation":
        """A connection from `source` (another loopback address is another client)."""
        deadline = time.monotonic() + 10
        while True:
            try:
                return Conversation(socket.create_connection(
                    ("127.0.0.1", self.port), timeout=30, source_address=(source, 0)))
            except ConnectionRefusedError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.02)           # it binds before forking; retry until it listens

    def stop(self) -> None:
        with_group = self.proc.pid
        os.killpg(with_group, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(with_group, signal.SIGKILL)
            self.proc.wait(5)


def _pythonpath() -> list[str]:
    """systemd-socket-activate gives its child a fresh environment: the code under test (a
    clone's, by PYTHONPATH) is passed on, or poppassd would import the installed one."""
    path = os.environ.get("PYTHONPATH")
    return ["-E", f"PYTHONPATH={path}"] if path else []


class Conversation:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.file = sock.makefile("rb")
        self.greeting = self.reply()

    def reply(self) -> bytes:
        return self.file.readline().rstrip(b"\r\n")

    def say(self, line: bytes | str) -> bytes:
        self.sock.sendall((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reply()

    def closed_by_server(self) -> bool:
        return self.file.readline() == b""

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
