"""The session's maildrop: Qpopper's normal mode, made crash-safe (DESIGN invariants 1 and 2).

Normal mode (docs/compatibility.md, "Update and new mail"), as Qpopper:
- open: flock the temporary drop `.user.pop` for the whole session ([IN-USE] otherwise); put a
  leftover drop's mail first (a crashed session), then move the spool's mail in (lock, copy,
  truncate, unlock); scan the drop. The spool is locked only for that copy (invariant 2).
- update at QUIT: if every message was deleted, empty the drop and leave the spool alone.
  Otherwise lock the spool and rewrite it as the kept messages (X-UIDL/Status written by
  mbox.copy_for_update) followed by the mail that arrived during the session, bytes unchanged.
- restore (abort without update): the drop's bytes go back in front of the new mail.

Exactly once after a kill at any step. A redo journal beside the drop (`.user.pop.journal`,
replaced atomically: write, fsync, rename, fsync dir) says which multi-file step is in flight:

  absorb   {K, pad, M}  the source's bytes [0,M) are being copied to the drop at K+pad.
           Recovery: the copy is not trusted; cut the drop back to K. The source is only
           truncated after `absorbed` is durable, so it still has everything.
  absorbed {K, pad, M}  the copy is durable; the source is being truncated. Recovery: if the
           source still starts with the copied bytes, it was not truncated: cut the drop back
           to K and copy again; otherwise the copy is the mail and stays.
  commit   {L, Z, dev, ino, head}  the new spool image (`.user.pop.new`, L bytes, fsync'ed)
           replaces the spool's first Z bytes, which the image already contains. Recovery
           rolls forward. `head` is the spool's first min(Z, HEAD_OCTETS) bytes when the
           record was written.

The spool is rewritten in place, never renamed over: its inode, owner, group and mode stay, and
a delivery agent that opened it before locking (Postfix's comment about GNU pop3d replacing
mailboxes names the problem) or a mail checker that watches it keeps working. In-place writing
is made recoverable like this: the spool is first extended from Z to L (ftruncate, then
posix_fallocate so the writes cannot hit ENOSPC half way; an ENOSPC there is rolled back by an
update, while a recovery keeps journal and image for the next login), so its byte at Z is NUL;
the image is written except byte Z, fdatasync'ed, then byte Z is written; then fsync. After a crash, mail a
delivery agent appended (it may remove our dead dot-lock, as liblockfile does) starts at our
end-of-file of that moment, which recovery finds without ambiguity: the spool already equals the
image (done, new mail after L); or it is shorter than L (not extended yet, new mail after Z); or
its byte Z is NUL (extended, new mail after L; no delivered message starts with NUL); or it was
not extended. Recovery then appends the new mail to the image, journals the longer image and
applies it again. The drop is emptied only after the spool is durable, and the journal cleared
only after that; a commit journal with its spool already equal to the image just finishes.
That order of cases holds only for the spool we were rewriting. After a crash the spool may
have been deleted and another created (a delivery agent does), or rewritten in place, and the
new file may carry the old inode number (ext4 and tmpfs reuse a freed number at once), so
(st_dev, st_ino) does not identify it; nor do ctime (our own writes change it) or birth time
(not in os.stat on Linux, and unchanged by a rewrite in place). The content does: our writes
only turn a byte of the spool's first Z into the image's byte there and delivery only
appends, so while it is ours, each of its first len(head) bytes is the recorded one or the
image's. A spool that fails this (or is another inode, or shorter than head) is a different
file: all of it is new mail, appended to the image, and nothing of it is cut or overwritten
unread. (A record re-journaled by recovery records the head as it then is: still ours or
the image's byte by byte.) Version-1 journals (an older build, no `head`) are still read and
decided by (st_dev, st_ino) alone, as that build would have; version 2 adds `head`.
The one assumption: a message delivered after a crash is never a byte-for-byte copy of the
whole spool prefix we were working on (From_ lines carry the delivery time, so it cannot be
one unless the same mail is delivered twice in the same second); if it were, one of the two
identical copies would be dropped, never a distinct message.

`step_hook(name)` is called before every write, truncate, rename, fsync and unlink, named
`<phase>:<step>` (phase: open, recover, update, restore); chunked copies call it per chunk
(a copy_file_range(2) range, or a pread/pwrite chunk where the kernel cannot copy).

Server mode (-S, group-server-mode; docs/compatibility.md, "Server mode and its cache"). `resolve_server_mode`
decides per user before the user option files (default/-S, include group, exclude group; a
user file that sets server-mode wins). `Maildrop.open` then chooses: server mode only when
there is nothing to recover (empty `.user.pop`, no journal, no image, no old-location drop
with mail) and the spool exists; otherwise normal mode, whose recovery runs first.
- open: session lock; lock the spool, open a second, read-only descriptor on it, take the
  message list from a valid `.user.cache` (cache.py) and scan only what follows it (or scan
  everything), unlock. The spool stays open read-only for RETR/TOP; the lock is gone, so
  delivery goes on (mail appended after the login-time size Z is not in this session).
- QUIT, nothing to write (no DELE, and update-status-headers off or every message already has
  X-UIDL after its From line, a Status header and `Status: RO` where retrieved now): no spool
  I/O at all; the cache is written when it does not already describe the spool.
- QUIT, everything deleted and the spool still Z octets (under the lock): ftruncate to 0.
- QUIT otherwise, under the lock: the new image `.user.pop.new` = the kept messages (as
  normal mode writes them) + the mail delivered since login (spool bytes [Z, S), unchanged),
  fsync'ed; then journal `replace {dev, ino, len L, spool_len S, prefix sha256 of the spool's
  [0, S)}`; then either
  - fast-update: give the image the spool's mode and group, rename(2) it over the spool,
    fsync the directory, clear the journal. Recovery: image gone and the spool another inode
    = renamed, done; image still there = not renamed: the spool is untouched (its prefix
    hashes as recorded), so the image goes and the update simply did not happen. (Image gone
    and the spool the same inode number but no longer that prefix: a later file reusing the
    number after the rename; done too.) If the mode,
    group or rename fails (another filesystem, EXDEV), the copy below is used instead.
  - copy (the default): ftruncate the spool to 0, then normal mode's journaled `commit` of the
    image onto the empty spool (extend, write with the NUL marker, fsync), then clear the
    journal and unlink the image. Recovery of `replace`: the spool still starts with the
    recorded prefix = not emptied, roll back (drop the image); else roll forward as a commit
    onto an empty spool, taking any mail delivered after the crash along. The commit of an
    image that is the only copy of the mail is journaled `only_copy`: running out of room
    never discards it (sessions are refused with Overquota until the commit completes).
  The same assumption as normal mode's: mail delivered after a crash never reproduces the old
  spool's first S octets byte for byte.
  After a rewrite, the cache of the new spool's first L octets is what the write-back reports
  for each kept message (mbox.copy_for_update), plus a scan (outside the lock) of the mail
  delivered since login; whatever the write-back cannot vouch for is scanned instead.
- abort without update: nothing to put back; only the empty temporary drop goes.
Fast-update and delivery: the rename happens while we hold the dot-lock and the kernel locks
on the old inode. Agents that take the dot-lock before opening the spool (the Debian
convention: dotlockfile, procmail, Postfix local with dotlock, Exim with use_lockfile) open
the new file afterwards, so their mail is kept (tests/test_server_mode_concurrency.py). An
agent that opens the spool before locking and does not check, once locked, that the name
still refers to its descriptor would append to the unlinked old inode: that, and biff/shell
mail checks watching the inode, are why the manual restricts fast-update to hosts where only
the server and the delivery agent touch spools. Without fast-update the spool keeps its inode
(and owner, mode, ACLs), as in normal mode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import grp
import json
import os
import stat
import syslog
from typing import Callable

from qpopper import limits
from qpopper.pop3.responses import PopError, RespCode
from qpopper.spool import cache, mbox
from qpopper.spool.durable import (Writeback, fsync_parent_dir, pwrite_all, sha256_of_range,
                      unlink_if_present)
from qpopper.spool.locking import LockTiming, SessionLock, SpoolLock, open_regular
from qpopper.spool.paths import SpoolPaths

StepHook = Callable[[str], None]
Log = Callable[[int, str], None]

JOURNAL_VERSION = 2
"""Written by this build. Version 1 (no `head` in commit records) is still read: such a record
is recovered by (st_dev, st_ino) alone, as the build that wrote it would have (see the top)."""
READABLE_JOURNAL_VERSIONS = (1, JOURNAL_VERSION)
HEAD_OCTETS = 256
"""How much of the spool's start a commit record keeps to recognise the spool after a crash."""
NEW_SPOOL_MODE = 0o660
"""A spool we create in the spool directory: user and mail group, as Debian's adduser makes it."""
NEW_HOME_SPOOL_MODE = 0o600
"""A spool we create in the user's home (home-dir-mail): nobody else needs it."""
IMAGE_MODE = 0o600

UPDATE_FAILED_TEXT = "Error updating primary drop.  Mail left in temporary maildrop"
OVERQUOTA_UPDATE_TEXT = "Overquota: error updating primary drop.  Mail left in temporary maildrop"
OPEN_FAILED_TEXT = "Unable to copy your mail to the temporary maildrop; contact your administrator"
OVERQUOTA_OPEN_TEXT = "Overquota: unable to copy your mail to the temporary maildrop"
JOURNAL_BAD_TEXT = "Maildrop recovery needs attention; contact your administrator"
QUOTA_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
KERNEL_COPY_OCTETS = 1024 * 1024
"""One copy_file_range(2) call's range: one step and one dot-lock refresh chance per range."""
_KERNEL_COPY = hasattr(os, "copy_file_range")
_NO_KERNEL_COPY_ERRNOS = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP,
                          errno.EBADF, errno.EPERM)
"""copy_file_range(2) refused (old kernel, cross-filesystem, a filesystem without it, a file
kind it does not take): copy through user space instead."""


def spool_lock(cfg, paths: SpoolPaths, *, create: bool, step_hook: StepHook | None,
               log: Log | None) -> SpoolLock:
    """The user's spool lock (not yet acquired), as every session-time writer takes it: a
    spool it creates gets the mode of its place (home-dir-mail or the spool directory), and
    no-atomic-open picks the NFS-safe dot-lock."""
    return SpoolLock(paths.spool, paths.lock, create=create,
                     create_mode=NEW_HOME_SPOOL_MODE if cfg.home_dir_mail else NEW_SPOOL_MODE,
                     nfs_safe=cfg.no_atomic_open, step_hook=step_hook, log=log)


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


class Maildrop:
    """One user's maildrop for one session. Build it with `Maildrop.open`."""

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
        self._journal = _Journal(paths.journal, self._step)
        self.server_mode = False            # chosen by _open (see the top of this file)
        self.scan_region: tuple[int, int] | None = None   # server mode: what open scanned
        self._login: cache.SpoolState | None = None     # server mode: the spool at login
        self._cache_current = False         # server mode: the cache already says all that

    # --- the contract -------------------------------------------------------------------------
    @classmethod
    def open(cls, cfg, paths: SpoolPaths, user: str, step_hook: StepHook | None = None,
             log: Log | None = None, *, lock_step_s: float = limits.LOCK_RETRY_STEP_S
             ) -> "Maildrop":
        """Lock the session, recover, move new mail in, scan. Raises PopError."""
        drop = cls(cfg, paths, user, step_hook, log, lock_step_s)
        try:
            drop._open()
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
        self._phase = "update"
        doomed = {id(self.messages[i]) for i in deleted}
        kept = [m for m in self._all if id(m) not in doomed]
        marked = {id(self.messages[i]) for i in retrieved}
        if self.server_mode:
            return self._update_server(kept, marked, bool(doomed))
        with self._writing_back():
            if not kept:
                self._cut_drop()
            else:
                self._commit_with_lock(lambda write: self._write_kept(kept, marked, write))

    def restore(self) -> None:
        """Abort without update (pop_restore): the drop goes back in front of any new mail."""
        self._phase = "restore"
        if self.server_mode:                # the spool was never touched: nothing to put back
            try:
                self._store_cache_if_stale()
            finally:
                self.close()
            return
        with self._writing_back():
            if os.fstat(self._session.fd).st_size:
                self._commit_with_lock(self._write_drop_raw)

    @contextlib.contextmanager
    def _writing_back(self):
        """What every write-back (update in either mode, restore) shares: errors mapped to the
        client's reply (mail stays in the temporary drop), and the session lock released."""
        try:
            yield
        except OSError as exc:
            raise self._failure(exc, UPDATE_FAILED_TEXT, OVERQUOTA_UPDATE_TEXT) from None
        except PopError as refusal:
            raise self._update_refused(refusal) from None
        finally:
            self.close()

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

    # --- steps ----------------------------------------------------------------------------------
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
        """A lock or permission refusal at update: the mail stays in the drop (Qpopper's text)."""
        return PopError(UPDATE_FAILED_TEXT, refusal.code or RespCode.SYS_TEMP, close=True,
                        log=f"{UPDATE_FAILED_TEXT} ({self._phase} of {self.user}'s maildrop: "
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

    # --- open -------------------------------------------------------------------------------------
    def _open(self) -> None:
        if self.cfg.check_hash_dir:
            self.paths.ensure_hash_dirs(self._log)
        self._session = SessionLock(self.paths.temp_drop, step_hook=self._step, log=self._log)
        try:
            self._session.acquire()
            if self._session.created:
                self._step("fsync-temp-drop-dir")
                fsync_parent_dir(self.paths.temp_drop)
            self._journal.remove_leftover_tmp()
            cache.remove_stale_tmp(self.paths.cache, self._step)
            if (self.cfg.server_mode and self._nothing_to_recover()
                    and self._open_server()):
                self.server_mode = True
                return
            self._open_normal()
        except OSError as exc:
            raise self._failure(exc, OPEN_FAILED_TEXT, OVERQUOTA_OPEN_TEXT) from None

    def _open_normal(self) -> None:
        """Recover, move the spool's mail into the drop, scan the drop."""
        if self._journal.read() is not None:
            self._phase = "recover"
            self._recover()
            self._phase = "open"
        elif os.path.lexists(self.paths.new_image):
            self._step("unlink-leftover-image")     # the journal was cleared, not the image
            unlink_if_present(self.paths.new_image)
        if self.paths.old_temp_drop:
            self._absorb_old_temp_drop()
        # A cache describes a spool this session is about to rewrite: forget it first.
        cache.remove(self.paths.cache, self._step)
        spool = self._spool_lock(create=False)
        try:
            if spool.fd is not None:
                self._absorb(spool.fd, "spool", spool.refresh_if_due)
        finally:
            spool.release()
        self._scan()

    def _scan(self) -> None:
        self._drop_file = open(self._session.fd, "rb", closefd=False)
        self._all = mbox.scan(self._drop_file, **cache.scan_options(self.cfg))
        self._show_visible()

    def _show_visible(self) -> None:
        """The client's message list: every scanned message but the hidden ones."""
        self.messages = [m for m in self._all if not m.hidden]
        self.hidden_count = len(self._all) - len(self.messages)

    def _absorb_old_temp_drop(self) -> None:
        """check-old-spool-loc (S7): a drop left by an old Qpopper in the plain spool dir."""
        path = self.paths.old_temp_drop
        old = SessionLock(path, step_hook=self._step, log=self._log)
        if not os.path.lexists(path):
            return
        old.acquire()
        try:
            self._absorb(old.fd, "old-temp-drop", lambda: None)
        finally:
            old.release(unlink=os.fstat(old.fd).st_size == 0)

    def _absorb(self, src: int, source: str, refresh: Callable[[], None]) -> None:
        """Append the source's bytes to the drop, then truncate the source (journaled)."""
        st = os.fstat(src)
        size = st.st_size
        if size == 0:
            return
        drop = self._session.fd
        start = os.fstat(drop).st_size
        pad = mbox.padding_after(drop, start)
        record = {"op": "absorb", "source": source, "dev": st.st_dev, "ino": st.st_ino,
                  "temp_len": start, "pad": len(pad), "len": size}
        self._journal.write(record)
        self._step("truncate-temp-drop")
        os.ftruncate(drop, start)
        if pad:
            self._step("pad-temp-drop")
            pwrite_all(drop, pad, start)
        _copy(src, 0, size, drop, start + len(pad), self._step, f"copy-{source}", refresh)
        self._step("fsync-temp-drop")
        os.fsync(drop)
        self._journal.write(dict(record, op="absorbed"))
        self._step(f"truncate-{source}")
        os.ftruncate(src, 0)
        self._step(f"fsync-{source}")
        os.fsync(src)
        self._journal.clear()

    # --- server mode: open ------------------------------------------------------------------------
    def _nothing_to_recover(self) -> bool:
        """Server mode is forced off while a crashed session's state is around: a
        non-empty temporary drop, a journal, a new image, or an old-location drop with mail.
        Normal mode's recovery deals with those first."""
        if os.fstat(self._session.fd).st_size:
            return False
        if os.path.lexists(self.paths.journal) or os.path.lexists(self.paths.new_image):
            return False
        old = self.paths.old_temp_drop
        try:
            return not (old and os.lstat(old).st_size)
        except FileNotFoundError:
            return True

    def _open_server(self) -> bool:
        """Lock, read the spool in place (or trust the cache for what it covers), unlock, keep
        the spool open. False when there is no spool (server mode is then forced off)."""
        spool = self._spool_lock(create=False)
        try:
            if spool.fd is None:
                return False
            fd = os.open(self.paths.spool, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            a, b = os.fstat(fd), os.fstat(spool.fd)
            if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
                os.close(fd)    # replaced between lock and open: let normal mode handle it
                return False
            self._drop_file = open(fd, "rb")
            size = a.st_size
            self._all = self._server_scan(fd, size)
            self._login = cache.spool_state(fd, size)
        finally:
            spool.release()             # only the read-only descriptor stays open
        self._show_visible()
        return True

    def _server_scan(self, fd: int, size: int) -> list[mbox.Message]:
        options = cache.scan_options(self.cfg)      # the scan's keywords, as the cache has them
        cached = cache.load(self.paths.cache, self.user, self.cfg, fd)
        if cached is not None and _tail_closed(fd, cached[1].size, size):
            known, state = cached
            try:
                new = mbox.scan(self._drop_file, start=state.size, end=size,
                                first_number=len(known) + 1,
                                taken_uids={m.uid for m in known}, **options)
            except mbox.MboxFormatError:
                self._note(syslog.LOG_NOTICE, f"{self.user}'s cache does not end at a message; "
                                              "scanning the spool")
            else:
                self.scan_region = (state.size, size)
                self._cache_current = state.size == size
                return known + new
        self.scan_region = (0, size)
        return mbox.scan(self._drop_file, end=size, **options)

    # --- server mode: update --------------------------------------------------------------------
    def _update_server(self, kept, marked, any_deleted: bool) -> None:
        """QUIT in server mode: nothing changed -> no spool write; all deleted and no
        new mail -> truncate; otherwise replace the spool with the new image (see top)."""
        with self._writing_back():
            if not any_deleted and not self._headers_to_write(marked):
                self._store_cache_if_stale()
                return
            with self._holding_spool():
                state, known = self._rewrite_spool(kept, marked)
            self._store_cache_of_new_spool(state, known)

    def _headers_to_write(self, marked) -> bool:
        """Would the write-back change any message? (X-UIDL after the From line, a Status
        header, `Status: RO` on a message retrieved now.) Hidden messages are written as is."""
        if not self.cfg.update_status_headers:
            return False
        fd = self._drop_file.fileno()
        for m in self._all:
            if m.hidden:
                continue
            if (not m.uid_from_header or len(m.uidl_lines) != 1
                    or m.uidl_lines[0][0] != m.content_start or not m.status_lines):
                return True
            if id(m) in marked and any(os.pread(fd, b - a, a) != b"Status: RO\n"
                                       for a, b in m.status_lines):
                return True
        return False

    def _rewrite_spool(self, kept, marked) -> tuple[cache.SpoolState, "_Written | None"]:
        """Under the spool lock. Returns the new spool's state and what the rewrite knows of
        its messages (None: [0, size) must be scanned for the cache)."""
        spool = self._spool.fd
        st = os.fstat(spool)
        login = self._login
        if (st.st_dev, st.st_ino) != (login.dev, login.ino) or st.st_size < login.size:
            raise PopError(UPDATE_FAILED_TEXT, RespCode.SYS_TEMP,
                           log="the spool was replaced or cut during a server-mode session; "
                               "left as it is")
        if not kept and st.st_size == login.size:
            self._step("truncate-spool")
            os.ftruncate(spool, 0)
            self._step("fsync-spool")
            os.fsync(spool)
            return cache.spool_state(spool), _Written([], 0)
        return self._replace_spool(kept, marked, st)

    def _replace_spool(self, kept, marked, st: os.stat_result
                       ) -> tuple[cache.SpoolState, "_Written | None"]:
        """New image = kept messages + mail delivered since login; journal `replace`; then
        rename it over the spool (fast-update) or write it into the spool in place."""
        spool = self._spool.fd
        spool_len = st.st_size
        login_len = self._login.size
        fast = self.cfg.fast_update
        image = self._open_image(truncate=True)
        try:
            try:
                writer = _ChunkWriter(image, self._step, "write-image")
                known = self._write_kept(kept, marked, writer.write, relocate=True)
                writer.flush()
                if known is not None:
                    known = _Written(known, writer.pos)
                if spool_len > login_len:
                    if self._append_spool(writer, spool, login_len, spool_len - login_len,
                                          "copy-new-mail-to-image"):
                        known = None        # never after a copy: it ends with a blank line
                if fast:
                    fast = self._dress_like_spool(image, st)
                self._step("fsync-image")
                os.fsync(image)
            except OSError:
                self._step("unlink-image")
                unlink_if_present(self.paths.new_image)
                raise
            image_len = os.fstat(image).st_size
            self._journal.write({"op": "replace", "dev": st.st_dev, "ino": st.st_ino,
                                 "len": image_len, "spool_len": spool_len,
                                 "prefix": sha256_of_range(spool, 0, spool_len)})
            if fast and self._rename_over_spool():
                self._journal.clear()
                return cache.spool_state(image), known
            # Copy: empty the spool (the image holds its mail), then a journaled commit onto
            # the empty spool, exactly as normal mode applies an image.
            self._step("truncate-spool")
            os.ftruncate(spool, 0)
            self._step("fsync-spool")
            os.fsync(spool)
            self._apply(spool, image, image_len, 0, may_roll_back=True, only_copy=True)
        finally:
            os.close(image)
        self._finish_commit()
        return cache.spool_state(spool), known

    def _dress_like_spool(self, image: int, st: os.stat_result) -> bool:
        """fast-update: the image becomes the spool, so it takes the spool's mode and group.
        False (copy instead) when the group cannot be given."""
        try:
            self._step("chmod-image")
            os.fchmod(image, stat.S_IMODE(st.st_mode))
            if os.fstat(image).st_gid != st.st_gid:
                os.fchown(image, -1, st.st_gid)
        except OSError as exc:
            self._note(syslog.LOG_NOTICE, f"fast-update of {self.user}: cannot give the image "
                                          f"the spool's mode/group ({exc.strerror}); copying")
            return False
        return True

    def _rename_over_spool(self) -> bool:
        """rename(2) the image over the spool; False (copy instead) when it fails (another
        filesystem, a directory we may not write)."""
        try:
            self._step("rename-image-over-spool")
            os.rename(self.paths.new_image, self.paths.spool)
        except OSError as exc:
            self._note(syslog.LOG_NOTICE, f"fast-update of {self.user}: rename failed "
                                          f"({exc.strerror}); copying")
            return False
        self._step("fsync-spool-dir")
        fsync_parent_dir(self.paths.spool)
        return True

    # --- server mode: the cache -------------------------------------------------------------------
    def _store_cache_if_stale(self) -> None:
        """Nothing was written: the messages of the login-time spool are the cache."""
        if not self._cache_current:
            self._store_cache(self._login, self._all)

    def _store_cache_of_new_spool(self, state: cache.SpoolState, known: "_Written | None"
                                  ) -> None:
        """After a rewrite the spool's first state.size octets are ours. The messages the
        rewrite wrote are known from the writing (mbox.copy_for_update); the rest — mail
        delivered during the session, or all of it when the writing could not tell — is
        scanned (outside the lock; delivery agents only append), so the next session starts
        from the cache. Either way the list is what a scan of [0, state.size) gives."""
        if known is not None and known.end == state.size:
            self._store_cache(state, known.messages)
            return
        # The update is done: a failure here costs the next session a scan, nothing more.
        try:
            fd = os.open(self.paths.spool, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with open(fd, "rb") as f:
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != (state.dev, state.ino):
                    return
                messages = self._scan_new_spool(f, state.size, known)
        except (OSError, mbox.MboxFormatError) as exc:
            self._note(syslog.LOG_NOTICE, f"no cache for {self.user}: {exc}")
            return
        self._store_cache(state, messages)

    def _scan_new_spool(self, f, size: int, known: "_Written | None") -> list[mbox.Message]:
        """The rewritten spool's messages: the known ones and a scan of what follows them,
        when that scan starts at a From_ message (as a scan of the whole file would then cut
        there: the known part ends with a blank line); else a scan of the whole file."""
        options = cache.scan_options(self.cfg)
        if known is not None and known.end < size:
            try:
                new = mbox.scan(f, start=known.end, end=size,
                                first_number=len(known.messages) + 1,
                                taken_uids={m.uid for m in known.messages}, **options)
            except mbox.MboxFormatError:
                new = None
            if new is not None and not any(m.mmdf for m in new):
                return known.messages + new
        return mbox.scan(f, end=size, **options)

    def _store_cache(self, state: cache.SpoolState, messages) -> None:
        try:
            cache.store(self.paths.cache, self.user, self.cfg, state, messages, self._step)
        except OSError as exc:
            self._note(syslog.LOG_WARNING, f"cannot write {self.user}'s cache: {exc}")

    # --- update and restore ---------------------------------------------------------------------
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

    def _write_drop_raw(self, write) -> None:
        drop = self._session.fd
        size = os.fstat(drop).st_size
        pos = 0
        while pos < size:
            data = os.pread(drop, min(limits.COPY_CHUNK_OCTETS, size - pos), pos)
            if not data:
                break
            write(data)
            pos += len(data)
            self._spool.refresh_if_due()

    def _commit_with_lock(self, write_front: Callable) -> None:
        with self._holding_spool():
            if self._spool.created:
                self._step("fsync-spool-dir")
                fsync_parent_dir(self.paths.spool)
            self._commit(write_front)

    def _commit(self, write_front: Callable) -> None:
        """New image = write_front's bytes + the spool's current bytes; apply it (journaled)."""
        spool = self._spool.fd
        spool_len = os.fstat(spool).st_size
        image = self._open_image(truncate=True)
        try:
            writer = _ChunkWriter(image, self._step, "write-image")
            try:
                write_front(writer.write)
                writer.flush()
                if spool_len:
                    self._append_spool(writer, spool, 0, spool_len, "copy-spool-to-image")
                self._step("fsync-image")
                os.fsync(image)
            except OSError:
                self._step("unlink-image")
                unlink_if_present(self.paths.new_image)
                raise
            image_len = os.fstat(image).st_size
            self._apply(spool, image, image_len, spool_len, may_roll_back=True)
        finally:
            os.close(image)
        self._finish_commit()

    def _append_spool(self, writer: "_ChunkWriter", spool: int, start: int, length: int,
                      name: str) -> bool:
        """Put the spool's [start, start+length) after what `writer` wrote to the image, with
        the separator padding it needs first. True when padding was written."""
        image = writer.fd
        pad = mbox.padding_after(image, writer.pos)
        if pad:
            writer.write(pad)
            writer.flush()
        _copy(spool, start, length, image, writer.pos, self._step, name,
              self._spool.refresh_if_due)
        return bool(pad)

    def _open_image(self, *, truncate: bool) -> int:
        if truncate:
            self._step("create-image")
        fd = _open_own_file(self.paths.new_image, create=truncate)
        if truncate:
            self._step("truncate-image")
            os.ftruncate(fd, 0)
        return fd

    def _apply(self, spool: int, image: int, image_len: int, spool_len: int, *,
               may_roll_back: bool, only_copy: bool = False) -> None:
        """Journal `commit`, then make the spool's first image_len bytes the image (see top).
        `may_roll_back`: nothing of the spool's first spool_len bytes was overwritten yet (an
        update's first attempt), so running out of room may drop the image and journal; a
        recovery passes False (it may run after the spool was partly rewritten or replaced,
        when the image holds mail found nowhere else). `only_copy`: the image is the only
        copy of the mail (server mode emptied the spool for it, the drop is empty), so
        running out of room keeps image and journal too."""
        if image_len < spool_len:
            raise PopError(UPDATE_FAILED_TEXT, RespCode.SYS_TEMP,
                           log=f"image of {image_len} octets shorter than spool {spool_len}")
        st = os.fstat(spool)
        head = os.pread(spool, min(spool_len, HEAD_OCTETS), 0)
        record = {"op": "commit", "dev": st.st_dev, "ino": st.st_ino,
                  "len": image_len, "spool_len": spool_len, "head": head.hex()}
        self._journal.write(dict(record, only_copy=True) if only_copy else record)
        if image_len > spool_len:
            self._step("extend-spool")
            os.ftruncate(spool, image_len)
            try:
                self._step("allocate-spool")
                os.posix_fallocate(spool, spool_len, image_len - spool_len)
            except OSError as exc:
                if exc.errno in QUOTA_ERRNOS:
                    self._roll_back_extension(
                        spool, spool_len, keep_image=only_copy or not may_roll_back)
                    raise
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
                # This filesystem cannot reserve space; the writes below may still fail.
            self._step("fsync-spool-size")
            os.fsync(spool)
        refresh = self._spool.refresh_if_due
        _copy(image, 0, spool_len, spool, 0, self._step, "write-spool", refresh)
        if image_len > spool_len:
            _copy(image, spool_len + 1, image_len - spool_len - 1, spool, spool_len + 1,
                  self._step, "write-spool", refresh)
            # Everything else must be durable before byte Z says "complete": writeback may
            # otherwise store the marker's page before the pages written earlier.
            self._step("fsync-spool-body")
            os.fdatasync(spool)
            _copy(image, spool_len, 1, spool, spool_len, self._step, "write-spool-marker", refresh)
        self._step("fsync-spool")
        os.fsync(spool)

    def _roll_back_extension(self, spool: int, spool_len: int, *, keep_image: bool) -> None:
        """No room: undo the extension. Unless `keep_image`, nothing of the spool was
        overwritten yet and the image and journal go. With `keep_image` (the image is the
        only copy of some mail: server mode's, or a recovery's after the spool was partly
        rewritten) they stay: every later session tries the commit again (and refuses to
        start until there is room)."""
        self._step("truncate-spool-back")
        os.ftruncate(spool, spool_len)
        self._step("fsync-spool")
        os.fsync(spool)
        if keep_image:
            return
        self._journal.clear()
        self._step("unlink-image")
        unlink_if_present(self.paths.new_image)

    def _finish_commit(self) -> None:
        """The spool holds everything: empty the drop, then forget the journal and image."""
        self._cut_drop()
        self._journal.clear()
        self._step("unlink-image")
        unlink_if_present(self.paths.new_image)

    # --- recovery -----------------------------------------------------------------------------
    def _recover(self) -> None:
        record = self._journal.read()
        op = record.get("op")
        self._note(syslog.LOG_NOTICE, f"recovering {self.user}'s maildrop from journal: {op}")
        if op == "absorb":
            self._cut_drop(record["temp_len"])
            self._journal.clear()
        elif op == "absorbed":
            self._recover_absorbed(record)
        elif op in ("commit", "replace"):
            with self._holding_spool():
                if op == "commit":
                    self._recover_commit(record)
                else:
                    self._recover_replace(record)
        else:
            raise PopError(JOURNAL_BAD_TEXT, RespCode.SYS_TEMP,
                           log=f"{self.paths.journal}: unknown operation {op!r}")

    def _recover_absorbed(self, record: dict) -> None:
        start = record["temp_len"] + record["pad"]
        size = record["len"]
        if record.get("source") == "old-temp-drop":
            holder = None
            if os.path.lexists(self.paths.old_temp_drop or ""):
                holder = SessionLock(self.paths.old_temp_drop, step_hook=self._step, log=self._log)
                holder.acquire()
            src = holder.fd if holder else None
        else:
            holder = self._spool_lock(create=False)
            src = holder.fd
        try:
            untouched = False
            if src is not None:
                st = os.fstat(src)
                untouched = ((st.st_dev, st.st_ino) == (record["dev"], record["ino"])
                             and st.st_size >= size
                             and _same_bytes(src, 0, self._session.fd, start, size))
            if untouched:
                # The source was not truncated: it still has the mail; take it again later.
                self._cut_drop(record["temp_len"])
            self._journal.clear()
        finally:
            if isinstance(holder, SessionLock):
                holder.release(unlink=False)
            elif holder is not None:
                holder.release()

    def _recover_replace(self, record: dict) -> None:
        """A server-mode update died after its image was durable. Renamed (fast-update): done.
        Spool untouched (its first spool_len octets hash as recorded): the update did not
        happen; the image goes. Spool emptied (then maybe new mail): roll forward as a commit
        onto an empty spool."""
        spool = self._spool.fd
        st = os.fstat(spool)
        # The inode number alone does not tell: after a crash the spool may have been deleted
        # and a new one created with the same number. Its first spool_len octets do.
        untouched = ((st.st_dev, st.st_ino) == (record["dev"], record["ino"])
                     and st.st_size >= record["spool_len"]
                     and sha256_of_range(spool, 0, record["spool_len"]) == record["prefix"])
        if not os.path.lexists(self.paths.new_image):
            if untouched:
                raise PopError(JOURNAL_BAD_TEXT, RespCode.SYS_TEMP,
                               log=f"{self.paths.journal}: replace without its image; left as is")
            self._journal.clear()               # the rename happened
            return
        if untouched:
            self._note(syslog.LOG_NOTICE, f"{self.user}'s server-mode update had not begun; "
                                          "the spool stays as it was")
            self._journal.clear()
            self._step("unlink-image")
            unlink_if_present(self.paths.new_image)
            return
        self._recover_commit(dict(record, op="commit", spool_len=0, only_copy=True))

    def _recover_commit(self, record: dict) -> None:
        spool = self._spool.fd
        image_len, spool_len = record["len"], record["spool_len"]
        try:
            image = self._open_image(truncate=False)
        except FileNotFoundError:
            image = None
        if image is None or os.fstat(image).st_size < image_len:
            if image is not None:
                os.close(image)
            raise PopError(JOURNAL_BAD_TEXT, RespCode.SYS_TEMP,
                           log=f"{self.paths.journal}: commit without its image; left as is")
        try:
            st = os.fstat(spool)
            size = st.st_size
            if not _same_spool(spool, st, image, record):
                eof = 0                                  # a different file: all of it is new
            elif size >= image_len and _same_bytes(spool, 0, image, 0, image_len):
                eof = None                               # the image is in place
            elif size < image_len:
                eof = min(spool_len, size)               # not extended yet
            elif image_len > spool_len and os.pread(spool, 1, spool_len) == b"\0":
                eof = image_len                          # extended, partly written
            elif image_len == spool_len:
                eof = image_len
            else:
                eof = spool_len                          # not extended; mail after it
            if eof is not None:
                self._note(syslog.LOG_NOTICE, f"rolling {self.user}'s update forward "
                                              f"({size - eof} octets of new mail)")
                self._step("truncate-image")
                os.ftruncate(image, image_len)
                new_len = image_len
                if size > eof:
                    pad = mbox.padding_after(image, image_len)
                    if pad:
                        self._step("pad-image")
                        pwrite_all(image, pad, image_len)
                    _copy(spool, eof, size - eof, image, image_len + len(pad), self._step,
                          "copy-spool-to-image", self._spool.refresh_if_due)
                    new_len = image_len + len(pad) + size - eof
                self._step("fsync-image")
                os.fsync(image)
                # The spool may be partly rewritten already: running out of room must
                # keep the journal and the image, the next login rolls forward again.
                self._apply(spool, image, new_len, size, may_roll_back=False,
                            only_copy=bool(record.get("only_copy")))
        finally:
            os.close(image)
        self._finish_commit()


class _Journal:
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

    def write(self, record: dict) -> None:
        data = json.dumps(dict(record, v=JOURNAL_VERSION), sort_keys=True).encode() + b"\n"
        name = f"journal-{record['op']}"
        self.step(f"{name}-write")
        fd = _open_own_file(self.tmp, create=True)
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


@dataclasses.dataclass(frozen=True)
class _Written:
    """What a server-mode rewrite knows of the new spool: the messages of [0, end)."""

    messages: list
    end: int


class _ChunkWriter:
    """Appends to a file in limits.COPY_CHUNK_OCTETS writes, one step per write."""

    def __init__(self, fd: int, step: StepHook, name: str):
        self.fd = fd
        self.step = step
        self.name = name
        self.pos = 0
        self.parts: list[bytes] = []
        self.size = 0
        self.writeback = Writeback(fd)

    def write(self, data: bytes) -> None:
        self.parts.append(bytes(data))
        self.size += len(data)
        if self.size >= limits.COPY_CHUNK_OCTETS:
            self.flush()

    def flush(self) -> None:
        if not self.parts:
            return
        data = b"".join(self.parts)
        self.parts, self.size = [], 0
        self.step(self.name)
        pwrite_all(self.fd, data, self.pos)
        self.pos += len(data)
        self.writeback.written_up_to(self.pos)


# --- small file helpers ---------------------------------------------------------------------------
def _open_own_file(path: str, *, create: bool) -> int:
    """Open one of our bookkeeping files read-write: never through a symlink, and never a file
    that is not our own plain single-link file (checked before anything is truncated)."""
    return open_regular(path, os.O_RDWR | (os.O_CREAT if create else 0), IMAGE_MODE,
                        owner=os.geteuid(),
                        refuse=lambda kind, detail: PopError(JOURNAL_BAD_TEXT, RespCode.SYS_PERM,
                                                             log=f"{path}: not our plain file"))


def _copy(src: int, src_off: int, length: int, dst: int, dst_off: int, step: StepHook,
          name: str, refresh: Callable[[], None]) -> None:
    """Copy [src_off, src_off+length) of src to dst at dst_off, in bounded chunks: in the
    kernel (copy_file_range(2): no trip through user space, and the copy's pages are left in
    the page cache for the scan), or by pread/pwrite where the kernel cannot (another
    filesystem on an old kernel, a filesystem without it)."""
    done = 0
    in_kernel = _KERNEL_COPY
    writeback = Writeback(dst, dst_off)
    while done < length:
        if in_kernel:
            n = min(KERNEL_COPY_OCTETS, length - done)
            step(name)
            try:
                copied = os.copy_file_range(src, dst, n, src_off + done, dst_off + done)
            except OSError as exc:
                if exc.errno not in _NO_KERNEL_COPY_ERRNOS:
                    raise
                copied = 0
            if copied:
                done += copied
                writeback.written_up_to(dst_off + done)
                refresh()
                continue
            # 0 is end-of-file, or a filesystem that copies nothing (some report 0 for files
            # they cannot copy): pread below tells which.
            in_kernel = False
        data = os.pread(src, min(limits.COPY_CHUNK_OCTETS, length - done), src_off + done)
        if not data:
            raise OSError(errno.EIO, "source shorter than expected")
        step(name)
        pwrite_all(dst, data, dst_off + done)
        done += len(data)
        writeback.written_up_to(dst_off + done)
        refresh()


def _same_spool(spool: int, st: os.stat_result, image: int, record: dict) -> bool:
    """Is this the spool the commit was rewriting, and not a file that replaced it after the
    crash (which may reuse the inode number)? Our writes only ever turn a byte of the spool's
    first Z octets into the image's byte there, and delivery only appends, so each of the
    first len(head) octets must still be the recorded one or the image's. A version-1 record
    has no head: the inode alone decides, as before."""
    if (st.st_dev, st.st_ino) != (record["dev"], record["ino"]):
        return False
    if "head" not in record:
        return True
    head = bytes.fromhex(record["head"])
    if st.st_size < len(head):
        return False                        # we never cut the spool below Z
    now = os.pread(spool, len(head), 0)
    ours = os.pread(image, len(head), 0)
    return len(now) == len(ours) == len(head) and all(
        byte in (old, new) for byte, old, new in zip(now, head, ours))


def _same_bytes(a: int, a_off: int, b: int, b_off: int, length: int) -> bool:
    done = 0
    while done < length:
        n = min(limits.COPY_CHUNK_OCTETS, length - done)
        x = os.pread(a, n, a_off + done)
        if x != os.pread(b, n, b_off + done) or len(x) != n:
            return False
        done += n
    return True


def _tail_closed(fd: int, cached_len: int, size: int) -> bool:
    """Can mail after the cached region be scanned on its own? Only when the region ends the
    way a separator needs (an empty line, or an MMDF trailer); otherwise a full scan decides
    whether the appended `From ` line starts a message."""
    return cached_len == size or not mbox.padding_after(fd, cached_len)

