"""A POP connection to the real server from a chosen loopback address (another address is
another client), timing its PASS: for the brute-force brakes tests
(tests/integration/test_brakes.py, test_poppassd_brakes.py)."""

from __future__ import annotations

import socket
import time


class Conn:
    def __init__(self, srv, source: str):
        self.sock = socket.create_connection((srv.host, srv.port), timeout=30,
                                             source_address=(source, 0))
        self.file = self.sock.makefile("rb")
        assert self.file.readline().startswith(b"+OK")

    def login_seconds(self, user: str, password: str) -> tuple[bytes, float]:
        self.sock.sendall(f"USER {user}\r\n".encode())
        assert self.file.readline().startswith(b"+OK")
        started = time.monotonic()
        self.sock.sendall(f"PASS {password}\r\n".encode())
        reply = self.file.readline()
        return reply, time.monotonic() - started

    def close(self):
        self.file.close()
        self.sock.close()
