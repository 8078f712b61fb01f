"""The session's maildrop: the one interface the session uses, whichever mode serves the user.

normal_mode.py (Qpopper's normal mode: the mail moves to a temporary drop) and server_mode.py
(the spool read in place) implement it; both write through commit.py's journaled engine.
docs/maildrop.md has the crash-safety protocol of each mode step by step and the locking
rules; docs/mbox.md the mbox model; docs/internals.md, "Spool", the contract;
docs/compatibility.md, "Update and new mail", what Qpopper did.
"""

from __future__ import annotations

import contextlib
import grp
import os
import syslog
from typing import Callable, Protocol

from qpopper import limits
from qpopper.pop3.responses import PopError, RespCode
from qpopper.spool import cache, mbox
from qpopper.spool.commit import (OVERQUOTA_PREFIX, QUOTA_ERRNOS, UPDATE_FAILED_TEXT, CommitEngine,
                                  overquota_text)
from qpopper.spool.durable import fsync_parent_dir
from qpopper.spool.journal import JOURNAL_BAD_TEXT
from qpopper.spool.locking import LockTiming, SessionLock, SpoolLock, spool_lock
from qpopper.spool.paths import SpoolPaths

StepHook = Callable[[str], None]
Log = Callable[[int, str], None]

OVERQUOTA_UPDATE_TEXT = overquota_text(UPDATE_FAILED_TEXT)
OPEN_FAILED_TEXT = "Unable to copy your mail to the temporary maildrop; contact your administrator"
OVERQUOTA_OPEN_TEXT = OVERQUOTA_PREFIX + "unable to copy your mail to the temporary maildrop"
__all__ = ["JOURNAL_BAD_TEXT", "OPEN_FAILED_TEXT", "OVERQUOTA_OPEN_TEXT", "OVERQUOTA_UPDATE_TEXT",
           "QUOTA_ERRNOS", "UPDATE_FAILED_TEXT", "Maildrop", "SessionMaildrop",
           "resolve_server_mode"]


def resolve_server_mode(cfg, user: str, gid: int, log: Log | None = None):
    """The Config with server-mode decided for this user before the per-user option files
    (manual "Enabling Server Mode"): the default or -S, then membership of group-server-mode
    turns it on, then membership of group-no-server-mode turns it off (exclusion wins). The
    session applies the user files to the result, so a file that sets server-mode has the
    last word and one that does not keeps this. Members: the group's listed members and the
    users whose primary group it is."""
    mode = cfg.server_mode
    include = cfg.group_server_mode
    exclude = cfg.group_no_server_mode
    if include and _in_group(include, user, gid, log):
        mode = True
    if exclude and _in_group(exclude, user, gid, log):
        mode = False
    return cfg if mode == cfg.server_mode else cfg.replace(
        server_mode=mode)


def _in_group(name: str, user: str, gid: int, log: Log | None) -> bool:
    try:
        group = grp.getgrnam(name)
    except KeyError:
        if log is not None:
            log(syslog.LOG_WARNING, f"server-mode group {name!r} does not exist")
        return False
    return group.gr_gid == gid or user in group.gr_mem


class SessionMaildrop(Protocol):
    """What the session and the protocol use of a user's mailbox, whatever its kind: the mbox
    `Maildrop` below (normal or server mode) and maildir_drop.MaildirDrop. `messages[n-1]` is
    protocol message n (each has `uid` and `octets`); indices below are 0-based."""

    messages: list
    hidden_count: int
    server_mode: bool

    def check_available(self, index: int) -> None: ...
    def send(self, index: int, write, body_lines: int | None = None) -> None: ...
    def update(self, deleted: set[int], retrieved: set[int]) -> None: ...
    def restore(self) -> None: ...
    def close(self) -> None: ...


class Maildrop:
    """One user's maildrop for one session. Build it with `Maildrop.open`.

    What the session uses: `messages` (visible, protocol number n is messages[n-1]),
    `hidden_count`, `server_mode`, `send`, `update`, `restore`, `close`."""

    server_mode = False

    def __init__(self, cfg, paths: SpoolPaths, user: str, step_hook: StepHook | None,
                 log: Log | None, lock_step_s: float):
        self.cfg = cfg
        self.paths = paths
        self.user = user
        self._hook = step_hook
        self._log = log
        self._lock_step_s = lock_step_s
        self._phase = "open"
        self._session: SessionLock | None = None
        self._spool: SpoolLock | None = None
        self._drop_file = None
        self._all: list[mbox.Message] = []
        self.messages: list[mbox.Message] = []
        self.hidden_count = 0
        self.scan_region: tuple[int, int] | None = None   # server mode: what open scanned
        self._engine = CommitEngine(paths, user, self._step, self._note, self._cut_drop)

    @classmethod
    def open(cls, cfg, paths: SpoolPaths, user: str, step_hook: StepHook | None = None,
             log: Log | None = None, *, lock_step_s: float = limits.LOCK_RETRY_STEP_S,
             under_session_lock: Callable[[], object] | None = None) -> "Maildrop":
        """Lock the session, run `under_session_lock` (the bulletins' delivery), recover,
        then read the mail: moved into the temporary drop (normal mode) or read in place
        (server mode, when there is nothing to recover). Raises PopError. The modes build
        on this class, hence the import here."""
        from qpopper.spool.server_mode import ServerModeMaildrop
        from qpopper.spool.normal_mode import NormalModeMaildrop
        kind = ServerModeMaildrop if cfg.server_mode else NormalModeMaildrop
        drop = kind(cfg, paths, user, step_hook, log, lock_step_s)
        try:
            drop._open(under_session_lock)
        except BaseException:
            drop.close()
            raise
        return drop

    def check_available(self, index: int) -> None:
        """Before RETR/TOP's +OK: an mbox message is in the locked drop, always there."""

    def send(self, index: int, write, body_lines: int | None = None) -> None:
        """RETR (or TOP) data of visible message `index` (0-based), streamed from the drop."""
        mbox.send_message(self._drop_file, self.messages[index], write, body_lines)

    def update(self, deleted: set[int], retrieved: set[int]) -> None:
        """UPDATE: delete `deleted` (visible 0-based indices), mark `retrieved`, write back."""
        raise NotImplementedError

    def restore(self) -> None:
        """Abort without update: leave the mail as it was before the session."""
        raise NotImplementedError

    def close(self) -> None:
        """End the session lock. The drop is unlinked only when it is empty (and not kept)."""
        if self._drop_file is not None:
            self._drop_file.close()
            self._drop_file = None
        if self._session is not None and self._session.fd is not None:
            empty = os.fstat(self._session.fd).st_size == 0
            keep = self.cfg.keep_temp_drop
            self._session.release(unlink=empty and not keep)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- what both modes share ------------------------------------------------------------

    @contextlib.contextmanager
    def _writing_back(self):
        """What every write-back (update in either mode, restore) shares: errors mapped to the
        client's reply (mail stays in the temporary drop), and the session lock released."""
        try:
            yield
        except OSError as exc:
            raise self._failure(exc, *self._update_failed_texts()) from None
        except PopError as refusal:
            raise self._update_refused(refusal) from None
        finally:
            self.close()

    def _update_failed_texts(self) -> tuple[str, str]:
        """The client's text for a failed write-back, and for one that ran out of room."""
        return UPDATE_FAILED_TEXT, OVERQUOTA_UPDATE_TEXT

    def _step(self, name: str) -> None:
        if self._hook is not None:
            self._hook(f"{self._phase}:{name}")

    def _note(self, priority: int, text: str) -> None:
        if self._log is not None:
            self._log(priority, text)

    def _failure(self, exc: OSError, text: str, quota_text: str) -> PopError:
        """An OSError as the client sees it (no path, no errno); the details ride in .log,
        which the protocol writes to syslog."""
        where = getattr(exc, "filename", None) or "maildrop"
        text = quota_text if exc.errno in QUOTA_ERRNOS else text
        return PopError(text, RespCode.SYS_TEMP, close=True,
                        log=f"{text} ({self._phase} of {self.user}'s maildrop: {where}: "
                            f"{exc.strerror or exc})")

    def _update_refused(self, refusal: PopError) -> PopError:
        """A lock or permission refusal at update: the mail stays in the drop (Qpopper's text;
        server mode's own: its mail stays in the spool)."""
        text = self._update_failed_texts()[0]
        return PopError(text, refusal.code or RespCode.SYS_TEMP, close=True,
                        log=f"{text} ({self._phase} of {self.user}'s maildrop: "
                            f"{refusal.log or refusal.text})")

    def _spool_lock(self, *, create: bool) -> SpoolLock:
        lock = spool_lock(self.cfg, self.paths, create=create, step_hook=self._step,
                          log=self._log)
        timing = (LockTiming.login if self._phase == "open" else LockTiming.update)(
            self._lock_step_s)
        lock.acquire(timing)
        return lock

    @contextlib.contextmanager
    def _holding_spool(self):
        """The spool lock (created if missing) as self._spool while the block writes."""
        self._spool = self._spool_lock(create=True)
        try:
            yield
        finally:
            self._spool.release()
            self._spool = None

    def _open(self, under_session_lock: Callable[[], object] | None) -> None:
        if self.cfg.check_hash_dir:
            self.paths.ensure_hash_dirs(self._log)
        self._session = SessionLock(self.paths.temp_drop, step_hook=self._step, log=self._log)
        try:
            self._session.acquire()
            if self._session.created:
                self._step("fsync-temp-drop-dir")
                fsync_parent_dir(self.paths.temp_drop)
            if under_session_lock is not None:
                # Bulletins: a second login of a user in session is refused [IN-USE] before
                # it appends any (docs/bulletins.md, "Delivery, crash-safe").
                under_session_lock()
            self._engine.journal.remove_leftover_tmp()
            cache.remove_stale_tmp(self.paths.cache, self._step)
            self._open_mode()
        except OSError as exc:
            raise self._failure(exc, OPEN_FAILED_TEXT, OVERQUOTA_OPEN_TEXT) from None

    def _open_mode(self) -> None:
        """The mode's part of open, under the session lock."""
        raise NotImplementedError

    def _show_visible(self) -> None:
        """The client's message list: every scanned message but the hidden ones."""
        self.messages = [m for m in self._all if not m.hidden]
        self.hidden_count = len(self._all) - len(self.messages)

    def _kept_and_marked(self, deleted: set[int], retrieved: set[int]):
        """The messages an update keeps (hidden ones included, in file order) and the ids of
        those retrieved this session."""
        messages = self.messages
        # Only kept messages can be marked; a deleted one is never written (QUIT after DELE
        # of all sees an empty set here, not 10,000 ids).
        marked = {id(messages[i]) for i in retrieved - deleted}
        if len(messages) == len(self._all):     # nothing hidden: an index is a position
            if len(deleted) == len(messages):
                return [], marked, bool(deleted)
            return [m for i, m in enumerate(messages) if i not in deleted], marked, bool(deleted)
        doomed = {id(messages[i]) for i in deleted}
        return [m for m in self._all if id(m) not in doomed], marked, bool(doomed)

    def _cut_drop(self, length: int = 0) -> None:
        """Cut the temporary drop back to `length` octets, durably. With 0 at update:
        everything deleted, the drop's mail goes; the spool (and new mail in it) stays."""
        self._step("truncate-temp-drop")
        os.ftruncate(self._session.fd, length)
        self._step("fsync-temp-drop")
        os.fsync(self._session.fd)

    def _write_kept(self, kept, marked, write, *, relocate: bool = False
                    ) -> list[mbox.Message] | None:
        """Write the kept messages back. With `relocate`, returns the messages a scan of what
        was written would find (server mode's cache), or None when only a scan can tell."""
        every = self.cfg.mail_lock_check
        status = self.cfg.update_status_headers
        # uw-kluge hides message 1 by what its headers say: a scan decides after a rewrite.
        known: list[mbox.Message] | None = None
        if relocate and status and not self.cfg.uw_kluge:
            known = []
        pos = 0
        for n, msg in enumerate(kept, 1):
            written = mbox.copy_for_update(self._drop_file, msg, write,
                                           retrieved=id(msg) in marked,
                                           update_status_headers=status,
                                           at=pos if known is not None else None, number=n)
            if known is not None:
                if written is None:
                    known = None
                else:
                    known.append(written)
                    pos = written.end
            if every and n % every == 0:
                self._spool.dotlock.refresh()
            else:
                self._spool.refresh_if_due()
        return known
