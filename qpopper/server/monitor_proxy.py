"""A connection behind a load balancer: the PROXY header read by the pre-login process and
checked here (only from a trusted peer, once, before anything else), HAProxy's health checks
answered without a session (docs/scale-out.md): +OK while spool-dir is there, on the file
system mounted where the master found it at start-up or its last reload; -ERR [SYS/TEMP]
when it is not, so that the balancer takes a host whose NFS mount is gone out of service. Only the
authentication process (root) looks at spool-dir; the pre-login process writes the answer
it is given."""

from __future__ import annotations

import errno
import ipaddress
import socket
import syslog

import setproctitle

from qpopper import limits
from qpopper.server import monitor_wire as wire
from qpopper import proxy_protocol
from qpopper.addresses import in_networks
from qpopper.server import prelogin
from qpopper.server.children import ProtocolViolation
from qpopper.pop3.responses import RespCode, err
from qpopper.spool.mounts import MOUNT_GONE, spool_mount_state

HEALTH_CHECK_REPLY = b"+OK POP3 server ready (health check)\r\n"
HEALTH_CHECK_SUFFIX = " (health check)"


def spool_dir_trouble(cfg, recorded_mount: str | None) -> tuple[str, str] | None:
    """What is wrong with spool-dir for a health check, as (the state word for the master's
    notice: MOUNT_GONE, or the errno's name, mounts.spool_mount_state; the reply's reason),
    or None when it is fine. With home-dir-mail there is no spool directory to look at:
    never a trouble. A stat that hangs (a hard NFS mount whose server is gone) hangs the
    check, which the balancer's own check timeout then fails
    (docs/scale-out.md, "The load balancer")."""
    if cfg.home_dir_mail or not cfg.spool_dir:
        return None
    state = spool_mount_state(cfg.spool_dir, recorded_mount)
    if isinstance(state, OSError):
        return (errno.errorcode.get(state.errno, "EIO"),
                f"spool-dir cannot be examined: {state.strerror}")
    return (MOUNT_GONE, "spool-dir's mount is gone") if state == MOUNT_GONE else None


class ProxiedConnection:
    """Part of Monitor (server/monitor.py): see the module docstring."""

    def _take_proxy_header(self, sock, lookup) -> bool:
        """In the pre-login process: the PROXY header, read here (unprivileged) and reported
        to the monitor, which decides what to believe. False: the connection is over (no
        header, a bad one, or a health check answered)."""
        try:
            header = prelogin.read_proxy_header(self.client.sock,
                                                limits.PROXY_HEADER_TIMEOUT_S)
        except prelogin.NoHeader:
            # a TCP health check: connect and close; not worth a log line above debug
            self.log(syslog.LOG_DEBUG, f"{self.real_ip}: closed before a PROXY header")
            return False
        except proxy_protocol.ProxyError as exc:
            self.log(syslog.LOG_NOTICE, f"PROXY protocol header from {self.real_ip} "
                                        f"refused: {exc}; closing")
            return False
        # HAProxy's v1 health check names its own connection (v2 sends LOCAL): a header
        # whose client is this very connection's peer is the proxy speaking for itself
        local = header.local or (header.source == self.real_ip
                                 and header.source_port == self.peer[1])
        try:
            wire.send(sock, wire.Kind.PROXIED, local, header.source or "",
                      str(header.source_port or 0))
            answer = wire.receive(sock, (wire.Kind.DATA,))
        except (OSError, wire.FrameError):
            answer = None
        if answer is None:
            return False
        if local:
            self._answer_health_check(answer.text(0))
            return False
        self.client_ip = answer.text(0)
        self.peer = (self.client_ip, header.source_port)
        if lookup is not None:
            lookup.begin(self.client_ip)
        return True

    def _answer_health_check(self, trouble: str) -> None:
        """The proxy's own connection (v2 LOCAL, v1 UNKNOWN or its own address): one line
        for a check that expects a greeting, no session: +OK, or -ERR [SYS/TEMP] with the
        monitor's `trouble` (spool-dir's) when it gave one; inside implicit TLS nothing (a
        check there only connects)."""
        reply = (err(trouble + HEALTH_CHECK_SUFFIX, RespCode.SYS_TEMP) if trouble
                 else HEALTH_CHECK_REPLY)
        if self.tls_mode != "implicit":
            try:
                self.client.sock.sendall(reply)
                self.client.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        self.log(syslog.LOG_DEBUG, f"{self.real_ip}: PROXY health check answered")

    def _proxied(self, frame: wire.Frame) -> bytes:
        """The client address the pre-login process read from the PROXY header: believed
        only on a proxy-protocol listener, once, first, from a trusted proxy (the master
        checked that too; this process knows the real peer itself), and only as an IP
        address and a port."""
        if self.proxy is None or self.proxied:
            raise ProtocolViolation("PROXIED on a connection without a PROXY header")
        if not in_networks(self.real_ip, self.proxy):
            raise ProtocolViolation(f"PROXY header from untrusted {self.real_ip}")
        self.proxied = True
        if frame.flag(0):
            self._closing = True            # a health check: no client, no more requests
            return wire.encode(wire.Kind.DATA, self._health(), True)
        ip = ipaddress.ip_address(frame.text(1))
        if ip.version == 6 and ip.scope_id is not None:
            # a PROXY header never carries one, and its text is free: it would reach the
            # master's notices, the logs and the brakes' keys
            raise ProtocolViolation("PROXIED with an IPv6 scope id")
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped                  # written as IPv4, as normalize_ip does
        address = str(ip)
        port = frame.text(2)
        if not (port.isascii() and port.isdigit() and int(port) <= 65535):
            raise ProtocolViolation("PROXIED with a bad port")
        self.client_ip = address
        self.peer = (address, int(port))
        setproctitle.setproctitle(f"popper: {self.client_ip} authentication")
        if self.on_client_address is not None:
            self.on_client_address(address)
        return wire.encode(wire.Kind.DATA, address, False)

    def _health(self) -> str:
        """A health check's verdict on spool-dir ("" when fine, else the -ERR reply's
        reason), told to the master, which logs when it changes."""
        trouble = spool_dir_trouble(self.cfg, self.spool_mount)
        if self.on_health_check is not None:
            self.on_health_check("spool-dir", trouble[0] if trouble else "ok")
        return trouble[1] if trouble else ""
