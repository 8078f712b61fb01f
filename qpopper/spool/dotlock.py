"""The dot-lock `<spool>.lock` that every Debian delivery agent honours (`DotLock`), and the
waiting budget all spool locks share (`LockTiming`). Its rules (content, staleness, refresh,
taking a stale lock away): docs/maildrop.md, "The locking rules"; across hosts:
docs/scale-out.md, "Locks across hosts".
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import stat
import syslog
import time
from dataclasses import dataclass
from typing import Callable

from qpopper import limits
from qpopper.spool import mounts
from qpopper.spool.durable import rename_no_replace, unlink_if_present

StepHook = Callable[[str], None]
Log = Callable[[int, str], None]

DOTLOCK_MODE = 0o644
"""liblockfile's mode: other lockers (dotlockfile runs setgid mail) can read the pid in it."""

POLL_S = 0.1
"""How often a busy lock is tried again within the waiting budget."""


@dataclass(frozen=True)
class LockTiming:
    """How long to wait for a busy lock: Qpopper's `attempts` with attempt*step_s sleeps."""

    attempts: int
    step_s: float = limits.LOCK_RETRY_STEP_S
    poll_s: float = POLL_S

    @property
    def budget_s(self) -> float:
        return self.step_s * sum(range(1, max(self.attempts, 1)))

    @classmethod
    def login(cls, step_s: float = limits.LOCK_RETRY_STEP_S) -> "LockTiming":
        return cls(limits.DOTLOCK_RETRIES_LOGIN, step_s)

    @classmethod
    def update(cls, step_s: float = limits.LOCK_RETRY_STEP_S) -> "LockTiming":
        return cls(limits.DOTLOCK_RETRIES_UPDATE, step_s)


def no_hook(name: str) -> None:
    pass


def wait_for(try_once: Callable[[], bool], timing: LockTiming) -> bool:
    """Call try_once until it succeeds or the budget is spent (at least one try)."""
    deadline = time.monotonic() + timing.budget_s
    while True:
        if try_once():
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(timing.poll_s, left))


def lock_content(pid: int | None = None, host: str | None = None) -> bytes:
    """Qpopper's dot-lock content: `pid@host`, no newline."""
    return f"{os.getpid() if pid is None else pid}@{host or socket.gethostname()}".encode()


def parse_lock_content(data: bytes) -> tuple[int, str | None]:
    """(pid, host) from `pid@host` (Qpopper) or `pid\\n` (liblockfile -p); pid 0 when none."""
    text = data[:256].decode("ascii", "replace").strip()
    digits, _, host = text.partition("@")
    digits = digits.strip()
    pid = int(digits) if digits.isdigit() else 0
    return pid, (host.strip() or None) if _ else None


def process_gone(pid: int) -> bool:
    """True when no process has this pid (a lock or pid file left by a dead holder)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass(frozen=True)
class LockFile:
    """A lock file as found at a name: enough to tell it from a lock made at that name after
    it (inode numbers are reused at once on most file systems, an mtime can repeat within a
    clock tick, the content names the holder)."""

    dev: int
    ino: int
    mtime_ns: int
    content: bytes | None       # its first bytes; None when not a regular file we can read

    @classmethod
    def at(cls, path: str) -> "LockFile | None":
        """The file at `path` (a symlink itself, not followed), or None when there is none."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return cls(st.st_dev, st.st_ino, st.st_mtime_ns, None)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError:                 # unreadable, or replaced by a symlink since the lstat
            return cls(st.st_dev, st.st_ino, st.st_mtime_ns, None)
        try:
            st = os.fstat(fd)
            return cls(st.st_dev, st.st_ino, st.st_mtime_ns,
                       os.read(fd, 256) if stat.S_ISREG(st.st_mode) else None)
        finally:
            os.close(fd)

    def same(self, other: "LockFile") -> bool:
        return self == other


def _write_unique(name: str, content: bytes, *, fsync: bool = False) -> os.stat_result:
    """A new file at `name`, ours alone (O_EXCL, never through a symlink, DOTLOCK_MODE),
    holding `content` (synced to disk when fsync), and its fstat: the mtime was set by the
    clock of the file system's host (the NFS server's) as it wrote. An error, also one the
    close reports (NFS tells there of a write its server refused), removes the file again
    before it is raised; an error of the create itself (the name is taken) leaves the name
    alone."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 DOTLOCK_MODE)
    try:
        try:
            os.write(fd, content)
            if fsync:
                os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
    except BaseException:
        unlink_if_present(name, ignore_other_errors=True)
        raise
    return st


def file_system_now_ns(name: str) -> int | None:
    """The clock of the file system's host (the NFS server's): the mtime of a new file
    written at `name` and removed again; None when none can be written there."""
    try:
        st = _write_unique(name, b"\n")    # written: the server sets the mtime as it writes
    except OSError:
        return None
    unlink_if_present(name, ignore_other_errors=True)
    return st.st_mtime_ns


def _holder(found: LockFile | None) -> str:
    if found is None:
        return "nobody"
    return repr(found.content[:64].decode("ascii", "replace")) if found.content else "unknown"


class DotLock:
    """`<spool>.lock`. One instance per acquisition; not reentrant."""

    def __init__(self, lock_path: str, *, nfs_safe: bool = False,
                 stale_s: float = limits.DOTLOCK_STALE_S,
                 refresh_s: float = limits.DOTLOCK_REFRESH_S,
                 step_hook: StepHook | None = None, log: Log | None = None):
        self.path = lock_path
        self.nfs_safe = nfs_safe
        self.stale_s = stale_s
        self.refresh_s = refresh_s
        self.hook = step_hook or no_hook
        self.log = log
        self.host = socket.gethostname()
        self.held = False
        self._ident: tuple[int, int] | None = None     # (dev, ino) of our lock file
        self._content = b""
        self._refreshed = 0.0
        self._fs_now_ns: int | None = None  # the file system's clock at this attempt

    # --- taking it ----------------------------------------------------------------------------
    def acquire(self, timing: LockTiming) -> bool:
        """Take the lock within `timing`'s budget; False when it stayed busy."""
        return wait_for(self.try_acquire, timing)

    def try_acquire(self) -> bool:
        """One attempt: create the lock, or take over a stale one and create it. Raises OSError
        for anything but "someone holds it" (EEXIST)."""
        if self.held:
            raise RuntimeError("dot-lock already held")
        self._fs_now_ns = None
        if self._create():
            return True
        if self._remove_if_stale():
            return self._create()
        return False

    def _create(self) -> bool:
        content = self._content = lock_content(host=self.host)
        self.hook("dotlock-create")
        if self.nfs_safe:
            created = self._create_by_link(content)
        else:
            try:
                # an error after the create removes the lock: nobody would release it
                st = _write_unique(self.path, content)
            except FileExistsError:
                return False
            created = (st.st_dev, st.st_ino)
        if not created:
            return False
        self._ident = created
        self.held = True
        self._refreshed = time.monotonic()
        return True

    def _create_by_link(self, content: bytes) -> tuple[int, int] | None:
        """no-atomic-open: a unique file, then link(2) to the lock name. Over NFS link can
        report failure after succeeding, so the link count of our file decides: 2 or more
        (a lock breaker that moved ours aside and links it back adds a name for a moment).
        The unique file goes at once; its REMOVE retried after a lost reply may find it gone
        (fine). When it cannot be removed, or an error (or a signal) leaves it unknown whether
        the link made the lock, that lock is taken away again before the error is raised:
        nobody would release it. The unique file's mtime, set by the file system's clock (the
        NFS server's) as we wrote it, is "now" for judging the age of a lock found there
        (_why_stale)."""
        unique = self._unique_name()
        st = _write_unique(unique, content, fsync=True)
        self._fs_now_ns = st.st_mtime_ns
        mine = (st.st_dev, st.st_ino)

        def is_mine(found: LockFile) -> bool:
            return (found.dev, found.ino) == mine and found.content == content
        try:
            self.hook("dotlock-link")
            try:
                os.link(unique, self.path)
            except OSError:
                pass
            made = mine if self._linked(unique, mine) else None
        except BaseException:
            self._forget(unique, is_mine)   # the link may have made a lock nobody would release
            raise
        try:
            self.hook("dotlock-unlink-unique")
            # ENOENT: an NFS REMOVE retried after its reply was lost; the file is gone
            unlink_if_present(unique)
        except BaseException:
            if made is not None:            # a lock nobody would release: take it away
                self._forget(unique, is_mine)
            raise
        return made

    def _linked(self, unique: str, mine: tuple[int, int]) -> bool:
        """Whether the link made the lock: our unique file has two names (or more); when it
        cannot be looked at (an NFS error), whether the lock name is that file. An error of
        both looks is the caller's (_forget)."""
        try:
            return os.lstat(unique).st_nlink >= 2
        except OSError:
            found = LockFile.at(self.path)
            return found is not None and (found.dev, found.ino) == mine

    def _forget(self, unique: str, is_mine: Callable[[LockFile], bool]) -> None:
        """After an error: the lock made of our unique file, if the name holds it (or cannot
        be looked at: _take_away looks at what it moves), is taken away, and the unique file
        removed; best effort, the error is the caller's."""
        with contextlib.suppress(OSError):
            try:
                found = LockFile.at(self.path)
                ours = found is not None and is_mine(found)
            except OSError:
                ours = True
            if ours:
                self._take_away(is_mine)
        unlink_if_present(unique, ignore_other_errors=True)

    def _unique_name(self) -> str:
        """A name of our own beside the lock: `.lk<pid><random><host>`, as liblockfile names
        its temporary files."""
        directory = os.path.dirname(self.path) or "."
        return os.path.join(directory, f".lk{os.getpid()}{secrets.token_hex(4)}{self.host[:16]}")

    def _remove_if_stale(self) -> bool:
        """A lock whose holder is gone (its pid on this host no longer runs) or whose mtime is
        older than stale_s is removed, as liblockfile does, but only that very file
        (_take_away). True when it was removed (or had vanished meanwhile)."""
        found = LockFile.at(self.path)
        if found is None:
            return True
        why = self._why_stale(found)
        if why is None:
            return False
        self.hook("dotlock-remove-stale")
        taken = self._take_away(found.same)
        if taken is False:
            return False                 # someone replaced it meanwhile: not the stale one
        if taken and self.log:
            self.log(syslog.LOG_NOTICE, f"removed stale lock {self.path} ({why})")
        return True

    def _age_s(self, found: LockFile) -> float:
        """A lock's age. Its mtime is set by the clock of the file system's host (the NFS
        server's), so it is measured against the mtime of a file this host has just written
        there, as liblockfile does: with no-atomic-open the unique file of this attempt; on a
        shared directory without it, a fresh one, made only when the local clock finds the
        lock stale. A host whose clock runs ahead of the server's would otherwise take every
        other host's live lock for stale, and one behind would wait out its lag on top. The
        local clock on a local disk, or where no file can be written (docs/scale-out.md,
        "Locks across hosts")."""
        if self._fs_now_ns is None:
            age = time.time() - found.mtime_ns / 1e9
            if age <= self.stale_s or not self._shared():
                return age
            self._fs_now_ns = file_system_now_ns(self._unique_name())
            if self._fs_now_ns is None:
                return age
        return (self._fs_now_ns - found.mtime_ns) / 1e9

    def _why_stale(self, found: LockFile) -> str | None:
        if self._age_s(found) > self.stale_s:
            return f"older than {self.stale_s:g} s"
        if found.content is None:
            return None
        pid, host = parse_lock_content(found.content)
        # a pid without a host (dotlockfile -p) may be another host's on a shared (NFS)
        # spool: with no-atomic-open, or on NFS, only its age counts (docs/scale-out.md)
        ours = host == self.host or (host is None and not self._shared())
        if pid > 0 and ours and process_gone(pid):
            return f"holder pid {pid} is gone"
        return None

    def _shared(self) -> bool:
        """Whether other hosts may lock here too: no-atomic-open says so, and an NFS
        directory is shared whether the option was set or forgotten."""
        return self.nfs_safe or mounts.directory_on_nfs(os.path.dirname(self.path) or ".")

    # --- removing one lock file, and only that one ----------------------------------------------
    def _take_away(self, is_it: Callable[[LockFile], bool]) -> bool | None:
        """Remove the file at the lock name if is_it(that file), and never another one: unlink
        by name would remove whatever took the name since we looked (another host broke the
        same stale lock and made its own). rename(2) moves whatever holds the name at that
        instant, atomically on NFS too; the file moved aside is looked at there and unlinked
        only if it is the one meant, else put back (docs/maildrop.md, "The locking rules").
        True: removed; None: the name was empty; False: another lock held it."""
        aside = self._unique_name()
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            if not os.path.lexists(aside):   # (an NFS rename retried after it succeeded fails)
                return None
        try:
            moved = LockFile.at(aside)
            if moved is None:
                return None
            if is_it(moved):
                unlink_if_present(aside)
                return True
        except BaseException:
            # a failure (an NFS error, a signal) must not leave a live lock without its name
            with contextlib.suppress(OSError):
                self._give_name_back(aside)
                if os.path.samefile(aside, self.path):
                    os.unlink(aside)
            raise
        self._put_back(aside, moved)
        return False

    def _put_back(self, aside: str, moved: LockFile) -> None:
        """The lock moved aside is someone's live lock: give it its name back with link(2),
        which never replaces a lock that took the empty name meanwhile; the name's inode
        decides (over NFS link can report failure after succeeding). If one did, two
        lockers each believe they hold it: logged, and the newer keeps the name."""
        self.hook("dotlock-put-back")
        self._give_name_back(aside)
        now = LockFile.at(self.path)
        unlink_if_present(aside)
        if now is not None and (now.dev, now.ino) == (moved.dev, moved.ino):
            if self.log:
                self.log(syslog.LOG_NOTICE, f"lock {self.path} changed as it was removed; "
                                            f"put back")
        elif self.log:
            self.log(syslog.LOG_ERR, f"lock {self.path} of {_holder(moved)} not put back: "
                                     f"{_holder(now)} took the name meanwhile")

    def _give_name_back(self, aside: str) -> None:
        """The lock name for the file set aside, never replacing a lock made there meanwhile:
        link(2); where hard links are refused (protected_hardlinks on another uid's file, a
        file system without them) a rename that does not replace (renameat2's
        RENAME_NOREPLACE; where the file system lacks it, NFS for one, a look first)."""
        try:
            os.link(aside, self.path)
        except FileExistsError:
            pass
        except OSError:
            rename_no_replace(aside, self.path)

    # --- holding it -----------------------------------------------------------------------------
    def _is_ours(self, found: LockFile) -> bool:
        return (found.dev, found.ino) == self._ident and found.content == self._content

    def still_ours(self) -> bool:
        """The lock file is the one we created: same inode and our `pid@host` (an inode number
        can be reused by a lock someone created after removing ours as stale)."""
        if not self.held:
            return False
        found = LockFile.at(self.path)
        return found is not None and self._is_ours(found)

    def refresh(self) -> None:
        """Touch the lock so age-based lockers keep waiting."""
        if not self.held:
            return
        self._refreshed = time.monotonic()
        if not self.still_ours():
            if self.log:
                self.log(syslog.LOG_WARNING, f"lock {self.path} was taken from us")
            return
        try:
            os.utime(self.path)
        except OSError as exc:
            if self.log:
                self.log(syslog.LOG_WARNING, f"cannot refresh {self.path}: {exc.strerror}")

    def refresh_if_due(self) -> None:
        if self.held and time.monotonic() - self._refreshed >= self.refresh_s:
            self.refresh()

    def release(self) -> None:
        """Remove the lock if it is still ours, never someone else's that replaced it as stale
        meanwhile (_take_away)."""
        if not self.held:
            return
        ours = self.still_ours()
        self.held = False
        if ours:
            self.hook("dotlock-unlink")
            self._take_away(self._is_ours)
