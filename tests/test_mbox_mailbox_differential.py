"""What qpopper serves against Python's `mailbox` reading the same generated spools.

docs/mbox.md, "The framing line": the one empty line before a `From ` separator (and the one
ending the file) is mbox framing, not message content, as `mailbox.mbox` (and RFC 4155
readers such as Dovecot and mutt) read it. Random spools (bodies ending with 0-3 empty lines,
a last message without its final newline, `>From ` lines, CRLF lines, NULs, lines longer than
Qpopper's line buffer) are written to a temporary directory; for every message the RETR bytes
of the real scan + send_message path (dot-stuffing undone, the inserted X-UIDL line taken
out) must equal mailbox's message bytes converted to the wire (LF as CRLF, a CRLF kept, NUL
as space, a last line without LF closed). MMDF spools are compared against `mailbox.MMDF`,
Content-Length spools against the rule of the behaviour reference (the body is Content-Length
octets; the header is not sent). One spool also goes through a real server and poplib.
"""

from __future__ import annotations

import io
import mailbox
import poplib
import random

import pytest

from qpopper.spool import mbox
from tests.helpers.sysusers import make_spool
from tests.server_harness import Site, login

pytestmark = pytest.mark.timeout(300)

SPOOLS = 60
MESSAGES_PER_SPOOL = (150, 210)
"""About 10,800 messages over the From_ spools: the issue asks for at least 10,000."""

WORDS = (b"alpha", b"beta", b".", b"..", b".dot", b">From quoted Wed Nov 25 10:00:00 2026",
         b">>From twice", b"From", b"x\0y", b"\0", b"tab\there", b" lead", b"end\r", b"a\rb",
         b"Status: not a header", b"\x01\x01\x01")


def random_line(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.02:
        text = b"L" * rng.randrange(1000, 3000)            # beyond Qpopper's 1023-octet buffer
    elif roll < 0.5:
        text = b" ".join(rng.choice(WORDS) for _ in range(rng.randrange(1, 6)))
    else:
        text = bytes(rng.choice(b"abcdefgh .>-\0") for _ in range(rng.randrange(0, 70)))
    if text.startswith(b"From "):
        text = b">" + text                                 # as a delivery agent quotes it
    return text + (b"\r\n" if rng.random() < 0.15 else b"\n")


def random_message(rng: random.Random, number: int, *, last: bool,
                   content_length: bool = False) -> bytes:
    """A message's text (what mailbox returns for it): headers, blank line, body ending with
    0-3 empty lines; the last of a spool sometimes without its final newline. With
    content_length, a Content-Length header, and sometimes an unquoted From_ line after an
    empty line in the body (what the header makes safe)."""
    headers = [b"Subject: message %d" % number, b"Date: Wed, 25 Nov 2026 10:00:00 +0000"]
    if rng.random() < 0.2:
        headers.append(b"X-Nul: a\0b")
    if rng.random() < 0.1:
        headers.append(b"Received: from x\r")                # a CRLF header line
    body = b"".join(random_line(rng) for _ in range(rng.randrange(0, 12)))
    body += b"".join(rng.choice((b"\n", b"\n", b"\r\n")) for _ in range(rng.randrange(0, 4)))
    if last and rng.random() < 0.3:
        body = body.rstrip(b"\r\n") + rng.choice((b"no final newline", b"", b"."))
    if content_length and rng.random() < 0.3:
        body = b"intro\n\n" + separator(9999) + b"unquoted, inside a body\n" + body
    headers_only = rng.random() < 0.03                      # no blank line, no body
    if content_length:
        headers.append(b"Content-Length: %d" % (0 if headers_only else len(body)))
    if headers_only:
        return b"".join(h + b"\n" for h in headers)
    return b"".join(h + b"\n" for h in headers) + b"\n" + body


def separator(number: int) -> bytes:
    return b"From sender%d@example.org Wed Nov 25 10:%02d:00 2026\n" % (number, number % 60)


def from_spool(rng: random.Random, count: int, *, content_length: bool = False
               ) -> tuple[bytes, list[bytes]]:
    """An mbox as Debian's delivery agents write it: separator, message, one empty line."""
    texts = [random_message(rng, n, last=n == count - 1, content_length=content_length)
             for n in range(count)]
    last = texts[-1]
    # The file's last framing line may be missing; then an empty LF line ending the last
    # message is read as the framing line (by mailbox too). (A CRLF one would be read as
    # framing by qpopper only: such a file is not generated.)
    unframed_end = (last.endswith(b"\n") and not last.endswith(b"\n\r\n")
                    and not content_length and rng.random() < 0.2)
    spool = b"".join(separator(n) + text + (b"\n" if text.endswith(b"\n") else b"")
                     for n, text in enumerate(texts))
    if unframed_end:
        spool = spool[:-1]
        if last.endswith(b"\n\n"):
            texts[-1] = last[:-1]
    return spool, texts


def to_wire(text: bytes) -> bytes:
    """Message bytes as POP3 sends them, before dot-stuffing: CRLF lines, NUL as space."""
    text = text.replace(b"\0", b" ")
    lines = text.split(b"\n")
    last = lines.pop()
    out = b"".join(line + (b"\n" if line.endswith(b"\r") else b"\r\n") for line in lines)
    return out + (last + b"\r\n" if last else b"")


def unstuff(data: bytes) -> bytes:
    lines = data.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


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
    unquoted From_ line after an empty line; the header itself is not sent (behaviour
    reference, Content-Length). The framing line after the body is not content."""
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


@pytest.mark.root
@pytest.mark.timeout(120)
def test_a_spool_through_the_real_server_equals_mailbox(world_tmp, pam_service, system_users,
                                                       monkeypatch):
    """RETR through popper and poplib: the same bytes as mailbox.mbox's reading."""
    monkeypatch.setattr(poplib, "_MAXLINE", 8192)           # the long lines
    rng = random.Random(4242)
    raw, texts = from_spool(rng, 120)
    site = Site(world_tmp, pam_service)
    try:
        user = system_users.create()
        path = make_spool(site.spool_dir, user, raw)
        box = mailbox.mbox(path, create=False)
        try:
            reference = [box.get_bytes(key) for key in box.iterkeys()]
        finally:
            box.close()
        server = site.server()
        client = login(server, user)
        count, octets = client.stat()
        assert count == len(reference)
        sizes = [int(line.split()[1]) for line in client.list()[1]]
        total = 0
        for number, text in enumerate(reference, 1):
            _, lines, _ = client.retr(number)
            got = b"".join(line + b"\r\n" for line in lines)    # poplib undid the stuffing
            uidl = [line for line in lines if line.startswith(b"X-UIDL: ")]
            assert len(uidl) == 1
            assert sizes[number - 1] == len(got)
            assert got.replace(uidl[0] + b"\r\n", b"", 1) == to_wire(text), number
            total += len(got)
        assert octets == total
        client.rset()
        assert client.quit().startswith(b"+OK")
    except poplib.error_proto as exc:
        pytest.fail(f"server refused: {exc}")
    finally:
        site.close()
