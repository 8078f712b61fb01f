"""The connection's bytes: raw descriptor I/O for a socket or an inetd pair, with the
session's timeout and hangup handling; TLS wraps it (server/tls.py, TlsChannel)."""

from __future__ import annotations

import errno
import os
import select
import socket
import time

from qpopper.addresses import normalize_ip

READ_CHUNK_OCTETS = 16 * 1024
"""One read from the client. Pipelined commands arrive in batches; protocol.py bounds lines."""
WRITEV_PIECES = min(os.sysconf("SC_IOV_MAX"), 1024)
"""Buffers per writev(2); the rest go in the next call."""

CLIENT_GONE_ERRNOS = frozenset({errno.EIO, errno.ENOTCONN, errno.EBADF, errno.ETIMEDOUT,
                                errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN,
                                errno.ENETDOWN})
"""A read's or write's errors that mean the client is gone (besides a reset and a broken
pipe): after TCP gives up on a route, the kernel reports the ICMP error it kept."""


class ChannelClosed(Exception):
    """The client went away (EOF on write, reset, or it stopped reading past the timeout)."""


class Channel:
    """Raw descriptor I/O for one connection: a socket (in_fd == out_fd) or an inetd pair.

    Non-blocking descriptors plus poll(): every wait is bounded by the session timeout, and a
    hangup signal (via the wakeup pipe) interrupts a wait for input.
    """

    closed_error = ChannelClosed      # what tls.TlsChannel raises too, over this channel

    def __init__(self, in_fd: int, out_fd: int, sock: socket.socket | None = None):
        self.in_fd, self.out_fd, self.sock = in_fd, out_fd, sock
        self._saved_flags = {}
        for fd in {in_fd, out_fd}:
            flags = os.get_blocking(fd)
            self._saved_flags[fd] = flags
            os.set_blocking(fd, False)
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Replies are flushed whole; never let Nagle hold the tail of one back waiting for
            # the client's delayed ACK (~40 ms per RETR otherwise).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def peer(self) -> tuple[str, int] | None:
        return socket_peer(self.sock)

    def read(self, timeout_s: float, wake_fd: int | None = None,
             interrupted=lambda: False) -> bytes | None:
        """Up to READ_CHUNK_OCTETS; b'' at EOF; None on timeout, or when a signal arrived on
        `wake_fd` and `interrupted()` says the wait must end."""
        poller = select.poll()
        poller.register(self.in_fd, select.POLLIN | select.POLLPRI)
        if wake_fd is not None:
            poller.register(wake_fd, select.POLLIN)
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            events = poller.poll(remaining * 1000)
            if any(fd == wake_fd for fd, _ in events):
                _drain(wake_fd)
                if interrupted():
                    return None
            if not any(fd == self.in_fd for fd, _ in events):
                continue
            try:
                return os.read(self.in_fd, READ_CHUNK_OCTETS)
            except BlockingIOError:
                continue
            except (ConnectionResetError, BrokenPipeError, TimeoutError):
                return b""
            except OSError as exc:
                if exc.errno in CLIENT_GONE_ERRNOS:
                    return b""
                raise

    def write_all(self, data: bytes | bytearray | memoryview, timeout_s: float) -> None:
        """Everything, or ChannelClosed when the peer is gone or reads nothing for timeout_s."""
        self.write_vector([data], timeout_s)

    def write_vector(self, pieces: list, timeout_s: float) -> None:
        """write_all of the pieces one after another, with writev(2): no copy into one buffer."""
        pieces = list(pieces)
        i, poller = 0, None
        while True:
            while i < len(pieces) and not len(pieces[i]):
                i += 1
            if i == len(pieces):
                return
            try:
                sent = os.writev(self.out_fd, pieces[i:i + WRITEV_PIECES])
            except BlockingIOError:
                sent = 0
            except (BrokenPipeError, ConnectionResetError, TimeoutError) as exc:
                raise ChannelClosed(str(exc)) from None
            except OSError as exc:
                if exc.errno in CLIENT_GONE_ERRNOS:
                    raise ChannelClosed(str(exc)) from None
                raise
            if sent:
                while sent and sent >= len(pieces[i]):
                    sent -= len(pieces[i])
                    i += 1
                if sent:
                    pieces[i] = memoryview(pieces[i])[sent:]
                continue
            if poller is None:
                poller = select.poll()
                poller.register(self.out_fd, select.POLLOUT)
            if not poller.poll(timeout_s * 1000):
                raise ChannelClosed("client stopped reading")

    def close(self) -> None:
        for fd, blocking in self._saved_flags.items():
            try:
                os.set_blocking(fd, blocking)
            except OSError:
                pass
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()


def stdin_socket() -> tuple[socket.socket | None, bool]:
    """Descriptor 0 as inetd mode sees it: (a socket object on a duplicate of it, or None for a
    pipe, a terminal or a closed descriptor; whether it is a listening socket, which inetd
    "wait" or systemd Accept=no hands over, not a connection)."""
    try:
        fd = os.dup(0)
    except OSError:
        return None, False
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        return None, False
    try:
        return sock, bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return sock, True                # no stream socket: no connection either


def socket_peer(sock: socket.socket | None) -> tuple[str, int] | None:
    """(normalised address, port) of an IP socket's peer; None for anything else."""
    if sock is None:
        return None
    try:
        addr = sock.getpeername()
    except OSError:
        return None
    if isinstance(addr, tuple) and len(addr) >= 2:
        return normalize_ip(addr[0]), addr[1]
    return None


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
