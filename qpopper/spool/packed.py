"""The packed file format of server mode's cache and the Maildir index: a header line, a small
JSON document and binary sections (arrays of 64-bit ints, byte columns, NUL-separated texts)
that load with a few C calls instead of a Python step per message
(docs/maildrop.md, "The server-mode cache"; docs/maildir.md, "The index").

    MAGIC VERSION BYTEORDER SHA256-OF-PAYLOAD PAYLOAD-LENGTH\\n
    payload = for the document and each section: 8-octet length, then the octets

Every reader error is a ValueError whose text says what was wrong (it is logged, and the file
is rebuilt); nothing here trusts a length before checking it against what is there.
"""

from __future__ import annotations

import hashlib
import json
import sys
from array import array

INT_TYPE = "q"
_SIGN_OCTET = 7 if sys.byteorder == "little" else 0
_NON_NEGATIVE_HIGH_OCTETS = bytes(range(0x80))
"""A 64-bit int is negative when its most significant octet is 0x80 or more: one translate
over every 8th octet checks a whole column without making a Python int of each."""
_LENGTH_OCTETS = 8
_NUL = "\0"


def pack(magic: bytes, version: int, document: dict, sections: list[bytes]) -> bytes:
    parts = []
    for part in (json.dumps(document, separators=(",", ":")).encode(), *sections):
        parts += [len(part).to_bytes(_LENGTH_OCTETS, "little"), part]
    payload = b"".join(parts)
    digest = hashlib.sha256(payload).hexdigest().encode()
    return b"%s %d %s %s %d\n" % (magic, version, sys.byteorder.encode(), digest,
                                  len(payload)) + payload


def unpack(data: bytes, magic: bytes, version: int, sections: int) -> tuple[dict, list[bytes]]:
    """The document and `sections` sections of a packed file; ValueError when it is not one
    of this version, was cut short or does not match its checksum."""
    header, newline, payload = data.partition(b"\n")
    parts = header.split(b" ")
    if not newline or parts[0] != magic or len(parts) < 2:
        raise ValueError("not a file of this kind")
    if parts[1] != b"%d" % version:
        raise ValueError(f"format version {parts[1].decode('ascii', 'replace')[:20]}, "
                         f"this build reads {version}")
    if len(parts) != 5:
        raise ValueError("a malformed header line")
    if parts[2] != sys.byteorder.encode():
        raise ValueError("written on a machine of another byte order")
    if not parts[4].isdigit() or int(parts[4]) != len(payload):
        raise ValueError("length mismatch (truncated?)")
    if hashlib.sha256(payload).hexdigest().encode() != parts[3]:
        raise ValueError("checksum mismatch")
    view, pieces, pos = memoryview(payload), [], 0
    for _ in range(sections + 1):
        length = int.from_bytes(view[pos:pos + _LENGTH_OCTETS], "little")
        pos += _LENGTH_OCTETS
        if pos + length > len(payload):
            raise ValueError("a section runs past the end")
        pieces.append(payload[pos:pos + length])
        pos += length
    if pos != len(payload):
        raise ValueError("octets after the last section")
    try:
        document = json.loads(pieces[0])
    except (ValueError, RecursionError):            # RecursionError: nesting too deep
        raise ValueError("a damaged document") from None
    if not isinstance(document, dict):
        raise ValueError("no document")
    return document, pieces[1:]


def int_section(values) -> bytes:
    return array(INT_TYPE, values).tobytes()


def ints(section: bytes, count: int) -> array:
    """`count` 64-bit ints, every one >= 0 (offsets, sizes and counts are never negative)."""
    values = array(INT_TYPE)
    if len(section) != count * values.itemsize:
        raise ValueError("an int column of the wrong length")
    if section[_SIGN_OCTET::values.itemsize].translate(None, _NON_NEGATIVE_HIGH_OCTETS):
        raise ValueError("a negative offset, size or count")
    values.frombytes(section)
    return values


def flag_section(values) -> bytes:
    return bytes(map(int, values))


def flags(section: bytes, count: int) -> list[bool]:
    if len(section) != count or section.translate(None, b"\0\1"):
        raise ValueError("a flag column of the wrong length or not 0/1")
    return list(map(bool, section))


def text_section(texts) -> bytes:
    """Texts joined by NUL (which no file name, UID or user name holds); ValueError if one
    does, since it could not be read back."""
    joined = _NUL.join(texts)
    if joined.count(_NUL) != max(len(texts) - 1, 0):
        raise ValueError("a text holds NUL")
    return joined.encode("utf-8", "surrogateescape")


def texts(section: bytes, count: int) -> list[str]:
    """`count` texts, none of them empty."""
    if not count:
        if section:
            raise ValueError("texts where none were expected")
        return []
    values = section.decode("utf-8", "surrogateescape").split(_NUL)
    if len(values) != count or "" in values:
        raise ValueError("a text column of the wrong length or with an empty text")
    return values
