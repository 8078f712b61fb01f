"""What qpopper serves against Python's `mailbox` reading the same generated spools.

docs/mbox.md, "The framing line": the one empty line before a `From ` separator (and the one
ending the file) is mbox framing, not message content, as `mailbox.mbox` (and RFC 4155
readers such as Dovecot and mutt) read it. Random spools (bodies ending with 0-3 empty lines,
a last message without its final newline, `>From ` lines, CRLF lines, NULs, lines longer than
Qpopper's line buffer) are written to a temporary directory; for every message the RETR bytes
of the real scan + send_message path (dot-stuffing undone, the inserted X-UIDL line taken
out) must equal mailbox's message bytes converted to the wire (LF as CRLF, a CRLF kept, NUL
as space, a last line without LF closed). MMDF spools are compared against `mailbox.MMDF`,
Content-Length spools against the Content-Length rule (docs/mbox.md, "Content-Length": the
body is Content-Length octets; the header is not sent). One spool also goes through a real
server and poplib: tests/system/test_mbox_mailbox_server.py. The generator is
tests/helpers/mailbox_spools.py.
"""

from __future__ import annotations

import io
import mailbox
import random

import pytest

from qpopper.spool import mbox
from tests.helpers.mailbox_spools import from_spool, random_message, to_wire, unstuff

pytestmark = pytest.mark.timeout(300)

SPOOLS = 60
MESSAGES_PER_SPOOL = (150, 210)
"""About 10,800 messages over the From_ spools: at least 10,000 are compared."""


def served(f, msg: mbox.Message) -> bytes:
    """RETR bytes through the real path, dot-stuffing undone, the X-UIDL line taken out."""
    out: list[bytes] = []
    mbox.send_message(f, msg, out.append)
    data = unstuff(b"".join(out))
    assert len(data) == msg.octets
    assert data.count(msg.uidl_line) == 1
    return data.replace(msg.uidl_line, b"", 1)


def test_the_wire_conversion_of_the_reference():
    """Pins to_wire, so a wrong reference cannot make the comparison pass."""
    assert to_wire(b"a\nb\r\n\0\n\nlast") == b"a\r\nb\r\n \r\n\r\nlast\r\n"
    assert to_wire(b"a\n") == b"a\r\n" and to_wire(b"") == b""


@pytest.mark.parametrize("block", range(4))
def test_from_spools_serve_what_mailbox_mbox_reads(tmp_path, block):
    """At least 10,000 messages in all (four blocks of 15 spools)."""
    compared = 0
    for seed in range(block * SPOOLS // 4, (block + 1) * SPOOLS // 4):
        rng = random.Random(seed)
        raw, texts = from_spool(rng, rng.randrange(*MESSAGES_PER_SPOOL))
        path = tmp_path / f"spool{seed}"
        path.write_bytes(raw)
        box = mailbox.mbox(path, create=False)
        try:
            reference = [box.get_bytes(key) for key in box.iterkeys()]
        finally:
            box.close()
        assert reference == texts, seed              # the generator writes what mailbox reads
        with open(path, "rb") as f:
            messages = mbox.scan(f)
            assert len(messages) == len(reference), seed
            for msg, text in zip(messages, reference):
                assert served(f, msg) == to_wire(text), (seed, msg.number)
                compared += 1
    assert compared >= 10_000 // 4


def test_fetch_and_refile_is_stable(tmp_path):
    """A message fetched and filed again by mailbox.mbox is served byte for byte as before
    (nothing grows), and qpopper's own write-back keeps the spool's bytes."""
    rng = random.Random(77)
    raw, _ = from_spool(rng, 200)
    with open(tmp_path / "spool", "wb") as out:
        out.write(raw)
    with open(tmp_path / "spool", "rb") as f:
        messages = mbox.scan(f)
        first = []
        for msg in messages:
            out_parts: list[bytes] = []
            mbox.send_message(f, msg, out_parts.append)
            first.append(unstuff(b"".join(out_parts)))
        written = io.BytesIO()
        for msg in messages:
            mbox.copy_for_update(f, msg, written.write, retrieved=False,
                                 update_status_headers=False)
    expected = raw if raw.endswith(b"\n\n") else raw + (b"\n" if raw.endswith(b"\n") else b"\n\n")
    assert written.getvalue() == expected
    refiled = mailbox.mbox(tmp_path / "refiled")
    try:
        for data in first:
            refiled.add(data)
        refiled.flush()
    finally:
        refiled.close()
    with open(tmp_path / "refiled", "rb") as f:
        again = mbox.scan(f)
        assert [m.uid for m in again] == [m.uid for m in messages]
        for msg, before in zip(again, first):
            out_parts = []
            mbox.send_message(f, msg, out_parts.append)
            assert unstuff(b"".join(out_parts)) == before


def test_mmdf_spools_serve_what_mailbox_mmdf_reads(tmp_path):
    """MMDF has no framing line: the message runs from the separator to the trailer.
    mailbox.MMDF writes an LF of its own before each trailer and leaves one LF out when it
    reads, so its bytes plus that LF are the message (docs/mbox.md, "MMDF")."""
    compared = 0
    for seed in range(5):
        rng = random.Random(1000 + seed)
        texts = []
        for n in range(rng.randrange(100, 200)):
            text = random_message(rng, n, last=False)
            texts.append(text if text.endswith(b"\n") else text + b"\n")
        raw = b"".join(b"\x01\x01\x01\x01\n" + t + b"\x01\x01\x01\x01\n" for t in texts)
        path = tmp_path / f"mmdf{seed}"
        path.write_bytes(raw)
        box = mailbox.MMDF(path, create=False)
        try:
            reference = [box.get_bytes(key, from_=True) + b"\n" for key in box.iterkeys()]
        finally:
            box.close()
        assert reference == texts
        with open(path, "rb") as f:
            messages = mbox.scan(f)
            assert len(messages) == len(texts) and all(m.mmdf for m in messages)
            for msg, text in zip(messages, reference):
                assert served(f, msg) == to_wire(text), (seed, msg.number)
                compared += 1
    assert compared >= 500


def test_content_length_spools_serve_content_length_octets(tmp_path):
    """Solaris-style spools: Content-Length says how long the body is, so a body may hold an
    unquoted From_ line after an empty line; the header itself is not sent (docs/mbox.md,
    "Content-Length"). The framing line after the body is not content."""
    compared = unquoted = 0
    for seed in range(5):
        rng = random.Random(2000 + seed)
        raw, texts = from_spool(rng, rng.randrange(100, 200), content_length=True)
        path = tmp_path / f"clen{seed}"
        path.write_bytes(raw)
        with open(path, "rb") as f:
            messages = mbox.scan(f)
            assert len(messages) == len(texts), seed
            for msg, text in zip(messages, texts):
                sent_text = b"".join(line for line in text.splitlines(keepends=True)
                                     if not line.startswith(b"Content-Length:"))
                assert served(f, msg) == to_wire(sent_text), (seed, msg.number)
                unquoted += b"\n\nFrom " in text
                compared += 1
    assert compared >= 500 and unquoted >= 50
