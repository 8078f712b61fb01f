"""Spool locks that every Debian delivery agent honours, and the one-session-per-user lock:
`SpoolLock` (the dot-lock of qpopper/spool/dotlock.py + flock + fcntl, for the short copy
steps only) and `SessionLock` (the temporary drop's flock, for the whole session). Why each, their order and
their waits: docs/maildrop.md, "The locking rules"; Qpopper's locks and ours:
docs/compatibility.md, "Locks".
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from typing import Callable

from qpopper.pop3.responses import PopError, RespCode
from qpopper.spool import mounts
from qpopper.spool.dotlock import DotLock, Log, LockTiming, StepHook, no_hook, wait_for
from qpopper.spool.durable import unlink_if_present

TEMP_DROP_MODE = 0o600
"""The temporary drop holds the user's mail: owner only (Qpopper accepted 0600 or 0660)."""

REOPEN_ROUNDS = 3
"""How often a lock is opened again when the file was replaced or removed as it was locked
(another session's update renames a new spool in; a session's temporary drop is unlinked as
it ends): each round follows a real change by another process, so three rounds without a
stable file mean one that keeps changing, answered as busy."""

NEW_SPOOL_SETTLE = (20, 0.005)
"""A delivery agent running as root that takes no dot-lock (Postfix with
`mailbox_delivery_lock = fcntl`) creates a missing spool and then gives it to the user: an
empty root-owned spool is looked at again this many times, this many seconds apart, before
it is refused as having the wrong owner (docs/maildrop.md, "The locking rules")."""

IN_USE_TEXT = "{name} lock busy!  Is another session active?"
UNLOCKING_TEXT = "Maildrop being unlocked; try again."
BUSY_SPOOL_TEXT = "Unable to lock the maildrop; try again later."
TEMP_DROP_REFUSED_TEXT = "Unable to use your temporary maildrop; contact your administrator"


class Unlinked(FileNotFoundError):
    """open_regular opened a file whose last name went away before the check (no links left:
    another session released it, or a writer renamed a new file over it): a missing file for
    callers that create or report one, a changed one for callers that open again."""


def open_regular(path: str, flags: int, mode: int = 0o600, *, owner: int | None = None,
                 private: bool = False, refuse: Callable[[str, str], Exception]) -> int:
    """open(2) `path` with O_NOFOLLOW and O_CLOEXEC added to `flags`, then prove on the
    descriptor what the name cannot: a regular file with one link, owned by `owner` (when
    given), and without access for others (when `private`). Otherwise close it and raise
    refuse(kind, detail), kind being "type", "links", "owner" or "mode". Errors of open(2)
    itself (FileNotFoundError, ELOOP for a symlink, ...) propagate unchanged, and a file
    whose last name went away between the open and the check is Unlinked, a
    FileNotFoundError: as if we had opened a moment later."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            st = os.fstat(fd)
        except OSError as error:
            _raise_stale_as_unlinked(error, path)
            raise
        if not stat.S_ISREG(st.st_mode):
            raise refuse("type", "not a regular file")
        if st.st_nlink == 0:
            raise Unlinked(errno.ENOENT, "removed while being opened", path)
        if st.st_nlink != 1:
            raise refuse("links", f"has {st.st_nlink} links")
        if owner is not None and st.st_uid != owner:
            raise refuse("owner", f"owned by uid {st.st_uid}, not {owner}")
        if private and st.st_mode & 0o007:
            raise refuse("mode", f"mode {st.st_mode & 0o777:o} gives others access")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _raise_stale_as_unlinked(error: OSError, path: str) -> None:
    """ESTALE from an open descriptor: on NFS another host removed the file we had just
    opened (a released temporary drop, a replaced spool), the same as a file removed here.
    Not for open(2) by name: the kernel has looked the name up again already, and an ESTALE
    that lasts is a fault of the mount or the export, reported as such."""
    if error.errno == errno.ESTALE:
        raise Unlinked(errno.ENOENT, "removed by another host", path) from None


def _stat_both(fd: int, path: str) -> tuple[os.stat_result, os.stat_result] | None:
    """fstat(fd) and lstat(path), or None when the name is gone (or stale on NFS)."""
    try:
        return os.fstat(fd), os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno == errno.ESTALE:
            return None
        raise


def _being_given_to_its_owner(path: str) -> bool:
    """An empty regular file owned by root: a spool a delivery agent running as root has
    just created and not yet chowned (NEW_SPOOL_SETTLE)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid == 0 and st.st_size == 0


def _kernel_lock(fd: int, flock_too: bool = True) -> bool:
    """flock and fcntl write locks on the whole file, non-blocking; both or neither.
    `flock_too` False: the fcntl lock alone (an NFS spool: see SpoolLock)."""
    if flock_too:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if flock_too:
            fcntl.flock(fd, fcntl.LOCK_UN)
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


class _WrongOwner(PopError):
    """The spool is not the user's: refused, unless it is a new spool still being given to
    its owner (SpoolLock.acquire)."""


class SpoolLock:
    """The spool locked against delivery agents: dot-lock + open fd + flock + fcntl.

    `fd` is the spool opened read-write (None when the spool does not exist and `create` is
    False). With `nfs_safe` (no-atomic-open: the spool is on NFS) the kernel lock on an NFS
    mount is the fcntl lock alone: the Linux NFS client turns flock into an fcntl lock on the
    whole file owned by the open file, so taking both in one process would conflict with
    itself, and the fcntl lock already excludes flock users on every host (docs/scale-out.md,
    "Locks across hosts"); so on any network or unknown file system. On a local disk
    (mounts.LOCAL_DISK_TYPES: the option set where it was not needed) it is both, as without
    the option: there only flock excludes a flock-only delivery agent. On NFS it is the fcntl
    lock alone without the option too, unless the mount keeps flock on the host
    (mounts.flock_beside_fcntl): sent to the server, flock would refuse our own fcntl lock.
    Keep this the only descriptor of the spool in the process: closing any descriptor of a
    file drops the process's fcntl locks on it.
    """

    def __init__(self, spool_path: str, lock_path: str, *, create: bool, create_mode: int,
                 nfs_safe: bool = False, step_hook: StepHook | None = None,
                 log: Log | None = None):
        self.path = spool_path
        self.create = create
        self.create_mode = create_mode
        self.hook = step_hook or no_hook
        self.log = log
        self.nfs_safe = nfs_safe
        self.dotlock = DotLock(lock_path, nfs_safe=nfs_safe, step_hook=step_hook, log=log)
        self.fd: int | None = None
        self.created = False

    def acquire(self, timing: LockTiming) -> None:
        """Raises PopError [SYS/TEMP] when a lock stays busy past the budget."""
        if not self.dotlock.acquire(timing):
            raise PopError(BUSY_SPOOL_TEXT, RespCode.SYS_TEMP,
                           log=f"{self.dotlock.path} stayed busy for {timing.budget_s:g} s")
        try:
            for _ in range(REOPEN_ROUNDS):
                try:
                    self._open_settled()
                except (Unlinked, FileExistsError):
                    continue                # replaced or created as we opened: open again
                if self.fd is None:
                    return
                flock_too = mounts.flock_beside_fcntl(self.fd, network_safe=self.nfs_safe)
                if not wait_for(lambda: _kernel_lock(self.fd, flock_too=flock_too), timing):
                    raise PopError(BUSY_SPOOL_TEXT, RespCode.SYS_TEMP,
                                   log=f"flock/fcntl on {self.path} stayed busy")
                if self.verify_same_file():
                    return
                os.close(self.fd)       # replaced while we waited for the kernel locks
                self.fd = None
            raise PopError(BUSY_SPOOL_TEXT, RespCode.SYS_TEMP, log=f"{self.path} kept changing")
        except BaseException:
            self.release()
            raise

    def _open_settled(self) -> None:
        """_open, waiting out a new spool still being given to its owner (NEW_SPOOL_SETTLE)."""
        for _ in range(NEW_SPOOL_SETTLE[0]):
            try:
                return self._open()
            except _WrongOwner:
                if not _being_given_to_its_owner(self.path):
                    raise
            time.sleep(NEW_SPOOL_SETTLE[1])
        return self._open()

    def _open(self) -> None:
        # O_NONBLOCK: a FIFO planted at the name must not block the open.
        flags = os.O_RDWR | os.O_NONBLOCK
        try:
            fd = open_regular(self.path, flags, owner=os.geteuid(), refuse=self._refuse)
        except Unlinked:
            raise                           # there is a spool: acquire opens it again
        except FileNotFoundError:
            if not self.create:
                return
            self.hook("spool-create")
            fd = open_regular(self.path, flags | os.O_CREAT | os.O_EXCL, self.create_mode,
                              owner=os.geteuid(), refuse=self._refuse)
            self.created = True
        try:
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def _refuse(self, kind: str, detail: str) -> PopError:
        if kind == "owner":
            return _WrongOwner("Your maildrop has the wrong owner; contact your administrator",
                               RespCode.SYS_PERM, log=f"{self.path} is {detail}")
        return PopError("Your maildrop is not a plain file; contact your administrator",
                        RespCode.SYS_PERM, log=f"{self.path}: not a regular file with one link")

    def verify_same_file(self) -> bool:
        """After locking: the name still refers to our descriptor (Postfix's sanity check)."""
        if self.fd is None:
            return not os.path.lexists(self.path)
        both = _stat_both(self.fd, self.path)
        if both is None:
            return False
        a, b = both
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino) and a.st_nlink == 1

    def retake_fcntl(self, timing: LockTiming) -> bool:
        """The fcntl lock again, after this process closed another descriptor of the spool
        (an mmap's duplicate: that drops every fcntl lock the process held on the file; flock
        and the dot-lock stay). False when a delivery agent took it meanwhile and keeps it
        past the budget."""
        return self.fd is not None and wait_for(
            lambda: _kernel_lock(self.fd, flock_too=False), timing)

    def refresh_if_due(self) -> None:
        self.dotlock.refresh_if_due()

    def release(self) -> None:
        """Kernel locks go with the descriptor; the dot-lock last (reverse order of taking)."""
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)
        self.dotlock.release()


NEW_SPOOL_MODE = 0o660
"""A spool we create in the spool directory: user and mail group, as Debian's adduser makes it."""
NEW_HOME_SPOOL_MODE = 0o600
"""A spool we create in the user's home (home-dir-mail): nobody else needs it."""


def spool_lock(cfg, paths, *, create: bool, step_hook=None, log=None) -> SpoolLock:
    """The user's spool lock (not yet acquired), as every session-time writer takes it: a
    spool it creates gets the mode of its place (home-dir-mail or the spool directory), and
    no-atomic-open picks the NFS-safe dot-lock."""
    return SpoolLock(paths.spool, paths.lock, create=create,
                     create_mode=NEW_HOME_SPOOL_MODE if cfg.home_dir_mail else NEW_SPOOL_MODE,
                     nfs_safe=cfg.no_atomic_open, step_hook=step_hook, log=log)


def _owner_only(fd: int) -> None:
    """A lock that holds nothing may have been made readable (chmod -R, a restore under umask
    022): taken all the same, but back to 0600, since anyone who can open it can flock it
    and keep its owner's sessions out."""
    with contextlib.suppress(OSError):
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, TEMP_DROP_MODE)


class SessionLock:
    """The temporary drop, opened and flock'ed for the whole session.

    It is created if missing (O_NOFOLLOW, mode 0600) and must be a regular file owned by us,
    with one link and no access for others, else [SYS/PERM] with `refused_text`. A lock that
    holds nothing (a Maildir's) passes `private=False`: others may read it.
    """

    def __init__(self, path: str, *, step_hook: StepHook | None = None, log: Log | None = None,
                 private: bool = True, refused_text: str = TEMP_DROP_REFUSED_TEXT):
        self.path = path
        self.private = private
        self.refused_text = refused_text
        self.name = os.path.basename(path)
        self.hook = step_hook or no_hook
        self.log = log
        self.fd: int | None = None
        self.created = False

    def acquire(self) -> int:
        for _ in range(REOPEN_ROUNDS):
            fd = self._open()
            if not self.private:
                _owner_only(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise PopError(IN_USE_TEXT.format(name=self.name), RespCode.IN_USE,
                               log=f"{self.path} is locked by another session") from None
            if self._same_file(fd):
                self.fd = fd
                return fd
            os.close(fd)            # the previous session unlinked it under us: reopen
        raise PopError(UNLOCKING_TEXT, RespCode.IN_USE, log=f"{self.path} kept changing")

    def _open(self, attempts: int = 10) -> int:
        """Open the drop, or create it. Other sessions create and unlink it all the while, so
        "missing" and then "exists" can alternate: a few rounds, then [IN-USE] like a drop
        that keeps changing; never [SYS/PERM], which says the file itself is wrong."""
        def open_drop(flags: int) -> int:
            return open_regular(self.path, os.O_RDWR | flags, TEMP_DROP_MODE,
                                owner=os.geteuid(), private=self.private, refuse=self._refuse)
        try:
            for _ in range(attempts):
                try:
                    return open_drop(0)
                except FileNotFoundError:
                    pass
                self.hook("temp-drop-create")
                try:                        # FileNotFoundError: no directory, for the caller
                    fd = open_drop(os.O_CREAT | os.O_EXCL)
                except (FileExistsError, Unlinked):
                    continue                # another session's drop came or went: again
                self.created = True
                return fd
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise PopError(self.refused_text, RespCode.SYS_PERM,
                               log=f"{self.path} is a symbolic link") from None
            raise
        raise PopError(UNLOCKING_TEXT, RespCode.IN_USE, log=f"{self.path} kept changing")

    def _refuse(self, kind: str, detail: str) -> PopError:
        return PopError(self.refused_text, RespCode.SYS_PERM, log=f"{self.path}: {detail}")

    def _same_file(self, fd: int) -> bool:
        both = _stat_both(fd, self.path)
        return both is not None and (both[0].st_dev, both[0].st_ino) == (both[1].st_dev,
                                                                          both[1].st_ino)

    def release(self, *, unlink: bool) -> None:
        """Unlink (when asked) while still holding the flock, so a session that opened the old
        file notices the change; then close."""
        if self.fd is None:
            return
        try:
            if unlink:
                self.hook("temp-drop-unlink")
                unlink_if_present(self.path)
        finally:
            fd, self.fd = self.fd, None
            os.close(fd)
