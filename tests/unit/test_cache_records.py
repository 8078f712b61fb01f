"""A cache's message records are checked column by column even when the checksum is right
(a cache edited and re-summed, or written by a buggy build): every wrong value of every field
makes decode refuse the whole cache, so the spool is scanned instead."""

from __future__ import annotations

import dataclasses
import io

import pytest

from qpopper.spool import cache, mbox, packed

FIELDS = [f.name for f in dataclasses.fields(mbox.Message)]
SPOOL = (b"From a@b Wed Dec  2 05:53:22 1992\nSubject: one\nStatus: RO\nX-UIDL: uid-one-0123456\n"
         b"\nbody\n\nFrom a@b Wed Dec  2 05:53:23 1992\nSubject: two\n\nbody two\n")
STATE = cache.SpoolState(1, 2, len(SPOOL), 3, "h", "t")
SECTIONS = 11                       # ints, flags, UIDs, and counts + pairs of four fields


def scanned():
    return mbox.scan(io.BytesIO(SPOOL))


def test_a_good_record_decodes_to_the_scanned_messages():
    messages = scanned()
    _, _, _, decoded = cache.decode(cache.encode("alice", STATE, {"o": 1}, messages))
    assert [dataclasses.asdict(m) for m in decoded] == [dataclasses.asdict(m) for m in messages]
    assert all(type(m.stripped) is tuple and all(type(p) is tuple for p in m.stripped)
               for m in decoded)
    assert all(type(getattr(m, name)) is type(getattr(scanned()[0], name))
               for m in decoded for name in FIELDS)


BAD_VALUES = {
    "int": [-1],
    "offset": [-1, 10 ** 9],        # negative, or past the end / out of order
    "bool": [2, 255],
    "uid": ["", "ünïcode-uid", "uid-two"],       # the last: the other message's UID
    "pairs": [((-1, 2),), ((5, 4),)],
}


def kind(name: str) -> str:
    if name in ("stripped", "uidl_lines", "status_lines", "stale_content_length"):
        return "pairs"
    if name in ("uid_from_header", "retrieved", "hidden", "mmdf"):
        return "bool"
    if name == "uid":
        return "uid"
    return "int" if name == "octets" else "offset"


@pytest.mark.parametrize("name", [n for n in FIELDS if n != "number"])
def test_every_wrong_value_of_every_field_is_refused(name):
    for bad in BAD_VALUES[kind(name)]:
        messages = scanned()
        if bad == "uid-two":
            bad = messages[1].uid
        messages[0] = dataclasses.replace(messages[0], **{name: bad})
        with pytest.raises(ValueError):
            cache.decode(cache.encode("alice", STATE, {"o": 1}, messages))


def test_the_numbers_are_the_positions():
    """The number is not stored: the n-th record is message n."""
    messages = [dataclasses.replace(m, number=n) for m, n in zip(scanned(), (7, 9))]
    _, _, _, decoded = cache.decode(cache.encode("alice", STATE, {"o": 1}, messages))
    assert [m.number for m in decoded] == [1, 2]


@pytest.mark.parametrize("count", [0, 1, 3, -1, "2"])
def test_a_document_whose_count_is_not_the_records_is_refused(count):
    data = cache.encode("alice", STATE, {"o": 1}, scanned())
    document, sections = packed.unpack(data, cache.MAGIC, cache.CACHE_VERSION, SECTIONS)
    assert document["count"] == 2
    document["count"] = count
    with pytest.raises(ValueError):
        cache.decode(packed.pack(cache.MAGIC, cache.CACHE_VERSION, document, sections))
