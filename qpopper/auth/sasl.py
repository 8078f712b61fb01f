"""SASL for POP3's AUTH command (RFC 5034): PLAIN (RFC 4616), LOGIN, CRAM-MD5 (RFC 2195),
SCRAM-SHA-1 (RFC 5802), SCRAM-SHA-256 (RFC 7677), their channel-binding -PLUS variants inside
TLS, and GSSAPI (RFC 4752; Kerberos, -k/-K).

The AUTH verb (auth_state.cmd_auth) picks a mechanism from `offered_mechanisms` and runs
an `Exchange`: each mechanism is a generator that yields server challenges and receives the
client's decoded responses, and finally returns the Login. Every credential check goes
through the session's Authenticator (auth/policy.py), so auth-file, nonauth-file, the low-UID
block, clear-text-password, PAM account management and the brute-force brakes apply to AUTH
exactly as to USER/PASS and APOP. The server's half of each challenge mechanism is the
authenticator's too (auth/challenges.py: in the servers it runs in the root monitor,
docs/privsep.md), so this module parses and never sees a secret:
  PLAIN, LOGIN          Authenticator.check_password (PAM for system users)
  CRAM-MD5              Authenticator.cram_challenge + check_cram_md5 (the pop.auth secret)
  SCRAM-SHA-1/-256      Authenticator.scram_begin + scram_prove + scram_accepted (pop.auth
  and their -PLUS       verifiers; -PLUS uses the same verifiers)
  GSSAPI                Authenticator.gss_step + gss_offer + gss_choose (Kerberos proves
                        a principal; krb5.conf's auth_to_local names its account; PAM
                        account checks apply)

Which mechanisms are offered (the sasl-* options keep Cyrus SASL's meaning; Qpopper passed
them to Cyrus as security flags). Each mechanism carries Cyrus' flags for it:
                 plaintext  dictionary  active    (attack the mechanism is open to)
  GSSAPI         no         yes         no        (offered only with -k, see kerberos_refusal)
  PLAIN, LOGIN   yes        yes         yes
  CRAM-MD5       no         yes         yes
  SCRAM-*        no         yes         no        (mutual authentication: the server proves
                                                   itself, so no active attack; -PLUS too)
  - sasl-no-plaintext: PLAIN and LOGIN are hidden until TLS is active (Cyrus drops the
    no-plaintext flag once an external security layer is there);
  - sasl-no-dictionary: hides them all (each exchange lets an eavesdropper test passwords
    offline; Cyrus marks none of them NODICTIONARY);
  - sasl-no-active: hides PLAIN, LOGIN and CRAM-MD5 (GSSAPI and SCRAM authenticate the server);
  - sasl-no-anonymous: nothing to hide (no ANONYMOUS mechanism is offered at all);
  - sasl-forward-secrecy: hides them all (none has forward secrecy);
  - sasl-min-ssf N > 0: none of these mechanisms negotiates a SASL security layer (their SSF
    is 0), so they are offered only inside TLS, whose strength counts as the external SSF
    (as Cyrus counts it); sasl-max-ssf only caps SASL layers, of which there are none.
  - PLAIN and LOGIN also follow clear-text-password, like USER (never: hidden; tls: hidden
    before TLS and refused with a hint to use STLS).
  - CRAM-MD5 and SCRAM need the pop.auth store (secrets and verifiers are there) and
    store-mechanisms (auth/policy.py store_mechanisms_offered).

Channel binding (RFC 5802 §6, RFC 5056): SCRAM-SHA-256-PLUS and SCRAM-SHA-1-PLUS are offered
beside their SCRAM mechanism only inside TLS and only when the session could name the
connection's channel binding (`env.channel_bindings`, plain bytes from session.py: tls-exporter
of RFC 9266 on TLS 1.3). TLS 1.2 names none, so it gets no -PLUS: its tls-unique is open to
RFC 7627's resumption attack unless the Extended Master Secret was negotiated, which the TLS
library cannot tell us (qpopper/server/tls.py). The GS2 header decides:
  p=<cb-name>   with a -PLUS mechanism only (else "Channel binding is not supported"). A
                cb-name this connection has not got (tls-unique, anything unknown:
                RFC 5802's unsupported-channel-binding-type) fails the login, and so does a
                c= that is not base64(gs2-header + binding data) (channel-bindings-dont-match:
                the client's TLS connection is not ours, a man in the middle).
  y             "I bind, but you did not offer it": inside TLS with -PLUS offered that is a
                downgrade (someone cut -PLUS from CAPA), so the login fails (RFC 5802 §6
                MUST); outside it is accepted.
  n             no channel binding: accepted with the plain mechanisms, as before.
Failed logins go through Authenticator.check_scram (proved=False): the same `authentication
failure` reply, failure delay, brakes and log lines as a wrong password, with the channel
binding reason logged before them. `n` or `y` with a -PLUS mechanism is a malformed exchange.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import syslog
from dataclasses import dataclass
from typing import Callable, Generator, NoReturn

from qpopper.pop3.responses import PopError, RespCode
from qpopper.auth import challenges, krb5_names, scram
from qpopper.auth.challenges import BAD_EXCHANGE, PLUS_SUFFIX, acceptor_credentials, service_name

PLAINTEXT_MECHANISMS = ("PLAIN", "LOGIN")
STORE_MECHANISMS = ("CRAM-MD5", "SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-1-PLUS",
                    "SCRAM-SHA-256-PLUS")
TLS_SSF = 128
"""The external SSF TLS counts for against sasl-min-ssf (every cipher tls.py allows is at
least 128 bits strong)."""


@dataclass(frozen=True)
class MechanismFlags:
    plaintext: bool
    dictionary: bool
    active: bool


FLAGS = {
    "GSSAPI": MechanismFlags(plaintext=False, dictionary=True, active=False),
    "SCRAM-SHA-256-PLUS": MechanismFlags(plaintext=False, dictionary=True, active=False),
    "SCRAM-SHA-256": MechanismFlags(plaintext=False, dictionary=True, active=False),
    "SCRAM-SHA-1-PLUS": MechanismFlags(plaintext=False, dictionary=True, active=False),
    "SCRAM-SHA-1": MechanismFlags(plaintext=False, dictionary=True, active=False),
    "CRAM-MD5": MechanismFlags(plaintext=False, dictionary=True, active=True),
    "PLAIN": MechanismFlags(plaintext=True, dictionary=True, active=True),
    "LOGIN": MechanismFlags(plaintext=True, dictionary=True, active=True),
}
"""In the order CAPA lists them: strongest first."""

# Replies.
UNKNOWN_MECHANISM = "Unrecognized authentication type"
CANCELLED = "AUTH exchange cancelled"
BAD_BASE64 = "Invalid base64 data in AUTH response"
BAD_NAME = "authentication failure"      # the authenticator's BAD_DIGEST: nothing more revealed
PLAINTEXT_NEEDS_TLS = ("Plaintext authentication is permitted only over TLS; use STLS first")
PLAINTEXT_NOT_PERMITTED = "Plaintext authentication is not permitted"
# clear-text-password refusals (the authenticator, auth/policy.py, gives them too).
NEEDS_STRONGER_AUTH = ("You must use stronger authentication such as AUTH or APOP to access "
                       "this account")
NO_OTHER_WAY = ("Clear text passwords are not permitted, and this server offers no other way "
                "to log in")
CLEAR_TEXT_OVER_TLS_ONLY = "Clear text passwords are permitted only over TLS"
CLEAR_TEXT_TLS_ONLY = f"{CLEAR_TEXT_OVER_TLS_ONLY}; use STLS first"
AUTHZID_NOT_THE_USER = "Authorization identity must be empty or equal the user name"
BINDING_NOT_SUPPORTED = "Channel binding is not supported"
MECHANISMS_FOLLOW = "Available authentication mechanisms follow"
GSSAPI_UNAVAILABLE = ("kerberos (-k): Kerberos is served as SASL GSSAPI, which this "
                      "installation cannot offer: {why}. Remove -k / 'set kerberos' or "
                      "use APOP, SCRAM or TLS")


# --- what is offered ------------------------------------------------------------------------
def offered_mechanisms(cfg, env) -> list[str]:
    """The mechanisms this connection may use now, in CAPA order."""
    if cfg.sasl_forward_secrecy or cfg.sasl_no_dictionary:
        return []
    tls = bool(env.tls_active)
    if cfg.sasl_min_ssf > 0 and not (tls and TLS_SSF >= cfg.sasl_min_ssf):
        return []
    store = env.authenticator.apop_enabled
    names = []
    for name, flags in FLAGS.items():
        if name in STORE_MECHANISMS and not store:
            continue
        if name == "GSSAPI" and not cfg.kerberos:
            continue
        if name.endswith(PLUS_SUFFIX) and not binds_channel(env):
            continue
        if flags.active and cfg.sasl_no_active:
            continue
        if flags.plaintext and (not plaintext_policy_allows(cfg, tls) or
                                (cfg.sasl_no_plaintext and not tls)):
            continue
        names.append(name)
    return names


def channel_bindings(env) -> dict[str, bytes]:
    """The connection's channel bindings (cb-name -> data), only inside TLS. An env without
    the attribute (a test double older than channel binding) has none."""
    if not env.tls_active:
        return {}
    return dict(getattr(env, "channel_bindings", None) or {})


def binds_channel(env) -> bool:
    """Can this connection use the -PLUS mechanisms (TLS, and a binding to bind to)?"""
    return bool(channel_bindings(env))


def plaintext_policy_allows(cfg, tls_active: bool) -> bool:
    """clear-text-password as CAPA's USER line reads it (never: no; tls: only inside TLS)."""
    policy = cfg.clear_text_password
    if policy == "never":
        return False
    if policy in ("tls", "ssl"):
        return tls_active
    return True


def clear_text_refusal(cfg, env) -> str | None:
    """Why this connection refuses clear text for every user, so that USER is refused before
    a password is ever sent (RFC 2595 §2.3, §4): clear-text-password never, or tls before
    TLS. None when clear text may be tried (the authenticator still decides per user and
    address: local, default)."""
    if plaintext_policy_allows(cfg, env.tls_active):
        return None
    if cfg.clear_text_password == "never":
        return stronger_auth_text(bool(offered_mechanisms(cfg, env)),
                                  env.authenticator.apop_enabled)
    return CLEAR_TEXT_TLS_ONLY if env.start_tls is not None else CLEAR_TEXT_OVER_TLS_ONLY


def stronger_auth_text(auth_offered: bool, apop_offered: bool) -> str:
    """Qpopper's "use stronger authentication" refusal, naming only what is offered: AUTH
    when a mechanism other than PLAIN and LOGIN is, APOP when the store mechanisms are."""
    ways = [way for way, offered in (("AUTH", auth_offered), ("APOP", apop_offered))
            if offered]
    if not ways:
        return NO_OTHER_WAY
    return NEEDS_STRONGER_AUTH.replace("AUTH or APOP", " or ".join(ways))


def refusal_for(name: str, cfg, env) -> PopError:
    """Why `name` is not offered now, as the client should hear it."""
    if name in PLAINTEXT_MECHANISMS:
        policy_needs_tls = cfg.clear_text_password in ("tls", "ssl") or cfg.sasl_no_plaintext
        if not env.tls_active and policy_needs_tls and cfg.clear_text_password != "never":
            hint = PLAINTEXT_NEEDS_TLS if env.start_tls is not None else PLAINTEXT_NOT_PERMITTED
            return PopError(hint, RespCode.AUTH)
        return PopError(PLAINTEXT_NOT_PERMITTED, RespCode.AUTH)
    return PopError(UNKNOWN_MECHANISM)


def kerberos_refusal(cfg) -> str | None:
    """-k / -K (Kerberos 4 in the manual) are served as SASL GSSAPI (RFC 4752) through the
    system Kerberos (docs/internals.md, "Auth"). That needs the python-gssapi module (an
    optional dependency), libkrb5 (auth/krb5_names.py maps the principal to its account)
    and a keytab holding `kerberos-service/<this host>` (KRB5_KTNAME, else
    /etc/krb5.keytab): without them Kerberos is refused at start-up, with the reason, rather
    than silently offering nothing (or refusing every login). None when Kerberos was not
    asked for or can be served."""
    if not cfg.kerberos:
        return None
    try:
        import gssapi      # here, not at module level: an optional dependency, Kerberos only
    except ImportError:
        return GSSAPI_UNAVAILABLE.format(why="the python-gssapi module is not installed "
                                             "(pip install gssapi, or Debian's python3-gssapi)")
    try:
        krb5_names.library()        # a principal's account is libkrb5's to say (krb5_names.py)
    except OSError as exc:
        return GSSAPI_UNAVAILABLE.format(why=" ".join(str(exc).split()))
    keytab = os.environ.get("KRB5_KTNAME", "/etc/krb5.keytab")
    keytab_path = keytab.split(":", 1)[1] if keytab.startswith(("FILE:", "WRFILE:")) else keytab
    if not os.path.isfile(keytab_path) or not os.access(keytab_path, os.R_OK):
        return GSSAPI_UNAVAILABLE.format(why=f"there is no readable keytab {keytab_path} "
                                             f"(set KRB5_KTNAME to choose another)")
    try:
        acceptor_credentials(cfg)
    except gssapi.exceptions.GSSError as exc:
        return GSSAPI_UNAVAILABLE.format(
            why=f"no key for {service_name(cfg)} in {keytab_path} ({challenges.gss_text(exc)})")
    return None


# --- the exchange -------------------------------------------------------------------------------
Normaliser = Callable[[str], "tuple[str, bool, bool]"]
"""raw name -> (name, no_mime, valid): auth_state.normalise_user for this session."""

Mechanism = Generator[bytes, bytes, "tuple[object, bool]"]


class Exchange:
    """One AUTH command: drives a mechanism generator over continuation lines."""

    def __init__(self, proto, name: str, normalise: Normaliser):
        self.proto = proto
        self.env = proto.env
        self.name = name
        self.normalise = normalise
        self._steps: Mechanism | None = None

    def start(self, initial: bytes | None) -> None:
        self._steps = MECHANISMS[self.name](self, initial)
        self._advance(None)

    def _advance(self, response: bytes | None) -> None:
        try:
            challenge = self._steps.send(response)
        except StopIteration as done:
            login, no_mime = done.value
            self.proto.login_succeeded(login, no_mime=no_mime)
            return
        self.proto.reply(b"+ " + base64.b64encode(challenge) + b"\r\n")
        self.proto.read_continuation(self._on_line)

    def _on_line(self, line: bytes) -> None:
        if line.strip() == b"*":
            raise PopError(CANCELLED)          # RFC 5034 §4: the client gave up
        self._advance(decode_response(line))

    # helpers the mechanisms use
    def user(self, raw: str) -> tuple[str, bool]:
        """Normalise a SASL user name like USER's; an impossible name is refused at once
        (like a bad password: the authenticator waits and counts it)."""
        name, no_mime, valid = self.normalise(raw)
        if not valid:
            self.proto.refuse_user_name(name, PopError(BAD_NAME, RespCode.AUTH),
                                        f"AUTH {self.name}")
        return name, no_mime


def decode_response(line: bytes, *, initial: bool = False) -> bytes:
    """Strict base64 (RFC 5034 §4: invalid data is an -ERR); `=` is an empty initial
    response."""
    text = line.strip()
    if initial and text == b"=":
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise PopError(BAD_BASE64) from None


def _client_first(initial: bytes | None):
    """For client-first mechanisms: the initial response, or ask for it with an empty
    challenge (RFC 5034 §4)."""
    if initial is not None:
        return initial
    response = yield b""
    return response


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise PopError(BAD_EXCHANGE, RespCode.AUTH) from None


def mech_plain(ex: Exchange, initial: bytes | None) -> Mechanism:
    """RFC 4616: authzid NUL authcid NUL passwd; authzid must be empty or the authcid
    (no proxy logins)."""
    message = yield from _client_first(initial)
    parts = message.split(b"\0")
    if len(parts) != 3 or not parts[1]:
        raise PopError(BAD_EXCHANGE, RespCode.AUTH)
    authzid, authcid, password = (_text(p) for p in parts)
    if authzid and authzid != authcid:
        raise PopError(AUTHZID_NOT_THE_USER, RespCode.AUTH)
    return _password_login(ex, authcid, password, "AUTH PLAIN")


def mech_login(ex: Exchange, initial: bytes | None) -> Mechanism:
    """The LOGIN draft: "Username:" then "Password:" (an initial response is the name)."""
    name = initial if initial is not None else (yield b"Username:")
    password = yield b"Password:"
    return _password_login(ex, _text(name), _text(password), "AUTH LOGIN")


def _password_login(ex: Exchange, raw_name: str, password: str, mechanism: str):
    name, no_mime = ex.user(raw_name)
    env = ex.env
    login = env.authenticator.check_password(
        name, password, env.client_ip, client_host=env.client_host,
        tls_active=env.tls_active, mechanism=mechanism, authid=raw_name)
    return login, no_mime


def mech_cram_md5(ex: Exchange, initial: bytes | None) -> Mechanism:
    """RFC 2195: challenge `<random.pid@host>` (made by the authenticator, which checks the
    digest against it), response `user SP hex-hmac-md5`."""
    if initial is not None:
        raise PopError(BAD_EXCHANGE, RespCode.AUTH)   # server-first: no initial response
    env = ex.env
    challenge = env.authenticator.cram_challenge(env.hostname)
    response = _text((yield challenge))
    raw_name, _, digest = response.rpartition(" ")
    if not raw_name or len(digest) != 32:
        raise PopError(BAD_EXCHANGE, RespCode.AUTH)
    name, no_mime = ex.user(raw_name)
    login = env.authenticator.check_cram_md5(name, challenge, digest, env.client_ip,
                                             client_host=env.client_host)
    return login, no_mime


def _scram(mechanism: str):
    """The mechanism `mechanism` (SCRAM-SHA-1, SCRAM-SHA-256, or either + -PLUS). The
    messages are parsed here; server-first and the proof's check are the authenticator's
    (scram_begin, scram_prove: auth/challenges.py), beside the verifiers."""
    plus = mechanism.endswith(PLUS_SUFFIX)

    def mech_scram(ex: Exchange, initial: bytes | None) -> Mechanism:
        first = _text((yield from _client_first(initial)))
        gs2_flag, _, rest = first.partition(",")
        authzid_field, _, bare = rest.partition(",")
        cb_name = gs2_flag[2:] if gs2_flag.startswith("p=") else None
        if cb_name is not None and not plus:
            raise PopError(BINDING_NOT_SUPPORTED, RespCode.AUTH)
        if plus:
            well_formed = cb_name is not None and scram.is_cb_name(cb_name)  # -PLUS needs p=
        else:
            well_formed = gs2_flag in ("n", "y")
        if not well_formed or not bare:
            raise PopError(BAD_EXCHANGE, RespCode.AUTH)
        attrs = _attributes(bare)
        if attrs is None or "m" in attrs or "n" not in attrs or "r" not in attrs:
            raise PopError(BAD_EXCHANGE, RespCode.AUTH)
        raw_name = scram.unescape_name(attrs["n"])
        if raw_name is None or not raw_name or not _is_nonce(attrs["r"]):
            raise PopError(BAD_EXCHANGE, RespCode.AUTH)
        if authzid_field:
            authzid = scram.unescape_name(authzid_field[2:]) if authzid_field.startswith("a=") \
                else None
            if authzid != raw_name:
                raise PopError(AUTHZID_NOT_THE_USER, RespCode.AUTH)
        name, no_mime = ex.user(raw_name)
        env = ex.env
        bindings = channel_bindings(env)
        if gs2_flag == "y" and bindings:
            _binding_failed(ex, name, mechanism, f"the client says it binds channels but "
                                                 f"saw no {mechanism}-PLUS: a downgrade")
        if cb_name is not None and cb_name not in bindings:
            _binding_failed(ex, name, mechanism, f"channel binding type {cb_name!r} is not "
                                                 f"available on this connection")
        gs2_header = f"{gs2_flag},{authzid_field},".encode("utf-8")
        expected_binding = gs2_header + (bindings[cb_name] if cb_name is not None else b"")
        server_first = env.authenticator.scram_begin(name, mechanism, attrs["r"])
        nonce = server_first.split(",", 1)[0][2:]
        final = _text((yield server_first.encode("ascii")))
        without_proof, sep, proof_b64 = final.rpartition(",p=")
        final_attrs = _attributes(without_proof) if sep else None
        if (final_attrs is None or final_attrs.get("r") != nonce or "c" not in final_attrs
                or not without_proof.startswith("c=")):
            raise PopError(BAD_EXCHANGE, RespCode.AUTH)
        try:
            binding = base64.b64decode(final_attrs["c"], validate=True)
            proof = base64.b64decode(proof_b64, validate=True)
        except (binascii.Error, ValueError):
            raise PopError(BAD_EXCHANGE, RespCode.AUTH) from None
        if not hmac.compare_digest(binding, expected_binding):
            if not plus:
                raise PopError(BAD_EXCHANGE, RespCode.AUTH)
            _binding_failed(ex, name, mechanism, f"{cb_name} channel bindings do not match: "
                                                 f"the client's TLS connection is not this one")
        # A wrong proof (or a policy) is refused there, before the server's signature; the
        # address brake is waited there too, so v= never answers a guess sooner.
        login, signature = env.authenticator.scram_prove(bare, without_proof, proof,
                                                         env.client_ip,
                                                         client_host=env.client_host)
        # RFC 5034 §4 / RFC 5802 §3: the server's signature as the last challenge; the
        # client answers with an empty line, then +OK. Only then is it a login (logged,
        # brakes cleared, DRAC told): a client that rejects the signature (`*`, or anything
        # but an empty line) stays in AUTHORIZATION, and the log must not say it logged in.
        answer = yield f"v={scram.b64(signature)}".encode("ascii")
        if answer:
            raise PopError(BAD_EXCHANGE, RespCode.AUTH)
        env.authenticator.scram_accepted(env.client_ip, client_host=env.client_host)
        return login, no_mime
    mech_scram.__name__ = f"mech_{mechanism.lower().replace('-', '_')}"
    return mech_scram


def _binding_failed(ex: Exchange, name: str, mechanism: str, why: str) -> NoReturn:
    """A channel-binding refusal is a failed login: logged with its reason, then refused by
    the authenticator exactly as a wrong proof (same reply, delay, brakes, failure count)."""
    env = ex.env
    env.log(syslog.LOG_NOTICE, f"AUTH {mechanism} from {env.client_ip}: {why}")
    env.authenticator.check_scram(name, mechanism, False, env.client_ip,
                                  client_host=env.client_host)
    raise PopError(BAD_NAME, RespCode.AUTH)     # a refused proof never returns a Login


def _is_nonce(text: str) -> bool:
    """RFC 5802's c-nonce: printable ASCII but ",", at least one character. The server's
    nonce extends it and goes out in ASCII, so anything else is a malformed message."""
    return bool(text) and text.isascii() and text.isprintable() and " " not in text


def _attributes(text: str) -> dict[str, str] | None:
    """`a=x,b=y` -> {"a": "x", "b": "y"}; None when malformed or a key repeats."""
    attrs: dict[str, str] = {}
    for part in text.split(","):
        key, eq, value = part.partition("=")
        if not eq or len(key) != 1 or not key.isalpha() or key in attrs:
            return None
        attrs[key] = value
    return attrs


def mech_gssapi(ex: Exchange, initial: bytes | None) -> Mechanism:
    """RFC 4752: GSS-API context tokens until the context is complete, then the server
    offers security layers in a wrapped 4-octet message; the client picks "none" (the only
    one offered: TLS, not SASL, protects the session) and names its authorization identity,
    which must be empty or the principal's own user name. The context itself is the
    authenticator's (gss_step, gss_offer, gss_choose: it needs the keytab)."""
    env = ex.env
    authenticator = env.authenticator
    token = yield from _client_first(initial)
    first = True
    while True:
        out, complete = authenticator.gss_step(token, env.client_ip, first=first,
                                               client_host=env.client_host)
        first = False
        if complete:
            break
        token = yield out
    if out:
        yield out                      # the mutual-authentication token; answer is empty
    answer = yield authenticator.gss_offer(env.client_ip, client_host=env.client_host)
    return authenticator.gss_choose(answer, ex.normalise, env.client_ip,
                                    client_host=env.client_host)


MECHANISMS: dict[str, Callable[[Exchange, bytes | None], Mechanism]] = {
    "GSSAPI": mech_gssapi,
    "PLAIN": mech_plain,
    "LOGIN": mech_login,
    "CRAM-MD5": mech_cram_md5,
    "SCRAM-SHA-1": _scram("SCRAM-SHA-1"),
    "SCRAM-SHA-256": _scram("SCRAM-SHA-256"),
    "SCRAM-SHA-1-PLUS": _scram("SCRAM-SHA-1-PLUS"),
    "SCRAM-SHA-256-PLUS": _scram("SCRAM-SHA-256-PLUS"),
}
