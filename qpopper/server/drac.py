"""DRAC (Dynamic Relay Access Control): POP-before-SMTP notification after a login.

Qpopper built `--with-drac` calls DRAC's `dracauth(drac-host, client address)` after every
successful login (docs/compatibility.md, "DRAC"): the DRAC daemon (rpc.dracd) adds the address to the
relay map of the mail server for a while, so a client without SMTP AUTH may send mail.
This is that client, in the stdlib, so no libdrac is needed:

  1. ask the portmapper on drac-host (RFC 1833 PMAPPROC_GETPORT, program 100000 version 2,
     UDP port 111) for the UDP port of program 900101 version 1;
  2. call DRACPROC_ADD (procedure 1) there with the client's IPv4 address as one XDR
     unsigned int in host order (libdrac does ntohl(), so 127.0.0.1 is 0x7f000001), and
     read the `enum addstat` result (ADD_SUCCESS = 0, ADD_PERM, ADD_SYSERR).

Both are ONC RPC version 2 calls (RFC 5531) with AUTH_NONE, over a connected UDP socket:
an ICMP "port unreachable" ends a call at once, a silent host costs retransmissions every
limits.DRAC_ATTEMPT_TIMEOUT_S up to limits.DRAC_TOTAL_TIMEOUT_S for the whole notification.
DRAC never refuses or fails a login: `notify_login` logs and returns.

drac-host is a host name or address, as in Qpopper. Extension: `HOST:PORT` (or
`[IPV6]:PORT`) names a portmapper on another port than 111 (a private test portmapper, an
rpcbind behind a port forward). A host name is resolved by the system resolver, within the
same bound (use an address to keep DNS out of the login path); IPv4 is preferred, DRAC being
IPv4-only.
IPv6 clients are skipped: DRACPROC_ADD has no way to carry their address.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import syslog
import threading
import time

from qpopper import limits

DRAC_PROGRAM = 900101
DRAC_VERSION = 1
DRACPROC_ADD = 1

PMAP_PROGRAM = 100000
PMAP_VERSION = 2
PMAPPROC_GETPORT = 3
PMAP_PORT = 111
IPPROTO_UDP = 17

RPC_VERSION = 2
CALL, REPLY = 0, 1
MSG_ACCEPTED, MSG_DENIED = 0, 1
AUTH_NONE = 0

ACCEPT_STATS = {1: "program unavailable", 2: "program version mismatch",
                3: "procedure unavailable", 4: "garbage arguments", 5: "system error"}
ADD_STATS = {0: "success", 1: "permission denied", 2: "system error", 3: "unknown error"}
"""DRAC's enum addstat (ADD_SUCCESS, ADD_PERM, ADD_SYSERR, ADD_UNKOWN)."""


class DracError(Exception):
    """Why a DRAC notification did not happen: one readable line, for the log."""


def parse_drac_host(value: str) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]:port` or a bare IPv6 address → (host, portmapper port)."""
    value = value.strip()
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise DracError(f"drac-host {value!r}: expected [ADDRESS]:PORT")
        port_text = rest[1:] if rest else ""
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    else:
        host, port_text = value, ""          # a name, an IPv4 address or a bare IPv6 one
    if not host:
        raise DracError(f"drac-host {value!r}: no host")
    if not port_text:
        return host, PMAP_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise DracError(f"drac-host {value!r}: bad port {port_text!r}")
    return host, int(port_text)


def _call_message(xid: int, program: int, version: int, procedure: int, args: bytes) -> bytes:
    """An RPC call (RFC 5531 §9) with AUTH_NONE credentials and verifier."""
    return struct.pack(">10I", xid, CALL, RPC_VERSION, program, version, procedure,
                       AUTH_NONE, 0, AUTH_NONE, 0) + args


def _accepted_result(reply: bytes, xid: int) -> bytes | None:
    """The results of a reply to `xid`; None for a datagram that is not that reply.
    A reply that refuses the call raises DracError."""
    if len(reply) < 12:
        return None
    reply_xid, message_type, reply_stat = struct.unpack_from(">3I", reply)
    if reply_xid != xid or message_type != REPLY:
        return None
    if reply_stat == MSG_DENIED:
        raise DracError("RPC call denied (version mismatch or authentication error)")
    if reply_stat != MSG_ACCEPTED or len(reply) < 20:
        raise DracError("malformed RPC reply")
    _flavor, verifier_length = struct.unpack_from(">2I", reply, 12)
    offset = 20 + (verifier_length + 3) // 4 * 4
    if len(reply) < offset + 4:
        raise DracError("malformed RPC reply")
    (accept_stat,) = struct.unpack_from(">I", reply, offset)
    if accept_stat != 0:
        raise DracError(f"RPC: {ACCEPT_STATS.get(accept_stat, f'error {accept_stat}')}")
    return reply[offset + 4:]


def _rpc_call(address: tuple, family: int, program: int, version: int, procedure: int,
              args: bytes, deadline: float, what: str) -> bytes:
    """One call, retransmitted every DRAC_ATTEMPT_TIMEOUT_S until `deadline`; the results."""
    xid = int.from_bytes(os.urandom(4), "big")
    message = _call_message(xid, program, version, procedure, args)
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DracError(f"{what}: no reply within {limits.DRAC_TOTAL_TIMEOUT_S}s")
                sock.send(message)
                attempt_end = time.monotonic() + min(limits.DRAC_ATTEMPT_TIMEOUT_S, remaining)
                while (wait := attempt_end - time.monotonic()) > 0:
                    sock.settimeout(wait)
                    try:
                        reply = sock.recv(limits.DRAC_MAX_REPLY_OCTETS)
                    except TimeoutError:
                        break
                    results = _accepted_result(reply, xid)
                    if results is not None:
                        return results
        except ConnectionRefusedError:
            raise DracError(f"{what}: connection refused (nothing listens)") from None
        except OSError as exc:
            raise DracError(f"{what}: {exc.strerror or exc}") from None


def _resolve(host: str, port: int, deadline: float) -> tuple[int, tuple]:
    """(family, address) of drac-host, IPv4 first, by `deadline`: getaddrinfo has no timeout
    of its own, so it runs in a thread that is left to finish alone when the time is up
    (a dead DNS server must not hold the login longer than DRAC_TOTAL_TIMEOUT_S). An
    address, as advised, needs no thread: it is parsed, not looked up."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None                          # a name (or an IPv6 address with a scope)
    if isinstance(address, ipaddress.IPv4Address):
        return socket.AF_INET, (host, port)
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is None:
        return socket.AF_INET6, (host, port, 0, 0)
    answer: list = []
    lookup = threading.Thread(target=lambda: answer.append(_lookup(host, port)), daemon=True,
                              name="drac-host lookup")
    lookup.start()
    lookup.join(max(0.0, deadline - time.monotonic()))
    if not answer:
        raise DracError(f"resolving drac-host {host!r}: no answer within "
                        f"{limits.DRAC_TOTAL_TIMEOUT_S}s")
    if answer[0] is None:
        raise DracError(f"cannot resolve drac-host {host!r}")
    return answer[0]


def _lookup(host: str, port: int) -> tuple[int, tuple] | None:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            found = socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM)
        except (socket.gaierror, UnicodeError):
            continue
        if found:
            return found[0][0], found[0][4]
    return None


def dracauth(drac_host: str, client_ip: str) -> None:
    """Tell the DRAC server on `drac_host` that `client_ip` (IPv4) just logged in.
    Raises DracError (one line) when that did not happen; bounded by DRAC_TOTAL_TIMEOUT_S."""
    deadline = time.monotonic() + limits.DRAC_TOTAL_TIMEOUT_S
    try:
        address_value = int(ipaddress.IPv4Address(client_ip))
    except ValueError:
        raise DracError(f"{client_ip!r} is not an IPv4 address") from None
    host, pmap_port = parse_drac_host(drac_host)
    family, pmap_address = _resolve(host, pmap_port, deadline)
    getport_args = struct.pack(">4I", DRAC_PROGRAM, DRAC_VERSION, IPPROTO_UDP, 0)
    results = _rpc_call(pmap_address, family, PMAP_PROGRAM, PMAP_VERSION, PMAPPROC_GETPORT,
                        getport_args, deadline, f"portmapper on {drac_host}")
    if len(results) < 4:
        raise DracError(f"portmapper on {drac_host}: malformed GETPORT reply")
    (drac_port,) = struct.unpack_from(">I", results)
    if not 0 < drac_port < 65536:
        raise DracError(f"DRAC server not registered with the portmapper on {drac_host}")
    drac_address = (pmap_address[0], drac_port) + tuple(pmap_address[2:])
    results = _rpc_call(drac_address, family, DRAC_PROGRAM, DRAC_VERSION, DRACPROC_ADD,
                        struct.pack(">I", address_value), deadline,
                        f"DRAC server on {drac_host}")
    if len(results) < 4:
        raise DracError(f"DRAC server on {drac_host}: malformed reply")
    (status,) = struct.unpack_from(">I", results)
    if status != 0:
        raise DracError(f"DRAC server on {drac_host}: {ADD_STATS.get(status, f'error {status}')}")


def client_ipv4(client_ip: str) -> str | None:
    """The client's IPv4 address (also from an IPv4-mapped IPv6 one), else None."""
    try:
        address = ipaddress.ip_address(client_ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        address = address.ipv4_mapped
    return str(address) if address is not None else None


def notify_login(drac_host: str | None, user: str, client_host: str, client_ip: str,
                 log) -> None:
    """After a successful login: notify DRAC when drac-host is set. Never raises; logs
    `[drac]: login by <user> from host <host> (<ip>)` or why not."""
    if not drac_host:
        return
    ipv4 = client_ipv4(client_ip)
    if ipv4 is None:
        log(syslog.LOG_DEBUG, f"[drac]: {client_ip} is not an IPv4 address; DRAC skipped")
        return
    try:
        dracauth(drac_host, ipv4)
    except (DracError, OSError, ValueError) as exc:
        log(syslog.LOG_WARNING, f"[drac]: {exc}")
        return
    log(syslog.LOG_NOTICE, f"[drac]: login by {user} from host {client_host} ({client_ip})")
