"""The monitor: one small root process per connection that never reads a client byte.

    master (root) ─ fork ─► monitor (root) ─ fork ─► pre-login (prelogin-user, chroot)
                              │                        │ client socket, TLS,
                              │                        │ AUTHORIZATION, SASL
                              ├─ fork ─► authentication (root) ◄─┘ frames (monitor_wire)
                              │            answers them; then OUTCOME to the monitor
                              └─ after a verified login it becomes the user session

The monitor sets the connection up (the pre-login process, its log records, the APOP
timestamp), then forks the authentication process (server/monitor_auth.py), which owns
what checks credentials: PAM, the pop.auth store, the brakes file, DRAC, the challenges of
APOP / CRAM-MD5 / SCRAM and the GSS-API context (auth/policy.py, auth/challenges.py), the
authentication cache's socket (auth/password_cache.py). It answers the pre-login process's
requests — one frame at a time, each decoded strictly by monitor_wire and checked — and
ends the connection at the first frame it does not expect. Once a login it verified is
handed over, the monitor checks the handover, prepares hashed spool directories, tells the
master the connection is logged in and becomes the user session, on the client socket (or,
with TLS, on the plaintext socket pair the pre-login process relays): a process that never
held a credential. docs/privsep.md has the whole picture and the list of what runs as root.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import signal
import socket
import syslog
import time

import setproctitle


from qpopper.server import privsep
from qpopper.server import monitor_wire as wire
from qpopper.server import prelogin
from qpopper.server import tls as tls_mod
from qpopper.log import ForwardedRecords, Logger
from qpopper.server.reverse_lookup import ForkedReverseLookup
from qpopper.server.channel import Channel, socket_peer, stdin_socket
from qpopper.server.listeners import ListenError, entry_matcher
from qpopper.server.preflight import (PreflightError, check_kerberos, check_tracefile,
                                      opened_log)
from qpopper.server.session import DISPLACE_SIGNAL, Session, tls_mode_for_listen_port
from qpopper.auth import challenges
from qpopper.auth.policy import Authenticator
from qpopper.pop3.responses import PopError, RespCode, err
from qpopper.server.children import (ProtocolViolation, exit_after, exited_within,  # noqa: F401 (re-exported)
                                     close_fds, close_sockets, log_failure, reap,
                                     standard_fds_to_null)
from qpopper.server.monitor_proxy import ProxiedConnection
from qpopper.server.monitor_handover import BecomingTheSession
from qpopper.server.monitor_auth import AuthenticationProcess

DEADLINE_MARGIN_S = 30
"""The monitor waits this much longer than the login deadline the pre-login process keeps,
then ends the connection itself."""
PRELOGIN_LAST_WORDS_S = 5
"""A pre-login process that ended the dialogue (the client left, or its last refusal) has at
least this long to write its last reply and exit before the monitor ends it."""
UNAVAILABLE = "Unable to serve you now; try again later"


@dataclasses.dataclass
class Client:
    """The client's descriptors: a socket (in_fd == out_fd) or an inetd pair."""

    in_fd: int
    out_fd: int
    sock: socket.socket | None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        else:
            close_fds({self.in_fd, self.out_fd})

    def leave(self) -> None:
        """In a child that never talks to the client: its descriptors closed; those that are
        0-2 (inetd; classic inetd gives 2 the client's socket too) point at /dev/null, so
        that nothing written to them reaches the client and no file opened later takes
        their number."""
        fds = {self.in_fd, self.out_fd}
        if self.in_fd in (0, 1) and _same_file(2, self.in_fd):
            fds.add(2)
        if self.sock is not None:
            fds.discard(self.sock.fileno())
            self.sock.close()
        standard_fds_to_null(keep={0, 1, 2} - fds)
        close_fds(fds - {0, 1, 2})


def _same_file(fd: int, other: int) -> bool:
    try:
        a, b = os.fstat(fd), os.fstat(other)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class Monitor(AuthenticationProcess, BecomingTheSession, ProxiedConnection):
    """One connection's monitor; `run()` returns the process exit status."""

    def __init__(self, cfg, log, *, hostname: str, peer, client: Client, tls=None,
                 tls_mode: str | None = None, on_login=None, notice_fd: int | None = None,
                 proxy=None, on_client_address=None, password_cache=None,
                 spool_mount: str | None = None, on_health_check=None):
        """`tls`: the master's tls.TlsIdentity (open files, never read here). `on_login()`:
        called once the user session runs (the master's logged-in notice). `notice_fd`:
        the master's notice pipe, which `on_login` and `on_client_address` write; it is
        closed in the pre-login process and before the user session, and the
        authentication process keeps it only for a PROXY header's address. `proxy`: the
        trusted proxy networks when the connection begins with a PROXY header (the
        pre-login process reads it; `on_client_address(ip)` then tells the master).
        `password_cache`: the authenticator's handle on the authentication cache
        (auth/password_cache.py), or None. `spool_mount`: the mount point of spool-dir's file
        system as the master found it (start-up, reload), which a health check looks at;
        `on_health_check("spool-dir", state)` tells the master what a health check found
        (server/monitor_proxy.py)."""
        self.cfg = cfg
        self.log = log
        self.hostname = hostname
        self.peer = peer
        self.client_ip = peer[0] if peer else "unknown"
        self.real_ip = self.client_ip          # the connection's own peer (a proxy's)
        self.proxy = proxy
        self.on_client_address = on_client_address
        self.proxied = False                   # the PROXY header's address was taken
        self.client = client
        self.tls = tls
        self.tls_mode = tls_mode if tls is not None else None
        self.on_login = on_login
        self.notice_fd = notice_fd
        self.password_cache = password_cache
        self.spool_mount = spool_mount
        self.on_health_check = on_health_check
        self.authenticator: Authenticator | None = None
        self.apop_timestamp: str | None = None
        self.cram: bytes | None = None
        self.login = None                    # a Login this monitor verified
        self.requests = 0
        self._closing = False                # a refusal said the connection must end
        self.prelogin_pid: int | None = None
        self.records: ForwardedRecords | None = None   # the pre-login process's log records
        # the pre-login process's end: its requests, and its last reply after them
        self.deadline = time.monotonic() + cfg.login_timeout + DEADLINE_MARGIN_S

    # --- the process -----------------------------------------------------------------------
    def run(self) -> int:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)   # the children end; we wait for them
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(DISPLACE_SIGNAL, signal.SIG_IGN)  # for the pre-login process only
        setproctitle.setproctitle(f"popper: {self.client_ip} monitor")
        self.log.open()                      # before the pre-login process locks itself in
        try:
            uid, gid = privsep.prelogin_account(self.cfg)
            self.authenticator = Authenticator(self.cfg, self.log)
            self.authenticator.password_cache = self.password_cache
            if self.authenticator.apop_enabled:
                self.apop_timestamp = challenges.apop_timestamp(os.getpid(), time.time(),
                                                                self.hostname)
        except (privsep.SandboxError, PopError, OSError) as exc:
            self.log(syslog.LOG_ERR, f"cannot serve {self.client_ip}: {exc}")
            self._refuse_client()
            return 1
        ours, theirs = wire.channel_pair()
        log_ours, log_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        relay_ours = relay_theirs = None
        if self.tls_mode is not None:
            relay_ours, relay_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:
            close_sockets(ours, log_ours, relay_ours)
            close_fds(self._privileged_fds())
            # its records go through this monitor, and it gets no journal stream on 1 and 2
            # (docs/privsep.md, "The pre-login process's log records")
            self.log.forward_to(log_theirs)
            standard_fds_to_null(keep=(self.client.in_fd, self.client.out_fd))
            exit_after(self.log, f"pre-login for {self.client_ip}",
                       lambda: self._run_prelogin(theirs, relay_theirs, uid, gid))
        self.prelogin_pid = pid
        close_sockets(theirs, log_theirs, relay_theirs)
        self.records = ForwardedRecords(log_ours, self.log, who=self.client_ip,
                                        debug=self.log.debug, end_process=self._end_prelogin)
        if self.tls is not None:
            self.tls.close()         # the key files: a user session must not inherit them
        try:
            handover = self._authenticate(ours, relay_ours)       # closes ours
            if handover is not None:
                self._handover(handover, relay_ours)     # returns only when refused
        except (ProtocolViolation, wire.FrameError) as exc:
            self._broke_protocol(exc)
        finally:
            close_sockets(relay_ours)
            self.client.close()
        return self._wait_prelogin()

    def _privileged_fds(self) -> set[int]:
        """The master's notice pipe and the authentication cache's socket: never in the
        pre-login process or the user session (the monitor holds them until then)."""
        cache_fd = self.password_cache.fd if self.password_cache is not None else None
        return {fd for fd in (self.notice_fd, cache_fd) if fd is not None}

    def _refuse_client(self) -> None:
        if self.tls_mode != "implicit":
            try:
                os.write(self.client.out_fd, err(UNAVAILABLE, RespCode.SYS_TEMP))
            except OSError:
                pass
        self.client.close()

    def _run_prelogin(self, sock, relay_end, uid: int, gid: int) -> int:
        lookup = (ForkedReverseLookup(None if self.proxy is not None else self.client_ip,
                                      uid, gid)
                  if self.peer and self.cfg.reverse_lookup else None)
        try:
            privsep.enter_prelogin_sandbox(self.cfg, uid, gid,
                                           may_signal=lookup.pids() if lookup else ())
        except privsep.SandboxError as exc:
            log_failure(self.log, "the pre-login sandbox", exc, syslog.LOG_CRIT)
            self._refuse_client()          # not a silent hang-up: try again later
            return privsep.EXIT_PRIVSEP_FAILED
        if self.proxy is not None and not self._take_proxy_header(sock, lookup):
            return 0
        authenticator = prelogin.MonitorAuthenticator(
            sock, apop_enabled=self.apop_timestamp is not None,
            banner_timestamp=self.apop_timestamp)
        client = self.client
        channel = Channel(client.in_fd, client.out_fd, client.sock)

        def handover(session, login):
            session.flush()            # replies before the login leave before the session's
            try:
                wire.send(sock, wire.Kind.HANDOVER, session.protocol.take_unread(),
                          bool(session.tls_active), session.client_host,
                          str(session.protocol.bad_commands), bool(login.no_mime))
            except OSError:
                # the authentication process is gone: no session, the protocol's
                # [SYS/TEMP] reply to an OSError, and no relay for a session that never comes
                session.handed_over = False
                raise
            raise prelogin.Handover()

        session = Session(self.cfg, channel, log=self.log, hostname=self.hostname,
                          peer=self.peer, authenticator=authenticator, tls=self.tls,
                          tls_mode=self.tls_mode, handover=handover, lookup=lookup)
        status = session.run()
        if session.handed_over and session.tls_active:
            prelogin.relay(session.channel, relay_end, self.cfg.timeout)
        return status

    def _wait_prelogin(self) -> int:
        """The pre-login process's exit status (no login was handed over). It may still be
        writing its last reply, so it has until the login deadline, and at least
        PRELOGIN_LAST_WORDS_S; then it is ended: whatever it does, the connection ends
        (docs/privsep.md, "The monitor's requests")."""
        if not exited_within(self.prelogin_pid, max(self.deadline - time.monotonic(),
                                                     PRELOGIN_LAST_WORDS_S), self.records):
            self.log(syslog.LOG_NOTICE, f"pre-login for {self.client_ip} did not end; "
                                        f"ending it")
            self._end_prelogin()
        status = reap(self.prelogin_pid)
        self.records.finish()                         # its last words
        return status


# --- inetd mode ------------------------------------------------------------------------------------
def serve_inetd(cfg, invocation) -> int:
    """`popper [flags]` with no port: the connection is on descriptors 0 and 1 (inetd's nowait
    line, or a systemd Accept=yes unit with StandardInput=socket)."""
    try:
        check_tracefile(cfg)
        check_kerberos(cfg)                           # inetd mode runs no site check
        # no master made prelogin-chroot since boot (/run is emptied) under socket units
        privsep.check_prelogin_setup(cfg)
        log = opened_log(cfg, lambda: Logger.from_config(cfg))
    except (PreflightError, privsep.SandboxError) as exc:
        # stderr may be the client's socket (classic inetd): the log only
        log = Logger.from_config(cfg.replace(tracefile=None))
        log(syslog.LOG_ERR, str(exc))
        log.close()
        return 1
    try:
        server_tls = tls_mod.open_server_tls(cfg, log)
    except tls_mod.TlsSetupError as exc:
        # stderr may be the client's socket (classic inetd): the log only
        log(syslog.LOG_ERR, f"TLS: {exc}")
        log.close()
        return 1
    sock = None
    probe, listening = stdin_socket()                 # None: a pipe or a terminal, no peer
    if probe is not None:
        if listening:
            # inetd "wait" / systemd Accept=no hands over the listening socket: that is the
            # standalone master's job (`popper PORT`, which also takes LISTEN_FDS).
            probe.close()
            log(syslog.LOG_ERR, "stdin is a listening socket, not a connection: use inetd "
                                "'nowait' / systemd Accept=yes, or run `popper [ADDRESS:]PORT`")
            log.close()
            return 1
        if probe.type == socket.SOCK_STREAM:
            sock = probe
        else:
            probe.close()
    if sock is not None and _wants_proxy_header(cfg, sock):
        # it would be read as a command, and every client would have the balancer's address
        log(syslog.LOG_ERR, f"proxy-protocol names port {sock.getsockname()[1]}, but a "
                            f"connection from inetd is not read for a PROXY header: run "
                            f"the standalone master on that port")
        log.close()
        return 1
    # Freeze what the start-up built, as the master does before it accepts: the process
    # lives for one connection, so the imports, config and TLS context live as long as it
    # does; no collection (here, in the pre-login child, or the session's own before it
    # opens the maildrop) need walk them. No collection first: it found nothing to free
    # here and would cost what the freeze saves (docs/internals.md,
    # "The message list and the collector").
    gc.freeze()
    try:
        return Monitor(cfg, log, hostname=socket.gethostname(), peer=socket_peer(sock),
                       client=Client(0, 1, sock), tls=server_tls,
                       tls_mode=tls_mode_for_listen_port(cfg)).run()
    except Exception as exc:
        # stdout and maybe stderr are the client: the details go to the log only
        log(syslog.LOG_ERR, f"session failed: {type(exc).__name__}: {exc}")
        return 1
    finally:
        log.close()


def _wants_proxy_header(cfg, sock: socket.socket) -> bool:
    """Whether a proxy-protocol entry names the address and port this inetd connection came
    in on, matched as the master matches its listeners (listeners.entry_matcher)."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False                    # a UNIX socket: no port any entry could name
    try:
        local = sock.getsockname()
    except OSError:
        return False
    for spec in cfg.proxy_protocol or ():
        try:
            if entry_matcher(spec)(local):
                return True
        except ListenError:
            return True                  # unresolvable now: the safe side is to refuse
    return False
