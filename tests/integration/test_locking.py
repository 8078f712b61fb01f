"""Dot-lock, spool kernel locks and the session lock (reference L1-L7), including interop with
Debian's dotlockfile (liblockfile-bin) and procmail's lockfile."""

import errno
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from qpopper.pop3.responses import PopError, RespCode
from qpopper.spool.dotlock import (DotLock, LockFile, LockTiming, lock_content,
                                    parse_lock_content)
from qpopper.spool.locking import SessionLock, SpoolLock, Unlinked, open_regular
from tests.helpers.open_races import open_then, replace_with
from tests.helpers.repo import REPO

FAST = LockTiming(attempts=2, step_s=0.3, poll_s=0.02)     # 0.3 s budget
NO_WAIT = LockTiming(attempts=1)

needs_dotlockfile = pytest.mark.skipif(shutil.which("dotlockfile") is None,
                                       reason="dotlockfile (liblockfile-bin) not installed")
needs_procmail_lockfile = pytest.mark.skipif(shutil.which("lockfile") is None,
                                             reason="lockfile (procmail) not installed")


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def age(path, seconds):
    old = time.time() - seconds
    os.utime(path, (old, old))


# --- dot-lock ----------------------------------------------------------------------------------
def test_dotlock_content_mode_and_removal(tmp_path):
    lock = DotLock(str(tmp_path / "alice.lock"))
    assert lock.try_acquire()
    data = (tmp_path / "alice.lock").read_bytes()
    assert data == f"{os.getpid()}@{socket.gethostname()}".encode()
    assert parse_lock_content(data) == (os.getpid(), socket.gethostname())
    assert oct(os.stat(tmp_path / "alice.lock").st_mode & 0o777) == oct(0o644)
    lock.release()
    assert not (tmp_path / "alice.lock").exists()


def test_parse_lock_content_formats():
    assert parse_lock_content(b"1234@host") == (1234, "host")
    assert parse_lock_content(b"1234\n") == (1234, None)         # liblockfile -p
    assert parse_lock_content(b"0\n") == (0, None)               # liblockfile without -p
    assert parse_lock_content(b"") == (0, None)
    assert parse_lock_content(b"garbage") == (0, None)


def test_live_lock_is_busy(tmp_path):
    first = DotLock(str(tmp_path / "a.lock"))
    assert first.try_acquire()
    second = DotLock(str(tmp_path / "a.lock"))
    assert not second.try_acquire()
    assert not second.acquire(FAST)
    first.release()
    assert second.try_acquire()
    second.release()


def test_stale_by_age_is_taken_over(tmp_path):
    path = tmp_path / "a.lock"
    path.write_bytes(b"0\n")            # no pid: only the age counts
    lock = DotLock(str(path), stale_s=300)
    assert not lock.try_acquire()
    age(path, 301)
    logged = []
    lock = DotLock(str(path), stale_s=300, log=lambda p, t: logged.append(t))
    assert lock.try_acquire()
    assert path.read_bytes() == lock_content()
    assert any("stale" in line for line in logged)
    lock.release()


def test_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    path = tmp_path / "a.lock"
    path.write_bytes(lock_content(pid=dead_pid()))
    lock = DotLock(str(path))
    assert lock.try_acquire()
    lock.release()


def test_liblockfile_pid_lock_of_dead_process_is_stale(tmp_path):
    path = tmp_path / "a.lock"
    path.write_bytes(b"%d\n" % dead_pid())
    assert DotLock(str(path)).try_acquire()


def test_dead_pid_on_another_host_waits_for_age(tmp_path):
    path = tmp_path / "a.lock"
    path.write_bytes(lock_content(pid=dead_pid(), host="elsewhere.example"))
    assert not DotLock(str(path)).try_acquire()
    age(path, 400)
    assert DotLock(str(path)).try_acquire()


def test_refresh_touches_the_lock(tmp_path):
    path = tmp_path / "a.lock"
    lock = DotLock(str(path), refresh_s=0)
    assert lock.try_acquire()
    age(path, 200)
    lock.refresh_if_due()
    assert time.time() - os.stat(path).st_mtime < 5
    lock.release()


def test_refresh_by_time_only_when_due(tmp_path):
    path = tmp_path / "a.lock"
    lock = DotLock(str(path), refresh_s=3600)
    assert lock.try_acquire()
    age(path, 200)
    lock.refresh_if_due()
    assert time.time() - os.stat(path).st_mtime > 150
    lock.refresh()
    assert time.time() - os.stat(path).st_mtime < 5
    lock.release()


def test_release_never_removes_someone_elses_lock(tmp_path):
    path = tmp_path / "a.lock"
    lock = DotLock(str(path))
    assert lock.try_acquire()
    os.unlink(path)                       # taken over as stale by someone else...
    path.write_bytes(b"999@other")        # ...who now holds it
    lock.release()
    assert path.read_bytes() == b"999@other"


def test_busy_lock_is_retried_until_released(tmp_path):
    path = tmp_path / "a.lock"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, time
        fd = os.open({str(path)!r}, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        os.write(fd, b"%d@{socket.gethostname()}" % os.getpid()); os.close(fd)
        time.sleep(0.6)
        os.unlink({str(path)!r})
        time.sleep(5)
    """)])
    try:
        deadline = time.monotonic() + 10
        while not path.exists():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        lock = DotLock(str(path))
        began = time.monotonic()
        assert lock.acquire(LockTiming(attempts=3, step_s=1.0, poll_s=0.05))   # 3 s budget
        waited = time.monotonic() - began
        assert 0.3 < waited < 2.5
        lock.release()
    finally:
        holder.kill()
        holder.wait()


def test_busy_lock_gives_up_after_the_budget(tmp_path):
    path = tmp_path / "a.lock"
    path.write_bytes(lock_content())          # ours, alive, fresh
    began = time.monotonic()
    assert not DotLock(str(path)).acquire(LockTiming(attempts=2, step_s=0.4, poll_s=0.05))
    assert 0.35 < time.monotonic() - began < 2


def test_qpopper_wait_budget():
    assert LockTiming.login().budget_s == 5          # 2 attempts, sleep 1*5 s
    assert LockTiming.update().budget_s == 30        # 4 attempts, sleeps 5+10+15 s


def test_nfs_safe_link_lock(tmp_path):
    path = tmp_path / "a.lock"
    lock = DotLock(str(path), nfs_safe=True)
    assert lock.try_acquire()
    assert path.read_bytes() == lock_content()
    assert os.stat(path).st_nlink == 1                # the unique file is gone again
    assert sorted(os.listdir(tmp_path)) == ["a.lock"]
    other = DotLock(str(path), nfs_safe=True)
    assert not other.try_acquire()
    assert sorted(os.listdir(tmp_path)) == ["a.lock"]
    lock.release()
    assert os.listdir(tmp_path) == []


def test_dotlock_never_writes_through_a_symlink(tmp_path):
    target = tmp_path / "elsewhere"
    link = tmp_path / "a.lock"
    os.symlink(target, link)
    assert not DotLock(str(link)).try_acquire()          # a fresh symlink counts as a lock
    assert not target.exists()
    os.utime(link, (0, 0), follow_symlinks=False)         # an old one is stale: replaced
    lock = DotLock(str(link))
    assert lock.try_acquire()
    assert not os.path.islink(link) and link.read_bytes() == lock_content()
    assert not target.exists()
    lock.release()


# --- breaking a stale lock, or releasing ours, never removes a lock that took its name ------------
def _stale_lock(path):
    path.write_bytes(b"4242@crashed-host")
    age(path, 1000)


def _other_host_breaks_it_at(step, other):
    """A step hook: at `step` (after this locker looked at the lock, before it removed it),
    another host breaks the same lock and takes it: an NFS round trip or a preemption there."""
    def hook(name):
        if name == step and not other.held:
            assert other.try_acquire()
    return hook


def _refuse_link(*args, **kwargs):
    raise PermissionError(errno.EPERM, "Operation not permitted")


@pytest.mark.parametrize("nfs_safe", [True, False])
def test_two_hosts_breaking_one_stale_lock_never_both_hold_it(tmp_path, nfs_safe):
    """Host B judged the lock stale; before it removes it, host A removes it and makes its own.
    B must not remove A's lock (unlink by name did, then both held it): it sets the file aside,
    sees it is not the stale one, and puts it back."""
    path = tmp_path / "alice.lock"
    _stale_lock(path)
    a = DotLock(str(path), nfs_safe=nfs_safe)
    a.host = "host-a"
    logged = []
    b = DotLock(str(path), nfs_safe=nfs_safe, log=lambda p, t: logged.append(t),
                step_hook=_other_host_breaks_it_at("dotlock-remove-stale", a))
    b.host = "host-b"
    assert not b.try_acquire()
    assert a.held and a.still_ours() and not b.held
    assert path.read_bytes() == lock_content(host="host-a")
    assert os.listdir(tmp_path) == ["alice.lock"]            # nothing left aside
    assert any("put back" in line for line in logged), logged
    a.release()
    assert os.listdir(tmp_path) == []


def test_a_lock_put_back_without_hard_links_is_renamed_back(tmp_path, monkeypatch):
    """Where link(2) is refused (protected_hardlinks on another user's lock, a file system
    without hard links) the lock set aside goes back by rename, the name being free."""
    monkeypatch.setattr(os, "link", _refuse_link)
    path = tmp_path / "alice.lock"
    _stale_lock(path)
    a = DotLock(str(path))
    b = DotLock(str(path), step_hook=_other_host_breaks_it_at("dotlock-remove-stale", a))
    assert not b.try_acquire()
    assert a.still_ours() and os.listdir(tmp_path) == ["alice.lock"]
    a.release()
    assert os.listdir(tmp_path) == []


def test_a_put_back_without_hard_links_never_replaces_a_lock_made_meanwhile(tmp_path,
                                                                             monkeypatch):
    """Without link(2) the put-back is a rename that does not replace: a lock a third locker
    made at the free name after B's look (os.path.lexists made to miss it, as a look just
    before the lock appears does) keeps its name."""
    monkeypatch.setattr(os, "link", _refuse_link)
    path = tmp_path / "alice.lock"
    _stale_lock(path)
    a, c = DotLock(str(path)), DotLock(str(path))
    c.host = "host-c"

    def hook(name):
        _other_host_breaks_it_at("dotlock-remove-stale", a)(name)
        if name == "dotlock-put-back":
            assert c.try_acquire()
            monkeypatch.setattr(os.path, "lexists", lambda p: False)
    b = DotLock(str(path), step_hook=hook)
    assert not b.try_acquire()
    monkeypatch.undo()
    assert c.still_ours() and path.read_bytes() == lock_content(host="host-c")
    c.release()


def test_a_failure_after_setting_a_lock_aside_gives_it_its_name_back(tmp_path, monkeypatch):
    """An error between the rename aside and the decision (an NFS error reading the file
    there) leaves the live lock at its name, not hidden at the aside name."""
    path = tmp_path / "alice.lock"
    _stale_lock(path)
    a = DotLock(str(path))
    real_at = LockFile.at

    def failing_at(name):                # B's look at the file it set aside, A's lock
        if a.held and os.path.basename(name).startswith(".lk"):
            raise OSError(errno.EIO, "Input/output error")
        return real_at(name)
    b = DotLock(str(path), step_hook=_other_host_breaks_it_at("dotlock-remove-stale", a))
    monkeypatch.setattr(LockFile, "at", staticmethod(failing_at))
    with pytest.raises(OSError):
        b.try_acquire()
    monkeypatch.undo()
    assert a.still_ours() and os.listdir(tmp_path) == ["alice.lock"]
    a.release()


def test_release_never_removes_a_lock_that_replaced_ours_meanwhile(tmp_path):
    """Our lock was broken as stale (we were slow) and another locker made its own while we
    were releasing: our release leaves that one in place."""
    path = tmp_path / "alice.lock"
    logged = []

    def hook(name):
        if name == "dotlock-unlink":
            os.unlink(path)
            path.write_bytes(b"999@other")
    ours = DotLock(str(path), log=lambda p, t: logged.append(t), step_hook=hook)
    assert ours.try_acquire()
    ours.release()
    assert path.read_bytes() == b"999@other" and os.listdir(tmp_path) == ["alice.lock"]
    assert any("put back" in line for line in logged), logged


def test_a_lock_made_while_another_was_set_aside_keeps_the_name(tmp_path):
    """The race this cannot close (docs/maildrop.md, "The locking rules"): while B has A's
    lock aside, a third locker C finds the name free and makes its own. B never replaces C's
    lock; it drops A's and says so in the log (A and C both believe they hold it)."""
    path = tmp_path / "alice.lock"
    _stale_lock(path)
    a = DotLock(str(path), nfs_safe=True)
    a.host = "host-a"
    c = DotLock(str(path), nfs_safe=True)
    c.host = "host-c"
    logged = []

    def hook(name):
        _other_host_breaks_it_at("dotlock-remove-stale", a)(name)
        if name == "dotlock-put-back":
            assert c.try_acquire()
    b = DotLock(str(path), nfs_safe=True, log=lambda p, t: logged.append(t), step_hook=hook)
    assert not b.try_acquire()
    assert c.still_ours() and not a.still_ours() and not b.held
    assert os.listdir(tmp_path) == ["alice.lock"]
    assert any("not put back" in line and "host-c" in line for line in logged), logged
    a.release()                          # not ours any more: left alone
    assert c.still_ours()
    c.release()
    assert os.listdir(tmp_path) == []


# --- spool kernel locks --------------------------------------------------------------------------
PROBE = textwrap.dedent("""
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR)
    out = []
    for name, fn in (("flock", lambda: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)),
                     ("fcntl", lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB))):
        try:
            fn()
            out.append(name + "=free")
        except OSError:
            out.append(name + "=busy")
    print(" ".join(out))
""")


def probe(path) -> str:
    return subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True,
                          text=True, timeout=30).stdout.strip()


def test_spool_lock_takes_dotlock_flock_and_fcntl(tmp_path):
    spool = tmp_path / "alice"
    spool.write_bytes(b"")
    lock = SpoolLock(str(spool), str(spool) + ".lock", create=False, create_mode=0o660)
    lock.acquire(NO_WAIT)
    try:
        assert (tmp_path / "alice.lock").exists()
        assert probe(spool) == "flock=busy fcntl=busy"
    finally:
        lock.release()
    assert probe(spool) == "flock=free fcntl=free"
    assert not (tmp_path / "alice.lock").exists()


def test_spool_lock_waits_for_an_fcntl_holder(tmp_path):
    spool = tmp_path / "alice"
    spool.write_bytes(b"x")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys, time
        fd = os.open({str(spool)!r}, os.O_RDWR)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        print("held", flush=True)
        time.sleep(30)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        lock = SpoolLock(str(spool), str(spool) + ".lock", create=False, create_mode=0o660)
        with pytest.raises(PopError) as info:
            lock.acquire(FAST)
        assert info.value.code is RespCode.SYS_TEMP
        assert not (tmp_path / "alice.lock").exists()     # gave the dot-lock back
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    lock = SpoolLock(str(spool), str(spool) + ".lock", create=False, create_mode=0o660)
    lock.acquire(NO_WAIT)
    lock.release()


def test_spool_lock_creates_the_spool_when_asked(tmp_path):
    spool = tmp_path / "alice"
    lock = SpoolLock(str(spool), str(spool) + ".lock", create=False, create_mode=0o660)
    lock.acquire(NO_WAIT)
    assert lock.fd is None and not spool.exists()
    lock.release()
    lock = SpoolLock(str(spool), str(spool) + ".lock", create=True, create_mode=0o660)
    lock.acquire(NO_WAIT)
    assert lock.fd is not None and lock.created
    lock.release()
    assert oct(os.stat(spool).st_mode & 0o777) == oct(0o660 & ~_umask())


def _appender_creating(spool, data: bytes):
    """A step hook: a delivery agent that takes no dot-lock (a plain fcntl appender) creates
    the spool with its first message just before we would."""
    def hook(step):
        if step == "spool-create" and not os.path.lexists(spool):
            fd = os.open(spool, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.write(fd, data)
            os.close(fd)
    return hook


def test_spool_lock_locks_the_spool_an_appender_created_meanwhile(tmp_path):
    spool = tmp_path / "alice"
    lock = SpoolLock(str(spool), str(spool) + ".lock", create=True, create_mode=0o660,
                     step_hook=_appender_creating(spool, b"first delivery\n"))
    lock.acquire(NO_WAIT)                    # was FileExistsError: -ERR at QUIT
    try:
        assert not lock.created
        assert os.pread(lock.fd, 100, 0) == b"first delivery\n"
        assert probe(spool) == "flock=busy fcntl=busy"
    finally:
        lock.release()


def test_spool_lock_on_a_spool_that_never_settles_says_sys_temp(tmp_path, monkeypatch):
    spool = tmp_path / "alice"
    monkeypatch.setattr(os, "open", _drop_flipping_open(spool, flips=10_000))
    lock = SpoolLock(str(spool), str(spool) + ".lock", create=True, create_mode=0o660)
    before = _open_fds()
    with pytest.raises(PopError) as info:
        lock.acquire(NO_WAIT)
    monkeypatch.undo()
    assert info.value.code is RespCode.SYS_TEMP
    assert info.value.text == "Unable to lock the maildrop; try again later."
    assert _open_fds() == before and not (tmp_path / "alice.lock").exists()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_spool_lock_refuses_symlinked_spool(tmp_path):
    (tmp_path / "real").write_bytes(b"")
    os.symlink(tmp_path / "real", tmp_path / "alice")
    lock = SpoolLock(str(tmp_path / "alice"), str(tmp_path / "alice.lock"), create=True,
                     create_mode=0o660)
    with pytest.raises(OSError):
        lock.acquire(NO_WAIT)
    assert not (tmp_path / "alice.lock").exists()


# --- session lock --------------------------------------------------------------------------------
def test_session_lock_refuses_a_second_session_from_another_process(tmp_path):
    drop = tmp_path / ".alice.pop"
    session = SessionLock(str(drop))
    session.acquire()
    try:
        code = textwrap.dedent(f"""
            from qpopper.spool.locking import SessionLock
            from qpopper.pop3.responses import PopError
            try:
                SessionLock({str(drop)!r}).acquire()
            except PopError as e:
                import sys
                sys.stdout.buffer.write(e.render())
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                             timeout=30, cwd=str(REPO))
        assert out.stdout == (b"-ERR [IN-USE] .alice.pop lock busy!  Is another session "
                              b"active?\r\n")
    finally:
        session.release(unlink=True)
    assert not drop.exists()


def test_session_lock_creates_a_private_drop(tmp_path):
    session = SessionLock(str(tmp_path / ".alice.pop"))
    session.acquire()
    assert session.created
    assert oct(os.stat(tmp_path / ".alice.pop").st_mode & 0o777) == oct(0o600 & ~_umask())
    session.release(unlink=False)
    assert (tmp_path / ".alice.pop").exists()


@pytest.mark.parametrize("problem", ["symlink", "hardlink", "world-readable", "directory"])
def test_session_lock_refuses_unsafe_drops(tmp_path, problem):
    drop = tmp_path / ".alice.pop"
    if problem == "symlink":
        (tmp_path / "target").write_bytes(b"")
        os.symlink(tmp_path / "target", drop)
    elif problem == "hardlink":
        drop.write_bytes(b"")
        os.chmod(drop, 0o600)
        os.link(drop, tmp_path / "other")
    elif problem == "world-readable":
        drop.write_bytes(b"")
        os.chmod(drop, 0o644)
    else:
        drop.mkdir()
    with pytest.raises((PopError, OSError)) as info:
        SessionLock(str(drop)).acquire()
    if isinstance(info.value, PopError):
        assert info.value.code is RespCode.SYS_PERM
        assert "/" not in info.value.text
    else:
        assert problem == "directory"


# --- interop with Debian's lockers -----------------------------------------------------------------
@needs_dotlockfile
def test_dotlockfile_blocks_us_and_we_block_dotlockfile(tmp_path):
    spool = tmp_path / "alice"
    spool.write_bytes(b"")
    lockname = str(spool) + ".lock"
    run = subprocess.run(["dotlockfile", "-l", "-r", "0", "-p", lockname], timeout=30)
    assert run.returncode == 0
    lock = SpoolLock(str(spool), lockname, create=False, create_mode=0o660)
    with pytest.raises(PopError):
        lock.acquire(FAST)                     # pid of a live process (us): never stale
    assert subprocess.run(["dotlockfile", "-u", lockname], timeout=30).returncode == 0
    lock = SpoolLock(str(spool), lockname, create=False, create_mode=0o660)
    lock.acquire(NO_WAIT)
    try:
        busy = subprocess.run(["dotlockfile", "-l", "-r", "0", lockname], timeout=30,
                              capture_output=True)
        assert busy.returncode != 0
    finally:
        lock.release()
    free = subprocess.run(["dotlockfile", "-l", "-r", "0", lockname], timeout=30)
    assert free.returncode == 0
    subprocess.run(["dotlockfile", "-u", lockname], timeout=30, check=True)


@needs_dotlockfile
def test_dotlockfile_takes_over_our_lock_only_when_we_are_gone(tmp_path):
    """liblockfile in pid mode reads the pid at the start of our `pid@host`."""
    lockname = str(tmp_path / "alice.lock")
    with open(lockname, "wb") as f:
        f.write(lock_content())                              # we are alive: busy
    busy = subprocess.run(["dotlockfile", "-p", "-l", "-r", "0", lockname], timeout=30,
                          capture_output=True)
    assert busy.returncode != 0
    with open(lockname, "wb") as f:
        f.write(lock_content(pid=dead_pid()))                # a crashed session: stale
    run = subprocess.run(["dotlockfile", "-p", "-l", "-r", "0", lockname], timeout=30)
    assert run.returncode == 0
    subprocess.run(["dotlockfile", "-u", lockname], timeout=30, check=True)


@needs_procmail_lockfile
def test_procmail_lockfile_blocks_us_and_we_block_it(tmp_path):
    spool = tmp_path / "alice"
    spool.write_bytes(b"")
    lockname = str(spool) + ".lock"
    assert subprocess.run(["lockfile", "-r0", lockname], timeout=30).returncode == 0
    lock = SpoolLock(str(spool), lockname, create=False, create_mode=0o660)
    with pytest.raises(PopError):
        lock.acquire(FAST)
    os.unlink(lockname)                         # procmail's way to unlock: rm -f
    lock = SpoolLock(str(spool), lockname, create=False, create_mode=0o660)
    lock.acquire(NO_WAIT)
    try:
        busy = subprocess.run(["lockfile", "-r0", lockname], timeout=30, capture_output=True)
        assert busy.returncode != 0
    finally:
        lock.release()
    assert subprocess.run(["lockfile", "-r0", lockname], timeout=30).returncode == 0
    os.unlink(lockname)


# --- open_regular: the one safe open behind SpoolLock, SessionLock and the bookkeeping files ------
class Refused(Exception):
    pass


def _refuse(kind, detail):
    return Refused(kind, detail)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_open_regular_accepts_our_plain_file_and_refuses_everything_else(tmp_path):
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    os.chmod(plain, 0o600)
    fd = open_regular(str(plain), os.O_RDWR, owner=os.geteuid(), private=True, refuse=_refuse)
    os.close(fd)

    before = _open_fds()
    os.symlink(plain, tmp_path / "link")
    with pytest.raises(OSError) as info:
        open_regular(str(tmp_path / "link"), os.O_RDWR, refuse=_refuse)
    assert info.value.errno == errno.ELOOP

    os.link(plain, tmp_path / "hard")
    with pytest.raises(Refused) as refused:
        open_regular(str(plain), os.O_RDWR, refuse=_refuse)
    assert refused.value.args[0] == "links"
    os.unlink(tmp_path / "hard")

    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(Refused) as refused:
        open_regular(str(tmp_path / "fifo"), os.O_RDWR | os.O_NONBLOCK, refuse=_refuse)
    assert refused.value.args[0] == "type"

    os.chmod(plain, 0o604)
    with pytest.raises(Refused) as refused:
        open_regular(str(plain), os.O_RDWR, private=True, refuse=_refuse)
    assert refused.value.args[0] == "mode"
    with pytest.raises(Refused) as refused:
        open_regular(str(plain), os.O_RDWR, owner=os.geteuid() + 1, refuse=_refuse)
    assert refused.value.args[0] == "owner"
    assert _open_fds() == before                    # every refused descriptor was closed


def test_open_regular_calls_a_file_unlinked_after_the_open_missing(tmp_path, monkeypatch):
    """The name went away between open(2) and the check (another session released its drop):
    that is a missing file, for the caller to create or report, not a file with bad links."""
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    before = _open_fds()
    monkeypatch.setattr(os, "open", open_then(plain, lambda: os.unlink(plain)))
    with pytest.raises(FileNotFoundError):
        open_regular(str(plain), os.O_RDWR, refuse=_refuse)
    monkeypatch.undo()
    assert _open_fds() == before


# --- the session lock against other sessions releasing theirs ----------------------------------
def _drop_flipping_open(drop, flips: int):
    """os.open as it looks while other sessions keep taking and releasing the drop: for the
    first `flips` opens of it, the drop is gone when we open an existing one, there when we
    create one, and unlinked right after any open that succeeded."""
    real_open, seen = os.open, [0]

    def flipping_open(path, flags, mode=0o777):
        if path != str(drop) or seen[0] >= flips:
            return real_open(path, flags, mode)
        seen[0] += 1
        if flags & os.O_EXCL:
            if not os.path.lexists(path):
                os.close(real_open(path, os.O_CREAT | os.O_WRONLY, 0o600))  # another's drop
        elif os.path.lexists(path):
            fd = real_open(path, flags, mode)
            os.unlink(path)                # ...which it releases before we could check ours
            return fd
        return real_open(path, flags, mode)
    return flipping_open


def test_session_lock_retries_a_drop_that_comes_and_goes(tmp_path, monkeypatch):
    drop = tmp_path / ".alice.pop"
    drop.write_bytes(b"")
    os.chmod(drop, 0o600)
    monkeypatch.setattr(os, "open", _drop_flipping_open(drop, flips=6))
    session = SessionLock(str(drop))
    session.acquire()
    monkeypatch.undo()
    assert os.path.samestat(os.fstat(session.fd), os.stat(drop))   # holds the drop named
    session.release(unlink=True)


def test_session_lock_that_never_settles_says_in_use_not_sys_perm(tmp_path, monkeypatch):
    drop = tmp_path / ".alice.pop"
    monkeypatch.setattr(os, "open", _drop_flipping_open(drop, flips=10_000))
    before = _open_fds()
    with pytest.raises(PopError) as info:
        SessionLock(str(drop)).acquire()
    monkeypatch.undo()
    assert info.value.code is RespCode.IN_USE
    assert info.value.text == "Maildrop being unlocked; try again."
    assert _open_fds() == before


def test_session_locks_of_racing_processes_only_ever_say_in_use(tmp_path):
    """Two processes taking and releasing one drop as fast as they can (the release unlinks
    it, as a session's end does): every refusal is [IN-USE], none [SYS/PERM] or a crash."""
    code = textwrap.dedent(f"""
        import collections, sys
        from qpopper.spool.locking import SessionLock
        from qpopper.pop3.responses import PopError
        seen = collections.Counter()
        for _ in range(3000):
            session = SessionLock({str(tmp_path / ".alice.pop")!r})
            try:
                session.acquire()
            except PopError as e:
                seen[e.code.name] += 1
                continue
            session.release(unlink=True)
            seen["ok"] += 1
        print(dict(seen))
    """)
    racers = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, cwd=str(REPO)) for _ in range(2)]
    for racer in racers:
        out, err = racer.communicate(timeout=120)
        assert racer.returncode == 0, err.decode()[-2000:]
        seen = eval(out)
        assert set(seen) <= {"ok", "IN_USE"} and seen["ok"] > 0, seen


def test_session_lock_in_a_missing_directory_is_not_in_use(tmp_path):
    """No directory for the drop is a fault to report (Maildrop makes it [SYS/TEMP] with the
    error in the log), not a drop that keeps changing: one create tried, the error raised."""
    steps = []
    session = SessionLock(str(tmp_path / "no-such-dir" / ".alice.pop"), step_hook=steps.append)
    with pytest.raises(FileNotFoundError) as info:
        session.acquire()
    assert not isinstance(info.value, Unlinked) and steps == ["temp-drop-create"]


@pytest.mark.parametrize("create", [False, True])
def test_spool_lock_opens_again_a_spool_replaced_as_it_opened_it(tmp_path, monkeypatch, create):
    """A writer that ignores the dot-lock renames a new spool over the one we just opened: we
    lock and keep the new one, never 'no spool', [SYS/PERM] or a raw error."""
    spool = tmp_path / "alice"
    spool.write_bytes(b"old\n")
    opener = open_then(spool, replace_with(spool, b"new\n"))
    monkeypatch.setattr(os, "open", opener)
    lock = SpoolLock(str(spool), str(spool) + ".lock", create=create, create_mode=0o660)
    lock.acquire(NO_WAIT)
    monkeypatch.undo()
    try:
        assert opener.done and lock.fd is not None
        assert os.path.samestat(os.fstat(lock.fd), os.stat(spool))
        assert os.pread(lock.fd, 10, 0) == b"new\n"
    finally:
        lock.release()
