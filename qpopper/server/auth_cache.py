"""The authentication cache process: one long-lived root process under the master.

    master (root) ── fork ──► auth cache (root, "popper: auth cache")
       │ holds both ends of a SOCK_SEQPACKET pair; never reads either
       └─ fork ──► monitor (root): the request end, inherited; closed before the pre-login
                   process is forked and before the monitor becomes the user session

Started by the master when auth-cache-size is not 0 (and PAM checks passwords); started
again, at most once a second, when it dies; replaced by a fresh one on every HUP, which is
how the cache is emptied (its memory goes back to the kernel with it). The master never
waits for it. It answers only monitors, through the socket pair's request end:

    CACHE_LOOKUP  generation, key, and a socket (SCM_RIGHTS) for the answer:
                  CACHE_VERDICT with the verdict, or empty
    CACHE_STORE   generation, key, verdict, when PAM was asked: no answer

(frames of server/monitor_wire.py). A request of another generation — a monitor forked
before the last HUP — is answered "not remembered" and its store ignored. What the keys
and verdicts are: auth/password_cache.py. The process locks its memory (mlockall, so no
entry reaches swap), is not dumpable, writes no core file, and logs only counts.
docs/auth-cache.md has the design and its trade-offs.
"""

from __future__ import annotations

import collections
import ctypes
import os
import resource
import signal
import socket
import syslog
import time

import setproctitle

from qpopper import limits
from qpopper.auth import password_cache
from qpopper.server import monitor_wire as wire
from qpopper.server import privsep

MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4
"""mlockall's flags (sys/mman.h). ONFAULT: pages are locked as they are touched, so the
master's shared pages are not copied nor the whole interpreter made resident."""

NS_PER_S = 1_000_000_000


class CacheTable:
    """key → (expiry, verdict), least recently used first; bounded by `size` entries."""

    def __init__(self, size: int, ttl_s: int, negative_ttl_s: int):
        self.size = size
        self.ttl_ns = ttl_s * NS_PER_S
        self.negative_ttl_ns = negative_ttl_s * NS_PER_S
        self.entries: collections.OrderedDict[bytes, tuple[int, str]] = collections.OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: bytes, now_ns: int) -> str | None:
        entry = self.entries.get(key)
        if entry is None or entry[0] <= now_ns:
            if entry is not None:
                del self.entries[key]
            self.misses += 1
            return None
        self.entries.move_to_end(key)
        self.hits += 1
        return entry[1]

    def put(self, key: bytes, verdict: str, asked_at_ns: int, now_ns: int) -> None:
        """The entry lives from when PAM was asked (a slow PAM does not lengthen it)."""
        ttl = self.ttl_ns if password_cache.is_right(verdict) else self.negative_ttl_ns
        if ttl <= 0:
            return
        self.entries[key] = (min(asked_at_ns, now_ns) + ttl, verdict)
        self.entries.move_to_end(key)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)


class Stop(Exception):
    """SIGTERM: the master replaces or ends this process."""


def _stop(signum, frame):
    raise Stop


def serve(sock: socket.socket, table: CacheTable, generation: int, log) -> int:
    """Answer requests until SIGTERM; then log the counts and return."""
    try:
        while True:
            try:
                _answer_one(sock, table, generation)
            except OSError:
                continue         # one request's trouble (a bad answer descriptor) is its own
    except Stop:
        pass
    log(syslog.LOG_INFO, f"auth cache: {len(table.entries)} entries forgotten; "
                         f"{table.hits} hits, {table.misses} misses")
    return 0


def _answer_one(sock: socket.socket, table: CacheTable, generation: int) -> None:
    data, fds, flags, _ = socket.recv_fds(sock, wire.MAX_FRAME_OCTETS + 1, 1)
    try:
        reply_to = socket.socket(fileno=fds[0]) if fds else None
    except OSError:
        os.close(fds[0])
        raise
    try:
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            return
        try:
            frame = wire.decode(data, wire.CACHE_REQUESTS)
        except wire.FrameError:
            return
        current = frame.fields[0] == str(generation).encode()
        now = time.monotonic_ns()
        if frame.kind is wire.Kind.CACHE_LOOKUP:
            if reply_to is None or reply_to.type != socket.SOCK_SEQPACKET:
                return
            verdict = table.get(frame.fields[1], now) if current else None
            try:
                reply_to.send(wire.encode(wire.Kind.CACHE_VERDICT, verdict or ""))
            except OSError:
                pass                     # the monitor gave up waiting
        elif current and reply_to is None:
            asked_at = password_cache.stored_count(frame.text(3))
            if asked_at is not None:
                table.put(frame.fields[1], frame.text(2), asked_at, now)
    finally:
        if reply_to is not None:
            reply_to.close()


def _lock_in(log, master: int) -> None:
    """No core, not dumpable, ended with the `master` (Stop when it went before the signal
    was asked for), memory locked (where the kernel lets us: a failure is logged, not fatal
    — the cache is still worth having)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    privsep.prctl(privsep.PR_SET_DUMPABLE, 0)
    privsep.prctl(privsep.PR_SET_PDEATHSIG, signal.SIGKILL)    # the master gone: so are we
    if os.getppid() != master:
        raise Stop
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) != 0:
        err = ctypes.get_errno()
        log(syslog.LOG_WARNING, f"auth cache: cannot lock its memory ({os.strerror(err)}); "
                                f"entries may be swapped out")


class AuthCacheProcess:
    """The master's handle: the socket pair, the salt, the process."""

    def __init__(self):
        self.salt = password_cache.new_salt()      # per master start
        self.generation = 0                        # HUPs so far
        self.pid: int | None = None
        self.retired: list[int] = []               # replaced processes not yet reaped
        self.started_at = float("-inf")
        self.requests: socket.socket | None = None
        self.serving: socket.socket | None = None

    @staticmethod
    def wanted(cfg) -> bool:
        return bool(cfg.auth_cache_size) and cfg.user_database == "system"

    def start(self, cfg, log) -> None:
        """Start the process when `cfg` wants one and none runs."""
        if not self.wanted(cfg) or self.pid is not None:
            return
        if self.requests is None:
            self.requests, self.serving = socket.socketpair(
                socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.started_at = time.monotonic()
        # TERM held back until the child has its own handler: a HUP right after this start
        # must still end it
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        master, pid = os.getpid(), -1
        try:
            pid = os.fork()
        except OSError as exc:
            log(syslog.LOG_ERR, f"auth cache: fork: {exc.strerror}")
            return
        finally:
            if pid != 0:                           # the master, whether or not it forked
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        if pid == 0:
            self._run(cfg, log, master)            # never returns
        self.pid = pid

    def keep_running(self, cfg, log) -> None:
        """Called from the master's loop: reap what ended; start a dead cache again, at most
        once every limits.AUTH_CACHE_RESTART_INTERVAL_S."""
        self.retired = [pid for pid in self.retired if not _ended(pid)]
        if self.pid is not None and _ended(self.pid):
            log(syslog.LOG_ERR, "auth cache process ended; starting another")
            self.pid = None
        if (self.pid is None and time.monotonic() - self.started_at
                >= limits.AUTH_CACHE_RESTART_INTERVAL_S):
            self.start(cfg, log)

    def restart(self, cfg, log) -> None:
        """HUP: forget everything learnt so far (a new process, a new generation), with the
        settings of `cfg`."""
        self.generation += 1
        self.stop()
        if not self.wanted(cfg):
            self.close()              # monitors forked from now on get no handle
            return
        self.started_at = float("-inf")
        self.start(cfg, log)

    def stop(self) -> None:
        """Tell the process to end (SIGTERM; it logs its counts); never waits for it."""
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self.retired.append(self.pid)
            self.pid = None

    def close(self) -> None:
        """The master's end: stop the process, close both ends."""
        self.stop()
        for sock in (self.requests, self.serving):
            if sock is not None:
                sock.close()
        self.requests = self.serving = None

    # --- in a forked monitor --------------------------------------------------------------
    def for_monitor(self) -> password_cache.PasswordCache | None:
        """In a monitor just forked: close the serving end; the handle on the request end
        (None when the cache is off). The monitor must close `handle.fd` in its children."""
        if self.serving is not None:
            self.serving.close()
            self.serving = None
        if self.requests is None:
            return None
        fd = self.requests.detach()
        self.requests = None
        return password_cache.PasswordCache(fd, self.salt, self.generation)

    # --- the process ------------------------------------------------------------------------
    def _run(self, cfg, log, master: int):
        status = 1
        try:
            serving = self.serving
            _become_cache_process(keep={0, 1, 2, serving.fileno(), *log.fds()})
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
            _lock_in(log, master)
            table = CacheTable(cfg.auth_cache_size, cfg.auth_cache_ttl,
                               cfg.auth_cache_negative_ttl)
            log(syslog.LOG_INFO, f"auth cache: up to {table.size} entries, {cfg.auth_cache_ttl} s, "
                                 f"negative {cfg.auth_cache_negative_ttl} s")
            status = serve(serving, table, self.generation, log)
        except Stop:
            status = 0                             # ended before it served
        except BaseException as exc:
            try:
                log(syslog.LOG_ERR, f"auth cache failed: {type(exc).__name__}")
            except BaseException:
                pass
        finally:
            os._exit(status)


def _become_cache_process(keep: set[int]) -> None:
    """Shed the master: its signal handling, and every descriptor but `keep` (listeners,
    its pipes, the TLS files, the request end)."""
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, _stop)
    setproctitle.setproctitle("popper: auth cache")
    low = 0
    for fd in sorted(keep) + [os.sysconf("SC_OPEN_MAX")]:
        if fd > low:                  # closerange(n, n) would close everything from n on
            os.closerange(low, fd)
        low = fd + 1


def _ended(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True                 # the master's own reaping got it first
    return done == pid
