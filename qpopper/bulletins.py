"""Bulletins: messages for every POP user, copied into each spool at login (docs/compatibility.md,
"Bulletins"; the manual's "Using Bulletins"). Options: bulldir (-b), max-bulletins,
group-bulletins, popbulldir, bulldb, bulldb-max-tries, bulldb-nonfatal (-B).

What a bulletin is: a file in bulldir whose name starts with a digit; the leading digits are
its number and bulletins go out in number order (numbers are never reused). With
group-bulletins the second dot-separated part of the name is a group: `ALL` or no second part
is everyone, a group that does not exist is nobody, otherwise the user's primary group or a
listed member. The file must start with a valid `From ` line (mbox.is_from_line), else it is
skipped with a log line. Copied, its `X-UIDL:` and `Status:` header lines are dropped,
`X-UIDL: <unix-time>.<3-digit sequence>` (the sequence is the bulletin number modulo 1000, so
two bulletins of one login never share a UID) follows the From line, every `To:` line becomes
`To: <user>@<this host>`, body lines that would read as a `From ` separator get a `>` (as a
delivery agent quotes them), and the message ends with an empty line so the next `From ` line
stays a separator. In an MMDF spool the bulletin is wrapped in the spool's ^A^A^A^A lines
instead of carrying a From line.

What a user has seen: one number, the highest bulletin already handed over. Kept in
`~/.popbull`, or `<popbulldir>/<user>.popbull` (reading ~/.popbull when that one is missing), or
with `bulldb` in the SQLite file `<bulldir>/bulldb/bulldb.sqlite` keyed by user (an absent
record reads the user's .popbull once and never writes it). Missing or garbage: the user is
new, last = newest - max-bulletins (never below 0); an empty .popbull: everything counts as
seen. Afterwards the record is the newest bulletin number (all bulletins, also other groups').

How they are delivered - like a local delivery agent, before Maildrop.open, so the maildrop's
crash-safe machinery (normal or server mode) takes them from the spool like any new mail. All
of it runs after the privilege drop (DESIGN invariant 3), under locking.SpoolLock (dot-lock,
flock, fcntl; DESIGN invariant 2), which also serialises two logins of the same user:

  1. under the lock, read the record; finish a pending delivery of a crashed session (below);
  2. record the intent: the record keeps its old number plus `pending` = {spool dev/ino, offset
     = spool size, length and SHA-256 of the bytes to append, the X-UIDL stamp, the numbers};
  3. extend the spool to offset+length (ftruncate, posix_fallocate: no ENOSPC half way), fsync;
     write the bytes after the first one, then the first one (the spool's byte at `offset` is
     NUL until the copy is complete), fsync;
  4. record the newest number, no intent.

A failure in 3 or 4 cuts the spool back to `offset` and leaves the number where it was.
A crash (kill -9, power) between 2 and 4 is settled by the next login, under the lock: the
spool's bytes at [offset, offset+length) hash to the intent's SHA-256 -> they were delivered,
advance the number; the spool is shorter than offset+length -> nothing of ours was written
(we write only after the extension is durable): deliver again; byte `offset` is NUL -> a
half-written copy: it is rewritten in place from the bulletin files (same stamp, same bytes,
checked against the hash), or, when the files changed meanwhile, cut off if nothing follows
it. So a bulletin is never lost and never delivered twice by our own crash; only someone else
emptying the spool between the crash and the next login (a mail reader) can cause a repeat.

Who may write what (DESIGN invariant 3): the session runs as the user with the mail group.
~/.popbull is the user's own (0600, written as a temporary file renamed over it). popbulldir
must let the user create `<user>.popbull`: root:mail, mode 3770 (setgid, sticky); a file there
not owned by the user is ignored and logged. The database directory `<bulldir>/bulldb` must be
root:mail 2770 so every user's session can write the database and SQLite's journal beside it;
the file is created mode 0660 on first use (or by the administrator: root:mail 0660). bulldir
itself stays root-owned and not writable by users: otherwise anyone could post bulletins.
Bulletin files must be world-readable (0644): the session reads them with the mail group, so
one that is not (a bulldir that names a spool directory) is skipped and logged, never copied.
Failures never keep users from their mail, except an unusable bulletin database without
bulldb-nonfatal: `-ERR [SYS/TEMP] Unable to open Bulletin database; contact your administrator`.
"""

from __future__ import annotations

import errno
import grp
import hashlib
import json
import os
import random
import secrets
import sqlite3
import stat
import syslog
import time
from dataclasses import dataclass
from typing import Callable

from qpopper import limits
from qpopper.pop3.responses import PopError, RespCode
from qpopper.spool import mbox
from qpopper.spool.durable import (fsync_dir, pwrite_all, read_up_to, sha256_of_range,
                            unlink_if_present)
from qpopper.spool.locking import LockTiming, spool_lock
from qpopper.spool.mbox import FRAMING_LINE, padding_after
from qpopper.spool.paths import SpoolPaths

Log = Callable[[int, str], None]
StepHook = Callable[[str], None]

ALL_GROUP = "ALL"
POPBULL_NAME = ".popbull"
POPBULL_SUFFIX = ".popbull"
POPBULL_MODE = 0o600
BULLDB_DIR = "bulldb"
BULLDB_FILE = "bulldb.sqlite"
BULLDB_MODE = 0o660
"""Every user's session (group mail) writes the database; see the module docstring."""
BULLDB_MAX_SLEEP_S = 0.5
"""Qpopper's usleep between tries: a random 1 us - 0.5 s."""
MAX_BULLETIN_OCTETS = 16 * 1024 * 1024
"""A bulletin larger than this is a mistake in bulldir, not a message for every user."""
BULLDB_FAILED_TEXT = "Unable to open Bulletin database; contact your administrator"
PENDING_PREFIX = b"pending "


# --- the bulletin directory ------------------------------------------------------------------------
@dataclass(frozen=True)
class Bulletin:
    number: int
    name: str
    group: str | None       # None: everyone


def list_bulletins(bulldir: str, group_bulletins: bool) -> list[Bulletin]:
    """The bulletins in number order (ties by name). Raises OSError for an unreadable dir."""
    found = []
    for name in os.listdir(bulldir):
        digits = len(name) - len(name.lstrip("0123456789"))
        if not digits or not name[:digits].isascii():
            continue
        parts = name.split(".")
        group = parts[1] if group_bulletins and len(parts) > 1 and parts[1] else None
        found.append(Bulletin(int(name[:digits]), name, group))
    found.sort(key=lambda b: (b.number, b.name))
    return found


def is_for(bulletin: Bulletin, user: str, gid: int) -> bool:
    """Group bulletins: ALL (or no group) = everyone; an unknown group = nobody; else primary gid or member."""
    if bulletin.group is None or bulletin.group == ALL_GROUP:
        return True
    try:
        group = grp.getgrnam(bulletin.group)
    except KeyError:
        return False
    return group.gr_gid == gid or user in group.gr_mem


# --- one bulletin as a message ------------------------------------------------------------------
def render(data: bytes, user: str, hostname: str, uidl: str, mmdf_separator: bytes | None
           ) -> bytes | None:
    """The bulletin as it goes into the spool, or None when it lacks a valid From line."""
    lines = data.splitlines(keepends=True)
    if not lines or not mbox.is_from_line(lines[0]):
        return None
    out = [] if mmdf_separator else [lines[0] if lines[0].endswith(b"\n") else lines[0] + b"\n"]
    if mmdf_separator:
        out.insert(0, mmdf_separator)
    out.append(f"X-UIDL: {uidl}\n".encode())
    to_line = f"To: {user}@{hostname}\n".encode()
    i, dropping = 1, False
    while i < len(lines):
        line = lines[i]
        if line in (b"\n", b"\r\n"):
            break
        i += 1
        if line[:1] in (b" ", b"\t"):            # a continuation of the line before
            if not dropping:
                out.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower()
        dropping = name in (b"x-uidl", b"status", b"to")
        if name == b"to":
            out.append(to_line)
        elif not dropping:
            out.append(line)
    for line in lines[i:]:
        out.append(b">" + line if mbox.is_from_line(line) else line)
    message = b"".join(out)
    if not message.endswith(b"\n"):
        message += b"\n"
    if mmdf_separator:
        return message + mmdf_separator
    return message + FRAMING_LINE          # docs/mbox.md, "What write-back writes"


# --- what the user has seen -----------------------------------------------------------------------
@dataclass(frozen=True)
class Seen:
    last: int | None                 # None: no usable record (missing or garbage)
    empty: bool = False              # an empty .popbull: everything counts as seen
    pending: dict | None = None      # an unfinished delivery (see the module docstring)


def parse_popbull(data: bytes) -> Seen:
    if not data:
        return Seen(None, empty=True)
    first, _, rest = data.partition(b"\n")
    try:
        last = int(first.strip().decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return Seen(None)                                    # garbage: as missing
    if last < 0:
        return Seen(None)
    pending = None
    if rest.startswith(PENDING_PREFIX):
        try:
            pending = json.loads(rest[len(PENDING_PREFIX):].split(b"\n", 1)[0])
        except ValueError:
            pending = None
    return Seen(last, pending=pending if isinstance(pending, dict) else None)


class PopbullFile:
    """~/.popbull or <popbulldir>/<user>.popbull: `N\\n`, plus `pending {json}\\n` while a
    delivery is in flight (Qpopper reads the first number only)."""

    def __init__(self, path: str, log: Log, *, fallback: "PopbullFile | None" = None):
        self.path = path
        self.log = log
        self.fallback = fallback

    def load(self) -> Seen:
        data = self._read(self.path)
        if data is None and self.fallback is not None:
            seen = self.fallback.load()
            return Seen(seen.last, seen.empty)               # its intent is not ours
        return Seen(None) if data is None else parse_popbull(data)

    def _read(self, path: str) -> bytes | None:
        """The file's bytes; None when missing or unusable (logged)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.log(syslog.LOG_NOTICE, f"Ignoring {path}: {exc.strerror}")
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                self.log(syslog.LOG_WARNING, f"Ignoring {path}: not a plain file of the user")
                return None
            return os.read(fd, 4096)
        finally:
            os.close(fd)

    def save(self, last: int, pending: dict | None = None) -> None:
        """Atomically: a temporary file beside it, fsync, rename, fsync the directory."""
        data = f"{last}\n".encode()
        if pending is not None:
            data += PENDING_PREFIX + json.dumps(pending, sort_keys=True).encode() + b"\n"
        directory = os.path.dirname(self.path) or "."
        # a random name: in a shared popbulldir nobody can plant our temporary file in advance
        tmp = os.path.join(directory, f".{os.path.basename(self.path).lstrip('.')}."
                                      f"{secrets.token_hex(6)}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, POPBULL_MODE)
        try:
            try:
                pwrite_all(fd, data, 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.path)
        except BaseException:
            unlink_if_present(tmp, ignore_other_errors=True)
            raise
        try:
            fsync_dir(directory)
        except OSError as exc:
            self.log(syslog.LOG_WARNING, f"fsync of {directory}: {exc.strerror}")


class BulletinDbError(Exception):
    """The bulletin database stayed unusable for bulldb-max-tries attempts, or is unusable
    in a way waiting cannot mend."""


RETRIED_SQLITE_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
"""What bulldb-max-tries is for (the manual: "when the database is in use by another user"):
another session holds the lock. Every other error (no bulldb directory, no permission, not a
database) stays as it is: it is reported at once, not after ~18 s of retries."""


def _clears_by_waiting(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in RETRIED_SQLITE_CODES


class BulletinDb:
    """<bulldir>/bulldb/bulldb.sqlite: table seen(user, last, pending). A user without a record
    reads .popbull once (`fallback`, never written)."""

    SCHEMA = ("CREATE TABLE IF NOT EXISTS seen (user TEXT PRIMARY KEY, last INTEGER NOT NULL, "
              "pending TEXT)")

    def __init__(self, path: str, user: str, tries: int, log: Log,
                 fallback: PopbullFile | None):
        self.path = path
        self.user = user
        self.tries = max(1, tries)
        self.log = log
        self.fallback = fallback
        self.db: sqlite3.Connection | None = None
        self._retry(self._connect)

    def _connect(self) -> None:
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            try:
                fd = os.open(self.path, flags)
            except FileNotFoundError:
                fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, BULLDB_MODE)
                os.fchmod(fd, BULLDB_MODE)          # whatever the umask: every user writes it
        except OSError as exc:
            # no bulldb directory, no permission, a link: waiting mends none of them
            raise BulletinDbError(f"{self.path}: {exc.strerror}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise BulletinDbError(f"{self.path}: not a regular file")
        finally:
            os.close(fd)
        db = sqlite3.connect(self.path, timeout=0, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout = 0")
            if not db.execute("SELECT name FROM sqlite_master WHERE name = 'seen'").fetchone():
                db.execute(self.SCHEMA)
        except BaseException:
            db.close()
            raise
        self.db = db

    def _retry(self, operation):
        """Qpopper's bulldb retries: up to bulldb-max-tries, random sleeps of up to 0.5 s."""
        for attempt in range(1, self.tries + 1):
            try:
                return operation()
            except sqlite3.Error as exc:
                if not _clears_by_waiting(exc):
                    raise BulletinDbError(f"{self.path}: {exc}") from None
                if attempt == self.tries:
                    raise BulletinDbError(f"{self.path}: {exc} ({self.tries} tries)") from None
                time.sleep(random.uniform(1e-6, BULLDB_MAX_SLEEP_S))

    def load(self) -> Seen:
        row = self._retry(lambda: self.db.execute(
            "SELECT last, pending FROM seen WHERE user = ?", (self.user,)).fetchone())
        if row is None:
            if self.fallback is None:
                return Seen(None)
            seen = self.fallback.load()
            return Seen(seen.last, seen.empty)
        pending = None
        if row[1]:
            try:
                pending = json.loads(row[1])
            except ValueError:
                pending = None
        return Seen(int(row[0]), pending=pending if isinstance(pending, dict) else None)

    def save(self, last: int, pending: dict | None = None) -> None:
        """One short exclusive transaction (the only time the database is write-locked)."""
        text = json.dumps(pending, sort_keys=True) if pending is not None else None

        def write():
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.execute("INSERT INTO seen (user, last, pending) VALUES (?, ?, ?) "
                                "ON CONFLICT(user) DO UPDATE SET last = excluded.last, "
                                "pending = excluded.pending", (self.user, last, text))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        self._retry(write)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


# --- the delivery -----------------------------------------------------------------------------------
class Delivery:
    """One login's bulletin delivery. Use `deliver(...)`."""

    def __init__(self, cfg, login, paths: SpoolPaths, hostname: str, log: Log,
                 step_hook: StepHook | None, lock_step_s: float, clock: Callable[[], float]):
        self.cfg = cfg
        self.login = login
        self.user = login.user
        self.paths = paths
        self.hostname = hostname
        self.log = log
        self.hook = step_hook
        self.lock_step_s = lock_step_s
        self.clock = clock
        self.bulldir = cfg.bulldir

    def step(self, name: str) -> None:
        if self.hook is not None:
            self.hook(f"bulletins:{name}")

    # --- the record -----------------------------------------------------------------------------
    def _popbull(self) -> PopbullFile | None:
        home = PopbullFile(os.path.join(self.login.home, POPBULL_NAME), self.log) \
            if self.login.home else None
        popbulldir = self.cfg.popbulldir
        if popbulldir:
            return PopbullFile(os.path.join(popbulldir, self.user + POPBULL_SUFFIX), self.log,
                               fallback=home)
        return home

    def open_store(self):
        """The record of what the user has seen, or None (logged) when there is no place for it.
        Raises PopError [SYS/TEMP] when the database cannot be used and bulldb-nonfatal is off."""
        popbull = self._popbull()
        if not self.cfg.bulldb:
            if popbull is None:
                self.log(syslog.LOG_NOTICE, f"No bulletins for {self.user}: no home directory "
                                            "for .popbull and no popbulldir")
            return popbull
        path = os.path.join(self.bulldir, BULLDB_DIR, BULLDB_FILE)
        try:
            return BulletinDb(path, self.user, self.cfg.bulldb_max_tries,
                              self.log, popbull)
        except BulletinDbError as exc:
            self.db_failed(exc)
            return None

    def db_failed(self, exc: Exception) -> None:
        if self.cfg.bulldb_nonfatal:
            self.log(syslog.LOG_WARNING, f"Bulletin database unusable, {self.user} goes on "
                                         f"without bulletins: {exc}")
            return
        raise PopError(BULLDB_FAILED_TEXT, RespCode.SYS_TEMP,
                       log=f"Unable to open Bulletin database for {self.user}: {exc}")

    # --- the steps --------------------------------------------------------------------------------
    def run(self) -> int:
        try:
            every = list_bulletins(self.bulldir, self.cfg.group_bulletins)
        except OSError as exc:
            self.log(syslog.LOG_ERR, f"Unable to read bulletin directory {self.bulldir}: "
                                     f"{exc.strerror}")
            return 0
        if not every:
            return 0
        store = self.open_store()
        if store is None:
            return 0
        try:
            return self._with_store(store, every)
        except BulletinDbError as exc:
            self.db_failed(exc)
            return 0
        except OSError as exc:
            self.log(syslog.LOG_ERR, f"Bulletins for {self.user} not delivered: "
                                     f"{getattr(exc, 'filename', None) or 'spool'}: "
                                     f"{exc.strerror or exc}")
            return 0
        finally:
            if isinstance(store, BulletinDb):
                store.close()

    def _with_store(self, store, every: list[Bulletin]) -> int:
        newest = every[-1].number
        seen = store.load()
        if seen.pending is None and seen.last is not None and seen.last >= newest:
            return 0                                         # the common case: no lock at all
        if self.cfg.check_hash_dir:
            self.paths.ensure_hash_dirs(self.log)
        lock = spool_lock(self.cfg, self.paths, create=True, step_hook=self.step, log=self.log)
        lock.acquire(LockTiming.login(self.lock_step_s))
        try:
            return self._locked(store, lock.fd, every, newest, lock.refresh_if_due)
        finally:
            lock.release()

    def _locked(self, store, fd: int, every: list[Bulletin], newest: int, refresh) -> int:
        seen = store.load()                                  # again: another login may have run
        if seen.pending is not None:
            self._settle(store, fd, seen, every)
            seen = store.load()
        if seen.empty:
            last = newest                                    # an empty file = all seen
        elif seen.last is None:
            last = max(0, newest - self.cfg.max_bulletins)
        else:
            last = seen.last
        wanted = [b for b in every
                  if b.number > last and is_for(b, self.user, self.login.gid)]
        stamp = int(self.clock())
        offset = os.fstat(fd).st_size
        payload, delivered = self._payload(fd, offset, wanted, stamp)
        if not payload:
            if seen.last != max(last, newest) or seen.empty:
                store.save(max(last, newest))
            return 0
        st = os.fstat(fd)
        intent = {"dev": st.st_dev, "ino": st.st_ino, "offset": offset, "length": len(payload),
                  "sha256": hashlib.sha256(payload).hexdigest(), "stamp": stamp,
                  "numbers": [b.number for b in wanted], "newest": newest}
        self.step("record-intent")
        store.save(last, intent)
        try:
            self._append(fd, offset, payload, refresh)
            self.step("record-seen")
            store.save(max(last, newest))
        except BaseException:
            self._cut_back(fd, offset)
            try:
                store.save(last)                             # forget the intent
            except (OSError, BulletinDbError) as exc:
                self.log(syslog.LOG_WARNING, f"bulletin intent of {self.user} left: {exc}")
            raise
        self.log(syslog.LOG_INFO, f"Delivered {delivered} bulletin(s) to {self.user} "
                                  f"(up to {newest})")
        return delivered

    def _payload(self, fd: int, offset: int, wanted: list[Bulletin], stamp: int
                 ) -> tuple[bytes, int]:
        """The bytes to append at `offset` (padding first) and how many bulletins they hold."""
        first = os.pread(fd, limits.MAX_SPOOL_LINE_OCTETS, 0) if offset else b""
        mmdf = first.split(b"\n", 1)[0] + b"\n" if first.startswith(b"\x01") else None
        parts = []
        for bulletin in wanted:
            data = self._read_bulletin(bulletin)
            if data is None:
                continue
            message = render(data, self.user, self.hostname, f"{stamp}.{bulletin.number % 1000:03d}",
                             mmdf)
            if message is None:
                self.log(syslog.LOG_WARNING, f"Bulletin {bulletin.name} skipped: it does not "
                                             "start with a valid 'From ' line")
                continue
            parts.append(message)
        if not parts:
            return b"", 0
        return padding_after(fd, offset) + b"".join(parts), len(parts)

    def _read_bulletin(self, bulletin: Bulletin) -> bytes | None:
        path = os.path.join(self.bulldir, bulletin.name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            self.log(syslog.LOG_WARNING, f"Bulletin {bulletin.name} skipped: {exc.strerror}")
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_BULLETIN_OCTETS:
                self.log(syslog.LOG_WARNING, f"Bulletin {bulletin.name} skipped: not a plain "
                                             f"file of at most {MAX_BULLETIN_OCTETS} octets")
                return None
            if not st.st_mode & stat.S_IROTH:
                # Bulletins are for everyone; one readable only through the session's mail
                # group (a mis-set bulldir naming a spool directory) is somebody's mail.
                self.log(syslog.LOG_WARNING, f"Bulletin {self.bulldir}/{bulletin.name} "
                                             "skipped: not world-readable")
                return None
            return read_up_to(fd, st.st_size)
        finally:
            os.close(fd)

    def _append(self, fd: int, offset: int, payload: bytes, refresh) -> None:
        """Extend, fsync, write all but the first byte, fdatasync, then the first byte, fsync."""
        end = offset + len(payload)
        self.step("extend-spool")
        os.ftruncate(fd, end)
        try:
            os.posix_fallocate(fd, offset, len(payload))
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
        self.step("fsync-spool-size")
        os.fsync(fd)
        view = memoryview(payload)
        pos = 1
        while pos < len(payload):
            n = min(limits.COPY_CHUNK_OCTETS, len(payload) - pos)
            self.step("write-spool")
            pwrite_all(fd, view[pos:pos + n], offset + pos)
            pos += n
            refresh()
        # Everything but the marker byte must be durable before the marker stops being NUL:
        # otherwise writeback could persist the marker first and a crash leave a half copy
        # that looks complete.
        self.step("fsync-spool-body")
        os.fdatasync(fd)
        self.step("write-spool-marker")
        pwrite_all(fd, payload[:1], offset)
        self.step("fsync-spool")
        os.fsync(fd)

    def _cut_back(self, fd: int, offset: int) -> None:
        """After a failure: the spool as it was before the bulletins."""
        try:
            self.step("truncate-spool-back")
            os.ftruncate(fd, offset)
            os.fsync(fd)
        except OSError as exc:
            self.log(syslog.LOG_ERR, f"Unable to cut {self.user}'s spool back to {offset} "
                                     f"octets after a failed bulletin copy: {exc.strerror}")

    def _settle(self, store, fd: int, seen: Seen, every: list[Bulletin]) -> None:
        """A crashed login's intent (see the module docstring): finish or forget it."""
        p = seen.pending
        last = seen.last if seen.last is not None else 0
        st = os.fstat(fd)
        try:
            offset, length, digest = int(p["offset"]), int(p["length"]), str(p["sha256"])
            same = (int(p["dev"]), int(p["ino"])) == (st.st_dev, st.st_ino)
            newest, stamp = int(p["newest"]), int(p["stamp"])
            numbers = {int(n) for n in p["numbers"]}
        except (KeyError, TypeError, ValueError):
            self.log(syslog.LOG_WARNING, f"Ignoring a malformed bulletin intent of {self.user}")
            store.save(last)
            return
        size = st.st_size
        end = offset + length
        verdict = "not delivered"
        if same and size >= end:
            if sha256_of_range(fd, offset, length) == digest:
                verdict = "delivered"
            elif os.pread(fd, 1, offset) == b"\0":
                wanted = [b for b in every if b.number in numbers]
                payload, _ = self._payload(fd, offset, wanted, stamp)
                if hashlib.sha256(payload).hexdigest() == digest:
                    self.step("rewrite-incomplete")
                    pwrite_all(fd, payload, offset)
                    os.fsync(fd)
                    verdict = "completed"
                elif size == end:
                    self._cut_back(fd, offset)
                    verdict = "cut back"
                else:
                    verdict = "left incomplete (the bulletin files changed)"
        self.log(syslog.LOG_NOTICE, f"Bulletin delivery of an earlier session of {self.user}: "
                                    f"{verdict}")
        store.save(max(last, newest) if verdict in ("delivered", "completed") else last)


def deliver(cfg, login, paths: SpoolPaths, hostname: str, log: Log, *,
            step_hook: StepHook | None = None, lock_step_s: float = limits.LOCK_RETRY_STEP_S,
            clock: Callable[[], float] = time.time) -> int:
    """Append the user's new bulletins to the spool (call after the privilege drop and before
    Maildrop.open). Returns how many were delivered; 0 when bulldir is unset. Raises PopError
    only for the bulletin database without bulldb-nonfatal, and the spool lock's refusals."""
    if not cfg.bulldir:
        return 0
    return Delivery(cfg, login, paths, hostname, log, step_hook, lock_step_s, clock).run()
