"""Shared machinery of the maildrop and server-mode fault and concurrency tests: messages, a
delivery agent (in-process, after a crash, and a concurrent process), sessions run in a fork()ed
process that can be SIGKILLed at a chosen step, and the "every surviving message exactly once"
checks. One copy, so both modes are held to the same standard.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from typing import Callable, Iterator

import pytest

from qpopper.config import Config
from tests.helpers.forked import forked
from tests.helpers.messages import from_line, message, mmdf  # noqa: F401 (re-exported)
from qpopper.spool.locking import LockTiming, SpoolLock
from qpopper.spool.maildrop import Maildrop
from qpopper.spool.paths import SpoolPaths

USER = "alice"
LOCK_STEP_S = 0.05
MESSAGE_ID = re.compile(rb"^Message-Id: <([^>]+)>\r?$", re.M | re.I)


# --- messages (the builders are tests/helpers/messages.py) ----------------------------------------
def old_message(n: int) -> bytes:
    return (b"From old@example.org Wed Dec  2 05:53:22 1992\nSubject: old %d\n"
            b"Message-Id: <old-%d@example.org>\n\nold body %d\n\n" % (n, n, n))


AFTER_CRASH = (b"From late@example.org Thu Nov 26 10:00:00 2026\nSubject: after crash\n"
               b"Message-Id: <late@example.org>\n\ndelivered while the session was dead\n\n")
AFTER_CRASH_MMDF = (b"\x01\x01\x01\x01\nSubject: after crash\n\ndelivered while the session "
                    b"was dead\n\x01\x01\x01\x01\n")


# --- delivery agents -----------------------------------------------------------------------------
def deliver(cfg, data: bytes) -> None:
    """A delivery agent's append: dot-lock + flock + fcntl, write at the end, fsync."""
    paths = SpoolPaths.for_user(cfg, USER, None)
    lock = SpoolLock(paths.spool, paths.lock, create=True, create_mode=0o660)
    lock.acquire(LockTiming(attempts=40, step_s=LOCK_STEP_S))
    try:
        os.lseek(lock.fd, 0, os.SEEK_END)
        os.write(lock.fd, data)
        os.fsync(lock.fd)
    finally:
        lock.release()


def deliver_after_crash(spool_dir, data: bytes) -> None:
    """A delivery agent arriving after the crash: our dot-lock names a dead pid, so it takes
    the lock over (dotlockfile -p does, like liblockfile) and appends - while the spool may be
    half rewritten. Recovery must find where our bytes end and keep this message once."""
    cfg = Config.defaults().replace(spool_dir=str(spool_dir))
    paths = SpoolPaths.for_user(cfg, USER, None)
    if shutil.which("dotlockfile"):
        subprocess.run(["dotlockfile", "-p", "-l", "-r", "0", paths.lock], check=True,
                       timeout=30, stderr=subprocess.DEVNULL)
        try:
            fd = os.open(paths.spool, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o660)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX)
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            subprocess.run(["dotlockfile", "-u", paths.lock], check=True, timeout=30)
    else:
        deliver(cfg, data)


DELIVERER = textwrap.dedent("""
    import fcntl, os, random, socket, subprocess, sys, time
    spool, count, use_binary, seed = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])
    rng = random.Random(seed)
    lock = spool + ".lock"

    def dotlock():
        while True:
            if use_binary:
                if subprocess.run(["dotlockfile", "-p", "-l", "-r", "0", lock],
                                  stderr=subprocess.DEVNULL).returncode == 0:
                    return
            else:
                try:
                    fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                    os.write(fd, b"%d@%s" % (os.getpid(), socket.gethostname().encode()))
                    os.close(fd)
                    return
                except FileExistsError:
                    pass
            time.sleep(0.005)

    def unlock():
        if use_binary:
            subprocess.run(["dotlockfile", "-u", lock], check=True)
        else:
            os.unlink(lock)

    waits = []
    for n in range(count):
        time.sleep(rng.uniform(0, 0.08))
        began = time.monotonic()
        dotlock()
        fd = os.open(spool, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o660)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        waits.append(time.monotonic() - began)
        stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime())
        os.write(fd, (f"From deliverer@example.org {stamp}\\n"
                      f"Subject: delivery {n}\\nMessage-Id: <delivered-{n}@example.org>\\n\\n"
                      f"body of delivery {n}\\n" + "x" * rng.randrange(0, 3000) + "\\n\\n").encode())
        os.fsync(fd)
        os.close(fd)
        unlock()
    print(max(waits), flush=True)
""")
"""A delivery agent process: appends `count` messages (Message-Id <delivered-N@example.org>) at
random moments with the standard dot-lock protocol plus fcntl; prints its longest lock wait."""


@contextlib.contextmanager
def concurrent_deliverer(spool: str, count: int, locker: str, seed: int
                         ) -> Iterator[subprocess.Popen]:
    """Run DELIVERER on spool ("dotlockfile" or "o_excl" locking); killed if still running
    when the block ends, so a failing test leaves no process behind."""
    deliverer = subprocess.Popen([sys.executable, "-c", DELIVERER, spool, str(count),
                                  "1" if locker == "dotlockfile" else "0", str(seed)],
                                 stdout=subprocess.PIPE, text=True)
    try:
        yield deliverer
    finally:
        if deliverer.poll() is None:
            deliverer.kill()
            deliverer.wait()
        if deliverer.stdout:
            deliverer.stdout.close()


def deliver_under_dotlockfile(paths: SpoolPaths, data: bytes) -> None:
    """Take the dot-lock with dotlockfile without waiting (-r 0: it must be free), append,
    unlock: what a delivery agent does while a session is open."""
    run = subprocess.run(["dotlockfile", "-l", "-r", "0", paths.lock], timeout=30)
    assert run.returncode == 0
    with open(paths.spool, "ab") as f:
        f.write(data)
    subprocess.run(["dotlockfile", "-u", paths.lock], timeout=30, check=True)


# --- what a session sees -------------------------------------------------------------------------
def drive_session(drop: Maildrop, scenario: str, deleted, retrieved, deliver_new_mail=None) -> None:
    """One session as the protocol drives it after open: RETR `retrieved`, let new mail arrive
    (`deliver_new_mail()`), then QUIT ("update"), abort ("restore"), or a "crash" after open
    (the drop just closes and keeps the mail)."""
    for i in sorted(retrieved):
        drop.send(i, lambda data: None)
    if deliver_new_mail is not None:
        deliver_new_mail()
    if scenario == "update":
        drop.update(set(deleted), set(retrieved))
    elif scenario == "restore":
        drop.restore()
    else:
        drop.close()


def message_ids(drop: Maildrop) -> list[str]:
    ids = []
    for i in range(len(drop.messages)):
        parts = []
        drop.send(i, parts.append, body_lines=0)
        found = MESSAGE_ID.search(b"".join(parts))
        assert found, b"".join(parts)[:200]
        ids.append(found.group(1).decode())
    return ids


def assert_each_message_once_and_none_deleted(ids: list[str], deleted: set[str]) -> None:
    """What one session sees while mail is delivered: no message twice, none that a committed
    update deleted."""
    assert len(ids) == len(set(ids)), "a message appeared twice"
    assert not set(ids) & deleted, "a deleted message came back"


def assert_each_survivor_once(cfg, paths: SpoolPaths, old_messages: int, delivered: int,
                              deleted: set[str]) -> None:
    """The next session finds exactly the old messages and the delivered ones that no
    committed update deleted, each once."""
    drop = Maildrop.open(cfg, paths, USER)
    final = message_ids(drop)
    drop.close()
    expected = ({f"old-{n}@example.org" for n in range(old_messages)}
                | {f"delivered-{n}@example.org" for n in range(delivered)}) - deleted
    assert len(final) == len(set(final)), "duplicated messages"
    assert set(final) == expected


def next_session_view(cfg, spool_dir, hook=None):
    """The next session, as a client sees it: [(uid, RETR bytes)] (it then ends without
    update, leaving the mail in the drop - like a crash, which the design must survive), and
    the journal/image/temp/lock files left in spool_dir afterwards."""
    paths = SpoolPaths.for_user(cfg, USER, None)
    drop = Maildrop.open(cfg, paths, USER, step_hook=hook, lock_step_s=LOCK_STEP_S)
    out = []
    for i, msg in enumerate(drop.messages):
        parts = []
        drop.send(i, parts.append)
        out.append((msg.uid, b"".join(parts)))
    drop.close()
    leftovers = sorted(name for _, _, names in os.walk(spool_dir) for name in names
                       if name.endswith((".journal", ".new", ".tmp", ".lock")))
    return out, leftovers


STAT_EXTRA_FIELDS = ("st_atime", "st_mtime", "st_ctime", "st_atime_ns", "st_mtime_ns",
                     "st_ctime_ns", "st_blksize", "st_blocks", "st_rdev")


@contextlib.contextmanager
def another_host(shift: int = 1):
    """This process as another host of an NFS spool: the client numbers its mounts itself,
    so every file it stats has another st_dev, same st_ino (os.stat, lstat and fstat
    patched)."""
    def shifted(call):
        def stat(*args, **kwargs):
            st = call(*args, **kwargs)
            fields = list(st)
            fields[2] += shift                    # st_dev
            return os.stat_result(fields, {name: getattr(st, name) for name in STAT_EXTRA_FIELDS})
        return stat
    saved = os.stat, os.lstat, os.fstat
    os.stat, os.lstat, os.fstat = (shifted(call) for call in saved)
    try:
        yield
    finally:
        os.stat, os.lstat, os.fstat = saved


def allowed_after_kill(step: str, scenario: str, untouched, before, committed) -> list:
    """What the next session may see after a kill at `step` of `scenario`: the spool as it
    was (a kill during open: mail delivered during the session comes only after open), every
    message as before the update (restore), or either side of the update - never a mix."""
    if step.startswith("open:"):
        return [untouched]
    if scenario == "restore":
        return [before]
    return [before, committed]


# --- sessions in a process that can be killed ----------------------------------------------------
def in_child(fn, result_path=None, *, expect_kill: bool) -> object:
    """Run fn() in a fork()ed process; return what it pickled to `result_path`, or None when
    killed. An exception in the child comes back through a pipe (nothing is written beside
    a result file, or anywhere when there is none) and fails the parent's assertion."""
    error_read, error_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        os.close(error_read)
        try:
            value = fn()
            if result_path is not None:
                with open(result_path, "wb") as f:
                    pickle.dump(value, f)
        except BaseException as exc:           # the parent reports it
            code = 3
            os.write(error_write, repr(exc).encode("utf-8", "replace")[:60000])
        finally:
            os._exit(code)
    os.close(error_write)
    with open(error_read, "rb") as errors:
        error = errors.read().decode("utf-8", "replace")
    _, status = os.waitpid(pid, 0)
    if expect_kill:
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
            f"child did not die at the step: status {status:#x} {error}")
        return None
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (
        f"child failed: status {status:#x} {error}")
    if result_path is None:
        return None
    with open(result_path, "rb") as f:
        return pickle.load(f)


def killer_at(k: int):
    """A step hook that SIGKILLs its own process at the k-th step (0-based)."""
    count = [0]

    def hook(name: str) -> None:
        if count[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)
        count[0] += 1
    return hook


def killer_at_step(step: str, nth: int = 1):
    """A step hook that SIGKILLs its own process at the nth step named `step`."""
    count = [0]

    def hook(name: str) -> None:
        if name == step:
            count[0] += 1
            if count[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
    return hook


def dies_in_child(run: Callable[[], object]) -> bool:
    """Run `run()` in a forked child; True when the child died of a signal (a real crash,
    e.g. from killer_at_step), False when it came back or raised."""
    _, status = os.waitpid(forked(run), 0)
    return os.WIFSIGNALED(status)


def retr(drop: Maildrop, i: int) -> bytes:
    """Message i as RETR sends it."""
    parts = []
    drop.send(i, parts.append)
    return b"".join(parts)


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def spool_in(spool_dir, user: str, content: bytes, **options) -> tuple[Config, SpoolPaths]:
    """The options with spool_dir `spool_dir`, and `user`'s spool there holding `content`."""
    cfg = Config.defaults().replace(spool_dir=str(spool_dir), **options)
    paths = SpoolPaths.for_user(cfg, user, None)
    with open(paths.spool, "wb") as f:
        f.write(content)
    os.chmod(paths.spool, 0o660)
    return cfg, paths


def append(path, data: bytes) -> None:
    """A delivery agent's append (no lock: the tests' sessions hold none while it runs)."""
    with open(path, "ab") as f:
        f.write(data)


# --- a file system that runs out of room for real ------------------------------------------------
@contextlib.contextmanager
def small_tmpfs(mnt) -> Iterator:
    """Mount a 1 MiB tmpfs on the new directory mnt (root only; skips otherwise), unmounted
    when the block ends."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs")
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                      capture_output=True, timeout=30).returncode != 0:
        pytest.skip("cannot mount tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], timeout=30)


def fill_up(directory) -> str:
    """Write a file `filler` in directory until the file system is full; return its path."""
    filler = os.path.join(directory, "filler")
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


# --- a spool replaced after a crash by a file with the same inode number -------------------------
REPLACEMENT = (b"".join(message(n) for n in (300, 301)))
"""Mail of a spool that replaced ours after a crash (Message-Ids <300@...>, <301@...>)."""


def replace_spool_keeping_inode_number(spool_dir, data: bytes, how: str) -> bool:
    """After a crash, put a spool holding only `data` where ours was, with OUR inode number -
    so (st_dev, st_ino) cannot tell them apart. "rewrite": truncate and rewrite the file in
    place. "recreate": delete it and create files in the same directory until one gets the
    freed number (ext4 and tmpfs usually hand it out at once), which is renamed to the spool.
    False when no file got the number (the caller skips)."""
    cfg = Config.defaults().replace(spool_dir=str(spool_dir))
    spool = SpoolPaths.for_user(cfg, USER, None).spool
    old = os.stat(spool)
    if how == "rewrite":
        fd = os.open(spool, os.O_WRONLY | os.O_TRUNC)
    else:
        os.unlink(spool)
        fd, candidates = None, []
        try:
            for n in range(64):
                name = f"{spool}.candidate{n}"
                candidate = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o660)
                if os.fstat(candidate).st_ino == old.st_ino:
                    os.rename(name, spool)
                    fd = candidate
                    break
                candidates.append(name)
                os.close(candidate)
        finally:
            for name in candidates:
                os.unlink(name)
        if fd is None:
            return False
    try:
        assert (os.fstat(fd).st_dev, os.fstat(fd).st_ino) == (old.st_dev, old.st_ino)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


# The spool shapes the fault tests (maildrop, server mode, cache) run every scenario on.
# name: (initial spool, mail delivered during the session, deleted, retrieved)
SHAPES = {
    "one": (message(1), b"", set(), {0}),
    "many": (b"".join(message(n, body_lines=60) for n in range(1, 61)), b"",   # > 64 KiB
             {0, 5, 6, 59}, {1, 2, 5}),
    "mmdf": (b"".join(mmdf(n) for n in range(1, 5)), b"", {1}, {0}),
    # its last message without a trailer (docs/mbox.md, "What write-back writes")
    "mmdf-open": (b"".join(mmdf(n) for n in range(1, 5))[:-5], mmdf(9), {1}, {0}),
    # mail delivered during the session ends open: the write-back closes it
    "mmdf-open-new-mail": (b"".join(mmdf(n) for n in range(1, 5)), mmdf(9)[:-5], {1}, {0}),
    "no-final-newline": (message(1) + message(2) + from_line(3) + b"Subject: cut\n\nno newline",
                         b"", {0}, {2}),
    "x-uidl": (b"".join(message(n, extra_headers=b"X-UIDL: existing-uid-%05d\nStatus: RO\n" % n)
                        for n in range(1, 6)), b"", {2}, {0, 4}),
    "new-mail": (b"".join(message(n) for n in range(1, 6)),
                 message(100) + message(101), {0, 4}, {1}),
    "all-deleted": (b"".join(message(n) for n in range(1, 4)), message(200), {0, 1, 2}, set()),
    "leftover-drop": (message(1) + message(2), message(102), {1, 2}, {0}),
    "old-drop": (message(1) + message(2), b"", {0}, {1}),
    "nfs-lock": (message(1) + message(2), message(103), {1}, {0}),
    # a Content-Length not honoured: the restore puts the drop back without it
    "stale-length": (message(1, extra_headers=b"Content-Length: 99999\n") + message(2),
                     message(104), {1}, {0}),
    # mail delivered during the session after more empty lines than the kept message is
    # long: the update's image is shorter than the spool, which is cut (docs/maildrop.md,
    # "The commit engine")
    "padded": (message(1) + message(2), b"\n" * 300 + message(105), {0}, set()),
}
