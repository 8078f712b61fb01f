"""The maildrop's redo journal (`.user.pop.journal`): one JSON record saying which multi-file
step is in flight, replaced atomically (docs/maildrop.md, "The journal")."""

from __future__ import annotations

import json
import os
import stat
from typing import Callable

from qpopper.pop3.responses import PopError, RespCode
from qpopper.spool.durable import fsync_parent_dir, pwrite_all, unlink_if_present
from qpopper.spool.locking import open_regular

StepHook = Callable[[str], None]

JOURNAL_VERSION = 3
"""The newest version this build writes: only for the records an older build would recover
wrongly (a commit of an image shorter than the spool, `cut`, an absorb that leaves octets
out); every other record is written as PLAIN_JOURNAL_VERSION, which a version-2 build still
recovers. Version 1 (no `head` in commit records) is still read: such a record is recovered
by the spool's inode number alone (docs/maildrop.md, "The journal")."""
PLAIN_JOURNAL_VERSION = 2
READABLE_JOURNAL_VERSIONS = (1, PLAIN_JOURNAL_VERSION, JOURNAL_VERSION)
JOURNAL_BAD_TEXT = "Maildrop recovery needs attention; contact your administrator"
IMAGE_MODE = 0o600


class Journal:
    """The redo record: one JSON object, replaced atomically."""

    def __init__(self, path: str, step: StepHook):
        self.path = path
        self.tmp = path + ".tmp"
        self.step = step

    def read(self) -> dict | None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        try:
            if st.st_uid != os.geteuid() or not stat.S_ISREG(st.st_mode):
                raise ValueError("not our plain file")
            record = json.loads(data)
            if record.get("v") not in READABLE_JOURNAL_VERSIONS:
                raise ValueError(f"version {record.get('v')!r}")
        except ValueError as exc:
            raise PopError(JOURNAL_BAD_TEXT, RespCode.SYS_TEMP,
                           log=f"{self.path}: unreadable journal ({exc}); left as is") from None
        return record

    def write(self, record: dict, version: int = PLAIN_JOURNAL_VERSION) -> None:
        data = json.dumps(dict(record, v=version), sort_keys=True).encode() + b"\n"
        name = f"journal-{record['op']}"
        self.step(f"{name}-write")
        fd = open_own_file(self.tmp, create=True)
        try:
            os.ftruncate(fd, 0)
            pwrite_all(fd, data, 0)
            self.step(f"{name}-fsync")
            os.fsync(fd)
        finally:
            os.close(fd)
        self.step(f"{name}-rename")
        os.rename(self.tmp, self.path)
        self.step(f"{name}-fsync-dir")
        fsync_parent_dir(self.path)

    def clear(self) -> None:
        self.step("journal-unlink")
        unlink_if_present(self.path)
        self.step("journal-fsync-dir")
        fsync_parent_dir(self.path)

    def remove_leftover_tmp(self) -> None:
        if os.path.lexists(self.tmp):
            self.step("journal-tmp-unlink")
            unlink_if_present(self.tmp)


def open_own_file(path: str, *, create: bool) -> int:
    """Open one of our bookkeeping files read-write: never through a symlink, and never a file
    that is not our own plain single-link file (checked before anything is truncated)."""
    return open_regular(path, os.O_RDWR | (os.O_CREAT if create else 0), IMAGE_MODE,
                        owner=os.geteuid(),
                        refuse=lambda kind, detail: PopError(JOURNAL_BAD_TEXT, RespCode.SYS_PERM,
                                                             log=f"{path}: not our plain file"))
