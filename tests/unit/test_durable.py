"""qpopper.spool.durable: the one copy of the crash-safety file helpers (maildrop, bulletins,
cache and locking use it), tested on real files."""

from __future__ import annotations

import ctypes
import errno
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
    assert durable.unlink_if_present(str(path)) is True     # this call removed it
    assert not path.exists()
    assert durable.unlink_if_present(str(path)) is False    # already gone: the wanted state
    assert durable.unlink_if_present(str(path), ignore_other_errors=True) is False


def test_unlink_if_present_raises_other_errors_unless_told(tmp_path):
    directory = tmp_path / "d"
    directory.mkdir()                                       # unlink(2) of a directory: EISDIR
    with pytest.raises(OSError) as caught:
        durable.unlink_if_present(str(directory))
    assert not isinstance(caught.value, FileNotFoundError)
    durable.unlink_if_present(str(directory), ignore_other_errors=True)
    assert directory.is_dir()


# --- publish: write a temporary file, then rename or link it into place ------------------------
@pytest.mark.parametrize("link", [False, True])
@pytest.mark.parametrize("planted", ["symlink", "hard link", "crash leftover"])
def test_publish_never_writes_through_what_sits_at_the_temporary_name(tmp_path, link, planted):
    """Whatever is at the temporary name is unlinked, never followed or written through: a
    symlink or a hard link to someone's file leaves that file as it was, and a crashed
    writer's half file is replaced."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"not yours\n")
    temp, final = tmp_path / ".file.tmp", tmp_path / "file"
    if planted == "symlink":
        temp.symlink_to(victim)
    elif planted == "hard link":
        os.link(victim, temp)
    else:
        temp.write_bytes(b"half a fi")
    assert durable.publish(str(temp), str(final), b"whole\n", link=link) is True
    assert final.read_bytes() == b"whole\n" and not final.is_symlink()
    assert os.stat(final).st_nlink == 1 and os.stat(final).st_mode & 0o777 == 0o600
    assert victim.read_bytes() == b"not yours\n" and os.stat(victim).st_nlink == 1
    assert not os.path.lexists(temp)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file to another user")
def test_publish_leaves_another_users_file_at_the_temporary_name_alone(tmp_path):
    """In a shared directory (the spool) the temporary name may hold another user's file:
    it is not a leftover of ours, so publish refuses instead of removing it."""
    temp, final = tmp_path / ".file.tmp", tmp_path / "file"
    temp.write_bytes(b"someone else's\n")
    os.chown(temp, 65534, 65534)
    with pytest.raises(FileExistsError):
        durable.publish(str(temp), str(final), b"whole\n")
    assert temp.read_bytes() == b"someone else's\n" and not final.exists()


def test_publish_by_rename_replaces_and_by_link_keeps_what_is_there(tmp_path):
    temp, final = str(tmp_path / "tmp"), tmp_path / "final"
    steps = []
    assert durable.publish(temp, str(final), b"one", step=steps.append)
    assert durable.publish(temp, str(final), b"two", sync=False, step=steps.append,
                           steps=("w", None, "r"))
    assert final.read_bytes() == b"two"
    assert steps == ["write", "fsync", "publish", "w", "r"]
    # a Maildir delivery: the name already there was delivered before; it stays
    assert durable.publish(temp, str(final), b"three", link=True) is False
    assert final.read_bytes() == b"two" and not os.path.lexists(temp)


def test_a_failed_publish_leaves_no_temporary_file(tmp_path):
    temp = str(tmp_path / "tmp")
    with pytest.raises(OSError):
        durable.publish(temp, str(tmp_path / "missing" / "final"), b"data")
    assert not os.path.lexists(temp)


def _rename_reply_lost(monkeypatch, done: bool):
    """os.rename as an NFS client reports a RENAME whose reply was lost and whose retry finds
    the source gone: ENOENT, after renaming (`done`) or, a true ENOENT, without."""
    real_rename = os.rename

    def rename(src, dst, **kwargs):
        if done:
            real_rename(src, dst, **kwargs)
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), src)
    monkeypatch.setattr(durable.os, "rename", rename)


@pytest.mark.parametrize("sync", [True, False])
def test_a_rename_done_whose_retry_finds_the_source_gone_is_published(tmp_path, monkeypatch,
                                                                      sync):
    temp, final = str(tmp_path / "tmp"), tmp_path / "final"
    final.write_bytes(b"old")
    _rename_reply_lost(monkeypatch, done=True)
    assert durable.publish(temp, str(final), b"new" * 1000, sync=sync) is True
    assert final.read_bytes() == b"new" * 1000 and not os.path.lexists(temp)


@pytest.mark.parametrize("old", [None, b"old", b"new"])
def test_a_rename_not_done_stays_an_error(tmp_path, monkeypatch, old):
    """The same error without the rename done is still the caller's, also when the final
    file already holds the same octets (another file: not ours)."""
    temp, final = str(tmp_path / "tmp"), tmp_path / "final"
    if old is not None:
        final.write_bytes(old)
    _rename_reply_lost(monkeypatch, done=False)
    with pytest.raises(FileNotFoundError):
        durable.publish(temp, str(final), b"new")
    assert not os.path.lexists(temp)
    assert (final.read_bytes() if old is not None else None) == old


def _renameat2_refused_by_the_file_system(*args):
    ctypes.set_errno(errno.EINVAL)           # what NFS answers to RENAME_NOREPLACE
    return -1


@pytest.mark.parametrize("renameat2", ["real", "none", "einval"])
def test_rename_no_replace_never_replaces_a_file(tmp_path, monkeypatch, renameat2):
    """With renameat2's RENAME_NOREPLACE; without it in the C library; refused by the file
    system (NFS): the last two look first."""
    if renameat2 == "none":
        monkeypatch.setattr(durable, "_renameat2_call", None)
    elif renameat2 == "einval":
        monkeypatch.setattr(durable, "_renameat2_call", _renameat2_refused_by_the_file_system)
    elif durable._renameat2_call is None:
        pytest.skip("this C library has no renameat2")
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"message")
    dst.write_bytes(b"another file")
    assert durable.rename_no_replace(str(src), str(dst)) is False
    assert src.read_bytes() == b"message" and dst.read_bytes() == b"another file"
    dst.unlink()
    assert durable.rename_no_replace(str(src), str(dst)) is True
    assert not src.exists() and dst.read_bytes() == b"message"
    with pytest.raises(FileNotFoundError):
        durable.rename_no_replace(str(src), str(tmp_path / "elsewhere"))
    with pytest.raises(ValueError):                # the C call would stop at the NUL
        durable.rename_no_replace(str(dst) + "\0tail", str(tmp_path / "elsewhere"))
    assert dst.read_bytes() == b"message"
