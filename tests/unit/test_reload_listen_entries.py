"""master_lifecycle.listen_entries: what a reload compares with the listeners start-up opened
(docs/operations.md, "Start-up checks"). Entries in another order open nothing new, so a
reload that only reorders them says nothing; another entry, or a moved one, is told."""

from __future__ import annotations

from qpopper.config import Config
from qpopper.server.master_lifecycle import listen_entries


def entries(listen, tls_listen=()):
    return listen_entries(Config.defaults().replace(listen=list(listen),
                                                    tls_listen=list(tls_listen)))


def test_the_same_entries_in_another_order_are_no_change():
    assert entries(["127.0.0.1:110", "[::1]:110"], ["127.0.0.1:995"]) == \
        entries(["[::1]:110", "127.0.0.1:110"], ["127.0.0.1:995"])


def test_another_entry_or_one_moved_to_tls_listen_is_a_change():
    start = entries(["127.0.0.1:110"], ["127.0.0.1:995"])
    assert entries(["127.0.0.1:110", "127.0.0.1:111"], ["127.0.0.1:995"]) != start
    assert entries([], ["127.0.0.1:110", "127.0.0.1:995"]) != start
