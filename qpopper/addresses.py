"""Client addresses: how they are written, and what the per-client counts count by.

Shared by the master, the session, the brute-force brakes and poppassd, so that one client is
one client everywhere:
  - `normalize_ip`: the address as the logs (fail2ban's lines included) and PAM_RHOST show
    it. An IPv4 client of a dual-stack socket (popper's `listen`, poppassd.socket's
    ListenStream=106) arrives as `::ffff:10.0.0.5`; it is written `10.0.0.5`, as an IPv4
    socket shows it, so that fail2ban bans the address the firewall sees.
  - `address_group`: the key of every count kept per client (max-children-per-address in
    the master, the address brake in auth/brakes.py). One host is usually given a whole IPv6
    /64 and may use any address in it, so an IPv6 client counts by its /64: counting single
    addresses would let it fill max-children alone, or never pay the address brake by taking
    a fresh address for each guess. IPv4 (also IPv4-mapped) counts by the address.
  - `parse_networks` / `in_networks`: CIDR lists such as auth-brakes-trusted-networks; an
    IPv4-mapped client is matched as its IPv4 address.
Pure functions of strings (no socket, no os): any layer may import this module.
"""

from __future__ import annotations

import ipaddress

IPV6_CLIENT_PREFIX = 64
"""An IPv6 client is counted by its /64 (the usual assignment to one host or one LAN)."""


def normalize_ip(address: str) -> str:
    """`::ffff:10.0.0.5` (a v4 client on a dual-stack socket) → `10.0.0.5`; scope ids dropped."""
    address = address.split("%", 1)[0]
    if address.lower().startswith("::ffff:") and "." in address:
        return address[7:]
    return address


def address_group(client_ip: str) -> str:
    """What the per-client counts count by: an IPv4 address (also IPv4-mapped), or the /64
    network of an IPv6 address (`2001:db8::/64`); anything else (not an IP peer, such as
    "unknown") as it is."""
    try:
        address = ipaddress.ip_address(client_ip.split("%", 1)[0])
    except ValueError:
        return client_ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_CLIENT_PREFIX), strict=False))
    return str(address)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[Network, ...]:
    """`10.0.0.0/8 192.0.2.7, 2001:db8::/32` -> the networks (a bare address is its own /32 or
    /128); ValueError naming the first item that is not one."""
    networks = []
    for item in text.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"'{item}' is not an IPv4 or IPv6 network (ADDRESS[/PREFIX])"
                             ) from None
    return tuple(networks)


def in_networks(client_ip: str, networks) -> bool:
    """Is the client (IPv4-mapped as IPv4) inside one of `networks`?"""
    try:
        address = ipaddress.ip_address(client_ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == net.version and address in net for net in networks)
