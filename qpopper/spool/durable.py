"""Small helpers for writing files that must survive a crash (maildrop, bulletins, cache).

One copy of each so that the durability rules (short writes retried, the directory entry made
durable, bounded reads) cannot drift apart between the places that rewrite a spool.
"""

from __future__ import annotations

import hashlib
import os

from .. import limits


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of data at offset: pwrite(2) may write less than asked (disk full, signals)."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


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


def unlink_if_present(path: str, *, ignore_other_errors: bool = False) -> None:
    """Remove path; a missing file is already the wanted state. Other errors propagate unless
    ignore_other_errors (best-effort clean-up of a temporary file, where failing is harmless)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        if not ignore_other_errors:
            raise
