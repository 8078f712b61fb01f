"""One POP3 connection, run to its end in the current process.

It runs in the pre-login process (until the login is handed to the monitor) and in the user
session (from the login on), both forked by a connection's monitor (docs/privsep.md), or whole
in one process in tests. This module owns the I/O around the pure state machine in protocol.py: bounded
reads with the `timeout` option, buffered writes flushed once per reply batch (chunky-writes),
TCP_NODELAY so a reply never waits for a delayed ACK, the client's name, the privilege drop and
per-user option files at the moment of login, the end-of-session log lines, and the switch to
TLS (before the banner on an alternate-port listener, or after STLS) through tls.TlsChannel.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import signal
import socket
import syslog
import threading
import time

import setproctitle

from qpopper import bulletins, bulletins_maildir
from qpopper.server import privsep, user_options
from qpopper.server.channel import Channel, ChannelClosed
from qpopper.server.reply_writer import ReplyWriter
from qpopper.server import tls as tls_mod
from qpopper.server.tls_channel import HandshakeFailed, TlsChannel
from qpopper.auth.policy import Authenticator
from qpopper.extensions import standard_extensions
from qpopper.extensions.submit import MtaSubmitter
from qpopper.log import Logger, stats_line, timeout_line, timing_line
from qpopper.server.prelogin import Handover
from qpopper.server.reverse_lookup import ReverseLookup
from qpopper.pop3.protocol import Protocol, SessionStats
from qpopper.pop3.responses import PopError, RespCode
from qpopper.spool.maildir import INFO_SEPARATORS, maildir_path
from qpopper.spool.maildir_drop import MaildirDrop
from qpopper.spool.maildrop import Maildrop, resolve_server_mode
# Maildrop.open imports its two modes when called (they subclass it): imported here too, so
# the master has them before it forks and no session loads them on its own pages.
from qpopper.spool import normal_mode, server_mode
from qpopper.spool.paths import SpoolPaths

PRELOADED_MAILDROPS = (normal_mode, server_mode)
"""Loaded with the master (see the import above)."""

HANGUP_SIGNALS = (signal.SIGHUP, signal.SIGTERM)
"""Qpopper's catchSIGHUP: the session aborts (update-on-abort semantics) at the next read."""
HANGUP_REASONS = {signal.SIGHUP: "hangup (SIGHUP)",
                  signal.SIGTERM: "server shutdown (SIGTERM)"}
"""What the log says ended a session (the master sends TERM after shutdown-grace)."""
DISPLACE_SIGNAL = signal.SIGUSR1
"""The master ends a connection that has not logged in to make room for a newcomer: the
pre-login process answers -ERR [SYS/TEMP] and closes (docs/privsep.md, "Connection limits").
Every other process of the connection ignores it."""

CRASH_AT_ENV = "QPOPPER_TEST_CRASH_AT"
STEP_LOG_ENV = "QPOPPER_TEST_STEP_LOG"
"""Test-only fault injection (tests/test_server_faults.py): with QPOPPER_TEST_CRASH_AT=<step>
(or <step>#<n> for its n-th occurrence) the session process SIGKILLs itself when the maildrop
reaches that step (a crash the design must survive anyway); QPOPPER_TEST_STEP_LOG=<file>
appends each step's name. Both come from the environment of the server process, which only
its administrator controls; unset, no hook is installed at all."""

UNKNOWN_CLIENT = "unknown"



@contextlib.contextmanager
def kept_for_the_session():
    """Run the block without the cyclic collector, then freeze everything alive, the message
    list it built with it: tens of thousands of objects that live until the session ends,
    which the collections of the generations they age into, and every later full one, would
    walk and find nothing to free. A full collection first, so nothing the login left for the
    collector is frozen. gc.freeze is process-wide: for a session that has its process to
    itself only (docs/internals.md, "The message list and the collector")."""
    gc.collect()
    enabled = gc.isenabled()
    try:
        gc.disable()
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


# --- the session ------------------------------------------------------------------------------------
class Session(ReplyWriter):
    """One connection; also the `env` the protocol talks to (see docs/internals.md)."""

    def __init__(self, cfg, channel: Channel, *, log: Logger, hostname: str | None = None,
                 peer: tuple[str, int] | None = None, authenticator=None,
                 tls=None, tls_mode: str | None = None, handover=None, lookup=None,
                 client_host: str | None = None, tls_active: bool = False,
                 login_done: bool = False, own_process: bool = False):
        """`tls_mode`: None (plain text), "stls" (STLS offered) or "implicit" (the handshake
        comes before the banner: port 995); `tls` is a tls.ServerTls or a tls.TlsIdentity
        (built at the first handshake) for both.

        The split processes (docs/privsep.md) set the rest. The pre-login process:
        `handover(session, login)` instead of opening the maildrop (it raises
        prelogin.Handover), `lookup` its reverse lookup. The user session: `login_done`
        (the monitor verified the login and dropped privileges), `client_host` and
        `tls_active` as the pre-login process found them, `own_process` (the process is
        this session's alone: the maildrop is opened under kept_for_the_session); it starts
        with run(resume=...)."""
        self.cfg = cfg
        self.channel = channel
        self.log = log
        self.pid = os.getpid()
        self.hostname = hostname or socket.gethostname()
        peer = peer or channel.peer()
        # No peer address (a pipe: inetd-style tunnels such as fetchmail's ssh plugin): never
        # pretend to be local, clear-text-password=local must not apply.
        self.client_ip = peer[0] if peer else UNKNOWN_CLIENT
        self.client_port = peer[1] if peer else 0
        self._client_host: str | None = client_host
        if lookup is None and client_host is None and peer and cfg.reverse_lookup:
            lookup = ReverseLookup(self.client_ip)
        self._lookup = lookup
        self.tls = tls
        self.tls_mode = tls_mode if tls is not None else None
        self.tls_active = tls_active
        self.handover = handover
        self.handed_over = False
        self.login_done = login_done
        self.own_process = own_process
        self.server_euid = os.geteuid()    # made before any drop: root, or the demo's user
        # cb-name -> bytes once TLS is up: what SCRAM-*-PLUS binds to (docs/internals.md)
        self.channel_bindings: dict[str, bytes] = {}
        # the protocol offers STLS exactly when this is callable (docs/internals.md)
        self.start_tls = self._start_tls if self.tls_mode == "stls" else None
        self.authenticator = (authenticator if authenticator is not None or login_done
                              else Authenticator(cfg, log))
        self.user = ""
        self.login = None
        self.protocol = None
        ReplyWriter.__init__(self)     # the reply buffer, and client_gone
        self._hangup = False
        self._hangup_signal: int | None = None    # SIGHUP, SIGTERM: logged as such, not EOF
        self._displaced = False
        self._wake_r: int | None = None
        self._wake_w: int | None = None
        self._title_state = None
        self.started = time.monotonic()
        self.auth_s = self.init_s = self.clean_s = 0.0
        self.maildrop = None

    # --- env contract ---------------------------------------------------------------------------
    @property
    def client_host(self) -> str:
        if self._client_host is None:
            self._client_host = self._lookup.result() if self._lookup else self.client_ip
        return self._client_host

    def open_maildrop(self, login):
        """Called by the protocol once the user is authenticated (docs/internals.md). In the
        pre-login process it hands the connection over instead (never returns)."""
        if self.handover is not None:
            self.handed_over = True
            self.handover(self, login)
        begun = time.monotonic()
        self.auth_s = begun - self.started
        self.login = login
        self.user = login.user
        self._set_title()
        # Still root (unless the monitor did both already): shared hashed spool directories
        # are created now, owned like the spool directory; after the drop the user would own
        # them and could reach others' spools. Directories only the spool-dir options file
        # asks for must exist already (the user files are read after the drop;
        # ensure_hash_dirs then refuses to create them).
        global_paths = SpoolPaths.for_user(self.cfg, login.user, login.home)
        options_owner = self.server_euid   # who may own the spool options file
        if not self.login_done:
            spool_gid = spool_group(self.cfg)
            if self.cfg.check_hash_dir:
                global_paths.ensure_hash_dirs(self.log)
            privsep.drop_privileges(login, spool_gid, self.log)   # verifies; non-root: checks
        # Server mode: default/-S, then group-server-mode, then group-no-server-mode; the user
        # files below have the last word only when they set it (manual "Enabling Server Mode").
        self.cfg = resolve_server_mode(self.cfg, login.user, login.gid, self.log)
        self._apply_user_option_files(login, global_paths.options_file, options_owner)
        paths = SpoolPaths.for_user(self.cfg, login.user, login.home)
        in_maildir = maildir_path(self.cfg.maildir, login.user, login.home)   # docs/maildir.md
        # New bulletins go into the spool (or new/) like a delivery agent's mail, so the
        # maildrop takes them up (docs/bulletins.md); a spool's under the session lock.
        deliver_bulletins = functools.partial(bulletins.deliver, self.cfg, login, paths,
                                              self.hostname, self.log, step_hook=test_step_hook())
        if in_maildir is not None:
            # A Maildir's paths are the user's to point anywhere: no spool group for them
            # (docs/privsep.md, "Maildir users"); the bulletin record may still need it.
            privsep.leave_spool_group(login.gid, self.log)
            bulletins_maildir.deliver(self.cfg, login, in_maildir, self.hostname, self.log,
                                      step_hook=test_step_hook(),
                                      spool_group=privsep.spool_group)
            privsep.drop_spool_group(login.gid, self.log)
        try:
            with kept_for_the_session() if self.own_process else contextlib.nullcontext():
                if in_maildir is not None:
                    drop = MaildirDrop.open(in_maildir, login.user, test_step_hook(), self.log,
                                            INFO_SEPARATORS[self.cfg.maildir_info_separator])
                else:
                    drop = Maildrop.open(self.cfg, paths, login.user,
                                         step_hook=test_step_hook(), log=self.log,
                                         under_session_lock=deliver_bulletins)
        except OSError as exc:
            raise PopError("Unable to open your maildrop; contact your administrator",
                           RespCode.SYS_TEMP, log=f"opening maildrop of {login.user}: {exc}") from None
        self.init_s = time.monotonic() - begun
        self.maildrop = SessionMaildrop(drop, self)
        return self.maildrop

    def _apply_user_option_files(self, login, spool_options_file: str, owner: int) -> None:
        cfg = user_options.apply(self.cfg, login, spool_options_file, owner, self.log)
        if cfg is not self.cfg:
            self.cfg = cfg
            if self.protocol is not None and hasattr(self.protocol, "cfg"):
                self.protocol.cfg = cfg

    # --- the loop ------------------------------------------------------------------------------
    def run(self, resume=None) -> int:
        """Serve the connection to its end; returns the process exit status. `resume`:
        (login, unread bytes, bad-command count) of a login the monitor handed over."""
        self._install_hangup_handlers()
        error = False
        try:
            self.protocol = Protocol(self.cfg, self, standard_extensions(MtaSubmitter()))
            self._set_title()
            if resume is not None:
                self.protocol.resume(*resume)
                self._set_title()              # TRANSACTION now, not at the next command
            else:
                if self.tls_mode == "implicit" and not self._handshake():
                    # Qpopper: a failed alternate-port handshake ends the process, no banner
                    return 0
                self.protocol.greeting()
            self.flush()
            while not self.protocol.closed:
                if self._displaced and not self.client_gone:
                    self.protocol.displaced()
                    error = True
                    break
                if self._hangup_signal is not None:
                    self.protocol.ended_by_signal(HANGUP_REASONS[self._hangup_signal])
                    error = True
                    break
                if self.client_gone:
                    self.protocol.eof()
                    error = True
                    break
                data = self.channel.read(self.protocol.read_timeout(self.cfg.timeout),
                                         self._wake_r, lambda: self._hangup)
                if data is None and self._hangup:
                    continue                      # loop top ends it as a hangup
                if data is None:
                    if not self.protocol.login_deadline_passed():     # it logs its own line
                        self.log(syslog.LOG_NOTICE, timeout_line(
                            self.cfg.timeout, self._protocol_user(), self.client_host,
                            self.client_ip))
                    self.protocol.timeout()
                    error = True
                    break
                if not data and self._hangup:
                    continue                      # the relay ended with us: not the client
                if not data:
                    self.protocol.eof()
                    error = True
                    break
                self.protocol.feed(data)
                self.flush()
                self._set_title()
            self.flush()
            error = error or self.protocol.client_went
        except ChannelClosed:
            error = True
        except Handover:
            self.flush()                 # nothing is pending: replies before the login went
        finally:
            self._finish(error)
        return 0

    # --- TLS ---------------------------------------------------------------------------------
    def _start_tls(self) -> bool:
        """env.start_tls for STLS, called by the protocol after its `+OK` and after it threw
        away every buffered line. Everything read from the socket so far went to the protocol
        with that read (run() feeds each read whole), so no plaintext survives the upgrade:
        bytes arriving from now on are handshake bytes. A failed handshake ends the session:
        the client's TLS state is unknown and plain text cannot resume."""
        self.flush()                                   # the +OK goes out in plain text
        if self.client_gone:
            return False
        if not self._handshake():
            self.client_gone = True
            return False
        return True

    def _handshake(self) -> bool:
        if isinstance(self.tls, tls_mod.TlsIdentity):
            try:
                self.tls = self.tls.build(self.log)       # read the key only here
            except tls_mod.TlsSetupError as exc:
                self.log(syslog.LOG_ERR, f"TLS: {exc}")
                self.client_gone = True
                return False
        channel = TlsChannel(self.channel, self.tls.context)
        try:
            # the login deadline (login-timeout) covers the handshake too
            channel.handshake(self.protocol.read_timeout(self.cfg.timeout), self._wake_r,
                              lambda: self._hangup)
        except HandshakeFailed as exc:
            self.log(syslog.LOG_NOTICE,
                     f"TLS handshake with {self.client_ip} failed: {exc}")
            self.client_gone = True
            return False
        self.channel = channel
        self.tls_active = True
        self.channel_bindings = channel.channel_bindings()
        # the session's TLS line: version and cipher (Qpopper logs its handshake at notice)
        self.log(syslog.LOG_INFO, f"TLS session with {self.client_ip}: {channel.summary()}")
        return True

    def _finish(self, error: bool) -> None:
        try:
            self.flush()
        except Exception:
            pass
        if self.handed_over:
            # the user session has the connection now (or, inside TLS, this process relays
            # for it): nothing here may close or shut it down
            self._remove_hangup_handlers()
            return
        self.channel.close()
        if self.maildrop is not None:
            # After update/restore this is a no-op; after a failure it releases the session
            # lock and leaves the temp drop for the next login's recovery.
            try:
                self.maildrop.close()
            except OSError as exc:
                self.log(syslog.LOG_ERR, f"closing the maildrop of {self.user}: {exc}")
        if self.cfg.timing:
            self.log(syslog.LOG_INFO, timing_line(self._protocol_user(), self.client_host,
                                                  error, self.auth_s, self.init_s, self.clean_s))
        self._remove_hangup_handlers()

    def _protocol_user(self) -> str:
        return self.user or str(getattr(self.protocol, "user", "") or "")

    # --- signals ---------------------------------------------------------------------------------
    def _install_hangup_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for signum in HANGUP_SIGNALS:
            signal.signal(signum, self._on_hangup)
        if self.handover is not None:                  # the pre-login process
            signal.signal(DISPLACE_SIGNAL, self._on_displaced)

    def _on_hangup(self, signum, frame) -> None:
        self._hangup = True        # acted on at the next read (the wakeup pipe ends the wait)
        self._hangup_signal = signum

    def _on_displaced(self, signum, frame) -> None:
        self._displaced = self._hangup = True

    def _remove_hangup_handlers(self) -> None:
        if self._wake_r is None:
            return
        signal.set_wakeup_fd(-1)
        for signum in HANGUP_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        if self.handover is not None:
            signal.signal(DISPLACE_SIGNAL, signal.SIG_IGN)    # a TLS relay stays
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._wake_r = self._wake_w = None

    # --- process title ----------------------------------------------------------------------------
    def _set_title(self) -> None:
        state = getattr(self.protocol, "state", None)
        state = getattr(state, "name", state) or "AUTHORIZATION"
        key = (self.user, state)
        if key == self._title_state:
            return
        self._title_state = key
        who = f"{self.user}@{self.client_ip}" if self.user else self.client_ip
        setproctitle.setproctitle(f"popper: {who} {str(state).upper()}")


class SessionMaildrop:
    """The Maildrop as the protocol sees it, plus what the session logs around the update:
    the Stats line (`-s`, at the start of the update, as Qpopper) and the cleanup time."""

    def __init__(self, drop: Maildrop, session: Session):
        self._drop = drop
        self._session = session
        # bound once: __getattr__ would look them up again for every RETR and TOP
        self.check_available, self.send = drop.check_available, drop.send

    def __getattr__(self, name):
        return getattr(self._drop, name)

    def update(self, deleted, retrieved):
        session = self._session
        if session.cfg.statistics:
            stats = SessionStats.of(self._drop.messages, deleted)
            session.log(syslog.LOG_NOTICE, stats_line(
                session.user, stats.deleted_messages, stats.deleted_octets, stats.messages_left,
                stats.octets_left, session.client_host, session.client_ip))
        begun = time.monotonic()
        try:
            return self._drop.update(deleted, retrieved)
        finally:
            session.clean_s += time.monotonic() - begun

    def restore(self, *args, **kwargs):
        begun = time.monotonic()
        try:
            return self._drop.restore(*args, **kwargs)
        finally:
            self._session.clean_s += time.monotonic() - begun


def test_step_hook():
    """The test-only maildrop step hook (see CRASH_AT_ENV), or None in normal operation."""
    crash_at = os.environ.get(CRASH_AT_ENV)
    step_log = os.environ.get(STEP_LOG_ENV)
    if not crash_at and not step_log:
        return None

    crash_step, _, nth = (crash_at or "").partition("#")
    remaining = int(nth) if nth else 1

    def hook(name: str) -> None:
        nonlocal remaining
        if step_log:
            fd = os.open(step_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                os.write(fd, name.encode() + b"\n")
            finally:
                os.close(fd)
        if crash_step and name == crash_step:
            remaining -= 1
            if remaining == 0:
                os.kill(os.getpid(), signal.SIGKILL)

    return hook


# --- inetd mode -------------------------------------------------------------------------------------
def spool_group(cfg) -> int:
    """The spool directory's group: the session's effective group after the drop."""
    try:
        return os.stat(cfg.spool_dir).st_gid
    except OSError as exc:
        raise PopError("Unable to open the mail spool; contact your administrator",
                       RespCode.SYS_TEMP, log=f"stat {cfg.spool_dir}: {exc}") from None


def tls_mode_for_listen_port(cfg) -> str | None:
    """The TLS mode tls-support gives a connection on a `listen` port (or on stdin)."""
    return {"stls": "stls", "alternate-port": "implicit"}.get(cfg.tls_support)
