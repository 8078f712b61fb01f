"""The Maildir listing's shortcuts give the plain answers: the size skips the CRLF count when a
file has no CR, and UID characters are checked with one regex instead of a loop per character
(qpopper/spool/maildir.py) — on 10,000+ generated files and names, against the line-by-line
reference."""

from __future__ import annotations

import hashlib
import random

from qpopper.spool import maildir
from qpopper.spool.mbox import UID_MAX_CHARS, UID_MIN_CHARS, encode_uid


def reference_octets(data: bytes) -> int:
    """RETR's octets line by line: every line ends with CRLF on the wire (a bare CR ending the
    last line is that CRLF's CR)."""
    lines = data.split(b"\n")
    last = lines.pop()
    octets = sum(len(line.removesuffix(b"\r")) + 2 for line in lines)
    return octets + (len(last.removesuffix(b"\r")) + 2 if last else 0)


def reference_uid(base: str, head: bytes) -> str:
    header = []
    for line in head.split(b"\n"):
        if line in (b"", b"\r"):           # the header's end: an empty line, LF or CR LF
            break
        header.append(line)
    for line in header:
        if line[:7].lower() == b"x-uidl:":
            value = line[7:].rstrip(b"\r").strip(b" \t").strip()
            if UID_MIN_CHARS <= len(value) <= UID_MAX_CHARS and all(0x21 <= c <= 0x7E
                                                                    for c in value):
                return value.decode("ascii")
            break
    if 0 < len(base) <= 70 and all(0x21 <= ord(c) <= 0x7E for c in base):
        return base
    return encode_uid(hashlib.md5(base.encode("utf-8", "surrogateescape")).digest())


def test_sizes_equal_the_line_by_line_count_on_10000_files():
    rng = random.Random(11)
    seen_cr = 0
    for _ in range(10_000):
        data = b"".join(rng.choice([b"text", b"", b".", b"a\rb", b"x" * 300, b"\x00"])
                        + rng.choice([b"\n", b"\n", b"\r\n", b"\r", b""])
                        for _ in range(rng.randrange(0, 12)))
        seen_cr += b"\r" in data
        assert maildir.wire_octets(data) == reference_octets(data), data
    assert 1000 < seen_cr < 9000          # both paths taken


def test_uids_equal_the_character_by_character_check_on_10000_names():
    rng = random.Random(12)
    alphabet = "abcXYZ019.,-_!~ \t\x7f\x20é:"
    for n in range(10_000):
        base = "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 5, 20, 70, 71])))
        value = "".join(rng.choice(alphabet) for _ in range(rng.choice([5, 13, 20, 32, 33])))
        head = rng.choice([b"", b"Subject: x\n", b"X-UIDL: %s\n" % value.encode(),
                           b"x-uidl:%s\r\n" % value.encode()]) + rng.choice([b"\n", b"\r\n", b""])
        head = head + b"X-UIDL: second-one-0123456\n\nbody\n" if n % 7 == 0 else head
        assert maildir.uid_of(base, head) == reference_uid(base, head), (base, head)
