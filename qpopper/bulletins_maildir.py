"""Bulletins for a Maildir user: each new bulletin becomes one file in new/, delivered as a
Maildir delivery agent does, before the session's Maildir opens (docs/bulletins.md,
"Maildir users").

What makes it crash-safe is the file's name, not an intent record: it is the login's time,
`bulletin-<number>` and the host, so a delivery that died half way is finished by the next
login, which finds the numbers already in new/ or cur/ and adds only the missing ones. The
record of what the user has seen (.popbull, popbulldir or the bulletin database, as for mbox)
advances only after every file is in new/ and new/ is synced. The Maildir's session lock
serialises two logins of one user, as it serialises their sessions.
"""

from __future__ import annotations

import contextlib
import os
import re
import syslog
import time

from qpopper import bulletins
from qpopper.bulletins import Bulletin, Delivery
from qpopper.spool import maildir
from qpopper.spool.durable import fsync_dir, publish, unlink_if_present
from qpopper.spool.maildir_drop import maildir_lock

_BULLETIN_NAME = re.compile(r"^[0-9]+\.bulletin-([0-9]+)\.")
_TEMP_NAME = re.compile(r"^[0-9]+\.bulletin-[0-9]+\..+\.[0-9]+$")
"""_place's temporary files: the file's name and the writer's process id."""


def file_name(stamp: int, bulletin: Bulletin, hostname: str) -> str:
    """`<login time>.bulletin-<number>.<host>`: sorts after the mail already there, as an
    mbox bulletin is appended; '/' and ':' in the host are written as Maildir writers do."""
    host = hostname.replace("/", r"\057").replace(":", r"\072")
    return f"{stamp}.bulletin-{bulletin.number}.{host}"


def numbers_present(path: str) -> set[int]:
    """The bulletin numbers already in new/ or cur/ (under any flags)."""
    found = set()
    for sub in maildir.SUBDIRS:
        for name in os.listdir(os.path.join(path, sub)):
            match = _BULLETIN_NAME.match(name)
            if match:
                found.add(int(match.group(1)))
    return found


class MaildirDelivery(Delivery):
    """One login's bulletins into a Maildir. Use `deliver(...)`."""

    def __init__(self, cfg, login, path: str, hostname: str, log, step_hook, clock,
                 spool_group):
        super().__init__(cfg, login, None, hostname, log, step_hook, 0.0, clock)
        self.path = path
        self.spool_group = spool_group

    # The session runs with the user's own group here; the bulletin directory and the record
    # (bulldb, popbulldir) may need the spool group, the Maildir never gets it.
    def list_all(self) -> list[Bulletin]:
        with self.spool_group():
            return super().list_all()

    def open_store(self):
        with self.spool_group():
            return super().open_store()

    def _read_bulletin(self, bulletin: Bulletin) -> bytes | None:
        with self.spool_group():
            return super()._read_bulletin(bulletin)

    def _load(self, store):
        with self.spool_group():
            return store.load()

    def _save(self, store, last: int) -> None:
        with self.spool_group():
            store.save(last)

    def _with_store(self, store, every: list[Bulletin]) -> int:
        newest = every[-1].number
        seen = self._load(store)
        if seen.last is not None and seen.last >= newest and seen.pending is None:
            return 0                                         # the common case: no lock at all
        lock = maildir_lock(self.path, lambda s: self.step(f"lock:{s}"), self.log)
        lock.acquire()                                       # [IN-USE] while a session runs
        try:
            return self._locked(store, every, newest)
        finally:
            lock.release(unlink=False)

    def _locked(self, store, every: list[Bulletin], newest: int) -> int:
        seen = self._load(store)                             # again: another login may have run
        last = self.last_seen(seen, newest)
        self._clear_leftovers()
        present = numbers_present(self.path)
        stamp = int(self.clock())
        delivered = 0
        self.skipped = []
        wanted = self.wanted(every, last)
        for bulletin in wanted:
            if bulletin.number in present:
                continue                                     # an earlier, interrupted login's
            data = self._read_bulletin(bulletin)
            if data is None:
                continue
            message = bulletins.render(data, self.user, self.hostname,
                                       f"{stamp}.{bulletin.number % 1000:03d}", None,
                                       maildir=True)
            del data                           # a 16 MiB file is not kept past its message
            self._place(file_name(stamp, bulletin, self.hostname), message)
            delivered += 1
        if delivered:
            self.step("fsync-new")
            fsync_dir(os.path.join(self.path, "new"))
        self.step("record-seen")
        # docs/bulletins.md, "Skipped bulletins"; also drops an mbox-era intent
        self._save(store, self.high_water(last, newest, wanted))
        if delivered:
            self.log(syslog.LOG_INFO, f"Delivered {delivered} bulletin(s) to {self.user} "
                                      f"(up to {newest})")
        return delivered

    def _clear_leftovers(self) -> None:
        """Temporary files of a delivery that crashed before its link: under the lock no
        other delivery of ours runs, so every one left is dead."""
        tmp = os.path.join(self.path, "tmp")
        for name in os.listdir(tmp):
            if _TEMP_NAME.match(name):
                unlink_if_present(os.path.join(tmp, name), ignore_other_errors=True)

    def _place(self, name: str, message: bytes) -> None:
        """tmp/, fsync, link into new/, as the Maildir specification asks of a delivery
        (durable.publish); a name already in new/ was delivered already. new/ is synced
        once, after the last one."""
        publish(os.path.join(self.path, "tmp", f"{name}.{os.getpid()}"),
                os.path.join(self.path, "new", name), message, link=True, step=self.step,
                steps=("write-tmp", "fsync-tmp", "link-new"))


def deliver(cfg, login, path: str, hostname: str, log, *, step_hook=None,
            clock=time.time, spool_group=contextlib.nullcontext) -> int:
    """Put the user's new bulletins into the Maildir at `path` (after the privilege drop,
    before MaildirDrop.open), as the user's own group; `spool_group()` is entered around
    what reads the bulletin directory and the record. Returns how many were delivered; 0
    when bulldir is unset. Raises PopError for the bulletin database without
    bulldb-nonfatal and for [IN-USE]."""
    if not cfg.bulldir:
        return 0
    return MaildirDelivery(cfg, login, path, hostname, log, step_hook, clock,
                           spool_group).run()

