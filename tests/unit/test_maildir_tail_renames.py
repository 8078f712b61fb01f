"""A message another program renames into a base name of its own, its base name followed by
`,` and a tail (mbsync's `,U=<n>`, or more than one attribute), keeps its UID: at
the next login, in the session that saw the rename, and through UPDATE's journal. A file
that only has such a name (a copy, a file on a reused inode with another time or size) gets
none, and no UID goes to two files (docs/maildir.md, "What a message is")."""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import time

import pytest

from qpopper.pop3.responses import PopError
from qpopper.spool import maildir
from qpopper.spool.maildir_drop import MaildirDrop, file_identity, finish_journal, write_journal
from tests.helpers.maildirs import (FIRST, files, make_maildir, retr, settle, two_messages,
                                    wire)
from tests.unit.test_maildir_uids import put, uids_by_subject

BASE = "1700000000.M1P1.host,S=18"
"""A delivery's base name with a `,` of its own (Dovecot's and Courier's `,S=<octets>`)."""
OTHER = "1700000001.M2P2.host"
TAILS = {"mbsync": ",U=7:2,S", "two-attributes": ",U=7,X=0123456789abcdef:2,S",
         "mbsync-windows": ",U=7!2,S"}


def two_deliveries(tmp_path) -> tuple[str, dict[bytes, str]]:
    path, _ = make_maildir(tmp_path, [])
    put(path, f"new/{BASE}", b"Subject: synced\n\nA\n")
    put(path, f"new/{OTHER}", b"Subject: other\n\nB\n")
    return path, uids_by_subject(path)


def rename(path, old, new):
    os.rename(os.path.join(path, old), os.path.join(path, new))


@pytest.mark.parametrize("tool", sorted(TAILS))
def test_a_message_a_sync_tool_renames_into_its_own_base_name_keeps_its_uid(tmp_path, tool):
    path, first = two_deliveries(tmp_path)
    assert first == {b"Subject: synced\n": BASE, b"Subject: other\n": OTHER}
    rename(path, f"new/{BASE}", f"cur/{BASE}{TAILS[tool]}")
    assert uids_by_subject(path) == first
    tail = TAILS[tool].replace("2,S", "2,RS")             # then new flags: as ever
    rename(path, f"cur/{BASE}{TAILS[tool]}", f"cur/{BASE}{tail}")
    assert uids_by_subject(path) == first
    at = tail.rindex("2,RS") - 1
    again = f"{tail[:at]},X=1{tail[at:]}"                       # a second tail on it
    rename(path, f"cur/{BASE}{tail}", f"cur/{BASE}{again}")
    assert uids_by_subject(path) == first


def test_a_message_with_an_x_uidl_header_keeps_its_uid_as_served(tmp_path):
    """The header's value is measured again for the new name, and the UID as served stays,
    also where a copy had made it another."""
    path, _ = make_maildir(tmp_path, [])
    header = b"X-UIDL: abcdefghijklmnop\n"
    put(path, f"new/{OTHER}", b"Subject: holder\n" + header + b"\nA\n")
    put(path, f"new/{BASE}", b"Subject: copy\n" + header + b"\nB\n")
    first = uids_by_subject(path)
    assert first[b"Subject: copy\n"] == "abcdefghijklmnop"      # the first delivered
    assert first[b"Subject: holder\n"] == OTHER
    rename(path, f"new/{BASE}", f"cur/{BASE},U=3:2,S")
    rename(path, f"new/{OTHER}", f"cur/{OTHER},U=4:2,S")
    assert uids_by_subject(path) == first


@pytest.mark.parametrize("renamed", [
    f"cur/{BASE},U=12:2,S",                                     # mbsync, after UIDVALIDITY
    "cur/1700000500_0.4242.laptop,U=7,FMD5=0123456789abcdef0123456789abcdef:2,S"])
def test_a_rename_that_rewrites_the_base_name_gives_a_new_uid(tmp_path, renamed):
    """mbsync rewrites `,U=7` to `,U=12` after the folder's UIDVALIDITY changed; offlineimap's
    change_message_uid renames to a whole new name: neither is the old base name with a
    tail, so the file is served under its new base name (docs/maildir.md, "What a message
    is")."""
    path, first = two_deliveries(tmp_path)
    rename(path, f"new/{BASE}", f"cur/{BASE},U=7:2,S")
    assert uids_by_subject(path) == first
    rename(path, f"cur/{BASE},U=7:2,S", renamed)
    assert uids_by_subject(path) == {b"Subject: synced\n": maildir.base_name(renamed[4:]),
                                     b"Subject: other\n": OTHER}


def test_a_copy_under_a_gone_messages_name_with_a_tail_gets_a_uid_of_its_own(tmp_path):
    """Another inode: a copy (cp, a restore), not a rename."""
    path, first = two_deliveries(tmp_path)
    put(path, f"cur/{BASE},U=7:2,S", b"Subject: synced\n\nA\n")
    os.unlink(os.path.join(path, f"new/{BASE}"))
    assert uids_by_subject(path) == {b"Subject: synced\n": f"{BASE},U=7",
                                     b"Subject: other\n": OTHER}


@pytest.mark.parametrize("differs", ["time", "size"])
def test_a_file_on_a_gone_messages_reused_inode_with_another_time_or_size_gets_none(
        tmp_path, differs):
    """Inode numbers are reused after a delete (ext4): a file with the gone message's base
    name, a tail and its inode is taken for it only with its octets and time too (a rename
    keeps them). The reuse is set by hand in the index, as it is the file system's choice."""
    path, first = two_deliveries(tmp_path)
    old = os.lstat(os.path.join(path, f"new/{BASE}"))
    os.unlink(os.path.join(path, f"new/{BASE}"))
    name = f"cur/{BASE},U=7:2,S"
    put(path, name, b"Subject: synced\n\nA\n" if differs == "time" else b"Subject: longer\n\nAB\n")
    if differs == "size":
        os.utime(os.path.join(path, name), ns=(old.st_atime_ns, old.st_mtime_ns))
    index = maildir.load_index(path)
    at = index.names.index(f"new/{BASE}")
    inodes = list(index.inodes)
    inodes[at] = os.lstat(os.path.join(path, name)).st_ino
    maildir.store_index(path, dataclasses.replace(index, inodes=inodes))
    assert BASE not in uids_by_subject(path).values()
    assert f"{BASE},U=7" in uids_by_subject(path).values()


def test_the_gone_messages_uid_only_while_no_file_has_its_base_name_and_inode(tmp_path):
    """Linked under a name with a tail while its own name stays: two files listed, two UIDs
    (UIDs are unique within a listing); once the old name goes, the other keeps its own."""
    path, first = two_deliveries(tmp_path)
    os.link(os.path.join(path, f"new/{BASE}"), os.path.join(path, f"cur/{BASE},U=7:2,S"))
    drop = MaildirDrop.open(path, "qpt")
    drop.close()
    uids = sorted(m.uid for m in drop.messages)
    assert uids == sorted([BASE, f"{BASE},U=7", OTHER])
    os.unlink(os.path.join(path, f"new/{BASE}"))
    assert uids_by_subject(path) == {b"Subject: synced\n": f"{BASE},U=7",
                                     b"Subject: other\n": OTHER}


def test_two_names_with_tails_of_one_gone_file_give_its_uid_to_one(tmp_path):
    path, first = two_deliveries(tmp_path)
    os.link(os.path.join(path, f"new/{BASE}"), os.path.join(path, f"cur/{BASE},U=8:2,S"))
    rename(path, f"new/{BASE}", f"cur/{BASE},U=7:2,S")
    drop = MaildirDrop.open(path, "qpt")
    drop.close()
    uids = [m.uid for m in drop.messages]
    assert len(set(uids)) == len(uids) == 3 and BASE in uids and OTHER in uids


def test_renamed_with_a_tail_during_the_session_it_is_retrieved_and_deleted(tmp_path):
    path, first, second = two_messages(tmp_path)
    drop = MaildirDrop.open(path, "qpt")
    try:
        index = [m.base for m in drop.messages].index(first)
        rename(path, f"new/{first}", f"cur/{first},U=7:2,S")
        assert retr(drop, index) == wire(FIRST)
        drop.update(deleted={index}, retrieved=set())
    finally:
        drop.close()
    assert list(files(path)) == [f"new/{second}"]


def test_renamed_with_a_tail_during_the_session_it_is_marked_seen_and_keeps_its_uid(tmp_path):
    path, first, second = two_messages(tmp_path)
    drop = MaildirDrop.open(path, "qpt")
    try:
        index = [m.base for m in drop.messages].index(first)
        rename(path, f"new/{first}", f"cur/{first},U=7:2,F")
        assert retr(drop, index) == wire(FIRST)
        drop.update(deleted=set(), retrieved={index})
    finally:
        drop.close()
    assert sorted(files(path)) == [f"cur/{first},U=7:2,FS", f"new/{second}"]
    drop = MaildirDrop.open(path, "qpt")
    drop.close()
    assert sorted(m.uid for m in drop.messages) == sorted([first, second])


def test_a_journalled_delete_finds_the_file_renamed_with_a_tail_since(tmp_path):
    path, first, second = two_messages(tmp_path)
    st = os.lstat(os.path.join(path, f"new/{first}"))
    write_journal(path, [["unlink", f"new/{first}", *file_identity(st)]], lambda step: None)
    rename(path, f"new/{first}", f"cur/{first},U=7:2,S")
    assert finish_journal(path, lambda step: None) == []
    assert list(files(path)) == [f"new/{second}"]


@pytest.mark.parametrize("listings", [1, maildir.LISTINGS])
def test_renamed_with_a_tail_while_the_directories_are_listed_it_is_one_message(
        tmp_path, monkeypatch, listings):
    """new/ is listed, then mbsync renames a message into cur/ with a tail before cur/ is
    listed: one inode under both names. One message, under its new name and its UID, whether
    the listing is made again (the stamps moved) or not (1: as in one clock tick)."""
    monkeypatch.setattr(maildir, "LISTINGS", listings)
    path, first, second = two_messages(tmp_path)
    put(path, "new/1999999999.M1P1.other", b"Subject: third\n\nx\n")    # new/ changed: listed
    real_scandir = os.scandir

    def scandir_then_rename(directory):
        if str(directory).endswith("/cur") and os.path.exists(os.path.join(path, "new", first)):
            rename(path, f"new/{first}", f"cur/{first},U=7:2,S")
        return real_scandir(directory)
    monkeypatch.setattr(maildir.os, "scandir", scandir_then_rename)
    messages = maildir.scan(path)
    monkeypatch.undo()
    assert [(m.name, m.uid) for m in messages] == [
        (f"cur/{first},U=7:2,S", first), (f"new/{second}", second),
        ("new/1999999999.M1P1.other", "1999999999.M1P1.other")]
    assert [m.uid for m in maildir.scan(path)] == [m.uid for m in messages]


@pytest.mark.parametrize("seed", range(12))
def test_uids_stay_unique_and_renames_keep_them_whatever_programs_do(tmp_path, seed):
    """Deliveries, renames (flags; a tail, as sync tools do), copies under a name with a tail
    (cp -p: the size and time kept), links and deletes in a random order, the Maildir listed
    after each: no UID is served for two files, and a renamed file with one name keeps its
    UID."""
    rng = random.Random(seed)
    path, _ = make_maildir(tmp_path, [])
    uid_of_inode: dict[int, str] = {}
    for step in range(14):
        names = sorted(files(path))
        op = rng.choice(["deliver", "flags", "tail", "tail", "copy", "link", "unlink"]
                        if names else ["deliver"])
        renamed = None
        if op == "deliver":
            put(path, f"new/17000000{step:02}.M{step}P{seed}.host,S=9", b"Subject: %d\n\nx\n" % step)
        else:
            name = rng.choice(names)
            base, flags = maildir.base_name(name), maildir.flags_of(name)
            tail = f"{base},U={step}:2,{flags}"
            if op == "flags":
                renamed, new = name, f"cur/{base}:2,{flags or 'S'}R"
            elif op == "tail":
                renamed, new = name, f"cur/{tail}"
            if op in ("flags", "tail") and not os.path.exists(os.path.join(path, new)):
                rename(path, name, new)
            elif op == "copy":
                shutil.copy2(os.path.join(path, name), os.path.join(path, f"cur/{tail}"))
            elif op == "link":
                os.link(os.path.join(path, name), os.path.join(path, f"cur/{tail}"))
            elif op == "unlink":
                os.unlink(os.path.join(path, name))
            else:
                renamed = None
        messages, inodes, _ = maildir.scan_with_files(path)
        uids = [m.uid for m in messages]
        assert len(set(uids)) == len(uids), (op, [m.name for m in messages])
        if renamed is not None:
            inode = os.lstat(os.path.join(path, new)).st_ino
            if os.lstat(os.path.join(path, new)).st_nlink == 1 and inode in uid_of_inode:
                assert uids[list(inodes).index(inode)] == uid_of_inode[inode], (op, renamed, new)
        uid_of_inode = {inode: uid for inode, uid in zip(inodes, uids)
                        if list(inodes).count(inode) == 1}


def test_a_dele_left_for_a_message_renamed_with_a_tail_and_touched_is_not_a_quiet_ok(
        tmp_path):
    """Renamed with a tail and its time changed during the session: UPDATE leaves it, and QUIT
    says a deleted message was not removed (docs/maildir.md, "UPDATE and crash safety")."""
    path, first, second = two_messages(tmp_path)
    settle(path)
    drop = MaildirDrop.open(path, "qpt")
    try:
        index = [m.base for m in drop.messages].index(first)
        time.sleep(0.02)
        rename(path, f"new/{first}", f"cur/{first},U=7:2,S")
        os.utime(os.path.join(path, f"cur/{first},U=7:2,S"))
        with pytest.raises(PopError, match="not removed"):
            drop.update(deleted={index}, retrieved=set())
    finally:
        drop.close()
    assert f"cur/{first},U=7:2,S" in files(path)
