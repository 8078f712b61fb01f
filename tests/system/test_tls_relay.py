"""The TLS relay after a login (docs/privsep.md, "The TLS relay"), through the real master
as root: commands that came one TLS record each, a client that pipelines more than the
socket buffers hold while it reads, a client that half-closes after its QUIT (TCP FIN, TLS
1.3's close_notify), and TLS 1.2's close_notify, answered at once."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
import struct
import time

import pytest

from tests.helpers.messages import mbox
from tests.helpers.sysusers import make_spool
from tests.helpers.testpki import TestPki
from tests.helpers.tls_site import TlsSite, client_context, pipelined
from tests.server_harness import read_greeting, wait_until

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

STALL_S = 30
"""Seconds without a byte moving either way that the flood test calls a stall."""
END_WAIT_S = 15
"""Seconds a client waits for the end of the connection after QUIT's reply: well below the
site's `timeout` (30) + 5 s, how long a session whose relay saw no end of its output waits
before it gives up on the relay and exits (server/monitor_handover.py, _relay_ended)."""
ALERT = 21
"""A TLS record's content type for an alert (close_notify among them)."""
MESSAGES = (("first", "Body one.\n"), ("second", "Body two.\n"))


@pytest.fixture
def tls_site(world_tmp, pam_service, system_users, tmp_path):
    """A fresh master serving implicit TLS and its user (two messages): (server, user, spool
    path, pki)."""
    pki = TestPki(str(tmp_path / "pki"))
    site = TlsSite(world_tmp, pam_service, tls_support="stls",
                   tls_server_cert_file=pki.server("good").combined_file)
    try:
        user = system_users.create()
        make_spool(site.spool_dir, user, mbox(*MESSAGES))
        yield site.tls_server(pki), user, os.path.join(site.spool_dir, user.name), pki
    finally:
        site.close()


@pytest.fixture
def logged_in(tls_site):
    """A TLS connection logged in as the site's user, with LIST 1 and LIST 2's replies and
    the spool's path."""
    server, user, spool, pki = tls_site
    raw = socket.create_connection((server.host, server.tls_port), timeout=60)
    tls = client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1")
    try:
        assert read_greeting(tls).startswith(b"+OK")
        replies = pipelined(tls, f"USER {user.name}", f"PASS {user.password}", "LIST 1",
                            "LIST 2")
        assert replies[1].startswith(b"+OK"), replies
        yield tls, {1: replies[2], 2: replies[3]}, spool
    finally:
        tls.close()


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


def test_the_connection_ends_right_after_the_session(logged_in):
    """After QUIT's reply the client sees the end of the connection: the session shuts its
    socket to the relay down as it closes it (Channel.close), so the relay sees the end of
    its output even though the session keeps a duplicate to watch the relay's progress."""
    tls, _, _ = logged_in
    tls.sendall(b"QUIT\r\n")
    tls.settimeout(END_WAIT_S)
    assert read_to_the_end(tls).startswith(b"+OK")


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


class BioClient:
    """A TLS client on memory BIOs over a plain socket, so a test decides what goes out when
    (a close_notify in the same TCP segment as the commands before it) and sees the records
    that come back."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext):
        self.sock = socket.create_connection((host, port), timeout=20)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="127.0.0.1")
        self.plain = b""
        self._until(self.tls.do_handshake)

    def _until(self, step):
        while True:
            try:
                return step()
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outgoing.read())
                data = self.sock.recv(1 << 16)
                if not data:
                    raise ConnectionError("closed by the server")
                self.incoming.write(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.plain:
            self.plain += self._until(lambda: self.tls.read(1 << 16))
        line, self.plain = self.plain.split(b"\r\n", 1)
        return line

    def send(self, text: str) -> None:
        self.tls.write(text.encode())
        self.sock.sendall(self.outgoing.read())

    def send_with_close_notify(self, text: str) -> None:
        """The commands and a close_notify in one TCP segment."""
        self.tls.write(text.encode())
        with contextlib.suppress(ssl.SSLWantReadError):
            self.tls.unwrap()
        self.sock.sendall(self.outgoing.read())

    def raw_records_to_the_end(self) -> list[int]:
        """The content types of the TLS records the server sends until it closes."""
        data = bytearray()
        while chunk := self.sock.recv(1 << 16):
            data += chunk
        types, at = [], 0
        while at + 5 <= len(data):
            types.append(data[at])
            at += 5 + int.from_bytes(data[at + 3:at + 5], "big")
        return types


def bio_login(tls_site, **versions) -> BioClient:
    """A BioClient logged in as the site's user."""
    server, user, _, pki = tls_site
    client = BioClient(server.host, server.tls_port, client_context(pki, **versions))
    assert client.line().startswith(b"+OK")
    client.send(f"USER {user.name}\r\nPASS {user.password}\r\n")
    assert client.line().startswith(b"+OK") and client.line().startswith(b"+OK")
    return client


def test_tls_1_2_close_notify_is_answered_at_once_and_the_commands_before_it_still_count(
        tls_site):
    """RFC 5246 §7.2.1: the answer to TLS 1.2's close_notify is ours at once, replies
    dropped: nothing but alerts comes back (content type 21, visible in TLS 1.2's record
    headers). The DELE and QUIT sent before it still reach the session, which commits."""
    client = bio_login(tls_site, maximum_version=ssl.TLSVersion.TLSv1_2)
    assert client.tls.version() == "TLSv1.2"
    client.send_with_close_notify("DELE 1\r\nQUIT\r\n")
    assert set(client.raw_records_to_the_end()) == {ALERT}
    client.sock.close()
    spool = tls_site[2]
    # the spool is read without its lock: wait for the update to be whole
    wait_until(lambda: spool_of(spool).count(b"Body") == 1, timeout=20)
    assert b"Body two." in spool_of(spool)


def test_tls_1_3_close_notify_ends_one_direction_and_the_replies_still_come(tls_site):
    """RFC 8446 §6.1: TLS 1.3's close_notify ends the client's direction only; the replies
    to the DELE and QUIT sent before it still reach the client, then ours."""
    client = bio_login(tls_site)
    assert client.tls.version() == "TLSv1.3"
    client.send_with_close_notify("DELE 1\r\nQUIT\r\n")
    assert client.line().startswith(b"+OK") and client.line().startswith(b"+OK")
    client.sock.close()


def test_a_renegotiation_is_refused_at_once(tls_site):
    """A TLS 1.2 client asking to renegotiate after its login gets OpenSSL's no_renegotiation
    alert at once, not when the session next writes (it waits for that alert, the session
    for a command)."""
    from OpenSSL import SSL
    server, user, _, pki = tls_site
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_max_proto_version(SSL.TLS1_2_VERSION)
    raw = socket.create_connection((server.host, server.tls_port))
    raw.settimeout(None)                 # pyOpenSSL wants a blocking socket (test timeout)
    client = SSL.Connection(context, raw)
    client.set_connect_state()
    client.do_handshake()
    replies = b""
    client.sendall(f"USER {user.name}\r\nPASS {user.password}\r\n".encode())
    while replies.count(b"\r\n") < 3:                       # greeting, USER, PASS
        replies += client.recv(4096)
    assert replies.split(b"\r\n")[2].startswith(b"+OK"), replies
    client.renegotiate()
    raw.setblocking(False)
    deadline, outcome = time.monotonic() + STALL_S, "no answer"
    while time.monotonic() < deadline:
        try:
            client.do_handshake()
            outcome = "renegotiated"
            break
        except SSL.WantReadError:
            select.select([raw], [], [], 0.5)
        except SSL.Error as exc:
            outcome = str(exc)
            break
    raw.close()
    assert "no renegotiation" in outcome, outcome


def test_a_client_reset_during_retr_deletes_nothing(world_tmp, pam_service, system_users,
                                                    tmp_path):
    """RETR 1 (22 MB), DELE 1 and QUIT at once over TLS, then a reset once RETR's reply has
    begun: the relay's write finds the client gone and ends, the session's next write fails
    and it acts on no further command, so neither DELE 1 nor QUIT's UPDATE happens (the
    packaged update-on-abort off): message 1 stays. Before, the relay dropped the replies
    and went on passing the commands, and QUIT deleted it."""
    pki = TestPki(str(tmp_path / "pki"))
    site = TlsSite(world_tmp, pam_service, tls_support="stls", update_on_abort=False,
                   tls_server_cert_file=pki.server("good").combined_file)
    big = "".join(f"line {n:06d} of a message its client never gets whole\n"
                  for n in range(400_000))     # far more than every buffer between holds
    try:
        user = system_users.create()
        make_spool(site.spool_dir, user, mbox(("big", big), *MESSAGES))
        spool = os.path.join(site.spool_dir, user.name)
        before = spool_of(spool)
        server = site.tls_server(pki)
        raw = socket.create_connection((server.host, server.tls_port), timeout=30)
        tls = client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1")
        try:
            assert read_greeting(tls).startswith(b"+OK")
            replies = pipelined(tls, f"USER {user.name}", f"PASS {user.password}")
            assert replies[1].startswith(b"+OK"), replies
            tls.sendall(b"RETR 1\r\nDELE 1\r\nQUIT\r\n")
            assert tls.recv(100).startswith(b"+OK")          # RETR's reply has begun
            tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            tls.close()                                       # linger 0: a reset
        site.syslog.wait_for(rf"{user.name} at .* gone during a reply; what it sent after "
                             r"is not acted on", timeout=30)
        wait_until(lambda: not [t for t in site.syslog.texts() if t.startswith("Stats:")]
                   and spool_of(spool) == before, timeout=10, what="the spool untouched")
        assert spool_of(spool) == before
    finally:
        site.close()
