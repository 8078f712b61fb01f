"""The maildrop's byte copy (spool -> drop, image -> spool, spool -> image): copy_file_range(2)
in ranges, pread/pwrite where the kernel refuses; the same bytes either way, one step per range;
big writes start their writeback on the way (sync_file_range(2)), so the fsync after waits less."""

import errno
import os

import pytest

from qpopper import limits
from qpopper.spool import durable
from tests.helpers.spoolcheck import small_tmpfs

SIZE = 2 * durable.KERNEL_COPY_OCTETS + 12345


def payload(n: int) -> bytes:
    return os.urandom(n)


def copy_file(src_path, dst_path, src_off, length, dst_off, prefix=b""):
    steps, refreshes = [], []
    src = os.open(src_path, os.O_RDONLY)
    dst = os.open(dst_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if prefix:
            os.pwrite(dst, prefix, 0)
        durable.copy_range(src, src_off, length, dst, dst_off, steps.append, "copy",
                           lambda: refreshes.append(1))
    finally:
        os.close(src)
        os.close(dst)
    return steps, refreshes


def test_kernel_copy_moves_the_exact_range_in_ranges(tmp_path):
    data = payload(SIZE)
    (tmp_path / "src").write_bytes(data)
    steps, refreshes = copy_file(tmp_path / "src", tmp_path / "dst", 7, SIZE - 7, 3, b"abc")
    assert (tmp_path / "dst").read_bytes() == b"abc" + data[7:]
    ranges = -(-(SIZE - 7) // durable.KERNEL_COPY_OCTETS)
    assert steps == ["copy"] * ranges and len(refreshes) == ranges


@pytest.mark.parametrize("refusal", [errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP])
def test_a_refused_kernel_copy_falls_back_to_user_space(tmp_path, monkeypatch, refusal):
    def refuse(*args):
        raise OSError(refusal, os.strerror(refusal))
    monkeypatch.setattr(os, "copy_file_range", refuse)
    data = payload(SIZE)
    (tmp_path / "src").write_bytes(data)
    steps, _ = copy_file(tmp_path / "src", tmp_path / "dst", 0, SIZE, 0)
    assert (tmp_path / "dst").read_bytes() == data
    # One step for the refused call, then one per user-space chunk.
    assert len(steps) == 1 + -(-SIZE // limits.COPY_CHUNK_OCTETS)


def test_a_kernel_copy_that_copies_nothing_falls_back(tmp_path, monkeypatch):
    """Some filesystems answer 0 for files they cannot copy: that is not end-of-file."""
    monkeypatch.setattr(os, "copy_file_range", lambda *args: 0)
    data = payload(100_000)
    (tmp_path / "src").write_bytes(data)
    copy_file(tmp_path / "src", tmp_path / "dst", 0, len(data), 0)
    assert (tmp_path / "dst").read_bytes() == data


def test_other_errors_are_not_swallowed(tmp_path, monkeypatch):
    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "copy_file_range", full)
    (tmp_path / "src").write_bytes(b"x" * 1000)
    with pytest.raises(OSError) as caught:
        copy_file(tmp_path / "src", tmp_path / "dst", 0, 1000, 0)
    assert caught.value.errno == errno.ENOSPC


def test_a_source_shorter_than_the_range_is_an_error(tmp_path):
    (tmp_path / "src").write_bytes(b"x" * 1000)
    with pytest.raises(OSError) as caught:
        copy_file(tmp_path / "src", tmp_path / "dst", 0, 5000, 0)
    assert caught.value.errno == errno.EIO
    assert (tmp_path / "dst").read_bytes() == b"x" * 1000


@pytest.mark.timeout(60)
def test_copy_across_filesystems(tmp_path):
    """Disk -> tmpfs and back: the kernel may refuse (EXDEV), the bytes arrive all the same."""
    data = payload(300_000)
    (tmp_path / "src").write_bytes(data)
    with small_tmpfs(tmp_path / "mnt") as mnt:
        copy_file(tmp_path / "src", mnt / "dst", 0, len(data), 0)
        assert (mnt / "dst").read_bytes() == data
        copy_file(mnt / "dst", tmp_path / "back", 1, len(data) - 1, 0)
        assert (tmp_path / "back").read_bytes() == data[1:]


def recording_writeback(monkeypatch) -> list[tuple[int, int]]:
    """Record the ranges handed to sync_file_range(2), still calling it (it must succeed)."""
    real = durable._start_writeback_call
    assert real is not None, "sync_file_range(2) is found on Linux"
    ranges = []

    def record(fd, offset, length, flags):
        ranges.append((offset, length))
        result = real(fd, offset, length, flags)
        assert result == 0
        return result
    monkeypatch.setattr(durable, "_start_writeback_call", record)
    return ranges


def contiguous(ranges, start):
    for offset, length in ranges:
        assert offset == start and length >= durable.WRITEBACK_OCTETS
        start += length
    return start


def test_a_big_copy_starts_its_writeback_as_it_goes(tmp_path, monkeypatch):
    ranges = recording_writeback(monkeypatch)
    size = 2 * durable.WRITEBACK_OCTETS + 5000
    data = payload(size)
    (tmp_path / "src").write_bytes(data)
    copy_file(tmp_path / "src", tmp_path / "dst", 0, size, 10, b"0123456789")
    assert (tmp_path / "dst").read_bytes() == b"0123456789" + data
    assert len(ranges) == 2 and contiguous(ranges, 10) <= 10 + size


def test_the_image_writer_starts_its_writeback_as_it_goes(tmp_path, monkeypatch):
    ranges = recording_writeback(monkeypatch)
    fd = os.open(tmp_path / "image", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        writer = durable.ChunkWriter(fd, lambda step: None, "write-image")
        data = payload(limits.COPY_CHUNK_OCTETS - 1)
        for _ in range(3 * durable.WRITEBACK_OCTETS // len(data)):
            writer.write(data)
        writer.flush()
        assert os.fstat(fd).st_size == writer.pos
    finally:
        os.close(fd)
    assert len(ranges) >= 2 and contiguous(ranges, 0) <= writer.pos


def test_without_sync_file_range_writing_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(durable, "_start_writeback_call", None)
    size = durable.WRITEBACK_OCTETS + 1
    data = payload(size)
    (tmp_path / "src").write_bytes(data)
    copy_file(tmp_path / "src", tmp_path / "dst", 0, size, 0)
    assert (tmp_path / "dst").read_bytes() == data
