"""A Maildir UPDATE step that fails for good leaves its message as it is and never refuses
the mailbox; one that may pass later keeps the journal for the next login (docs/maildir.md,
"UPDATE and crash safety")."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest

from qpopper.pop3.responses import PopError
from qpopper.spool import maildir_drop
from qpopper.spool.maildir_drop import JOURNAL_NAME, MaildirDrop
from tests.helpers.maildirs import FIRST, SECOND, files, two_messages

LONG_BASE = "1700000001.M2P2." + "h" * (252 - 16)     # legal in new/; 256 octets with ":2,S"


def test_a_message_whose_seen_name_is_too_long_stays_unseen_and_the_mailbox_opens(tmp_path):
    path, first, second = two_messages(tmp_path)
    with open(os.path.join(path, "new", LONG_BASE), "wb") as f:
        f.write(b"Subject: long\n\nbody\n")
    drop = MaildirDrop.open(path, "qpt")
    long_index = [m.base for m in drop.messages].index(LONG_BASE)
    drop.update(deleted={[m.base for m in drop.messages].index(first)}, retrieved={long_index})
    assert sorted(files(path)) == sorted([f"new/{LONG_BASE}", f"new/{second}"])
    MaildirDrop.open(path, "qpt").close()


def journal(path, steps):
    with open(os.path.join(path, JOURNAL_NAME), "w") as f:
        json.dump({"version": 1, "steps": steps}, f)


def test_a_journal_rename_that_fails_for_good_is_logged_and_skipped(tmp_path):
    path, first, second = two_messages(tmp_path)
    journal(path, [["unlink", f"new/{first}"],
                   ["rename", f"new/{second}", f"cur/{second}:2,S" + "S" * 300]])
    logged = []
    MaildirDrop.open(path, "qpt", log=lambda priority, text: logged.append(text)).close()
    assert files(path) == {f"new/{second}": SECOND}
    assert not os.path.exists(os.path.join(path, JOURNAL_NAME))
    assert any(f"new/{second} not marked seen" in text for text in logged)


@pytest.mark.parametrize("error, lasting", [(errno.EIO, False), (errno.ESTALE, False),
                                            (errno.EXDEV, True), (errno.EDQUOT, True)])
def test_a_transient_error_keeps_the_journal_a_lasting_one_does_not(tmp_path, monkeypatch,
                                                                     error, lasting):
    path, first, second = two_messages(tmp_path)
    journal(path, [["rename", f"new/{second}", f"cur/{second}:2,S"]])

    def failing(src, dst):
        raise OSError(error, os.strerror(error))
    monkeypatch.setattr(maildir_drop, "rename_no_replace", failing)
    if lasting:
        MaildirDrop.open(path, "qpt").close()
    else:
        with pytest.raises(PopError):
            MaildirDrop.open(path, "qpt")
    assert os.path.exists(os.path.join(path, JOURNAL_NAME)) is not lasting
    assert files(path) == {f"new/{first}": FIRST, f"new/{second}": SECOND}


def test_a_deletion_that_fails_for_good_leaves_the_message(tmp_path, monkeypatch):
    path, first, second = two_messages(tmp_path)
    journal(path, [["unlink", f"new/{first}"]])

    real = maildir_drop.unlink_if_present

    def refused(name, **options):
        if "/new/" not in name:
            return real(name, **options)
        raise PermissionError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(maildir_drop, "unlink_if_present", refused)
    MaildirDrop.open(path, "qpt").close()
    assert files(path) == {f"new/{first}": FIRST, f"new/{second}": SECOND}


def test_a_fifo_in_place_of_the_journal_refuses_the_mailbox_at_once(tmp_path):
    path, first, second = two_messages(tmp_path)
    os.mkfifo(os.path.join(path, JOURNAL_NAME))
    code = ("import sys; from qpopper.spool.maildir_drop import MaildirDrop\n"
            "try:\n    MaildirDrop.open(sys.argv[1], 'qpt')\n"
            "except Exception as error:\n    print(type(error).__name__)\n")
    result = subprocess.run([sys.executable, "-c", code, path], capture_output=True,
                            text=True, timeout=10)
    assert result.stdout.strip() == "PopError", result.stderr
    assert files(path) == {f"new/{first}": FIRST, f"new/{second}": SECOND}
