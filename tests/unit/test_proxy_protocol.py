"""The PROXY protocol decoder (qpopper/proxy_protocol.py): the specification's forms, the
refusals, and properties over many random and mutated headers (docs/scale-out.md)."""

from __future__ import annotations

import random
import socket
import struct
import threading

import pytest

from qpopper.server import prelogin
from qpopper import proxy_protocol as pp

SIG = pp.V2_SIGNATURE


def test_v1_tcp4_tcp6_and_unknown():
    header = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 110\r\n"
    assert pp.header_length(header + b"USER x\r\n") == len(header)
    got = pp.parse(header)
    assert (got.version, got.local, got.source, got.source_port, got.destination,
            got.destination_port) == (1, False, "192.0.2.7", 56324, "198.51.100.1", 110)
    got = pp.parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 1 65535\r\n")
    assert (got.source, got.source_port, got.destination_port) == ("2001:db8::7", 1, 65535)
    # UNKNOWN: the rest of the line is ignored (the proxy's own connection)
    assert pp.parse(b"PROXY UNKNOWN ffff:f::1 whatever\r\n").local


def test_v2_proxy_local_and_tlvs_skipped():
    tlvs = bytes((0x04, 0, 3)) + b"abc" + bytes((0xE0, 0, 0))    # NOOP, a custom empty one
    header = pp.make_v2("203.0.113.9", 40000, "127.0.0.1", 1110, tlvs=tlvs)
    assert header[12:14] == b"\x21\x11"
    assert pp.header_length(header + b"\x16\x03\x01") == len(header)
    got = pp.parse(header)
    assert (got.version, got.local, got.source, got.source_port, got.destination_port) == \
        (2, False, "203.0.113.9", 40000, 1110)
    got = pp.parse(pp.make_v2("2001:db8::9", 7, "::1", 8))
    assert (got.source, got.destination) == ("2001:db8::9", "::1")
    local = pp.parse(pp.make_v2(None))
    assert local.local and local.source is None
    # LOCAL with an address block (HAProxy may send one): skipped unread
    body = bytes(12)
    assert pp.parse(SIG + b"\x20\x11" + struct.pack(">H", 12) + body).local
    # PROXY with family UNSPEC: use the real endpoints, like LOCAL
    assert pp.parse(SIG + b"\x21\x00\x00\x00").local


@pytest.mark.parametrize("data, why", [
    (b"USER alice\r\n", "not a PROXY"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "without CRLF"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "is not 'PROXY"),
    (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "IPv4"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "IPv6"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "not a port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "not a port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "not a port"),
    (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "is not 'PROXY"),
    (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "is not 'PROXY"),
    (b"PROXY TCP4 host.example 5.6.7.8 1 2\r\n", "not an address"),
    (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "scope id"),     # names nothing here
    (b"PROXY TCP6 ::1 fe80::1%x 1 2\r\n", "scope id"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\xff\r\n", "not ASCII"),
    (b"PROXY " + b"A" * 120, "without CRLF"),
    (SIG + b"\x31\x11\x00\x0c" + bytes(12), "version 3"),
    (SIG + b"\x22\x11\x00\x0c" + bytes(12), "command 2"),
    (SIG + b"\x21\x31\x00\x00" + bytes(0), "family"),                 # AF_UNIX
    (SIG + b"\x21\x12\x00\x0c" + bytes(12), "family"),                # UDP
    (SIG + b"\x21\x11\x00\x08" + bytes(8), "octets of addresses"),
    (SIG + b"\x21\x11\x00\x0e" + bytes(12) + b"\x01\x00", "truncated TLV"),
    (SIG + b"\x21\x11\x00\x10" + bytes(12) + b"\x01\x00\x09\x00", "past the header"),
    (SIG + b"\x21\x11" + struct.pack(">H", pp.MAX_V2_OCTETS) + bytes(12), "limit"),
    (SIG[:5] + b"X", "not a PROXY"),
])
def test_refusals_say_why(data, why):
    with pytest.raises(pp.ProxyError, match=why):
        length = pp.header_length(data)
        assert length is not None and length <= len(data), "refused only once complete"
        pp.parse(data[:length])


def test_prefixes_ask_for_more():
    v1 = pp.make_v1("10.0.0.1", 1, "10.0.0.2", 2)
    for cut in range(len(v1)):                  # a v1 line's length is its CRLF
        assert pp.header_length(v1[:cut]) is None, cut
    v2 = pp.make_v2("10.0.0.1", 1, "10.0.0.2", 2, tlvs=b"\x04\x00\x01x")
    for cut in range(len(v2)):                  # a v2 header says its length at octet 16
        assert pp.header_length(v2[:cut]) == (None if cut < pp.V2_FIXED_OCTETS else len(v2))


def test_random_headers_round_trip_and_mutants_never_escape():
    """Property test: every header made from random addresses parses back to them, and any
    mutation of one (flipped, cut, extended octets) either parses or raises ProxyError —
    never another exception, never a length past the limits."""
    rng = random.Random(20261205)
    for _ in range(3000):
        v6 = rng.random() < 0.5
        def addr():
            if v6:
                return socket.inet_ntop(socket.AF_INET6, rng.randbytes(16))
            return socket.inet_ntop(socket.AF_INET, rng.randbytes(4))
        src, dst, sport, dport = addr(), addr(), rng.randrange(65536), rng.randrange(65536)
        if rng.random() < 0.5:
            header = pp.make_v1(src, sport, dst, dport)
        else:
            tlvs = b"".join(bytes((rng.randrange(256),)) + struct.pack(">H", n) + rng.randbytes(n)
                            for n in (rng.randrange(40) for _ in range(rng.randrange(4))))
            header = pp.make_v2(src, sport, dst, dport, tlvs=tlvs)
        got = pp.parse(header)
        assert (got.source, got.source_port, got.destination, got.destination_port) == \
            (str(__import__("ipaddress").ip_address(src)), sport,
             str(__import__("ipaddress").ip_address(dst)), dport)
        mutant = bytearray(header)
        for _ in range(rng.randrange(1, 4)):
            choice = rng.randrange(3)
            if choice == 0 and mutant:
                mutant[rng.randrange(len(mutant))] = rng.randrange(256)
            elif choice == 1:
                del mutant[rng.randrange(len(mutant) + 1):]
            else:
                mutant += rng.randbytes(rng.randrange(1, 64))
        try:
            length = pp.header_length(bytes(mutant))
            if length is not None:
                assert length <= max(pp.V1_MAX_OCTETS, pp.MAX_V2_OCTETS)
                if length <= len(mutant):
                    pp.parse(bytes(mutant[:length]))
        except pp.ProxyError:
            pass


def _pair_with(data: bytes, close: bool = True):
    """A connected socket pair: `data` written (then the write side shut) by a thread."""
    a, b = socket.socketpair()

    def write():
        for i in range(0, len(data), 7):          # in small pieces: the reader must wait
            a.sendall(data[i:i + 7])
        if close:
            a.shutdown(socket.SHUT_WR)
    thread = threading.Thread(target=write)
    thread.start()
    return a, b, thread


@pytest.mark.parametrize("header", [pp.make_v1("192.0.2.1", 5, "192.0.2.2", 6),
                                    pp.make_v2("192.0.2.1", 5, "192.0.2.2", 6, b"\x04\x00\x00")])
def test_reader_takes_exactly_the_header(header):
    a, b, thread = _pair_with(header + b"USER alice\r\n")
    try:
        got = prelogin.read_proxy_header(b, 5)
        thread.join()
        assert (got.source, got.source_port) == ("192.0.2.1", 5)
        assert b.recv(100) == b"USER alice\r\n"        # what follows stays unread
    finally:
        a.close()
        b.close()


def test_reader_eof_first_is_no_header_and_eof_inside_is_an_error():
    a, b, thread = _pair_with(b"")
    with pytest.raises(prelogin.NoHeader):
        prelogin.read_proxy_header(b, 5)
    thread.join()
    a.close(), b.close()
    a, b, thread = _pair_with(pp.make_v1("192.0.2.1", 5, "192.0.2.2", 6)[:20])
    with pytest.raises(pp.ProxyError, match="closed inside"):
        prelogin.read_proxy_header(b, 5)
    thread.join()
    a.close(), b.close()


def test_reader_deadline():
    a, b = socket.socketpair()
    try:
        a.sendall(b"PROXY TCP4 ")
        with pytest.raises(pp.ProxyError, match="no PROXY protocol header within"):
            prelogin.read_proxy_header(b, 0.3)
    finally:
        a.close()
        b.close()
