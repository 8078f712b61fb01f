"""The TLS secrets someone other than root could read (root only: the real start-up checks): a
private key file or a file holding tls-passphrase that others may read and reach, that a
non-root account owns, or that has a second hard link; tls-passphrase on the command line.
`popper --check-config` and the master's start-up warn of each; none stops the server. One rule
judges both files (files.who_else_can_read; docs/operations.md, "Start-up checks")."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.helpers.testpki import TestPki
from tests.server_harness import POPPER, PopperServer, SyslogCapture, write_config

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

KEY_WARNING = ("popper: warning: the TLS private key in {path}: {why}; make it a file of root's "
               "that others cannot read (chown root, chmod o-r)")
EVERY_USER = "mode 0644, which every local user can read"
PASSPHRASE_WARNING = ("popper: warning: tls-passphrase is set in {path}: {why}; set it in a "
                      "root-only file (mode 0600) named with -f or config-file")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return TestPki(str(tmp_path_factory.mktemp("pki")))


def check_config(config: str) -> list[str]:
    """popper --check-config's warnings (it must accept the file)."""
    checked = subprocess.run([POPPER, "--check-config", "-f", config], capture_output=True,
                             text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    return checked.stderr.splitlines()


def config_with(world_tmp, pam_service, name: str, **options) -> str:
    config = os.path.join(world_tmp, name)
    write_config(config, tls_support="stls", pam_service=pam_service, spool_dir=world_tmp,
                 **options)
    os.chmod(config, 0o600)
    return config


def key_config(world_tmp, pam_service, pki, key: str, mode: int) -> tuple[str, str]:
    """(KEY, a configuration naming it): a new server key copied to KEY with MODE."""
    name = os.path.splitext(os.path.basename(key))[0]
    identity = pki.server(name)
    shutil.copy(identity.key_file, key)
    os.chmod(key, mode)
    return key, config_with(world_tmp, pam_service, f"{name}.config",
                            tls_server_cert_file=identity.cert_file, tls_private_key_file=key)


def test_a_key_file_every_user_can_read_is_warned_of(world_tmp, pam_service, pki):
    key, config = key_config(world_tmp, pam_service, pki,    # every directory above: 0755
                             os.path.join(world_tmp, "good.key"), 0o644)
    warning = KEY_WARNING.format(path=key, why=EVERY_USER)
    assert check_config(config) == [warning]
    syslog = SyslogCapture(world_tmp)
    server = PopperServer(world_tmp, config, syslog=syslog).start()   # only a warning
    try:
        syslog.wait_for(re.escape(warning.removeprefix("popper: warning: ")))
    finally:
        server.stop()
        syslog.close()
    os.chmod(key, 0o600)
    assert check_config(config) == []


def test_a_readable_key_in_a_private_directory_is_not_warned_of(world_tmp, pam_service, pki):
    """A directory only root may search keeps whatever is inside it (old certbot archives:
    0644 keys under 0700 directories)."""
    private = os.path.join(world_tmp, "private")
    os.mkdir(private, 0o700)
    key, config = key_config(world_tmp, pam_service, pki, os.path.join(private, "inside.key"),
                             0o644)
    assert check_config(config) == []


def test_a_passphrase_others_can_read_is_warned_of(world_tmp, pam_service, pki):
    identity = pki.identity_file("locked", "right")
    config = config_with(world_tmp, pam_service, "pass.config", tls_identity_file=identity,
                         tls_passphrase="right")
    assert check_config(config) == []
    os.chmod(config, 0o644)
    assert check_config(config) == [PASSPHRASE_WARNING.format(path=config, why=EVERY_USER)]
    os.chmod(config, 0o600)
    checked = subprocess.run([POPPER, "--check-config", "-f", config, "--tls-passphrase=right"],
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0 and checked.stderr.splitlines() == [
        "popper: warning: tls-passphrase is set on the command line, which every local user "
        "can read (ps); set it in a root-only file (mode 0600) named with -f or config-file"
    ], checked.stderr


def test_a_key_a_non_root_account_owns_or_with_another_link_is_warned_of(world_tmp, pam_service,
                                                                       pki):
    """Mode 0600 is no help when the owner is not root (a renewal account's key: it reads it,
    and may chmod it), nor when the file has another name (a hard link left in a directory
    others search)."""
    key, config = key_config(world_tmp, pam_service, pki, os.path.join(world_tmp, "owned.key"),
                             0o600)
    assert check_config(config) == []
    os.chown(key, 54321, -1)
    assert check_config(config) == [KEY_WARNING.format(
        path=key, why="owned by uid 54321, who can read it")]
    os.chown(key, 0, -1)
    os.link(key, os.path.join(world_tmp, "copy-of-owned.key"))
    assert check_config(config) == [KEY_WARNING.format(
        path=key, why="one of its 2 hard links, whose other names others may reach (keep it "
                      "one file)")]
    os.unlink(os.path.join(world_tmp, "copy-of-owned.key"))
    assert check_config(config) == []


def test_a_passphrase_file_is_judged_with_the_directories_above_it(world_tmp, pam_service, pki):
    """The passphrase's file by the key's rule: a 0644 file in a directory only root may search
    is safe; one a non-root account owns is not, even at 0600, when it can reach it."""
    identity = pki.identity_file("hidden", "right")
    private = os.path.join(world_tmp, "private-config")
    os.mkdir(private, 0o700)
    secret = os.path.join(private, "passphrase.config")
    with open(secret, "w") as f:
        f.write("set tls-passphrase = right\n")
    os.chmod(secret, 0o644)
    config = config_with(world_tmp, pam_service, "hidden.config", tls_identity_file=identity,
                         config_file=secret)
    assert check_config(config) == []                   # 0644, but in root's 0700 directory
    os.chmod(private, 0o755)
    assert check_config(config) == [PASSPHRASE_WARNING.format(path=secret, why=EVERY_USER)]
    os.chmod(secret, 0o600)
    os.chown(secret, 54321, -1)
    assert check_config(config) == [PASSPHRASE_WARNING.format(
        path=secret, why="owned by uid 54321, who can read it")]
