"""A commit whose image is shorter than the spool (a delivery agent's empty lines left out)
writes the image and then cuts the spool to it, journaled so that a kill at any step loses,
changes and duplicates nothing (docs/maildrop.md, "The commit engine")."""

from __future__ import annotations

import errno
import json
import os

import pytest

from qpopper.pop3.responses import PopError
from qpopper.spool.maildrop import Maildrop
from tests.helpers.spoolcheck import (append, dies_in_child, killer_at, killer_at_step, read,
                                      spool_in)

USER = "alice"
FROM = b"From a@b Wed Dec  2 05:53:22 1992\n"
KEPT = FROM + b"Subject: 1\n\none\n\n"
DURING = FROM + b"Subject: 2\n\ntwo\n"              # its end left open for the agent to close
LATE = FROM + b"Subject: 3\n\nthree\n\n"
pytestmark = pytest.mark.timeout(120)


def open_drop(cfg, paths, hook=None) -> Maildrop:
    return Maildrop.open(cfg, paths, USER, lock_step_s=0.05, step_hook=hook)


def agent_padding(spool: bytes) -> bytes:
    """What an agent that makes the file end with an empty line before its From line
    writes first: a spool the crash left ending in NULs gets two LFs."""
    if not spool or spool.endswith(b"\n\n"):
        return b""
    return b"\n" if spool.endswith(b"\n") else b"\n\n"


def _update(cfg, paths, hook=None) -> None:
    drop = open_drop(cfg, paths, hook)
    append(paths.spool, DURING)
    drop.update(set(), {0})


def _committed(tmp_path, server: bool) -> tuple[bytes, list[str]]:
    """The spool an uninterrupted update leaves, and the steps of that update."""
    steps: list[str] = []
    (tmp_path / "ref").mkdir()
    cfg, paths = spool_in(tmp_path / "ref", USER, KEPT, server_mode=server)
    _update(cfg, paths, steps.append)
    return read(paths.spool), steps


@pytest.mark.parametrize("server", [False, True])
def test_mail_after_a_crash_of_the_commit_comes_out_as_delivered(tmp_path, server):
    """Killed at each step from the commit's journal record on; an agent then delivers,
    padding a spool that ends in NULs (the extension) with empty lines: the next login's
    roll-forward leaves that padding out whole, as an update does, so the spool is exactly
    what the agent's delivery after the update would have made it, byte for byte."""
    committed, steps = _committed(tmp_path, server)
    first = steps.index("update:journal-commit-rename") + 1
    last = steps.index("update:journal-unlink", first)
    expected = committed + agent_padding(committed) + LATE    # delivered after the update
    padded = 0
    for k in range(first, last + 1):
        where = f"killed at step {k} {steps[k]!r}"
        (tmp_path / str(k)).mkdir()
        cfg, paths = spool_in(tmp_path / str(k), USER, KEPT, server_mode=server)
        assert dies_in_child(lambda: _update(cfg, paths, killer_at(k))), where
        pad = agent_padding(read(paths.spool))
        padded += pad == b"\n\n"
        append(paths.spool, pad + LATE)
        drop = open_drop(cfg, paths)          # recovers, then takes the spool into the drop
        try:
            assert read(paths.temp_drop) == expected, where
        finally:
            drop.close()
        assert not os.path.lexists(paths.journal) and not os.path.lexists(paths.new_image)
    assert padded                                       # the extended spool was reached


PADDED = b"\n" * 200 + DURING + b"\n"         # more empty lines than the kept octets


def _cutting_update(cfg, paths, hook=None, padded: bytes = PADDED) -> None:
    drop = open_drop(cfg, paths, hook)
    append(paths.spool, padded)
    drop.update(set(), {0})


def _login(cfg, paths, hook=None) -> None:
    open_drop(cfg, paths, hook).close()


def _deliver(paths, mail: bytes) -> None:
    append(paths.spool, agent_padding(read(paths.spool)) + mail)


def _after(committed: bytes, *mails: bytes) -> bytes:
    for mail in mails:
        committed += agent_padding(committed) + mail
    return committed


def _taken(cfg, paths) -> bytes:
    """What the next login finds: it recovers, then takes the spool into the drop."""
    drop = open_drop(cfg, paths)
    try:
        assert not os.path.lexists(paths.journal) and not os.path.lexists(paths.new_image)
        return read(paths.temp_drop)
    finally:
        drop.close()


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
@pytest.mark.parametrize("late", [False, True])
def test_a_kill_at_any_step_of_a_commit_that_cuts_the_spool_changes_no_mail(tmp_path, late,
                                                                            eol):
    """The update's image is shorter than the spool (200 empty lines, LF or CRLF, left
    out): killed at each step from its journal record on, with or without mail delivered
    after the crash, the next login finds the committed spool, then that mail as
    delivered."""
    padded = eol * 200 + DURING + b"\n"
    steps: list[str] = []
    (tmp_path / "ref").mkdir()
    cfg, paths = spool_in(tmp_path / "ref", USER, KEPT)
    _cutting_update(cfg, paths, steps.append, padded)
    committed = read(paths.spool)
    assert "update:cut-spool" in steps and len(committed) < len(KEPT) + len(padded)
    first = steps.index("update:journal-commit-rename") + 1
    for k in range(first, steps.index("update:journal-unlink", first) + 1):
        where = f"killed at step {k} {steps[k]!r}"
        (tmp_path / str(k)).mkdir()
        cfg, paths = spool_in(tmp_path / str(k), USER, KEPT)
        assert dies_in_child(lambda: _cutting_update(cfg, paths, killer_at(k), padded)), where
        if late:
            _deliver(paths, LATE)
        assert _taken(cfg, paths) == (_after(committed, LATE) if late else committed), where


def test_a_kill_while_recovering_a_cut_then_more_mail_changes_no_mail(tmp_path):
    """Killed in the cutting commit, mail delivered, killed again at each step of the
    recovery, more mail delivered: the third login finds the committed spool and both
    deliveries, each once and as delivered."""
    later = FROM + b"Subject: 4\n\nfour\n"
    (tmp_path / "ref").mkdir()
    cfg, paths = spool_in(tmp_path / "ref", USER, KEPT)
    update_steps: list[str] = []
    _cutting_update(cfg, paths, update_steps.append)
    expected = _after(read(paths.spool), LATE, later)
    checked = 0
    for name in ("update:write-spool-cut-marker", "update:journal-cut-rename",
                 "update:cut-spool", "update:fsync-spool"):
        k = update_steps.index(name) + (name == "update:fsync-spool")   # after the cut too

        def crashed(where):
            os.makedirs(where)
            cfg, paths = spool_in(where, USER, KEPT)
            assert dies_in_child(lambda: _cutting_update(cfg, paths, killer_at(k)))
            _deliver(paths, LATE)
            return cfg, paths
        recovery: list[str] = []
        cfg, paths = crashed(tmp_path / f"{k}-steps")
        _login(cfg, paths, recovery.append)
        for j, step in enumerate(recovery):
            if not step.startswith("recover:"):
                continue
            cfg, paths = crashed(tmp_path / f"{k}-{j}")
            assert dies_in_child(lambda: _login(cfg, paths, killer_at(j))), (name, step)
            _deliver(paths, later)
            assert _taken(cfg, paths) == expected, (name, step)
            checked += 1
    assert checked >= 20


def test_the_cut_is_journaled_in_a_version_an_older_build_refuses(tmp_path):
    """A version-2 build would take the written image for the whole commit and leave the
    spool's old end after it: the records of a cutting commit are version 3, which it
    refuses to recover (docs/maildrop.md, "The journal")."""
    cfg, paths = spool_in(tmp_path, USER, KEPT)
    assert dies_in_child(lambda: _cutting_update(cfg, paths, killer_at_step("update:cut-spool")))
    record = json.loads(read(paths.journal))
    assert (record["op"], record["v"]) == ("cut", 3) and record["len"] < record["spool_len"]
    assert read(paths.spool)[record["len"]] == 0               # the NUL: not cut yet


@pytest.mark.parametrize("cutting", [False, True])
def test_a_recovery_that_finds_the_commit_complete_fsyncs_the_spool_before_the_journal_goes(
        tmp_path, monkeypatch, cutting):
    """Killed right after the cut (the ftruncate), or after the marker byte of an image longer
    than the spool, before the fsync that follows: the next login finds the commit complete,
    and must make the spool durable before it clears the journal - a system crash after that
    could otherwise bring back the uncut spool (or the marker NUL) with no journal to tell."""
    cfg, paths = spool_in(tmp_path, USER, KEPT)
    update = _cutting_update if cutting else _update
    assert dies_in_child(lambda: update(cfg, paths, killer_at_step("update:fsync-spool")))
    ino = os.stat(paths.spool).st_ino
    events: list[str] = []
    fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        if os.fstat(fd).st_ino == ino:
            events.append("fsync of the spool")
        fsync(fd)
    monkeypatch.setattr(os, "fsync", recording_fsync)
    _login(cfg, paths, events.append)
    assert "fsync of the spool" in events[:events.index("recover:journal-unlink")], events


def _lengths(tmp_path, padding: int) -> tuple[int, int, bytes, list[str]]:
    """An update after `padding` empty lines and DURING: the spool's length L after it, its
    length Z before it, the spool after it, and the update's steps."""
    (tmp_path / f"probe{padding}").mkdir()
    cfg, paths = spool_in(tmp_path / f"probe{padding}", USER, KEPT)
    steps: list[str] = []
    _cutting_update(cfg, paths, steps.append, b"\n" * padding + DURING + b"\n")
    committed = read(paths.spool)
    return len(committed), padding + len(DURING) + 1, committed, steps


@pytest.mark.parametrize("shorter_by", [0, 1, 2])
def test_a_kill_at_any_step_when_the_image_is_about_as_long_as_the_spool(tmp_path, shorter_by):
    """L == Z (no cut), L == Z - 1 (the NUL is the spool's last octet, [L+1, Z) empty) and
    L == Z - 2: killed at each step from the commit's record on, with or without mail after
    the crash, the next login finds the committed spool, then that mail as delivered."""
    size, z, _, _ = _lengths(tmp_path, 300)
    padding = 300 - (z - size) + shorter_by
    size, z, committed, steps = _lengths(tmp_path, padding)
    assert z - size == shorter_by and ("update:cut-spool" in steps) == (shorter_by > 0)
    padded = b"\n" * padding + DURING + b"\n"
    first = steps.index("update:journal-commit-rename") + 1
    for late in (False, True):
        for k in range(first, steps.index("update:journal-unlink", first) + 1):
            where = f"L = Z - {shorter_by}, killed at step {k} {steps[k]!r}, late={late}"
            (tmp_path / f"{late}-{k}").mkdir()
            cfg, paths = spool_in(tmp_path / f"{late}-{k}", USER, KEPT)
            assert dies_in_child(lambda: _cutting_update(cfg, paths, killer_at(k), padded)), where
            if late:
                _deliver(paths, LATE)
            assert _taken(cfg, paths) == (_after(committed, LATE) if late else committed), where


def failing_at(k: int, code: int):
    """A step hook that raises OSError(code) at the k-th step (0-based)."""
    count = [0]

    def hook(name: str) -> None:
        count[0] += 1
        if count[0] - 1 == k:
            raise OSError(code, os.strerror(code))
    return hook


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_an_error_at_any_step_of_a_commit_that_cuts_the_spool_changes_no_mail(tmp_path, code):
    """No room, or an I/O error, at each step of a cutting update from its journal record on:
    the session fails; mail is delivered; the next login finds the committed or the
    uncommitted spool, then that mail, as delivered."""
    steps: list[str] = []
    (tmp_path / "ref").mkdir()
    cfg, paths = spool_in(tmp_path / "ref", USER, KEPT)
    _cutting_update(cfg, paths, steps.append)
    committed = read(paths.spool)
    (tmp_path / "ref2").mkdir()
    cfg, paths = spool_in(tmp_path / "ref2", USER, KEPT)
    drop = open_drop(cfg, paths)
    append(paths.spool, PADDED)
    drop.close()
    uncommitted = _taken(cfg, paths)
    first = steps.index("update:journal-commit-write")
    for k in range(first, steps.index("update:journal-unlink", first) + 1):
        if "lock" in steps[k]:
            continue                    # the spool lock's own failures: its tests
        where = f"failed at step {k} {steps[k]!r}"
        (tmp_path / str(k)).mkdir()
        cfg, paths = spool_in(tmp_path / str(k), USER, KEPT)
        try:
            _cutting_update(cfg, paths, failing_at(k, code))
        except PopError:
            pass
        _deliver(paths, LATE)
        assert _taken(cfg, paths) in (_after(committed, LATE), _after(uncommitted, LATE)), where
