"""preflight.warn_without_decoy_key (qpopper/server/preflight.py): a store whose SCRAM decoy
key is missing where the server cannot make it (the systemd units keep the store's directory
read-only) is warned of at start-up, reload and --check-config, with what to run
(docs/internals.md, "Store mechanisms")."""

from __future__ import annotations

import os

from qpopper.config import Config
from qpopper.server import preflight


def warnings(cfg) -> list[str]:
    said: list[str] = []
    preflight.warn_without_decoy_key(cfg, lambda priority, text: said.append(text))
    return said


def test_a_missing_key_that_cannot_be_made_is_warned_of(tmp_path, monkeypatch):
    store = tmp_path / "pop.auth"
    store.write_bytes(b"")
    cfg = Config.defaults().replace(pop_auth_file=str(store), store_mechanisms="on")
    assert warnings(cfg) == []                            # the server can make it itself
    monkeypatch.setattr(os, "access", lambda path, mode: False)     # a read-only directory
    assert warnings(cfg) == [
        f"{store}.decoy-key is missing and this server cannot make it: SCRAM's made-up "
        f"exchanges are keyed by /etc/machine-id, which local users can read; run popauth "
        f"-list once, as root, to make it"]
    (tmp_path / "pop.auth.decoy-key").write_bytes(b"k" * 32)
    (tmp_path / "pop.auth.decoy-key").chmod(0o600)
    assert warnings(cfg) == []
    os.unlink(tmp_path / "pop.auth.decoy-key")
    assert warnings(cfg.replace(store_mechanisms="off")) == []      # no SCRAM, no decoys


def test_a_key_the_exchanges_cannot_use_is_warned_of_naming_it_and_why(tmp_path):
    """The exchanges refuse a key of the wrong kind, mode, owner or size (they log it and
    fall back to /etc/machine-id): the start-up checks say so first, in the same line."""
    store = tmp_path / "pop.auth"
    store.write_bytes(b"")
    key = tmp_path / "pop.auth.decoy-key"
    cfg = Config.defaults().replace(pop_auth_file=str(store), store_mechanisms="on",
                                    pop_auth_owner="qpt-no-such-account")
    tail = "; SCRAM's made-up exchanges are keyed by /etc/machine-id until it is fixed"
    key.write_bytes(b"k" * 32)
    key.chmod(0o600)
    assert warnings(cfg) == []
    key.chmod(0o640)
    assert warnings(cfg) == [f"SCRAM decoy key {key}: mode 0640, not 0600{tail}"]
    key.chmod(0o600)
    key.write_bytes(b"k" * 5)
    assert warnings(cfg) == [f"SCRAM decoy key {key}: 5 octets, not 32{tail}"]
    key.unlink()
    (tmp_path / "elsewhere").write_bytes(b"k" * 32)
    key.symlink_to(tmp_path / "elsewhere")
    assert warnings(cfg) == [f"SCRAM decoy key {key}: not a regular file{tail}"]
    if os.geteuid() == 0:
        key.unlink()
        key.write_bytes(b"k" * 32)
        key.chmod(0o600)
        os.chown(key, 54321, -1)                  # a former pop-auth-owner's
        assert warnings(cfg) == [f"SCRAM decoy key {key}: owned by uid 54321, not by uid "
                                 f"{os.getuid()} (the store's owner){tail}"]
