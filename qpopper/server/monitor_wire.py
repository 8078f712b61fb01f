"""The frames between the unprivileged pre-login process and its root monitor's processes.

Both ends use this module; only the root side — the monitor's authentication process, which
answers the requests, and the monitor, which takes the handover — has to distrust what it
reads (the pre-login process parses client bytes and may be an attacker's by now). The
section docs/privsep.md, "The monitor's requests" lists the requests and what is checked.

A frame is one SOCK_SEQPACKET message (so a frame can never be split or run into the next):

    kind (1 octet) | field count (1 octet) | field count × (length: u32 big-endian | octets)

Each kind has a fixed number of fields and a longest length per field; decoding refuses a
frame that is too long, has an unknown kind, the wrong field count, a field over its limit,
a length that runs past the end, or octets left over (FrameError). The monitor ends the
connection at the first refused frame.
"""

from __future__ import annotations

import enum
import socket
import struct
from dataclasses import dataclass

from qpopper import limits

MAX_FRAME_OCTETS = 64 * 1024
"""Longest frame either side sends or accepts: room for the longest SASL line, decoded."""

_LENGTH = struct.Struct(">I")
_HEADER_OCTETS = 2

NAME = limits.MAX_AUTH_LINE_OCTETS     # a user name as the client typed it (normalised later)
SECRET = limits.MAX_AUTH_LINE_OCTETS   # a password or a SASL response
SHORT = 256                            # mechanism names, flags, host names
TOKEN = 48 * 1024                      # GSSAPI tokens (Kerberos tickets with a PAC are big)
LEFTOVER = limits.MAX_AUTH_LINE_OCTETS + 64 * 1024    # pipelined bytes read past the login
CACHE_KEY = 64                         # an authentication cache key (a 32-octet hash)
POPPASSD_LINE = limits.POPPASSD_MAX_LINE_OCTETS   # a poppassd argument (less than a line)
PATH = 4096                            # a home directory (PATH_MAX)


class Kind(enum.IntEnum):
    """Requests (pre-login → monitor) below 64, replies (monitor → pre-login) from 64."""

    PASSWORD = 1            # user, password, mechanism, authid, tls flag, client host
    APOP = 2                # user, digest, client host
    CRAM_CHALLENGE = 3      # (nothing): the monitor makes and remembers the challenge
    CRAM = 4                # user, digest, client host
    SCRAM_BEGIN = 5         # mechanism, user, client nonce
    SCRAM_PROVE = 6         # client-first-bare, client-final-without-proof, proof, client host
    SCRAM_ACCEPTED = 7      # (nothing): the client took the server's signature
    SCRAM_BINDING_FAILED = 8    # user, mechanism, client host
    REFUSE_NAME = 9         # printable name, reply text, mechanism, client host
    GSS_STEP = 10           # token, first-token flag, client host
    GSS_OFFER = 11          # client host
    GSS_CHOOSE = 12         # the client's wrapped answer, client host
    HANDOVER = 13           # leftover bytes, tls flag, client host, bad-command count, no-mime
    PROXIED = 14            # local flag, client address, client port (a PROXY header's)

    LOGIN = 64              # user, mechanism, no-mime flag, SCRAM server signature
    REFUSED = 65            # reply text, response code, close flag
    DATA = 66               # octets (a challenge, server-first, a token), a flag

    # Between a monitor and the authentication cache process (docs/auth-cache.md), never
    # the pre-login process: it holds no descriptor to that process.
    CACHE_LOOKUP = 128      # generation, key; the socket for the answer travels with it
    CACHE_STORE = 129       # generation, key, verdict, when PAM was asked (monotonic ns)
    CACHE_VERDICT = 192     # verdict (empty: not remembered)

    # poppassd's pre-login process and its root process (docs/privsep.md, "poppassd"):
    # requests from 96, the answer 112; never read by popper's processes.
    POPPASSD_CHECK = 96     # user, old password
    POPPASSD_CHANGE = 97    # new password
    POPPASSD_END = 98       # why the dialogue ended (timeout, deadline, overlong)
    POPPASSD_VERDICT = 112  # right | wrong | later, or changed | refused | failed

    # From the authentication process to its monitor, once, as it ends (docs/privsep.md,
    # "The authentication process"); after a login the HANDOVER frame follows, as received.
    OUTCOME = 160           # client address, port, user ("": no login), uid, gid, home flag,
    #                         home, mechanism, no-mime flag


FIELD_LIMITS: dict[Kind, tuple[int, ...]] = {
    Kind.PASSWORD: (NAME, SECRET, SHORT, NAME, 1, SHORT),
    Kind.APOP: (NAME, SHORT, SHORT),
    Kind.CRAM_CHALLENGE: (),
    Kind.CRAM: (NAME, SHORT, SHORT),
    Kind.SCRAM_BEGIN: (SHORT, NAME, SHORT),
    Kind.SCRAM_PROVE: (SECRET, SECRET, SHORT, SHORT),
    Kind.SCRAM_ACCEPTED: (),
    Kind.SCRAM_BINDING_FAILED: (NAME, SHORT, SHORT),
    Kind.REFUSE_NAME: (NAME, SHORT, SHORT, SHORT),
    Kind.GSS_STEP: (TOKEN, 1, SHORT),
    Kind.GSS_OFFER: (SHORT,),
    Kind.GSS_CHOOSE: (TOKEN, SHORT),
    Kind.HANDOVER: (LEFTOVER, 1, SHORT, SHORT, 1),
    Kind.PROXIED: (1, SHORT, SHORT),
    Kind.LOGIN: (NAME, SHORT, 1, SHORT),
    Kind.REFUSED: (SECRET, SHORT, 1),
    Kind.DATA: (TOKEN, 1),
    Kind.CACHE_LOOKUP: (SHORT, CACHE_KEY),
    Kind.CACHE_STORE: (SHORT, CACHE_KEY, SHORT, SHORT),
    Kind.CACHE_VERDICT: (SHORT,),
    Kind.POPPASSD_CHECK: (POPPASSD_LINE, POPPASSD_LINE),
    Kind.POPPASSD_CHANGE: (POPPASSD_LINE,),
    Kind.POPPASSD_END: (SHORT,),
    Kind.POPPASSD_VERDICT: (SHORT,),
    Kind.OUTCOME: (SHORT, SHORT, NAME, SHORT, SHORT, 1, PATH, SHORT, 1),
}

REQUESTS = frozenset(kind for kind in Kind if kind < 64)
CACHE_REQUESTS = frozenset({Kind.CACHE_LOOKUP, Kind.CACHE_STORE})


class FrameError(Exception):
    """A frame this module refuses to decode (the text says why, for the log)."""


@dataclass(frozen=True)
class Frame:
    kind: Kind
    fields: tuple[bytes, ...]

    def text(self, index: int) -> str:
        """Field `index` as text; undecodable octets survive as surrogates (user names and
        passwords are compared as the client sent them)."""
        return self.fields[index].decode("utf-8", "surrogateescape")

    def flag(self, index: int) -> bool:
        value = self.fields[index]
        if value not in (b"0", b"1"):
            raise FrameError(f"{self.kind.name}: field {index} is not a flag")
        return value == b"1"


def encode(kind: Kind, *fields) -> bytes:
    """A frame; str fields are UTF-8 (surrogateescape), bool fields b'1' / b'0'."""
    raw = [_as_bytes(field) for field in fields]
    limits_ = FIELD_LIMITS[kind]
    if len(raw) != len(limits_):
        raise ValueError(f"{kind.name} takes {len(limits_)} fields, not {len(raw)}")
    out = bytearray((int(kind), len(raw)))
    for value, limit in zip(raw, limits_):
        if len(value) > limit:
            raise ValueError(f"{kind.name}: a field of {len(value)} octets (limit {limit})")
        out += _LENGTH.pack(len(value))
        out += value
    if len(out) > MAX_FRAME_OCTETS:
        raise ValueError(f"{kind.name}: frame of {len(out)} octets")
    return bytes(out)


def _as_bytes(value) -> bytes:
    if isinstance(value, bool):
        return b"1" if value else b"0"
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, int):
        return str(value).encode("ascii")
    return bytes(value)


def decode(data: bytes, allowed=None) -> Frame:
    """The frame in `data`, or FrameError. `allowed`: the kinds this reader accepts."""
    if len(data) > MAX_FRAME_OCTETS:
        raise FrameError(f"frame of {len(data)} octets")
    if len(data) < _HEADER_OCTETS:
        raise FrameError("frame shorter than its header")
    try:
        kind = Kind(data[0])
    except ValueError:
        raise FrameError(f"unknown frame kind {data[0]}") from None
    if allowed is not None and kind not in allowed:
        raise FrameError(f"{kind.name} is not expected here")
    limits_ = FIELD_LIMITS[kind]
    if data[1] != len(limits_):
        raise FrameError(f"{kind.name} with {data[1]} fields (takes {len(limits_)})")
    fields = []
    offset = _HEADER_OCTETS
    for limit in limits_:
        if offset + _LENGTH.size > len(data):
            raise FrameError(f"{kind.name}: truncated")
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if length > limit or offset + length > len(data):
            raise FrameError(f"{kind.name}: field of {length} octets (limit {limit})")
        fields.append(bytes(data[offset:offset + length]))
        offset += length
    if offset != len(data):
        raise FrameError(f"{kind.name}: {len(data) - offset} octets after the last field")
    return Frame(kind, tuple(fields))


# --- the socket ----------------------------------------------------------------------------------
def channel_pair() -> tuple[socket.socket, socket.socket]:
    """(monitor end, pre-login end): SEQPACKET keeps each frame whole."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)


def send(sock: socket.socket, kind: Kind, *fields) -> None:
    sock.sendall(encode(kind, *fields))


def receive(sock: socket.socket, allowed=None) -> Frame | None:
    """The next frame; None when the other end closed. A datagram longer than
    MAX_FRAME_OCTETS arrives truncated (MSG_TRUNC tells) and is refused."""
    data, _, flags, _ = sock.recvmsg(MAX_FRAME_OCTETS + 1)
    if not data and not flags:
        return None
    if flags & socket.MSG_TRUNC or flags & socket.MSG_CTRUNC:
        raise FrameError("frame longer than the limit")
    return decode(data, allowed)
