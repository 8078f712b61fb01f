"""The pop.auth store (reference §2.8, P7, decision §7.13): a real SQLite file on disk."""

from __future__ import annotations

import os
import sqlite3
import stat

import pytest

from qpopper.auth.store import SCHEMA_VERSION, PopAuthStore, StoreError
from qpopper.pop3.responses import PopError, RespCode


@pytest.fixture
def store(tmp_path):
    return PopAuthStore.create(str(tmp_path / "pop.auth"))


def test_create_makes_a_0600_file_with_the_current_schema(tmp_path):
    path = tmp_path / "pop.auth"
    old_umask = os.umask(0o000)          # even a permissive umask must not widen the mode
    try:
        PopAuthStore.create(str(path))
    finally:
        os.umask(old_umask)
    st = os.lstat(path)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.getuid()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {name for (name,) in
                  db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    db.close()
    assert {"users", "scram"} <= tables


def test_create_refuses_an_existing_file(tmp_path):
    path = tmp_path / "pop.auth"
    path.write_bytes(b"precious")
    with pytest.raises(StoreError, match="already exists"):
        PopAuthStore.create(str(path))
    assert path.read_bytes() == b"precious"


def test_set_get_replace_delete_list(store):
    assert store.get_secret("alice") is None
    store.set_secret("alice", "first")
    store.set_secret("bob", "b-secret")
    assert store.get_secret("alice") == "first"
    store.set_secret("alice", "second")
    assert store.get_secret("alice") == "second"
    assert store.list_users() == ["alice", "bob"]
    assert store.has_user("bob")
    assert store.delete("bob") is True
    assert store.delete("bob") is False
    assert store.list_users() == ["alice"]
    assert not store.has_user("bob")


def test_secrets_are_case_and_byte_exact(store):
    store.set_secret("carol", "Tëst secret with spaces")
    assert store.get_secret("carol") == "Tëst secret with spaces"
    assert store.get_secret("Carol") is None


def test_bad_names_and_secrets_are_refused(store):
    for name in ("", "a/b", "nul\0", "cr\rlf"):
        with pytest.raises(StoreError):
            store.set_secret(name, "x")
    with pytest.raises(StoreError):
        store.set_secret("dave", "")
    assert store.list_users() == []


def test_delete_removes_the_users_scram_verifiers(store):
    """set_secret stores SCRAM-SHA-1 and SCRAM-SHA-256 verifiers; they belong to the user row."""
    store.set_secret("erin", "s")
    with sqlite3.connect(store.path) as db:
        assert sorted(m for (m,) in db.execute("SELECT mechanism FROM scram")) == [
            "SCRAM-SHA-1", "SCRAM-SHA-256"]
    db.close()
    store.delete("erin")
    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT COUNT(*) FROM scram").fetchone()[0] == 0
    db.close()


def test_lookups_are_read_only(store):
    store.set_secret("frank", "s")
    before = os.stat(store.path)
    assert store.get_secret("frank") == "s"
    assert store.list_users() == ["frank"]
    after = os.stat(store.path)
    assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size)
    assert sorted(os.listdir(os.path.dirname(store.path))) == ["pop.auth"]   # no journal left


def test_a_failed_transaction_changes_nothing(store, monkeypatch):
    store.set_secret("gina", "old")
    monkeypatch.setattr("qpopper.auth.store._BUSY_TIMEOUT_S", 0.1)
    # Another writer (popauth) holds the write lock: our change fails whole, readably.
    blocker = sqlite3.connect(store.path, timeout=0)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError, match="nothing was changed"):
            store.set_secret("gina", "new")
        assert store.get_secret("gina") == "old"     # readers are not blocked meanwhile
    finally:
        blocker.rollback()
        blocker.close()
    assert store.get_secret("gina") == "old"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o660, 0o400, 0o700])
def test_wrong_mode_is_sys_perm_with_qpoppers_text(store, mode):
    store.set_secret("hal", "s")
    os.chmod(store.path, mode)
    with pytest.raises(PopError) as refused:
        store.get_secret("hal")
    assert refused.value.code is RespCode.SYS_PERM
    assert refused.value.text == f"POP authentication DB has wrong mode (0{mode:o})"
    assert refused.value.render() == (
        f"-ERR [SYS/PERM] POP authentication DB has wrong mode (0{mode:o})\r\n".encode())
    assert store.path not in refused.value.text       # paths go to the log only
    assert store.path in refused.value.log


def test_wrong_owner_is_sys_perm(store):
    store.set_secret("ivy", "s")
    other_owner = PopAuthStore(store.path, owner_uid=os.getuid() + 1)
    with pytest.raises(PopError) as refused:
        other_owner.get_secret("ivy")
    assert refused.value.code is RespCode.SYS_PERM
    assert "owner uid" in refused.value.log


def test_a_symlink_is_refused(store, tmp_path):
    link = tmp_path / "link.auth"
    link.symlink_to(store.path)
    with pytest.raises(PopError) as refused:
        PopAuthStore(str(link)).get_secret("x")
    assert refused.value.code is RespCode.SYS_PERM
    assert "not a regular file" in refused.value.log


def test_missing_or_garbage_store_is_sys_temp(tmp_path):
    with pytest.raises(PopError) as missing:
        PopAuthStore(str(tmp_path / "absent")).get_secret("x")
    assert missing.value.code is RespCode.SYS_TEMP
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"this is not sqlite" * 100)
    os.chmod(garbage, 0o600)
    with pytest.raises(PopError) as broken:
        PopAuthStore(str(garbage)).get_secret("x")
    assert broken.value.code is RespCode.SYS_TEMP
    assert not (tmp_path / "absent").exists()          # a lookup never creates the file


def test_changes_refuse_a_store_with_the_wrong_mode(store):
    os.chmod(store.path, 0o644)
    with pytest.raises(StoreError, match="mode 0644"):
        store.set_secret("jo", "s")
