"""Concurrency (DESIGN invariant 2), normal and server mode: a delivery agent appends messages
at random moments with the standard dot-lock protocol (Debian's dotlockfile when installed,
else O_EXCL `.lock`), plus an fcntl lock, while sessions open / RETR / DELE / QUIT (in normal
mode through the temp drop; in server mode in-place or by fast-update's rename, with the cache
in use) or abort in a loop. Afterwards the spool holds exactly the old messages no committed
update deleted plus every delivered one, each once; and no delivery waited long, because
sessions lock the spool only for their copies (normal mode) or while the spool is read at
login and rewritten at QUIT (server mode)."""

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
RACES = {        # name: (locker, server mode, fast-update, deliveries, session seed, agent seed)
    "normal-dotlockfile": ("dotlockfile", False, False, 200, 7, 11),
    "normal-o_excl": ("o_excl", False, False, 100, 7, 11),
    "server-dotlockfile": ("dotlockfile", True, False, 120, 17, 5),
    "server-dotlockfile-fast": ("dotlockfile", True, True, 120, 13, 5),
    "server-o_excl-fast": ("o_excl", True, True, 120, 13, 5),
}


def needs_dotlockfile(locker: str) -> None:
    if locker == "dotlockfile" and shutil.which("dotlockfile") is None:
        pytest.skip("dotlockfile (liblockfile-bin) not installed")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("race", RACES)
def test_sessions_and_deliveries_lose_nothing(tmp_path, race):
    locker, server_mode, fast, count, session_seed, agent_seed = RACES[race]
    needs_dotlockfile(locker)
    cfg = Config.defaults().replace(spool_dir=str(tmp_path), server_mode=server_mode,
                                    fast_update=fast)
    paths = SpoolPaths.for_user(cfg, USER, None)
    with open(paths.spool, "wb") as f:
        f.write(b"".join(old_message(n) for n in range(OLD_MESSAGES)))
    rng = random.Random(session_seed)
    deleted: set[str] = set()
    sessions = updates = from_cache = 0
    with concurrent_deliverer(paths.spool, count, locker, seed=agent_seed) as deliverer:
        while deliverer.poll() is None:
            drop = Maildrop.open(cfg, paths, USER)
            assert drop.server_mode == server_mode
            from_cache += server_mode and drop.scan_region[0] > 0
            ids = message_ids(drop)
            assert_each_message_once_and_none_deleted(ids, deleted)
            roll = rng.random()          # some, all or none of the messages deleted
            doomed = ({i for i in range(len(ids)) if rng.random() < 0.3} if roll < 0.5
                      else set(range(len(ids))) if roll < 0.6 else set())
            for i in range(len(ids)):
                if rng.random() < 0.2:
                    drop.send(i, lambda data: None)
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
    assert sessions >= 10 and updates >= 5
    assert from_cache >= 1 or not server_mode

    assert_each_survivor_once(cfg, paths, OLD_MESSAGES, count, deleted)
    # Invariant 2: the spool is locked only for short copies, never for a whole session.
    assert float(out.strip()) < 3.0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("server_mode", [False, True])
def test_delivery_during_a_session_is_not_blocked(tmp_path, server_mode):
    """While a session is open (after its copy or its read), a delivery agent gets the lock
    at once."""
    needs_dotlockfile("dotlockfile")
    cfg = Config.defaults().replace(spool_dir=str(tmp_path), server_mode=server_mode)
    paths = SpoolPaths.for_user(cfg, USER, None)
    with open(paths.spool, "wb") as f:
        f.write(old_message(1))
    drop = Maildrop.open(cfg, paths, USER)
    try:
        assert drop.server_mode == server_mode
        deliver_under_dotlockfile(paths, old_message(2))
        drop.update({0}, set())
    finally:
        drop.close()
    drop = Maildrop.open(cfg, paths, USER)
    try:
        assert message_ids(drop) == ["old-2@example.org"]
    finally:
        drop.close()
