"""Directories made inside directories that other accounts may write, never through a link.

/var/mail is root:mail 2775: group mail may rename and replace its entries, so a name there
(`/var/mail/o`, `/var/mail/m/a`) may be a link to anywhere by the time root acts on it. `mkdir`
then `chmod`/`chown` by name follow such a link; here every component below the top directory is
opened with O_NOFOLLOW relative to its parent's descriptor, made with mkdirat when missing
(with the model's permission bits where it is born with the model's group, else 0700, until
it is given its owner and mode through its own descriptor), and a component that is a link or
not a directory is refused. The top directory itself is the administrator's (the
configured spool-dir, temp-dir or cache-dir) and is opened as named.

Used by check-hash-dir (paths.SpoolPaths.ensure_hash_dirs: as root in the monitor, which
creates; as the user after the privilege drop, which only looks) and by the package scripts
(tools/maintscript.py make-dirs).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import Sequence

NO_FOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
LOOKUP_ONLY = os.O_PATH
"""Added when nothing is created: a walk that only looks needs search permission, not read."""
REFUSED_ERRNOS = (errno.ELOOP, errno.ENOTDIR)
"""What opening a component with NO_FOLLOW_DIR says when a link or a file sits there."""


class UnsafeComponent(Exception):
    """A component that is a link or not a directory: nothing was done through it."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path} not used: {reason}")
        self.path = path


def make_dirs_below(top: str, parts: Sequence[str], like: os.stat_result, *,
                    create: bool = True) -> list[str]:
    """Walk top/parts[0]/parts[1]/... without following any link below `top`; with `create`,
    make each missing directory with the owner, group and mode of `like` (as root; another
    caller can only give it like's group). Returns the directories made, as `top` joined
    with the parts.

    Raises UnsafeComponent for a link or a non-directory, and OSError naming the full path of
    the component for anything else (FileNotFoundError for a missing one without `create`)."""
    made = []
    lookup = 0 if create else LOOKUP_ONLY
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | lookup)
    try:
        current = top
        for part in parts:
            current = os.path.join(current, part)
            with _naming(current):
                created = create and _mkdir_at(fd, part, like)
                child = _open_below(fd, part, current, NO_FOLLOW_DIR | lookup)
                os.close(fd)
                fd = child
                if created:
                    _shape_like(fd, like)
                    made.append(current)
    finally:
        os.close(fd)
    return made


def _mkdir_at(fd: int, name: str, like: os.stat_result) -> bool:
    """mkdirat. Between it and _shape_like another process may already walk through the new
    directory (a session of another user hashed to it, as that user): it is born with the
    model's permission bits (less what the umask takes) when it is born with the model's
    group and the model's owner or root's, so that walk is not refused, and it never grants
    anyone what the finished directory will not (the sticky bit included: mkdir keeps it);
    otherwise 0700 until it is shaped."""
    parent = os.fstat(fd)
    group = parent.st_gid if parent.st_mode & stat.S_ISGID else os.getegid()
    owner_ok = os.geteuid() in (0, like.st_uid)
    mode = stat.S_IMODE(like.st_mode) & 0o1777 if owner_ok and group == like.st_gid else 0o700
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, mode, dir_fd=fd)
        return True
    return False


def _open_below(fd: int, name: str, path: str, flags: int) -> int:
    try:
        return os.open(name, flags, dir_fd=fd)
    except OSError as error:
        if error.errno in REFUSED_ERRNOS:
            raise UnsafeComponent(path, error.strerror) from None
        raise


def _shape_like(fd: int, like: os.stat_result) -> None:
    """The owner, group and mode of `like`, through the directory's own descriptor. Only root
    may give it another owner; anyone else may give it the model's group only as a member of
    it (otherwise it keeps the group mkdir gave: the parent's, when that is setgid)."""
    if os.geteuid() == 0:
        os.fchown(fd, like.st_uid, like.st_gid)
    elif (os.fstat(fd).st_gid != like.st_gid
          and like.st_gid in (os.getegid(), *os.getgroups())):
        os.fchown(fd, -1, like.st_gid)
    os.fchmod(fd, stat.S_IMODE(like.st_mode))   # after the chown: mkdir applied the umask


@contextlib.contextmanager
def _naming(path: str):
    """OSErrors of the *at calls name only the component: name the whole path instead."""
    try:
        yield
    except OSError as error:
        raise OSError(error.errno, error.strerror, path) from None
