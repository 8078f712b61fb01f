"""Two "hosts" on one machine for the scale-out tests: each a network namespace (its own
loopback, 127.0.0.1/32 only) and a UTS namespace (its own host name, which the spool locks
record), joined by a veth pair with 127.x addresses (route_localnet on), both serving one
shared spool directory. A socket made "on" a host (socket_on) connects from there.

docs/scale-out.md, "What the tests prove"."""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import socket
import subprocess

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def socket_on(namespace: str) -> socket.socket:
    """A TCP socket in `namespace`'s network stack (only the calling thread switches, and
    switches back)."""
    with open(f"/run/netns/{namespace}") as target, open("/proc/thread-self/ns/net") as home:
        _setns(target.fileno())
        try:
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        finally:
            _setns(home.fileno())


def _ip(*args: str, namespace: str | None = None) -> None:
    command = (["ip", "netns", "exec", namespace] if namespace else []) + list(args)
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=20)


@contextlib.contextmanager
def two_hosts():
    """Yields {"a": (namespace, address), "b": (namespace, address)}: host a's address is
    127.1.0.1 on its veth end, host b's 127.2.0.1; each reaches the other over the pair."""
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("unshare") is None:
        raise PermissionError("needs root, iproute2 and unshare")
    tag = secrets.token_hex(3)
    hosts = {"a": (f"qpt{tag}a", "127.1.0.1"), "b": (f"qpt{tag}b", "127.2.0.1")}
    made = []
    try:
        for ns, _ in hosts.values():
            _ip("ip", "netns", "add", ns)
            made.append(ns)
            _ip("ip", "link", "set", "lo", "up", namespace=ns)
            _ip("ip", "addr", "del", "127.0.0.1/8", "dev", "lo", namespace=ns)
            _ip("ip", "addr", "add", "127.0.0.1/32", "dev", "lo", namespace=ns)
        (ns_a, _), (ns_b, _) = hosts["a"], hosts["b"]
        _ip("ip", "link", "add", f"qv{tag}a", "netns", ns_a, "type", "veth",
            "peer", "name", f"qv{tag}b", "netns", ns_b)
        for (ns, addr), (_, peer), end in ((hosts["a"], hosts["b"], "a"),
                                           (hosts["b"], hosts["a"], "b")):
            dev = f"qv{tag}{end}"
            for key in ("all", dev):
                _ip("sysctl", "-qw", f"net.ipv4.conf.{key}.route_localnet=1", namespace=ns)
            _ip("ip", "addr", "add", f"{addr}/32", "dev", dev, namespace=ns)
            _ip("ip", "link", "set", dev, "up", namespace=ns)
            _ip("ip", "route", "add", f"{peer}/32", "dev", dev, "src", addr, namespace=ns)
        yield hosts
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def on_host(namespace: str, hostname: str, argv: list[str]) -> list[str]:
    """`argv` run as a process of the host: in its network namespace, in a UTS namespace
    of its own named `hostname` (each command execs the next: the pid stays argv's)."""
    return ["ip", "netns", "exec", namespace, "unshare", "--uts", "sh", "-c",
            'hostname "$0" && exec "$@"', hostname, *argv]
