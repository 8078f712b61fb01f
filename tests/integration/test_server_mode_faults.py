"""Fault injection for server mode (DESIGN invariants 1 and 2), with the machinery of
test_maildrop_faults.py (tests/helpers/spoolcheck.py): SIGKILL the session process at EVERY
step (each write, truncate, rename, fsync, unlink and copy chunk) of a server-mode open, QUIT
(in-place copy and fast-update rename), all-deleted truncate, clean QUIT (cache only) and
abort, on several spool shapes; the next session must see every surviving message exactly
once, byte-identical: the update either committed or did not. Mail a delivery agent appends
after the crash is kept once.
"""

from __future__ import annotations

import os
import shutil

import pytest

from qpopper.config import Config
from qpopper.spool.maildrop import Maildrop
from qpopper.spool.paths import SpoolPaths
from tests.helpers.spoolcheck import (AFTER_CRASH, AFTER_CRASH_MMDF, LOCK_STEP_S, USER,
                                      allowed_after_kill, deliver_after_crash, drive_session,
                                      in_child, killer_at, message, mmdf, next_session_view)
from tests.helpers.spoolcheck import deliver as locked_deliver

X_UIDL = b"X-UIDL: existing-uid-%05d\nStatus: RO\n"

# name: (spool, new mail during the session, deleted, retrieved, warm cache first)
SHAPES = {
    "one": (message(1), b"", set(), {0}, False),
    "many": (b"".join(message(n, body_lines=60) for n in range(1, 61)), b"",   # > 64 KiB
             {0, 5, 6, 59}, {1, 2, 5}, False),
    "mmdf": (b"".join(mmdf(n) for n in range(1, 5)), mmdf(9), {1}, {0},
             False),
    "no-final-newline": (message(1) + message(2) + b"From x@y Wed Dec  2 05:53:22 1992\n"
                         b"Subject: cut\n\nno newline", b"", {0}, {2}, False),
    "new-mail": (b"".join(message(n) for n in range(1, 6)), message(100) + message(101),
                 {0, 4}, {1}, False),
    "new-mail-cached": (b"".join(message(n) for n in range(1, 6)), message(100), {2}, {1},
                        True),
    "all-deleted": (b"".join(message(n) for n in range(1, 4)), b"", {0, 1, 2}, set(), False),
    "all-deleted-new-mail": (b"".join(message(n) for n in range(1, 4)), message(200),
                             {0, 1, 2}, set(), False),
    "clean": (b"".join(message(n, extra_headers=X_UIDL % n) for n in range(1, 5)), message(201),
              set(), {0, 3}, True),
}


def make_cfg(spool_dir, fast: bool) -> Config:
    return Config.defaults().replace(spool_dir=str(spool_dir), server_mode=True,
                                     fast_update=fast)


def deliver(paths, data: bytes) -> None:
    """A delivery agent's append under the dot-lock (the session holds no lock now)."""
    locked_deliver(Config.defaults().replace(spool_dir=os.path.dirname(paths.spool)), data)


def run_session(spool_dir, scenario: str, shape: str, fast: bool, hook) -> None:
    cfg = make_cfg(spool_dir, fast)
    _spool, new_mail, deleted, retrieved, _ = SHAPES[shape]
    paths = SpoolPaths.for_user(cfg, USER, None)
    drop = Maildrop.open(cfg, paths, USER, step_hook=hook, lock_step_s=LOCK_STEP_S)
    assert drop.server_mode
    drive_session(drop, scenario, deleted, retrieved,
                  (lambda: deliver(paths, new_mail)) if new_mail else None)


def snapshot(spool_dir, hook=None):
    """The next session as a client sees it ([(uid, RETR bytes)]), ended without update."""
    return next_session_view(make_cfg(spool_dir, False), spool_dir, hook)


def prepare(directory, shape: str) -> None:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir()
    cfg = make_cfg(directory, False)
    paths = SpoolPaths.for_user(cfg, USER, None)
    with open(paths.spool, "wb") as f:
        f.write(SHAPES[shape][0])
    if SHAPES[shape][4]:            # a previous server-mode session left a valid cache
        in_child(lambda: Maildrop.open(cfg, paths, USER).update(set(), set()),
                 expect_kill=False)
        assert os.path.exists(paths.cache)


def outcome(work, tmp_path, scenario, shape, fast):
    prepare(work, shape)
    in_child(lambda: run_session(work, scenario, shape, fast, None), expect_kill=False)
    return in_child(lambda: snapshot(work), tmp_path / "snap.pickle", expect_kill=False)[0]


def steps_of(work, tmp_path, scenario, shape, fast) -> list[str]:
    prepare(work, shape)

    def run():
        steps = []
        run_session(work, scenario, shape, fast, steps.append)
        return steps
    return in_child(run, tmp_path / "steps.pickle", expect_kill=False)


def expected(work, tmp_path, shape, fast):
    prepare(work, shape)
    untouched = in_child(lambda: snapshot(work), tmp_path / "snap.pickle", expect_kill=False)[0]
    before = outcome(work, tmp_path, "restore", shape, fast)
    committed = outcome(work, tmp_path, "update", shape, fast)
    return untouched, before, committed


CASES = [(shape, fast) for shape in sorted(SHAPES) for fast in (False, True)
         if fast is False or SHAPES[shape][2]]     # fast-update matters only when writing


@pytest.mark.timeout(180)
@pytest.mark.parametrize("shape,fast", CASES)
def test_server_mode_kill_at_every_step_loses_and_duplicates_nothing(tmp_path, shape, fast):
    work = tmp_path / "spool"
    untouched, before, committed = expected(work, tmp_path, shape, fast)
    _spool, new_mail, deleted, _, _ = SHAPES[shape]
    assert len(committed) == len(before) - len(deleted)
    checked = 0
    for scenario in ("update", "restore"):
        steps = steps_of(work, tmp_path, scenario, shape, fast)
        if scenario == "update" and deleted:
            assert any(s.startswith("update:") and "spool" in s for s in steps), steps
            assert ("update:rename-image-over-spool" in steps) == (
                fast and bool(set(range(len(untouched))) - deleted or new_mail))
        for k, step in enumerate(steps):
            prepare(work, shape)
            in_child(lambda: run_session(work, scenario, shape, fast, killer_at(k)),
                     expect_kill=True)
            seen, leftovers = in_child(lambda: snapshot(work), tmp_path / "snap.pickle",
                                       expect_kill=False)
            where = f"{shape} fast={fast}: killed at step {k} {step!r} of {scenario}"
            assert leftovers == [], where
            assert seen in allowed_after_kill(step, scenario, untouched, before, committed), where
            checked += 1
    assert checked >= 3


@pytest.mark.timeout(180)
@pytest.mark.parametrize("shape,fast", [("new-mail", False), ("new-mail", True),
                                        ("mmdf", False), ("all-deleted-new-mail", False),
                                        ("many", True)])
def test_server_mode_mail_delivered_after_a_crash_is_kept_once(tmp_path, shape, fast):
    work = tmp_path / "spool"
    untouched, before, committed = expected(work, tmp_path, shape, fast)
    steps = steps_of(work, tmp_path, "update", shape, fast)
    late_mail = AFTER_CRASH_MMDF if shape == "mmdf" else AFTER_CRASH
    checked = 0
    for k, step in enumerate(steps):
        prepare(work, shape)
        in_child(lambda: run_session(work, "update", shape, fast, killer_at(k)),
                 expect_kill=True)
        deliver_after_crash(work, late_mail)
        seen, leftovers = in_child(lambda: snapshot(work), tmp_path / "snap.pickle",
                                   expect_kill=False)
        where = f"{shape} fast={fast}: killed at step {k} {step!r}, then mail came"
        assert leftovers == [], where
        late = [i for i, (_, data) in enumerate(seen) if b"Subject: after crash" in data]
        assert late == [len(seen) - 1], where
        allowed = allowed_after_kill(step, "update", untouched, before, committed)
        assert seen[:-1] in allowed, where
        checked += 1
    assert checked >= 10


@pytest.mark.timeout(180)
@pytest.mark.parametrize("fast", [False, True])
def test_server_mode_kill_during_recovery_after_a_kill_during_update(tmp_path, fast):
    shape = "new-mail"
    work = tmp_path / "spool"
    _, before, committed = expected(work, tmp_path, shape, fast)
    steps = steps_of(work, tmp_path, "update", shape, fast)
    first = steps.index("update:journal-replace-write")
    chosen = {}
    for k in range(first, len(steps)):
        chosen.setdefault(steps[k], k)
    checked = 0
    for step, k in chosen.items():

        def crash_update():
            prepare(work, shape)
            in_child(lambda: run_session(work, "update", shape, fast, killer_at(k)),
                     expect_kill=True)

        crash_update()
        rec_steps = in_child(lambda: _recovery_steps(work), tmp_path / "r.pickle",
                             expect_kill=False)
        for j, rstep in enumerate(rec_steps):
            if not rstep.startswith("recover:"):
                continue
            crash_update()
            in_child(lambda: snapshot(work, killer_at(j)), expect_kill=True)
            seen, leftovers = in_child(lambda: snapshot(work), tmp_path / "snap.pickle",
                                       expect_kill=False)
            where = f"fast={fast}: update killed at {step!r}, recovery killed at {rstep!r}"
            assert leftovers == [], where
            assert seen in (before, committed), where
            checked += 1
    assert checked >= 5


def _recovery_steps(work):
    steps = []
    snapshot(work, steps.append)
    return steps
