"""The PROXY protocol header decoder (qpopper/proxy_protocol.py): header_length on the first
bytes of a connection, then parse of the header it delimits.

Only ProxyError may escape. Invariants: every shorter prefix of a header that parses says
"read more" (None) or already the same length, as a reader taking it byte by byte needs; its
addresses and ports are real ones, and a header made from them parses back to them.
"""

from __future__ import annotations

import ipaddress

from qpopper import proxy_protocol

ALLOWED: tuple[type[BaseException], ...] = (proxy_protocol.ProxyError,)
MAX_LEN = 1200


def one_input(data: bytes) -> None:
    length = proxy_protocol.header_length(data)
    if length is None or length > len(data):
        return
    header = proxy_protocol.parse(data[:length])
    for k in range(length):
        assert proxy_protocol.header_length(data[:k]) in (None, length), f"prefix of {k} octets"
    if header.local:
        return
    ends = (header.source, header.source_port, header.destination, header.destination_port)
    ipaddress.ip_address(header.source), ipaddress.ip_address(header.destination)
    assert 0 <= header.source_port <= 65535 and 0 <= header.destination_port <= 65535, ends
    for made in (proxy_protocol.make_v1(*ends), proxy_protocol.make_v2(*ends)):
        again = proxy_protocol.parse(made)
        assert (again.source, again.source_port, again.destination,
                again.destination_port) == ends, (made, again)
