"""A Maildir UPDATE's journal against other programs' changes (docs/maildir.md, "UPDATE and
crash safety"): an unlink step removes the file the user deleted, wherever another program
renamed it, and no other file; a rename step never replaces a file; journals of earlier
versions are finished, damaged ones refuse the mailbox and touch nothing."""

from __future__ import annotations

import json
import os

import pytest

from qpopper.pop3.responses import PopError, RespCode
from qpopper.spool.maildir_drop import JOURNAL_NAME, MaildirDrop
from tests.helpers.maildirs import COPY, SECOND, files, replace_with_copy, two_messages


def update_with_a_move_at_the_unlink(path, first, move):
    """DELE of `first` with `move()` run by another program right after the journal's
    commit, before the session's unlink."""
    moved = []

    def hook(step):
        if step == "update:unlink" and not moved:
            moved.append(move())
    drop = MaildirDrop.open(path, "qpt", step_hook=hook)
    try:
        drop.update(deleted={[m.base for m in drop.messages].index(first)}, retrieved=set())
    finally:
        drop.close()
    assert moved


def test_a_message_renamed_after_the_journal_was_written_is_still_deleted(tmp_path):
    path, first, second = two_messages(tmp_path)
    update_with_a_move_at_the_unlink(path, first, lambda: os.rename(
        os.path.join(path, "new", first), os.path.join(path, "cur", first + ":2,RS")))
    assert list(files(path)) == [f"new/{second}"]


@pytest.mark.parametrize("where", ["same-name", "renamed"])
def test_a_copy_that_replaced_the_message_after_the_journal_was_written_stays(tmp_path, where):
    path, first, second = two_messages(tmp_path)
    renamed = None if where == "same-name" else f"cur/{first}:2,S"
    update_with_a_move_at_the_unlink(path, first, lambda: replace_with_copy(
        path, f"new/{first}", b"Subject: restored\n\nz\n", renamed))
    assert files(path) == {renamed or f"new/{first}": b"Subject: restored\n\nz\n",
                           f"new/{second}": SECOND}


def test_a_journal_of_the_earlier_version_is_still_finished(tmp_path):
    """A session of an earlier release (journal version 1, names only) crashed mid-UPDATE;
    after the upgrade the next login finishes it."""
    path, first, second = two_messages(tmp_path)
    with open(os.path.join(path, JOURNAL_NAME), "w") as f:
        json.dump({"version": 1, "steps": [["unlink", f"new/{first}"],
                                           ["rename", f"new/{second}", f"cur/{second}:2,S"]]}, f)
    MaildirDrop.open(path, "qpt").close()
    assert files(path) == {f"cur/{second}:2,S": SECOND}
    assert not os.path.exists(os.path.join(path, JOURNAL_NAME))


@pytest.mark.parametrize("step", [
    ["unlink", "new/x"], ["unlink", "new/x", 1, 2], ["unlink", "new/x", 1, 2, 3, 4],
    ["unlink", "new/x", 1, 2, "3"], ["unlink", "new/x", 1, 2, None],
    ["unlink", "new/x", 1, 2, 3.0], ["unlink", "new/x", 1, 2, True],
    ["unlink", "../x", 1, 2, 3], ["unlink", "new/x\0y", 1, 2, 3],
    ["rename", "new/x\0y", "cur/x"]])
def test_a_damaged_unlink_step_refuses_the_mailbox(tmp_path, step):
    path, first, second = two_messages(tmp_path)
    before = files(path)
    with open(os.path.join(path, JOURNAL_NAME), "w") as f:
        json.dump({"version": 3, "steps": [step]}, f)
    with pytest.raises(PopError) as refused:
        MaildirDrop.open(path, "qpt")
    assert refused.value.code is RespCode.SYS_TEMP
    assert files(path) == before and os.path.exists(os.path.join(path, JOURNAL_NAME))


@pytest.mark.parametrize("version", [2, 3])
def test_a_journal_is_finished_whatever_device_number_the_mount_has_now(tmp_path, version):
    """A crashed session's journal is finished by the next login, which may be on another
    host of an NFS spool or after a reboot: the device number is not part of a file's
    identity (version 2 wrote one: it is passed over), and a rename step never replaces
    another file."""
    path, first, second = two_messages(tmp_path)
    st = os.lstat(os.path.join(path, "new", first))
    device = [st.st_dev + 1] if version == 2 else []
    with open(os.path.join(path, "cur", second + ":2,S"), "wb") as f:
        f.write(COPY)
    with open(os.path.join(path, JOURNAL_NAME), "w") as f:
        json.dump({"version": version, "steps": [
            ["unlink", f"new/{first}", *device, st.st_ino, st.st_size, st.st_mtime_ns],
            ["rename", f"new/{second}", f"cur/{second}:2,S"]]}, f)
    MaildirDrop.open(path, "qpt").close()
    assert files(path) == {f"new/{second}": SECOND, f"cur/{second}:2,S": COPY}


def test_a_journal_whose_version_is_not_a_number_refuses_the_mailbox(tmp_path):
    path, first, second = two_messages(tmp_path)
    before = files(path)
    with open(os.path.join(path, JOURNAL_NAME), "w") as f:
        json.dump({"version": True, "steps": [["unlink", f"new/{first}"]]}, f)
    with pytest.raises(PopError):
        MaildirDrop.open(path, "qpt")
    assert files(path) == before
