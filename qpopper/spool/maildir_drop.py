"""The session's Maildir: one session per mailbox, RETR/TOP from the files, UPDATE through a
journal (docs/maildir.md, "UPDATE and crash safety").

The same contract as the mbox maildrop (docs/internals.md, "Spool"): `.messages`,
`.hidden_count`, `.send`, `.update(deleted, retrieved)`, `.restore`, `.close`. Deliveries are
never blocked: a delivery agent only adds files to new/ (through tmp/), and a session's own
lock is a file of its own (`qpopper-pop3.lock`, flock'ed as the mbox temp drop is).
UPDATE deletes (unlink) and marks seen (rename into cur/ with the S flag); both are
single-file atomic steps, and the list of them is journalled first, so a crash in the middle
is finished by the next session: the update happens exactly once. A message another program
renamed during the session is found again by its base name and its inode (a rename keeps
both; a copy has another inode); one that is gone is reported to the client (RETR) or
skipped (UPDATE), never a crash.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import syslog
import time

from qpopper import limits
from qpopper.pop3.responses import PopError, RespCode
from qpopper.spool import maildir
from qpopper.spool.durable import fsync_dir, read_up_to, rename_no_replace, unlink_if_present
from qpopper.spool.locking import SessionLock
from qpopper.spool.maildir_files import MessageFiles, list_by_base
from qpopper.spool.maildir_quota import Removed, count_off
from qpopper.spool.mbox import WireLines

LOCK_NAME = "qpopper-pop3.lock"
JOURNAL_NAME = "qpopper-pop3.journal"
JOURNAL_VERSION = 3
"""3: an unlink step carries its file's file_identity(). Still finished: version 2's (the
same with the device number first, which is left out) and version 1's (an earlier
release's: by name only)."""
READABLE_JOURNAL_VERSIONS = (1, 2, JOURNAL_VERSION)
IDENTITY_AT = {2: 3, JOURNAL_VERSION: 2}
"""Where an unlink step's identity starts, by journal version."""
CLOCK_LAG_NS = 50_000_000
"""Where the file system's clock cannot be read (a FUSE file system that refuses to set
times), this host's less this much stands for it: file times lag the clock a tick."""
LASTING_ERRORS = frozenset({
    errno.ENAMETOOLONG, errno.EXDEV, errno.ENOSPC, errno.EDQUOT, errno.EMLINK, errno.EACCES,
    errno.EPERM, errno.EINVAL, errno.ENOTDIR, errno.EISDIR, errno.ENOTEMPTY})
"""A journal step failing with one of these is skipped, logged, and its message stays as it
is (unseen, or not deleted; a session's QUIT answers -ERR for the latter): trying again at
every login would refuse the mailbox for good (docs/maildir.md, "UPDATE and crash safety").
Other errors (EIO, ESTALE, EROFS, ...) may pass: the journal stays and the next login tries
again."""
NAME_MAX = 255
"""NAME_MAX where pathconf cannot tell."""
GONE_TEXT = "Message {n} was removed from your Maildir by another program"
UNREADABLE_TEXT = "Message {n} cannot be read; contact your administrator"
UPDATE_FAILED_TEXT = "Error updating your Maildir; your mail is intact, try again"
NOT_REMOVED_TEXT = "Some deleted messages were not removed"
OPEN_FAILED_TEXT = "Unable to open your Maildir; contact your administrator"
LOCK_REFUSED_TEXT = "Unable to use the lock file in your Maildir; contact your administrator"


class MaildirDrop:
    server_mode = False
    hidden_count = 0

    def __init__(self, path: str, lock: SessionLock, messages, step_hook, log,
                 inodes=(), mtimes=(), listed_ns: int = 0, info_separator: str = ":"):
        self.path = path
        self._separator = info_separator    # for a name without flags (maildir.info_separator)
        self._lock = lock
        self.messages = messages
        self._files = MessageFiles(path, messages, (inodes, mtimes), listed_ns,
                                   clock=lambda: _file_system_now(lock.fd))
        self._hook = step_hook or (lambda name: None)
        self._log = log
        self._phase = "open"
        self._checked: tuple[int, int] | None = None    # (index, descriptor) check_available opened

    @property
    def inodes(self):
        """The messages' inodes as listed (maildir.scan_with_files)."""
        return self._files.inodes

    @property
    def mtimes(self):
        """The messages' modification times as measured."""
        return self._files.mtimes

    @property
    def listed_ns(self) -> int:
        """The file system's time before the login's listing."""
        return self._files.listed_ns

    @classmethod
    def open(cls, path: str, user: str, step_hook=None, log=None,
             info_separator: str = ":") -> "MaildirDrop":
        """Lock the mailbox ([IN-USE] when another session has it), finish a crashed
        session's UPDATE, list the messages. Raises PopError only. `info_separator` goes
        before the flags UPDATE gives a message that has none (maildir.INFO_SEPARATORS)."""
        hook = step_hook or (lambda name: None)
        lock = maildir_lock(path, lambda s: hook(f"open:{s}"), log)
        try:
            lock.acquire()
        except (FileNotFoundError, NotADirectoryError):
            raise                       # no Maildir there: the caller's
        except OSError as error:
            raise lock_refusal(lock.path, error) from None
        try:
            finish_journal(path, lambda s: hook(f"recover:{s}"), log)
            listed_ns = _file_system_now(lock.fd)
            messages, inodes, mtimes = maildir.scan_with_files(
                path, log=log, step=lambda s: hook(f"open:{s}"), now_ns=listed_ns)
        except OSError as error:
            lock.release(unlink=False)
            raise PopError(OPEN_FAILED_TEXT, RespCode.SYS_TEMP,
                           log=f"opening Maildir {path} of {user}: {error}") from None
        except BaseException:
            lock.release(unlink=False)
            raise
        return cls(path, lock, messages, step_hook, log, inodes, mtimes, listed_ns,
                   info_separator)

    # --- RETR and TOP --------------------------------------------------------------------
    def check_available(self, index: int) -> None:
        """Before the +OK of RETR/TOP: a message another program removed gets an -ERR. The
        file stays open for the send that follows, so a RETR opens it once."""
        self._forget_checked()
        self._checked = (index, self._open_message(index))

    def send(self, index: int, write, body_lines: int | None = None) -> None:
        """RETR (or TOP with `body_lines`) data: CRLF lines, dot-stuffed, ending with CRLF.
        TOP sends the file's own bytes up to where _TopCut ends it, so its lines are RETR's."""
        fd = self._opened(index)
        try:
            top = None if body_lines is None else _TopCut(body_lines)
            wire, offset, last = WireLines(write), 0, b"\n"
            while True:
                data = os.pread(fd, limits.COPY_CHUNK_OCTETS, offset)
                if not data:
                    break
                cut = None if top is None else top.cut(data)
                if cut is not None:
                    data = data[:cut]
                wire.feed(data)
                offset, last = offset + len(data), data[-1:] or last
                if cut is not None:
                    break
            wire.feed(b"" if last == b"\n" else b"\n", final=True)
        finally:
            os.close(fd)

    def _open_message(self, index: int) -> int:
        message = self.messages[index]
        for attempt in (1, 2):
            try:
                # O_NONBLOCK: a FIFO put at its name is not waited on (the session would hang
                # in open(2) holding the lock, past its idle timeout); refused as not a file
                fd = os.open(os.path.join(self.path, message.name), os.O_RDONLY | os.O_NOFOLLOW
                             | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    os.close(fd)
                    raise PopError(GONE_TEXT.format(n=index + 1), RespCode.SYS_PERM,
                                   log=f"{message.name} in {self.path} is not a plain file")
                return fd
            except FileNotFoundError:
                if attempt == 2 or not self._files.find_again(index):
                    raise PopError(GONE_TEXT.format(n=index + 1), RespCode.SYS_TEMP,
                                   log=f"{message.name} in {self.path} is gone") from None
            except OSError as error:
                if error.errno == errno.ELOOP:
                    raise PopError(GONE_TEXT.format(n=index + 1), RespCode.SYS_PERM,
                                   log=f"{message.name} in {self.path} is a link") from None
                # unreadable (a root-owned 0600 file a restore left), EIO, ESTALE: this
                # message's -ERR, not the end of the session (its DELEs still count)
                raise PopError(UNREADABLE_TEXT.format(n=index + 1), RespCode.SYS_TEMP,
                               log=f"{message.name} in {self.path} cannot be read: "
                                   f"{error.strerror}") from None
        raise AssertionError("unreachable")

    # --- UPDATE ----------------------------------------------------------------------------
    def update(self, deleted: set[int], retrieved: set[int]) -> None:
        """Delete `deleted`, mark `retrieved` seen (0-based indices); exactly once, even
        across a crash (the journal)."""
        self._phase = "update"
        self._files.forget_listing()
        steps = []
        left: list[int] = []            # a DELE not done must not look done (QUIT's -ERR)
        for index in sorted(deleted):
            st = self._files.current(index)
            if st is not None:
                steps.append(["unlink", self.messages[index].name, *file_identity(st)])
            elif self._files.changed_in_place(index):
                left.append(index)
        listed = {m.name for m in self.messages}
        name_max = 0                    # asked only when a message is to be marked seen
        for index in sorted(retrieved - deleted):
            message = self.messages[index]
            if self._files.current(index) is None:
                continue
            flags = maildir.flags_of(message.name)
            if (message.name.startswith("cur/") and "S" in flags
                    or not maildir.may_mark_seen(message.name)):
                continue                # seen, or an info part that is not ours
            separator = maildir.info_separator(message.name, self._separator)
            new_name = (f"cur/{message.base}{separator}2,"
                        f"{''.join(sorted(set(flags + 'S')))}")
            name_max = name_max or _name_max(self.path)
            if len(os.fsencode(new_name)) - len("cur/") > name_max:
                continue                # a name the file system refuses: it stays unseen
            if new_name in listed or os.path.lexists(os.path.join(self.path, new_name)):
                continue                # another file has that name: it stays unseen
            steps.append(["rename", message.name, new_name])
        not_removed: list[str] = []
        try:
            if steps:       # without steps the index written at open still holds
                hook = lambda s: self._hook(f"update:{s}")
                write_journal(self.path, steps, hook)
                not_removed = finish_journal(self.path, hook, self._log,
                                             frozenset(m.name for m in self.messages))
                maildir.scan(self.path, log=self._log, step=hook,
                             now_ns=_file_system_now(self._lock.fd))
        except OSError as error:
            raise PopError(UPDATE_FAILED_TEXT, RespCode.SYS_TEMP,
                           log=f"updating Maildir {self.path}: {error}") from None
        finally:
            self.close()
        if not_removed or left:     # RFC 1939 §6: QUIT's -ERR; served again next login
            raise PopError(NOT_REMOVED_TEXT, RespCode.SYS_TEMP,
                           log=f"Maildir {self.path}: {len(left)} deleted message(s) changed "
                               f"during the session, left in place" if left else None)

    def restore(self) -> None:
        """Abort without update: nothing was changed, nothing to put back."""
        self.close()

    def _opened(self, index: int) -> int:
        """The descriptor check_available opened for message `index`, else one opened now."""
        if self._checked is not None and self._checked[0] == index:
            fd, self._checked = self._checked[1], None
            return fd
        self._forget_checked()
        return self._open_message(index)

    def _forget_checked(self) -> None:
        checked, self._checked = self._checked, None
        if checked is not None:
            os.close(checked[1])

    def close(self) -> None:
        self._forget_checked()
        self._lock.release(unlink=False)


class _TopCut:
    """Where TOP's data ends, found on the file's bytes a chunk at a time: after the empty line
    that ends the header (LF or CRLF alone) and `body_lines` more lines. Only LF ends a line;
    a bare CR, or the first of CR CR LF, is line content, as RETR sends it."""

    def __init__(self, body_lines: int):
        self._tail = b"\n"            # the last two octets seen; the file starts a line
        self._in_header = True
        self._remaining = body_lines

    def cut(self, data: bytes) -> int | None:
        """The offset in `data` (the file's next chunk) where TOP ends, or None: not in it."""
        at = 0
        if self._in_header:
            window = self._tail + data
            self._tail = window[-2:]
            ends = [j for j in (window.find(b"\n\n"), window.find(b"\n\r\n")) if j >= 0]
            if not ends:
                return None
            start = min(ends)
            at = start + (2 if window[start + 1] == 0x0A else 3) - (len(window) - len(data))
            self._in_header = False
        if self._remaining == 0:
            return at
        lines = data.count(b"\n", at)
        if lines < self._remaining:
            self._remaining -= lines
            return None
        for _ in range(self._remaining):
            at = data.index(b"\n", at) + 1
        self._remaining = 0
        return at


LOCK_LASTING_ERRORS = frozenset({errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENXIO,
                                 errno.ENODEV})
"""Why a lock file cannot be opened that no retry clears: another owner's file we may not
write (root's, after a restore or a root-run tool), a directory, a socket or device."""


def lock_refusal(lock_path: str, error: OSError) -> PopError:
    """The lock file could not be opened (docs/maildir.md, "One session per mailbox"): a
    lasting cause is [SYS/PERM], the administrator must remove or fix the file; anything
    else (a read-only or full file system, an I/O error) [SYS/TEMP]. The log names the file,
    or the directory when the file is absent and the directory refuses to let it be made."""
    if error.errno in (errno.EACCES, errno.EPERM) and not os.path.lexists(lock_path):
        # no lock file to blame: the Maildir directory does not let the user make one
        return PopError(LOCK_REFUSED_TEXT, RespCode.SYS_PERM,
                        log=f"Maildir lock file {lock_path} cannot be made: {error.strerror}; "
                            f"the Maildir directory {os.path.dirname(lock_path)} must be "
                            f"writable by the user")
    if error.errno in LOCK_LASTING_ERRORS:
        return PopError(LOCK_REFUSED_TEXT, RespCode.SYS_PERM,
                        log=f"Maildir lock file {lock_path} cannot be used: {error.strerror}; "
                            f"it must be the user's own plain file, or absent")
    return PopError(OPEN_FAILED_TEXT, RespCode.SYS_TEMP,
                    log=f"Maildir lock file {lock_path} could not be opened: {error.strerror}")


def maildir_lock(path: str, step_hook, log) -> SessionLock:
    """The Maildir's session lock: empty and never removed, so a mode that lets others read
    it (chmod -R go+r, a restore under umask 022) exposes nothing; it must still be our own
    regular file, never a link (docs/maildir.md, "One session per mailbox")."""
    return SessionLock(os.path.join(path, LOCK_NAME), step_hook=step_hook, log=log,
                       private=False, refused_text=LOCK_REFUSED_TEXT)


# --- the journal ----------------------------------------------------------------------------

def write_journal(path: str, steps: list[list[str]], hook) -> None:
    """The steps, durable before the first is taken: written to a temporary name, synced,
    renamed into place and the directory synced (the rename is the commit)."""
    body = json.dumps({"version": JOURNAL_VERSION, "steps": steps}).encode()
    tmp = os.path.join(path, f".{JOURNAL_NAME}.tmp")
    hook("journal-write")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, body)
        hook("journal-fsync")
        os.fsync(fd)
    finally:
        os.close(fd)
    hook("journal-commit-rename")
    os.rename(tmp, os.path.join(path, JOURNAL_NAME))
    fsync_dir(path)


def finish_journal(path: str, hook, log=None, others: frozenset[str] = frozenset()
                   ) -> list[str]:
    """Take every step of a committed journal that is not taken yet, then remove it. Each
    step is idempotent: an unlinked file is gone, a renamed one is at its new name; a source
    missing for another reason (a program moved it) is skipped, and so is a step that fails
    for good (LASTING_ERRORS; logged with `log(priority, text)`). Returns the names of the
    unlink steps so skipped (the session's QUIT answers -ERR for them). The files this call
    unlinked are counted off a Maildir++ quota once they are durably gone (maildir_quota): a
    crash before that leaves the quota counting them, and a file another program or an earlier
    try removed is not counted. A journal we cannot read is left for the administrator and
    the mailbox is refused, never guessed at. `others`: the names the session lists as
    messages, none of which an unlink step takes for another name of its file (_unlink_file;
    a crashed session's are not known)."""
    journal = os.path.join(path, JOURNAL_NAME)
    unlink_if_present(os.path.join(path, f".{JOURNAL_NAME}.tmp"))   # never committed
    try:    # O_NONBLOCK: a FIFO put there must not hang the login under the lock
        fd = os.open(journal, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return []
    try:
        st, steps = os.fstat(fd), None
        if stat.S_ISREG(st.st_mode):            # else not a journal: refused, as damaged
            record = json.loads(read_up_to(fd, st.st_size))
            version = record.get("version")
            readable = type(version) is int and version in READABLE_JOURNAL_VERSIONS
            steps = record["steps"] if readable else None
    except (ValueError, KeyError, AttributeError):
        steps = None
    finally:
        os.close(fd)
    if not isinstance(steps, list) or not all(_valid_step(step, version) for step in steps):
        raise OSError(errno.EINVAL, f"{journal} is not a journal this version can finish")
    names_by_base, not_removed, removed = _NamesByBase(path), [], Removed()
    for step in steps:
        hook(step[0])
        try:
            _take_step(path, step, version, names_by_base, removed, others)
        except OSError as error:
            if error.errno not in LASTING_ERRORS:
                raise                           # the journal stays: the next login retries
            if step[0] == "unlink":
                not_removed.append(step[1])
            if log:
                log(syslog.LOG_WARNING, f"Maildir {path}: {step[1]} not "
                    f"{'deleted' if step[0] == 'unlink' else 'marked seen'} "
                    f"({error.strerror}); it stays as it is")
    hook("fsync-dirs")
    maildir.sync_dirs(path)
    hook("quota")
    count_off(path, removed, log)
    hook("journal-unlink")
    os.unlink(journal)
    fsync_dir(path)
    return not_removed


def _take_step(path: str, step: list, version: int, names_by_base, removed: Removed,
               others: frozenset[str]) -> None:
    if step[0] == "unlink" and version == 1:
        try:
            st = os.lstat(os.path.join(path, step[1]))
        except FileNotFoundError:
            return
        if unlink_if_present(os.path.join(path, step[1])) and stat.S_ISREG(st.st_mode):
            removed.add(step[1], st)
    elif step[0] == "unlink":
        _unlink_file(path, step[1], tuple(step[IDENTITY_AT[version]:]), names_by_base, removed,
                     others)
    else:
        try:   # False: the name is taken (done before the crash, or another file's): no-op
            rename_no_replace(os.path.join(path, step[1]), os.path.join(path, step[2]))
        except FileNotFoundError:
            pass                                 # moved or removed by another program


def _name_max(path: str) -> int:
    try:
        limit = os.pathconf(os.path.join(path, "cur"), "PC_NAME_MAX")
    except (OSError, ValueError):
        return NAME_MAX
    return limit if limit > 0 else 1 << 30     # -1: the file system sets no limit


def file_identity(st: os.stat_result) -> tuple[int, int, int]:
    """What tells a message file from another with its base name: a rename keeps its inode,
    size and modification time; a copy (a restored backup, a sync tool's) has another inode,
    or another time where the file system gave it the inode of one just removed. Not the
    device: every name is in one Maildir, and its number can change between the session
    that journals and the one that finishes (another host's NFS mount, a reboot)."""
    return st.st_ino, st.st_size, st.st_mtime_ns


def _file_system_now(fd: int) -> int:
    """The file system's clock, from the lock file (`fd`) touched now: what message files'
    times are stamped with (on NFS the server's clock, not this host's)."""
    try:
        os.utime(fd)
        return os.fstat(fd).st_mtime_ns
    except OSError:
        return time.time_ns() - CLOCK_LAG_NS


def _unlink_file(path: str, name: str, identity: tuple, names_by_base,
                 removed: Removed, others: frozenset[str] = frozenset()) -> None:
    """Remove the file the session marked deleted: at `name` when the file there is still
    that one (file_identity), with any other name of its own base name that is that file (a
    link: one message). Only when `name` is no longer that file, under another name of its
    base name or of that base name with a tail (list_by_base) that is that file: another
    program renamed it since the journal was written. A name with a tail linked to a file
    still at `name` is another message (docs/maildir.md, "What a message is"), and so is
    any name in `others` (the session lists it as one): they stay. Another file (a copy, a
    restored backup) is another message too. The file counts once in `removed`, however
    many of its names this call unlinked."""
    def is_it(candidate: str) -> os.stat_result | None:
        try:
            st = os.lstat(os.path.join(path, candidate))
        except FileNotFoundError:
            return None
        return st if file_identity(st) == identity and stat.S_ISREG(st.st_mode) else None

    st, counted, base = is_it(name), False, maildir.base_name(name)
    if st is not None:
        if unlink_if_present(os.path.join(path, name)):
            removed.add(name, st)
            counted = True
        if st.st_nlink == 1:
            return                                  # its only name: the usual case
    for other in names_by_base.get(base):
        if other == name or other in others or (
                st is not None and maildir.base_name(other) != base):
            continue
        other_st = is_it(other)
        if other_st is not None and unlink_if_present(os.path.join(path, other)) and not counted:
            removed.add(other, other_st)
            counted = True


class _NamesByBase:
    """new/ and cur/ listed once, when first asked (only a journal step whose file is not
    at its name needs it): message names by base name. Names may be gone by the time they
    are used; the caller checks each."""

    def __init__(self, path: str):
        self._path = path
        self._names: dict[str, list[str]] | None = None

    def get(self, base: str) -> list[str]:
        if self._names is None:
            self._names = list_by_base(self._path)[0]
        return self._names.get(base, [])


def _valid_step(step, version: int) -> bool:
    """A step names files inside new/ or cur/ only (the journal is ours, but a damaged one
    must not rename or remove anything else); a later unlink step carries integers (the
    identity, after the device number in version 2)."""
    def inside(name) -> bool:
        return (isinstance(name, str) and "\0" not in name
                and name.partition("/")[0] in maildir.SUBDIRS
                and "/" not in name.partition("/")[2]
                and name.partition("/")[2] not in ("", ".", ".."))
    if not isinstance(step, list) or not step:
        return False
    if step[0] == "unlink" and version == 1:
        return len(step) == 2 and inside(step[1])
    if step[0] == "unlink":
        return (len(step) == IDENTITY_AT[version] + 3 and inside(step[1])
                and all(type(number) is int for number in step[2:]))
    return step[0] == "rename" and len(step) == 3 and inside(step[1]) and inside(step[2])
