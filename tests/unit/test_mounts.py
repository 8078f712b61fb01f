"""The file system of an open file (qpopper/spool/mounts.py): the mount table is read once a
mount, not at every spool lock; a mount the table does not answer for is asked about again."""

from __future__ import annotations

import errno
import os
import types

import pytest

from qpopper.spool import mounts

MOUNTINFO = "40 22 0:53 / /srv/mail rw,relatime shared:20 - nfs4 filer:/mail rw,vers=4.2\n"


@pytest.fixture
def reads(monkeypatch):
    """The paths mounts reads, in order; the remembered answers start empty."""
    monkeypatch.setattr(mounts, "_KNOWN_TYPES", {})
    read = mounts._read
    paths = []

    def counting(path):
        paths.append(path)
        return read(path)
    monkeypatch.setattr(mounts, "_read", counting)
    return paths


def mountinfo_reads(paths) -> int:
    return paths.count("/proc/self/mountinfo")


def test_the_mount_table_is_read_once_a_mount(tmp_path, reads):
    fds = [os.open(tmp_path, os.O_RDONLY), os.open(tmp_path, os.O_RDONLY)]
    try:
        first = mounts.fs_type_of(fds[0])
        assert first in mounts.LOCAL_DISK_TYPES and mountinfo_reads(reads) == 1
        assert [mounts.fs_type_of(fd) for fd in fds] == [first, first]
        assert mounts.on_local_disk(fds[1])
    finally:
        for fd in fds:
            os.close(fd)
    assert mountinfo_reads(reads) == 1
    assert reads.count(f"/proc/self/fdinfo/{fds[0]}") == 2      # the mount id is asked each time


def test_another_device_or_an_unknown_mount_is_looked_up_again(tmp_path, reads, monkeypatch):
    """One mount id (set) on two devices, as for a mount given an id that came free: each
    looked up; a mount id the table lacks is not remembered."""
    fdinfo = {"mount": "40"}

    def tables(path):
        reads.append(path)
        return MOUNTINFO if path.endswith("mountinfo") else f"mnt_id:\t{fdinfo['mount']}\n"
    monkeypatch.setattr(mounts, "_read", tables)
    here, null = os.open(tmp_path, os.O_RDONLY), os.open(os.devnull, os.O_RDONLY)
    try:
        assert os.fstat(here).st_dev != os.fstat(null).st_dev
        assert [mounts.fs_type_of(fd) for fd in (here, null, here, null)] == ["nfs4"] * 4
        assert mountinfo_reads(reads) == 2
        fdinfo["mount"] = "99"
        assert [mounts.fs_type_of(here), mounts.fs_type_of(here)] == [None, None]
        assert mountinfo_reads(reads) == 4
    finally:
        os.close(here)
        os.close(null)


def test_the_remembered_answers_are_bounded(tmp_path, reads, monkeypatch):
    monkeypatch.setattr(mounts, "_KNOWN_TYPES",
                        {(str(n), 0): "ext4" for n in range(mounts.KNOWN_TYPES_MAX)})
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        assert mounts.fs_type_of(fd) in mounts.LOCAL_DISK_TYPES
    finally:
        os.close(fd)
    assert len(mounts._KNOWN_TYPES) == 1


def test_a_stale_file_is_answered_from_the_table_and_not_remembered(tmp_path, reads,
                                                                    monkeypatch):
    """NFS's ESTALE from fstat (the file removed meanwhile) is not a fault here: the lock's
    same-file check finds it; the type is still told, and nothing is remembered for it."""
    def stale(fd):
        raise OSError(errno.ESTALE, os.strerror(errno.ESTALE))
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        monkeypatch.setattr(mounts, "os", types.SimpleNamespace(fstat=stale))
        assert mounts.fs_type_of(fd) in mounts.LOCAL_DISK_TYPES
        assert mounts.fs_type_of(fd) in mounts.LOCAL_DISK_TYPES
    finally:
        os.close(fd)
    assert mountinfo_reads(reads) == 2 and mounts._KNOWN_TYPES == {}
