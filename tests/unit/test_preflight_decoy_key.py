"""preflight.warn_without_decoy_key (qpopper/server/preflight.py): a store whose SCRAM decoy
key is missing where the server cannot make it (the systemd units keep the store's directory
read-only) is warned of at start-up, reload and --check-config, with what to run
(docs/internals.md, "Store mechanisms")."""

from __future__ import annotations

import os
import pwd

import pytest

from qpopper.auth.policy import usable_decoy_key
from qpopper.auth.store import DecoyKeyUnusable, PopAuthStore, store_owner_uid
from qpopper.config import Config
from qpopper.server import preflight


def warnings(cfg) -> list[str]:
    said: list[str] = []
    preflight.warn_without_decoy_key(cfg, lambda priority, text: said.append(text))
    return said


def store_with_key(tmp_path, mode: int, owner: str):
    """An empty store, its 32-octet decoy key of `mode`, and a configuration offering SCRAM
    with pop-auth-owner `owner`: (store, key, cfg)."""
    store = tmp_path / "pop.auth"
    store.write_bytes(b"")
    key = tmp_path / "pop.auth.decoy-key"
    key.write_bytes(b"k" * 32)
    key.chmod(mode)
    return store, key, Config.defaults().replace(pop_auth_file=str(store),
                                                 store_mechanisms="on", pop_auth_owner=owner)


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
        assert warnings(cfg.replace(pop_auth_owner="nobody")) == [
            f"SCRAM decoy key {key}: owned by uid 54321, not by uid "
            f"{pwd.getpwnam('nobody').pw_uid} (the store's owner){tail}"]
        assert warnings(cfg) == [f"SCRAM decoy key {key}: owned by uid 54321, not by root "
                                 f"(pop-auth-owner has no account){tail}"]


@pytest.mark.parametrize("owner", ["nobody", "qpt-no-such-account"])
def test_the_check_judges_the_keys_owner_as_the_exchanges_do(tmp_path, owner):
    """The start-up check warns exactly of a key the exchanges refuse (store.store_owner_uid,
    the one owner both use): as root, pop-auth-owner's uid, and none when that account is
    missing (not the store file's owner, which the check once fell back to: a key owned like
    the store passed the check and was refused at every exchange); not as root, the server's
    own uid (not pop-auth-owner's, which the exchanges never use then)."""
    store, key, cfg = store_with_key(tmp_path, 0o600, owner)
    if os.geteuid() == 0:
        rightful = pwd.getpwnam(owner).pw_uid if owner == "nobody" else 0   # root's only
        uids = [0, 54321, pwd.getpwnam("nobody").pw_uid]
    else:
        rightful, uids = os.getuid(), [os.getuid()]
    for uid in uids:
        if os.geteuid() == 0:
            os.chown(store, uid, -1)        # the store's owner: no say in the key's
            os.chown(key, uid, -1)
        exchanges = PopAuthStore(str(store), store_owner_uid(cfg))
        try:
            exchanges.decoy_key()
            refused = False
        except DecoyKeyUnusable:
            refused = True
        assert bool(warnings(cfg)) == refused, (owner, uid)
        assert refused == (uid not in (0, rightful)), (owner, uid)


def test_an_exchange_logs_a_key_fault_once_and_not_after_the_start_up_warning(tmp_path):
    """The exchanges of one process log a fault once, not at every SCRAM exchange for a name
    without a verifier; one the master warned of at start-up or reload (before forking the
    process) they do not log again. A new fault is logged (store.first_telling_of_decoy_key_fault)."""
    store = tmp_path / "pop.auth"
    store.write_bytes(b"")
    key = tmp_path / "pop.auth.decoy-key"
    key.write_bytes(b"k" * 31)
    key.chmod(0o600)
    said: list[str] = []

    def log(priority, text):
        said.append(text)
    exchanges = PopAuthStore(str(store), os.getuid())
    assert [usable_decoy_key(exchanges, log) for _ in range(3)] == [None] * 3
    assert said == [f"SCRAM decoy key {key}: 31 octets, not 32; SCRAM's made-up exchanges are "
                    f"keyed by /etc/machine-id until it is fixed"]
    key.chmod(0o640)
    cfg = Config.defaults().replace(pop_auth_file=str(store), store_mechanisms="on")
    assert len(warnings(cfg)) == 1                  # the master's warning, at every start
    assert len(warnings(cfg)) == 1
    usable_decoy_key(exchanges, log)
    assert len(said) == 1                           # told by the master already


def test_a_fault_that_comes_back_after_a_reload_fixed_it_is_logged_again(tmp_path):
    """The master warned of a fault at start-up; the administrator fixed the key and
    reloaded (no warning then); later the same fault is back (a restore, a wrong chmod):
    the exchanges of the processes forked after that must log it, as no reload said it
    since."""
    store, key, cfg = store_with_key(tmp_path, 0o640, "root")
    assert len(warnings(cfg)) == 1                  # start-up: the master warns
    key.chmod(0o600)
    assert warnings(cfg) == []                      # fixed, reloaded
    key.chmod(0o640)                                # the same fault, back; no reload
    said: list[str] = []
    exchanges = PopAuthStore(str(store), store_owner_uid(cfg))
    usable_decoy_key(exchanges, lambda priority, text: said.append(text))
    assert len(said) == 1, said
