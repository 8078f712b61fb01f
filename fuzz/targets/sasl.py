"""The SASL decoders (qpopper/auth/sasl.py: PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-1/256 and
their -PLUS forms, GSSAPI's security-layer choice) through AUTH on the real Protocol with
the real Authenticator over a pop.auth store holding alice's secret.

The input picks the mechanism and whether an initial response is sent; its lines are the
client's responses, base64-encoded here so that the fuzzer explores the decoded messages
(a line starting with `!` is sent as it is: bad base64, `*`). Placeholders let an input
follow a random server: @NONCE@ is the server's SCRAM nonce, @PROOF@ a correct SCRAM proof
of alice's secret for the exchange so far, @DIGEST@ the CRAM-MD5 digest of the challenge.

GSSAPI needs a KDC for its context tokens, so the acceptor here is a stand-in that
completes when a token starts with `ok` and "unwraps" by passing the client's layer choice
through: what is fuzzed is the framing of that choice (RFC 4752: layer octet, size,
authorization identity) and the exchange around it, not Kerberos.

Nothing may escape: a bad response is an -ERR reply.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from functools import lru_cache

from fuzz.harness import scratch_dir
from qpopper.auth import challenges, scram
from qpopper.auth.policy import Authenticator
from qpopper.auth.sasl import MECHANISMS
from qpopper.auth.store import PopAuthStore
from tests.transcripts.harness import Spool

ALLOWED: tuple[type[BaseException], ...] = ()
MAX_LEN = 2048

SECRET = "tea-party-2026"
NAMES = sorted(MECHANISMS) + ["NO-SUCH-MECHANISM"]
BINDINGS = {"tls-unique": b"\x01" * 12, "tls-exporter": b"\x02" * 32}
PRINCIPAL = "alice@EXAMPLE.ORG"


class StandInAcceptor:
    """challenges.GssAcceptor's interface without Kerberos (see the module docstring)."""

    def __init__(self):
        self.complete = False

    def step(self, token: bytes) -> tuple[bytes, bool]:
        if token.startswith(b"fail"):
            raise challenges.GssFailed("the stand-in refused the token")
        self.complete = token.startswith(b"ok")
        return token[2:10], self.complete

    def offer(self) -> bytes:
        if not self.complete:
            raise challenges.GssFailed("the security context is not complete")
        return challenges.LAYER_OFFER

    def choice(self, answer: bytes) -> tuple[bytes, str]:
        if not self.complete:
            raise challenges.GssFailed("the security context is not complete")
        choice, bar, principal = answer.partition(b"|")
        name = principal.decode("utf-8", "replace") if bar else PRINCIPAL
        return choice, name


class FuzzAuthenticator(Authenticator):
    def _new_gss_acceptor(self):
        return StandInAcceptor()


_base = scratch_dir("sasl")
_spool = Spool(_base / "spool", sasl_no_dictionary=False, sasl_no_plaintext=False,
               user_database="pop-auth", pop_auth_owner="nobody", auth_brakes_file=None,
               kerberos=True)
_spool.write("alice", b"From x@example.org Tue Nov 14 22:13:20 2023\nSubject: hi\n\nHello.\n")
_store = PopAuthStore.create(str(_base / "pop.auth"))
_store.set_secret("alice", SECRET)


@lru_cache(maxsize=64)
def _salted(arithmetic: str, salt: bytes, iterations: int) -> bytes:
    return scram.salted_password(arithmetic, SECRET.encode(), salt, iterations)


class Client:
    """Fills the placeholders from what the server said last."""

    def __init__(self, mechanism: str):
        self.arithmetic = mechanism.removesuffix("-PLUS")
        self.challenge = b""
        self.first_bare = ""

    def fill(self, line: bytes) -> bytes:
        if b"@DIGEST@" in line:
            digest = hmac.new(SECRET.encode(), self.challenge, hashlib.md5).hexdigest()
            line = line.replace(b"@DIGEST@", digest.encode())
        if b"@NONCE@" in line:
            nonce = re.match(rb"r=([^,]*)", self.challenge)
            line = line.replace(b"@NONCE@", nonce.group(1) if nonce else b"")
        if line.endswith(b",p=@PROOF@") and self.arithmetic.startswith("SCRAM"):
            without_proof = line[:-len(b",p=@PROOF@")]
            line = without_proof + b",p=" + self._proof(without_proof).encode()
        return line

    def _proof(self, without_proof: bytes) -> str:
        attrs = dict(part.split(b"=", 1) for part in self.challenge.split(b",") if b"=" in part)
        try:
            salt = base64.b64decode(attrs[b"s"], validate=True)
            iterations = min(int(attrs[b"i"]), 10_000)
        except (KeyError, ValueError):
            return "AAAA"
        auth_message = (self.first_bare.encode() + b"," + self.challenge + b"," + without_proof)
        proof = scram.client_proof(self.arithmetic, _salted(self.arithmetic, salt, iterations),
                                   auth_message)
        return scram.b64(proof)

    def heard(self, reply: bytes) -> None:
        if reply.startswith(b"+ ") and reply.endswith(b"\r\n"):
            try:
                self.challenge = base64.b64decode(reply[2:-2], validate=True)
            except ValueError:
                self.challenge = b""

    def sent_first(self, message: bytes) -> None:
        self.first_bare = message.decode("utf-8", "replace").split(",", 2)[-1]


def encoded(line: bytes) -> bytes:
    if line.startswith(b"!"):
        return line[1:] + b"\r\n"
    return base64.b64encode(line) + b"\r\n"


def one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    mechanism = NAMES[data[0] % len(NAMES)]
    flags, lines = data[1], data[2:].split(b"\n")
    tls = bool(flags & 2)
    authenticator = FuzzAuthenticator(_spool.cfg, lambda priority, text: None, store=_store)
    authenticator.sleep = lambda seconds: None
    pop = _spool.session(authenticator=authenticator, tls_active=tls)
    if tls:
        pop.env.channel_bindings = BINDINGS
    client = Client(mechanism)
    try:
        out = bytearray(pop.greet())
        command = f"AUTH {mechanism}".encode()
        if flags & 1:
            first = client.fill(lines.pop(0))
            client.sent_first(first)
            command += b" " + (base64.b64encode(first) if first else b"=")
        reply = pop.send(command + b"\r\n")
        client.heard(reply)
        out += reply
        for line in lines:
            line = client.fill(line)
            if not client.first_bare:
                client.sent_first(line)
            reply = pop.send(encoded(line))
            client.heard(reply)
            out += reply
        pop.proto.eof()
        out += pop.env.take()
        assert pop.proto.closed, "eof() left the session open"
        assert out.endswith(b"\r\n"), f"output does not end a line: {bytes(out[-80:])!r}"
        if pop.proto.login is not None:
            assert pop.proto.login.user == "alice", pop.proto.login
    finally:
        _spool.close()
