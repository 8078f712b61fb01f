"""A pop.auth store set up the way the real server insists on (tests of APOP, SCRAM and the
clear-text-password policy share it)."""

from __future__ import annotations

import os

from qpopper.auth.store import PopAuthStore


def owned_store(system_users, directory: str):
    """Create the store's owner account (a `qpt` system user) and an empty pop.auth in a 0700
    directory of that owner under directory; returns (owner, store)."""
    owner = system_users.create("own")
    store_dir = os.path.join(directory, "popauth")
    os.mkdir(store_dir, 0o700)
    os.chown(store_dir, owner.uid, owner.gid)
    store = PopAuthStore.create(os.path.join(store_dir, "pop.auth"), owner.uid, owner.gid)
    return owner, store
