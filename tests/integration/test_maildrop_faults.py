"""Fault injection (DESIGN invariant 1): SIGKILL the process running the maildrop at EVERY step
(each write, truncate, rename, fsync and unlink, each chunk of a copy) of session start, of the
update at QUIT and of the restore, on spools of several shapes; then a new process opens the
next session, and every surviving message must be there exactly once, byte-identical to what a
session without the crash would show: either the update committed (deleted messages gone,
X-UIDL/Status written) or it did not (every message still there) - never partial, never
duplicated. No root and no server needed: each session is a fork()ed process.
"""

import json
import os
import shutil

import pytest

from qpopper.config import Config
from qpopper.spool.maildrop import Maildrop
from qpopper.spool.paths import SpoolPaths
from tests.helpers.faultrig import FaultRig
from tests.helpers.spoolcheck import (AFTER_CRASH, AFTER_CRASH_MMDF, LOCK_STEP_S,
                                      REPLACEMENT, SHAPES, USER, allowed_after_kill, deliver,
                                      deliver_after_crash, drive_session, in_child,
                                      message, mmdf, next_session_view,
                                      replace_spool_keeping_inode_number)

# A spool that starts with empty lines after a crashed session's drop: the login leaves them
# out of its copy ('skip'), and the update then cuts the spool (docs/maildrop.md, "Normal
# mode", "The commit engine"). Into an empty drop the same ('padded-spool', 'padded-mmdf'):
# the padding is part of no message (docs/mbox.md, "Padding before the first message").
SHAPES = dict(SHAPES, **{"padded-leftover": (b"\n\n" + message(107), b"\n" * 300 + message(108),
                                             {0, 1}, {2}),
                         "padded-spool": (b"\r\n\n" + message(1) + message(2), message(109),
                                          {0}, {1}),
                         "padded-mmdf": (b"\n\n" + mmdf(1) + mmdf(2), b"", {1}, {0})})
# A crashed session's temporary drop that the next session must put first.
LEFTOVER_DROPS = {"leftover-drop": message(50) + message(51),
                  "padded-leftover": message(50) + message(51)}
# check-old-spool-loc: with hash-spool 1, an old Qpopper's drop in the plain spool dir.
OLD_DROPS = {"old-drop": message(60)}
SHAPE_OPTIONS = {"old-drop": {"hash_spool": 1},
                 "nfs-lock": {"no_atomic_open": True}}     # link(2) dot-lock (L4)


def make_cfg(spool_dir, shape: str = "") -> Config:
    return Config.defaults().replace(spool_dir=str(spool_dir), **SHAPE_OPTIONS.get(shape, {}))


def run_session(spool_dir, scenario: str, shape: str, hook) -> None:
    """One session as the protocol drives it: open, (new mail arrives), DELE/RETR, QUIT."""
    cfg = make_cfg(spool_dir, shape)
    _spool, new_mail, deleted, retrieved = SHAPES[shape]
    paths = SpoolPaths.for_user(cfg, USER, None)
    drop = Maildrop.open(cfg, paths, USER, step_hook=hook, lock_step_s=LOCK_STEP_S)
    drive_session(drop, scenario, deleted, retrieved,
                  (lambda: deliver(cfg, new_mail)) if new_mail else None)


def snapshot(spool_dir, shape: str, hook=None):
    """The next session, as a client sees it, and the files left behind (next_session_view)."""
    return next_session_view(make_cfg(spool_dir, shape), spool_dir, hook)


def prepare(directory, shape: str) -> None:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir()
    cfg = make_cfg(directory, shape)
    paths = SpoolPaths.for_user(cfg, USER, None)
    os.makedirs(os.path.dirname(paths.spool), exist_ok=True)
    with open(paths.spool, "wb") as f:
        f.write(SHAPES[shape][0])
    for table, path in ((LEFTOVER_DROPS, paths.temp_drop), (OLD_DROPS, paths.old_temp_drop)):
        if shape in table:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, table[shape])
            os.close(fd)


class Rig(FaultRig):
    def __init__(self, work, tmp_path, shape: str):
        super().__init__(work, tmp_path)
        self.shape = shape

    def prepare(self) -> None:
        prepare(self.work, self.shape)

    def session(self, scenario: str, hook) -> None:
        run_session(self.work, scenario, self.shape, hook)

    def view(self, hook=None):
        return snapshot(self.work, self.shape, hook)


def expected_outcomes(rig: Rig):
    before = rig.outcome("open-only")                   # every message, new mail too
    committed = rig.outcome("update")
    restored = rig.outcome("restore")
    return rig.untouched(), before, committed, restored


@pytest.mark.timeout(240)
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_kill_at_every_step_loses_and_duplicates_nothing(tmp_path, shape):
    rig = Rig(tmp_path / "spool", tmp_path, shape)
    untouched, before, committed, restored = expected_outcomes(rig)
    spool, new_mail, deleted, _ = SHAPES[shape]
    # The outcomes themselves: deleted messages go only with a committed update.
    assert restored == before
    assert len(committed) == len(before) - len(deleted)
    assert [uid for uid, _ in committed] == [uid for i, (uid, _) in enumerate(before)
                                             if i not in deleted]

    if shape in LEFTOVER_DROPS:                   # the crashed session's mail comes first
        assert [data.split(b"\r\n")[0] for _, data in untouched[:2]] == [
            b"Subject: message 50", b"Subject: message 51"]
    checked = 0
    for scenario in ("update", "restore"):
        steps = rig.steps(scenario)
        assert any(s.startswith(f"{scenario}:") for s in steps), (scenario, steps)
        if scenario == "update":                 # the step that makes the update happen
            assert ("update:truncate-temp-drop" if shape == "all-deleted"
                    else "update:journal-commit-rename") in steps, steps
            assert ("update:cut-spool" in steps) == (shape in ("padded", "padded-leftover"))
        if shape in OLD_DROPS:
            assert "open:copy-old-temp-drop" in steps
        # mail left open during the session is closed after its copy (docs/mbox.md)
        assert (f"{scenario}:close-image-end" in steps) == (shape == "mmdf-open-new-mail")
        for k, step in enumerate(steps):
            rig.crash(scenario, k)
            seen, leftovers = rig.next_view()
            where = f"{shape}: killed at step {k} {step!r} of {scenario}"
            assert leftovers == [], where
            assert seen in allowed_after_kill(step, scenario, untouched, before, committed), where
            checked += 1
    assert checked >= 30


@pytest.mark.timeout(240)
@pytest.mark.parametrize("shape", ["new-mail", "all-deleted", "leftover-drop"])
def test_a_crash_is_recovered_by_another_host_of_the_nfs_spool(tmp_path, shape):
    """Killed at every step of the update on one host; the next session runs on another host
    sharing the spool over NFS, whose mount has another device number: recovery still knows
    the spool, and nothing is lost, duplicated or brought back."""
    rig = Rig(tmp_path / "spool", tmp_path, shape)
    untouched, before, committed, _ = expected_outcomes(rig)
    assert rig.check_each_crash_from_another_host(untouched, before, committed, shape) >= 10


@pytest.mark.timeout(240)
@pytest.mark.parametrize("shape", ["new-mail"])
def test_kill_during_recovery_after_a_kill_during_update(tmp_path, shape):
    """Crash in the update, then crash again at every step of the recovering session."""
    rig = Rig(tmp_path / "spool", tmp_path, shape)
    _untouched, before, committed, _ = expected_outcomes(rig)
    # Kills before the commit is journaled leave nothing to recover but a full drop (the
    # single-fault test covers that); after it, each distinct step once.
    checked = 0
    for step, recovery_step in rig.recovery_crashes("update:journal-commit-write"):
        seen, leftovers = rig.next_view()
        where = f"{shape}: update killed at {step!r}, recovery killed at {recovery_step!r}"
        assert leftovers == [], where
        assert seen in (before, committed), where
        checked += 1
    assert checked >= 10


@pytest.mark.timeout(240)
@pytest.mark.parametrize("shape", ["new-mail", "many", "mmdf", "padded"])
def test_mail_delivered_after_a_crash_is_kept_exactly_once(tmp_path, shape):
    rig = Rig(tmp_path / "spool", tmp_path, shape)
    untouched, before, committed, _ = expected_outcomes(rig)
    checked = 0
    for scenario in ("update", "restore"):
        steps = rig.steps(scenario)
        for k, step in enumerate(steps):
            if scenario == "restore" and step.startswith("open:"):
                continue                     # the same open steps as the update's
            rig.crash(scenario, k)
            deliver_after_crash(rig.work, AFTER_CRASH_MMDF if shape == "mmdf" else AFTER_CRASH)
            seen, leftovers = rig.next_view()
            where = f"{shape}: killed at step {k} {step!r} of {scenario}, then mail came"
            assert leftovers == [], where
            late = [i for i, (_, data) in enumerate(seen) if b"Subject: after crash" in data]
            assert late == [len(seen) - 1], where
            allowed = allowed_after_kill(step, scenario, untouched, before, committed)
            assert seen[:-1] in allowed, where
            checked += 1
    assert checked >= 30


def replacement_view(work, tmp_path):
    """What a session shows of a spool holding only REPLACEMENT."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    paths = SpoolPaths.for_user(make_cfg(work), USER, None)
    with open(paths.spool, "wb") as f:
        f.write(REPLACEMENT)
    return in_child(lambda: snapshot(work, "one"), tmp_path / "snap.pickle", expect_kill=False)[0]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("how", ["rewrite", "recreate"])
def test_spool_replaced_after_a_crash_by_a_file_with_the_same_inode_number(tmp_path, how):
    """Killed while the commit rewrites the spool; then the spool is replaced by another file
    with the same (st_dev, st_ino) (rewritten in place, or deleted and created again reusing
    the freed number). Recovery must not take it for the spool it was rewriting: the next
    session sees what the update kept, then the replacement's mail, each once."""
    rig = Rig(tmp_path / "spool", tmp_path, "new-mail")
    expected = replacement_view(rig.work, tmp_path)
    assert len(expected) == 2
    _untouched, _before, committed, _ = expected_outcomes(rig)
    steps = rig.steps("update")
    # From the moment the commit journal is in place (renamed) until it is removed, the next
    # session rolls the update forward; once it is gone, replacing the spool deletes mail.
    first = steps.index("update:journal-commit-rename") + 1
    last = steps.index("update:journal-unlink", first)
    chosen = {}
    for k in range(first, last + 1):
        chosen.setdefault(steps[k], k)
    assert "update:write-spool" in chosen and "update:fsync-spool" in chosen
    for step, k in chosen.items():
        rig.crash("update", k)
        if not replace_spool_keeping_inode_number(rig.work, REPLACEMENT, how):
            pytest.skip("no new file got the freed inode number on this file system")
        seen, leftovers = rig.next_view()
        where = f"killed at {step!r}, spool then replaced ({how})"
        assert leftovers == [], where
        assert seen == committed + expected, where


@pytest.mark.timeout(60)
def test_a_version_1_commit_journal_is_still_recovered(tmp_path):
    """A journal written by the previous build (version 1: no `head`) after a crash in the
    middle of the commit: this build rolls it forward by the inode number alone."""
    rig = Rig(tmp_path / "spool", tmp_path, "new-mail")
    _untouched, _before, committed, _ = expected_outcomes(rig)
    rig.crash("update", rig.steps("update").index("update:write-spool"))
    journal = SpoolPaths.for_user(make_cfg(rig.work), USER, None).journal
    with open(journal) as f:
        record = json.load(f)
    assert record["v"] == 2 and record["op"] == "commit" and "head" in record
    del record["head"]
    with open(journal, "w") as f:
        json.dump(dict(record, v=1), f)
    seen, leftovers = rig.next_view()
    assert leftovers == []
    assert seen == committed
