"""The pop.auth store: APOP secrets (and, later, SCRAM verifiers) in one SQLite file.

docs/compatibility.md, "APOP and the pop.auth store". C Qpopper kept a dbm file (`/etc/pop.auth`, owned by the
`pop` account, mode exactly 0600, secrets XOR 0xFF). We keep the ownership and mode rules and
move to SQLite: every change is one transaction, so a crash never leaves the file half
written, and concurrent sessions read it safely.

The APOP secret is stored in clear: APOP's digest is MD5(timestamp + secret), so the server
needs the secret itself (the reason RFC 1939 calls APOP's secret a shared secret). The file's
owner and 0600 mode are what protect it. SCRAM stores salted verifiers instead, in
their own table, so a user may have either or both.

Lookups open the file read-only and refuse it unless it is a regular file, mode 0600, owned
by the configured owner: `-ERR [SYS/PERM] POP authentication DB has wrong mode (0%o)`.

Schema history (PRAGMA user_version):
  1  users(name, apop_secret, changed), scram(name, mechanism, salt, iterations,
     stored_key, server_key), ON DELETE CASCADE from users.
"""

from __future__ import annotations

import os
import pwd
import sqlite3
import stat
import time
import urllib.parse
from contextlib import closing

from qpopper.pop3.responses import PopError, RespCode
from qpopper.auth import scram

SCHEMA_VERSION = 1
STORE_MODE = 0o600
DECOY_KEY_SUFFIX = ".decoy-key"
DECOY_KEY_OCTETS = 32

_SCHEMA = (
    """CREATE TABLE users (
           name        TEXT PRIMARY KEY NOT NULL,
           apop_secret TEXT,                       -- NULL: no APOP for this user
           changed     INTEGER NOT NULL            -- unix time of the last change
       )""",
    # SCRAM (RFC 5802 / 7677) verifiers, one row per mechanism ("SCRAM-SHA-256", ...).
    """CREATE TABLE scram (
           name        TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
           mechanism   TEXT NOT NULL,
           salt        BLOB NOT NULL,
           iterations  INTEGER NOT NULL,
           stored_key  BLOB NOT NULL,
           server_key  BLOB NOT NULL,
           PRIMARY KEY (name, mechanism)
       )""",
)

_BUSY_TIMEOUT_S = 5.0
"""A writer (popauth) holds the lock for one short transaction; readers wait this long."""


class StoreError(Exception):
    """A pop.auth problem for tools (popauth): one readable line."""


class DecoyKeyUnusable(Exception):
    """The decoy key file is there but cannot be used: one line naming the file and why."""


NO_OWNER_UID = -1
"""pop-auth-owner names no account: nothing owns the store or its decoy key rightly."""

_DECOY_KEY_FAULTS_TOLD: set[str] = set()
"""The decoy-key faults ("<key>: why") this process has logged, or its master did at start-up
or reload before forking it (preflight.warn_without_decoy_key): the exchanges log each once,
not at every SCRAM exchange for a name without a verifier."""


def store_owner_uid(cfg) -> int:
    """The uid that must own the pop.auth store and its decoy key, for the server's lookups
    (auth/policy.py) and the start-up checks alike: pop-auth-owner's when running as root
    (NO_OWNER_UID without such an account: the files are refused), this process's own
    otherwise (demo mode, where the invoking user owns everything)."""
    if os.geteuid() != 0:
        return os.getuid()
    try:
        return pwd.getpwnam(cfg.pop_auth_owner).pw_uid
    except (KeyError, TypeError):
        return NO_OWNER_UID


def decoy_key_line(key_and_why: str) -> str:
    """The log line of a decoy key that cannot be used, from the server's exchanges and the
    start-up checks alike."""
    return (f"SCRAM decoy key {key_and_why}; SCRAM's made-up exchanges are keyed by "
            f"/etc/machine-id until it is fixed")


def forget_told_decoy_key_faults() -> None:
    """At each start-up, reload and check, before its own warning."""
    _DECOY_KEY_FAULTS_TOLD.clear()


def first_telling_of_decoy_key_fault(key_and_why: str) -> bool:
    """True the first time this process (with what its master told before forking it) meets
    this decoy-key fault: log it then only."""
    if key_and_why in _DECOY_KEY_FAULTS_TOLD:
        return False
    _DECOY_KEY_FAULTS_TOLD.add(key_and_why)
    return True


def decoy_key_fault(st: os.stat_result, size: int, owner_uid: int) -> str | None:
    """What is wrong with a decoy key file of this stat and size (None: nothing), for the
    server (PopAuthStore.decoy_key) and the start-up checks alike."""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if stat.S_IMODE(st.st_mode) != STORE_MODE:
        return f"mode 0{stat.S_IMODE(st.st_mode):o}, not 0600"
    if st.st_uid not in (0, owner_uid):
        if owner_uid == NO_OWNER_UID:
            return f"owned by uid {st.st_uid}, not by root (pop-auth-owner has no account)"
        return f"owned by uid {st.st_uid}, not by uid {owner_uid} (the store's owner)"
    if size != DECOY_KEY_OCTETS:
        return f"{size} octets, not {DECOY_KEY_OCTETS}"
    return None


class PopAuthStore:
    """One pop.auth file. Cheap to construct; every call opens and closes its connection,
    so a session child never keeps the file open after authentication."""

    def __init__(self, path: str, owner_uid: int | None = None):
        self.path = path
        # The account that must own the file (Qpopper's popuid). None: the current process
        # (demo mode, where the invoking user owns everything).
        self.owner_uid = os.getuid() if owner_uid is None else owner_uid

    # ---- creation -------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str, owner_uid: int | None = None, owner_gid: int | None = None
               ) -> "PopAuthStore":
        """`popauth -init`: a new, empty store at `path`, mode 0600, owned by the owner.

        Refuses to overwrite an existing file (StoreError)."""
        store = cls(path, owner_uid)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, STORE_MODE)
        except FileExistsError:
            raise StoreError(f"{path}: already exists") from None
        except OSError as exc:
            raise StoreError(f"{path}: cannot create: {exc.strerror}") from None
        try:
            os.fchmod(fd, STORE_MODE)      # whatever the umask
            if os.geteuid() == 0:
                os.fchown(fd, store.owner_uid, -1 if owner_gid is None else owner_gid)
        finally:
            os.close(fd)
        try:
            with closing(store._connect(read_only=False, new=True)) as db, db:
                db.execute("BEGIN IMMEDIATE")      # DDL too: all of the schema or nothing
                for statement in _SCHEMA:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            os.unlink(path)
            raise
        return store

    # ---- lookups (the server) ---------------------------------------------------------------
    def exists(self) -> bool:
        return os.path.lexists(self.path)

    def get_secret(self, user: str) -> str | None:
        """The user's APOP secret, or None when the user has none (or is not in the store)."""
        self.check_file()
        with closing(self._connect(read_only=True)) as db:
            row = db.execute("SELECT apop_secret FROM users WHERE name = ?", (user,)).fetchone()
        return None if row is None else row[0]

    def has_user(self, user: str) -> bool:
        self.check_file()
        with closing(self._connect(read_only=True)) as db:
            row = db.execute("SELECT 1 FROM users WHERE name = ?", (user,)).fetchone()
        return row is not None

    def list_users(self) -> list[str]:
        self.check_file()
        with closing(self._connect(read_only=True)) as db:
            return [name for (name,) in db.execute("SELECT name FROM users ORDER BY name")]

    def check_file(self) -> None:
        """Qpopper's rule: the file must be a regular file, 0600, owned by the owner account.

        A missing file or one we cannot open is `[SYS/TEMP]`; a wrong mode or owner is
        `[SYS/PERM]` with Qpopper's text (details, like the owner found, go to the log only).
        """
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            raise PopError("POP authentication DB not available", RespCode.SYS_TEMP,
                           log=f"pop.auth store {self.path} does not exist") from None
        except OSError as exc:
            raise PopError("POP authentication DB not available", RespCode.SYS_TEMP,
                           log=f"pop.auth store {self.path}: {exc.strerror}") from None
        mode = stat.S_IMODE(st.st_mode)
        regular = stat.S_ISREG(st.st_mode)
        if not regular or mode != STORE_MODE or st.st_uid != self.owner_uid:
            kind = "" if regular else " (not a regular file)"
            raise PopError(f"POP authentication DB has wrong mode (0{mode:o})", RespCode.SYS_PERM,
                           log=(f"pop.auth store {self.path}{kind}: mode 0{mode:o}, owner uid "
                                f"{st.st_uid}; it must be a regular file, mode 0600, owned by "
                                f"uid {self.owner_uid}"))

    # ---- changes (popauth, demo mode, tests) ------------------------------------------------
    def set_secret(self, user: str, secret: str, *,
                   iterations: int = scram.DEFAULT_ITERATIONS) -> None:
        """Add the user or replace their secret, in one transaction: the APOP secret (also
        CRAM-MD5's, which needs the clear secret too) and fresh SCRAM-SHA-1 and SCRAM-SHA-256
        verifiers (new random salts), so the user may log in with any of them."""
        prepared = [_prepare(user, secret, iterations, "the secret")]
        self._change_with(lambda db: _write_users(db, prepared))

    def get_scram(self, user: str, mechanism: str) -> "scram.Verifier | None":
        """The user's SCRAM verifier for `mechanism`, or None."""
        self.check_file()
        with closing(self._connect(read_only=True)) as db:
            row = db.execute("SELECT salt, iterations, stored_key, server_key FROM scram "
                             "WHERE name = ? AND mechanism = ?", (user, mechanism)).fetchone()
        if row is None:
            return None
        salt, iterations, stored_key, server_key = row
        return scram.Verifier(mechanism, bytes(salt), int(iterations), bytes(stored_key),
                              bytes(server_key))

    def import_users(self, entries) -> int:
        """Add or replace many users' secrets in ONE transaction (popauth --import-dbm):
        all of them or, on any error, none. Returns how many."""
        prepared = [_prepare(user, secret, scram.DEFAULT_ITERATIONS, f"{user}: the secret")
                    for user, secret in entries]
        return self._change_with(lambda db: _write_users(db, prepared))

    def delete(self, user: str) -> bool:
        """Remove the user (and their SCRAM verifiers). False when they were not there."""
        return self._change_with(lambda db: db.execute("DELETE FROM users WHERE name = ?",
                                                       (user,)).rowcount) > 0

    def _change_with(self, change) -> int:
        """Run `change(db)` in one transaction (committed, or rolled back on any error)."""
        self.check_file_for_change()
        try:
            with closing(self._connect(read_only=False)) as db, db:
                return change(db)
        except PopError as exc:
            raise StoreError(exc.log or exc.text) from None
        except sqlite3.Error as exc:
            # The transaction was rolled back: the store is as it was before.
            raise StoreError(f"{self.path}: {exc}; nothing was changed") from None

    def check_file_for_change(self) -> None:
        """Like check_file, but for tools: a readable StoreError instead of a PopError."""
        try:
            self.check_file()
        except PopError as exc:
            raise StoreError(exc.log or exc.text) from None

    # ---- the SCRAM decoys' key ------------------------------------------------------------------
    def decoy_key(self) -> bytes | None:
        """The secret that keys SCRAM's decoy verifiers (auth/challenges.py, decoy_verifier):
        DECOY_KEY_OCTETS random octets in `<store>.decoy-key`, mode 0600, owned like the
        store, so only root and the owner can compute a decoy, and kept, so decoys stay the
        same across restarts as real salts do (docs/internals.md, "Store mechanisms").
        popauth makes it; so does this, when it can. None: there is none and it cannot be
        made here (a read-only store directory, as under the systemd units). A key file that
        cannot be read, or is not a regular file of the right size, owner and mode, raises
        DecoyKeyUnusable: the caller logs it and falls back as without a key, so a name
        without a verifier is answered as one with (never an error only such names get)."""
        key_path = self.decoy_key_path
        if _missing(key_path) and not self._made_decoy_key():
            return None                     # none, and it cannot be made here
        try:
            return self._read_decoy_key(key_path)
        except OSError as exc:              # ELOOP (a symlink), EACCES, EIO, gone again, ...
            raise DecoyKeyUnusable(f"{key_path}: {exc.strerror}") from None

    def _made_decoy_key(self) -> bool:
        """make_decoy_key, False when it cannot (a read-only directory); True when the key
        is there now, made here or by a racing maker."""
        try:
            self.make_decoy_key()
        except OSError:
            return False
        return True

    @property
    def decoy_key_path(self) -> str:
        return self.path + DECOY_KEY_SUFFIX

    def make_decoy_key(self) -> bool:
        """Make the decoy key unless it exists: written whole, then linked into place, so a
        racing reader sees none or all of it, and the first maker wins. True when this call
        made it. Raises OSError."""
        if os.path.lexists(self.decoy_key_path):
            return False            # nothing written: a read-only directory is no refusal
        new = f"{self.decoy_key_path}.{os.getpid()}.new"
        fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, STORE_MODE)
        try:
            try:
                os.fchmod(fd, STORE_MODE)      # whatever the umask
                if os.geteuid() == 0:
                    os.fchown(fd, self.owner_uid, -1)
                os.write(fd, os.urandom(DECOY_KEY_OCTETS))
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(new, self.decoy_key_path)
            except FileExistsError:
                return False
            return True
        finally:
            os.unlink(new)

    def _read_decoy_key(self, key_path: str) -> bytes:
        fd = os.open(key_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            key = os.read(fd, DECOY_KEY_OCTETS + 1) if stat.S_ISREG(st.st_mode) else b""
        finally:
            os.close(fd)
        fault = decoy_key_fault(st, len(key), self.owner_uid)
        if fault:
            raise DecoyKeyUnusable(f"{key_path}: {fault}")
        return key

    # ---- internals ----------------------------------------------------------------------------
    def _connect(self, read_only: bool, new: bool = False) -> sqlite3.Connection:
        # URI form so read-only really is read-only (no journal is created by a reader), and
        # `mode=rw` never creates a missing file behind our mode checks.
        uri = f"file:{_uri_path(self.path)}?mode={'ro' if read_only else 'rw'}"
        try:
            db = sqlite3.connect(uri, uri=True, timeout=_BUSY_TIMEOUT_S,
                                 isolation_level="IMMEDIATE" if not read_only else "DEFERRED")
        except sqlite3.Error as exc:
            raise PopError("POP authentication DB not available", RespCode.SYS_TEMP,
                           log=f"pop.auth store {self.path}: {exc}") from None
        try:
            db.execute("PRAGMA foreign_keys = ON")
            version = db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as exc:
            db.close()
            raise PopError("POP authentication DB not available", RespCode.SYS_TEMP,
                           log=f"pop.auth store {self.path}: not a pop.auth database ({exc})"
                           ) from None
        if version != (0 if new else SCHEMA_VERSION):
            db.close()
            raise PopError("POP authentication DB not available", RespCode.SYS_TEMP,
                           log=(f"pop.auth store {self.path}: schema version {version}, "
                                f"this server reads version {SCHEMA_VERSION}"))
        return db


def _prepare(user: str, secret: str, iterations: int, what: str):
    """(user, secret, its SCRAM verifiers) once both are checked; `what` names the secret in
    the refusal."""
    _check_name(user)
    if not secret or "\0" in secret:
        raise StoreError(f"{what} must be non-empty and contain no NUL")
    return user, secret, [scram.make_verifier(mechanism, secret, iterations=iterations)
                          for mechanism in scram.MECHANISMS]


def _write_users(db, prepared) -> int:
    """Add or replace each prepared user: the APOP secret and the SCRAM verifiers (the old
    ones dropped). Returns how many."""
    now = int(time.time())
    for user, secret, verifiers in prepared:
        db.execute("INSERT INTO users (name, apop_secret, changed) VALUES (?, ?, ?) "
                   "ON CONFLICT(name) DO UPDATE SET apop_secret = excluded.apop_secret, "
                   "changed = excluded.changed", (user, secret, now))
        db.execute("DELETE FROM scram WHERE name = ?", (user,))
        db.executemany("INSERT INTO scram (name, mechanism, salt, iterations, stored_key, "
                       "server_key) VALUES (?, ?, ?, ?, ?, ?)",
                       [(user, v.mechanism, v.salt, v.iterations, v.stored_key, v.server_key)
                        for v in verifiers])
    return len(prepared)


def _missing(path: str) -> bool:
    """No such file (one that cannot be looked at is there: reading it says why)."""
    try:
        os.lstat(path)
    except FileNotFoundError:
        return True
    except OSError:
        pass
    return False


def _check_name(user: str) -> None:
    if not user or any(c in user for c in "\0\r\n/") or len(user.encode()) > 255:
        raise StoreError(f"invalid user name {user!r}")


def _uri_path(path: str) -> str:
    return urllib.parse.quote(os.path.abspath(path), safe="/")
