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

from qpopper.server import preflight, sdnotify, warmup
from qpopper.server import tls as tls_mod
from qpopper.addresses import address_group, in_networks, normalize_ip
from qpopper.server.auth_cache import AuthCacheProcess
from qpopper.log import Logger
from qpopper.server.listeners import (ListenError, format_sockaddr, open_listeners,
                                      proxy_listeners)
from qpopper.server.children import exit_after
from qpopper.server.monitor import Client, Monitor
from qpopper.server.session import tls_mode_for_listen_port
from qpopper.spool.dotlock import process_gone
from qpopper.server.admission import Admission
from qpopper.server.master_lifecycle import REAP_INTERVAL_S, Lifecycle, listen_entries

ACCEPT_BATCH = 128
"""Connections accepted per wake-up before signals are looked at again (the listen backlog
is larger: qpopper/server/listeners.py)."""


@dataclasses.dataclass
class Child:
    """One connection's monitor, as the master accounts for it."""

    group: str | None           # address_group(client): the per-address limit's key;
                                # None until a proxied connection's monitor reports it
    started: float              # monotonic
    logged_in: bool = False     # its user session runs: never displaced
    displaced: bool = False     # ended to make room (no longer counted)


# --- the master ------------------------------------------------------------------------------------
class Master(Lifecycle, Admission):
    """The accept loop. Signal handlers only enqueue; the loop handles them by name."""

    def __init__(self, cfg, invocation, listeners: list[socket.socket], log: Logger,
                 notify_systemd: bool = True, reload=None,
                 tls: tls_mod.TlsIdentity | None = None, implicit_tls=(), proxied=(),
                 spool_mount: str | None = None):
        """`implicit_tls`: the listeners (among `listeners`) that speak TLS from the first
        byte (tls-listen); the others follow tls-support. `proxied`: those whose
        connections begin with a PROXY protocol header (proxy-protocol). `tls`: the context
        built at start-up, inherited by every child. `spool_mount`: the mount point of
        spool-dir's file system as the start-up check found it (preflight.CheckedSite), which
        every health check looks at (server/monitor_proxy.py)."""
        self.cfg = cfg
        self.tls = tls
        self.implicit_tls = set(implicit_tls)
        self.proxied = set(proxied)
        self.spool_mount = spool_mount
        self.spool_health = "ok"                 # what the last health check found
        self.invocation = invocation
        self.reload = reload or self._load_configuration
        self.listeners = listeners
        self.opened_for = listen_entries(cfg)    # a reload keeps these listeners
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
        self._preload_pam()
        warmup.warm_up(self.cfg, self.log)      # a warmer image for every session to share
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
        for _ in range(ACCEPT_BATCH):            # take what is queued, but stay fair to signals
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

        monitor_pid = str(os.getpid())   # the authentication process tells it too

        def tell_master(*words: str) -> None:
            if not all(word and word.isprintable() and " " not in word for word in words):
                return                   # one notice is one line of words (_read_logins)
            try:
                os.write(logins_w, " ".join((monitor_pid, *words)).encode() + b"\n")
            except OSError:
                pass
        return Monitor(self.cfg, self.log, hostname=self.hostname, peer=peer,
                       client=Client(conn.fileno(), conn.fileno(), conn), tls=self.tls,
                       tls_mode=tls_mode, on_login=tell_master, proxy=proxy,
                       on_client_address=tell_master, on_health_check=tell_master,
                       spool_mount=self.spool_mount,
                       notice_fd=logins_w, password_cache=password_cache).run()

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

    def _notify(self, state: str) -> None:
        if self.notify_systemd:
            sdnotify.notify(state)


# --- entry point -----------------------------------------------------------------------------------
def run_master(cfg, invocation) -> int:
    """`popper [ADDRESS:]PORT ...`: serve until TERM/INT. Returns the exit status."""
    try:
        preflight.check_tracefile(cfg)          # the log opens it before the other checks
        log = preflight.opened_log(cfg, lambda: Logger.from_config(cfg))
    except preflight.PreflightError as exc:
        print(f"popper: {exc}", file=sys.stderr)
        return 1
    listeners: list[socket.socket] = []
    server_tls = None
    try:
        # the checks `popper --check-config` makes, from the same function
        checked = preflight.check_site(cfg, log,
                                       match_listen_entries=not sdnotify.passes_sockets())
        server_tls = checked.tls
        listeners, implicit_tls = open_listeners(cfg)
        proxied = proxy_listeners(checked.proxy_protocol, listeners)
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
        if cfg.daemon and sdnotify.supervised():
            # the option's promise: under systemd stay in the foreground; a detached master
            # would leave the unit's main process gone and its READY=1 refused
            log(syslog.LOG_NOTICE, "daemon ignored: systemd (NOTIFY_SOCKET) runs the master "
                                   "in the foreground")
        elif cfg.daemon:
            return _run_daemonized(cfg, invocation, listeners, log, server_tls, implicit_tls,
                                   proxied, checked.spool_mount)
        return Master(cfg, invocation, listeners, log, tls=server_tls,
                      implicit_tls=implicit_tls, proxied=proxied,
                      spool_mount=checked.spool_mount).serve()
    finally:
        for sock in listeners:
            sock.close()
        log.close()


def _run_daemonized(cfg, invocation, listeners, log, server_tls=None, implicit_tls=(),
                    proxied=(), spool_mount=None) -> int:
    """SysV-style: detach with python-daemon, write the pid file, keep the listeners and the
    syslog socket open across the detach."""
    import daemon
    import daemon.pidfile
    import lockfile

    pid_file = cfg.pid_file             # absolute (docs/options.md, "Paths")
    try:        # the daemon works from /: its reloads read argv's relative -f names from here
        invocation = dataclasses.replace(invocation, start_dir=os.getcwd())
    except OSError:
        pass                # a working directory removed: the names are left as they are
    if pid_file and os.path.lexists(pid_file):
        if not _pid_file_is_stale(pid_file):
            # python-daemon takes the pid file after detaching, where nobody would see why
            # it failed: refuse here, on the administrator's terminal.
            where = preflight.where_set(cfg, "pid-file")
            print(f"popper: pid-file {pid_file}{where}: held by a running master",
                  file=sys.stderr)
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
        where = preflight.where_set(cfg, "pid-file")
        print(f"popper: pid-file {pid_file}{where}: {exc or 'held by a running master'}",
              file=sys.stderr)
        return 1
    try:
        return Master(cfg, invocation, listeners, log, notify_systemd=False, tls=server_tls,
                      implicit_tls=implicit_tls, proxied=proxied,
                      spool_mount=spool_mount).serve()
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


