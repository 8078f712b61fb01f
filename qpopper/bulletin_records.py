"""What each user has seen of the bulletins: one number, kept in ~/.popbull (or
<popbulldir>/<user>.popbull), or with bulldb in the shared SQLite database; and a delivery's
pending intent, so a crashed login's delivery is settled by the next (docs/bulletins.md,
"What a user has seen" and "Delivery, crash-safe")."""

from __future__ import annotations

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

from qpopper.spool.durable import fsync_dir, pwrite_all, unlink_if_present

Log = Callable[[int, str], None]

POPBULL_NAME = ".popbull"
POPBULL_SUFFIX = ".popbull"
POPBULL_MODE = 0o600
BULLDB_DIR = "bulldb"
BULLDB_FILE = "bulldb.sqlite"
BULLDB_MODE = 0o660
"""Every user's session (group mail) writes the database; see the module docstring."""
BULLDB_MAX_SLEEP_S = 0.5
"""Qpopper's usleep between tries: a random 1 us - 0.5 s."""
PENDING_PREFIX = b"pending "


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
                try:
                    fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, BULLDB_MODE)
                    os.fchmod(fd, BULLDB_MODE)      # whatever the umask: every user writes it
                except FileExistsError:
                    fd = os.open(self.path, flags)  # another login created it just now
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
            except OverflowError as exc:       # a number over SQLite's INTEGER: never clears
                raise BulletinDbError(f"{self.path}: {exc}") from None
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
