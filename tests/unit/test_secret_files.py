"""files.who_else_can_read, the one rule for the secret files the start-up checks judge (the TLS
key, the file holding tls-passphrase; docs/operations.md, "Start-up checks"): what the system
tests cannot arrange through popper --check-config cheaply, a group grant and a symbolic link."""

from __future__ import annotations

import grp
import os

import pytest

from qpopper.files import who_else_can_read


@pytest.fixture
def open_dir(world_tmp):
    """A 0755 directory every user can search down to (pytest's tmp_path is 0700), and files
    of root's in it: another owner is an exposure of its own."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the files must be root's")
    return world_tmp


def secret_file(path: str, mode: int) -> str:
    with open(path, "w") as f:
        f.write("secret")
    os.chmod(path, mode)
    return path


def test_the_files_group_is_a_grant_not_an_exposure(open_dir):
    """Debian's keys: root:ssl-cert 0640 under root:ssl-cert 0710. Its group reads on purpose."""
    key = secret_file(os.path.join(open_dir, "group.key"), 0o640)
    os.chown(key, 0, grp.getgrnam("mail").gr_gid)
    assert who_else_can_read(key) is None
    os.chmod(key, 0o644)
    assert who_else_can_read(key) == "mode 0644, which every local user can read"


def test_a_symbolic_link_is_judged_by_the_directories_of_its_target(open_dir):
    private = os.path.join(open_dir, "private")
    os.mkdir(private, 0o700)
    key = secret_file(os.path.join(private, "inside.key"), 0o644)
    os.symlink(key, os.path.join(open_dir, "link.key"))
    assert who_else_can_read(os.path.join(open_dir, "link.key")) is None   # root's 0700

    os.chmod(private, 0o755)
    assert who_else_can_read(os.path.join(open_dir, "link.key")) == (
        "mode 0644, which every local user can read")
    assert who_else_can_read(os.path.join(open_dir, "missing.key")) is None


def test_a_passphrase_file_a_non_root_group_can_read_is_warned_of(open_dir):
    """tls-passphrase belongs in a root-only file (its help, docs/operations.md: root:root
    0600); a file its non-root group can read (root:users 0640) is warned
    of, as the warning's own advice says. The key's group grant (Debian's ssl-cert) has no
    counterpart for a configuration file."""
    from qpopper import config
    from qpopper.server import preflight
    secret = os.path.join(open_dir, "passphrase.config")
    with open(secret, "w") as f:
        f.write("set tls-passphrase = secret\n")
    os.chmod(secret, 0o640)
    os.chown(secret, 0, grp.getgrnam("users").gr_gid)
    said: list[str] = []
    preflight.warn_of_a_readable_passphrase(config.load(["-f", secret])[0],
                                            lambda priority, text: said.append(text))
    assert len(said) == 1 and said[0].startswith(f"tls-passphrase is set in {secret}"), said
