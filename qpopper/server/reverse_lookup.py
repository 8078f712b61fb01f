"""The client's host name (reverse-lookup), looked up while the client logs in.

ReverseLookup runs the lookup in a thread of the session's process; the pre-login process,
whose chroot has no resolver, uses ForkedReverseLookup (docs/privsep.md).
"""

from __future__ import annotations

# Name lookups import the idna codec on first use; after the privilege drop (or inside the
# pre-login chroot) the interpreter's library may no longer be readable, so load it now.
import encodings.idna  # noqa: F401
import os
import select
import signal
import socket
import threading
import time

from qpopper.server import privsep
from qpopper.addresses import normalize_ip

REVERSE_LOOKUP_TIMEOUT_S = 5.0
"""Longest wait for the client's host name; past it the address stands in (logs stay readable,
a broken resolver does not hold the session). The lookup runs while the client logs in."""


class ReverseLookup:
    """The client's host name, looked up in the background and waited for at most
    REVERSE_LOOKUP_TIMEOUT_S in total. A name counts only if it resolves back to the address
    (Qpopper's check against DNS spoofing); otherwise the address is the name."""

    def __init__(self, ip: str):
        self.ip = ip
        self._name: str | None = None
        self._done = threading.Event()
        self._deadline = time.monotonic() + REVERSE_LOOKUP_TIMEOUT_S
        threading.Thread(target=self._lookup, name="reverse-lookup", daemon=True).start()

    def _lookup(self) -> None:
        try:
            name = socket.gethostbyaddr(self.ip)[0]
            addresses = {normalize_ip(info[4][0]) for info in
                         socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)}
            if self.ip in addresses:
                self._name = name
        except (OSError, UnicodeError, LookupError):
            pass
        finally:
            self._done.set()

    def result(self) -> str:
        self._done.wait(max(0.0, self._deadline - time.monotonic()))
        return self._name or self.ip


class ForkedReverseLookup:
    """ReverseLookup for the pre-login process, whose chroot has no resolver: a child forked
    before the sandbox is entered, running as the pre-login account, does the lookup and
    writes the name to a pipe (docs/privsep.md)."""

    def __init__(self, ip: str, uid: int, gid: int):
        self.ip = ip
        self._name: str | None = None
        self._deadline = time.monotonic() + REVERSE_LOOKUP_TIMEOUT_S
        self._read_end, write_end = os.pipe2(os.O_CLOEXEC)
        self._pid = os.fork()
        if self._pid == 0:
            status = 1
            try:
                os.close(self._read_end)
                privsep.drop_to_account(uid, gid)
                lookup = ReverseLookup(ip)
                name = lookup.result()
                os.write(write_end, name.encode("utf-8", "replace")[:1024])
                status = 0
            finally:
                os._exit(status)
        os.close(write_end)
        self._done = False

    def result(self) -> str:
        if not self._done:
            self._done = True
            try:
                remaining = max(0.0, self._deadline - time.monotonic())
                if select.select([self._read_end], [], [], remaining)[0]:
                    name = os.read(self._read_end, 1024).decode("utf-8", "replace")
                    self._name = name if name and name != self.ip else None
            finally:
                os.close(self._read_end)
                try:
                    os.kill(self._pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                os.waitpid(self._pid, 0)
        return self._name or self.ip
