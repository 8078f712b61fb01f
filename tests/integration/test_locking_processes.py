"""The NFS-safe dot-lock (no-atomic-open: a unique file, link(2), the link count decides) across
processes: real forked processes and real delivery agents' tools competing for one lock
(docs/scale-out.md, "Locks across hosts"). tests/test_locking.py covers one process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from qpopper.spool.dotlock import DotLock, LockTiming

pytestmark = pytest.mark.timeout(120)

WORKERS = 6
ROUNDS = 150


def _worker(lock_path: str, counter: str, inside: str, rounds: int) -> int:
    """Take the lock `rounds` times; under it, prove nobody else is inside (an O_EXCL
    marker) and increment a counter by read-modify-write (lost updates if two hold it)."""
    for _ in range(rounds):
        lock = DotLock(lock_path, nfs_safe=True)
        if not lock.acquire(LockTiming(attempts=400, step_s=0.05, poll_s=0.001)):
            return 2
        try:
            marker = os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return 3                        # two holders at once
        try:
            with open(counter, "r+") as f:
                value = int(f.read() or 0)
                f.seek(0)
                f.write(str(value + 1))
                f.truncate()
        finally:
            os.close(marker)
            os.unlink(inside)
            lock.release()
    return 0


def _fork(target, *args) -> int:
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            status = target(*args)
        finally:
            os._exit(status)
    return pid


def test_processes_take_the_link_lock_one_at_a_time(tmp_path):
    lock_path, counter, inside = (str(tmp_path / n) for n in ("user.lock", "count", "inside"))
    with open(counter, "w") as f:
        f.write("0")
    pids = [_fork(_worker, lock_path, counter, inside, ROUNDS) for _ in range(WORKERS)]
    statuses = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    assert statuses == [0] * WORKERS, "2: lock never free, 3: two holders at once"
    with open(counter) as f:
        assert int(f.read()) == WORKERS * ROUNDS
    assert sorted(os.listdir(tmp_path)) == ["count"]      # no lock, no unique file left


def test_the_lock_of_a_killed_process_is_taken_over_by_another(tmp_path):
    lock_path = str(tmp_path / "user.lock")
    ready_r, ready_w = os.pipe()

    def hold() -> int:
        lock = DotLock(lock_path, nfs_safe=True)
        assert lock.try_acquire()
        os.write(ready_w, b"x")
        time.sleep(60)
        return 0

    pid = _fork(hold)
    assert os.read(ready_r, 1) == b"x"
    try:
        assert not DotLock(lock_path, nfs_safe=True).try_acquire()   # held: busy
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    ours = DotLock(lock_path, nfs_safe=True)
    assert ours.try_acquire()          # our host, a pid that is gone: stale
    ours.release()


@pytest.mark.skipif(shutil.which("dotlockfile") is None, reason="needs liblockfile-bin")
def test_link_lock_and_dotlockfile_exclude_each_other(tmp_path):
    lock_path = str(tmp_path / "user.lock")
    ours = DotLock(lock_path, nfs_safe=True)
    assert ours.try_acquire()
    # dotlockfile -p, in its own process, sees our live pid and gives up (-r 0: no retry)
    assert subprocess.run(["dotlockfile", "-p", "-r", "0", "-l", lock_path],
                          timeout=30).returncode != 0
    ours.release()
    # dotlockfile -p writes its parent's pid: a shell that is gone right after
    assert subprocess.run(["sh", "-c", 'dotlockfile -p -r 0 -l "$0"', lock_path],
                          timeout=30).returncode == 0
    # a lock with only a pid, of no running process: under no-atomic-open that pid may be
    # another host's, so only the lock's age frees it; on a local spool it is stale
    assert not DotLock(lock_path, nfs_safe=True).try_acquire()
    assert DotLock(lock_path, nfs_safe=False).try_acquire()


def _kernel_locks_of_another_process(path: str) -> tuple[bool, bool]:
    """(flock, fcntl) as another process gets them on `path` right now, non-blocking."""
    probe = ("import fcntl, os, sys\n"
             "fd = os.open(sys.argv[1], os.O_RDWR)\n"
             "def got(take):\n"
             "    try:\n"
             "        take()\n"
             "        return '1'\n"
             "    except OSError:\n"
             "        return '0'\n"
             "print(got(lambda: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)) +\n"
             "      got(lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)))\n")
    out = subprocess.run([sys.executable, "-c", probe, path], capture_output=True, text=True,
                         timeout=30, check=True).stdout.strip()
    return out[0] == "1", out[1] == "1"


@pytest.mark.parametrize("nfs_safe, mount, expected", [
    (False, "real", (False, False)), (True, "real", (False, False)),
    (True, "nfs4", (True, False)), (True, "nfs", (True, False)), (True, "cifs", (True, False)),
    (True, None, (True, False)),
    (False, "nfs4", (True, False)), (False, "nfs", (True, False)),
    (False, "cifs", (False, False)), (False, None, (False, False))])
def test_the_spool_lock_on_nfs_or_under_no_atomic_open_off_a_local_disk_is_fcntl_alone(
        tmp_path, monkeypatch, nfs_safe, mount, expected):
    """On NFS flock is an fcntl lock: one process taking both would refuse itself. So with
    no-atomic-open on NFS, another network file system or one that cannot be told (None),
    the fcntl lock alone; on a local disk ("real": the test directory's) both, as without
    the option, so flock-only delivery agents are excluded too. On NFS the fcntl lock alone
    without the option as well (forgotten, or the spool moved there): both would make every
    login wait out the lock budget and fail; elsewhere without the option both, as before.
    (The test machine has no NFS client: another file system is the mount table's answer,
    set.)"""
    from qpopper.spool import mounts
    if mount != "real":
        _as_if_type(monkeypatch, mount)
    else:
        fd = os.open(tmp_path, os.O_RDONLY)
        try:
            assert mounts.fs_type_of(fd) in mounts.LOCAL_DISK_TYPES
        finally:
            os.close(fd)
    spool = str(tmp_path / "user")
    assert _kernel_locks_beside_the_spool_lock(spool, nfs_safe) == expected
    assert _kernel_locks_of_another_process(spool) == (True, True)


def _as_if_type(monkeypatch, kind: str | None) -> None:
    """The mount table as if every open file were on a mount of type `kind` (None: a type
    that cannot be told), its options without local_lock=; set where the spool lock and the
    dot-lock read it, once per question (mounts._fields_of)."""
    from qpopper.spool import mounts
    monkeypatch.setattr(mounts, "_fields_of",
                        lambda fd: [kind, "filer:/mail", "rw,vers=4.2"] if kind else [])


def _kernel_locks_beside_the_spool_lock(spool: str, nfs_safe: bool) -> tuple[bool, bool]:
    """What another process gets (flock, fcntl) while our SpoolLock holds `spool`."""
    from qpopper.spool.locking import SpoolLock
    lock = SpoolLock(spool, spool + ".lock", create=True, create_mode=0o600, nfs_safe=nfs_safe)
    lock.acquire(LockTiming(attempts=1))
    try:
        return _kernel_locks_of_another_process(spool)
    finally:
        lock.release()


MOUNTINFO = """\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
40 22 0:53 / /srv/mail rw,relatime shared:20 master:3 - nfs4 filer:/mail rw,vers=4.2
41 22 0:54 / /mnt/with\\040-\\040space rw - tmpfs tmpfs rw
42 22 0:55 / /mnt/odd rw shared:9 - fuse.sshfs host:/x rw
"""


@pytest.mark.parametrize("mount, expected", [
    ("22", "ext4"), ("40", "nfs4"), ("41", "tmpfs"), ("42", "fuse.sshfs"), ("99", None),
    ("0:53", None)])
def test_the_file_system_type_is_the_open_files_mounts_in_the_mount_table(mount, expected):
    from qpopper.spool import mounts
    assert mounts.fs_type(mount, MOUNTINFO) == expected
    assert mounts.mount_id(f"pos:\t0\nflags:\t0100002\nmnt_id:\t{mount}\nino:\t5\n") == mount


def test_the_real_tables_know_the_test_directorys_file_system(tmp_path):
    from qpopper.spool import mounts
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        assert mounts.fs_type_of(fd) not in (None, "")
    finally:
        os.close(fd)


@pytest.mark.parametrize("nfs_safe", [False, True])
def test_a_pid_only_lock_on_nfs_is_judged_by_its_age_without_no_atomic_open_too(
        tmp_path, monkeypatch, nfs_safe):
    """`dotlockfile -p` writes a pid and no host: on a spool shared over NFS that pid may run
    on another host, live, so its absence here proves nothing, option set or not (without it
    such a lock was broken at once, and the delivery writing under it raced our copy). (The
    mount table's answer is set: the test machine has no NFS client.)"""
    _as_if_type(monkeypatch, "nfs4")
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    lock_path = tmp_path / "alice.lock"
    lock_path.write_bytes(b"%d\n" % finished.pid)
    assert not DotLock(str(lock_path), nfs_safe=nfs_safe).try_acquire()
    old = time.time() - 400
    os.utime(lock_path, (old, old))
    lock = DotLock(str(lock_path), nfs_safe=nfs_safe)
    assert lock.try_acquire()
    lock.release()


def _as_if_nfs(monkeypatch, directory, super_options: str) -> list[str]:
    """The mount table as if `directory`'s mount were NFS with `super_options` (mountinfo's
    last field, where the kernel shows `local_lock=`); the rest of the table is the real
    one. (The test machine has no NFS client.) Returns the list each reading of the table
    is added to."""
    from qpopper.spool import mounts
    real_read = mounts._read
    fd = os.open(directory, os.O_RDONLY)
    try:
        mount = mounts.mount_id(real_read(f"/proc/self/fdinfo/{fd}") or "")
    finally:
        os.close(fd)
    assert mount is not None
    reads: list[str] = []

    def read(path):
        text = real_read(path)
        if path != "/proc/self/mountinfo" or text is None:
            return text
        reads.append(path)
        lines = []
        for line in text.splitlines():
            fields = line.split(" ")
            if fields[0] == mount:
                line = " ".join(fields[:fields.index("-", 3) + 1]
                                + ["nfs", "filer:/var/mail", super_options])
            lines.append(line)
        return "\n".join(lines) + "\n"
    monkeypatch.setattr(mounts, "_read", read)
    return reads


@pytest.mark.parametrize("local_lock", ["all", "flock"])
def test_on_nfs_with_local_flock_the_spool_lock_still_takes_flock(tmp_path, monkeypatch,
                                                                    local_lock):
    """nfs(5): with local_lock=flock (or all, which `nolock` sets) the client keeps flock
    locks to itself; only with local_lock=none does it send them to the server as fcntl
    locks of another owner, which refuse the process's own fcntl lock. The kernel shows the
    choice in the mount's options (fs/nfs/super.c, nfs_show_mount_options)."""
    from qpopper.spool import mounts
    _as_if_nfs(monkeypatch, tmp_path,
               f"rw,vers=3,rsize=1048576,wsize=1048576,hard,proto=tcp,local_lock={local_lock}")
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        assert mounts.fs_type_of(fd) == "nfs"
    finally:
        os.close(fd)
    # the same host's flock-only delivery agent must be refused, as on a local disk
    assert _kernel_locks_beside_the_spool_lock(str(tmp_path / "user"), False) == (False, False)


@pytest.mark.parametrize("local_lock, flock_too", [("none", False), ("flock", True)])
def test_the_spool_lock_reads_the_mount_table_once_per_lock(tmp_path, monkeypatch, local_lock,
                                                            flock_too):
    """On NFS the spool lock needs the mount's type and its local_lock=, both from one line
    of /proc/self/mountinfo: one reading of the table per lock, afresh at each lock (a
    mount's id passes to the next mount once it is gone: mounts._fields_of)."""
    from qpopper.spool import mounts
    from qpopper.spool.locking import SpoolLock
    reads = _as_if_nfs(monkeypatch, tmp_path, f"rw,vers=3,hard,proto=tcp,local_lock={local_lock}")
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        assert mounts.flock_beside_fcntl(fd, network_safe=False) is flock_too
        assert len(reads) == 1
    finally:
        os.close(fd)
    spool = str(tmp_path / "user")
    for round_ in (2, 3):
        lock = SpoolLock(spool, spool + ".lock", create=True, create_mode=0o600)
        lock.acquire(LockTiming(attempts=1))
        try:
            assert len(reads) == round_
            assert _kernel_locks_of_another_process(spool) == (not flock_too, False)
        finally:
            lock.release()
