"""The Maildir index against changes during a listing and in place (docs/maildir.md, "The
index")."""

from __future__ import annotations

import os
import time
import types

from qpopper.spool import maildir
from qpopper.spool.maildir_drop import MaildirDrop
from tests.helpers.maildirs import make_maildir, retr


def deliver(path, name, data):
    with open(os.path.join(path, "tmp", name), "wb") as f:
        f.write(data)
    os.rename(os.path.join(path, "tmp", name), os.path.join(path, "new", name))


def test_a_delivery_during_a_slow_listing_is_seen_at_the_next_login(tmp_path, monkeypatch):
    """On a file system with one-second times new/'s stamp does not change when a message
    arrives in the stamp's second; the listing then takes long. The index must be judged as
    of the listing's start, not its end."""
    path, _ = make_maildir(tmp_path, [b"Subject: old\n\nold\n"])
    stamp = time.time_ns()
    for sub in maildir.SUBDIRS:
        os.utime(os.path.join(path, sub), ns=(stamp, stamp))
    measure = maildir._measure

    def slow_measure(where, name):
        if not os.path.exists(os.path.join(path, "new", "1700000099.M2P2.host")):
            deliver(path, "1700000099.M2P2.host", b"Subject: new\n\nhello\n")
            os.utime(os.path.join(path, "new"), ns=(stamp, stamp))     # the same tick
            late = time.time_ns() + 5 * maildir.SETTLE_NS              # a long listing
            monkeypatch.setattr(maildir, "time", types.SimpleNamespace(time_ns=lambda: late))
        return measure(where, name)
    monkeypatch.setattr(maildir, "_measure", slow_measure)
    MaildirDrop.open(path, "qpt").close()
    monkeypatch.undo()
    drop = MaildirDrop.open(path, "qpt")
    drop.close()
    assert "new/1700000099.M2P2.host" in [m.name for m in drop.messages]


def test_a_file_changed_in_place_is_measured_again_at_the_next_listing(tmp_path):
    path, keys = make_maildir(tmp_path, [b"Subject: one\n\n" + b"long body line\n" * 100])
    MaildirDrop.open(path, "qpt").close()
    with open(os.path.join(path, "new", keys[0]), "r+b") as f:
        f.truncate(20)
    deliver(path, "1700000001.M2P2.host", b"Subject: two\n\nx\n")    # new/ listed again
    drop = MaildirDrop.open(path, "qpt")
    drop.close()
    assert {m.name: m.octets for m in drop.messages} == {
        f"new/{keys[0]}": len(b"Subject: one\r\n\r\nlong b\r\n"),
        "new/1700000001.M2P2.host": len(b"Subject: two\r\n\r\nx\r\n")}


def test_a_renamed_file_keeps_its_measurement(tmp_path, monkeypatch):
    """UPDATE's seen-marking and another reader's flag changes rename files: their listing
    reads none of them again."""
    path, keys = make_maildir(tmp_path, [b"Subject: %d\n\nbody\n" % n for n in range(3)])
    drop = MaildirDrop.open(path, "qpt")
    measured = []
    measure = maildir._measure
    monkeypatch.setattr(maildir, "_measure", lambda *a: measured.append(a) or measure(*a))
    drop.update(set(), {0, 1})
    os.rename(os.path.join(path, "new", keys[2]), os.path.join(path, "cur", keys[2] + ":2,F"))
    drop = MaildirDrop.open(path, "qpt")
    drop.close()
    assert measured == [] and sorted(m.name for m in drop.messages) == sorted(
        [f"cur/{keys[0]}:2,S", f"cur/{keys[1]}:2,S", f"cur/{keys[2]}:2,F"])


def test_a_known_file_renamed_during_the_listing_stays_in_the_session(tmp_path, monkeypatch):
    """Another reader renames a known message after the directories are listed and before
    its lstat: the index's values stay under the listed name, and RETR finds it again."""
    path, keys = make_maildir(tmp_path, [b"Subject: %d\n\nbody\n" % n for n in range(3)])
    MaildirDrop.open(path, "qpt").close()
    deliver(path, "1700000099.M2P2.host", b"Subject: new\n\nx\n")      # new/ listed again
    moved = sorted(keys)[1]
    listings = []
    scandir = os.scandir

    def renaming_scandir(where):
        entries = list(scandir(where))
        listings.append(where)
        if len(listings) == len(maildir.SUBDIRS):            # both listed: an IMAP flag
            os.rename(os.path.join(path, "new", moved),
                      os.path.join(path, "cur", moved + ":2,S"))
        return iter(entries)
    monkeypatch.setattr(os, "scandir", renaming_scandir)
    drop = MaildirDrop.open(path, "qpt")
    monkeypatch.undo()
    try:
        assert sorted(m.base for m in drop.messages) == sorted(keys + ["1700000099.M2P2.host"])
        index = [m.base for m in drop.messages].index(moved)
        drop.check_available(index)
        assert retr(drop, index) == b"Subject: 1\r\n\r\nbody\r\n"
    finally:
        drop.close()
