"""The PROXY protocol header (HAProxy's send-proxy / send-proxy-v2), without any I/O.

A load balancer that forwards a TCP connection writes one header before the client's first
byte, naming the client's address and port; docs/scale-out.md says where qpopper-py reads it
and whom it believes. This module only decodes bytes:

    header_length(data) -> total octets of the header at the start of `data`, or None while
                           `data` is a proper prefix of a header; ProxyError when it cannot be
    parse(header)       -> ProxyHeader

so a reader can take exactly the header's octets off a socket and leave the POP3 (or TLS)
bytes behind it unread.

Version 1 is one text line: `PROXY TCP4|TCP6 SRC DST SPORT DPORT\\r\\n`, or `PROXY UNKNOWN...`
(the proxy's own connection, e.g. a health check), at most 107 octets. Version 2 is binary: a
12-octet signature, version and command (LOCAL: the proxy's own connection; PROXY), family and
transport, a 16-bit length, the addresses, then TLVs (type, 16-bit length, value) that this
server has no use for: each is checked to lie inside the header and skipped. Anything else —
other text, a bad address, a port out of range, a v2 header longer than MAX_V2_OCTETS, a UNIX
or datagram family — is a ProxyError.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V1_MAX_OCTETS = 107
"""The specification's longest v1 line (TCP6 with the longest addresses), CRLF included."""

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_OCTETS = 16
MAX_V2_OCTETS = 1024
"""Longest v2 header accepted (the 16 fixed octets included). The addresses take at most 36
(IPv6); the rest is room for the TLVs HAProxy may add (unique id, ALPN, authority, SSL
details, CRC32C). The format allows 65,551; nothing this server needs is that long."""

_V2_COMMAND_LOCAL = 0x0
_V2_COMMAND_PROXY = 0x1
_V2_FAMILIES = {0x11: ("TCP4", 12), 0x21: ("TCP6", 36)}      # family/transport byte
_V2_UNSPEC = 0x00
_TLV = struct.Struct(">BH")


class ProxyError(ValueError):
    """Not a PROXY protocol header this server accepts (the text says why, for the log)."""


@dataclass(frozen=True)
class ProxyHeader:
    """What a header says. `local`: the proxy's own connection (v2 LOCAL, v1 UNKNOWN, or v2
    PROXY with family UNSPEC) — a health check, no client behind it; the addresses are then
    None. Otherwise the client's (source) and the proxy's listening (destination) ends."""

    version: int
    local: bool
    source: str | None = None
    source_port: int | None = None
    destination: str | None = None
    destination_port: int | None = None


def header_length(data: bytes) -> int | None:
    """Octets of the header that `data` begins with; None when `data` is still a proper
    prefix of one (read more, then ask again); ProxyError when `data` cannot begin one."""
    if not data:
        return None
    if data[:1] == V1_PREFIX[:1]:
        if not V1_PREFIX.startswith(data[:len(V1_PREFIX)]):
            raise ProxyError("not a PROXY protocol header")
        end = data.find(b"\r\n", 0, V1_MAX_OCTETS)
        if end >= 0:
            return end + 2
        if len(data) >= V1_MAX_OCTETS or b"\n" in data[:V1_MAX_OCTETS]:
            raise ProxyError(f"v1 header without CRLF in its first {V1_MAX_OCTETS} octets")
        return None
    if data[:1] == V2_SIGNATURE[:1]:
        if not V2_SIGNATURE.startswith(data[:len(V2_SIGNATURE)]):
            raise ProxyError("not a PROXY protocol header")
        if len(data) < V2_FIXED_OCTETS:
            return None
        total = V2_FIXED_OCTETS + int.from_bytes(data[14:16], "big")
        if total > MAX_V2_OCTETS:
            raise ProxyError(f"v2 header of {total} octets (limit {MAX_V2_OCTETS})")
        return total
    raise ProxyError("not a PROXY protocol header")


def parse(header: bytes) -> ProxyHeader:
    """The complete header (exactly header_length(header) octets) → ProxyHeader."""
    if header_length(header) != len(header):
        raise ProxyError("incomplete PROXY protocol header")
    if header.startswith(V2_SIGNATURE):
        return _parse_v2(header)
    return _parse_v1(header)


def _parse_v1(header: bytes) -> ProxyHeader:
    try:
        line = header[len(V1_PREFIX):-2].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyError("v1 header is not ASCII") from None
    words = line.split(" ")
    if words[0] == "UNKNOWN":
        return ProxyHeader(1, local=True)        # the rest of the line is to be ignored
    if len(words) != 5 or words[0] not in ("TCP4", "TCP6"):
        raise ProxyError("v1 header is not 'PROXY TCP4|TCP6 SRC DST SPORT DPORT'")
    version = 4 if words[0] == "TCP4" else 6
    source = _v1_address(words[1], version)
    destination = _v1_address(words[2], version)
    return ProxyHeader(1, local=False, source=source, source_port=_v1_port(words[3]),
                       destination=destination, destination_port=_v1_port(words[4]))


def _v1_address(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyError(f"v1 header: {text[:45]!r} is not an address") from None
    if address.version != version:
        raise ProxyError(f"v1 header: {text!r} is not an IPv{version} address")
    if version == 6 and address.scope_id is not None:
        raise ProxyError(f"v1 header: {text[:45]!r} has a scope id, which names nothing "
                         f"to this host")
    return str(address)


def _v1_port(text: str) -> int:
    # decimal without leading zeros or signs, as the specification writes it
    if not text.isdigit() or not text.isascii() or (len(text) > 1 and text[0] == "0") \
            or int(text) > 65535:
        raise ProxyError(f"v1 header: {text[:8]!r} is not a port")
    return int(text)


def _parse_v2(header: bytes) -> ProxyHeader:
    version_command, family = header[12], header[13]
    if version_command >> 4 != 2:
        raise ProxyError(f"v2 header with version {version_command >> 4}")
    command = version_command & 0x0F
    if command not in (_V2_COMMAND_LOCAL, _V2_COMMAND_PROXY):
        raise ProxyError(f"v2 header with command {command}")
    body = header[V2_FIXED_OCTETS:]
    if command == _V2_COMMAND_LOCAL or family == _V2_UNSPEC:
        # the specification: skip the address block and TLVs, use the real endpoints
        return ProxyHeader(2, local=True)
    if family not in _V2_FAMILIES:
        raise ProxyError(f"v2 header with family/transport 0x{family:02x} "
                         f"(only TCP over IPv4 or IPv6)")
    name, address_octets = _V2_FAMILIES[family]
    if len(body) < address_octets:
        raise ProxyError(f"v2 {name} header with {len(body)} octets of addresses")
    _check_tlvs(body[address_octets:])
    size = 4 if name == "TCP4" else 16
    source = ipaddress.ip_address(body[:size])
    destination = ipaddress.ip_address(body[size:2 * size])
    source_port, destination_port = struct.unpack_from(">HH", body, 2 * size)
    return ProxyHeader(2, local=False, source=str(source), source_port=source_port,
                       destination=str(destination), destination_port=destination_port)


def _check_tlvs(data: bytes) -> None:
    """Every TLV must lie inside the header; their contents are not used."""
    offset = 0
    while offset < len(data):
        if offset + _TLV.size > len(data):
            raise ProxyError("v2 header: truncated TLV")
        _, length = _TLV.unpack_from(data, offset)
        offset += _TLV.size + length
        if offset > len(data):
            raise ProxyError("v2 header: a TLV runs past the header's end")


# --- making headers (the tests' clients, the documentation's examples) ------------------------
def make_v1(source: str, source_port: int, destination: str, destination_port: int) -> bytes:
    family = "TCP6" if ":" in source else "TCP4"
    return f"PROXY {family} {source} {destination} {source_port} {destination_port}\r\n".encode()


def make_v2(source: str | None, source_port: int = 0, destination: str | None = None,
            destination_port: int = 0, tlvs: bytes = b"") -> bytes:
    """A v2 PROXY header, or LOCAL when `source` is None."""
    if source is None:
        return V2_SIGNATURE + bytes((0x20, _V2_UNSPEC)) + len(tlvs).to_bytes(2, "big") + tlvs
    src, dst = ipaddress.ip_address(source), ipaddress.ip_address(destination)
    family = 0x11 if src.version == 4 else 0x21
    body = src.packed + dst.packed + struct.pack(">HH", source_port, destination_port) + tlvs
    return V2_SIGNATURE + bytes((0x21, family)) + len(body).to_bytes(2, "big") + body

