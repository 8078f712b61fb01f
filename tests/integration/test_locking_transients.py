"""States of a spool or a temporary drop that pass in a moment and must not be refused as
wrong (docs/maildrop.md, "The locking rules"): a spool a delivery agent running as root has
created and not yet given to its owner, and NFS's ESTALE for a file another host removed."""

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
@pytest.mark.parametrize("content", [b"", b"From x Thu Jan  1 00:00:00 1970\n\nmail\n"])
def test_a_spool_that_stays_roots_is_refused_and_only_an_empty_one_is_waited_for(
        tmp_path, monkeypatch, content):
    spool = root_created_spool(tmp_path, content)
    looked = []
    monkeypatch.setattr(locking.os, "geteuid", lambda: USER_UID)
    monkeypatch.setattr(locking.time, "sleep", looked.append)
    with pytest.raises(PopError) as refused:
        spool_lock(spool).acquire(NO_WAIT)
    assert refused.value.code is RespCode.SYS_PERM and "wrong owner" in refused.value.text
    assert len(looked) == (locking.NEW_SPOOL_SETTLE[0] if not content else 0)
    assert os.stat(spool).st_uid == 0 and spool.read_bytes() == content


def stale_once(monkeypatch, call: str, path):
    """os.open of `path` (or the first os.fstat after it) fails once with ESTALE, as on an
    NFS client whose cached file handle another host's unlink made stale."""
    real_open, real_fstat = os.open, os.fstat
    state = {"opened": False, "failed": False}

    def opener(name, flags, mode=0o777):
        if str(name) == str(path) and call == "open" and not state["failed"]:
            state["failed"] = True
            raise OSError(errno.ESTALE, os.strerror(errno.ESTALE), str(name))
        fd = real_open(name, flags, mode)
        state["opened"] = state["opened"] or str(name) == str(path)
        return fd

    def fstat(fd):
        if call == "fstat" and state["opened"] and not state["failed"]:
            state["failed"] = True
            raise OSError(errno.ESTALE, os.strerror(errno.ESTALE))
        return real_fstat(fd)
    monkeypatch.setattr(locking.os, "open", opener)
    monkeypatch.setattr(locking.os, "fstat", fstat)
    return state


@pytest.mark.parametrize("call", ["open", "fstat"])
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


@pytest.mark.parametrize("call", ["open", "fstat"])
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
