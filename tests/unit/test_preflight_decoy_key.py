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
    assert warnings(cfg) == []
    os.unlink(tmp_path / "pop.auth.decoy-key")
    assert warnings(cfg.replace(store_mechanisms="off")) == []      # no SCRAM, no decoys
