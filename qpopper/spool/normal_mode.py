"""Normal mode: the mail moves from the spool into the session's temporary drop at login and
goes back at QUIT, Qpopper's way, made crash-safe (docs/maildrop.md, "Normal mode")."""

from __future__ import annotations

import os
import syslog
from typing import Callable

from qpopper import limits
from qpopper.pop3.responses import PopError, RespCode
from qpopper.spool import cache, mbox
from qpopper.spool.durable import (copy_range, fsync_parent_dir, pwrite_all, recorded_as,
                                   same_bytes, unlink_if_present)
from qpopper.spool.journal import JOURNAL_BAD_TEXT, JOURNAL_VERSION, PLAIN_JOURNAL_VERSION
from qpopper.spool.locking import SessionLock
from qpopper.spool.maildrop import Maildrop


class NormalModeMaildrop(Maildrop):
    """Login: recover, move the spool's mail into the drop, scan the drop. QUIT: the kept
    messages, then mail that arrived meanwhile, become the spool (commit.py)."""

    def _open_mode(self) -> None:
        self._open_normal()

    def _open_normal(self) -> None:
        """Recover, move the spool's mail into the drop, scan the drop."""
        if self._engine.journal.read() is not None:
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

    def _absorb_old_temp_drop(self) -> None:
        """check-old-spool-loc: a drop left by an old Qpopper in the plain spool dir."""
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
        pad = mbox.padding_after(drop, start, open_message=None)  # a crashed session's drop
        skip = self._padding_to_leave_out(src, size, start)
        if skip and not start:              # (nothing but empty lines: no message at all)
            self._note(syslog.LOG_NOTICE, f"{self.user}'s {source} " + (
                f"is {skip} octets of empty lines and no message; left out" if skip == size
                else f"starts with {skip} octets of empty lines before its first message; "
                     "left out"))
        record = {"op": "absorb", "source": source, "dev": st.st_dev, "ino": st.st_ino,
                  "temp_len": start, "pad": len(pad), "len": size}
        # A version-2 build would take a copy that left octets out for a truncated source.
        version = PLAIN_JOURNAL_VERSION
        if skip:
            record["skip"], version = skip, JOURNAL_VERSION
        self._engine.journal.write(record, version)
        self._step("truncate-temp-drop")
        os.ftruncate(drop, start)
        if pad:
            self._step("pad-temp-drop")
            pwrite_all(drop, pad, start)
        copy_range(src, skip, size - skip, drop, start + len(pad), self._step, f"copy-{source}",
                   refresh)
        self._step("fsync-temp-drop")
        os.fsync(drop)
        self._engine.journal.write(dict(record, op="absorbed"), version)
        self._step(f"truncate-{source}")
        os.ftruncate(src, 0)
        self._step(f"fsync-{source}")
        os.fsync(src)
        self._engine.journal.clear()

    def _padding_to_leave_out(self, src: int, size: int, drop_len: int) -> int:
        """The empty lines a From_ source starts with before its first `From ` line (a
        delivery agent's padding) are left out after a crashed session's From_ drop, as the
        commit leaves them out after the kept messages: copied, they would be empty lines of
        the drop's last message (docs/maildrop.md, "Normal mode"). Into an empty drop the
        source goes without the empty lines before its first separator of either format,
        which are part of no message (docs/mbox.md, "Padding before the first message")."""
        if not drop_len:
            return mbox.padding_of(src, size)
        first = os.pread(self._session.fd, limits.MAX_SPOOL_LINE_OCTETS, 0)
        if mbox.mmdf_separator(first) is not None:
            return 0
        return mbox.empty_lines_before_from(src, 0, size)

    def update(self, deleted: set[int], retrieved: set[int]) -> None:
        """UPDATE: delete `deleted` (visible 0-based indices), mark `retrieved`, write back."""
        self._phase = "update"
        kept, marked, _ = self._kept_and_marked(deleted, retrieved)
        with self._writing_back():
            if not kept:
                self._cut_drop()
            else:
                self._commit_with_lock(lambda write: self._write_kept(kept, marked, write))

    def restore(self) -> None:
        """Abort without update (pop_restore): the drop goes back in front of any new mail."""
        self._phase = "restore"
        with self._writing_back():
            if os.fstat(self._session.fd).st_size:
                self._commit_with_lock(self._write_drop_raw)

    def _write_drop_raw(self, write) -> None:
        """The drop as it is, its end closed as a server-mode login closes the spool's (an MMDF
        message without its trailer gets it), so mail put after it stays its own; and without
        the Content-Length lines its scan did not honour (an X-UIDL line keeping the UID), which
        the mail put after it could make come true (docs/mbox.md, "What write-back writes")."""
        drop = self._session.fd
        size = os.fstat(drop).st_size
        pos = mbox.padding_of(drop, size)       # (a drop an older version filled as it was)
        f = self._drop_file
        for msg in self._all:
            if mbox.says_a_stale_length(f, msg):
                for start, end, replacement in mbox.stale_length_edits(f, msg):
                    self._copy_drop(pos, start, write)
                    write(replacement)
                    pos = end
        self._copy_drop(pos, size, write)
        write(mbox.closing_octets(drop, size, self._all))

    def _copy_drop(self, pos: int, end: int, write) -> None:
        drop = self._session.fd
        while pos < end:
            data = os.pread(drop, min(limits.COPY_CHUNK_OCTETS, end - pos), pos)
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
            self._engine.commit(self._spool, write_front)

    # --- recovery of a crashed session ---------------------------------------------------

    def _recover(self) -> None:
        record = self._engine.journal.read()
        op = record.get("op")
        self._note(syslog.LOG_NOTICE, f"recovering {self.user}'s maildrop from journal: {op}")
        if op == "absorb":
            self._cut_drop(record["temp_len"])
            self._engine.journal.clear()
        elif op == "absorbed":
            self._recover_absorbed(record)
        elif op in ("commit", "cut", "replace"):
            with self._holding_spool():
                if op != "replace":
                    self._engine.recover_commit(self._spool, record)
                else:
                    self._engine.recover_replace(self._spool, record)
        else:
            raise PopError(JOURNAL_BAD_TEXT, RespCode.SYS_TEMP,
                           log=f"{self.paths.journal}: unknown operation {op!r}")

    def _recover_absorbed(self, record: dict) -> None:
        start = record["temp_len"] + record["pad"]
        size, skip = record["len"], record.get("skip", 0)
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
                untouched = (recorded_as(st, record["ino"])
                             and st.st_size >= size
                             and same_bytes(src, skip, self._session.fd, start, size - skip))
            if untouched:
                # The source was not truncated: it still has the mail; take it again later.
                self._cut_drop(record["temp_len"])
            self._engine.journal.clear()
        finally:
            if isinstance(holder, SessionLock):
                holder.release(unlink=False)
            elif holder is not None:
                holder.release()
