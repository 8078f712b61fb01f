"""Bulletins: messages for every POP user, copied into each spool at login like a local
delivery, crash-safe, before the maildrop opens (docs/bulletins.md; differences from Qpopper:
docs/compatibility.md, "Bulletins"). Options: bulldir (-b), max-bulletins, group-bulletins,
popbulldir, bulldb, bulldb-max-tries, bulldb-nonfatal (-B). What each user has seen is kept by
bulletin_records.py.
"""

from __future__ import annotations

import errno
import grp
import hashlib
import os
import re
import stat
import syslog
import time
from dataclasses import dataclass
from typing import Callable

from qpopper import limits
from qpopper.pop3.responses import PopError, RespCode
from qpopper.spool import mbox
from qpopper.bulletin_records import (BULLDB_DIR, BULLDB_FILE, POPBULL_NAME, POPBULL_SUFFIX,
                                     BulletinDb, BulletinDbError, PopbullFile, Seen)
from qpopper.spool.durable import pwrite_all, recorded_as, sha256_of_range
from qpopper.spool.locking import LockTiming, spool_lock
from qpopper.spool.mbox import (FRAMING_LINE, file_head, mmdf_separator, padding_after,
                                separator_line)
from qpopper.spool.paths import SpoolPaths

Log = Callable[[int, str], None]
StepHook = Callable[[str], None]

ALL_GROUP = "ALL"
MAX_BULLETIN_OCTETS = 16 * 1024 * 1024
"""A bulletin larger than this is a mistake in bulldir, not a message for every user."""
MAX_BULLETIN_NUMBER = 2**63 - 1
"""The largest number a record holds (SQLite's INTEGER); a file named above it is skipped."""
EMPTY_SPOOL_FIRST_LINE = {"mbox": b"", "mmdf": b"\x01\x01\x01\x01\n"}
"""What an empty spool's first line would be, by spool-format (mmdf: MMDF's usual ^A^A^A^A)."""
BULLDB_FAILED_TEXT = "Unable to open Bulletin database; contact your administrator"
UNSETTLED_TEXT = "Unable to finish an earlier session's bulletins; try again later"
NL, CR, SP, TAB = 0x0A, 0x0D, 0x20, 0x09


# --- the bulletin directory ------------------------------------------------------------------------
@dataclass(frozen=True)
class Bulletin:
    number: int
    name: str
    group: str | None       # None: everyone


LEFT_OVER_SUFFIXES = ("~", ".bak", ".swp", ".swo", ".tmp", ".orig", ".dpkg-old", ".dpkg-new",
                      ".dpkg-dist", ".dpkg-tmp", ".dpkg-bak", ".dpkg-remove", ".ucf-dist",
                      ".ucf-old", ".ucf-new", ".rpmnew", ".rpmsave", ".rpmorig")
"""Names an editor or a package manager leaves beside a file: never bulletins."""


def is_left_over(name: str) -> bool:
    """An editor's backup or swap file, or a package manager's old/new copy
    (docs/bulletins.md, "What a bulletin is")."""
    return name.lower().endswith(LEFT_OVER_SUFFIXES)


def note_left_over_group(name: str, log: Log) -> None:
    """With group-bulletins, `00007.tmp` reads as a bulletin for the group `tmp`, but its name
    makes it a left-over: say so at every login that passes it over, as the administrator
    may have meant it for that group (docs/bulletins.md, "What a bulletin is")."""
    parts = name.split(".")
    if len(parts) == 2 and "." + parts[1].lower() in LEFT_OVER_SUFFIXES:
        log(syslog.LOG_NOTICE, f"Bulletin {name} ignored: its name ends like an editor's or "
                               f"package manager's left-over; for group {parts[1]} name it "
                               f"{name}.<subject>")


def list_bulletins(bulldir: str, group_bulletins: bool, log: Log) -> list[Bulletin]:
    """The bulletins in number order (ties by name). Raises OSError for an unreadable dir."""
    found = []
    for name in os.listdir(bulldir):
        digits = len(name) - len(name.lstrip("0123456789"))
        if not digits or not name[:digits].isascii():
            continue
        if is_left_over(name):
            if group_bulletins:
                note_left_over_group(name, log)
            continue
        number = int(name[:digits])
        if number > MAX_BULLETIN_NUMBER:
            # docs/bulletins.md, "What a bulletin is": the record (SQLite's INTEGER) cannot
            # hold it, and it would stand above every later bulletin for good.
            log(syslog.LOG_WARNING, f"Bulletin {name} skipped: its number is over "
                                    f"{MAX_BULLETIN_NUMBER}")
            continue
        parts = name.split(".")
        group = parts[1] if group_bulletins and len(parts) > 1 and parts[1] else None
        found.append(Bulletin(number, name, group))
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
SHARED_PIECE_OCTETS = 4096
"""render() copies kept runs shorter than this; longer ones are views into the file's bytes,
so a huge bulletin costs one copy (the message) and views of at most size/4096 runs."""
_DROPPED_FIELD = re.compile(rb"\s*(x-uidl|status|to)\s*(?::|\Z)", re.IGNORECASE)
"""A header line whose field name (stripped) is X-UIDL, Status or To: render drops or
replaces it (and its continuation lines)."""


def first_line_end(data) -> int:
    """Where the first line of `data` ends: just past its LF, else the end (mbox lines)."""
    return data.find(b"\n") + 1 or len(data)


def render(data, user: str, hostname: str, uidl: str, mmdf_separator: bytes | None,
           *, maildir: bool = False) -> bytes:
    """The bulletin as it goes into the spool. `data` starts with a valid From line (up to its
    LF): read_file's check, the one rule (docs/bulletins.md, "Skipped bulletins"). For a
    Maildir file (`maildir`): without the From line, the `>` quoting and the framing line,
    which only an mbox needs. Memory: the message, plus views into `data` (no list of its
    lines): a 16 MiB bulletin is rendered once per user it is copied to."""
    size = len(data)
    view = memoryview(data)
    pieces: list = []

    def keep(start: int, end: int) -> None:
        if end - start >= SHARED_PIECE_OCTETS:
            pieces.append(view[start:end])
        elif end > start:
            pieces.append(data[start:end])

    pos = first_end = first_line_end(data)
    if mmdf_separator:
        pieces.append(mmdf_separator)
    elif not maildir:
        keep(0, first_end)
        if data[first_end - 1] != NL:
            pieces.append(b"\n")
    pieces.append(f"X-UIDL: {uidl}\n".encode())
    to_line = f"To: {user}@{hostname}\n".encode()
    run, dropping = pos, False              # run: where the kept octets not yet in pieces start
    while pos < size:
        end = data.find(b"\n", pos) + 1 or size
        if data[pos] == NL or (data[pos] == CR and end == pos + 2 and data[pos + 1] == NL):
            break                                   # the empty line ending the header
        if data[pos] in (SP, TAB):                  # a continuation of the line before
            if dropping:
                keep(run, pos)
                run = end
        else:
            field = _DROPPED_FIELD.match(data, pos, end)
            dropping = field is not None
            if dropping:
                keep(run, pos)
                run = end
                if field[1].lower() == b"to":
                    pieces.append(to_line)
        pos = end
    if not maildir:                                 # body lines that would be separators
        at = data.find(b"\nFrom ", pos)
        while at >= 0:
            start = at + 1
            end = data.find(b"\n", start) + 1 or size
            if end - start < limits.MAX_SPOOL_LINE_OCTETS and mbox.is_from_line(data[start:end]):
                keep(run, start)
                pieces.append(b">")
                run = start
            at = data.find(b"\nFrom ", end - 1)
    keep(run, size)
    if pieces[-1][-1] != NL:
        pieces.append(b"\n")
    if not maildir:
        pieces.append(mmdf_separator or FRAMING_LINE)   # docs/mbox.md, "What write-back writes"
    return b"".join(pieces)


# --- the delivery -----------------------------------------------------------------------------------
def drop_head(paths: SpoolPaths) -> bytes:
    """The first line of the mail an empty spool's bulletins will follow: a normal-mode
    session's drop (its own, or one a crash left) holds the spool's mail, and the update
    puts the spool's after it, so the bulletin takes that mail's framing (MMDF or From_;
    docs/bulletins.md, "What a bulletin is"). b"" when there is none: spool-format decides."""
    for path in (paths.temp_drop, paths.old_temp_drop):
        if not path:
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode):
                head = file_head(fd, st.st_size)
                if head:
                    return head
        except OSError:
            pass
        finally:
            os.close(fd)
    return b""


def no_from_line(log: Log, bulletin: Bulletin) -> None:
    log(syslog.LOG_WARNING, f"Bulletin {bulletin.name} skipped: it does not start with a "
                            "valid 'From ' line")


def read_file(bulldir: str, bulletin: Bulletin, log: Log) -> bytes | None:
    """The bulletin file's bytes (a bytearray when read whole), or None (logged) when it
    cannot be one."""
    try:
        fd = os.open(os.path.join(bulldir, bulletin.name),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        log(syslog.LOG_WARNING, f"Bulletin {bulletin.name} skipped: {exc.strerror}")
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_BULLETIN_OCTETS:
            log(syslog.LOG_WARNING, f"Bulletin {bulletin.name} skipped: not a plain file of at "
                                    f"most {MAX_BULLETIN_OCTETS} octets")
            return None
        if not st.st_mode & stat.S_IROTH:
            # Bulletins are for everyone; one readable only through the session's mail
            # group (a mis-set bulldir naming a spool directory) is somebody's mail.
            log(syslog.LOG_WARNING, f"Bulletin {bulldir}/{bulletin.name} skipped: not "
                                    "world-readable")
            return None
        # docs/bulletins.md, "Skipped bulletins": a broken bulletin is tried at every login
        # of every user it is for, under the spool lock; its first line decides before a
        # byte more is read. A From line is shorter than the head (mbox.is_from_line), so
        # the head's first line is the file's whenever it is one.
        head = os.pread(fd, limits.MAX_SPOOL_LINE_OCTETS + 1, 0)
        first_end = first_line_end(head)
        if not head or not mbox.is_from_line(head[:first_end]):
            no_from_line(log, bulletin)
            return None
        # The rest is read after the head, so the first line render() takes is the one
        # checked here, even when the file changed in between (the one check of it). A head
        # that is a From line without its LF was the whole file.
        if not head.endswith(b"\n", 0, first_end):
            return head[:first_end]
        return read_after(fd, head, st.st_size)
    finally:
        os.close(fd)


def read_after(fd: int, head: bytes, size: int) -> bytearray:
    """`head` and what follows it in fd, up to `size` octets in all (fewer when the file
    ends first): one buffer, filled in place (no second copy of a 16 MiB bulletin)."""
    data = bytearray(max(size, len(head)))
    data[:len(head)] = head
    got = len(head)
    with memoryview(data) as view:
        while got < len(data):
            n = os.preadv(fd, [view[got:]], got)
            if not n:
                break
            got += n
    del data[got:]
    return data


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
        self.skipped: list[Bulletin] = []   # the bulletins this login could not copy

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

    def last_seen(self, seen: Seen, newest: int) -> int:
        if seen.empty:
            return newest                                    # an empty file = all seen
        if seen.last is None:
            return max(0, newest - self.cfg.max_bulletins)   # a new user
        return seen.last

    def wanted(self, every: list[Bulletin], last: int) -> list[Bulletin]:
        return [b for b in every if b.number > last and is_for(b, self.user, self.login.gid)]

    def high_water(self, last: int, newest: int, wanted: list[Bulletin]) -> int:
        """What the record becomes (docs/bulletins.md, "Skipped bulletins"): the newest number,
        unless bulletins were skipped above every one copied; then just below the lowest of
        those, so they are tried again while no newer bulletin has gone out (the record is one
        number: moving it below a copied one would copy that one twice, so a skipped bulletin
        that shares its number with a copied one is given up too)."""
        skipped = {b.name for b in self.skipped}
        copied = [b.number for b in wanted if b.name not in skipped]
        pending = [b.number for b in self.skipped if b.number > max(copied, default=last)]
        return max(last, min(pending) - 1 if pending else newest)

    # --- the steps --------------------------------------------------------------------------------
    def list_all(self) -> list[Bulletin]:
        return list_bulletins(self.bulldir, self.cfg.group_bulletins, self.log)

    def run(self) -> int:
        try:
            every = self.list_all()
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
        # Settled before the journal check: a half copy's NUL (an older build's, which made
        # it beside the journal) must be gone before the maildrop's recovery looks for its
        # own marker there (docs/bulletins.md, "Delivery, crash-safe").
        if seen.pending is not None:
            try:
                self._settle(store, fd, seen, every)
            except OSError as exc:
                # Left pending, the intent would be judged later against a spool this
                # session may rewrite: no session until it is settled.
                raise PopError(UNSETTLED_TEXT, RespCode.SYS_TEMP,
                               log=f"Unable to settle an earlier session's bulletin copy for "
                                   f"{self.user}: {exc.strerror or exc}") from None
            seen = store.load()
        if os.path.lexists(self.paths.journal):
            # A crashed session's update, recovered when the maildrop opens after us: our
            # NUL at the spool's end could be taken for its own marker there
            # (docs/bulletins.md, "Delivery, crash-safe").
            self.log(syslog.LOG_NOTICE, f"Bulletins for {self.user} wait for the next login: "
                                        "the maildrop has a journal to recover")
            return 0
        last = self.last_seen(seen, newest)
        wanted = self.wanted(every, last)
        stamp = int(self.clock())
        offset = os.fstat(fd).st_size
        self.skipped = []
        payload, delivered = self._payload(fd, offset, wanted, stamp)
        record = self.high_water(last, newest, wanted)
        if not payload:
            if seen.last != record or seen.empty:
                store.save(record)
            return 0
        st = os.fstat(fd)
        intent = {"dev": st.st_dev, "ino": st.st_ino, "offset": offset, "length": len(payload),
                  "sha256": hashlib.sha256(payload).hexdigest(), "stamp": stamp,
                  "numbers": [b.number for b in wanted], "newest": record}
        self.step("record-intent")
        store.save(last, intent)
        try:
            self._append(fd, offset, payload, refresh)
            self.step("record-seen")
            store.save(record)
        except BaseException:
            try:
                self._cut_back(fd, offset)
            except OSError:
                # The half copy stays, and so does its intent, for the next login to settle:
                # no session meanwhile (it could rewrite the spool under the copy).
                raise PopError(UNSETTLED_TEXT, RespCode.SYS_TEMP)
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
        # An empty spool (or one of empty lines only:
        # docs/mbox.md, "Padding before the first message") has no first line to tell its
        # format: the mail its content will follow (a session's drop) tells, else
        # spool-format says what the delivery agent writes
        # (docs/bulletins.md, "What a bulletin is").
        first = ((file_head(fd, offset) if offset else b"")
                 or drop_head(self.paths) or EMPTY_SPOOL_FIRST_LINE[self.cfg.spool_format])
        sep = mmdf_separator(first)             # the scan's, as the padding's
        mmdf = separator_line(sep) if sep is not None else None
        parts = []
        for bulletin in wanted:
            data = self._read_bulletin(bulletin)
            if data is not None:
                parts.append(render(data, self.user, self.hostname,
                                    f"{stamp}.{bulletin.number % 1000:03d}", mmdf))
            del data                           # a 16 MiB file is not kept past its message
        if not parts:
            return b"", 0
        # No scan here: an MMDF spool's separator lines are counted to know whether its last
        # message is open (docs/mbox.md, "What write-back writes"). One join: the payload.
        return b"".join([padding_after(fd, offset, open_message=None), *parts]), len(parts)

    def _read_bulletin(self, bulletin: Bulletin) -> bytes | None:
        """The file's bytes, or None (logged, and noted in `skipped`)."""
        data = read_file(self.bulldir, bulletin, self.log)
        if data is None:
            self.skipped.append(bulletin)
        return data

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
        """After a failure: the spool as it was before the bulletins. When that fails too,
        its OSError is logged and raised."""
        try:
            self.step("truncate-spool-back")
            os.ftruncate(fd, offset)
            os.fsync(fd)
        except OSError as exc:
            self.log(syslog.LOG_ERR, f"Unable to cut {self.user}'s spool back to {offset} "
                                     f"octets after a failed bulletin copy: {exc.strerror}")
            raise

    def _settle(self, store, fd: int, seen: Seen, every: list[Bulletin]) -> None:
        """A crashed login's intent (see the module docstring): finish or forget it."""
        p = seen.pending
        last = seen.last if seen.last is not None else 0
        st = os.fstat(fd)
        try:
            offset, length, digest = int(p["offset"]), int(p["length"]), str(p["sha256"])
            same = recorded_as(st, int(p["ino"]))
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
                    self._cut_back(fd, offset)   # its OSError: the caller's refusal
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
    for the bulletin database without bulldb-nonfatal, the spool lock's refusals, and a
    crashed login's copy that cannot be settled."""
    if not cfg.bulldir:
        return 0
    return Delivery(cfg, login, paths, hostname, log, step_hook, lock_step_s, clock).run()
