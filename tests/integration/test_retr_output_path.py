"""RETR and TOP of a 10,000-message spool through the session's real output path, against
the line-by-line reference of tests/helpers/mbox_wire_reference.py.

The real Protocol and maildrop (normal and server mode) answer pipelined RETR and TOP of every
message; the replies go through the session's ReplyWriter and Channel (collected pieces, one
writev per batch) into a socket pair whose send buffer is kept small, so writev is cut short
over and over; a thread reads the other end, in plain text or as a TLS client of the session's
TlsChannel (which joins the pieces). The bytes read must be exactly the status lines,
the reference wire bytes of each message and the terminators. The spool mixes small messages
(the one-window fast path of mbox_send) with a few bigger than a window (the windowed path),
lines starting with a dot, CRLF and bare CR in the spool, NUL, a last line without LF, and
X-UIDL/Status headers that are cut and spliced. Each case runs with both wire conversions (the
compiled one when built, and the pure-Python definition).
"""

from __future__ import annotations

import random
import socket
import ssl
import threading

import pytest
from OpenSSL import SSL

from qpopper import limits
from qpopper.pop3.trans_state import RETR_OCTETS, TOP_FOLLOWS
from qpopper.pop3.responses import TERMINATOR, ok
from qpopper.server.channel import Channel
from qpopper.server.reply_writer import ReplyWriter
from qpopper.server.tls_channel import TlsChannel
from tests.helpers import wire_impls
from tests.helpers.testpki import TestPki
from tests.helpers.mbox_wire_reference import random_line, random_spool, reference_wire
from tests.transcripts.harness import Spool, extended_session

# every test once with the compiled conversion and once with the pure-Python one
each_wire_impl = wire_impls.each_wire_impl
pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("each_wire_impl")]

MESSAGES = 10_000
PIPELINE = 8


def spool_bytes() -> bytes:
    """10,000 small random messages (the last without a final newline), and every 1,000th
    one grown past a window with dot, CR and NUL lines."""
    raw = random_spool(1939, count=MESSAGES, max_lines=6)
    rng = random.Random(11)
    parts = raw.split(b"\n\nFrom ")
    for i in range(0, len(parts) - 1, 1000):
        filler = b"".join(random_line(rng) for _ in range(3000))
        parts[i] += b"\n" + filler + b"\n.\n..x\nlast line" * (i % 2)
    return b"\n\nFrom ".join(parts)


class SocketWriter(ReplyWriter):
    """What Session gives ReplyWriter, on one end of a socket pair (or TLS over it)."""

    def __init__(self, cfg, channel):
        super().__init__()
        self.cfg, self.channel, self.client_ip = cfg, channel, "127.0.0.1"
        self.tls_active = isinstance(channel, TlsChannel)
        self.logs: list[str] = []

    def log(self, priority: int, text: str) -> None:
        self.logs.append(text)


def drained(sock: socket.socket, into: bytearray, tls: bool) -> threading.Thread:
    """Reads everything the session sends, as a TLS client when `tls`."""
    def read():
        conn = sock
        if tls:
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            conn = context.wrap_socket(sock, server_hostname="localhost")
        try:
            while data := conn.recv(1 << 16):
                into.extend(data)
        except ssl.SSLZeroReturnError:
            pass
        finally:
            if conn is not sock:
                conn.close()                # the TLS socket took over the descriptor
    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def session_channel(cfg, sock: socket.socket, pki_dir, tls: bool):
    channel = Channel(sock.fileno(), sock.fileno(), sock)
    if not tls:
        return channel
    identity = TestPki(str(pki_dir)).server("retr")
    # the session's TLS end needs only a context with the identity (what tls.TlsIdentity
    # builds from the configuration); loaded from the files here
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.use_certificate_file(identity.cert_file)
    context.use_privatekey_file(identity.key_file)
    secure = TlsChannel(channel, context)
    secure.handshake(30)
    return secure


@pytest.mark.parametrize("server_mode, tls", [(False, False), (True, False), (True, True)])
def test_pipelined_retr_and_top_of_every_message_equal_the_reference(tmp_path, server_mode, tls):
    raw = spool_bytes()
    spool = Spool(tmp_path / "spool", server_mode=server_mode)
    spool.write("alice", raw)
    pop = extended_session(spool)
    ours, theirs = socket.socketpair()
    try:
        pop.login()
        if server_mode:
            # the login closed the spool's open end (its last line has no newline): the
            # messages are read where they are, in the spool as it is now
            raw = spool.read("alice")
        messages = pop.proto.trans.messages
        assert len(messages) >= MESSAGES
        assert sum(m.body_end - m.content_start > limits.COPY_CHUNK_OCTETS for m in messages) >= 5
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)   # writev is cut short
        received = bytearray()
        reader = drained(theirs, received, tls)
        cfg = pop.env.cfg.replace(timeout=60)
        writer = SocketWriter(cfg, session_channel(cfg, ours, tmp_path / "pki", tls))
        pop.env.write = writer.write
        rng = random.Random(7)
        commands, expected = [], []
        for number, msg in enumerate(messages, 1):
            if number % 3:
                commands.append(b"RETR %d\r\n" % number)
                expected += [ok(RETR_OCTETS.format(octets=msg.octets)),
                             reference_wire(raw, msg, None), TERMINATOR]
            else:
                lines = rng.choice((0, 1, 2, 5, 10_000))
                commands.append(b"TOP %d %d\r\n" % (number, lines))
                expected += [ok(TOP_FOLLOWS), reference_wire(raw, msg, lines), TERMINATOR]
        for start in range(0, len(commands), PIPELINE):
            pop.proto.feed(b"".join(commands[start:start + PIPELINE]))
            writer.flush()
        if tls:
            writer.channel.close()                  # close_notify: the client reads to the end
        else:
            ours.shutdown(socket.SHUT_WR)
        reader.join(60)
        assert not reader.is_alive() and not writer.logs
        want = b"".join(expected)
        assert len(received) == len(want)
        assert received == want
    finally:
        ours.close()
        theirs.close()
        spool.close()
