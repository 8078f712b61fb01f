"""Server mode: the spool is read in place (with `.user.cache` for what is already known) and
rewritten only when QUIT changes something (docs/maildrop.md, "Server mode")."""

from __future__ import annotations

import dataclasses
import os
import stat
import syslog

from qpopper.pop3.responses import PopError, RespCode
from qpopper.spool import cache, mbox
from qpopper.spool.commit import UPDATE_FAILED_TEXT, overquota_text
from qpopper.spool.durable import ChunkWriter, fsync_parent_dir, pwrite_all, sha256_of_range
from qpopper.spool.dotlock import LockTiming
from qpopper.spool.normal_mode import NormalModeMaildrop

SERVER_UPDATE_FAILED_TEXT = ("Error updating primary drop.  Your mail is intact; this session's "
                             "changes are not applied")
SERVER_UPDATE_PENDING_TEXT = ("Error updating primary drop.  Your mail is intact; the update "
                              "completes at a later login")
OVERQUOTA_SERVER_UPDATE_FAILED_TEXT = overquota_text(SERVER_UPDATE_FAILED_TEXT)
OVERQUOTA_SERVER_UPDATE_PENDING_TEXT = overquota_text(SERVER_UPDATE_PENDING_TEXT)


@dataclasses.dataclass(frozen=True)
class _Written:
    """What a server-mode rewrite knows of the new spool: the messages of [0, end)."""

    messages: list
    end: int


def _end_closer(fd: int, size: int, messages: list[mbox.Message]) -> bytes:
    """What closes the scanned spool [0, size) of fd: an MMDF end left open (its last message
    without a trailer, a trailer or a line of junk cut by the end) gets mbox.closing_octets; a
    From_ last message without its final LF or the empty line after it gets them, as the
    write-back writes them (a delivery agent's `From ` line after anything else is no
    separator, and its mail would join that message)."""
    if messages and not messages[-1].mmdf:
        return mbox.padding_after(fd, size, open_message=False)
    return mbox.closing_octets(fd, size, messages)


class ServerModeMaildrop(NormalModeMaildrop):
    """Server mode when there is nothing to recover and the spool exists; normal mode (the
    parent class) otherwise: `server_mode` says which."""

    def __init__(self, *args):
        super().__init__(*args)
        self._login: cache.SpoolState | None = None     # the spool at login
        self._cache_current = False         # the cache already says all that
        self._spool_emptied = False         # a rewrite's copy emptied the spool for its image

    def _open_mode(self) -> None:
        if self._nothing_to_recover() and self._open_server():
            self.server_mode = True
            return
        self._open_normal()

    def restore(self) -> None:
        """Abort without update: nothing to put back, unless later mail would join a listed
        message (a stale Content-Length; docs/maildrop.md, "Server mode")."""
        if not self.server_mode:
            return super().restore()
        self._phase = "restore"
        if _stale_length_to_drop(self._drop_file, self._all):
            return self._rewrite(set(), set())      # nothing deleted or marked
        try:
            self._store_cache_if_stale()
        finally:
            self.close()

    def _nothing_to_recover(self) -> bool:
        """Server mode is forced off while a crashed session's state is around (a non-empty
        temporary drop, a journal, a new image, or an old-location drop with mail): normal
        mode's recovery deals with those first (docs/maildrop.md, "Server mode")."""
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
        the spool open. False (server mode forced off) without a spool, or when _padded."""
        spool = self._spool_lock(create=False)
        try:
            if spool.fd is None:
                return False
            if _padded(spool.fd):
                self._note(syslog.LOG_NOTICE, f"{self.user}'s spool starts with empty lines; "
                                              "normal mode for this session")
                return False
            fd = os.open(self.paths.spool, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            a, b = os.fstat(fd), os.fstat(spool.fd)
            if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
                os.close(fd)    # replaced between lock and open: let normal mode handle it
                return False
            self._drop_file = open(fd, "rb")
            size = a.st_size
            self._all = self._server_scan(fd, size)
            size = self._close_spool_end(spool, size)
            self._login = cache.spool_state(fd, size)
        finally:
            spool.release()             # only the read-only descriptor stays open
        self._show_visible()
        return True

    def _server_scan(self, fd: int, size: int) -> list[mbox.Message]:
        options = cache.scan_options(self.cfg)      # the scan's keywords, as the cache has them
        cached = cache.load(self.paths.cache, self.user, self.cfg, fd, note=self._cache_ignored)
        if cached is not None and _tail_closed(self._drop_file, cached[1].size, size,
                                               cached[0]):
            known, state = cached
            if state.size == size:          # no new mail: nothing to scan
                self.scan_region = (size, size)
                self._cache_current = True
                return known
            try:
                new = mbox.scan(self._drop_file, start=state.size, end=size,
                                first_number=len(known) + 1,
                                taken_uids={m.uid for m in known}, **options)
            except mbox.MboxFormatError:
                self._note(syslog.LOG_NOTICE, f"{self.user}'s cache does not end at a message; "
                                              "scanning the spool")
            else:
                self.scan_region = (state.size, size)
                return known + new
        self.scan_region = (0, size)
        return mbox.scan(self._drop_file, end=size, **options)

    def _close_spool_end(self, spool, size: int) -> int:
        """A spool whose end is open (_end_closer) gets what closes it now, under the lock, as
        a delivery appends (docs/mbox.md, "What write-back writes"). Returns the new size."""
        pad = _end_closer(spool.fd, size, self._all)
        if not pad:
            return size
        # The scan's mmap closed a duplicate of the spool's descriptor, which dropped our fcntl
        # lock: a delivery agent that locks with fcntl alone may have appended since. Locked
        # again, the end is closed only where the scan saw it; else it stays as it is.
        if (not spool.retake_fcntl(LockTiming.login(self._lock_step_s))
                or os.fstat(spool.fd).st_size != size):
            return size
        try:
            self._step("close-spool-end")
            pwrite_all(spool.fd, pad, size)
            self._step("fsync-spool")
            os.fsync(spool.fd)
        except OSError as exc:       # a precaution: on a full disk the user may still delete
            os.ftruncate(spool.fd, size)            # as it was (else the error stands)
            self._note(syslog.LOG_WARNING, f"{self.user}'s spool's end left open: closing it "
                                           f"failed: {exc.strerror}")
            return size
        self._note(syslog.LOG_NOTICE, f"{self.user}'s MMDF spool ended open; closed it with "
                   f"{len(pad)} octets" if self._all[-1].mmdf else f"{self.user}'s From_ spool's "
                   f"last message was not closed; closed it with {len(pad)} octets")
        # The last message again, as a scan of the closed file reads it (same UID and octets:
        # what RETR served of it does not change).
        last = self._all[-1]
        self._all[-1:] = mbox.scan(self._drop_file, start=last.offset, end=size + len(pad),
                                   first_number=last.number,
                                   taken_uids={m.uid for m in self._all[:-1]},
                                   **cache.scan_options(self.cfg))
        self._cache_current = False
        return size + len(pad)

    def _update_failed_texts(self) -> tuple[str, str]:
        """Server mode's mail is in the spool, never in a temporary maildrop: a failed
        rewrite left it as it was (the session's changes not applied), or, once the spool
        was emptied for the image, the image holds it and a later login completes the update
        (docs/maildrop.md, "Disk full and quota")."""
        if not self.server_mode:
            return super()._update_failed_texts()
        if self._spool_emptied:
            return SERVER_UPDATE_PENDING_TEXT, OVERQUOTA_SERVER_UPDATE_PENDING_TEXT
        return SERVER_UPDATE_FAILED_TEXT, OVERQUOTA_SERVER_UPDATE_FAILED_TEXT

    def _cache_ignored(self, reason: str) -> None:
        self._note(syslog.LOG_NOTICE, f"{self.user}'s cache ignored ({reason}); scanning the "
                                      "spool")

    # --- the update ------------------------------------------------------------------------

    def update(self, deleted: set[int], retrieved: set[int]) -> None:
        """QUIT in server mode: nothing changed -> no spool write; all deleted and no new mail
        -> truncate; otherwise replace the spool with a new image
        (docs/maildrop.md, "Server mode: the update")."""
        if not self.server_mode:
            return super().update(deleted, retrieved)
        self._phase = "update"
        self._rewrite(deleted, retrieved)

    def _rewrite(self, deleted: set[int], retrieved: set[int]) -> None:
        kept, marked, any_deleted = self._kept_and_marked(deleted, retrieved)
        with self._writing_back():
            if not any_deleted and not _headers_to_write(self.cfg, self._drop_file,
                                                         self._all, marked):
                self._store_cache_if_stale()
                return
            with self._holding_spool():
                state, known = self._rewrite_spool(kept, marked)
            self._store_cache_of_new_spool(state, known)

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
        image = self._engine.open_image(truncate=True)
        try:
            try:
                writer = ChunkWriter(image, self._step, "write-image")
                known = self._write_kept(kept, marked, writer.write, relocate=True)
                writer.flush()
                if known is not None:
                    known = _Written(known, writer.pos)
                if spool_len > login_len:
                    if self._engine.append_spool(writer, self._spool, login_len,
                                                 spool_len - login_len, "copy-new-mail-to-image"):
                        known = None        # never after a copy: it ends with a blank line
                if fast:
                    fast = _dress_like_spool(image, st, self._step, self._note, self.user)
                self._step("fsync-image")
                os.fsync(image)
            except OSError:
                self._engine.discard_image()
                raise
            image_len = os.fstat(image).st_size
            self._engine.journal.write({"op": "replace", "dev": st.st_dev, "ino": st.st_ino,
                                 "len": image_len, "spool_len": spool_len,
                                 "prefix": sha256_of_range(spool, 0, spool_len)})
            if fast and self._rename_over_spool():
                self._engine.journal.clear()
                return cache.spool_state(image), known
            # Copy: empty the spool (the image holds its mail), then a journaled commit onto
            # the empty spool, exactly as normal mode applies an image.
            self._step("truncate-spool")
            os.ftruncate(spool, 0)
            self._spool_emptied = True
            self._step("fsync-spool")
            os.fsync(spool)
            self._engine.apply(self._spool, image, image_len, 0, may_roll_back=True,
                               only_copy=True)
        finally:
            os.close(image)
        self._engine.finish()
        return cache.spool_state(spool), known

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
        _sync_renamed(self.paths.spool, self._step, self._note, self.user)
        return True

    # --- the cache ---------------------------------------------------------------------------

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
        if state.size == 0:
            # An empty spool's cache saves the next login nothing (it scans from octet 0
            # either way) and would cost QUIT after DELE of all a write and a rename.
            cache.remove(self.paths.cache, self._step)
            return
        try:
            cache.store(self.paths.cache, self.user, self.cfg, state, messages, self._step)
        except OSError as exc:
            self._note(syslog.LOG_WARNING, f"cannot write {self.user}'s cache: {exc}")


def _padded(fd: int) -> bool:
    """Does the spool start with empty lines before its first message? A normal-mode session
    leaves them out of it, and the cache never holds offsets after them
    (docs/mbox.md, "Padding before the first message")."""
    return bool(mbox.padding_of(fd, os.fstat(fd).st_size))


def _dress_like_spool(image: int, st: os.stat_result, step, note, user: str) -> bool:
    """fast-update: the image becomes the spool, so it takes the spool's mode and group.
    False (copy instead) when the group cannot be given."""
    try:
        step("chmod-image")
        os.fchmod(image, stat.S_IMODE(st.st_mode))
        if os.fstat(image).st_gid != st.st_gid:
            os.fchown(image, -1, st.st_gid)
    except OSError as exc:
        note(syslog.LOG_NOTICE, f"fast-update of {user}: cannot give the image "
                                f"the spool's mode/group ({exc.strerror}); copying")
        return False
    return True


def _headers_to_write(cfg, f, messages: list[mbox.Message], marked) -> bool:
    """Would the write-back change any message? (X-UIDL after the From line, a Status
    header, `Status: RO` on a message retrieved now; hidden ones are written as is.) Any
    message loses a Content-Length not honoured: mail delivered later could make it come
    true (docs/mbox.md, "What write-back writes"). One rewrite, and the line is gone."""
    if _stale_length_to_drop(f, messages):
        return True
    if not cfg.update_status_headers:
        return False
    fd = f.fileno()
    for m in messages:
        if m.hidden:
            continue
        if (not m.uid_from_header or len(m.uidl_lines) != 1
                or m.uidl_lines[0][0] != m.content_start or not m.status_lines):
            return True
        if id(m) in marked and any(os.pread(fd, b - a, a) != b"Status: RO\n"
                                   for a, b in m.status_lines):
            return True
    return False


def _stale_length_to_drop(f, messages: list[mbox.Message]) -> bool:
    return any(mbox.says_a_stale_length(f, m) for m in messages)


def _sync_renamed(spool: str, step, note, user: str) -> None:
    """fsync the spool's directory after the image was renamed over the spool. The rename is
    done: the session's changes are applied, so a failure here is logged, and the reply
    still says they are (docs/maildrop.md, "Server mode: the update")."""
    try:
        step("fsync-spool-dir")
        fsync_parent_dir(spool)
    except OSError as exc:
        note(syslog.LOG_WARNING, f"fast-update of {user}: the spool was renamed but its "
                                 f"directory not synced ({exc.strerror})")


def _tail_closed(f, cached_len: int, size: int, known: list[mbox.Message]) -> bool:
    """Can mail after the cached region be scanned on its own? Only when the region ends the
    way a separator needs (an empty line, or an MMDF trailer); otherwise a full scan decides
    whether the appended `From ` line starts a message. So it does when a Content-Length not
    honoured may reach the mail (any message's, the last one's in any case): the mail can
    bring a separator or the end within its slack (docs/mbox.md, "Content-Length"), and the
    cache must say what a full scan says."""
    if cached_len == size:
        return True
    fd = f.fileno()
    if known and known[-1].stale_content_length and not known[-1].mmdf:
        return False                     # (an MMDF message's Content-Length is never weighed)
    if any(mbox.length_reaches(m, value, cached_len)
           for m in known if m.stale_content_length for value in mbox.stale_lengths(f, m)):
        return False
    if mbox.ends_open(known):
        # cached open, and not closed since by a login: a full scan pairs the separator lines
        # as every reader does (docs/mbox.md, "What write-back writes")
        return False
    return not mbox.padding_after(fd, cached_len, open_message=False)
