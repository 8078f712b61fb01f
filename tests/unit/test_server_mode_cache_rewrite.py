"""Server mode's cache after a rewrite comes from the writing, not from a second scan: the
messages mbox.copy_for_update reports for what it wrote must be exactly what a fresh scan of
the rewritten spool finds — every field of every message, whatever the spool looked like
(golden spools, CRLF, missing final LF, Status/X-UIDL lines of every kind, long and huge
header blocks). Where the writing cannot tell (Content-Length, MMDF, uw-kluge, no
update-status-headers) it says so and the spool is scanned, and the cache is still that scan.
"""

from __future__ import annotations

import dataclasses
import io
import os
import random

import pytest

from qpopper.config import Config
from qpopper.spool import cache, mbox
from qpopper.spool.maildrop import Maildrop
from qpopper.spool.paths import SpoolPaths
from tests.helpers.messages import from_line
from tests.helpers.mbox_golden import GOLDEN, GOLDEN_SPOOLS, SCAN_OPTIONS

USER = "alice"
FIELDS = [f.name for f in dataclasses.fields(mbox.Message)]
pytestmark = pytest.mark.timeout(120)


def fields(m: mbox.Message) -> dict:
    return {name: getattr(m, name) for name in FIELDS}


# Messages of every shape the write-back meets (the From line is added by `spool`).
SHAPES = {
    "plain": b"Subject: plain\n\nbody\n\n",
    "status": b"Subject: s\nStatus: O\n\nread before\n\n",
    "status-r": b"Subject: s\nstatus: RO\nX-Status: A\n\nbody\n\n",
    "two-status": b"Status: U\nSubject: s\nStatus: RO\n\nbody\n\n",
    "uidl-valid": b"X-UIDL: 0123456789abcdefXYZ\nSubject: u\n\nbody\n\n",
    "uidl-late": b"Subject: u\nX-UIDL: kept-uid-value-12345\nStatus: U\n\nbody\n\n",
    "uidl-short": b"X-UIDL: short\nSubject: u\n\nbody\n\n",
    "uidl-two": b"X-UIDL: first-uid-of-two-1234\nSubject: u\nx-uidl: second-uid-of-two\n\nb\n\n",
    "uidl-cont": b"X-UIDL: folded-uid-value-12345\n continued\nSubject: c\n\nbody\n\n",
    "no-headers": b"\nbody only\n\n",
    "one-lf": b"Subject: one\n\nbody ends with one LF\n",
    "no-final-lf": b"Subject: nolf\n\nlast line without LF",
    "final-cr": b"Subject: cr\n\nlast line ends in CR\r",
    "crlf": b"Subject: crlf\r\nStatus: O\r\n\r\nbody\r\n\r\n",
    "crlf-blank": b"Subject: crlf blank\n\r\nbody\n\n",
    "from-in-body": b"Subject: f\n\nFrom here on\n>From escaped\nFrom x Wed Dec  2 05:53 1992\n\n",
    "dots": b"Subject: dots\n\n.\n..\n.leading\n\n",
    "nul": b"Subject: nul\x00here\n\nbody \x00 nul\n\n",
    "long-header": b"Subject: " + b"x" * 3000 + b"\nStatus: O\n\nbody\n\n",
    "long-status": b"Subject: l\nStatus: R" + b"O" * 2000 + b"\n\nbody\n\n",
    "long-uidl": b"X-UIDL: " + b"u" * 1500 + b"\nSubject: l\n\nbody\n\n",
    "huge-headers": b"".join(b"X-Filler-%d: %s\n" % (i, b"f" * 60) for i in range(400))
                    + b"Status: O\n\nbody\n\n",
    "hashed-cont": b"Received: by a\n\tfolded\nDate: Wed, 2 Dec 1992\n\nbody\n\n",
}
NOT_RELOCATED = {
    # its one empty line is the framing line (docs/mbox.md): no blank line ends its headers
    "empty-body": b"Subject: empty\n\n",
    "content-length": b"Subject: cl\nContent-Length: 5\n\nbody\n\n",
    "no-blank-line": b"Subject: no blank line\nX-Other: y\n",
}


def spool(names, shapes=SHAPES) -> bytes:
    return b"".join(from_line(n) + shapes[name] for n, name in enumerate(names, 1))


def write_back(data: bytes, retrieved, *, options=None, kept=None):
    """Scan `data`, write every kept message back as the update does; returns the new bytes
    and, per kept message, what copy_for_update reported (None: not known)."""
    options = options or {}
    f = io.BytesIO(data)
    messages = mbox.scan(f, **options)
    out, reported, pos = [], [], 0
    for n, m in enumerate(m for m in messages if kept is None or m.number in kept):
        written = mbox.copy_for_update(f, m, out.append, retrieved=retrieved(m),
                                       update_status_headers=True, at=pos, number=n + 1)
        reported.append(written)
        pos = len(b"".join(out))
    return b"".join(out), reported


def assert_matches_a_fresh_scan(new: bytes, reported, options=None) -> int:
    """Every reported message equals the fresh scan's; returns how many were reported."""
    scanned = mbox.scan(io.BytesIO(new), **(options or {}))
    assert len(scanned) == len(reported)
    known = 0
    for fresh, told in zip(scanned, reported):
        if told is not None:
            assert fields(told) == fields(fresh), new[fresh.offset:fresh.end]
            known += 1
    return known


@pytest.mark.parametrize("retrieved", ["none", "all", "odd"])
@pytest.mark.parametrize("name", sorted(SHAPES))
def test_each_shape_is_reported_as_a_fresh_scan_finds_it(name, retrieved):
    pick = {"none": lambda m: False, "all": lambda m: True,
            "odd": lambda m: m.number % 2 == 1}[retrieved]
    # The shape alone, first and last, and between plain messages.
    for names in ([name], ["plain", name], [name, "plain"], ["plain", name, "plain", name]):
        new, reported = write_back(spool(names), pick)
        assert reported and all(r is not None for r in reported), names
        assert assert_matches_a_fresh_scan(new, reported) == len(reported)


@pytest.mark.parametrize("name", sorted(NOT_RELOCATED))
def test_what_the_writing_cannot_tell_is_left_to_a_scan(name):
    shapes = dict(SHAPES, **NOT_RELOCATED)
    new, reported = write_back(spool(["plain", name], shapes), lambda m: True)
    assert reported[1] is None                  # (no blank line: only as the last message)
    assert assert_matches_a_fresh_scan(new, reported) == 1


@pytest.mark.parametrize("old_style_uid", [False, True])
def test_random_spools_and_deletions(old_style_uid):
    rng = random.Random(20261127)
    names = sorted(SHAPES)
    options = {"old_style_uid": old_style_uid}
    for _ in range(60):
        chosen = [rng.choice(names) for _ in range(rng.randint(1, 12))]
        kept = {n for n in range(1, len(chosen) + 1) if rng.random() < 0.7}
        marked = {n for n in range(1, len(chosen) + 1) if rng.random() < 0.5}
        new, reported = write_back(spool(chosen), lambda m: m.number in marked,
                                   options=options, kept=kept)
        known = assert_matches_a_fresh_scan(new, reported, options)
        assert known == sum(r is not None for r in reported) >= len(reported) - 1


@pytest.mark.parametrize("name", GOLDEN_SPOOLS)
def test_golden_spools(name):
    options = SCAN_OPTIONS.get(name, {})
    data = (GOLDEN / f"{name}.mbox").read_bytes()
    new, reported = write_back(data, lambda m: m.number % 2 == 0, options=options)
    assert_matches_a_fresh_scan(new, reported, options)


# --- the Maildrop: the cache written after an update --------------------------------------------

def make(tmp_path, content: bytes, **options):
    cfg = Config.defaults().replace(spool_dir=str(tmp_path), server_mode=True, **options)
    paths = SpoolPaths.for_user(cfg, USER, None)
    with open(paths.spool, "wb") as f:
        f.write(content)
    os.chmod(paths.spool, 0o660)
    return cfg, paths


def cached(cfg, paths) -> list[dict]:
    with open(paths.cache, "rb") as f:
        user, state, options, messages = cache.decode(f.read())
    assert user == USER and options == cache.scan_options(cfg)
    assert state.size == os.path.getsize(paths.spool)
    return [fields(m) for m in messages]


def scanned(cfg, paths) -> list[dict]:
    with open(paths.spool, "rb") as f:
        return [fields(m) for m in mbox.scan(f, **cache.scan_options(cfg))]


class ScanSpy:
    """Records the regions mbox.scan is asked for (the real scan runs)."""

    def __init__(self, monkeypatch):
        self.regions = []
        real = mbox.scan

        def scan(f, **kw):
            self.regions.append((kw.get("start", 0), kw.get("end")))
            return real(f, **kw)

        monkeypatch.setattr(mbox, "scan", scan)


@pytest.mark.parametrize("fast_update", [False, True])
@pytest.mark.parametrize("new_mail", [b"", spool(["plain", "status"]),
                                      b"not a From line\n" + spool(["plain"])])
def test_cache_after_update_equals_a_fresh_scan_of_the_rewritten_spool(
        tmp_path, monkeypatch, fast_update, new_mail):
    names = sorted(SHAPES)
    cfg, paths = make(tmp_path, spool(names), fast_update=fast_update)
    drop = Maildrop.open(cfg, paths, USER, lock_step_s=0.05)
    with open(paths.spool, "ab") as f:          # delivered during the session
        f.write(new_mail)
    spy = ScanSpy(monkeypatch)
    drop.update({1, 4, 9}, {0, 2, 5, 7, 11})
    monkeypatch.undo()
    assert cached(cfg, paths) == scanned(cfg, paths)
    # The kept messages were not scanned again: at most the mail delivered during the session.
    size = os.path.getsize(paths.spool)
    if new_mail.startswith(b"From "):
        assert spy.regions == [(size - len(new_mail), size)]
    elif not new_mail:
        assert spy.regions == []
    else:                                        # junk after the last message: a full scan
        assert spy.regions[-1] == (0, size)
    # The next session starts from that cache and sees what a fresh scan sees.
    drop = Maildrop.open(cfg, paths, USER, lock_step_s=0.05)
    try:
        assert drop.scan_region == (size, size)
        assert [fields(m) for m in drop._all] == scanned(cfg, paths)
    finally:
        drop.close()


@pytest.mark.parametrize("options", [{"update_status_headers": False}, {"uw_kluge": True}])
def test_cache_is_a_scan_when_the_writing_cannot_tell(tmp_path, options):
    cfg, paths = make(tmp_path, spool(["plain", "status", "crlf"]), **options)
    drop = Maildrop.open(cfg, paths, USER, lock_step_s=0.05)
    drop.update({1}, {0})
    assert cached(cfg, paths) == scanned(cfg, paths)


def test_content_length_spool_falls_back_to_a_scan(tmp_path):
    shapes = dict(SHAPES, **NOT_RELOCATED)
    cfg, paths = make(tmp_path, spool(["plain", "content-length", "status"], shapes))
    drop = Maildrop.open(cfg, paths, USER, lock_step_s=0.05)
    drop.update({0}, {1})
    assert cached(cfg, paths) == scanned(cfg, paths)


def test_a_uid_that_would_not_read_back_is_left_to_a_scan():
    """A UID a scan would not take from its X-UIDL line (only a damaged cache could hold
    one): the write-back does not vouch for the message."""
    data = spool(["plain", "status"])
    f = io.BytesIO(data)
    first, second = mbox.scan(f)
    odd = dataclasses.replace(first, uid="has a space 0123456")
    assert mbox.copy_for_update(f, odd, [].append, retrieved=False,
                                update_status_headers=True, at=0, number=1) is None
    assert mbox.copy_for_update(f, second, [].append, retrieved=False,
                                update_status_headers=True, at=0, number=1) is not None
