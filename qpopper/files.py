"""Files the configuration names, as the start-up checks and the server look at them: opened
without waiting on a FIFO put in their place (open_regular_nonblocking), and who other than
root can read a secret one (the TLS private key, a configuration file holding tls-passphrase;
docs/operations.md, "Start-up checks").
"""

from __future__ import annotations

import errno
import os
import pwd
import stat


def open_regular_nonblocking(path: str) -> int:
    """A descriptor of the regular file at `path`, read-only, close-on-exec. O_NONBLOCK: a FIFO
    in its place is refused at once (OSError EINVAL, "not a regular file"), not waited on in
    open(2), which would hold a login, the start-up check, or the master's reload for good;
    a directory is IsADirectoryError, a device EINVAL. Symbolic links are followed (these
    are the administrator's files; spool.locking.open_regular is the spool's stricter open).
    The descriptor stays non-blocking, which a regular file ignores."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        kind = os.fstat(fd).st_mode
        if stat.S_ISDIR(kind):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        if not stat.S_ISREG(kind):
            raise OSError(errno.EINVAL, "not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def who_else_can_read(path: str, *, group_is_granted: bool = True) -> str | None:
    """Why a secret file is exposed, as a phrase for a warning ("mode 0644, which every local
    user can read"); None when only root (and the file's group, which an administrator grants
    on purpose: Debian's ssl-cert keys are root:ssl-cert 0640) can read it, or when it cannot
    be looked at. Without `group_is_granted` (a configuration file holding a passphrase,
    which no group is meant to share) a group other than root's that can read it counts too.
    One rule for every secret file:
    - every local user can read it when others may read it and search each directory above
      it: a 0644 file in a 0700 directory of root's is safe;
    - a non-root owner can read it (it may chmod the file), unless a directory above keeps
      it out (one it cannot search and does not own);
    - more than one hard link: another name for it may sit where others reach it.
    The path is followed (realpath): the directories above are those of the file itself."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
        above = _directories_above(real)
    except OSError:
        return None
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_IROTH and _searchable(above, None, ()):
        return f"mode {mode:04o}, which every local user can read"
    if st.st_uid != 0 and _searchable(above, st.st_uid, _groups_of(st.st_uid)):
        return f"owned by uid {st.st_uid}, who can read it"
    if (not group_is_granted and mode & stat.S_IRGRP and st.st_gid != 0
            and _searchable(above, None, {st.st_gid})):
        return f"mode {mode:04o}, which its group (gid {st.st_gid}) can read"
    if st.st_nlink > 1:
        return (f"one of its {st.st_nlink} hard links, whose other names others may reach "
                f"(keep it one file)")
    return None


def _directories_above(real: str) -> list[os.stat_result]:
    found, parent = [], os.path.dirname(real)
    while True:
        found.append(os.stat(parent))
        if parent == os.path.dirname(parent):
            return found
        parent = os.path.dirname(parent)


def _searchable(directories, uid: int | None, gids) -> bool:
    """Can this user (None: any user, in none of the directories' groups) reach a file under
    each of `directories`? An owner may chmod its directory, so it always can."""
    for st in directories:
        if uid is not None and st.st_uid == uid:
            continue
        bit = stat.S_IXGRP if st.st_gid in gids else stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _groups_of(uid: int) -> set[int]:
    try:
        account = pwd.getpwuid(uid)
    except KeyError:
        return set()                    # no account: no supplementary groups to name
    return set(os.getgrouplist(account.pw_name, account.pw_gid))
