"""Flags after `!` or `;` instead of `:` (what readers on file systems without `:` write): the message keeps its base name, its UID and its separator
(docs/maildir.md, "Info separators")."""

from __future__ import annotations

import dataclasses
import os
import time

import pytest

from qpopper.spool import maildir
from qpopper.spool.maildir_drop import MaildirDrop
from tests.helpers.maildirs import files, make_maildir

BASE = "1700000000.M1P1.host,S=22"
MESSAGE = b"Subject: one\n\nbody one\n"


def put(path, name, data=MESSAGE):
    """A message file as another reader leaves it, written a minute ago."""
    with open(os.path.join(path, "tmp", "x"), "wb") as f:
        f.write(data)
    a_minute_ago = time.time() - 60
    os.utime(os.path.join(path, "tmp", "x"), (a_minute_ago, a_minute_ago))
    os.rename(os.path.join(path, "tmp", "x"), os.path.join(path, name))


def rename(path, old, new):
    os.rename(os.path.join(path, old), os.path.join(path, new))


@pytest.mark.parametrize("sep", ["!", ";"])
def test_names_with_another_separator_are_split_as_with_a_colon(sep):
    name = f"cur/{BASE}{sep}2,FS"
    assert maildir.base_name(name) == BASE and maildir.flags_of(name) == "FS"
    assert maildir.info_separator(name) == sep and maildir.may_mark_seen(name)
    assert maildir.base_name(f"cur/A{sep}2,S:2,T") == f"A{sep}2,S"      # a colon comes first
    assert maildir.base_name(f"new/{BASE}") == BASE and maildir.info_separator(BASE) == ":"
    assert not maildir.may_mark_seen(f"cur/{BASE}:1,x")


@pytest.mark.parametrize("sep", ["!", ";"])
def test_a_retrieved_message_is_marked_seen_with_its_own_separator(tmp_path, sep):
    path, _ = make_maildir(tmp_path, [])
    put(path, f"cur/{BASE}{sep}2,F")
    drop = MaildirDrop.open(path, "qpt")
    assert [(m.uid, m.retrieved) for m in drop.messages] == [(BASE, False)]
    drop.update(set(), {0})
    assert files(path) == {f"cur/{BASE}{sep}2,FS": MESSAGE}


@pytest.mark.parametrize("sep", ["!", ";"])
def test_the_uid_stays_when_another_reader_changes_the_flags(tmp_path, sep):
    path, _ = make_maildir(tmp_path, [])
    put(path, f"cur/{BASE}{sep}2,")
    first = MaildirDrop.open(path, "qpt")
    uid = first.messages[0].uid
    first.close()
    rename(path, f"cur/{BASE}{sep}2,", f"cur/{BASE}{sep}2,S")
    again = MaildirDrop.open(path, "qpt")
    assert [(m.uid, m.retrieved) for m in again.messages] == [(uid, True)]
    again.close()


@pytest.mark.parametrize("sep", ["!", ";"])
def test_a_dele_is_done_after_another_reader_changed_the_flags(tmp_path, sep):
    path, _ = make_maildir(tmp_path, [])
    put(path, f"cur/{BASE}{sep}2,")
    drop = MaildirDrop.open(path, "qpt")
    rename(path, f"cur/{BASE}{sep}2,", f"cur/{BASE}{sep}2,RS")
    drop.update({0}, set())
    assert files(path) == {}


def test_an_earlier_index_keeps_the_uid_it_served_for_the_whole_name(tmp_path):
    """Before, `B!2,S` was its own base name and UID: a message the index knew keeps that UID
    after the upgrade, also when another reader changes its flags."""
    path, _ = make_maildir(tmp_path, [])
    put(path, f"cur/{BASE}!2,S")
    MaildirDrop.open(path, "qpt").close()
    index = maildir.load_index(path)
    maildir.store_index(path, dataclasses.replace(index, uids=[f"{BASE}!2,S"],
                                                  served=[f"{BASE}!2,S"]))
    rename(path, f"cur/{BASE}!2,S", f"cur/{BASE}!2,RS")
    drop = MaildirDrop.open(path, "qpt")
    assert [m.uid for m in drop.messages] == [f"{BASE}!2,S"]
    drop.close()
