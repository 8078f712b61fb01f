"""The master's reload (SIGHUP) and stop (SIGTERM, SIGINT): a new configuration for new
connections, or no new connections and a grace period for the running ones; and what the
health checks found of spool-dir, logged when it changes."""

from __future__ import annotations

import errno
import os
import signal
import syslog
import time

from qpopper import config as config_mod
from qpopper.auth import pam as pam_auth
from qpopper.server import preflight, privsep
from qpopper.server import tls as tls_mod
from qpopper.server.listeners import proxy_listeners
from qpopper.server.session import tls_mode_for_listen_port
from qpopper.spool.mounts import MOUNT_GONE, spool_mount_state
from qpopper.log import Logger

KILL_AFTER_TERM_S = 5
"""After the grace period children get SIGTERM (they abort like a hangup); this long later,
SIGKILL (a crash the maildrop recovers from at the next login)."""

REAP_INTERVAL_S = 1.0
"""The loop also wakes this often, so a lost SIGCHLD never leaves zombies for long."""


class Lifecycle:
    """Part of Master (server/master.py): see the module docstring."""

    # --- HUP and TERM --------------------------------------------------------------------------------
    def on_reload(self) -> None:
        """HUP: read the configuration again for new connections; a bad one is logged and
        the running one kept. The log is rebuilt (debug, tracefile, log-facility); the
        listeners stay as they were opened at start-up, and proxy-protocol says anew which
        of them read a PROXY header."""
        self._notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        new_log = new_tls = None
        try:
            new_cfg = self.reload()
            preflight.check_tracefile(new_cfg)
            new_log = preflight.opened_log(new_cfg, lambda: self.log.reconfigured(new_cfg))
            # start-up's checks (a renewed certificate is read here); the listeners stay, so
            # the proxy-protocol entries are matched against them
            checked = preflight.check_site(new_cfg, new_log, match_listen_entries=False)
            new_tls = checked.tls
            proxied = proxy_listeners(checked.proxy_protocol, self.listeners)
            dropped = self._tls_port_dropped(new_cfg, new_tls)
            if dropped:
                # a port that spoke TLS from the first byte never falls back to plain text
                raise tls_mod.TlsSetupError(dropped)
        except Exception as exc:
            for opened in (new_log, new_tls):
                if opened is not None:
                    opened.close()
            self.log(syslog.LOG_ERR, f"reload failed, keeping the running configuration: {exc}")
        else:
            self._replace_log(new_log)
            before = self.spool_mount
            moved = (new_cfg.spool_dir == self.cfg.spool_dir
                     and None not in (before, checked.spool_mount)
                     and checked.spool_mount != before)
            self.cfg = new_cfg
            self.proxied = set(proxied)     # which listeners read a PROXY header, from now on
            if moved and _unmounted(new_cfg.spool_dir, before):
                # the mount is gone now: taking the empty mount point's file system for the
                # spool's would pass every check from here on (a mount that came back under
                # a new device number is the same mount point: not "moved")
                self.log(syslog.LOG_WARNING, f"spool-dir {new_cfg.spool_dir} is no longer "
                                             f"on the file system mounted at {before}; "
                                             f"health checks keep failing until it is back")
            else:
                if moved:                  # spool-dir moved to another mount on purpose
                    self.log(syslog.LOG_NOTICE, f"spool-dir {new_cfg.spool_dir} is now on "
                                                f"the file system mounted at "
                                                f"{checked.spool_mount} (was: {before})")
                self.spool_mount = checked.spool_mount     # the health checks' from now on
            if self.tls is not None:
                self.tls.close()           # running sessions keep their own copies
            self.tls = new_tls
            self._preload_pam()            # a changed service, an upgraded module file
            self.log(syslog.LOG_NOTICE, "configuration reloaded")
            if listen_entries(new_cfg) != self.opened_for:
                self.log(syslog.LOG_NOTICE, "listen and tls-listen changed: the listeners "
                                            "stay those start-up opened until a restart")
            if new_tls is not None:
                self.log(syslog.LOG_INFO, f"TLS certificate {new_tls.description}")
        self.auth_cache.restart(self.cfg, self.log)     # HUP empties it, even if the reload failed
        self._notify("READY=1\nSTATUS=accepting connections")

    def spool_health_found(self, state: str) -> None:
        """A health check's notice (server/monitor_proxy.py): "ok", MOUNT_GONE (spool-dir
        no longer on the file system mounted at the recorded mount point) or the errno name
        of a failed stat. Logged when it changes, not at every check (HAProxy's come every 2 s)."""
        if state == self.spool_health or not (state in ("ok", MOUNT_GONE)
                                               or state in errno.errorcode.values()):
            return
        self.spool_health = state
        path = self.cfg.spool_dir
        if state == "ok":
            self.log(syslog.LOG_NOTICE, f"health checks pass again: spool-dir {path} is back")
        elif state == MOUNT_GONE:
            self.log(syslog.LOG_WARNING, f"health checks fail: spool-dir {path} is no longer "
                                         f"on the file system mounted at {self.spool_mount}; "
                                         f"the balancer is answered -ERR")
        else:
            self.log(syslog.LOG_WARNING, f"health checks fail: spool-dir {path} cannot be "
                                         f"examined ({os.strerror(getattr(errno, state))}); "
                                         f"the balancer is answered -ERR")

    def _tls_port_dropped(self, new_cfg, new_tls) -> str | None:
        """Why the reload would make a listener that now speaks TLS from the first byte (a
        tls-listen port, or any listen port under tls-support alternate-port, set at start-up
        or by a reload) speak plain text; None when none would. Each is a POP3S port to its
        clients, whichever option made it one, until a restart (docs/operations.md,
        "Start-up checks")."""
        if new_tls is not None and tls_mode_for_listen_port(new_cfg) == "implicit":
            return None                       # every listener speaks TLS from the first byte
        kept = self.implicit_tls if new_tls is not None else set()
        dropped = [listener for listener in self.listeners
                   if self._tls_mode(listener) == "implicit" and listener not in kept]
        if not dropped:
            return None
        if any(listener in self.implicit_tls for listener in dropped):
            return ("the tls-listen ports opened at start-up speak TLS until a restart, "
                    "whatever the file says now: they still need a certificate and TLS set up "
                    "(tls-support stls or alternate-port, or tls-listen)")
        return ("tls-support alternate-port made the listen ports TLS ports, which they stay "
                "until a restart: keep tls-support alternate-port and a certificate")

    def _preload_pam(self) -> None:
        """libpam's bindings, the PAM service's modules and the name service's, loaded once
        here rather than in every session (auth/pam.py, preload; privsep.warm_name_service)."""
        if self.cfg.user_database == "system":
            pam_auth.preload(self.cfg.pam_service)
        privsep.warm_name_service(self.cfg)

    def _replace_log(self, new_log: Logger) -> None:
        self.log.close()            # closing twice is harmless: the start-up one's owner will
        self.log = new_log

    def _load_configuration(self):
        # relative -f names from where popper started, not from / (the detached master's)
        return config_mod.load(list(self.invocation.argv), self.invocation.start_dir)[0]

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


def listen_entries(cfg) -> tuple[frozenset[str], frozenset[str]]:
    """The listen and tls-listen entries, which only a start applies (docs/operations.md,
    "Start-up checks"): a reload that changes them is told so, not silently half-applied.
    Their order opens nothing new: compared as sets."""
    return frozenset(cfg.listen or ()), frozenset(cfg.tls_listen or ())


def _unmounted(spool_dir: str, mount_point: str) -> bool:
    """Is spool-dir off the file system recorded as mounted at `mount_point` (or not to
    be examined)?"""
    # the root file system stays mounted: nothing to examine (nor a spool-dir gone to blame)
    return mount_point != "/" and spool_mount_state(spool_dir, mount_point) != "ok"
