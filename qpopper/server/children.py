"""What every forked process of the server shares: how it ends (never back into its
parent's code), the error that ends a connection whose pre-login process misbehaved, and
ForkedCall: a function run in a forked child, its answer read back with a deadline (the
second part of a big mbox scan, the pre-login process's reverse lookup)."""

from __future__ import annotations

import gc
import marshal
import os
import resource
import select
import signal
import struct
import syslog
import time
from typing import Callable, Iterable, NoReturn


def log_failure(log, what: str, exc: BaseException, priority: int = syslog.LOG_ERR) -> None:
    """A forked process's last word before os._exit: logging must not stop the exit."""
    try:
        log(priority, f"{what} failed: {type(exc).__name__}: {exc}")
    except BaseException:
        pass


def exited_within(pid: int, timeout_s: float, serve=None) -> bool:
    """Whether the child `pid` has exited (left unreaped) within timeout_s; True when it is
    gone already. `serve`, when given, is read meanwhile (`serve.forward()` each time its
    descriptor is readable): the log records of a pre-login process, which may be blocked
    sending one. Without pidfd_open (an old kernel, a seccomp profile) the child is looked
    at every EXIT_POLL_S instead."""
    deadline = time.monotonic() + timeout_s
    try:
        watch = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:
        return _exited_by_polling(pid, deadline, serve)
    try:
        while True:
            left = deadline - time.monotonic()
            ready = select.select([watch, *([serve] if serve else [])], [], [],
                                  max(0.0, left))[0]
            if watch in ready:
                return True
            if not ready or left <= 0:       # past the deadline, whatever is still sent
                return False
            serve.forward()
    finally:
        os.close(watch)


EXIT_POLL_S = 0.05


def _exited_by_polling(pid: int, deadline: float, serve) -> bool:
    while True:
        try:
            # WNOWAIT: the child stays waitable, for reap() and its status
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return True
        if time.monotonic() >= deadline:
            return False
        if select.select([serve] if serve else [], [], [], EXIT_POLL_S)[0]:
            serve.forward()


def kill_quietly(pid: int) -> None:
    """SIGKILL `pid`, a child not reaped yet (so the pid is still its own); one already gone
    is no error."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def reap(pid: int) -> int:
    """waitpid for the child `pid`: its exit status (0 when it was reaped already, or when
    a signal ended it: reap_code tells those apart)."""
    return max(0, reap_code(pid) or 0)


def reap_code(pid: int) -> int | None:
    """waitpid for the child `pid`: its exit code, minus the signal that ended it (as
    os.waitstatus_to_exitcode), or None when it was reaped already."""
    while True:
        try:
            _, wait_status = os.waitpid(pid, 0)
        except ChildProcessError:
            return None
        except InterruptedError:
            continue
        return os.waitstatus_to_exitcode(wait_status)


def close_sockets(*socks) -> None:
    """Close each socket given; None stands for one there is not."""
    for sock in socks:
        if sock is not None:
            sock.close()


def exit_after(log, what: str, body) -> NoReturn:
    """The end of every forked child: run `body()` and leave with the status it returns,
    through os._exit — a child never falls back into its parent's code, whatever it
    raised (logged as `what` failed)."""
    status = 1
    try:
        status = body()
    except BaseException as exc:
        log_failure(log, what, exc)
    finally:
        os._exit(status)


class ProtocolViolation(Exception):
    """The pre-login process sent what it never should: the connection ends."""


def _max_fd() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if 0 < soft < 1 << 20 else 1 << 20


def close_fds(fds: Iterable[int]) -> None:
    """Close each descriptor in `fds`; one closed already is no error."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def standard_fds_to_null(keep: Iterable[int] = ()) -> None:
    """Point descriptors 0-2, except those in `keep`, at /dev/null: in inetd mode they are
    the client's socket, under systemd 1 and 2 are the journal's stream (whoever writes
    there writes journal entries under the server's name)."""
    keep = set(keep)
    try:
        null = os.open(os.devnull, os.O_RDWR)
    except OSError:                     # no /dev/null: closed is as good
        null = -1
    for fd in {0, 1, 2} - keep - {null}:
        try:
            os.dup2(null, fd, inheritable=False) if null >= 0 else os.close(fd)
        except OSError:
            pass
    if null > 2 and null not in keep:
        os.close(null)


def _close_all_but(keep: Iterable[int]) -> None:
    """Close every descriptor from 3 up except `keep`, and point 0-2 (not kept) at /dev/null."""
    keep = set(keep)
    standard_fds_to_null(keep)
    low = 3
    for fd in sorted(keep):
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, _max_fd())


def default_signals() -> None:
    """A helper child takes no part in its parent's signal handling: default actions, no
    wakeup descriptor (a hangup ends it, and the parent does without its answer)."""
    signal.set_wakeup_fd(-1)
    for signum in signal.valid_signals():
        if callable(signal.getsignal(signum)):
            signal.signal(signum, signal.SIG_DFL)


_LENGTH = struct.Struct("=Q")


class ForkedCall:
    """`work()` run in a forked child; its return value comes back over a pipe,
    length-prefixed: what marshal can write (numbers, strings, bytes, tuples, lists), or with
    `raw` the bytes it returns, as they are. The child keeps no descriptor but its pipe and
    `keep` (not the client's socket, not a spool lock: a flock lives as long as any holder of
    its open file; 0-2 become /dev/null), runs no finalizer of the parent's objects and takes
    default signals; it always leaves by os._exit. The parent asks `result(deadline)`: the
    answer, or None when there is no whole one by then or it is longer than `max_octets`; the
    child is killed if still there and reaped either way, so none is left a zombie (with
    `reap=False` it is left one: its pid stays its own while this process lives, for a
    caller whose system-call filter lets it signal that pid; the pre-login process).
    The caller checks the answer's shape. marshal is not hardened against crafted data, so
    it is only for a child no more exposed than its reader (the mbox helper: the session's
    own user, reading the session's own spool); a child that talks to the network (the
    reverse lookup) answers `raw`, with a `max_octets`."""

    def __init__(self, pid: int, fd: int, raw: bool = False, max_octets: int | None = None,
                 reap: bool = True):
        self.pid = pid
        self.fd = fd
        self.raw = raw
        self.max_octets = max_octets
        self.reap = reap

    @classmethod
    def start(cls, work: Callable[[], object], keep: Iterable[int] = (), *, raw: bool = False,
              max_octets: int | None = None, reap: bool = True) -> "ForkedCall | None":
        """The child started, or None when no pipe or no process could be made."""
        try:
            r, w = os.pipe2(os.O_CLOEXEC)
        except OSError:
            return None
        try:
            pid = os.fork()
        except OSError:
            os.close(r)
            os.close(w)
            return None
        if pid == 0:                                   # the child: never returns
            code = 1
            try:
                gc.disable()
                _close_all_but((w, *keep))
                default_signals()
                data = work() if raw else marshal.dumps(work())
                if not isinstance(data, bytes):
                    raise TypeError("a raw ForkedCall must return bytes")
                view = memoryview(_LENGTH.pack(len(data)) + data)
                while view:
                    view = view[os.write(w, view):]
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        return cls(pid, r, raw, max_octets, reap)

    def result(self, deadline: float):
        """The child's answer, or None past `deadline` (time.monotonic()) or when it ended
        without a whole one (or was discarded)."""
        if self.fd < 0:
            return None
        try:
            data = self._read(deadline)
        finally:
            self.discard()
        if data is None or len(data) < _LENGTH.size \
                or _LENGTH.unpack_from(data)[0] != len(data) - _LENGTH.size:
            return None
        if self.raw:
            return data[_LENGTH.size:]
        try:
            return marshal.loads(data[_LENGTH.size:])
        except (EOFError, ValueError, TypeError):
            return None

    def _read(self, deadline: float) -> bytes | None:
        """Everything the child writes, up to its end; None past the deadline or past
        max_octets (and the length prefix)."""
        chunks = []
        size = 0
        limit = None if self.max_octets is None else self.max_octets + _LENGTH.size
        poller = select.poll()                  # any descriptor number (select: < 1024)
        poller.register(self.fd, select.POLLIN)
        while True:
            left = deadline - time.monotonic()
            try:
                if left <= 0 or not poller.poll(max(1, int(left * 1000))):
                    return None
                chunk = os.read(self.fd, 1 << 20)
            except InterruptedError:
                continue
            except OSError:
                return None
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if limit is not None and size > limit:
                return None
            chunks.append(chunk)

    def discard(self) -> None:
        """End the child without its answer (killing one already gone is harmless: it is
        not reaped yet, so its pid is still its own); once only."""
        if self.fd < 0:
            return
        kill_quietly(self.pid)
        os.close(self.fd)
        self.fd = -1
        if not self.reap:
            return
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
