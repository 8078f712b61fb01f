"""The TLS secrets every local user could read (root only: the real start-up checks): a private
key file others may read and reach, tls-passphrase in a file others may read or on the command
line. `popper --check-config` and the master's start-up warn of each; none stops the server."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.helpers.testpki import TestPki
from tests.server_harness import POPPER, PopperServer, SyslogCapture, write_config

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

KEY_WARNING = ("popper: warning: the TLS private key in {path} can be read by every local user "
               "(mode 0644): make it readable by root only (chmod o-r)")


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


def test_a_key_file_every_user_can_read_is_warned_of(world_tmp, pam_service, pki):
    good = pki.server("good")
    key = os.path.join(world_tmp, "good.key")           # every directory above: 0755
    shutil.copy(good.key_file, key)
    os.chmod(key, 0o644)
    config = config_with(world_tmp, pam_service, "key.config",
                         tls_server_cert_file=good.cert_file, tls_private_key_file=key)
    warning = KEY_WARNING.format(path=key)
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
    good = pki.server("inside")
    private = os.path.join(world_tmp, "private")
    os.mkdir(private, 0o700)
    key = os.path.join(private, "inside.key")
    os.rename(good.key_file, key)
    os.chmod(key, 0o644)
    config = config_with(world_tmp, pam_service, "private.config",
                         tls_server_cert_file=good.cert_file, tls_private_key_file=key)
    assert check_config(config) == []


def test_a_passphrase_others_can_read_is_warned_of(world_tmp, pam_service, pki):
    identity = pki.identity_file("locked", "right")
    config = config_with(world_tmp, pam_service, "pass.config", tls_identity_file=identity,
                         tls_passphrase="right")
    assert check_config(config) == []
    os.chmod(config, 0o644)
    assert check_config(config) == [
        f"popper: warning: tls-passphrase is set in {config}, mode 0644, which others can read; "
        f"set it in a root-only file (mode 0600) named with -f or config-file"]
    os.chmod(config, 0o600)
    checked = subprocess.run([POPPER, "--check-config", "-f", config, "--tls-passphrase=right"],
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0 and checked.stderr.splitlines() == [
        "popper: warning: tls-passphrase is set on the command line, which every local user "
        "can read (ps); set it in a root-only file (mode 0600) named with -f or config-file"
    ], checked.stderr
