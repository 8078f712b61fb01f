"""Small helpers for writing files that must survive a crash (maildrop, bulletins, cache,
the Maildir index).

One copy of each so that the durability rules (short writes retried, the directory entry made
durable, bounded reads) cannot drift apart between the places that rewrite a spool.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
from typing import Callable

from qpopper import limits

StepHook = Callable[[str], None]
KERNEL_COPY_OCTETS = 1024 * 1024
"""One copy_file_range(2) call's range: one step and one dot-lock refresh chance per range."""


def recorded_as(st: os.stat_result, ino: int) -> bool:
    """Whether the file `st` describes is the one a record kept on disk (a journal's, a
    bulletin intent's, the cache's) noted as inode number `ino`. Not the device number: an
    NFS client numbers its mounts itself, so hosts sharing a spool, and one host after a
    remount, see another st_dev for the same file, and recovery on another host would take
    the spool for another file. A reused inode number is for the content checks beside
    each call (docs/maildrop.md, "The journal")."""
    return st.st_ino == ino


_KERNEL_COPY = hasattr(os, "copy_file_range")
_NO_KERNEL_COPY_ERRNOS = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP,
                          errno.EBADF, errno.EPERM)
"""copy_file_range(2) refused (old kernel, cross-filesystem, a filesystem without it, a file
kind it does not take): copy through user space instead."""


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of data at offset: pwrite(2) may write less than asked (disk full, signals)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


WRITEBACK_OCTETS = 8 * 1024 * 1024
"""How much a big write lets pile up before it asks the kernel to start writing it out."""
_SYNC_FILE_RANGE_WRITE = 2


def _libc_call(name: str, argtypes: list):
    """Linux's `name` from the C library already loaded, typed (returning an int, errno
    kept), or None where there is none."""
    try:
        call = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    call.argtypes = argtypes
    call.restype = ctypes.c_int
    return call


_start_writeback_call = _libc_call("sync_file_range", [ctypes.c_int, ctypes.c_int64,
                                                       ctypes.c_int64, ctypes.c_uint])

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


_renameat2_call = _libc_call("renameat2", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                                           ctypes.c_char_p, ctypes.c_uint])


def rename_no_replace(src: str, dst: str) -> bool:
    """rename(2) that never replaces a file: False when `dst` exists (nothing changed). With
    renameat2's RENAME_NOREPLACE where the file system has it; elsewhere (NFS, older
    kernels) a look at `dst` first, which leaves a moment for a file made there meanwhile.
    Errors of the rename (FileNotFoundError for a missing `src`) propagate; a name with a
    NUL is a ValueError, as for os.rename (the C call would cut it there)."""
    old, new = os.fsencode(src), os.fsencode(dst)
    if b"\0" in old or b"\0" in new:
        raise ValueError("rename_no_replace: embedded null byte")
    if _renameat2_call is not None:
        if _renameat2_call(_AT_FDCWD, old, _AT_FDCWD, new, _RENAME_NOREPLACE) == 0:
            return True
        err = ctypes.get_errno()
        if err == errno.EEXIST:
            return False
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), src, None, dst)
    if os.path.lexists(dst):
        return False
    os.rename(src, dst)
    return True


class Writeback:
    """Starts the disk writes of a file being written front to back while it is written,
    every WRITEBACK_OCTETS (sync_file_range(2) SYNC_FILE_RANGE_WRITE: start, do not wait), so
    that the fsync that follows waits for the tail only instead of the whole file. A hint:
    it makes nothing durable (the fsync still does) and failing changes nothing."""

    def __init__(self, fd: int, start: int = 0):
        self.fd = fd
        self.started = start

    def written_up_to(self, end: int) -> None:
        if end - self.started >= WRITEBACK_OCTETS and _start_writeback_call is not None:
            _start_writeback_call(self.fd, self.started, end - self.started,
                                  _SYNC_FILE_RANGE_WRITE)
            self.started = end


def sha256_of_range(fd: int, offset: int, length: int) -> str:
    """Hex sha256 of [offset, offset+length) of fd, read in bounded chunks (spools can be large).
    A file shorter than the range hashes what is there, so the digest simply will not match."""
    digest = hashlib.sha256()
    done = 0
    while done < length:
        chunk = os.pread(fd, min(limits.COPY_CHUNK_OCTETS, length - done), offset + done)
        if not chunk:
            break
        digest.update(chunk)
        done += len(chunk)
    return digest.hexdigest()


READ_CHUNK_OCTETS = 1024 * 1024
"""One read(2) of read_up_to: the whole file ends up in memory anyway, so few large reads."""


def read_up_to(fd: int, size: int) -> bytes:
    """Read `size` octets from fd's position in bounded reads; fewer when the file ends first
    (read(2) may return less than asked)."""
    parts, got = [], 0
    while got < size:
        data = os.read(fd, min(READ_CHUNK_OCTETS, size - got))
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def fsync_dir(directory: str) -> None:
    """fsync a directory: a created, renamed or removed name is durable only once its directory
    is synced, not the file itself."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_parent_dir(path: str) -> None:
    """fsync the directory holding path (after creating, renaming or removing path)."""
    fsync_dir(os.path.dirname(path) or ".")


def unlink_if_present(path: str, *, ignore_other_errors: bool = False) -> bool:
    """Remove path; a missing file is already the wanted state. Other errors propagate unless
    ignore_other_errors (best-effort clean-up of a temporary file, where failing is harmless).
    True when this call removed it (what a Maildir++ quota may count off: maildir_quota)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError:
        if not ignore_other_errors:
            raise
        return False
    return True


def _create_exclusive(temp: str, mode: int) -> int:
    """A new file at `temp`, ours alone: O_EXCL|O_NOFOLLOW, so a symlink or a hard link
    planted at the name is never followed or written through. Whatever of ours (our uid
    owns it) is at the name is a leftover of a writer that crashed (the caller's lock or a
    per-process name keeps live writers apart): it is unlinked — the name, never what it
    points to — and the creation tried once more. Someone else's file there, or a second
    refusal (someone planting again), is the caller's OSError."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(temp, flags, mode)
    except FileExistsError:
        # only our own leftover: in a shared directory (the spool's) the name may be someone
        # else's file, which is not ours to remove
        if os.lstat(temp).st_uid != os.geteuid():
            raise
        unlink_if_present(temp)
        return os.open(temp, flags, mode)


def _renamed_already(final: str, written: os.stat_result, data: bytes) -> bool:
    """Whether a rename that found its source missing had been done: over NFS a RENAME whose
    reply was lost is sent again, and the retry finds the temporary name gone. Done when
    `final` is the very file written (`written`, its fstat) and holds `data`."""
    try:
        if not os.path.samestat(os.lstat(final), written):     # nothing else is opened
            return False
        fd = os.open(final, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        return (os.path.samestat(st, written) and st.st_size == len(data)
                and read_up_to(fd, len(data)) == data)
    finally:
        os.close(fd)


def publish(temp: str, final: str, data: bytes, *, mode: int = 0o600, link: bool = False,
            sync: bool = True, step: StepHook | None = None,
            steps: tuple[str, str | None, str] = ("write", "fsync", "publish")) -> bool:
    """Put `data` at `final` whole or not at all, the one way every rewritten file is
    published (docs/internals.md, "Files written whole"): written to `temp` (a new file of
    `mode`, see _create_exclusive; same filesystem as `final`), fsync'd when `sync`, then
    renamed over `final`, or with `link` linked to `final` (a name that exists already is
    kept: returns False) and `temp` removed. The directory's fsync is the caller's: some
    publish many files and sync once. `steps` names the write, fsync and publish steps for
    `step` (the crash tests' hook; the fsync's is None without `sync`). Returns True when
    `final` holds `data` (also after a rename that reported the temporary file missing
    because an NFS retry found its own work done: _renamed_already; a link retried so
    reports EEXIST, which is False, the name kept); raises OSError, leaving no temporary
    file when it can remove it."""
    write_step, sync_step, publish_step = steps
    if step:
        step(write_step)
    fd = _create_exclusive(temp, mode)
    try:
        try:
            pwrite_all(fd, data, 0)
            if sync:
                if step:
                    step(sync_step)
                os.fsync(fd)
            written = os.fstat(fd)
        finally:
            os.close(fd)
        if step:
            step(publish_step)
        if not link:
            try:
                os.rename(temp, final)
            except FileNotFoundError:
                if not _renamed_already(final, written, data):
                    raise
            return True
        try:
            os.link(temp, final)
            return True
        except FileExistsError:
            return False
        finally:
            unlink_if_present(temp, ignore_other_errors=True)
    except BaseException:
        unlink_if_present(temp, ignore_other_errors=True)
        raise


class ChunkWriter:
    """Appends to a file in limits.COPY_CHUNK_OCTETS writes, one step per write."""

    def __init__(self, fd: int, step: StepHook, name: str, start: int = 0):
        self.fd = fd
        self.step = step
        self.name = name
        self.pos = start
        self.parts: list[bytes] = []
        self.size = 0
        self.writeback = Writeback(fd, start)

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


def copy_range(src: int, src_off: int, length: int, dst: int, dst_off: int, step: StepHook,
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


def same_bytes(a: int, a_off: int, b: int, b_off: int, length: int) -> bool:
    done = 0
    while done < length:
        n = min(limits.COPY_CHUNK_OCTETS, length - done)
        x = os.pread(a, n, a_off + done)
        if x != os.pread(b, n, b_off + done) or len(x) != n:
            return False
        done += n
    return True
