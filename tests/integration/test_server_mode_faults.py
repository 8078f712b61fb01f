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
from tests.helpers.faultrig import FaultRig
from tests.helpers.spoolcheck import (AFTER_CRASH, AFTER_CRASH_MMDF, LOCK_STEP_S, USER,
                                      allowed_after_kill, deliver_after_crash, drive_session,
                                      in_child, message, mmdf, next_session_view)
from tests.helpers.spoolcheck import deliver as locked_deliver

X_UIDL = b"X-UIDL: existing-uid-%05d\nStatus: RO\n"

# name: (spool, new mail during the session, deleted, retrieved, warm cache first)
SHAPES = {
    "one": (message(1), b"", set(), {0}, False),
    "many": (b"".join(message(n, body_lines=60) for n in range(1, 61)), b"",   # > 64 KiB
             {0, 5, 6, 59}, {1, 2, 5}, False),
    "mmdf": (b"".join(mmdf(n) for n in range(1, 5)), mmdf(9), {1}, {0},
             False),
    # its last message without a trailer: the login closes it (docs/mbox.md, "What write-back
    # writes")
    "mmdf-open": (b"".join(mmdf(n) for n in range(1, 5))[:-5], mmdf(9), {1}, {0}, False),
    # mail delivered during the session ends open: the rewrite closes it
    "mmdf-open-new-mail": (b"".join(mmdf(n) for n in range(1, 5)), mmdf(9)[:-5], {1}, {0},
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
    # nothing to write but a Content-Length not honoured: QUIT and abort rewrite for it alone
    "stale-length": (message(1, extra_headers=X_UIDL % 1 + b"Content-Length: 99999\n")
                     + message(2, extra_headers=X_UIDL % 2), message(202), set(), {0}, False),
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


class Rig(FaultRig):
    def __init__(self, work, tmp_path, shape: str, fast: bool):
        super().__init__(work, tmp_path)
        self.shape, self.fast = shape, fast

    def prepare(self) -> None:
        prepare(self.work, self.shape)

    def session(self, scenario: str, hook) -> None:
        run_session(self.work, scenario, self.shape, self.fast, hook)

    def view(self, hook=None):
        return snapshot(self.work, hook)


def expected(rig: Rig):
    untouched = rig.untouched()
    return untouched, rig.outcome("restore"), rig.outcome("update")


# fast-update matters only when writing: a DELE, or a Content-Length not honoured alone
CASES = [(shape, fast) for shape in sorted(SHAPES) for fast in (False, True)
         if fast is False or SHAPES[shape][2] or shape == "stale-length"]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("shape,fast", CASES)
def test_server_mode_kill_at_every_step_loses_and_duplicates_nothing(tmp_path, shape, fast):
    rig = Rig(tmp_path / "spool", tmp_path, shape, fast)
    untouched, before, committed = expected(rig)
    _spool, new_mail, deleted, _, _ = SHAPES[shape]
    assert len(committed) == len(before) - len(deleted)
    checked = 0
    for scenario in ("update", "restore"):
        steps = rig.steps(scenario)
        closes_end = shape in ("mmdf-open", "no-final-newline")     # the login closes it
        assert ("open:close-spool-end" in steps) == closes_end, steps
        assert ("update:close-image-end" in steps) == (
            scenario == "update" and shape == "mmdf-open-new-mail"), steps
        if scenario == "update" and deleted:
            assert any(s.startswith("update:") and "spool" in s for s in steps), steps
            assert ("update:rename-image-over-spool" in steps) == (
                fast and bool(set(range(len(untouched))) - deleted or new_mail))
        for k, step in enumerate(steps):
            rig.crash(scenario, k)
            seen, leftovers = rig.next_view()
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
    rig = Rig(tmp_path / "spool", tmp_path, shape, fast)
    untouched, before, committed = expected(rig)
    late_mail = AFTER_CRASH_MMDF if shape == "mmdf" else AFTER_CRASH
    checked = 0
    for k, step in enumerate(rig.steps("update")):
        rig.crash("update", k)
        deliver_after_crash(rig.work, late_mail)
        seen, leftovers = rig.next_view()
        where = f"{shape} fast={fast}: killed at step {k} {step!r}, then mail came"
        assert leftovers == [], where
        late = [i for i, (_, data) in enumerate(seen) if b"Subject: after crash" in data]
        assert late == [len(seen) - 1], where
        allowed = allowed_after_kill(step, "update", untouched, before, committed)
        assert seen[:-1] in allowed, where
        checked += 1
    assert checked >= 10


@pytest.mark.timeout(180)
@pytest.mark.parametrize("shape,fast", [("new-mail", False), ("new-mail", True),
                                        ("new-mail-cached", False), ("all-deleted", False)])
def test_server_mode_crash_is_recovered_by_another_host_of_the_nfs_spool(tmp_path, shape,
                                                                          fast):
    """Killed at every step of the update on one host; the next session runs on another host
    sharing the spool over NFS, whose mount has another device number: recovery still knows
    the spool, and nothing is lost, duplicated or brought back."""
    rig = Rig(tmp_path / "spool", tmp_path, shape, fast)
    untouched, before, committed = expected(rig)
    assert rig.check_each_crash_from_another_host(untouched, before, committed,
                                                  f"{shape} fast={fast}") >= 5


@pytest.mark.timeout(180)
@pytest.mark.parametrize("fast", [False, True])
def test_server_mode_kill_during_recovery_after_a_kill_during_update(tmp_path, fast):
    rig = Rig(tmp_path / "spool", tmp_path, "new-mail", fast)
    _, before, committed = expected(rig)
    checked = 0
    for step, recovery_step in rig.recovery_crashes("update:journal-replace-write"):
        seen, leftovers = rig.next_view()
        where = f"fast={fast}: update killed at {step!r}, recovery killed at {recovery_step!r}"
        assert leftovers == [], where
        assert seen in (before, committed), where
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("fast", [False, True])
def test_a_stale_length_alone_makes_quit_and_abort_rewrite(tmp_path, fast):
    """The shape above really writes (else its kills would prove nothing), with fast-update
    by the rename."""
    rig = Rig(tmp_path / "spool", tmp_path, "stale-length", fast)
    for scenario in ("update", "restore"):
        steps = rig.steps(scenario)
        assert f"{scenario}:journal-replace-rename" in steps, scenario
        assert (f"{scenario}:rename-image-over-spool" in steps) == fast, scenario
