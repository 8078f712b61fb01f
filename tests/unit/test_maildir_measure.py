"""A message new to the index is counted a part at a time (maildir._counted): the same
octets as wire_octets() of the whole file, wherever the parts split a CR LF, and the same
header probe (docs/maildir.md, "What a message is")."""

from __future__ import annotations

import random

import pytest

from qpopper.spool import maildir


@pytest.mark.parametrize("part", [1, 2, 3, 7])
def test_counting_in_parts_is_wire_octets_of_the_whole(tmp_path, monkeypatch, part):
    monkeypatch.setattr(maildir, "MEASURE_CHUNK_OCTETS", part)
    rng = random.Random(part)
    path = tmp_path / "message"
    for _ in range(500):
        data = bytes(rng.choice(b"\r\nx.") for _ in range(rng.randrange(0, 40)))
        path.write_bytes(data)
        with open(path, "rb") as f:
            assert maildir._counted(f.fileno(), len(data)) == (
                maildir.wire_octets(data), data[:maildir.HEADER_PROBE_OCTETS]), data


def test_the_header_probe_is_the_first_part_of_a_long_file(tmp_path, monkeypatch):
    monkeypatch.setattr(maildir, "MEASURE_CHUNK_OCTETS", 4096)
    data = b"X-UIDL: 0123456789abcdef\n" + b"y" * 100_000 + b"\r"
    path = tmp_path / "message"
    path.write_bytes(data)
    with open(path, "rb") as f:
        octets, head = maildir._counted(f.fileno(), len(data))
    assert (octets, head) == (maildir.wire_octets(data), data[:maildir.HEADER_PROBE_OCTETS])


@pytest.mark.timeout(30)
def test_a_fifo_put_at_a_listed_name_is_passed_over_not_waited_on(tmp_path):
    """Between the listing (regular files only) and the measurement, a FIFO put at a name:
    opened without O_NONBLOCK, the login hung in open(2) holding the Maildir's lock; now it
    is passed over as a file gone since the listing."""
    import os
    new = tmp_path / "new"
    new.mkdir()
    os.mkfifo(new / "1700000000.M1P1.host")
    with pytest.raises(FileNotFoundError):
        maildir._measure(str(tmp_path), "new/1700000000.M1P1.host")
