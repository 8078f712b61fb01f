"""TlsChannel (qpopper/server/tls_channel.py) hands the client what OpenSSL writes while
reading (an alert refusing a renegotiation) at once; when that write fails, the stream
cannot go on (OpenSSL has given the bytes away): the channel reads as ended, never as a
stream whose next record the client could not decrypt."""

from __future__ import annotations

import socket
import threading

from OpenSSL import SSL

from qpopper.server.channel import Channel
from qpopper.server.tls_channel import TlsChannel
from tests.helpers.testpki import TestPki


def renegotiating_pair(tmp_path):
    """A TlsChannel after a TLS 1.2 handshake over a socket pair, and a client (pyOpenSSL on
    memory BIOs over the other end) that has just asked to renegotiate."""
    identity = TestPki(str(tmp_path / "pki")).server("good")
    server_context = SSL.Context(SSL.TLS_SERVER_METHOD)
    server_context.use_certificate_file(identity.cert_file)
    server_context.use_privatekey_file(identity.key_file)
    server_context.set_options(SSL.OP_NO_RENEGOTIATION)
    ours, theirs = socket.socketpair()
    server = TlsChannel(Channel(ours.fileno(), ours.fileno(), ours), server_context)
    client_context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_context.set_max_proto_version(SSL.TLS1_2_VERSION)
    client = SSL.Connection(client_context, None)
    client.set_connect_state()

    def send():
        try:
            theirs.sendall(client.bio_read(1 << 20))
        except SSL.WantReadError:
            pass
    handshake = threading.Thread(target=server.handshake, args=(10,))
    handshake.start()
    theirs.settimeout(0.5)
    while True:
        try:
            client.do_handshake()
            send()
            break
        except SSL.WantReadError:
            send()
            try:
                client.bio_write(theirs.recv(65536))
            except socket.timeout:
                pass
    handshake.join(10)
    client.renegotiate()
    try:
        client.do_handshake()
    except SSL.WantReadError:
        pass
    send()
    return server, client, (ours, theirs)


def test_an_alert_that_cannot_be_sent_ends_the_stream(tmp_path):
    server, _, sockets = renegotiating_pair(tmp_path)
    written = server.raw.write_all

    def stalled(data, timeout_s):       # the client's window stays shut past the bound
        server.raw.write_all = written
        raise server.closed_error("client stopped reading")
    server.raw.write_all = stalled
    try:
        assert server.read(5.0) == b""
        assert not server.replies_may_follow_end()
    finally:
        for sock in sockets:
            sock.close()


def test_the_alert_leaves_before_any_reply(tmp_path):
    server, client, sockets = renegotiating_pair(tmp_path)
    try:
        assert server.read(0.5) is None                  # no command came: a timeout
        sockets[1].settimeout(5)
        client.bio_write(sockets[1].recv(65536))         # the alert is there already
        try:
            client.do_handshake()
            outcome = "renegotiated"
        except SSL.Error as exc:
            outcome = str(exc)
        assert "no renegotiation" in outcome, outcome
    finally:
        for sock in sockets:
            sock.close()
