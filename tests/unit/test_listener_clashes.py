"""listeners.clashing: which resolved listen entries cannot both be bound on one port (what
--check-config refuses before start-up's bind would, docs/operations.md)."""

from __future__ import annotations

import socket

from qpopper.server.listeners import clashing

V4, V6 = socket.AF_INET, socket.AF_INET6


def v4(host: str, port: int = 110):
    return (V4, (host, port), False)


def v6(host: str, port: int = 110, scope: int = 0, v6only: bool = False):
    return (V6, (host, port, 0, scope), v6only)


def test_distinct_addresses_on_one_port_do_not_clash():
    assert clashing([v4("127.0.0.1"), v4("127.0.0.2"), v6("::1")]) is None


def test_a_wildcard_takes_every_address_of_its_family_and_dual_stack_ipv4_too():
    assert clashing([v4("0.0.0.0"), v4("127.0.0.1")]) == (0, 1)
    assert clashing([v6("::"), v4("127.0.0.1")]) == (0, 1)
    assert clashing([v6("::", v6only=True), v4("127.0.0.1")]) is None


def test_the_same_address_twice_clashes_other_ports_do_not():
    assert clashing([v4("127.0.0.1"), v4("127.0.0.1")]) == (0, 1)
    assert clashing([v4("127.0.0.1"), v4("127.0.0.1", 995)]) is None


def test_one_link_local_address_on_two_interfaces_does_not_clash():
    """fe80::1%lo and fe80::1%eth0 are two addresses: the kernel binds both."""
    assert clashing([v6("fe80::1", scope=1), v6("fe80::1", scope=2)]) is None
    assert clashing([v6("fe80::1", scope=1), v6("fe80::1", scope=1)]) == (0, 1)
