"""Review of the Maildir tail renames (a message renamed by mbsync or offlineimap into its base
name, `,` and a tail keeps its UID): what still goes wrong. Each test is marked xfail
(strict): it fails today, and passes once the finding is fixed (then drop the mark)."""

from __future__ import annotations

import os

import pytest

from qpopper.spool import maildir
from qpopper.spool.maildir_drop import MaildirDrop
from tests.helpers.maildirs import files, two_messages
from tests.unit.test_maildir_tail_renames import BASE, rename, two_deliveries


@pytest.mark.xfail(strict=True, reason="list_by_base files B,U=7 under B: UPDATE's "
                                       "_unlink_file removes every linked name of it")
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


@pytest.mark.xfail(strict=True, reason="the index forgets a file one listing missed; a "
                                       "tail rename's UID lives only in the index")
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
