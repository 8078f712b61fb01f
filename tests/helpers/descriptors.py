"""Which of this process's descriptors are open on a file: what the brakes tests check
before and after a connection is handed to the user (auth/brakes.py); and a copy of another
process's socket (pidfd_getfd, as root), to speak as that process on it."""

from __future__ import annotations

import ctypes
import os
import socket


def descriptors_on(path: str) -> list[str]:
    """This process's descriptors open on `path` (or its SQLite journal)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith(path):
            found.append(target)
    return found


SYS_pidfd_open = 434
SYS_pidfd_getfd = 438
_libc = ctypes.CDLL(None, use_errno=True)


def steal_fd(pid: int, fd: int) -> int:
    """A copy of descriptor `fd` of process `pid` (pidfd_getfd: root, or ptrace rights)."""
    pidfd = _libc.syscall(SYS_pidfd_open, pid, 0)
    if pidfd < 0:
        raise OSError(ctypes.get_errno(), "pidfd_open")
    try:
        copy = _libc.syscall(SYS_pidfd_getfd, pidfd, fd, 0)
        if copy < 0:
            raise OSError(ctypes.get_errno(), "pidfd_getfd")
        return copy
    finally:
        os.close(pidfd)


def socket_of(pid: int, sock_type: int) -> socket.socket:
    """A copy of the first socket of type `sock_type` process `pid` holds."""
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=steal_fd(pid, int(name)))
        except OSError:
            continue
        if sock.type == sock_type:
            return sock
        sock.close()
    raise AssertionError(f"no socket of type {sock_type!r} in process {pid}")
