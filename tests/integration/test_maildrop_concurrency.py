"""Concurrency (DESIGN invariant 2): a delivery agent appends 200 messages at random moments with
the standard dot-lock protocol (Debian's dotlockfile when installed, else O_EXCL `.lock`), plus
an fcntl lock, while sessions open / RETR / DELE / QUIT (or abort) in a loop. Afterwards the
spool holds exactly the old messages no committed update deleted plus every delivered one, each
once; and no delivery waited long, because sessions lock the spool only for their copies."""

import random
import shutil
import time

import pytest

from qpopper.config import Config
from qpopper.spool.maildrop import Maildrop
from qpopper.spool.paths import SpoolPaths
from tests.helpers.spoolcheck import (USER, assert_each_message_once_and_none_deleted,
                                      assert_each_survivor_once, concurrent_deliverer,
                                      deliver_under_dotlockfile, message_ids, old_message)

DELIVERIES = 200
OLD_MESSAGES = 30


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
    deleted: set[str] = set()
    sessions = updates = 0
    with concurrent_deliverer(paths.spool, count, locker, seed=11) as deliverer:
        while deliverer.poll() is None:
            drop = Maildrop.open(cfg, paths, USER)
            ids = message_ids(drop)
            assert_each_message_once_and_none_deleted(ids, deleted)
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
    assert deliverer.returncode == 0
    assert sessions >= 10 and updates >= 5

    assert_each_survivor_once(cfg, paths, OLD_MESSAGES, count, deleted)
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
        deliver_under_dotlockfile(paths, old_message(2))
        drop.update({0}, set())
    finally:
        drop.close()
    drop = Maildrop.open(cfg, paths, USER)
    try:
        assert message_ids(drop) == ["old-2@example.org"]
    finally:
        drop.close()
