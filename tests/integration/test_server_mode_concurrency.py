"""Concurrency in server mode (DESIGN invariant 2): the delivery agent of
tests/helpers/spoolcheck.py (dotlockfile or O_EXCL `.lock`, plus fcntl) appends messages at
random moments while server-mode sessions open / RETR / DELE / QUIT (in-place copy or
fast-update rename) or abort in a loop, with the cache in use. Afterwards the spool holds
exactly the old messages no committed update deleted plus every delivered one, each once, and
no delivery waited long: the spool is locked only while it is read at login and rewritten at
QUIT."""

from __future__ import annotations

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

OLD_MESSAGES = 30


@pytest.mark.timeout(120)
@pytest.mark.parametrize("locker,fast", [("dotlockfile", False), ("dotlockfile", True),
                                         ("o_excl", True)])
def test_server_mode_sessions_and_deliveries_lose_nothing(tmp_path, locker, fast):
    if locker == "dotlockfile" and shutil.which("dotlockfile") is None:
        pytest.skip("dotlockfile (liblockfile-bin) not installed")
    count = 120
    cfg = Config.defaults().replace(spool_dir=str(tmp_path), server_mode=True, fast_update=fast)
    paths = SpoolPaths.for_user(cfg, USER, None)
    with open(paths.spool, "wb") as f:
        f.write(b"".join(old_message(n) for n in range(OLD_MESSAGES)))
    rng = random.Random(13 if fast else 17)
    deleted: set[str] = set()
    sessions = updates = from_cache = 0
    with concurrent_deliverer(paths.spool, count, locker, seed=5) as deliverer:
        while deliverer.poll() is None:
            drop = Maildrop.open(cfg, paths, USER)
            assert drop.server_mode
            from_cache += drop.scan_region[0] > 0
            ids = message_ids(drop)
            assert_each_message_once_and_none_deleted(ids, deleted)
            roll = rng.random()
            doomed = ({i for i in range(len(ids)) if rng.random() < 0.3} if roll < 0.5
                      else set(range(len(ids))) if roll < 0.6 else set())
            time.sleep(rng.uniform(0, 0.05))
            if rng.random() < 0.85:
                drop.update(doomed, set())
                deleted |= {ids[i] for i in doomed}
                updates += 1
            else:
                drop.restore()
            sessions += 1
        out, _ = deliverer.communicate(timeout=30)
    assert deliverer.returncode == 0
    assert sessions >= 10 and updates >= 5 and from_cache >= 1

    assert_each_survivor_once(cfg, paths, OLD_MESSAGES, count, deleted)
    assert float(out.strip()) < 3.0


@pytest.mark.timeout(60)
def test_delivery_during_a_server_mode_session_is_not_blocked(tmp_path):
    if shutil.which("dotlockfile") is None:
        pytest.skip("dotlockfile (liblockfile-bin) not installed")
    cfg = Config.defaults().replace(spool_dir=str(tmp_path), server_mode=True)
    paths = SpoolPaths.for_user(cfg, USER, None)
    with open(paths.spool, "wb") as f:
        f.write(old_message(1))
    drop = Maildrop.open(cfg, paths, USER)
    try:
        assert drop.server_mode
        deliver_under_dotlockfile(paths, old_message(2))
        drop.update({0}, set())
    finally:
        drop.close()
    drop = Maildrop.open(cfg, paths, USER)
    try:
        assert message_ids(drop) == ["old-2@example.org"]
    finally:
        drop.close()
