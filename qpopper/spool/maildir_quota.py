"""A Maildir++ quota's count of what UPDATE removed (docs/maildir.md, "Maildir++ quotas").

A site with Maildir++ quotas (Courier's maildrop and deliverquota, Dovecot's maildir quota)
keeps `maildirsize` in the Maildir: its first line the quota, then `<octets> <count>` lines
whose sums are the mailbox's size. A delivery appends a positive line; a program that
removes messages appends a negative one, so the quota goes down at once and not only when
`maildirsize` is next recalculated. UPDATE appends one line for all the files it unlinked,
in one write(2) to a file opened O_APPEND, only when `maildirsize` is there (never made: a
site without quotas gets none), and only after the unlinks are durable, so a crash leaves
the quota counting too much, never too little.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import syslog

from qpopper.spool import maildir

QUOTA_FILE = "maildirsize"
_QUOTA_SIZE = re.compile(r",S=([0-9]{1,20})(?:,|$)")
NOT_COUNTED_TEXT = ("Maildir {path}: maildirsize not updated for {count} deleted message(s) "
                    "of {octets} octets ({why}); the quota counts them until it is "
                    "recalculated")


def quota_octets(name: str, st: os.stat_result) -> int:
    """What the quota counted for a message file: `,S=<octets>` in its base name (what the
    delivery agent that wrote the name counted, the file's size on disk), else its size."""
    size = _QUOTA_SIZE.search(maildir.base_name(name))
    return int(size.group(1)) if size else st.st_size


class Removed:
    """The files an UPDATE unlinked: their quota octets and their count."""

    def __init__(self):
        self.octets = 0
        self.count = 0

    def add(self, name: str, st: os.stat_result) -> None:
        self.octets += quota_octets(name, st)
        self.count += 1


def count_off(path: str, removed: Removed, log=None) -> None:
    """Append `-<octets> -<count>` to the Maildir's `maildirsize` when it is there, the user's
    own plain file (never through a link). Never raises: a line not appended leaves the
    quota counting too much until it is recalculated, which is logged, and the UPDATE stands."""
    if removed.count == 0:
        return
    line = f"-{removed.octets} -{removed.count}\n".encode()
    try:
        # O_NONBLOCK: a FIFO put there is refused (ENXIO), not waited on under the lock
        fd = os.open(os.path.join(path, QUOTA_FILE), os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW
                     | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        return                                  # no Maildir++ quota on this mailbox
    except OSError as error:
        why = "a symbolic link" if error.errno == errno.ELOOP else error.strerror
        _not_counted(path, removed, why, log)
        return
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            _not_counted(path, removed, "not a plain file", log)
        elif st.st_uid != os.geteuid():
            _not_counted(path, removed, "another owner's file", log)
        elif os.write(fd, line) != len(line):   # one write: the line is never split
            _not_counted(path, removed, "written in part", log)
    except OSError as error:
        _not_counted(path, removed, error.strerror, log)
    finally:
        os.close(fd)


def _not_counted(path: str, removed: Removed, why: str, log) -> None:
    if log:
        log(syslog.LOG_WARNING, NOT_COUNTED_TEXT.format(
            path=path, count=removed.count, octets=removed.octets, why=why))
