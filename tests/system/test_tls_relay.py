"""The TLS relay after a login (docs/privsep.md, "The TLS relay"), through the real master
as root: commands that came one TLS record each, a client that pipelines more than the
socket buffers hold while it reads, and a client that half-closes after its QUIT."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl

import pytest

from tests.helpers.messages import mbox
from tests.helpers.sysusers import make_spool
from tests.helpers.testpki import TestPki
from tests.helpers.tls_site import TlsSite, client_context, pipelined
from tests.server_harness import read_greeting

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

STALL_S = 30
"""Seconds without a byte moving either way that the flood test calls a stall."""
MESSAGES = (("first", "Body one.\n"), ("second", "Body two.\n"))


@pytest.fixture
def logged_in(world_tmp, pam_service, system_users, tmp_path):
    """A fresh master serving implicit TLS, its user (two messages), and a TLS connection
    logged in as that user, with LIST 1 and LIST 2's replies."""
    pki = TestPki(str(tmp_path / "pki"))
    identity = pki.server("good")
    site = TlsSite(world_tmp, pam_service, tls_support="stls",
                   tls_server_cert_file=identity.combined_file)
    user = system_users.create()
    make_spool(site.spool_dir, user, mbox(*MESSAGES))
    server = site.tls_server(pki)
    raw = socket.create_connection((server.host, server.tls_port), timeout=60)
    tls = client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1")
    try:
        assert read_greeting(tls).startswith(b"+OK")
        replies = pipelined(tls, f"USER {user.name}", f"PASS {user.password}", "LIST 1",
                            "LIST 2")
        assert replies[1].startswith(b"+OK"), replies
        yield tls, {1: replies[2], 2: replies[3]}, os.path.join(site.spool_dir, user.name)
    finally:
        tls.close()
        site.close()


def read_to_the_end(tls) -> bytes:
    replies = bytearray()
    while chunk := tls.recv(1 << 16):
        replies += chunk
    return bytes(replies)


def spool_of(path: str) -> bytes:
    with open(path, "rb") as spool:
        return spool.read()


def test_commands_each_in_its_own_record_reach_the_session_in_order(logged_in):
    """Forty commands a client wrote one at a time (a record each), then DELE and QUIT: all
    answered in order, and the DELE committed."""
    tls, listed, spool = logged_in
    for command in [f"LIST {1 + n % 2}" for n in range(40)] + ["DELE 2", "QUIT"]:
        tls.sendall(f"{command}\r\n".encode())
    lines = read_to_the_end(tls).split(b"\r\n")
    assert lines[:40] == [listed[1 + n % 2] for n in range(40)]
    assert lines[40].startswith(b"+OK") and lines[41].startswith(b"+OK")
    kept = spool_of(spool)
    assert b"Body one." in kept and b"Body two." not in kept


def test_pipelining_past_the_socket_buffers_while_reading_is_all_answered(logged_in):
    """80,000 commands (640 KB) sent at once while the client reads (one thread, the socket
    non-blocking: an SSL object is not to be used by two threads at once): more than the
    relay's and the session's socket buffers hold in either direction, so a relay that
    waited on the session while the session waited on it would stall here."""
    tls, listed, _ = logged_in
    count = 80_000
    to_send = memoryview(b"LIST 1\r\n" * count + b"QUIT\r\n")
    replies = bytearray()
    tls.setblocking(False)
    while True:
        readable, writable, _ = select.select([tls], [tls] if to_send else [], [], STALL_S)
        assert readable or writable or tls.pending(), (
            f"stalled: {len(to_send)} octets of commands unsent, {len(replies)} of replies")
        if writable:
            with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLWantWriteError):
                to_send = to_send[tls.send(to_send[:1 << 14]):]
        try:
            chunk = tls.recv(1 << 16)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            continue
        if not chunk:
            break
        replies += chunk
    lines = bytes(replies).split(b"\r\n")
    assert not to_send
    assert lines[:count] == [listed[1]] * count
    assert lines[count].startswith(b"+OK")


def test_replies_after_the_client_half_closes_still_reach_it(logged_in):
    """A client that sends DELE and QUIT and then shuts its sending side (a TCP FIN) gets
    both replies, as without TLS, and the DELE is committed."""
    tls, _, spool = logged_in
    tls.sendall(b"DELE 1\r\nQUIT\r\n")
    with socket.socket(fileno=os.dup(tls.fileno())) as same:
        same.shutdown(socket.SHUT_WR)
    lines = read_to_the_end(tls).split(b"\r\n")
    assert lines[0].startswith(b"+OK") and lines[1].startswith(b"+OK"), lines
    kept = spool_of(spool)
    assert b"Body one." not in kept and b"Body two." in kept
