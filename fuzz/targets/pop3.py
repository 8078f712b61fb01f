"""The POP3 command parser and state machine (qpopper/pop3/protocol.py and the verbs): any byte
stream, cut into pieces anywhere, through the sans-IO Protocol over a real Maildrop on a
small mbox spool, with the transcript tests' table authenticator (alice / wonderland) and
the standard extensions (XTND with an in-memory submitter, MDEF, MIME mangling).

Nothing may escape feed() or eof(): every answer the client gets is a reply. Invariants:
the output is whole CRLF lines, and eof() leaves the session closed.

First input byte: bit 0 TLS active, bit 1 STLS possible, bit 2 extensions, bit 3 server
mode, bits 4-7 the piece size (0: all at once). The rest is what the client sends.
"""

from __future__ import annotations


from fuzz.harness import scratch_dir
from qpopper.extensions import standard_extensions
from tests.transcripts.harness import Spool

SPOOL = (b"From alice@example.org Tue Nov 14 22:13:20 2023\n"
         b"From: Alice <alice@example.org>\nSubject: one\nStatus: RO\n\nHello.\n.dot\n\n"
         b"From bob@example.org Tue Nov 14 22:14:20 2023\n"
         b"From: Bob <bob@example.org>\nSubject: two\nX-UIDL: 0123456789abcdef\n"
         b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n"
         b"--b\nContent-Type: text/plain\n\nSecond.\n--b\nContent-Type: text/html\n\n"
         b"<p>x</p>\n--b--\n\n"
         b"From carol@example.org Tue Nov 14 22:15:20 2023\nContent-Length: 6\n\nThird\n")

ALLOWED: tuple[type[BaseException], ...] = ()
MAX_LEN = 4096


class MemoryDraft:
    def __init__(self):
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def submit(self) -> bool:
        return len(self.data) % 2 == 0          # both answers are reachable

    def discard(self) -> None:
        self.data.clear()


class MemorySubmitter:
    def open_draft(self, proto) -> MemoryDraft:
        return MemoryDraft()


_base = scratch_dir("pop3")
_spool = Spool(_base / "spool")


def one_input(data: bytes) -> None:
    if not data:
        return
    mode, stream = data[0], data[1:]
    _spool.write("alice", SPOOL)
    _spool.write("bob", b"")
    extensions = standard_extensions(MemorySubmitter()) if mode & 4 else None
    pop = _spool.session(tls_active=bool(mode & 1),
                         start_tls=(lambda: True) if mode & 2 else None,
                         extensions=extensions, server_mode=bool(mode & 8))
    try:
        out = bytearray(pop.greet())
        piece = (mode >> 4) or len(stream) or 1
        for at in range(0, len(stream), piece):
            pop.proto.feed(stream[at:at + piece])
            out += pop.env.take()
        pop.proto.eof()
        out += pop.env.take()
        assert pop.proto.closed, "eof() left the session open"
        assert out.endswith(b"\r\n"), f"output does not end a line: {bytes(out[-80:])!r}"
    finally:
        _spool.close()
