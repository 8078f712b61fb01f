"""The package scripts never change a file through a link planted by another account (root).

debian/postinst runs as root on the pop.auth store (its directory belongs to the
pop-auth-owner account) and on the hashed spool directories (the spool is root:mail 2775: group
mail may rename and replace its entries). These tests run the real debian/postinst and
debian/postrm, on scratch paths (their CONFIG and STATE_DIR point into tmp_path; `popper` and
`python3` on PATH are this checkout's), with links planted where those accounts could plant
them, and check that the files the links point to are untouched.
"""

from __future__ import annotations

import grp
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.open_races import open_then, replace_with
from tests.helpers.sysusers import is_root
from tests.server_harness import make_spool_dir
from tests.helpers.repo import REPO

LETTERS = "abcdefghijklmnopqrstuvwxyz"

pytestmark = [
    pytest.mark.root,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not is_root(), reason="needs root: runs the package scripts as root"),
]


class Scratch:
    """A copy of a maintainer script that reads tmp_path's config and state directory."""

    def __init__(self, root: Path):
        self.root = root
        self.config = root / "qpopper.config"
        self.state = root / "state"
        self.bin = root / "bin"
        self.bin.mkdir()
        popper = self.bin / "popper"
        popper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -c "import sys; from qpopper.cli '
                          f'import popper_main; sys.exit(popper_main(sys.argv[1:]))" "$@"\n')
        python3 = self.bin / "python3"
        python3.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        for tool in (popper, python3):
            tool.chmod(0o755)

    def script(self, name: str) -> Path:
        text = (REPO / "debian" / name).read_text()
        text = text.replace("CONFIG=/etc/qpopper/qpopper.config", f"CONFIG={self.config}")
        text = text.replace("STATE_DIR=/var/lib/qpopper-py", f"STATE_DIR={self.state}")
        assert str(self.config) in text or name != "postinst"
        assert str(self.state) in text
        path = self.root / name
        path.write_text(text)
        path.chmod(0o755)
        return path

    def run(self, name: str, action: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, PATH=f"{self.bin}:/usr/sbin:/usr/bin:/sbin:/bin",
                   PYTHONPATH=str(REPO))
        result = subprocess.run([str(self.script(name)), action], capture_output=True,
                                text=True, timeout=60, env=env)
        assert result.returncode == 0, result.stderr
        return result


@pytest.fixture
def scratch(tmp_path):
    return Scratch(tmp_path)


@pytest.fixture
def pop_owner(system_users):
    return system_users.create("own", home=False)


def state_of(path: Path) -> tuple:
    st = os.lstat(path)
    return st.st_mode, st.st_uid, st.st_gid, st.st_nlink, path.read_bytes()


def store_config(scratch: Scratch, owner, store: Path, spool: Path) -> None:
    scratch.config.write_text(f"set pop-auth-owner = {owner.name}\n"
                              f"set pop-auth-file = {store}\n"
                              f"set spool-dir = {spool}\n")


def owners_directory(scratch: Scratch, owner) -> Path:
    """The store's directory as popauth -init makes it: the owner's, 0700."""
    directory = scratch.root / "popauth"
    directory.mkdir(mode=0o700)
    os.chown(directory, owner.uid, owner.gid)
    return directory


def spool_dir(scratch: Scratch) -> Path:
    return Path(make_spool_dir(str(scratch.root)))      # root:mail 2775, like /var/mail


def root_file(scratch: Scratch, name: str = "victim") -> Path:
    victim = scratch.root / name
    victim.write_bytes(b"root:secret-hash:19000:0:99999:7:::\n")
    victim.chmod(0o640)
    return victim


def test_postinst_does_not_follow_a_store_symlink(scratch, pop_owner):
    victim = root_file(scratch)
    store = owners_directory(scratch, pop_owner) / "pop.auth"
    store.symlink_to(victim)                 # what the owner account can plant
    os.lchown(store, pop_owner.uid, pop_owner.gid)
    store_config(scratch, pop_owner, store, spool_dir(scratch))
    before = state_of(victim)
    result = scratch.run("postinst", "configure")
    assert state_of(victim) == before
    assert os.stat(victim).st_uid == 0
    assert f"{store} not changed" in result.stderr


def test_postinst_does_not_change_a_store_hard_link(scratch, pop_owner):
    victim = root_file(scratch)
    store = owners_directory(scratch, pop_owner) / "pop.auth"
    os.link(victim, store)                   # protected_hardlinks stops the owner; not here
    store_config(scratch, pop_owner, store, spool_dir(scratch))
    before = state_of(victim)
    result = scratch.run("postinst", "configure")
    assert state_of(victim) == before
    assert "not a regular file with one link" in result.stderr


def test_postinst_still_gives_a_plain_store_to_the_owner(scratch, pop_owner):
    store = owners_directory(scratch, pop_owner) / "pop.auth"
    store.write_bytes(b"SQLite format 3\0")
    store.chmod(0o644)                       # e.g. made by root before pop-auth-owner changed
    store_config(scratch, pop_owner, store, spool_dir(scratch))
    scratch.run("postinst", "configure")
    st = os.stat(store)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (pop_owner.uid, 0o600)
    assert store.read_bytes() == b"SQLite format 3\0"


def test_postinst_makes_no_hashed_directory_through_a_planted_link(scratch, pop_owner):
    spool = spool_dir(scratch)
    elsewhere = scratch.root / "etc"         # a root directory outside the spool
    elsewhere.mkdir()
    (spool / "a").symlink_to(elsewhere)      # group mail may plant this in the spool
    store = owners_directory(scratch, pop_owner) / "pop.auth"
    store_config(scratch, pop_owner, store, spool)
    with scratch.config.open("a") as config:
        config.write("set hash-spool = 2\n")
    result = scratch.run("postinst", "configure")
    assert list(elsewhere.iterdir()) == []   # no etc/b ... etc/z, group mail writable
    assert (spool / "a").is_symlink()
    assert f"{spool}/a not used" in result.stderr
    mail_gid = grp.getgrnam("mail").gr_gid
    for path in [spool / "b", spool / "b" / "c", spool / "z" / "z"]:
        st = os.lstat(path)
        assert stat.S_ISDIR(st.st_mode)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, mail_gid, 0o2775)
    recorded = set((scratch.state / "created").read_text().split())
    assert str(spool / "b" / "c") in recorded
    assert not any(entry.startswith(f"{spool}/a/") for entry in recorded)


def test_postrm_purge_removes_nothing_through_a_planted_link(scratch, pop_owner):
    spool = spool_dir(scratch)
    store = owners_directory(scratch, pop_owner) / "pop.auth"
    store_config(scratch, pop_owner, store, spool)
    with scratch.config.open("a") as config:
        config.write("set hash-spool = 2\n")
    scratch.run("postinst", "configure")
    # Group mail replaces spool/a (made by postinst) with a link to a directory elsewhere
    # that has an empty b/ like the one postinst made.
    elsewhere = scratch.root / "elsewhere"
    (elsewhere / "b").mkdir(parents=True)
    (spool / "a").rename(scratch.root / "moved-a")
    (spool / "a").symlink_to(elsewhere)
    scratch.run("postrm", "purge")
    assert (elsewhere / "b").is_dir()
    assert not (spool / "c").exists()        # what postinst made (and is still its) is gone


def test_postinst_makes_a_missing_spool_and_fixes_an_existing_ones_group(scratch, pop_owner):
    """maintscript spool-dirs (the code debian/postinst and the RPM's %post share): a missing
    spool-dir is made root:mail 2775 and recorded for purge; an existing one gets group mail
    and g+rwxs, and its other bits and owner stay the administrator's."""
    mail_gid = grp.getgrnam("mail").gr_gid
    missing = scratch.root / "var" / "mail"
    store = owners_directory(scratch, pop_owner) / "pop.auth"
    store_config(scratch, pop_owner, store, missing)
    scratch.run("postinst", "configure")
    st = os.lstat(missing)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, mail_gid, 0o2775)
    assert str(missing) in (scratch.state / "created").read_text().split()

    existing = scratch.root / "existing"
    existing.mkdir(mode=0o755)
    existing.chmod(0o755)
    store_config(scratch, pop_owner, store, existing)
    scratch.run("postinst", "configure")
    st = os.lstat(existing)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, mail_gid, 0o2775)
    assert str(existing) not in (scratch.state / "created").read_text().split()


def test_maintscript_spool_dirs_says_what_is_wrong_with_the_configuration(tmp_path):
    config = tmp_path / "broken.config"
    config.write_text("set spool-dir = /var/mail\nset no-such-option = 1\n")
    result = subprocess.run([sys.executable, "-m", "qpopper.tools.maintscript", "spool-dirs",
                             str(config)], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{config}:2" in lines[0], result.stderr


def test_maintscript_owns_a_store_replaced_as_it_opened_it(tmp_path, monkeypatch):
    """The store renamed over by a new one between the open and the check: the new one is the
    one made private (once; not skipped as missing)."""
    import pwd
    from qpopper.tools import maintscript
    store = tmp_path / "pop.auth"
    store.write_bytes(b"old")
    os.chmod(store, 0o644)
    opener = open_then(store, replace_with(store, b"new", 0o644))
    monkeypatch.setattr(os, "open", opener)
    maintscript.own_store(str(store), pwd.getpwuid(os.getuid()).pw_name)
    monkeypatch.undo()
    assert opener.done and store.read_bytes() == b"new"
    assert stat.S_IMODE(os.stat(store).st_mode) == maintscript.STORE_MODE


def test_postinst_gives_the_decoy_key_to_the_new_owner_with_the_store(scratch, pop_owner):
    """pop-auth-owner changed: the store AND its SCRAM decoy key follow the new owner (the
    server refuses a key of another owner; docs/internals.md, "Store mechanisms")."""
    store = owners_directory(scratch, pop_owner) / "pop.auth"
    store.write_bytes(b"SQLite format 3\0")
    key = Path(f"{store}.decoy-key")
    key.write_bytes(b"k" * 32)
    for path in (store, key):
        os.chown(path, 54321, -1)                 # the former owner's
        path.chmod(0o600)
    store_config(scratch, pop_owner, store, spool_dir(scratch))
    scratch.run("postinst", "configure")
    for path in (store, key):
        st = os.stat(path)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (pop_owner.uid, 0o600), path
    assert key.read_bytes() == b"k" * 32


def test_postinst_makes_the_missing_decoy_key_of_a_store(scratch, pop_owner):
    store = owners_directory(scratch, pop_owner) / "pop.auth"
    store.write_bytes(b"SQLite format 3\0")
    os.chown(store, pop_owner.uid, -1)
    store.chmod(0o600)
    store_config(scratch, pop_owner, store, spool_dir(scratch))
    scratch.run("postinst", "configure")
    st = os.lstat(f"{store}.decoy-key")
    assert stat.S_ISREG(st.st_mode) and st.st_size == 32
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (pop_owner.uid, 0o600)
    assert sorted(os.listdir(store.parent)) == ["pop.auth", "pop.auth.decoy-key"]
    assert f"{store}.decoy-key" not in (scratch.state / "created").read_text()


def test_postinst_leaves_a_store_with_its_decoy_key_in_a_directory_it_cannot_write(scratch,
                                                                                  pop_owner):
    """The key is there: nothing to make, so nothing is written beside it, and a directory
    nobody may write (immutable here; a read-only mount alike) gets no warning that the key
    was "not made" at every configure."""
    store = owners_directory(scratch, pop_owner) / "pop.auth"
    store.write_bytes(b"SQLite format 3\0")
    key = Path(f"{store}.decoy-key")
    key.write_bytes(b"k" * 32)
    for path in (store, key):
        os.chown(path, pop_owner.uid, -1)
        path.chmod(0o600)
    store_config(scratch, pop_owner, store, spool_dir(scratch))
    subprocess.run(["chattr", "+i", str(store.parent)], check=True)
    try:
        result = scratch.run("postinst", "configure")
    finally:
        subprocess.run(["chattr", "-i", str(store.parent)], check=True)
    assert "decoy-key" not in result.stderr, result.stderr
    assert key.read_bytes() == b"k" * 32
    assert sorted(os.listdir(store.parent)) == ["pop.auth", "pop.auth.decoy-key"]


def test_postinst_does_not_follow_a_decoy_key_symlink(scratch, pop_owner):
    victim = root_file(scratch)
    store = owners_directory(scratch, pop_owner) / "pop.auth"
    store.write_bytes(b"SQLite format 3\0")
    key = Path(f"{store}.decoy-key")
    key.symlink_to(victim)                         # what the owner account can plant
    store_config(scratch, pop_owner, store, spool_dir(scratch))
    before = state_of(victim)
    result = scratch.run("postinst", "configure")
    assert state_of(victim) == before and os.path.islink(key)
    assert f"{key} not changed" in result.stderr
