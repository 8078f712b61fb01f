"""The journaled commit of a new spool image onto the spool, and its recovery: the engine
both maildrop modes write through (docs/maildrop.md, "The commit engine").
"""

from __future__ import annotations

import errno
import os
import syslog
from typing import Callable

from qpopper import limits
from qpopper.pop3.responses import PopError, RespCode
from qpopper.spool import mbox
from qpopper.spool.durable import (ChunkWriter, copy_range, pwrite_all, recorded_as, same_bytes,
                                   sha256_of_range, unlink_if_present)
from qpopper.spool.journal import JOURNAL_BAD_TEXT, JOURNAL_VERSION, Journal, open_own_file
from qpopper.spool.locking import SpoolLock

StepHook = Callable[[str], None]
Log = Callable[[int, str], None]

HEAD_OCTETS = 256
"""How much of the spool's start a commit record keeps to recognise the spool after a crash."""
UPDATE_FAILED_TEXT = "Error updating primary drop.  Mail left in temporary maildrop"
OVERQUOTA_PREFIX = "Overquota: "


def overquota_text(text: str) -> str:
    """The text of a failure that ran out of room: OVERQUOTA_PREFIX, then the failure's own
    text (first letter lower-cased), so the two cannot drift apart."""
    return OVERQUOTA_PREFIX + text[:1].lower() + text[1:]


QUOTA_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class CommitEngine:
    """Writes an image (`.user.pop.new`) and makes it the spool's first bytes, journaled so
    that a crash at any step rolls forward or back (docs/maildrop.md, "The commit engine").

    `cut_drop()` empties the session's temporary drop: the last step before the journal is
    cleared. Every method that touches the spool takes its SpoolLock, held by the caller."""

    def __init__(self, paths, user: str, step: StepHook, note: Log, cut_drop: Callable[[], None]):
        self.paths = paths
        self.user = user
        self.step = step
        self.note = note
        self.cut_drop = cut_drop
        self.journal = Journal(paths.journal, step)

    def discard_image(self) -> None:
        self.step("unlink-image")
        unlink_if_present(self.paths.new_image)

    def commit(self, lock: SpoolLock, write_front: Callable) -> None:
        """New image = write_front's bytes + the spool's current bytes; apply it (journaled)."""
        spool = lock.fd
        spool_len = os.fstat(spool).st_size
        image = self.open_image(truncate=True)
        try:
            writer = ChunkWriter(image, self.step, "write-image")
            try:
                write_front(writer.write)
                writer.flush()
                if spool_len:
                    self.append_spool(writer, lock, 0, spool_len, "copy-spool-to-image")
                self.step("fsync-image")
                os.fsync(image)
            except OSError:
                self.discard_image()
                raise
            image_len = os.fstat(image).st_size
            self.apply(lock, image, image_len, spool_len, may_roll_back=True)
        finally:
            os.close(image)
        self.finish()

    def append_spool(self, writer: ChunkWriter, lock: SpoolLock, start: int, length: int,
                     name: str) -> bool:
        """Put the spool's [start, start+length) after what `writer` wrote to the image. The
        image's messages were written closed (an open MMDF message gets its trailer:
        mbox_write, normal mode's restore), so what is padded and what is left out is
        decided here, in one place (docs/mbox.md, "What write-back writes";
        docs/maildrop.md, "Server mode: the update"):
        - in a From_ image, the empty lines (LF or CRLF) the copied mail starts with before
          its first `From ` line are left out: a delivery agent's closing of the message
          before it, or more; copied, they would be empty lines of the last message written,
          or start the spool. Copied first (nothing written before them), the mail leaves
          out the empty lines it starts with before its first separator of either format
          (docs/mbox.md, "Padding before the first message"). An image that comes out
          shorter than the spool it is written over is applied with a cut (`apply`);
        - the separator padding the image's end needs goes first (True is returned then);
        - in an MMDF image, what closes the end when the copied mail ends open (its
          separator lines counted), so the spool never ends open after our write."""
        image = writer.fd
        spool = lock.fd
        first = (os.pread(image, limits.MAX_SPOOL_LINE_OCTETS, 0) if writer.pos
                 else os.pread(spool, min(limits.MAX_SPOOL_LINE_OCTETS, length), start))
        pad = mbox.padding_after(image, writer.pos, open_message=False)
        skip = 0
        if length and not writer.pos:           # the copy starts the spool: no padding first
            skip = mbox.leading_padding(lambda at, n: os.pread(spool, n, start + at), length)
        if length and not skip and mbox.mmdf_separator(first) is None:
            skip = mbox.empty_lines_before_from(spool, start, start + length)
        start, length = start + skip, length - skip
        if pad:
            writer.write(pad)
            writer.flush()
        copy_range(spool, start, length, image, writer.pos, self.step, name,
                   lock.refresh_if_due)
        self._close_end(image, writer.pos, writer.pos + length)
        return bool(pad)

    def _close_end(self, image: int, start: int, end: int) -> None:
        """Close an MMDF image's end after mail copied into [start, end) (closed before it)."""
        closing = mbox.closing_counted(image, end, start)
        if closing:
            self.step("close-image-end")
            pwrite_all(image, closing, end)

    def open_image(self, *, truncate: bool) -> int:
        if truncate:
            self.step("create-image")
        fd = open_own_file(self.paths.new_image, create=truncate)
        if truncate:
            self.step("truncate-image")
            os.ftruncate(fd, 0)
        return fd

    def apply(self, lock: SpoolLock, image: int, image_len: int, spool_len: int, *,
              may_roll_back: bool, only_copy: bool = False) -> None:
        """Journal `commit`, then make the spool's first image_len bytes the image
        (docs/maildrop.md, "Normal mode: the update", "The commit engine").
        `may_roll_back`: nothing of the spool's first spool_len bytes was overwritten yet (an
        update's first attempt), so running out of room may drop the image and journal; a
        recovery passes False (it may run after the spool was partly rewritten or replaced,
        when the image holds mail found nowhere else). `only_copy`: the image is the only
        copy of the mail (server mode emptied the spool for it, the drop is empty), so
        running out of room keeps image and journal too."""
        spool = lock.fd
        st = os.fstat(spool)
        head = os.pread(spool, min(spool_len, image_len, HEAD_OCTETS), 0)
        record = {"op": "commit", "dev": st.st_dev, "ino": st.st_ino,
                  "len": image_len, "spool_len": spool_len, "head": head.hex()}
        if only_copy:
            record["only_copy"] = True
        if image_len < spool_len:
            self._apply_with_cut(lock, image, record)
            return
        self.journal.write(record)
        if image_len > spool_len:
            self.step("extend-spool")
            os.ftruncate(spool, image_len)
            try:
                self.step("allocate-spool")
                os.posix_fallocate(spool, spool_len, image_len - spool_len)
            except OSError as exc:
                if exc.errno in QUOTA_ERRNOS:
                    self._roll_back_extension(
                        spool, spool_len, keep_image=only_copy or not may_roll_back)
                    raise
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
                # This filesystem cannot reserve space; the writes below may still fail.
            self.step("fsync-spool-size")
            os.fsync(spool)
        refresh = lock.refresh_if_due
        copy_range(image, 0, spool_len, spool, 0, self.step, "write-spool", refresh)
        if image_len > spool_len:
            copy_range(image, spool_len + 1, image_len - spool_len - 1, spool, spool_len + 1,
                       self.step, "write-spool", refresh)
            # Everything else must be durable before byte Z says "complete": writeback may
            # otherwise store the marker's page before the pages written earlier.
            self.step("fsync-spool-body")
            os.fdatasync(spool)
            copy_range(image, spool_len, 1, spool, spool_len, self.step, "write-spool-marker",
                       refresh)
        self.step("fsync-spool")
        os.fsync(spool)

    def _apply_with_cut(self, lock: SpoolLock, image: int, record: dict) -> None:
        """The image (empty lines left out) is shorter than the spool: write it over the
        spool's first L octets and a NUL at L, make them durable, journal `cut` with the
        SHA-256 of the spool's octets [L+1, Z) (`tail`, which our writes leave as they
        were), then cut the spool to L. Until `cut` is journaled the spool keeps its length,
        so mail delivered after a crash starts at the recorded end; after it, the spool is
        not cut yet only while byte L is NUL and the tail is still there: a NUL at L alone
        may be a bulletin's, whose append after the cut leaves its first byte NUL until it
        is complete (docs/maildrop.md, "The commit engine")."""
        spool, image_len, spool_len = lock.fd, record["len"], record["spool_len"]
        self.journal.write(record, version=JOURNAL_VERSION)
        copy_range(image, 0, image_len, spool, 0, self.step, "write-spool", lock.refresh_if_due)
        self.step("write-spool-cut-marker")
        pwrite_all(spool, b"\0", image_len)
        self.step("fsync-spool-body")
        os.fdatasync(spool)
        tail = sha256_of_range(spool, image_len + 1, spool_len - image_len - 1)
        self.journal.write(dict(record, op="cut", tail=tail), version=JOURNAL_VERSION)
        self.step("cut-spool")
        os.ftruncate(spool, image_len)
        self.step("fsync-spool")
        os.fsync(spool)

    def _roll_back_extension(self, spool: int, spool_len: int, *, keep_image: bool) -> None:
        """No room: undo the extension. Unless `keep_image`, nothing of the spool was
        overwritten yet and the image and journal go. With `keep_image` (the image is the
        only copy of some mail: server mode's, or a recovery's after the spool was partly
        rewritten) they stay: every later session tries the commit again (and refuses to
        start until there is room)."""
        self.step("truncate-spool-back")
        os.ftruncate(spool, spool_len)
        self.step("fsync-spool")
        os.fsync(spool)
        if keep_image:
            return
        self.journal.clear()
        self.discard_image()

    def finish(self) -> None:
        """The spool holds everything: empty the drop, then forget the journal and image."""
        self.cut_drop()
        self.journal.clear()
        self.discard_image()

    def recover_replace(self, lock: SpoolLock, record: dict) -> None:
        """A server-mode update died after its image was durable. Renamed (fast-update): done.
        Spool untouched (its first spool_len octets hash as recorded): the update did not
        happen; the image goes. Spool emptied (then maybe new mail): roll forward as a commit
        onto an empty spool."""
        spool = lock.fd
        st = os.fstat(spool)
        # The inode number alone does not tell: after a crash the spool may have been deleted
        # and a new one created with the same number. Its first spool_len octets do.
        untouched = (recorded_as(st, record["ino"])
                     and st.st_size >= record["spool_len"]
                     and sha256_of_range(spool, 0, record["spool_len"]) == record["prefix"])
        if not os.path.lexists(self.paths.new_image):
            if untouched:
                raise PopError(JOURNAL_BAD_TEXT, RespCode.SYS_TEMP,
                               log=f"{self.paths.journal}: replace without its image; left as is")
            self.journal.clear()               # the rename happened
            return
        if untouched:
            self.note(syslog.LOG_NOTICE, f"{self.user}'s server-mode update had not begun; "
                                          "the spool stays as it was")
            self.journal.clear()
            self.discard_image()
            return
        self.recover_commit(lock, dict(record, op="commit", spool_len=0, only_copy=True))

    def recover_commit(self, lock: SpoolLock, record: dict) -> None:
        spool = lock.fd
        image_len, spool_len = record["len"], record["spool_len"]
        try:
            image = self.open_image(truncate=False)
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
            if not same_spool(spool, st, image, record):
                eof = 0                                  # a different file: all of it is new
            elif record["op"] == "cut":                  # written; NUL at L until it is cut
                eof = spool_len if cut_pending(spool, size, record) else None
            elif image_len < spool_len:
                eof = min(spool_len, size)               # never cut before `cut` is journaled
            elif size >= image_len and same_bytes(spool, 0, image, 0, image_len):
                eof = None                               # the image is in place
            elif size < image_len:
                eof = min(spool_len, size)               # not extended yet
            elif (image_len > spool_len and os.pread(spool, 1, spool_len) == b"\0"
                  and extension_is_ours(spool, image, spool_len + 1, image_len,
                                        lock.refresh_if_due)):
                eof = image_len                          # extended, partly written
            elif image_len == spool_len:
                eof = image_len
            else:
                eof = spool_len                          # not extended; mail after it
            if eof is not None:
                self.note(syslog.LOG_NOTICE, f"rolling {self.user}'s update forward "
                                              f"({size - eof} octets of new mail)")
                self.step("truncate-image")
                os.ftruncate(image, image_len)
                if size > eof:        # as the commit appends it: padded, less empty lines
                    self.append_spool(ChunkWriter(image, self.step, "pad-image", image_len),
                                      lock, eof, size - eof, "copy-spool-to-image")
                new_len = os.fstat(image).st_size
                self.step("fsync-image")
                os.fsync(image)
                # The spool may be partly rewritten already: running out of room must
                # keep the journal and the image, the next login rolls forward again.
                self.apply(lock, image, new_len, size, may_roll_back=False,
                           only_copy=bool(record.get("only_copy")))
            else:
                # Complete, but killed maybe before its last fsync (after the cut, or the
                # marker byte): durable before the journal that tells what it is goes.
                self.step("fsync-spool")
                os.fsync(spool)
        finally:
            os.close(image)
        self.finish()


def extension_is_ours(spool: int, image: int, start: int, end: int,
                      refresh: Callable[[], object] = lambda: None) -> bool:
    """After the extension's NUL at Z: is [Z+1, L) what our extension leaves there, each
    octet the image's or still the zero fill? A NUL at Z alone does not tell: an older
    build's half bulletin appended at Z starts with one too, and mail follows it
    (docs/maildrop.md, "The commit engine"). Compared a chunk, then a page, at a time; only
    a page that is neither the image's nor zeros (the one the crash cut) octet by octet.
    `refresh`: the spool lock's, as the copies call it."""
    pos = start
    while pos < end:
        n = min(limits.COPY_CHUNK_OCTETS, end - pos)
        ours, theirs = os.pread(spool, n, pos), os.pread(image, n, pos)
        if len(ours) != n or len(theirs) != n:
            return False
        if ours != theirs and ours.count(0) != n:
            for at in range(0, n, _PAGE):
                page, want = ours[at:at + _PAGE], theirs[at:at + _PAGE]
                if page != want and page.count(0) != len(page) and any(
                        x != y and x != 0 for x, y in zip(page, want)):
                    return False
        pos += n
        refresh()
    return True


_PAGE = 4096


def cut_pending(spool: int, size: int, record: dict) -> bool:
    """After `cut` was journaled: is the spool still uncut? Then it is at least Z long, byte
    L is the NUL we wrote and [L+1, Z) still hashes as recorded. A NUL at L alone does not
    tell: a bulletin appended after the cut starts with one until it is complete, and mail
    then follows it (docs/maildrop.md, "The commit engine")."""
    image_len, spool_len = record["len"], record["spool_len"]
    tail = record.get("tail")               # None: a record from a build that kept no tail
    return (size >= spool_len and os.pread(spool, 1, image_len) == b"\0"
            and tail in (None, sha256_of_range(spool, image_len + 1, spool_len - image_len - 1)))


def same_spool(spool: int, st: os.stat_result, image: int, record: dict) -> bool:
    """Is this the spool the commit was rewriting, and not a file that replaced it after the
    crash (which may reuse the inode number)? Our writes only ever turn a byte of the spool's
    first min(Z, L) octets into the image's byte there (the NUL of a cut goes at L, the cut
    to L), and delivery only appends, so each of the first len(head) octets must still be
    the recorded one or the image's. A version-1 record has no head: the inode alone
    decides, as before."""
    if not recorded_as(st, record["ino"]):
        return False
    if "head" not in record:
        return True
    head = bytes.fromhex(record["head"])
    if st.st_size < len(head):
        return False                        # we never cut the spool below min(Z, L)
    now = os.pread(spool, len(head), 0)
    ours = os.pread(image, len(head), 0)
    return len(now) == len(ours) == len(head) and all(
        byte in (old, new) for byte, old, new in zip(now, head, ours))
