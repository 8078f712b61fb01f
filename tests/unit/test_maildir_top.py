"""Maildir TOP n against RETR: the header, the empty line and n body lines, each exactly as
RETR sends it, on files with bare CRs, CR CR LF and no final LF, read in chunks of any size."""

from __future__ import annotations

import os
import random
import time

import pytest

from qpopper import limits
from qpopper.spool.maildir_drop import MaildirDrop
from tests.helpers.maildirs import retr

PIECES = [b"a", b"Subject: x", b".", b" ", b"\0", b"\r", b"\n", b"\n", b"\r\n", b"\r\n",
          b"\r\r\n", b"\n\r\n", b"\r\n\r\n"]


def random_file(rng: random.Random) -> bytes:
    return b"".join(rng.choice(PIECES) for _ in range(rng.randrange(0, 40)))


def maildir_of(root, messages: list[bytes]) -> str:
    """The messages written as they are (Python's mailbox would turn CRs into LFs)."""
    path = str(root / "Maildir")
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(path, sub))
    a_minute_ago = time.time() - 60
    for n, data in enumerate(messages):
        name = os.path.join(path, "new", f"{1700000000 + n}.M{n}P1.host")
        with open(name, "wb") as f:
            f.write(data)
        os.utime(name, (a_minute_ago, a_minute_ago))
    return path


def expected_top(retr_data: bytes, body_lines: int) -> bytes:
    """RETR's lines up to the first empty one, and `body_lines` more."""
    lines = retr_data.split(b"\r\n")[:-1]
    header_end = lines.index(b"") + 1 if b"" in lines else len(lines)
    return b"".join(line + b"\r\n" for line in lines[:header_end + body_lines])


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, limits.COPY_CHUNK_OCTETS])
def test_top_is_the_first_lines_of_retr(tmp_path, monkeypatch, chunk):
    rng = random.Random(1939 + chunk)
    messages = [b"Subject: x\r\r\n\r\nline 1\r\r\nline 2\r\n", b"\r\n\r\r\n", b"x\r"]
    messages += [random_file(rng) for _ in range(150)]
    path = maildir_of(tmp_path, messages)
    monkeypatch.setattr(limits, "COPY_CHUNK_OCTETS", chunk)
    drop = MaildirDrop.open(path, "qpt")
    try:
        assert len(drop.messages) == len(messages)
        for index in range(len(drop.messages)):
            whole = retr(drop, index)
            for body_lines in (0, 1, 2, 3, 5, 8, 2**31 - 1):
                assert retr(drop, index, body_lines) == expected_top(whole, body_lines), (
                    index, body_lines, whole)
    finally:
        drop.close()
