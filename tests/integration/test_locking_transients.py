"""States of a spool or a temporary drop that pass in a moment and must not be refused as
wrong (docs/maildrop.md, "The locking rules"): a spool a delivery agent running as root has
created and not yet given to its owner, NFS's ESTALE for a file another host removed, and
no-atomic-open's unique file whose REMOVE is retried after a lost reply or fails, or whose
link count cannot be read after the link, and a lock or unique file whose write or close
fails."""

from __future__ import annotations

import errno
import os

import pytest

from qpopper.pop3.responses import PopError, RespCode
from qpopper.spool import locking
from qpopper.spool.locking import LockTiming, SessionLock, SpoolLock

NO_WAIT = LockTiming(attempts=1)
USER_UID = 54321
"""The session's uid in these tests (os.geteuid() answers it): any uid but root's."""

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="needs root, to make a root-owned spool")


def root_created_spool(tmp_path, content: bytes = b""):
    spool = tmp_path / "alice"
    spool.write_bytes(content)
    os.chmod(spool, 0o600)
    assert os.stat(spool).st_uid == 0
    return spool


def spool_lock(spool) -> SpoolLock:
    return SpoolLock(str(spool), str(spool) + ".lock", create=True, create_mode=0o600)


@needs_root
def test_a_spool_root_created_and_then_given_to_the_user_is_waited_for(tmp_path, monkeypatch):
    """Postfix's local(8) creates a missing spool as root and then chowns it, before it
    takes its own locks: the session waits for the chown instead of [SYS/PERM]."""
    spool = root_created_spool(tmp_path)
    looked = []
    real_sleep = locking.time.sleep

    def sleep_and_chown_at_the_third(seconds):
        looked.append(seconds)
        if len(looked) == 3:
            os.chown(spool, USER_UID, -1)
        real_sleep(seconds)
    monkeypatch.setattr(locking.os, "geteuid", lambda: USER_UID)
    monkeypatch.setattr(locking.time, "sleep", sleep_and_chown_at_the_third)
    lock = spool_lock(spool)
    lock.acquire(NO_WAIT)
    try:
        assert len(looked) == 3 and os.fstat(lock.fd).st_uid == USER_UID
        assert not lock.created
    finally:
        lock.release()


@needs_root
@pytest.mark.parametrize("content, owner", [
    (b"", 0), (b"From x Thu Jan  1 00:00:00 1970\n\nmail\n", 0), (b"", USER_UID + 1)])
def test_a_spool_that_stays_roots_is_refused_and_only_an_empty_one_is_waited_for(
        tmp_path, monkeypatch, content, owner):
    """Only an empty spool of root's is waited for: one with mail, or another user's, is
    refused at once."""
    spool = root_created_spool(tmp_path, content)
    os.chown(spool, owner, -1)
    looked = []
    monkeypatch.setattr(locking.os, "geteuid", lambda: USER_UID)
    monkeypatch.setattr(locking.time, "sleep", looked.append)
    with pytest.raises(PopError) as refused:
        spool_lock(spool).acquire(NO_WAIT)
    assert refused.value.code is RespCode.SYS_PERM and "wrong owner" in refused.value.text
    assert len(looked) == (locking.NEW_SPOOL_SETTLE[0] if not content and owner == 0 else 0)
    assert os.stat(spool).st_uid == owner and spool.read_bytes() == content


def stale_once(monkeypatch, call: str, path):
    """The first os.fstat after `path` is opened, or the first os.lstat of `path`, fails
    once with ESTALE, as on an NFS client whose file handle another host's unlink made
    stale."""
    real_open, real_fstat, real_lstat = os.open, os.fstat, os.lstat
    state = {"opened": False, "failed": False}

    def opener(name, flags, mode=0o777):
        fd = real_open(name, flags, mode)
        state["opened"] = state["opened"] or str(name) == str(path)
        return fd

    def stale():
        state["failed"] = True
        return OSError(errno.ESTALE, os.strerror(errno.ESTALE))

    def fstat(fd):
        if call == "fstat" and state["opened"] and not state["failed"]:
            raise stale()
        return real_fstat(fd)

    def lstat(name, *args, **kwargs):
        if call == "lstat" and str(name) == str(path) and not state["failed"]:
            raise stale()
        return real_lstat(name, *args, **kwargs)
    monkeypatch.setattr(locking.os, "open", opener)
    monkeypatch.setattr(locking.os, "fstat", fstat)
    monkeypatch.setattr(locking.os, "lstat", lstat)
    return state


@pytest.mark.parametrize("call", ["fstat", "lstat"])
def test_estale_on_the_temporary_drop_is_a_drop_removed_meanwhile(tmp_path, monkeypatch, call):
    drop = tmp_path / ".alice.pop"
    drop.write_bytes(b"")
    os.chmod(drop, 0o600)
    state = stale_once(monkeypatch, call, drop)
    lock = SessionLock(str(drop))
    lock.acquire()
    monkeypatch.undo()
    try:
        assert state["failed"] and lock.fd is not None
        assert os.path.samestat(os.fstat(lock.fd), os.stat(drop))
    finally:
        lock.release(unlink=True)


@pytest.mark.parametrize("call", ["fstat", "lstat"])
def test_estale_on_the_spool_is_a_spool_replaced_meanwhile(tmp_path, monkeypatch, call):
    spool = tmp_path / "alice"
    spool.write_bytes(b"mail\n")
    state = stale_once(monkeypatch, call, spool)
    lock = SpoolLock(str(spool), str(spool) + ".lock", create=False, create_mode=0o660)
    lock.acquire(NO_WAIT)
    monkeypatch.undo()
    try:
        assert state["failed"] and lock.fd is not None
        assert os.pread(lock.fd, 10, 0) == b"mail\n"
    finally:
        lock.release()


def test_estale_that_lasts_when_opening_by_name_is_a_fault_not_a_busy_drop(tmp_path,
                                                                          monkeypatch):
    """open(2) by name has been looked up again by the kernel already: an ESTALE there is a
    stale mount or export, for the administrator, not a drop coming and going."""
    drop = tmp_path / ".alice.pop"
    real_open = os.open

    def opener(name, flags, mode=0o777):
        if str(name) == str(drop):
            raise OSError(errno.ESTALE, os.strerror(errno.ESTALE), str(name))
        return real_open(name, flags, mode)
    monkeypatch.setattr(locking.os, "open", opener)
    with pytest.raises(OSError) as fault:
        SessionLock(str(drop)).acquire()
    assert fault.value.errno == errno.ESTALE and not isinstance(fault.value, PopError)


def _unique_files(directory) -> list[str]:
    return [name for name in os.listdir(directory) if name.startswith(".lk")]


def test_a_retried_unlink_of_the_unique_file_that_finds_it_gone_still_holds_the_lock(tmp_path):
    """no-atomic-open over NFS: the REMOVE of the unique file succeeds, its reply is lost, and
    the retried REMOVE answers ENOENT. The lock is made (the link counted 2): it is held,
    not an error that leaves it on disk with nobody to release it."""
    from qpopper.spool.dotlock import DotLock

    def first_remove_done_reply_lost(step):
        if step == "dotlock-unlink-unique":
            for name in _unique_files(tmp_path):
                os.unlink(tmp_path / name)
    lock_path = str(tmp_path / "alice.lock")
    lock = DotLock(lock_path, nfs_safe=True, step_hook=first_remove_done_reply_lost)
    assert lock.try_acquire() and lock.still_ours()
    lock.release()
    assert not os.path.lexists(lock_path) and _unique_files(tmp_path) == []


def test_an_unlink_of_the_unique_file_that_fails_leaves_no_lock_behind(tmp_path):
    """The unique file cannot be removed (EIO from an NFS server): the error is the caller's,
    and the lock made by linking that file is taken away again, not left for every other
    locker to wait out (5 minutes on another host)."""
    from qpopper.spool.dotlock import DotLock

    def remove_fails(step):
        if step == "dotlock-unlink-unique":
            raise OSError(errno.EIO, "Input/output error")
    lock_path = str(tmp_path / "alice.lock")
    lock = DotLock(lock_path, nfs_safe=True, step_hook=remove_fails)
    with pytest.raises(OSError) as raised:
        lock.try_acquire()
    assert raised.value.errno == errno.EIO and not lock.held
    assert not os.path.lexists(lock_path)
    assert DotLock(lock_path, nfs_safe=True).try_acquire()


def _lstat_fails(monkeypatch, tmp_path, lock_path: str, *, lock_too: bool = False):
    """os.lstat of the unique file (the first `.lk` name looked at) fails with EIO, as an
    NFS GETATTR can after the LINK went through; with lock_too, so does every lstat of the
    lock name."""
    real_lstat = os.lstat
    state = {"unique": None, "failed": 0}

    def lstat(name, *args, **kwargs):
        name = str(name)
        if os.path.basename(name).startswith(".lk") and state["unique"] is None:
            state["unique"] = name
        if name == state["unique"] or (lock_too and name == lock_path):
            state["failed"] += 1
            raise OSError(errno.EIO, "Input/output error", name)
        return real_lstat(name, *args, **kwargs)
    monkeypatch.setattr(os, "lstat", lstat)
    return state


def test_a_link_whose_count_cannot_be_read_is_decided_by_the_lock_name(tmp_path, monkeypatch):
    """no-atomic-open: the link made the lock, then the look at the unique file's link count
    fails. The lock name holds our file: the lock is ours and held, not left on disk with
    nobody to release it (every other host would wait out the stale age)."""
    from qpopper.spool.dotlock import DotLock
    lock_path = str(tmp_path / "alice.lock")
    state = _lstat_fails(monkeypatch, tmp_path, lock_path)
    lock = DotLock(lock_path, nfs_safe=True)
    assert lock.try_acquire() and state["failed"] == 1
    monkeypatch.undo()
    assert lock.held and lock.still_ours()
    lock.release()
    assert not os.path.lexists(lock_path) and _unique_files(tmp_path) == []


def test_a_link_that_cannot_be_told_made_or_not_leaves_no_lock_behind(tmp_path, monkeypatch):
    """Neither the unique file nor the lock name can be looked at after the link: the error
    is the caller's, and the lock the link may have made is taken away first."""
    from qpopper.spool.dotlock import DotLock
    lock_path = str(tmp_path / "alice.lock")
    state = _lstat_fails(monkeypatch, tmp_path, lock_path, lock_too=True)
    lock = DotLock(lock_path, nfs_safe=True)
    with pytest.raises(OSError) as raised:
        lock.try_acquire()
    monkeypatch.undo()
    assert raised.value.errno == errno.EIO and state["failed"] >= 2 and not lock.held
    assert not os.path.lexists(lock_path) and _unique_files(tmp_path) == []
    assert DotLock(lock_path, nfs_safe=True).try_acquire()


def test_a_link_lost_to_another_lock_leaves_that_lock_alone_after_an_error(tmp_path,
                                                                           monkeypatch):
    """The same failing look when the name holds another locker's lock (our link failed):
    that lock is never moved."""
    from qpopper.spool.dotlock import DotLock, LockFile, lock_content
    lock_path = str(tmp_path / "alice.lock")
    with open(lock_path, "wb") as other:
        other.write(lock_content(pid=4242, host="elsewhere.example"))
    before = LockFile.at(lock_path)
    _lstat_fails(monkeypatch, tmp_path, lock_path)
    assert not DotLock(lock_path, nfs_safe=True).try_acquire()
    monkeypatch.undo()
    assert LockFile.at(lock_path) == before and _unique_files(tmp_path) == []


def _close_fails_for(monkeypatch, name: str) -> None:
    """os.close of a file open at `name` closes it and then answers EIO, as an NFS client
    reports there a write its server refused (a quota, a full disk) after the data was
    cached."""
    real_close = os.close

    def close(fd):
        try:
            opened = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            opened = None
        real_close(fd)
        if opened == name:
            raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(os, "close", close)


def test_a_unique_file_that_cannot_be_written_is_not_left_behind(tmp_path, monkeypatch):
    """no-atomic-open: the unique file is created and its write fails (EIO from the fsync):
    the error is the caller's, and the `.lk` file goes again, as the O_EXCL lock does,
    instead of one more being left in the spool directory at every login."""
    from qpopper.spool.dotlock import DotLock

    def fsync_fails(fd):
        raise OSError(errno.EIO, "Input/output error")
    lock_path = str(tmp_path / "alice.lock")
    monkeypatch.setattr(os, "fsync", fsync_fails)
    lock = DotLock(lock_path, nfs_safe=True)
    with pytest.raises(OSError) as raised:
        lock.try_acquire()
    monkeypatch.undo()
    assert raised.value.errno == errno.EIO and not lock.held
    assert os.listdir(tmp_path) == []


def test_a_dot_lock_whose_close_fails_is_not_left_behind(tmp_path, monkeypatch):
    """The O_EXCL dot-lock (an NFS spool without no-atomic-open) is written and its close
    reports the write failed: the error is the caller's and the lock goes again, not left
    with this live process's pid for every locker to wait out (nobody would release it)."""
    from qpopper.spool.dotlock import DotLock
    lock_path = str(tmp_path / "alice.lock")
    _close_fails_for(monkeypatch, lock_path)
    lock = DotLock(lock_path)
    with pytest.raises(OSError) as raised:
        lock.try_acquire()
    monkeypatch.undo()
    assert raised.value.errno == errno.EIO and not lock.held
    assert os.listdir(tmp_path) == []
    assert DotLock(lock_path).try_acquire()


def test_a_clock_file_whose_close_fails_reads_no_clock_and_goes(tmp_path, monkeypatch):
    """The file written to read the file system's clock reports at its close that the write
    failed: no clock can be read there (None: the local clock is used), and the file goes,
    rather than the error failing the lock attempt and the file staying."""
    from qpopper.spool.dotlock import file_system_now_ns
    name = str(tmp_path / ".lkclock")
    _close_fails_for(monkeypatch, name)
    assert file_system_now_ns(name) is None
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []
