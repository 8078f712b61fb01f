"""The standalone master's listeners: `listen` / `tls-listen` entries parsed and bound (or
taken from systemd), and the proxy-protocol ones among them (docs/scale-out.md). Runs as root
in the master, before any connection is accepted.
"""

from __future__ import annotations

import ipaddress
import socket

from qpopper.addresses import normalize_ip
from qpopper.server import sdnotify

LISTEN_BACKLOG = 1024
"""Pending connections per listener; the kernel caps it at net.core.somaxconn. A burst
larger than the backlog while the master is busy forking loses connections silently: the
kernel drops the client's last handshake packet, the client believes it is connected and
waits for a greeting that never comes (docs/internals.md, "Connection bursts")."""

DEFAULT_PORT = 110


class ListenError(Exception):
    """A listener could not be set up: one readable line for the administrator."""



def parse_listen(spec) -> tuple[str | None, int]:
    """A `listen` value — `PORT`, `ADDRESS:PORT`, `[IPV6]:PORT` — or a (host, port) pair →
    (host, or None for every address; port)."""
    if isinstance(spec, (tuple, list)):
        host, port = spec
        return (host or None), int(port)
    text = str(spec).strip()
    host: str | None = None
    port_text = text
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or not text[close + 1:].startswith(":"):
            raise ListenError(f"listen address {text!r}: expected [IPV6]:PORT")
        host, port_text = text[1:close], text[close + 2:]
    elif ":" in text:
        if text.count(":") > 1:
            raise ListenError(f"listen address {text!r}: write IPv6 addresses as [ADDRESS]:PORT")
        host, port_text = text.rsplit(":", 1)
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ListenError(f"listen address {text!r}: the port must be a number 0..65535")
    if host == "*":
        host = None
    return (host or None), int(port_text)


def _has_ipv6() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM):
            return True
    except OSError:
        return False


def _resolve(host: str, port: int) -> list:
    """getaddrinfo for a listen entry's host; ListenError when it does not resolve."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                  flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV)
    except socket.gaierror as exc:
        raise ListenError(f"listen address {host}:{port}: {exc.strerror}") from None
    except UnicodeError:                     # a label over 63 octets, say
        raise ListenError(f"listen address {host}:{port}: not a valid host name") from None


def resolve_listeners(specs) -> list[tuple[int, tuple, bool]]:
    """Each spec → (family, sockaddr, v6only). A bare port is every address: `[::]` dual stack
    (or 0.0.0.0 without IPv6). `[::]` is made v6-only when an IPv4 wildcard on the same port is
    also asked for, so both can be bound."""
    parsed = [parse_listen(s) for s in specs] or [(None, DEFAULT_PORT)]
    result = []
    for host, port in parsed:
        if host is None:
            if _has_ipv6():
                result.append((socket.AF_INET6, ("::", port, 0, 0), False))
            else:
                result.append((socket.AF_INET, ("0.0.0.0", port), False))
            continue
        family, _, _, _, sockaddr = _resolve(host, port)[0]
        result.append((family, sockaddr, False))
    v4_wildcards = {sa[1] for fam, sa, _ in result if fam == socket.AF_INET and sa[0] == "0.0.0.0"}
    return [(fam, sa, fam == socket.AF_INET6 and sa[0] == "::" and sa[1] in v4_wildcards)
            for fam, sa, _ in result]


def clashing(resolved) -> tuple[int, int] | None:
    """The first pair (i, j) of resolve_listeners' results that cannot both be bound: on the
    same port, the same address twice, or a wildcard address and another address it takes (a
    dual-stack [::] takes IPv4 too): binding the second fails, "Address already in use"."""
    for i, first in enumerate(resolved):
        for j in range(i + 1, len(resolved)):
            second = resolved[j]
            if first[1][1] == second[1][1] != 0 and (_takes(first, second)
                                                     or _takes(second, first)):
                return i, j
    return None


def _takes(wide, other) -> bool:
    """Whether binding (family, sockaddr, v6only) `wide` takes `other`'s address."""
    family, sockaddr, v6only = wide
    if family == other[0]:
        # an IPv6 sockaddr's scope id is part of the address (fe80::1%eth0 is not %eth1)
        same = (sockaddr[0] == other[1][0] and (family != socket.AF_INET6
                                                 or sockaddr[3] == other[1][3]))
        return same or ipaddress.ip_address(sockaddr[0]).is_unspecified
    return (family == socket.AF_INET6 and not v6only and other[0] == socket.AF_INET
            and ipaddress.ip_address(sockaddr[0]).is_unspecified)


def bind_listeners(specs, option: str | None = None, where: str = "") -> list[socket.socket]:
    """A bound, listening socket for each spec. A bind that fails is one ListenError line;
    with `option` (and `where`, " (listen set at FILE:LINE)") it names the entry and where it
    was set, as the start-up checks' lines do (docs/operations.md, "Start-up checks")."""
    listeners = []
    named = list(specs) or [str(DEFAULT_PORT)]
    try:
        for spec, (family, sockaddr, v6only) in zip(named, resolve_listeners(specs)):
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            listeners.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if v6only else 0)
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                entry = f"{option} {spec}: " if option else ""
                raise ListenError(f"{entry}cannot listen on {format_sockaddr(sockaddr)}: "
                                  f"{exc.strerror}{where}") from None
            sock.listen(LISTEN_BACKLOG)
    except BaseException:
        for sock in listeners:
            sock.close()
        raise
    return listeners


def format_sockaddr(sockaddr) -> str:
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def open_listeners(cfg) -> tuple[list[socket.socket], list[socket.socket]]:
    """(all listeners, the implicit-TLS ones among them). Sockets from systemd (LISTEN_FDS)
    count as TLS when their port is a tls-listen port; otherwise `listen` and `tls-listen`
    are bound here."""
    tls_specs = list(cfg.tls_listen or ())
    passed = sdnotify.listen_fds()
    if passed:
        tls_ports = {parse_listen(spec)[1] for spec in tls_specs}
        return passed, [s for s in passed if s.getsockname()[1] in tls_ports]
    plain_specs = list(cfg.listen or ())
    plain = (bind_listeners(plain_specs, "listen", _set_where(cfg, "listen"))
             if plain_specs or not tls_specs else [])
    try:
        implicit = (bind_listeners(tls_specs, "tls-listen", _set_where(cfg, "tls-listen"))
                    if tls_specs else [])
    except BaseException:
        for sock in plain:
            sock.close()
        raise
    return plain + implicit, implicit


def _set_where(cfg, name: str) -> str:
    """" (NAME set at SOURCE)", or "" for an option at its default."""
    source = cfg.source(name)
    return "" if source == "default" else f" ({name} set at {source})"


def entry_matcher(spec):
    """A test of a socket's address (getsockname()) against one listen-style entry: its
    port, and its address unless it has none; an unspecified address (0.0.0.0, ::) is every
    address of the host; a name, each of its addresses (localhost: 127.0.0.1 and ::1, where
    a listen entry binds the first only). ListenError when the name does not resolve."""
    host, port = parse_listen(spec)
    wanted = None if host is None else {normalize_ip(sockaddr[0]) for *_, sockaddr
                                        in _resolve(host, port)}
    anywhere = wanted is None or any(ipaddress.ip_address(w).is_unspecified for w in wanted)
    return lambda address: address[1] == port and (anywhere
                                                   or normalize_ip(address[0]) in wanted)


NO_LISTENER = "no listen or tls-listen entry has this address and port"


def proxy_listeners(specs, listeners) -> list[socket.socket]:
    """The listeners named by the proxy-protocol entries (matched by port, and by address
    unless the entry has none); an entry matching none is a ListenError. The entries are the
    ones preflight.check_proxy_protocol passed: it alone requires proxy-trusted-networks."""
    chosen = []
    for spec in specs:
        names = entry_matcher(spec)
        found = [sock for sock in listeners if names(sock.getsockname())]
        if not found:
            raise ListenError(f"proxy-protocol {spec}: {NO_LISTENER}")
        chosen += found
    return chosen
