"""A Maildir message's UID is its file's for good: across sessions, another reader's renames
and the index rebuilt, also for copies that share a base name or an X-UIDL header
(docs/maildir.md, "What a message is")."""

from __future__ import annotations

import dataclasses
import os
import time

from qpopper.spool import maildir
from qpopper.spool.maildir_drop import MaildirDrop
from tests.helpers.maildirs import make_maildir

BASE = "1700000000.M1P1.host"


def put(path, name, data):
    with open(os.path.join(path, "tmp", "x"), "wb") as f:
        f.write(data)
    os.rename(os.path.join(path, "tmp", "x"), os.path.join(path, name))


def uids_by_subject(path) -> dict[bytes, str]:
    drop = MaildirDrop.open(path, "qpt")
    try:
        result = {}
        for message in drop.messages:
            with open(os.path.join(path, message.name), "rb") as f:
                result[f.readline()] = message.uid
        return result
    finally:
        drop.close()


def test_copies_with_one_base_name_keep_their_uids_across_renames(tmp_path):
    path, _ = make_maildir(tmp_path, [])
    put(path, f"cur/{BASE}:2,S", b"Subject: original\n\nA\n")
    put(path, f"new/{BASE}", b"Subject: copy\n\nB\n")
    first = uids_by_subject(path)
    assert len(set(first.values())) == 2 and BASE in first.values()
    os.rename(os.path.join(path, f"cur/{BASE}:2,S"), os.path.join(path, f"cur/{BASE}:2,RS"))
    assert uids_by_subject(path) == first
    os.rename(os.path.join(path, f"new/{BASE}"), os.path.join(path, f"cur/{BASE}:2,S"))
    assert uids_by_subject(path) == first
    os.unlink(os.path.join(path, maildir.INDEX_NAME))
    assert uids_by_subject(path) == first


def test_a_copys_uid_stays_after_the_message_with_its_x_uidl_header_is_deleted(tmp_path):
    header = b"X-UIDL: abcdefghijklmnop\n"
    path, _ = make_maildir(tmp_path, [])
    put(path, "new/1700000000.M1P1.host", header + b"Subject: A\n\nA\n")
    put(path, "new/1700000001.M2P2.host", header + b"Subject: B\n\nB\n")
    drop = MaildirDrop.open(path, "qpt")
    before = [m.uid for m in drop.messages]
    assert before == ["abcdefghijklmnop", "1700000001.M2P2.host"]
    drop.update(deleted={0}, retrieved={1})
    drop = MaildirDrop.open(path, "qpt")
    drop.close()
    assert [m.uid for m in drop.messages] == before[1:]


def test_names_with_an_info_part_not_ours_are_left_as_they_are(tmp_path):
    """Flags after `!` or `;` are ours (tests/unit/test_maildir_separators.py): moved to cur/
    with their separator kept."""
    path, _ = make_maildir(tmp_path, [])
    odd = ["new/1700000003.M4P4.host:1,xyz", "cur/1700000008.M9P9.host:2,S:x"]
    other_separators = ["new/1700000006.M7P7.host!2,S", "new/1700000007.M8P8.host;2,RS"]
    for name in odd + other_separators + ["new/1700000009.M1P1.plain"]:
        put(path, name, b"Subject: x\n\nbody\n")
    drop = MaildirDrop.open(path, "qpt")
    assert [m.uid for m in drop.messages] == [
        "1700000003.M4P4.host", "1700000006.M7P7.host", "1700000007.M8P8.host",
        "1700000008.M9P9.host", "1700000009.M1P1.plain"]
    drop.update(deleted=set(), retrieved=set(range(len(drop.messages))))
    names = sorted(f"{sub}/{n}" for sub in ("new", "cur") for n in os.listdir(
        os.path.join(path, sub)))
    assert names == sorted(odd + ["cur/1700000006.M7P7.host!2,S",
                                  "cur/1700000007.M8P8.host;2,RS",
                                  "cur/1700000009.M1P1.plain:2,S"])


def touch(path, name, age):
    when = time.time() - age
    os.utime(os.path.join(path, name), (when, when))


def test_a_touched_copy_keeps_its_uid_after_the_x_uidl_holder_is_gone(tmp_path):
    """A file's time changed (a backup tool, touch) does not give it another UID."""
    header = b"X-UIDL: abcdefghijklmnop\n"
    path, _ = make_maildir(tmp_path, [])
    put(path, "new/1700000000.M1P1.host", b"Subject: A\n" + header + b"\nA\n")
    put(path, "new/1700000001.M2P2.host", b"Subject: B\n" + header + b"\nB\n")
    assert uids_by_subject(path) == {b"Subject: A\n": "abcdefghijklmnop",
                                     b"Subject: B\n": "1700000001.M2P2.host"}
    os.unlink(os.path.join(path, "new/1700000000.M1P1.host"))     # an IMAP expunge
    assert uids_by_subject(path) == {b"Subject: B\n": "1700000001.M2P2.host"}
    touch(path, "new/1700000001.M2P2.host", 30)
    assert uids_by_subject(path) == {b"Subject: B\n": "1700000001.M2P2.host"}


def test_touched_copies_of_one_base_name_keep_their_uids(tmp_path):
    path, _ = make_maildir(tmp_path, [])
    put(path, f"new/{BASE}", b"Subject: original\n\nA\n")
    first = uids_by_subject(path)
    put(path, f"cur/{BASE}:2,S", b"Subject: copy\n\nB\n")          # a sync tool's copy
    second = uids_by_subject(path)
    assert second[b"Subject: original\n"] == first[b"Subject: original\n"] == BASE
    for name, age in ((f"new/{BASE}", 20), (f"cur/{BASE}:2,S", 25)):
        touch(path, name, age)
    assert uids_by_subject(path) == second


def test_a_new_delivery_on_a_reused_inode_never_takes_a_gone_messages_uid(tmp_path):
    """Inode numbers are reused after a delete (ext4 gives the next file the one just freed);
    they tell apart only files with one base name, so a new delivery, with a base name of its
    own, never gets a gone message's UID: a client that keeps UIDs would skip it, and delete
    it unread (docs/maildir.md, "What a message is")."""
    path, _ = make_maildir(tmp_path, [])
    names = [f"new/{BASE}", f"cur/{BASE}:2,S"]
    put(path, names[0], b"Subject: gone\n\nA\n")
    put(path, names[1], b"Subject: gone copy\n\nA\n")        # a copy: its UID from its inode
    gone = set(uids_by_subject(path).values())
    assert len(gone) == 2
    for name in names:
        os.unlink(os.path.join(path, name))         # an IMAP expunge: the index still lists them
    later = "1700000005.M1P1.host"
    put(path, f"new/{later}", b"Subject: new\n\nB\n")
    inode = os.stat(os.path.join(path, "new", later)).st_ino
    # both gone files' inode is the new file's, as where the file system reused it
    index = maildir.load_index(path)
    maildir.store_index(path, dataclasses.replace(index, inodes=[inode] * len(index.names)))
    for _ in range(2):
        assert uids_by_subject(path) == {b"Subject: new\n": later}
