"""qpopper.spool.durable: the one copy of the crash-safety file helpers (maildrop, bulletins,
cache and locking use it), tested on real files."""

from __future__ import annotations

import hashlib
import os

import pytest

from qpopper import limits
from qpopper.spool import durable

pytestmark = pytest.mark.timeout(30)


def test_pwrite_all_writes_everything_at_the_offset(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    data = bytes(range(256)) * 1000
    fd = os.open(path, os.O_RDWR)
    try:
        durable.pwrite_all(fd, data, 4)
        durable.pwrite_all(fd, memoryview(b"xy")[1:], 2)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"01y3" + data


def test_sha256_of_range_reads_past_one_chunk(tmp_path):
    data = os.urandom(limits.COPY_CHUNK_OCTETS * 2 + 17)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert durable.sha256_of_range(fd, 5, len(data) - 9) == \
            hashlib.sha256(data[5:-4]).hexdigest()
        # A range past the end hashes what is there: it cannot match the longer content.
        assert durable.sha256_of_range(fd, 0, len(data) + 100) == hashlib.sha256(data).hexdigest()
        assert durable.sha256_of_range(fd, 0, 0) == hashlib.sha256(b"").hexdigest()
    finally:
        os.close(fd)


def test_fsync_dir_and_parent_dir(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    durable.fsync_dir(str(tmp_path))
    durable.fsync_parent_dir(str(tmp_path / "f"))
    with pytest.raises(NotADirectoryError):
        durable.fsync_dir(str(tmp_path / "f"))
    with pytest.raises(FileNotFoundError):
        durable.fsync_parent_dir(str(tmp_path / "missing" / "f"))


def test_fsync_parent_dir_of_a_bare_name_is_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    durable.fsync_parent_dir("spool")


def test_unlink_if_present(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x")
    durable.unlink_if_present(str(path))
    assert not path.exists()
    durable.unlink_if_present(str(path))                    # already gone: the wanted state
    durable.unlink_if_present(str(path), ignore_other_errors=True)


def test_unlink_if_present_raises_other_errors_unless_told(tmp_path):
    directory = tmp_path / "d"
    directory.mkdir()                                       # unlink(2) of a directory: EISDIR
    with pytest.raises(OSError) as caught:
        durable.unlink_if_present(str(directory))
    assert not isinstance(caught.value, FileNotFoundError)
    durable.unlink_if_present(str(directory), ignore_other_errors=True)
    assert directory.is_dir()
