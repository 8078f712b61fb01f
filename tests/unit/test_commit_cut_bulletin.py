"""The commit's markers (a NUL at L until the cut, the extension's NUL at Z) and a bulletin
append's marker (a NUL at the offset it appends at) are the same byte when a bulletin is
appended to the spool of a session killed before it cleared its journal: the recovery must not
take the bulletin's NUL for its own and cut off, or write over, the mail delivered after it
(docs/maildrop.md, "The commit engine"; docs/bulletins.md, "Delivery, crash-safe")."""

from __future__ import annotations

import contextlib
import os

import pytest

from qpopper import bulletins
from qpopper.auth import Login
from qpopper.pop3.responses import PopError, RespCode
from qpopper.spool.maildrop import Maildrop
from qpopper.spool.paths import SpoolPaths
from tests.helpers.bulletin_cases import HOST, STAMP, bulletin_text
from tests.helpers.spoolcheck import append, dies_in_child, killer_at_step, read, spool_in
from tests.unit.test_commit_cut import (DURING, FROM, KEPT, LATE, USER, _deliver, _taken,
                                        open_drop)

PADDING = 2000          # octets of empty lines the agent wrote before DURING: Z - L ~ 1900
pytestmark = pytest.mark.timeout(120)


def _cutting_update(cfg, paths, hook=None) -> None:
    drop = open_drop(cfg, paths, hook)
    append(paths.spool, b"\n" * PADDING + DURING + b"\n")
    drop.update(set(), {0})


@contextlib.contextmanager
def journal_hidden(paths):
    """The maildrop's journal out of sight of a bulletin delivery, as a build that does not
    look for it sees the spool."""
    os.rename(paths.journal, paths.journal + ".hidden")
    try:
        yield
    finally:
        os.rename(paths.journal + ".hidden", paths.journal)


def _bulletin(cfg, home, hook=None) -> int:
    paths = SpoolPaths.for_user(cfg, USER, str(home))
    login = Login(USER, os.geteuid(), os.getegid(), str(home), "USER")
    return bulletins.deliver(cfg, login, paths, HOST, lambda *_: None, step_hook=hook,
                             lock_step_s=0.05, clock=lambda: STAMP)


THEN = ["bulletin unchanged", "bulletin changed", "bulletins off"]


def _completed_once(got: bytes, then: str) -> None:
    """With its files unchanged, the half copy is completed before the recovery runs: its
    NUL gone, the recovery takes the bulletin for mail delivered after the crash, once and
    whole. (Recovered first, the NUL would be taken for the commit's own marker.)"""
    if then == "bulletin unchanged":
        assert got.count(b"Subject: bulletin\n\nBody.\n") == 1 and b"\0" not in got


def _then_mail_and_a_login(cfg, paths, home, then: str, mail: bytes):
    """After a half-appended bulletin: the bulletin is left as it was, edited, or bulletins
    are switched off; an agent delivers `mail`, then the next login: bulletins settle first
    (the half copy is completed in place, or left when its files changed), then the maildrop
    recovers the journal. Its cfg, and what it takes into the drop."""
    if then == "bulletin unchanged":
        pass
    elif then == "bulletin changed":
        with open(os.path.join(cfg.bulldir, "1.b"), "wb") as f:
            f.write(bulletin_text("bulletin, edited"))
    else:
        cfg = cfg.replace(bulldir=None)
    _deliver(paths, mail)
    if cfg.bulldir:
        _bulletin(cfg, home)
    return cfg, _taken(cfg, paths)


@pytest.mark.parametrize("then", THEN)
def test_mail_after_a_half_appended_bulletin_on_a_cut_spool_is_kept(tmp_path, then):
    bulldir, home = tmp_path / "bulls", tmp_path / "home"
    bulldir.mkdir(), home.mkdir()
    (bulldir / "1.b").write_bytes(bulletin_text("bulletin"))
    (tmp_path / "ref").mkdir()
    cfg, paths = spool_in(tmp_path / "ref", USER, KEPT)
    _cutting_update(cfg, paths)
    committed = read(paths.spool)

    (tmp_path / "s").mkdir()
    cfg, paths = spool_in(tmp_path / "s", USER, KEPT, bulldir=str(bulldir))
    # 1. the session dies after the cut, before its journal is cleared
    assert dies_in_child(lambda: _cutting_update(cfg, paths, killer_at_step("update:fsync-spool")))
    assert read(paths.spool) == committed and os.path.exists(paths.journal)
    # 2. a login appends a bulletin and dies before its marker byte (a NUL at L): one that
    # does not wait for the journal, as an older build on another host of the NFS spool
    # (whose login then refuses the version-3 journal)
    with journal_hidden(paths):
        assert dies_in_child(lambda: _bulletin(cfg, home,
                                               killer_at_step("bulletins:write-spool-marker")))
    assert read(paths.spool)[len(committed)] == 0
    cfg, got = _then_mail_and_a_login(cfg, paths, home, then, LATE)
    assert got.startswith(committed)
    assert LATE in got, "the mail delivered after the crash is gone"
    _completed_once(got, then)


BIG_KEPT = FROM + b"Subject: 1\n\n" + b"kept line\n" * 300 + b"\n"        # L - Z ~ 3000
BIG_LATE = FROM + b"Subject: 3\n\n" + b"late line\n" * 600 + b"\n"


@pytest.mark.parametrize("then", THEN)
def test_mail_after_a_half_appended_bulletin_on_a_spool_not_yet_extended_is_kept(tmp_path,
                                                                                 then):
    """The same with an image longer than the spool, the session killed after its `commit`
    record but before the extension: the bulletin's NUL lands at Z, where the extension's
    zero fill would be, and the recovery must not write the image over the mail after it."""
    bulldir, home = tmp_path / "bulls", tmp_path / "home"
    bulldir.mkdir(), home.mkdir()
    (bulldir / "1.b").write_bytes(bulletin_text("bulletin"))
    cfg, paths = spool_in(tmp_path, USER, BIG_KEPT, bulldir=str(bulldir))

    def update(hook):
        drop = open_drop(cfg, paths, hook)
        append(paths.spool, DURING)
        drop.update(set(), set())
    assert dies_in_child(lambda: update(killer_at_step("update:extend-spool")))
    # the next login's bulletin append, killed before its marker byte (a NUL at Z), if it
    # gets that far: this build's waits for the journal; an older build's (on another host
    # of the NFS spool) does not, and its half copy's NUL lands at Z
    older = then == "bulletin unchanged"
    z = os.path.getsize(paths.spool)
    with journal_hidden(paths) if older else contextlib.nullcontext():
        died = dies_in_child(lambda: _bulletin(cfg, home,
                                               killer_at_step("bulletins:write-spool-marker")))
    assert died == older and (read(paths.spool)[z:z + 1] == b"\0") == older
    cfg, got = _then_mail_and_a_login(cfg, paths, home, then, BIG_LATE)
    assert got.count(b"Subject: 1\n") == 1 and b"kept line\n" * 300 in got and DURING in got
    assert BIG_LATE in got, "the mail delivered after the crash is gone"
    _completed_once(got, then)
    if cfg.bulldir:                       # delivered by the login after the recovery
        assert _bulletin(cfg, home) == (0 if older else 1)


def test_a_second_login_during_a_session_copies_no_bulletin(tmp_path):
    """A session's update takes what the spool holds beyond its drop as new mail: a
    bulletin copy made by a second login meanwhile, killed half way, would become mail with
    its NUL (and the bulletin come again). The bulletins run under the session lock, so
    that login is refused [IN-USE] first; the next login after the session delivers them."""
    bulldir, home = tmp_path / "bulls", tmp_path / "home"
    bulldir.mkdir(), home.mkdir()
    (bulldir / "1.b").write_bytes(bulletin_text("bulletin"))
    cfg, paths = spool_in(tmp_path, USER, KEPT, bulldir=str(bulldir))
    ran = []

    def second_login():
        return Maildrop.open(cfg, paths, USER, lock_step_s=0.05,
                             under_session_lock=lambda: ran.append(_bulletin(cfg, home)))
    drop = open_drop(cfg, paths)
    append(paths.spool, DURING)
    with pytest.raises(PopError) as refused:
        second_login()
    assert refused.value.code == RespCode.IN_USE and ran == []
    assert read(paths.spool) == DURING
    drop.update(set(), set())
    second_login().close()
    assert ran == [1]
    got = _taken(cfg, paths)
    assert got.count(b"Subject: bulletin\n\nBody.\n") == 1 and b"\0" not in got


def test_an_older_build_s_half_copy_of_a_changed_bulletin_at_z_keeps_the_mail_after_it(
        tmp_path):
    """An older build's half copy at Z of a spool not yet extended, its bulletin edited
    before the next login: the settle leaves it (its files changed), so its NUL stays at Z,
    where the extension's zero fill would be. Its own octets after that NUL are neither the
    image's nor zeros: the recovery takes it for mail after the crash, not for a partly
    written extension, and does not write the image over what follows it."""
    bulldir, home = tmp_path / "bulls", tmp_path / "home"
    bulldir.mkdir(), home.mkdir()
    (bulldir / "1.b").write_bytes(bulletin_text("bulletin"))
    cfg, paths = spool_in(tmp_path, USER, BIG_KEPT, bulldir=str(bulldir))

    def update():
        drop = open_drop(cfg, paths, killer_at_step("update:extend-spool"))
        append(paths.spool, DURING)
        drop.update(set(), set())
    assert dies_in_child(update)
    z = os.path.getsize(paths.spool)
    with journal_hidden(paths):                     # an older build's login, killed
        assert dies_in_child(lambda: _bulletin(cfg, home,
                                               killer_at_step("bulletins:write-spool-marker")))
    assert read(paths.spool)[z:z + 1] == b"\0"
    cfg, got = _then_mail_and_a_login(cfg, paths, home, "bulletin changed", BIG_LATE)
    assert got.count(b"Subject: 1\n") == 1 and b"kept line\n" * 300 in got and DURING in got
    assert BIG_LATE in got, "the mail delivered after the crash is gone"
