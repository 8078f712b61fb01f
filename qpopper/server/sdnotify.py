"""The systemd service notification protocol (sd_notify(3)) and socket activation (sd_listen_fds(3)),
without libsystemd: a datagram to $NOTIFY_SOCKET, and descriptors from $LISTEN_FDS.
"""

from __future__ import annotations

import os
import socket

LISTEN_FDS_START = 3
"""SD_LISTEN_FDS_START: systemd passes activated sockets from this descriptor on."""


def notify(state: str, environ=os.environ) -> bool:
    """Send `state` ("READY=1", "RELOADING=1", "STOPPING=1", "STATUS=...") when NOTIFY_SOCKET is
    set. Returns whether a message was sent. Never raises: a service manager that went away
    must not stop the server."""
    address = environ.get("NOTIFY_SOCKET")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":
        address = "\0" + address[1:]      # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


def supervised(environ=os.environ) -> bool:
    """Whether a service manager waits for our notifications (NOTIFY_SOCKET is set: a
    Type=notify unit): the process it started must stay its main process."""
    return bool(environ.get("NOTIFY_SOCKET"))


def booted(run_dir: str = "/run/systemd/system") -> bool:
    """sd_booted(3): whether systemd is this machine's service manager."""
    return os.path.isdir(run_dir) and not os.path.islink(run_dir)


def passes_sockets(environ=os.environ) -> bool:
    """Whether systemd passed this process sockets (LISTEN_PID is ours, LISTEN_FDS > 0); read
    before listen_fds() takes them."""
    try:
        return (int(environ.get("LISTEN_PID", "")) == os.getpid()
                and int(environ.get("LISTEN_FDS", "")) > 0)
    except ValueError:
        return False


def listen_fds(environ=os.environ, unset: bool = True) -> list[socket.socket]:
    """The sockets systemd passed us (LISTEN_FDS / LISTEN_PID), as socket objects, marked
    close-on-exec; [] when none are meant for this process. With `unset`, the variables are
    removed so that children do not take them for theirs."""
    count = int(environ["LISTEN_FDS"]) if passes_sockets(environ) else 0
    if unset:
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            environ.pop(name, None)
    if count <= 0:
        return []
    sockets = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + count):
        os.set_inheritable(fd, False)
        sockets.append(socket.socket(fileno=fd))
    return sockets
