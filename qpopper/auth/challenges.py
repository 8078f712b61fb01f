"""The server's half of the challenge mechanisms, kept beside the secrets.

In the standalone and inetd servers this runs in the root monitor (docs/privsep.md): the
unprivileged pre-login process parses the client's SASL lines and asks for these steps by
name, so it never sees a pop.auth secret, a SCRAM verifier or the Kerberos keytab, and it
cannot choose the challenge a proof is checked against (a proof sniffed from another
connection is useless to it):
  APOP       the banner timestamp is made here (apop_timestamp)
  CRAM-MD5   the challenge is made here and remembered (CramChallenge)
  SCRAM      server-first (nonce, salt, iterations) is made here and remembered; the proof
             is checked against the AuthMessage built with it (ScramState)
  GSSAPI     the GSS-API context lives here (GssAcceptor, and the authenticator's steps
             GssSteps)
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import socket
import syslog
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

from qpopper.option_types import shown
from qpopper.options import BY_NAME
from qpopper.pop3.responses import PopError, RespCode
from qpopper.auth import is_possible_user_name, krb5_names, scram

if TYPE_CHECKING:  # pragma: no cover
    from qpopper.auth import Login

AUTHENTICATION_FAILURE = "authentication failure"
"""The reply to a wrong proof (auth/policy.py BAD_DIGEST)."""
BAD_EXCHANGE = "Malformed AUTH exchange"

PLUS_SUFFIX = "-PLUS"
"""RFC 5802 §4: the channel-binding variant of a SCRAM mechanism is its name + -PLUS."""


def scram_arithmetic(mechanism: str) -> str:
    """SCRAM-SHA-256-PLUS -> SCRAM-SHA-256: the hash, and which pop.auth verifier."""
    return mechanism.removesuffix(PLUS_SUFFIX)


def apop_timestamp(pid: int, now: float, hostname: str) -> str:
    """RFC 1939 §7: unique per connection. pid.time alone is guessable: 64 random bits too."""
    return f"<{pid}.{int(now)}.{secrets.randbits(64):016x}@{hostname}>"


def cram_challenge(hostname: str) -> bytes:
    """RFC 2195's `<random.pid@host>`."""
    return f"<{secrets.randbits(64):016x}.{os.getpid()}@{hostname}>".encode("ascii")


@dataclass
class ScramState:
    """One SCRAM exchange between its server-first and the client's proof."""

    user: str
    mechanism: str               # as offered, -PLUS included
    verifier: scram.Verifier
    known: bool                  # False: a decoy verifier for a name without one
    server_first: str

    @classmethod
    def begin(cls, user: str, mechanism: str, arithmetic: str, client_nonce: str,
              verifier: scram.Verifier | None, decoy_key=None) -> "ScramState":
        """`decoy_key()`: the secret keying the decoy, asked only when there is no verifier."""
        known = verifier is not None
        if not known:
            # Carry on with a made-up verifier, so that an unknown name gets the same
            # exchange as a wrong password (RFC 5802 §9); the salt is stable per name.
            verifier = decoy_verifier(arithmetic, user, decoy_key() if decoy_key else None)
        nonce = client_nonce + scram.b64(secrets.token_bytes(18))
        server_first = f"r={nonce},s={scram.b64(verifier.salt)},i={verifier.iterations}"
        return cls(user, mechanism, verifier, known, server_first)

    def proved(self, client_first_bare: str, client_final_without_proof: str,
               proof: bytes) -> tuple[bool, bytes]:
        """(the proof is right, the server signature) for the AuthMessage built with OUR
        server-first: whoever relays the exchange cannot replay another one's proof."""
        auth_message = (f"{client_first_bare},{self.server_first},"
                        f"{client_final_without_proof}").encode("utf-8", "surrogateescape")
        ok = self.known and scram.proof_is_valid(self.verifier, auth_message, proof)
        return ok, scram.server_signature(self.verifier, auth_message)


def decoy_verifier(mechanism: str, name: str, secret: bytes | None) -> scram.Verifier:
    """A made-up verifier for `name`, keyed by `secret` (the store's decoy key, which only
    root and the store's owner can read: a local user who could compute a decoy's salt could
    tell a name without a verifier from one with; docs/internals.md, "Store mechanisms").
    None (no key, and none could be made; start-up warns): /etc/machine-id, stable but
    readable by local users."""
    secret = _machine_secret() if secret is None else secret
    key = hmac.new(secret, b"qpopper-scram-decoy\0" + mechanism.encode("ascii") + b"\0"
                   + name.encode("utf-8", "surrogateescape"), "sha256").digest()
    salt = hashlib.sha256(b"qpopper-scram-decoy" + key).digest()[:scram.SALT_OCTETS]
    junk = hmac.new(key, b"decoy", "sha256").digest()
    size = hashlib.new(scram.MECHANISMS[mechanism]).digest_size
    return scram.Verifier(mechanism, salt, scram.DEFAULT_ITERATIONS, junk[:size], junk[:size])


def _machine_secret() -> bytes:
    """Stable per host, not known to remote clients (local users can read it):
    /etc/machine-id when readable."""
    try:
        with open("/etc/machine-id", "rb") as f:
            return f.read().strip()
    except OSError:
        return socket.gethostname().encode()


# --- GSSAPI (RFC 4752) ----------------------------------------------------------------------
LAYER_OFFER = b"\x01\x00\x00\x00"
"""Security layer "none" only (TLS, not SASL, protects the session), no maximum size."""


class GssFailed(Exception):
    """The GSS-API exchange failed (the text says why, for the log)."""


class GssAcceptor:
    """The acceptor's side of one GSSAPI exchange: context tokens until complete, then the
    wrapped layer offer, then the client's wrapped choice."""

    def __init__(self, credentials):
        import gssapi          # an optional dependency, Kerberos only
        self._gssapi = gssapi
        self.context = gssapi.SecurityContext(creds=credentials, usage="accept")

    def step(self, token: bytes) -> tuple[bytes, bool]:
        """(the token to send, whether the context is complete)."""
        try:
            out = self.context.step(token)
        except self._gssapi.exceptions.GSSError as exc:
            raise GssFailed(gss_text(exc)) from None
        return out or b"", bool(self.context.complete)

    def offer(self) -> bytes:
        self._require_complete()
        try:
            return self.context.wrap(LAYER_OFFER, False).message
        except self._gssapi.exceptions.GSSError as exc:
            raise GssFailed(gss_text(exc)) from None

    def choice(self, answer: bytes) -> tuple[bytes, str]:
        """(the unwrapped choice, the client's principal)."""
        self._require_complete()
        try:
            choice = self.context.unwrap(answer).message
        except self._gssapi.exceptions.GSSError as exc:
            raise GssFailed(gss_text(exc)) from None
        return choice, str(self.context.initiator_name)

    def _require_complete(self) -> None:
        if not self.context.complete:
            raise GssFailed("the security context is not complete")


def service_name(cfg) -> str:
    """The acceptor's host-based service name: kerberos-service@this host (-K sets it). An
    unset kerberos-service (`= ""`) means the option's default, the manual's rcmd."""
    service = cfg.kerberos_service or BY_NAME["kerberos-service"].default
    return f"{service}@{socket.gethostname().lower()}"


def acceptor_credentials(cfg):
    import gssapi
    name = gssapi.Name(service_name(cfg), gssapi.NameType.hostbased_service)
    return gssapi.Credentials(name=name, usage="accept")


LOGGED_NAME_MAX = 300
"""A principal (or a name made of it) in a log line: escaped, cut beyond this many characters."""


def logged(name: str) -> str:
    """`name` as a log line shows it: control characters escaped (option_types.shown)."""
    return shown(name, LOGGED_NAME_MAX)


def gss_text(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text[:200]


class GssSteps:
    """The authenticator's GSSAPI steps (auth/policy.py Authenticator mixes them in): the
    GSS-API context lives beside the keytab; refusals go through its check_external."""

    _gss: GssAcceptor | None = None

    def gss_step(self, token: bytes, client_ip: str, *, first: bool = False,
                 client_host: str | None = None) -> tuple[bytes, bool]:
        """One GSS-API context token: (the answer token, complete). `first`: the first
        token of an AUTH GSSAPI, which starts a new context (a cancelled exchange's is
        dropped)."""
        try:
            if first or self._gss is None:
                self._gss = self._new_gss_acceptor()
            return self._gss.step(token)
        except GssFailed as exc:
            self._gss_failed(str(exc), client_ip, client_host)

    def _new_gss_acceptor(self) -> GssAcceptor:
        # kerberos with user-database pop-auth never reaches here: config.check_combinations
        # refuses it for every Config a server runs with (config.load, demo_config).
        if not self.cfg.kerberos:
            raise GssFailed("GSSAPI is not offered (kerberos is off)")
        try:
            return GssAcceptor(acceptor_credentials(self.cfg))
        except Exception as exc:        # no gssapi module, no keytab: a GSS-API error
            raise GssFailed(gss_text(exc)) from None

    def gss_offer(self, client_ip: str, *, client_host: str | None = None) -> bytes:
        try:
            if self._gss is None:
                raise GssFailed("no security context")
            return self._gss.offer()
        except GssFailed as exc:
            self._gss_failed(str(exc), client_ip, client_host)

    def gss_choose(self, answer: bytes, normalise, client_ip: str, *,
                   client_host: str | None = None) -> tuple[Login, bool]:
        """The client's wrapped layer choice and authorization identity: (Login, no_mime).
        `normalise`: raw name -> (name, no_mime, valid), USER's rules."""
        gss, self._gss = self._gss, None
        try:
            if gss is None:
                raise GssFailed("no security context")
            choice, principal = gss.choice(answer)
        except GssFailed as exc:
            self._gss_failed(str(exc), client_ip, client_host)
        if len(choice) < 4 or not choice[0] & 0x01:
            raise PopError(BAD_EXCHANGE, RespCode.AUTH)             # a layer never offered
        try:
            authzid = choice[4:].decode("utf-8")
        except UnicodeDecodeError:
            raise PopError(BAD_EXCHANGE, RespCode.AUTH) from None
        # Which account a principal is, krb5.conf's auth_to_local says (the administrator's
        # mapping, as for sshd); a principal it maps to none is a failed login
        # (docs/compatibility.md, "SASL and Kerberos"). The principal and the names made of
        # it go to the log escaped, as client text does (refuse_user_name takes printable
        # names): a KDC vouches for who the client is, not for what the name holds.
        try:
            user = krb5_names.local_name(principal)
        except krb5_names.NoLocalName as exc:
            self.refuse_user_name(principal if is_possible_user_name(principal) else "(gssapi)",
                                  AUTHENTICATION_FAILURE, client_ip, client_host=client_host,
                                  mechanism="AUTH GSSAPI",
                                  reason=f"Kerberos maps {logged(principal)} to no local "
                                         f"account: {exc}")
        # The login is the name auth_to_local gave, exactly. USER's rules (downcase-user,
        # trim-domain, -no-mime) would map another principal onto it, so a name they change
        # is refused: a mapping belongs in auth_to_local.
        name, no_mime, valid = normalise(user)
        if not valid:
            self.refuse_user_name(logged(name), AUTHENTICATION_FAILURE, client_ip,
                                  client_host=client_host, mechanism="AUTH GSSAPI")
        if authzid and authzid != user:
            self.check_external(logged(user), "AUTH GSSAPI", False, client_ip,
                                client_host=client_host, authid=logged(principal))
        if name != user:
            self.refuse_user_name(user if is_possible_user_name(user) else logged(name),
                                  AUTHENTICATION_FAILURE, client_ip, client_host=client_host,
                                  mechanism="AUTH GSSAPI",
                                  reason=f"USER's name rules would make {logged(principal)} "
                                         f"log in as {logged(name)}")
        login = self.check_external(name, "AUTH GSSAPI", True, client_ip,
                                    client_host=client_host, authid=logged(principal))
        return login, no_mime

    def _gss_failed(self, why: str, client_ip, client_host) -> NoReturn:
        self._gss = None
        self.log(syslog.LOG_NOTICE, f"GSSAPI from {client_ip}: {why}")
        self.check_external("(gssapi)", "AUTH GSSAPI", False, client_ip,
                            client_host=client_host, authid="an unverified principal")
        raise PopError(AUTHENTICATION_FAILURE, RespCode.AUTH)      # check_external refused already

