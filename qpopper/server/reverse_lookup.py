"""The client's host name (reverse-lookup), looked up while the client logs in.

ReverseLookup runs the lookup in a thread of the session's process; the pre-login process,
whose chroot has no resolver, uses ForkedReverseLookup, whose child looks it up in its one
thread (docs/privsep.md).
"""

from __future__ import annotations

import importlib
import ipaddress
import os
import select
import socket
import threading
import time

from qpopper import limits
from qpopper.server import privsep
from qpopper.server.children import ForkedCall
from qpopper.addresses import normalize_ip

# Name lookups import the idna codec on first use; after the privilege drop (or inside the
# pre-login chroot) the interpreter's library may no longer be readable, so load it now.
importlib.import_module("encodings.idna")

NAME_LIMIT = 1024
"""The longest name the lookup child may send (a DNS name has at most 253 characters)."""

REVERSE_LOOKUP_TIMEOUT_S = 5.0
"""Longest wait for the client's host name; past it the address stands in (logs stay readable,
a broken resolver does not hold the session). The lookup runs while the client logs in."""


def verified_name(ip: str) -> str | None:
    """The name of `ip`, when it resolves back to `ip` (Qpopper's check against DNS
    spoofing); None otherwise."""
    try:
        name = socket.gethostbyaddr(ip)[0]
        addresses = {normalize_ip(info[4][0]) for info in
                     socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)}
    except (OSError, UnicodeError, LookupError):
        return None
    return name if ip in addresses else None


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
            self._name = verified_name(self.ip)
        finally:
            self._done.set()

    def result(self) -> str:
        self._done.wait(max(0.0, self._deadline - time.monotonic()))
        return self._name or self.ip


class ForkedReverseLookup:
    """ReverseLookup for the pre-login process, whose chroot has no resolver: a child forked
    before the sandbox is entered (children.ForkedCall: it keeps none of the connection's
    descriptors; its answer comes back as raw bytes, bounded), running as the pre-login
    account (privsep.drop_to_account: no fork, no thread, the resolver's system-call filter),
    does the lookup and sends the name back (docs/privsep.md, "The pre-login process"); the
    pre-login process stops waiting for it at the lookup's deadline. No child (no process
    could be made): the address is the name."""

    def __init__(self, ip: str | None, uid: int, gid: int):
        """`ip` None: the address is not known yet (it comes in a PROXY header, read inside
        the sandbox); begin(ip) gives it to the child, which checks it is an address."""
        self.ip = ip
        self._name: str | None = None
        self._deadline = time.monotonic() + REVERSE_LOOKUP_TIMEOUT_S
        ip_r, self._ip_w = os.pipe2(os.O_CLOEXEC) if ip is None else (-1, -1)

        parent = os.getpid()

        def look_up() -> bytes:
            privsep.drop_to_account(uid, gid, parent)
            address = ip if ip is not None else self._wait_for_address(ip_r)
            name = verified_name(address) or address
            return name[:NAME_LIMIT].encode("utf-8", "replace")
        # raw bytes, bounded: this child talks to DNS, so its answer is not unmarshalled.
        # Never reaped here: its pid stays its own while the pre-login process, whose
        # system-call filter lets it kill that pid, lives (reused, it could be another
        # connection's process)
        self._call = ForkedCall.start(look_up, keep=(ip_r,) if ip_r >= 0 else (), raw=True,
                                      max_octets=4 * NAME_LIMIT, reap=False)
        self._pid = self._call.pid if self._call is not None else None
        if ip_r >= 0:
            os.close(ip_r)

    @staticmethod
    def _wait_for_address(fd: int) -> str:
        if not select.select([fd], [], [], limits.PROXY_HEADER_TIMEOUT_S + 1)[0]:
            raise TimeoutError("no address to look up")
        return str(ipaddress.ip_address(os.read(fd, 64).decode("ascii")))

    def pids(self) -> tuple[int, ...]:
        """The helper child, whom the pre-login process must still be able to kill."""
        return (self._pid,) if self._pid is not None else ()

    def begin(self, ip: str) -> None:
        """The address to look up, when it was not known at the fork."""
        self.ip = ip
        self._deadline = time.monotonic() + REVERSE_LOOKUP_TIMEOUT_S
        try:
            os.write(self._ip_w, ip.encode("ascii"))
        except OSError:
            pass                               # no child (any more): the address stands in
        os.close(self._ip_w)
        self._ip_w = -1

    def result(self) -> str:
        if self._call is not None:
            answer = self._call.result(self._deadline)
            self._call = None
            name = None if answer is None else answer.decode("utf-8", "replace")[:NAME_LIMIT]
            self._name = name if name and name != self.ip else None
        return self._name or self.ip
