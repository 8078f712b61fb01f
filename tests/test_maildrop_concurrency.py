"""Concurrency (DESIGN invariant 2): a delivery agent appends 200 messages at random moments with
the standard dot-lock protocol (Debian's dotlockfile when installed, else O_EXCL `.lock`), plus
an fcntl lock, while sessions open / RETR / DELE / QUIT (or abort) in a loop. Afterwards the
spool holds exactly the old messages no committed update deleted plus every delivered one, each
once; and no delivery waited long, because sessions lock the spool only for their copies."""

import random
import re
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from qpopper.config import Config
from qpopper.spool.maildrop import Maildrop
from qpopper.spool.paths import SpoolPaths

USER = "alice"
DELIVERIES = 200
OLD_MESSAGES = 30
MESSAGE_ID = re.compile(rb"^Message-Id: <([^>]+)>\r?$", re.M | re.I)

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


def old_message(n: int) -> bytes:
    return (b"From old@example.org Wed Dec  2 05:53:22 1992\nSubject: old %d\n"
            b"Message-Id: <old-%d@example.org>\n\nold body %d\n\n" % (n, n, n))


def message_ids(drop: Maildrop) -> list[str]:
    ids = []
    for i in range(len(drop.messages)):
        parts = []
        drop.send(i, parts.append, body_lines=0)
        found = MESSAGE_ID.search(b"".join(parts))
        assert found, b"".join(parts)[:200]
        ids.append(found.group(1).decode())
    return ids


@pytest.mark.timeout(120)
@pytest.mark.parametrize("locker", ["dotlockfile", "o_excl"])
def test_sessions_and_deliveries_lose_nothing(tmp_path, locker):
    if locker == "dotlockfile" and shutil.which("dotlockfile") is None:
        pytest.skip("dotlockfile (liblockfile-bin) not installed")
    count = DELIVERIES if locker == "dotlockfile" else DELIVERIES // 2
    cfg = Config.defaults().replace(spool_dir=str(tmp_path))
    paths = SpoolPaths.for_user(cfg, USER, None)
    with open(paths.spool, "wb") as f:
        f.write(b"".join(old_message(n) for n in range(OLD_MESSAGES)))
    rng = random.Random(7)
    deliverer = subprocess.Popen([sys.executable, "-c", DELIVERER, paths.spool, str(count),
                                  "1" if locker == "dotlockfile" else "0", "11"],
                                 stdout=subprocess.PIPE, text=True)
    deleted: set[str] = set()
    sessions = updates = 0
    try:
        while deliverer.poll() is None:
            drop = Maildrop.open(cfg, paths, USER)
            ids = message_ids(drop)
            assert len(ids) == len(set(ids)), "a message appeared twice"
            assert not set(ids) & deleted, "a deleted message came back"
            doomed = {i for i in range(len(ids)) if rng.random() < 0.3}
            for i in range(len(ids)):
                if rng.random() < 0.2:
                    drop.send(i, lambda data: None)
            time.sleep(rng.uniform(0, 0.05))
            if rng.random() < 0.8:
                drop.update(doomed, set())
                deleted |= {ids[i] for i in doomed}
                updates += 1
            else:
                drop.restore()
            sessions += 1
        out, _ = deliverer.communicate(timeout=30)
    finally:
        if deliverer.poll() is None:
            deliverer.kill()
            deliverer.wait()
        if deliverer.stdout:
            deliverer.stdout.close()
    assert deliverer.returncode == 0
    assert sessions >= 10 and updates >= 5

    drop = Maildrop.open(cfg, paths, USER)
    final = message_ids(drop)
    drop.close()
    expected = ({f"old-{n}@example.org" for n in range(OLD_MESSAGES)}
                | {f"delivered-{n}@example.org" for n in range(count)}) - deleted
    assert len(final) == len(set(final)), "duplicated messages"
    assert set(final) == expected
    # Invariant 2: the spool is locked only for short copies, never for a whole session.
    assert float(out.strip()) < 3.0


@pytest.mark.timeout(60)
def test_delivery_during_a_session_is_not_blocked(tmp_path):
    """While a session is open (after its copy), a delivery agent gets the lock at once."""
    if shutil.which("dotlockfile") is None:
        pytest.skip("dotlockfile (liblockfile-bin) not installed")
    cfg = Config.defaults().replace(spool_dir=str(tmp_path))
    paths = SpoolPaths.for_user(cfg, USER, None)
    with open(paths.spool, "wb") as f:
        f.write(old_message(1))
    drop = Maildrop.open(cfg, paths, USER)
    try:
        run = subprocess.run(["dotlockfile", "-l", "-r", "0", paths.lock], timeout=30)
        assert run.returncode == 0
        with open(paths.spool, "ab") as f:
            f.write(old_message(2))
        subprocess.run(["dotlockfile", "-u", paths.lock], timeout=30, check=True)
        drop.update({0}, set())
    finally:
        drop.close()
    drop = Maildrop.open(cfg, paths, USER)
    try:
        assert message_ids(drop) == ["old-2@example.org"]
    finally:
        drop.close()
