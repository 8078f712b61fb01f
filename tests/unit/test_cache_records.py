"""A cache's message records are checked field by field even when the checksum is right
(a cache edited and re-summed, or written by a buggy build): every wrong type or value makes
decode refuse the whole cache, so the spool is scanned instead."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json

import pytest

from qpopper.spool import cache, mbox

FIELDS = [f.name for f in dataclasses.fields(mbox.Message)]
SPOOL = (b"From a@b Wed Dec  2 05:53:22 1992\nSubject: one\nStatus: RO\nX-UIDL: uid-one-0123456\n"
         b"\nbody\n\nFrom a@b Wed Dec  2 05:53:23 1992\nSubject: two\n\nbody two\n")


def encoded_doc():
    messages = mbox.scan(io.BytesIO(SPOOL))
    state = cache.SpoolState(1, 2, len(SPOOL), 3, "h", "t")
    data = cache.encode("alice", state, {"o": 1}, messages)
    return messages, json.loads(data.partition(b"\n")[2])


def summed(doc) -> bytes:
    body = json.dumps(doc, separators=(",", ":")).encode()
    return b"QPCACHE %d %s %d\n" % (cache.CACHE_VERSION, hashlib.sha256(body).hexdigest().encode(), len(body)) + body


def test_a_good_record_decodes_to_the_scanned_messages():
    messages, doc = encoded_doc()
    _, _, _, decoded = cache.decode(summed(doc))
    assert [dataclasses.asdict(m) for m in decoded] == [dataclasses.asdict(m) for m in messages]
    assert all(type(m.stripped) is tuple and all(type(p) is tuple for p in m.stripped)
               for m in decoded)


BAD_VALUES = {
    "int": [True, False, -1, 1.0, "1", None, [1]],
    "bool": [0, 1, None, "true"],
    "uid": ["", "ünïcode-uid", 5, None, ["x"]],
    "pairs": [[[1]], [[1, 2, 3]], [[True, 2]], [[1, 2.0]], [["1", 2]], [(1, 2, 3)], 7, None],
}


def kind(name: str) -> str:
    if name in ("stripped", "uidl_lines", "status_lines"):
        return "pairs"
    if name in ("uid_from_header", "retrieved", "hidden", "mmdf"):
        return "bool"
    return "uid" if name == "uid" else "int"


@pytest.mark.parametrize("name", FIELDS)
def test_every_wrong_value_of_every_field_is_refused(name):
    _, doc = encoded_doc()
    index = FIELDS.index(name)
    for bad in BAD_VALUES[kind(name)]:
        doc_copy = json.loads(json.dumps(doc))
        doc_copy["messages"][0][index] = bad
        with pytest.raises((ValueError, TypeError)):
            cache.decode(summed(doc_copy))


@pytest.mark.parametrize("record", [None, {}, "x", [], "too short"])
def test_a_record_that_is_not_a_full_list_is_refused(record):
    _, doc = encoded_doc()
    doc["messages"][1] = record if record != "too short" else doc["messages"][1][:-1]
    with pytest.raises((ValueError, TypeError)):
        cache.decode(summed(doc))
