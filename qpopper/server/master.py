"""The standalone master: `popper [ADDRESS:]PORT [flags]`.

Binds the listeners (or takes them from systemd), accepts, and forks one monitor per
connection from the already-imported interpreter (monitor.py; docs/privsep.md). The master
keeps no per-connection state beyond a pid → facts table of live monitors, so its memory does
not grow with the number of sessions served. It never reads a client byte; what runs as root
is listed once, in privsep.py's docstring.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import gc
import os
import selectors
import signal
import socket
import sys
import syslog
import time

import setproctitle

from qpopper import config as config_mod
from qpopper.server import preflight, sdnotify
from qpopper.server import tls as tls_mod
from qpopper.addresses import address_group, in_networks, normalize_ip, parse_networks
from qpopper.auth import pam as pam_auth
from qpopper.server.auth_cache import AuthCacheProcess
from qpopper.log import Logger
from qpopper.server.listeners import (LISTEN_BACKLOG, ListenError, format_sockaddr, open_listeners,
                                      proxy_listeners)
from qpopper.server.monitor import Client, Monitor, exit_after
from qpopper.pop3.responses import TOO_MANY_CONNECTIONS, RespCode, err
from qpopper.server.session import DISPLACE_SIGNAL, tls_mode_for_listen_port
from qpopper.spool.locking import process_gone

KILL_AFTER_TERM_S = 5
"""After the grace period children get SIGTERM (they abort like a hangup); this long later,
SIGKILL (a crash the maildrop recovers from at the next login)."""

REAP_INTERVAL_S = 1.0
"""The loop also wakes this often, so a lost SIGCHLD never leaves zombies for long."""


@dataclasses.dataclass
class Child:
    """One connection's monitor, as the master accounts for it."""

    group: str | None           # address_group(client): the per-address limit's key;
                                # None until a proxied connection's monitor reports it
    started: float              # monotonic
    logged_in: bool = False     # its user session runs: never displaced
    displaced: bool = False     # ended to make room (no longer counted)


# --- the master ------------------------------------------------------------------------------------
class Master:
    """The accept loop. Signal handlers only enqueue; the loop handles them by name."""

    def __init__(self, cfg, invocation, listeners: list[socket.socket], log: Logger,
                 notify_systemd: bool = True, reload=None,
                 tls: tls_mod.TlsIdentity | None = None, implicit_tls=(), proxied=()):
        """`implicit_tls`: the listeners (among `listeners`) that speak TLS from the first
        byte (tls-listen); the others follow tls-support. `proxied`: those whose
        connections begin with a PROXY protocol header (proxy-protocol). `tls`: the context
        built at start-up, inherited by every child."""
        self.cfg = cfg
        self.tls = tls
        self.implicit_tls = set(implicit_tls)
        self.proxied = set(proxied)
        self.invocation = invocation
        self.reload = reload or self._load_configuration
        self.listeners = listeners
        self.log = log
        self._startup_log = log                  # its owner (run_master) closes it
        self.notify_systemd = notify_systemd
        self.hostname = socket.gethostname()
        self.children: dict[int, Child] = {}               # pid → its monitor's facts
        self.per_address: collections.Counter[str] = collections.Counter()
        # monitors write "PID\n" once logged in, "PID ADDRESS\n" for a proxied client
        self._logins_r = self._logins_w = -1
        self._notices = b""                      # a notice line not yet read whole
        self._displaced = 0                      # children ended to make room, not yet reaped
        self.pending_signals: collections.deque[int] = collections.deque()
        self.stopping = False
        self.selector: selectors.BaseSelector | None = None
        self._wake_r = self._wake_w = -1
        self.auth_cache = AuthCacheProcess()          # docs/auth-cache.md

    # --- setup and teardown ----------------------------------------------------------------------
    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for signum in (signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._enqueue_signal)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def _enqueue_signal(self, signum, frame) -> None:
        self.pending_signals.append(signum)

    def _uninstall_signals(self) -> None:
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def _close_listeners(self) -> None:
        for sock in self.listeners:
            if self.selector is not None:
                try:
                    self.selector.unregister(sock)
                except (KeyError, ValueError):
                    pass
            sock.close()
        self.listeners = []

    # --- the loop ------------------------------------------------------------------------------
    def serve(self) -> int:
        setproctitle.setproctitle("popper: master")
        if self.cfg.user_database == "system":
            pam_auth.preload()              # once here, not ldconfig twice in every session
        # Everything built so far lives as long as the master: out of the collector's sight,
        # so a child's garbage collections do not write to (and copy) the pages it shares.
        gc.collect()
        gc.freeze()
        self._install_signals()
        self._logins_r, self._logins_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.selector = selectors.DefaultSelector()
        try:
            for sock in self.listeners:
                sock.setblocking(False)
                self.selector.register(sock, selectors.EVENT_READ)
            self.selector.register(self._wake_r, selectors.EVENT_READ)
            self.selector.register(self._logins_r, selectors.EVENT_READ)
            where = ", ".join(self._describe_listener(s) for s in self.listeners)
            self.log(syslog.LOG_INFO, f"master listening on {where}")
            self._notify("READY=1\nSTATUS=accepting connections")
            self.auth_cache.start(self.cfg, self.log)
            while not self.stopping:
                for key, _ in self.selector.select(REAP_INTERVAL_S):
                    if key.fileobj == self._wake_r:
                        self._drain_wakeup()
                    elif key.fileobj == self._logins_r:
                        self._read_logins()
                    else:
                        self._accept(key.fileobj)
                self._handle_signals()
                self._reap()
                self.auth_cache.keep_running(self.cfg, self.log)
            return self._drain_children()
        finally:
            self.auth_cache.close()
            self._close_listeners()
            self.selector.close()
            self.selector = None
            self._uninstall_signals()
            for fd in (self._logins_r, self._logins_w):
                os.close(fd)
            self._logins_r = self._logins_w = -1
            if self.log is not self._startup_log:
                self.log.close()                           # built by a reload

    def _describe_listener(self, sock: socket.socket) -> str:
        mode = self._tls_mode(sock)
        suffix = {"implicit": " (TLS)", "stls": " (STLS)"}.get(mode, "")
        return format_sockaddr(sock.getsockname()) + suffix

    def _tls_mode(self, listener: socket.socket) -> str | None:
        if self.tls is None:
            return None
        if listener in self.implicit_tls:
            return "implicit"
        return tls_mode_for_listen_port(self.cfg)

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _handle_signals(self) -> None:
        while self.pending_signals:
            signum = self.pending_signals.popleft()
            if signum == signal.SIGHUP:
                self.on_reload()
            elif signum in (signal.SIGTERM, signal.SIGINT):
                self.on_stop(signum)
            # SIGCHLD: _reap runs after every wakeup anyway

    # --- accepting -----------------------------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        for _ in range(LISTEN_BACKLOG):          # take what is queued, but stay fair to signals
            try:
                conn, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.log(syslog.LOG_ERR, f"accept: {exc.strerror}; pausing")
                    time.sleep(0.1)
                    return
                raise
            client_ip = normalize_ip(addr[0]) if isinstance(addr, tuple) else "unknown"
            tls_mode = self._tls_mode(listener)
            proxy = self._proxy_networks() if listener in self.proxied else None
            if proxy is not None and not in_networks(client_ip, proxy):
                # nothing is read from it: the header of a stranger is never parsed
                self.log(syslog.LOG_NOTICE, f"Refused connection from {client_ip}: not in "
                                            f"proxy-trusted-networks of a proxy-protocol "
                                            f"listener")
                conn.close()
                continue
            # a proxied client's address is known only once its header is read: the monitor
            # reports it and _proxied_address applies the per-address limit then
            group = address_group(client_ip) if proxy is None else None
            refusal = self._make_room(group, client_ip)
            if refusal:
                # a TLS client would read a plain-text -ERR as a broken handshake: just close
                self._refuse(conn, client_ip, refusal, answer=tls_mode != "implicit")
                continue
            self._fork_session(conn, (client_ip, addr[1] if isinstance(addr, tuple) else 0),
                               group, tls_mode, proxy)

    def _proxy_networks(self) -> tuple:
        if getattr(self, "_proxy_cfg", None) is not self.cfg:      # parsed once per (re)load
            self._proxy_nets = tuple(net for entry in self.cfg.proxy_trusted_networks
                                     for net in parse_networks(entry))
            self._proxy_cfg = self.cfg
        return self._proxy_nets

    def _make_room(self, group: str | None, client_ip: str) -> str | None:
        """Room for a new connection from `group`: when a limit is reached, the connection
        that has waited longest without logging in (from that group for the per-address
        limit) is ended for it — Dovecot's "connection queue full" — so idle sockets cannot
        lock real users out; logged-in sessions are never ended. Returns why the newcomer is
        refused when every slot holds a logged-in session, else None."""
        for _ in range(2):                    # at most one slot per limit
            refusal, same_group_only = self._over_limit(group)
            if refusal is None:
                return None
            self._read_logins()               # a session that just logged in is no victim
            victims = [pid for pid, child in self.children.items()
                       if not (child.displaced or child.logged_in)
                       and (child.group == group or not same_group_only)]
            if not victims:
                return refusal
            pid = min(victims, key=lambda p: self.children[p].started)
            self._displace(pid, client_ip, refusal)
        return self._over_limit(group)[0]

    def _over_limit(self, group: str | None) -> tuple[str | None, bool]:
        """(why a new connection from `group` is over a limit, or None; whether only a
        connection of that group may make room for it)."""
        total = self.cfg.max_children
        per_address = self.cfg.max_children_per_address
        live = len(self.children) - self._displaced
        if total and live >= total:
            return f"{live} sessions running (max-children {total})", False
        if per_address and group is not None and self.per_address[group] >= per_address:
            return (f"{self.per_address[group]} sessions from {group} "
                    f"(max-children-per-address {per_address})", True)
        return None, False

    def _displace(self, pid: int, client_ip: str, why: str) -> None:
        child = self.children[pid]
        child.displaced = True
        self._displaced += 1
        self._uncount(child.group)
        self.log(syslog.LOG_NOTICE, f"{why}: ending a connection from {child.group} that "
                                    f"has not logged in, for one from {client_ip}")
        try:
            # the pre-login process says why and ends (session.DISPLACE_SIGNAL); the monitor
            # and a user session that has just started ignore it
            os.killpg(pid, DISPLACE_SIGNAL)
        except ProcessLookupError:
            pass

    def _uncount(self, group: str | None) -> None:
        if group is None:
            return                               # a proxied client not yet reported
        self.per_address[group] -= 1
        if self.per_address[group] <= 0:
            del self.per_address[group]          # no state left behind per address

    def _read_logins(self) -> None:
        """The monitors' notices: `PID` (its user session runs) and `PID ADDRESS` (the
        client address of a proxied connection, from its PROXY header)."""
        try:
            data = os.read(self._logins_r, 4096)
        except BlockingIOError:
            return
        *lines, self._notices = (self._notices + data).split(b"\n")
        for line in lines:
            words = line.decode("ascii", "replace").split()
            if not words or not words[0].isdigit() or int(words[0]) not in self.children:
                continue
            pid = int(words[0])
            if len(words) == 1:
                self.children[pid].logged_in = True
            elif len(words) == 2:
                self._proxied_address(pid, words[1])

    def _proxied_address(self, pid: int, client_ip: str) -> None:
        """A proxied connection's client is known: count it for max-children-per-address,
        and over the limit end the connection of that address that has waited longest
        without logging in — this one when all the others are logged in (its pre-login
        process answers -ERR [SYS/TEMP]).
        docs/scale-out.md, "Where the client's address comes from"."""
        child = self.children[pid]
        if child.displaced or child.group is not None:
            return
        child.group = group = address_group(client_ip)
        self.per_address[group] += 1
        limit = self.cfg.max_children_per_address
        if not limit or self.per_address[group] <= limit:
            return
        why = (f"{self.per_address[group] - 1} sessions from {group} "
               f"(max-children-per-address {limit})")
        waiting = [p for p, c in self.children.items()
                   if c.group == group and not (c.displaced or c.logged_in) and p != pid]
        victim = min(waiting, key=lambda p: self.children[p].started) if waiting else pid
        self._displace(victim, client_ip, why)

    def _refuse(self, conn: socket.socket, client_ip: str, why: str, answer: bool = True) -> None:
        """Over a limit: answer from the master, without forking, and close."""
        self.log(syslog.LOG_NOTICE, f"Refused connection from {client_ip}: {why}")
        try:
            conn.setblocking(False)
            if answer:
                conn.send(err(TOO_MANY_CONNECTIONS, RespCode.SYS_TEMP))
        except OSError:
            pass
        finally:
            conn.close()

    def _fork_session(self, conn: socket.socket, peer: tuple[str, int], group: str | None,
                      tls_mode: str | None = None, proxy=None) -> None:
        try:
            pid = os.fork()
        except OSError as exc:
            self.log(syslog.LOG_ERR, f"fork: {exc.strerror}")
            self._refuse(conn, peer[0], "fork failed")
            return
        if pid == 0:
            self._child(conn, peer, tls_mode, proxy)     # never returns
        conn.close()
        try:
            os.setpgid(pid, pid)             # as the child does: no race with a killpg
        except OSError:
            pass
        self.children[pid] = Child(group, time.monotonic())   # _reap uncounts it
        if group is not None:
            self.per_address[group] += 1

    def _child(self, conn: socket.socket, peer: tuple[str, int], tls_mode: str | None,
               proxy) -> None:
        # never lets the child fall back into the loop
        exit_after(self.log, f"session for {peer[0]}",
                   lambda: self._run_monitor(conn, peer, tls_mode, proxy))

    def _run_monitor(self, conn: socket.socket, peer: tuple[str, int],
                     tls_mode: str | None, proxy) -> int:
        os.setpgid(0, 0)          # the connection's processes are one group: killpg ends all
        self._uninstall_signals()
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        # Ctrl-C on the master's terminal: the master decides when sessions end (TERM after
        # the grace period), not the keyboard
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for sock in self.listeners:
            sock.close()
        self.listeners = []
        self.selector.close()
        self.selector = None
        self.children.clear()
        self.per_address.clear()
        os.close(self._logins_r)
        logins_w = self._logins_w
        password_cache = self.auth_cache.for_monitor()   # never reaches the pre-login process
        cache_fds = (password_cache.fd,) if password_cache is not None else ()

        def tell_master(*words: str) -> None:
            try:
                os.write(logins_w, " ".join((str(os.getpid()), *words)).encode() + b"\n")
            except OSError:
                pass
        return Monitor(self.cfg, self.log, hostname=self.hostname, peer=peer,
                       client=Client(conn.fileno(), conn.fileno(), conn), tls=self.tls,
                       tls_mode=tls_mode, on_login=tell_master, proxy=proxy,
                       on_client_address=tell_master,
                       close_in_children=(logins_w, *cache_fds),
                       password_cache=password_cache).run()

    # --- children ------------------------------------------------------------------------------
    def _reap(self) -> None:
        while self.children:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                self.per_address.clear()
                self._displaced = 0
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            if child.displaced:
                self._displaced -= 1
            else:
                self._uncount(child.group)

    # --- HUP and TERM --------------------------------------------------------------------------------
    def on_reload(self) -> None:
        """HUP: read the configuration again for new connections; a bad one is logged and
        the running one kept. The log is rebuilt (debug, tracefile, log-facility); the
        listeners stay as they were opened at start-up."""
        self._notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        new_log = None
        try:
            new_cfg = self.reload()
            new_log = self.log.reconfigured(new_cfg)
            # start-up's checks (a renewed certificate is read here); the listeners stay
            new_tls = preflight.check_site(new_cfg, new_log)
            if new_tls is None and self.implicit_tls:
                # the tls-listen ports opened at start-up never fall back to plain text
                raise tls_mod.TlsSetupError("the TLS listeners opened at start-up still need "
                                            "tls-listen and a certificate")
        except Exception as exc:
            if new_log is not None:
                new_log.close()
            self.log(syslog.LOG_ERR, f"reload failed, keeping the running configuration: {exc}")
        else:
            self._replace_log(new_log)
            self.cfg = new_cfg
            if self.tls is not None:
                self.tls.close()           # running sessions keep their own copies
            self.tls = new_tls
            self.log(syslog.LOG_NOTICE, "configuration reloaded")
            if new_tls is not None:
                self.log(syslog.LOG_INFO, f"TLS certificate {new_tls.description}")
        self.auth_cache.restart(self.cfg, self.log)     # HUP empties it, even if the reload failed
        self._notify("READY=1\nSTATUS=accepting connections")

    def _replace_log(self, new_log: Logger) -> None:
        self.log.close()            # closing twice is harmless: the start-up one's owner will
        self.log = new_log

    def _load_configuration(self):
        return config_mod.load(list(self.invocation.argv))[0]

    def on_stop(self, signum: int) -> None:
        self.stopping = True
        self._notify("STOPPING=1")
        self.log(syslog.LOG_NOTICE, f"{signal.Signals(signum).name}: no new connections; "
                                    f"waiting for {len(self.children)} session(s)")
        self._close_listeners()

    def _drain_children(self) -> int:
        grace = float(self.cfg.shutdown_grace)
        self._wait_children(time.monotonic() + grace)
        if self.children:
            self.log(syslog.LOG_NOTICE, f"terminating {len(self.children)} session(s)")
            self._signal_children(signal.SIGTERM)
            self._wait_children(time.monotonic() + KILL_AFTER_TERM_S)
        if self.children:
            self._signal_children(signal.SIGKILL)
            self._wait_children(time.monotonic() + KILL_AFTER_TERM_S)
        self.log(syslog.LOG_INFO, "master stopped")
        return 0

    def _wait_children(self, deadline: float) -> None:
        while self.children and time.monotonic() < deadline:
            self._reap()
            if not self.children:
                return
            timeout = min(REAP_INTERVAL_S, max(0.0, deadline - time.monotonic()))
            for key, _ in self.selector.select(timeout):
                if key.fileobj == self._wake_r:
                    self._drain_wakeup()
            self.pending_signals.clear()           # a second TERM changes nothing

    def _signal_children(self, signum: int) -> None:
        """Each connection's whole process group: monitor, pre-login, user session."""
        for pid in list(self.children):
            try:
                os.killpg(pid, signum)
            except ProcessLookupError:
                pass

    def _notify(self, state: str) -> None:
        if self.notify_systemd:
            sdnotify.notify(state)


# --- entry point -----------------------------------------------------------------------------------
def run_master(cfg, invocation) -> int:
    """`popper [ADDRESS:]PORT ...`: serve until TERM/INT. Returns the exit status."""
    log = Logger.from_config(cfg)
    listeners: list[socket.socket] = []
    server_tls = None
    try:
        # the checks `popper --check-config` makes, from the same function
        server_tls = preflight.check_site(cfg, log)
        listeners, implicit_tls = open_listeners(cfg)
        proxied = proxy_listeners(cfg, listeners)
    except (ListenError, preflight.PreflightError) as exc:
        for sock in listeners:
            sock.close()
        if server_tls is not None:
            server_tls.close()
        text = str(exc)
        log(syslog.LOG_ERR, text)
        print(f"popper: {text}", file=sys.stderr)
        log.close()
        return 1
    log.open()
    if server_tls is not None:
        log(syslog.LOG_INFO, f"TLS certificate {server_tls.description}")
    try:
        if cfg.daemon:
            return _run_daemonized(cfg, invocation, listeners, log, server_tls, implicit_tls, proxied)
        return Master(cfg, invocation, listeners, log, tls=server_tls,
                      implicit_tls=implicit_tls, proxied=proxied).serve()
    finally:
        for sock in listeners:
            sock.close()
        log.close()


def _run_daemonized(cfg, invocation, listeners, log, server_tls=None, implicit_tls=(),
                    proxied=()) -> int:
    """SysV-style: detach with python-daemon, write the pid file, keep the listeners and the
    syslog socket open across the detach."""
    import daemon
    import daemon.pidfile
    import lockfile

    pid_file = cfg.pid_file
    if pid_file and os.path.lexists(pid_file):
        if not _pid_file_is_stale(pid_file):
            # python-daemon takes the pid file after detaching, where nobody would see why
            # it failed: refuse here, on the administrator's terminal.
            print(f"popper: pid file {pid_file} is held by a running master", file=sys.stderr)
            return 1
        os.unlink(pid_file)
    context = daemon.DaemonContext(
        detach_process=True,           # asked for explicitly: detach even under inetd/init
        working_directory="/",
        umask=0o022,
        pidfile=daemon.pidfile.TimeoutPIDLockFile(pid_file, acquire_timeout=0) if pid_file else None,
        # the TLS identity's snapshots too: without them no pre-login process could load the
        # certificate, and every TLS client would be dropped
        files_preserve=([s.fileno() for s in listeners] + log.fds()
                        + (list(server_tls.fds.values()) if server_tls is not None else [])),
        signal_map={},                 # the master installs its own handlers
        prevent_core=True,
    )
    try:
        context.open()
    except lockfile.Error as exc:
        print(f"popper: pid file {pid_file}: {exc or 'held by a running master'}", file=sys.stderr)
        return 1
    try:
        return Master(cfg, invocation, listeners, log, notify_systemd=False, tls=server_tls,
                      implicit_tls=implicit_tls, proxied=proxied).serve()
    finally:
        context.close()


def _pid_file_is_stale(path: str) -> bool:
    """A pid file left by a master that is gone (kill -9, a crash) must not block the start."""
    try:
        with open(path) as f:
            pid = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return os.path.exists(path)            # unreadable garbage: stale as well
    return process_gone(pid)


