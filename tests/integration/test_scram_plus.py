"""SCRAM-SHA-1-PLUS / SCRAM-SHA-256-PLUS (RFC 5802 channel binding, RFC 7677): offered only
inside TLS 1.3, bound to `tls-exporter` (RFC 9266), with RFC 5802's GS2 rules (`p=` checked
against this connection, `y` inside TLS refused as a downgrade, `n` accepted). TLS 1.2 gets
no -PLUS: its `tls-unique` (RFC 5929) is unsafe without the Extended Master Secret (RFC 7627),
which the server cannot see (qpopper/server/tls.py).

Two layers: transcripts of the real Protocol and Authenticator with the binding data given as
the session gives it (env.channel_bindings), and the REAL server (root: real users, PAM, the
privilege drop) over STLS and a TLS port, where a client written here computes the binding
itself (pyOpenSSL's export_keying_material and Finished messages; Python's ssl module for a
resumed TLS 1.2 session, the resumption attack's case)."""

from __future__ import annotations

import base64
import re
import socket
import ssl
import struct

import pytest
from OpenSSL import SSL

from qpopper import limits
from qpopper.pop3.protocol import State
from tests.helpers import sasl_sessions
from tests.helpers.popauth import owned_store
from tests.helpers.sysusers import make_spool
from tests.helpers.testpki import TestPki
from tests.helpers.messages import mbox
from tests.helpers.sasl_sessions import (AUTH_FAILED, SECRET, assert_logged_in, b64, challenge_of,
                                         session)
from tests.helpers.scram_client import ScramClient
from tests.helpers.tls_site import TlsSite

EXPORTER = b"\x11" * 32          # what a transcript session's TLS 1.3 "exported"
PLUS_LIST = b"SCRAM-SHA-256-PLUS SCRAM-SHA-256 SCRAM-SHA-1-PLUS SCRAM-SHA-1"
MALFORMED = b"-ERR [AUTH] Malformed AUTH exchange\r\n"
UNRECOGNIZED = b"-ERR Unrecognized authentication type\r\n"

site = sasl_sessions.site    # the transcripts' fixture: alice's secret in pop.auth, her spool


def tls_session(site, bindings, **cfg):
    """A transcript session inside TLS whose session named these channel bindings."""
    pop = session(site, tls_active=True, **cfg)
    pop.env.channel_bindings = bindings
    return pop


def scram_login(pop, client: ScramClient, mechanism: str, *, final=None) -> bytes:
    """Run the exchange up to the server's answer to the client-final message."""
    server_first = challenge_of(pop.send(f"AUTH {mechanism} " + b64(client.first())))
    return pop.send(b64(final or client.final(server_first)))


# --- what is offered -----------------------------------------------------------------------------
def test_plus_is_offered_inside_tls_only_with_a_binding(site):
    pop = tls_session(site, {"tls-exporter": EXPORTER})
    assert b"SASL " + PLUS_LIST + b" CRAM-MD5 PLAIN LOGIN\r\n" in pop.send("CAPA")
    listing = pop.send("AUTH")
    assert b"\r\nSCRAM-SHA-256-PLUS\r\n" in listing and b"\r\nSCRAM-SHA-1-PLUS\r\n" in listing
    for pop in (tls_session(site, {}),                               # TLS, nothing to bind to
                session(site)):                                      # plain text
        assert b"PLUS" not in pop.send("CAPA") and b"PLUS" not in pop.send("AUTH")
        assert pop.send("AUTH SCRAM-SHA-256-PLUS") == UNRECOGNIZED
    plain = session(site)
    plain.env.channel_bindings = {"tls-exporter": EXPORTER}          # never outside TLS
    assert b"PLUS" not in plain.send("CAPA")
    assert plain.send("AUTH SCRAM-SHA-1-PLUS") == UNRECOGNIZED


def test_plus_follows_the_sasl_options_of_its_scram(site):
    pop = tls_session(site, {"tls-exporter": EXPORTER}, sasl_no_dictionary=True)
    assert b"SASL" not in pop.send("CAPA")
    pop = tls_session(site, {"tls-exporter": EXPORTER}, sasl_no_active=True)
    assert b"SASL " + PLUS_LIST + b"\r\n" in pop.send("CAPA")


# --- the exchange --------------------------------------------------------------------------------
@pytest.mark.parametrize("mechanism, cb_name, data", [
    ("SCRAM-SHA-256-PLUS", "tls-exporter", EXPORTER),
    ("SCRAM-SHA-1-PLUS", "tls-exporter", EXPORTER),
])
def test_plus_exchange_binds_the_given_data(site, mechanism, cb_name, data):
    pop = tls_session(site, {cb_name: data})
    client = ScramClient(mechanism, "alice", SECRET, gs2=f"p={cb_name},,", cbind_data=data)
    assert client.server_signature_ok(challenge_of(scram_login(pop, client, mechanism)))
    assert_logged_in(pop, pop.send(""))
    assert pop.proto.login.mechanism == f"AUTH {mechanism}"


def failing(site, bindings):
    """A TLS session whose authenticator records its failure delays instead of sleeping."""
    pop = tls_session(site, bindings, auth_failure_delay=3)
    pop.delays = []
    pop.env.authenticator.sleep = pop.delays.append
    return pop


def assert_failed_login(pop, reply: bytes, why: str) -> None:
    """The reply, delay and log lines of any failed login, plus the channel-binding reason."""
    assert reply == AUTH_FAILED
    assert pop.delays == [3]
    assert pop.proto.state == State.AUTHORIZATION
    assert any('login of "alice" refused' in text for _, text in pop.authlog)
    assert any(re.search(why, text) for _, text in pop.env.logs), pop.env.logs


def test_wrong_binding_data_fails_like_a_wrong_password(site):
    pop = failing(site, {"tls-exporter": EXPORTER})
    client = ScramClient("SCRAM-SHA-256-PLUS", "alice", SECRET, gs2="p=tls-exporter,,",
                         cbind_data=b"\x12" + EXPORTER[1:])     # another connection's value
    assert_failed_login(pop, scram_login(pop, client, "SCRAM-SHA-256-PLUS"),
                        "tls-exporter channel bindings do not match")
    # the binding must be there at all, not just the GS2 header
    client = ScramClient("SCRAM-SHA-256-PLUS", "alice", SECRET, gs2="p=tls-exporter,,")
    assert scram_login(pop, client, "SCRAM-SHA-256-PLUS") == AUTH_FAILED


@pytest.mark.parametrize("cb_name", ["tls-unique", "tls-server-end-point", "x-made.up"])
def test_a_binding_type_this_connection_lacks_fails_the_login(site, cb_name):
    pop = failing(site, {"tls-exporter": EXPORTER})
    client = ScramClient("SCRAM-SHA-256-PLUS", "alice", SECRET, gs2=f"p={cb_name},,")
    reply = pop.send("AUTH SCRAM-SHA-256-PLUS " + b64(client.first()))
    assert_failed_login(pop, reply, f"channel binding type '{cb_name}' is not available")


def test_y_flag_inside_tls_with_plus_offered_is_a_downgrade(site):
    pop = failing(site, {"tls-exporter": EXPORTER})
    client = ScramClient("SCRAM-SHA-256", "alice", SECRET, gs2="y,,")
    reply = pop.send("AUTH SCRAM-SHA-256 " + b64(client.first()))
    assert_failed_login(pop, reply, "saw no SCRAM-SHA-256-PLUS: a downgrade")
    # inside TLS with nothing to bind to, "y" is the truth and accepted
    pop = tls_session(site, {})
    client = ScramClient("SCRAM-SHA-1", "alice", SECRET, gs2="y,,")
    assert client.server_signature_ok(challenge_of(scram_login(pop, client, "SCRAM-SHA-1")))
    assert_logged_in(pop, pop.send(""))


def test_n_flag_inside_tls_still_logs_in(site):
    pop = tls_session(site, {"tls-exporter": EXPORTER})
    client = ScramClient("SCRAM-SHA-256", "alice", SECRET)
    assert client.server_signature_ok(challenge_of(scram_login(pop, client, "SCRAM-SHA-256")))
    assert_logged_in(pop, pop.send(""))


@pytest.mark.parametrize("mechanism, first, reply", [
    ("SCRAM-SHA-256-PLUS", "n,,n=alice,r=abc", MALFORMED),            # -PLUS needs p=
    ("SCRAM-SHA-256-PLUS", "y,,n=alice,r=abc", MALFORMED),
    ("SCRAM-SHA-256-PLUS", "p=tls_exporter!,,n=alice,r=abc", MALFORMED),   # not a cb-name
    ("SCRAM-SHA-256-PLUS", "p=,,n=alice,r=abc", MALFORMED),
    ("SCRAM-SHA-256", "p=tls-exporter,,n=alice,r=abc",
     b"-ERR [AUTH] Channel binding is not supported\r\n"),         # p= needs -PLUS
])
def test_gs2_flags_that_contradict_the_mechanism(site, mechanism, first, reply):
    pop = tls_session(site, {"tls-exporter": EXPORTER})
    assert pop.send(f"AUTH {mechanism} " + b64(first)) == reply
    assert not any("refused" in text for _, text in pop.authlog)     # nothing was checked


def test_binding_failures_count_towards_the_connection_cap(site):
    pop = tls_session(site, {"tls-exporter": EXPORTER})
    for attempt in range(1, limits.MAX_AUTH_FAILURES_PER_CONNECTION + 1):
        client = ScramClient("SCRAM-SHA-256", "alice", SECRET, gs2="y,,")
        assert pop.send("AUTH SCRAM-SHA-256 " + b64(client.first())) == AUTH_FAILED
        assert pop.proto.closed == (attempt == limits.MAX_AUTH_FAILURES_PER_CONNECTION)


# --- the real server -----------------------------------------------------------------------------
EXPORTER_LABEL = b"EXPORTER-Channel-Binding"      # RFC 9266 §2, written out again here
FAILED_LINE = AUTH_FAILED[:-2]                     # Pop3 lines come without their CRLF


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return TestPki(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def server_site(world_tmp, pam_service, system_users, pki):
    """alice (a system user with a SCRAM secret in pop.auth); the server offers STLS on its
    POP3 port and TLS from the first byte on a tls-listen port."""
    owner, store = owned_store(system_users, world_tmp)
    alice = system_users.create("al")
    store.set_secret(alice.name, SECRET)
    good = pki.server("good")
    s = TlsSite(world_tmp, pam_service, pop_auth_file=store.path, pop_auth_owner=owner.name,
                store_mechanisms="on",
                tls_support="stls", tls_server_cert_file=good.cert_file,
                tls_private_key_file=good.key_file,
                sasl_log_login='sasl login "%1" with %5 at %3')
    make_spool(s.spool_dir, alice, mbox(("hello", "for alice")))
    s.alice = alice
    s.srv = s.tls_server(pki)
    yield s
    s.close()


class Pop3:
    """POP3 lines over a plain socket, a pyOpenSSL Connection or an ssl.SSLSocket."""

    def __init__(self, stream):
        self.stream = stream
        self.buffer = b""

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.stream.recv(4096)
            assert chunk, "the server closed the connection"
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def command(self, text: str) -> bytes:
        self.stream.sendall(text.encode() + b"\r\n")
        return self.line()

    def multiline(self, text: str) -> list[bytes]:
        first = self.command(text)
        assert first.startswith(b"+OK"), first
        lines = []
        while (line := self.line()) != b".":
            lines.append(line)
        return lines

    def sasl_line(self) -> bytes:
        return next((line for line in self.multiline("CAPA") if line.startswith(b"SASL ")), b"")

    def scram(self, client: ScramClient, mechanism: str) -> bytes:
        """The exchange; returns the server's last line (`+OK ...` or `-ERR ...`)."""
        reply = self.command(f"AUTH {mechanism} " + b64(client.first()))
        if not reply.startswith(b"+ "):
            return reply
        reply = self.command(b64(client.final(base64.b64decode(reply[2:]))))
        if not reply.startswith(b"+ "):
            return reply
        assert client.server_signature_ok(base64.b64decode(reply[2:]))
        return self.command("")


class PyOpenSslClient:
    """A TLS client that can name its own channel bindings: implicit TLS or STLS first."""

    def __init__(self, site, pki, *, stls=False, max_version=None):
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.load_verify_locations(pki.ca_file)
        context.set_verify(SSL.VERIFY_PEER, lambda conn, cert, errno, depth, ok: bool(ok))
        if max_version is not None:
            context.set_max_proto_version(max_version)
        port = site.srv.port if stls else site.srv.tls_port
        self.sock = socket.create_connection((site.srv.host, port), timeout=20)
        try:
            # blocking, but a silent server makes recv fail after 20 s instead of hanging
            self.sock.settimeout(None)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 20, 0))
            self.plain_sasl = None
            if stls:
                plain = Pop3(self.sock)
                assert plain.line().startswith(b"+OK")
                self.plain_sasl = plain.sasl_line()
                assert plain.command("STLS") == b"+OK STLS"
            self.conn = SSL.Connection(context, self.sock)
            self.conn.set_connect_state()
            self.conn.do_handshake()
            self.pop = Pop3(self.conn)
            if not stls:
                assert self.pop.line().startswith(b"+OK")
        except BaseException:
            self.sock.close()
            raise

    @property
    def version(self) -> str:
        return self.conn.get_protocol_version_name()

    def binding(self, cb_name: str) -> bytes:
        """The client's own idea of its channel binding (RFC 9266, RFC 5929)."""
        if cb_name == "tls-exporter":
            return self.conn.export_keying_material(EXPORTER_LABEL, 32, b"")
        assert cb_name == "tls-unique"
        return self.conn.get_finished()   # a full handshake: the client's Finished went first

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def plus_client(site, mechanism, cb_name, data) -> ScramClient:
    return ScramClient(mechanism, site.alice.name, SECRET, gs2=f"p={cb_name},,",
                       cbind_data=data)


def logs_in_and_quits(site, pop: Pop3, client: ScramClient, mechanism: str) -> None:
    """The exchange logs alice in; QUIT then ends her session (and frees her maildrop for
    the test's next login) before the test goes on."""
    reply = pop.scram(client, mechanism)
    assert reply.startswith(f"+OK {site.alice.name} has 1 visible".encode()), reply
    site.syslog.wait_for(rf'sasl login "{site.alice.name}" with {mechanism} at 127\.0\.0\.1')
    assert pop.command("QUIT").startswith(b"+OK")


@pytest.mark.root
@pytest.mark.timeout(120)
def test_plain_text_never_offers_plus_and_stls_does(server_site, pki):
    site = server_site
    with socket.create_connection((site.srv.host, site.srv.port), timeout=20) as sock:
        pop = Pop3(sock)
        assert pop.line().startswith(b"+OK")
        sasl = pop.sasl_line()
        assert b"SCRAM-SHA-256" in sasl and b"PLUS" not in sasl
        assert not any(b"PLUS" in name for name in pop.multiline("AUTH"))
        assert pop.command("AUTH SCRAM-SHA-256-PLUS") == UNRECOGNIZED[:-2]
        # "y" is the truth on plain text: the server cannot bind here
        client = ScramClient("SCRAM-SHA-256", site.alice.name, SECRET, gs2="y,,")
        logs_in_and_quits(site, pop, client, "SCRAM-SHA-256")
    with PyOpenSslClient(site, pki, stls=True) as tls:
        assert b"PLUS" not in tls.plain_sasl and tls.version == "TLSv1.3"
        assert tls.pop.sasl_line().startswith(b"SASL " + PLUS_LIST)
        assert b"SCRAM-SHA-1-PLUS" in tls.pop.multiline("AUTH")
        client = plus_client(site, "SCRAM-SHA-1-PLUS", "tls-exporter", tls.binding("tls-exporter"))
        logs_in_and_quits(site, tls.pop, client, "SCRAM-SHA-1-PLUS")


@pytest.mark.root
@pytest.mark.timeout(120)
def test_tls13_port_binds_with_tls_exporter(server_site, pki):
    site = server_site
    with PyOpenSslClient(site, pki) as tls:
        assert tls.version == "TLSv1.3"
        assert tls.pop.sasl_line().startswith(b"SASL " + PLUS_LIST)
        # tls-unique is not defined for TLS 1.3 (RFC 9266 §3)
        client = plus_client(site, "SCRAM-SHA-256-PLUS", "tls-unique", tls.binding("tls-unique"))
        assert tls.pop.scram(client, "SCRAM-SHA-256-PLUS") == FAILED_LINE
        client = plus_client(site, "SCRAM-SHA-256-PLUS", "tls-exporter",
                             tls.binding("tls-exporter"))
        logs_in_and_quits(site, tls.pop, client, "SCRAM-SHA-256-PLUS")
    site.syslog.wait_for(r"pre-login: AUTH SCRAM-SHA-256-PLUS from 127\.0\.0\.1: channel binding type "
                         r"'tls-unique' is not available on this connection")


def assert_tls12_offers_no_plus(site, pop: Pop3, tls_unique: bytes) -> None:
    """No -PLUS on TLS 1.2; tls-unique is refused as a binding this server does not support;
    SCRAM without binding logs in."""
    sasl = pop.sasl_line()
    assert b"SCRAM-SHA-256 SCRAM-SHA-1" in sasl and b"PLUS" not in sasl
    assert pop.command("AUTH SCRAM-SHA-256-PLUS") == UNRECOGNIZED[:-2]
    client = plus_client(site, "SCRAM-SHA-256", "tls-unique", tls_unique)
    assert pop.scram(client, "SCRAM-SHA-256") == b"-ERR [AUTH] Channel binding is not supported"
    client = ScramClient("SCRAM-SHA-256", site.alice.name, SECRET, gs2="y,,")   # the truth
    logs_in_and_quits(site, pop, client, "SCRAM-SHA-256")


@pytest.mark.root
@pytest.mark.timeout(120)
def test_tls12_offers_no_plus(server_site, pki):
    """RFC 7627: without knowing the Extended Master Secret was negotiated, TLS 1.2 has no
    channel binding worth binding to."""
    site = server_site
    with PyOpenSslClient(site, pki, max_version=SSL.TLS1_2_VERSION) as tls:
        assert tls.version == "TLSv1.2"
        assert_tls12_offers_no_plus(site, tls.pop, tls.binding("tls-unique"))


@pytest.mark.root
@pytest.mark.timeout(120)
def test_tls12_resumed_session_offers_no_plus(server_site, pki):
    """The resumption attack's own case: a resumed TLS 1.2 session."""
    site = server_site
    context = ssl.create_default_context(cafile=pki.ca_file)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    address = (site.srv.host, site.srv.tls_port)
    with socket.create_connection(address, timeout=20) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        assert Pop3(tls).line().startswith(b"+OK")
        saved = tls.session
    with socket.create_connection(address, timeout=20) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1", session=saved) as tls:
        # each connection's pre-login process has its own context, so the server does not
        # resume (docs/privsep.md, "The TLS key"); either way no -PLUS is offered
        assert not tls.session_reused and tls.version() == "TLSv1.2"
        pop = Pop3(tls)
        assert pop.line().startswith(b"+OK")
        assert_tls12_offers_no_plus(site, pop, tls.get_channel_binding("tls-unique"))


@pytest.mark.root
@pytest.mark.timeout(120)
def test_a_binding_from_another_connection_is_refused(server_site, pki):
    """A man in the middle relays the client's SCRAM into its own TLS connection to the
    server: the client's binding names the client's connection, so the login fails."""
    site = server_site
    with PyOpenSslClient(site, pki) as victim, PyOpenSslClient(site, pki) as relay:
        stolen = victim.binding("tls-exporter")
        client = plus_client(site, "SCRAM-SHA-256-PLUS", "tls-exporter", stolen)
        assert relay.pop.scram(client, "SCRAM-SHA-256-PLUS") == FAILED_LINE
        own = relay.binding("tls-exporter")
        flipped = bytes([own[0] ^ 1]) + own[1:]
        client = plus_client(site, "SCRAM-SHA-256-PLUS", "tls-exporter", flipped)
        assert relay.pop.scram(client, "SCRAM-SHA-256-PLUS") == FAILED_LINE
    site.syslog.wait_for(r"pre-login: AUTH SCRAM-SHA-256-PLUS from 127\.0\.0\.1: tls-exporter channel "
                         r"bindings do not match: .*")
    site.syslog.wait_for(rf"LOGIN FAILED, user={site.alice.name}, method=SCRAM-SHA-256-PLUS, "
                         rf"ip=\[127\.0\.0\.1\], .*")


@pytest.mark.root
@pytest.mark.timeout(120)
def test_y_flag_over_tls_is_refused_and_n_is_accepted(server_site, pki):
    site = server_site
    with PyOpenSslClient(site, pki, stls=True) as tls:
        client = ScramClient("SCRAM-SHA-256", site.alice.name, SECRET, gs2="y,,")
        assert tls.pop.scram(client, "SCRAM-SHA-256") == FAILED_LINE
        client = ScramClient("SCRAM-SHA-256", site.alice.name, SECRET, gs2="n,,")
        logs_in_and_quits(site, tls.pop, client, "SCRAM-SHA-256")
    site.syslog.wait_for(r"pre-login: AUTH SCRAM-SHA-256 from 127\.0\.0\.1: the client says it binds "
                         r"channels but saw no SCRAM-SHA-256-PLUS: a downgrade")
