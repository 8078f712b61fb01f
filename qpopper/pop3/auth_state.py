"""AUTHORIZATION state (RFC 1939 §4): USER, PASS, APOP, CAPA, QUIT, and the AUTH / STLS entries
that the SASL and TLS features take over.

Qpopper's sub-states are kept: after USER the session expects PASS (auth2); a failed PASS goes
back to expecting USER (auth1). User names are normalised here, as Qpopper's pop_user does:
downcase-user, trim-domain, the `-no-mime` suffix. Names that could never be an account
(auth.is_possible_user_name: empty, too long, `/`, `..`, a leading `.` or `-`, control
characters, ...) are refused with the wrong-password reply after the
same delay, so a refused name tells the client nothing the wrong password would not.

Commands that try no credential cannot loop for free until the login deadline: a repeated
CAPA, bare AUTH listing or refused USER, USER again without PASS, AUTH with a mechanism not
offered, and STLS when it is off or TLS is already on each count as a bad command (limits.
MAX_BAD_COMMANDS). The first CAPA and listing are free, and free again after STLS, since
RFC 2595 §4 makes the client ask anew.

When this connection refuses clear text for everyone (clear-text-password never, or tls
before TLS), USER itself is refused with `-ERR [AUTH]` (RFC 2595 §2.3), so an old client
never sends the password; CAPA then lists neither USER nor PLAIN and LOGIN (capa.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from qpopper.auth import is_possible_user_name, sasl
from qpopper.pop3.capa import cmd_capa
from qpopper.pop3.command import BadCommand, Command, command_table
from qpopper.pop3.responses import PopError, RespCode, ok

if TYPE_CHECKING:  # pragma: no cover
    from qpopper.pop3.protocol import Protocol

NO_MIME_SUFFIX = "-no-mime"

# The two login-failure replies. The authenticator (auth/policy.py BAD_PASSWORD, BAD_DIGEST)
# answers unknown users and wrong credentials with exactly these; a test holds them equal.
BAD_PASSWORD = 'Password supplied for "{user}" is incorrect.'
BAD_DIGEST = "authentication failure"

PASSWORD_REQUIRED = "Password required for {user}."
USER_FIRST = "No user name given: send USER before PASS."
COMMAND_NOT_ENABLED = "Command not enabled"      # Qpopper's reply for a feature switched off
TLS_ALREADY_ACTIVE = "TLS in progress"
BEGIN_TLS = "STLS"                                # `+OK STLS`, then the handshake


@dataclass(frozen=True)
class PendingUser:
    """What USER said, after normalisation."""

    name: str        # what the authenticator sees
    no_mime: bool    # the name carried the -no-mime suffix
    valid: bool      # could be an account at all

    @property
    def shown(self) -> str:
        """The name as replies and logs may show it."""
        return printable(self.name)


def printable(text: str) -> str:
    """Control characters and undecodable bytes as `?`: client text echoed in replies."""
    return "".join(ch if ch.isprintable() and not 0xDC80 <= ord(ch) <= 0xDCFF else "?"
                   for ch in text)


def normalise_user(raw: str, cfg) -> PendingUser:
    """Qpopper's pop_user rules, in this order: downcase-user (-c), trim-domain (-C: drop
    `@domain`), then a trailing `-no-mime` (docs/compatibility.md, "Logins and their failures")."""
    name = raw
    if cfg.downcase_user:
        name = name.lower()
    if cfg.trim_domain:
        name = name.split("@", 1)[0]
    no_mime = name.endswith(NO_MIME_SUFFIX) and len(name) > len(NO_MIME_SUFFIX)
    if no_mime:
        name = name[:-len(NO_MIME_SUFFIX)]
    return PendingUser(name, no_mime, is_possible_user_name(name))


def sasl_normaliser(cfg) -> "sasl.Normaliser":
    """normalise_user as SASL and the monitor use it: raw name -> (name, no_mime, valid)."""
    def normalise(raw: str) -> tuple[str, bool, bool]:
        pending = normalise_user(raw, cfg)
        return pending.name, pending.no_mime, pending.valid
    return normalise


def may_answer_probe(proto: "Protocol", probe: str) -> bool:
    """CAPA, the bare AUTH listing and a refused USER tell the client the same thing each
    time: the first is free, each repeat counts as a bad command, so a client cannot loop on
    them until the login deadline. False: the budget is spent (the protocol has answered and
    closed)."""
    if probe in proto.answered_once:
        return proto.charge_bad_command()
    proto.answered_once.add(probe)
    return True


def clear_text_refusal(proto: "Protocol") -> PopError | None:
    """USER's refusal when this connection refuses clear text for everyone
    (sasl.clear_text_refusal): answered at USER, so the client never sends the password. Not
    a failed login (no password was tried): no failure line, no brake."""
    text = sasl.clear_text_refusal(proto.cfg, proto.env)
    if text is None:
        return None
    env = proto.env
    return PopError(text, RespCode.AUTH,
                    log=f"USER from {env.client_host} ({env.client_ip}) refused before the "
                        f"password: clear-text-password {proto.cfg.clear_text_password}")


# --- the verbs -------------------------------------------------------------------------------------
def cmd_user(proto: "Protocol", args: list[str]) -> None:
    refusal = clear_text_refusal(proto)
    if refusal is not None:
        if may_answer_probe(proto, "USER"):
            raise refusal
        return
    if proto.pending_user is not None and not proto.charge_bad_command():
        return          # USER again without PASS: a loop that never tries a password
    pending = normalise_user(args[0], proto.cfg)
    proto.pending_user = pending
    proto.reply(ok(PASSWORD_REQUIRED.format(user=pending.shown)))


def cmd_pass(proto: "Protocol", args: list[str]) -> None:
    pending = proto.pending_user
    if pending is None:
        raise PopError(USER_FIRST)
    proto.pending_user = None          # whatever happens next, the next login starts at USER
    if not pending.valid:
        proto.refuse_user_name(pending.name, PopError(BAD_PASSWORD.format(user=pending.shown),
                                                       RespCode.AUTH), "USER")
    env = proto.env
    login = env.authenticator.check_password(
        pending.name, args[0], env.client_ip,
        client_host=env.client_host, tls_active=env.tls_active)
    proto.login_succeeded(login, no_mime=pending.no_mime)


def cmd_apop(proto: "Protocol", args: list[str]) -> None:
    if proto.apop_timestamp is None:
        raise PopError(COMMAND_NOT_ENABLED)   # no timestamp in the banner: no APOP (RFC 1939 §7)
    proto.pending_user = None
    pending = normalise_user(args[0], proto.cfg)
    if not pending.valid:
        proto.refuse_user_name(pending.name, PopError(BAD_DIGEST, RespCode.AUTH), "APOP")
    env = proto.env
    login = env.authenticator.check_apop(pending.name, proto.apop_timestamp, args[1],
                                         env.client_ip, client_host=env.client_host)
    proto.login_succeeded(login, no_mime=pending.no_mime)


def cmd_auth(proto: "Protocol", args: list[str]) -> None:
    """RFC 5034 AUTH (mechanisms and exchanges: auth/sasl.py). Bare `AUTH` lists the
    mechanisms (RFC 1734 style, as clients probe with it)."""
    offered = sasl.offered_mechanisms(proto.cfg, proto.env)
    if not args:
        if may_answer_probe(proto, "AUTH"):
            proto.reply_lines(ok(sasl.MECHANISMS_FOLLOW),
                              (name.encode("ascii") for name in offered))
        return
    name = args[0].upper()
    if name not in offered:
        if proto.charge_bad_command():          # a mechanism not offered counts as bad
            raise sasl.refusal_for(name, proto.cfg, proto.env)
        return
    proto.pending_user = None
    initial = (sasl.decode_response(args[1].encode("utf-8", "surrogateescape"), initial=True)
               if len(args) > 1 else None)
    sasl.Exchange(proto, name, sasl_normaliser(proto.cfg)).start(initial)


def cmd_stls(proto: "Protocol", args: list[str]) -> None:
    """RFC 2595 §4: STLS, then the TLS handshake; the client must forget what it knew."""
    if proto.env.start_tls is None:
        raise BadCommand(COMMAND_NOT_ENABLED)
    if proto.env.tls_active:
        raise BadCommand(TLS_ALREADY_ACTIVE)
    proto.reply(ok(BEGIN_TLS))
    proto.start_tls()


def cmd_capa_before_login(proto: "Protocol", args: list[str]) -> None:
    if may_answer_probe(proto, "CAPA"):
        cmd_capa(proto, args)


def cmd_quit(proto: "Protocol", args: list[str]) -> None:
    proto.quit_authorization()


AUTHORIZATION_COMMANDS = command_table({
    "USER": Command(cmd_user, 1, 1),
    "PASS": Command(cmd_pass, 1, 1, rest_of_line=True),
    "APOP": Command(cmd_apop, 2, 2),
    "AUTH": Command(cmd_auth, 0, 2),
    "STLS": Command(cmd_stls),
    "CAPA": Command(cmd_capa_before_login),
    "QUIT": Command(cmd_quit),
})
