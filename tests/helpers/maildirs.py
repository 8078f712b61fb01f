"""Maildir mailboxes for the Maildir tests: made as a delivery agent makes them, changed as
another program changes them, and what RETR must send for a message."""

from __future__ import annotations

import dataclasses
import mailbox
import os
import time

from qpopper.spool import maildir
from qpopper.spool.maildir_drop import MaildirDrop


def make_maildir(root, messages: list[bytes]) -> tuple[str, list[str]]:
    """A Maildir with `messages` in new/, delivered a minute ago (a file made in the moments
    before a listing is not found again after a rename: maildir_files.MessageFiles)."""
    box = mailbox.Maildir(str(root / "Maildir"), create=True)
    keys = [box.add(mailbox.MaildirMessage(data)) for data in messages]
    box.close()
    a_minute_ago = time.time() - 60
    for key in keys:
        os.utime(os.path.join(root, "Maildir", "new", key), (a_minute_ago, a_minute_ago))
    return str(root / "Maildir"), keys



def wire(data: bytes) -> bytes:
    """What RETR must send for a message file's bytes (before the terminator)."""
    text = data.replace(b"\r\n", b"\n")
    if text and not text.endswith(b"\n"):
        text += b"\n"
    lines = [(b"." + line if line.startswith(b".") else line) for line in text.split(b"\n")[:-1]]
    return b"".join(line.replace(b"\0", b" ") + b"\r\n" for line in lines)


def retr(drop, index, body_lines=None) -> bytes:
    out = []
    drop.send(index, out.append, body_lines=body_lines)
    return b"".join(out)


def settle(path):
    """Make the saved index look written long after the last change (as it will be on a
    mailbox nobody touched for a while)."""
    index = maildir.load_index(path)
    maildir.store_index(path, dataclasses.replace(
        index, written_ns=index.written_ns + 10 * maildir.SETTLE_NS))


FIRST, SECOND = b"Subject: first\n\nbody one\n", b"Subject: second\n\nbody two\n"
COPY = b"Subject: the copy\n\nanother message\n"


def two_messages(tmp_path) -> tuple[str, str, str]:
    """A Maildir with two messages in new/, listed once (the index knows them); the keys in
    delivery order."""
    path, keys = make_maildir(tmp_path, [FIRST, SECOND])
    drop = MaildirDrop.open(path, "qpt")
    keys = [m.base for m in drop.messages]
    drop.close()
    return path, keys[0], keys[1]


def files(path) -> dict[str, bytes]:
    result = {}
    for sub in maildir.SUBDIRS:
        for name in os.listdir(os.path.join(path, sub)):
            with open(os.path.join(path, sub, name), "rb") as f:
                result[f"{sub}/{name}"] = f.read()
    return result


def replace_with_copy(path: str, name: str, content: bytes, new_name: str | None = None):
    """Another file under the base name, as a restore or a sync tool writes one: made in
    tmp/ while the message is still there (so it has another inode), renamed to `new_name`
    (or over the message at `name`), and the message removed."""
    made = os.path.join(path, "tmp", "copy")
    with open(made, "wb") as f:
        f.write(content)
    os.rename(made, os.path.join(path, new_name or name))
    if new_name:
        os.unlink(os.path.join(path, name))
