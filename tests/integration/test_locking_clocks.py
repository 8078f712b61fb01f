"""A dot-lock's age when this host's clock disagrees with the file system's (docs/scale-out.md,
"Locks across hosts"): a lock's mtime is set by the clock of the host that holds the file
system (the NFS server), so with no-atomic-open its age is measured against the mtime of the
unique file this attempt has just written there, not against the local clock. The host's
clock is moved here (the module's time.time); the file system's mtimes stay true."""

from __future__ import annotations

import os
import time

import pytest

from qpopper.spool import dotlock
from qpopper.spool.dotlock import DotLock, lock_content

SKEW_S = 400
"""More than the stale age (limits.DOTLOCK_STALE_S, 300 s)."""

ANOTHER_HOSTS = lock_content(pid=4242, host="elsewhere.example")
TRUE_TIME = time.time
"""The clock the file system's mtimes keep (the host's one is moved by the tests)."""


def host_clock_off_by(monkeypatch, seconds: float) -> None:
    monkeypatch.setattr(dotlock.time, "time", lambda: TRUE_TIME() + seconds)


def another_hosts_lock(path, age_s: float = 0):
    path.write_bytes(ANOTHER_HOSTS)
    if age_s:
        then = TRUE_TIME() - age_s
        os.utime(path, (then, then))


def unique_files(directory) -> list[str]:
    return [name for name in os.listdir(directory) if name.startswith(".lk")]


def test_a_clock_ahead_of_the_file_systems_never_takes_a_live_lock_for_stale(tmp_path,
                                                                             monkeypatch):
    """Another host's lock refreshed just now is live, whatever this host's clock says: with
    the local clock 400 s ahead it looked 400 s old, was removed as stale, and two writers
    held the mailbox."""
    path = tmp_path / "alice.lock"
    another_hosts_lock(path)
    host_clock_off_by(monkeypatch, SKEW_S)
    lock = DotLock(str(path), nfs_safe=True, stale_s=300)
    assert not lock.try_acquire() and not lock.held
    assert path.read_bytes() == ANOTHER_HOSTS and unique_files(tmp_path) == []


@pytest.mark.parametrize("skew_s", [SKEW_S, -SKEW_S, 0])
def test_a_lock_stale_by_the_file_systems_clock_is_stale_whatever_the_hosts_clock(
        tmp_path, monkeypatch, skew_s):
    """A lock 301 s old by the file system's clock is stale at once, also from a host whose
    clock lags behind (by the local clock it would look 99 s *younger* than new and be
    waited for until the lag had passed too)."""
    path = tmp_path / "alice.lock"
    another_hosts_lock(path, age_s=301)
    host_clock_off_by(monkeypatch, skew_s)
    logged = []
    lock = DotLock(str(path), nfs_safe=True, stale_s=300,
                   log=lambda priority, text: logged.append(text))
    assert lock.try_acquire() and lock.still_ours()
    assert any("older than 300 s" in line for line in logged)
    lock.release()
    assert not os.path.lexists(path) and unique_files(tmp_path) == []


def test_a_lock_younger_than_the_stale_age_by_the_file_systems_clock_is_waited_for(
        tmp_path, monkeypatch):
    """A lock 200 s old by the file system's clock, seen from a host 400 s ahead of it: still
    live."""
    path = tmp_path / "alice.lock"
    another_hosts_lock(path, age_s=200)
    host_clock_off_by(monkeypatch, SKEW_S)
    assert not DotLock(str(path), nfs_safe=True, stale_s=300).try_acquire()
    assert path.read_bytes() == ANOTHER_HOSTS


def nfs_directory(monkeypatch) -> None:
    """The lock's directory is taken for an NFS mount (mounts.directory_on_nfs)."""
    monkeypatch.setattr(dotlock.mounts, "directory_on_nfs", lambda path: True)


def test_without_no_atomic_open_on_nfs_a_fresh_file_reads_the_file_systems_clock(
        tmp_path, monkeypatch):
    """no-atomic-open forgotten on an NFS spool (the O_EXCL dot-lock writes no unique file):
    a lock the local clock finds stale is measured again against a file written for the
    purpose, and removed only if the file system's clock finds it stale too."""
    path = tmp_path / "alice.lock"
    another_hosts_lock(path)
    nfs_directory(monkeypatch)
    host_clock_off_by(monkeypatch, SKEW_S)
    assert not DotLock(str(path), stale_s=300).try_acquire()
    assert path.read_bytes() == ANOTHER_HOSTS and unique_files(tmp_path) == []
    another_hosts_lock(path, age_s=301)
    lock = DotLock(str(path), stale_s=300)
    assert lock.try_acquire() and lock.still_ours()
    lock.release()
    assert os.listdir(tmp_path) == []


def test_on_a_local_disk_the_local_clock_is_the_file_systems(tmp_path, monkeypatch):
    """The O_EXCL dot-lock on a local disk writes nothing to tell the age: the kernel's clock
    is the one that set the mtime."""
    path = tmp_path / "alice.lock"
    another_hosts_lock(path, age_s=301)
    monkeypatch.setattr(dotlock, "file_system_now_ns", None)     # never called
    assert DotLock(str(path), stale_s=300).try_acquire()
