"""Review of the Maildir tail renames (a message renamed by mbsync into its base name, `,` and
a tail keeps its UID): a name with a tail linked to a message's file that is still at its
own name is another message, and a listing that misses a rename keeps the UID
(docs/maildir.md, "What a message is", "Changes by other programs")."""

from __future__ import annotations

import os

from qpopper.spool import maildir
from qpopper.spool.maildir_drop import MaildirDrop, file_identity, finish_journal, write_journal
from tests.helpers.maildirs import files, retr, two_messages
from tests.unit.test_maildir_tail_renames import BASE, OTHER, rename, two_deliveries


def test_dele_of_a_linked_name_leaves_the_other_listed_message_with_a_tail(tmp_path):
    """new/B linked as cur/B,U=7:2,S: two messages, two UIDs (docs/maildir.md, "What a
    message is"). A DELE of new/B alone must not remove cur/B,U=7:2,S, a message the client
    did not delete (a DELE of cur/B,U=7:2,S alone leaves new/B: the two are not alike)."""
    path, _ = two_deliveries(tmp_path)
    os.link(os.path.join(path, f"new/{BASE}"), os.path.join(path, f"cur/{BASE},U=7:2,S"))
    drop = MaildirDrop.open(path, "qpt")
    try:
        names = [m.name for m in drop.messages]
        assert len(names) == 3 and len({m.uid for m in drop.messages}) == 3
        drop.update(deleted={names.index(f"new/{BASE}")}, retrieved=set())
    finally:
        drop.close()
    assert f"cur/{BASE},U=7:2,S" in files(path)


def test_a_journalled_delete_leaves_a_link_with_a_tail_while_its_name_is_there(tmp_path):
    """The crash recovery's side: the file is still at the name journalled, so it is the one
    removed, and cur/B,U=7:2,S (another message at the next login) stays."""
    path, _ = two_deliveries(tmp_path)
    st = os.lstat(os.path.join(path, f"new/{BASE}"))
    write_journal(path, [["unlink", f"new/{BASE}", *file_identity(st)]], lambda step: None)
    os.link(os.path.join(path, f"new/{BASE}"), os.path.join(path, f"cur/{BASE},U=7:2,S"))
    assert finish_journal(path, lambda step: None) == []
    assert sorted(files(path)) == [f"cur/{BASE},U=7:2,S", f"new/{OTHER}"]


def test_a_delete_whose_name_goes_meanwhile_never_takes_another_listed_message(tmp_path):
    """new/B and its link cur/B,U=7:2,S are two listed messages; new/B is removed by another
    program after the journal is written: the unlink step does not take the other message's
    name for new/B renamed."""
    path, _ = two_deliveries(tmp_path)
    os.link(os.path.join(path, f"new/{BASE}"), os.path.join(path, f"cur/{BASE},U=7:2,S"))

    def remove_it_first(step):
        if step == "update:unlink":
            os.unlink(os.path.join(path, f"new/{BASE}"))
    drop = MaildirDrop.open(path, "qpt", step_hook=remove_it_first)
    try:
        names = [m.name for m in drop.messages]
        drop.update(deleted={names.index(f"new/{BASE}")}, retrieved=set())
    finally:
        drop.close()
    assert sorted(files(path)) == [f"cur/{BASE},U=7:2,S", f"new/{OTHER}"]


def test_a_message_found_again_under_its_own_base_name_before_a_link_with_a_tail(tmp_path):
    """Another program moves new/B to cur/B:2,F and links it as new/B,U=7 (listed first):
    the session finds its message at cur/B:2,F and marks that name seen."""
    path, _ = two_deliveries(tmp_path)
    drop = MaildirDrop.open(path, "qpt")
    try:
        index = [m.name for m in drop.messages].index(f"new/{BASE}")
        os.link(os.path.join(path, f"new/{BASE}"), os.path.join(path, f"new/{BASE},U=7"))
        rename(path, f"new/{BASE}", f"cur/{BASE}:2,F")
        assert retr(drop, index) == b"Subject: synced\r\n\r\nA\r\n"
        drop.update(deleted=set(), retrieved={index})
    finally:
        drop.close()
    assert sorted(files(path)) == [f"cur/{BASE}:2,FS", f"new/{BASE},U=7", f"new/{OTHER}"]


class _Hiding:
    """os.scandir's iterator without the entries whose name starts with `prefix`."""

    def __init__(self, it, prefix: str):
        self.it, self.prefix = it, prefix

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.it.__exit__(*exc)

    def __iter__(self):
        return (entry for entry in self.it if not entry.name.startswith(self.prefix))


def test_a_rename_with_a_tail_that_one_listing_misses_keeps_its_uid(tmp_path, monkeypatch):
    """readdir(3) during a rename inside cur/ may return neither name (POSIX leaves it open;
    ext4's htree moves the entry to another hash position). That listing leaves the message
    out and the index forgets it; the next listing measures cur/B,U=7:2,S as a new file, UID
    `B,U=7`: a client that leaves mail on the server fetches it again (a flag rename keeps
    its UID, its base name, through such a miss)."""
    path, first, _ = two_messages(tmp_path)
    rename(path, f"new/{first}", f"cur/{first}:2,S")               # a reader's flags
    with open(os.path.join(path, "new", "1999999999.M1P1.other"), "wb") as f:
        f.write(b"Subject: third\n\nx\n")
    assert first in [m.uid for m in maildir.scan(path)]
    real_scandir = os.scandir

    def scandir_during_the_rename(directory):
        if str(directory).endswith("/cur"):
            rename(path, f"cur/{first}:2,S", f"cur/{first},U=7:2,S")
            monkeypatch.setattr(maildir.os, "scandir", real_scandir)
            return _Hiding(real_scandir(directory), first)
        return real_scandir(directory)
    os.utime(os.path.join(path, "cur"), ns=(0, 0))                 # the directories listed
    monkeypatch.setattr(maildir.os, "scandir", scandir_during_the_rename)
    maildir.scan(path)
    monkeypatch.undo()
    uids = {m.name: m.uid for m in maildir.scan(path)}
    assert uids[f"cur/{first},U=7:2,S"] == first


def test_a_listing_made_again_while_the_directories_change_is_bounded(tmp_path, monkeypatch):
    """A program that changes cur/ during every listing (a long sync run) gets at most
    maildir.LISTINGS listings per scan; the next login lists again (the index's stamps are
    from before the last listing) and serves what is there."""
    path, first, second = two_messages(tmp_path)
    real_scandir, listings = os.scandir, []

    def scandir_while_cur_changes(directory):
        if str(directory).endswith("/cur"):
            listings.append(directory)
            name = os.path.join(path, "cur", f"x{len(listings)}")
            with open(name, "wb"):
                pass
            os.unlink(name)
        return real_scandir(directory)
    os.utime(os.path.join(path, "cur"), ns=(0, 0))
    monkeypatch.setattr(maildir.os, "scandir", scandir_while_cur_changes)
    assert [m.uid for m in maildir.scan(path)] == [first, second]
    assert len(listings) == maildir.LISTINGS
    monkeypatch.undo()
    assert maildir.load_index(path).stamps != maildir._dir_stamps(path)     # listed again
    assert [m.uid for m in maildir.scan(path)] == [first, second]
