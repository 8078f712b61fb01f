"""The POP3 state machine (RFC 1939, RFC 2449), Qpopper 4.1 flavoured. Pure logic.

The session (session.py, or a transcript test) creates `Protocol(cfg, env)`, calls
`greeting()`, then `feed(data)` with whatever bytes arrive, `eof()` on end of input,
`timeout()` when the client was idle too long, and stops once `closed` is true. Everything the
protocol needs from the outside comes through `env` (docs/internals.md, "Protocol"): it imports
no socket, no os and no privsep.

This file owns framing and dispatch: the generic rules every line passes (length, NUL, ASCII
verb, argument count, bad-command budget), the per-state command tables, and the session's
life (greeting, login → TRANSACTION, QUIT/abort → UPDATE). The verbs themselves live in
auth_state.py (AUTHORIZATION) and trans_state.py (TRANSACTION); CAPA in capa.py.
"""

from __future__ import annotations

import dataclasses
import syslog
import time
from typing import Callable, Mapping, NoReturn

from qpopper import QPOPPER_VERSION, limits
from qpopper.auth import Login, challenges
from qpopper.pop3 import trace as pop_trace
from qpopper.pop3.auth_state import AUTHORIZATION_COMMANDS, PendingUser, printable
from qpopper.pop3.endings import Endings
from qpopper.pop3.state import State
from qpopper.pop3.command import NO_EXTENSIONS, BadCommand, Command, CommandSyntaxError, Extensions
from qpopper.pop3.lines import TOO_LONG, LineReader
from qpopper.pop3.trans_state import (TRANSACTION_COMMANDS, TRANSACTION_COMMANDS_WITH_MANGLE, SessionStats,
                              Transaction, login_reply)
from qpopper.pop3.responses import CRLF, TERMINATOR, PopError, RespCode, dot_stuff, err, ok

__all__ = ["Protocol", "State", "Command", "Extensions", "CommandSyntaxError", "SessionStats"]


# Replies of the framing layer. Each counts against the bad-command budget.
LINE_TOO_LONG = "Line too long (more than {limit} octets)."
NUL_IN_COMMAND = "NUL byte in command."
EMPTY_COMMAND = "Null command."
INVALID_VERB = "Invalid command: a command is an ASCII keyword."
UNKNOWN_COMMAND = 'Unknown command: "{verb}".'
TOO_FEW_ARGUMENTS = "Too few arguments for the {verb} command."
TOO_MANY_ARGUMENTS = "Too many arguments for the {verb} command."
TOO_MANY_BAD_COMMANDS = "Too many bad commands"
MAILDROP_UNAVAILABLE = "Unable to open your maildrop; contact your administrator"

_REPLY_CHUNK = limits.COPY_CHUNK_OCTETS


@dataclasses.dataclass(frozen=True)
class _Continuation:
    """Where the next client line goes instead of the command table (read_continuation)."""

    callback: Callable[[bytes], None]
    limit: int
    on_too_long: Callable[[], None] | None


class Protocol(Endings):
    """One POP3 conversation. All per-session state lives on this object (and on its
    Transaction once logged in)."""

    def __init__(self, cfg, env, extensions: Extensions | None = None):
        self.cfg = cfg
        self.env = env
        self.extensions = extensions or NO_EXTENSIONS
        self.state = State.AUTHORIZATION
        self.closed = False
        self.bad_commands = 0
        # AUTHORIZATION probes answered once already (CAPA, the bare AUTH listing, a refused
        # USER): a repeat tells the client nothing new and counts as a bad command.
        self.answered_once: set[str] = set()
        self.apop_timestamp: str | None = None
        self._pending_user: PendingUser | None = None   # USER given, PASS expected (auth2)
        self.named_user: str | None = None   # the last name USER gave, kept for the logs
        self.login: Login | None = None
        self.trans: Transaction | None = None
        # Seams for tests: the clock (X-LOCALTIME, APOP timestamp), and the monotonic one that
        # bounds the whole AUTHORIZATION state (the login-timeout option, read_timeout).
        self.now: Callable[[], float] = time.time
        self.monotonic: Callable[[], float] = time.monotonic
        self.authorization_deadline = self.monotonic() + cfg.login_timeout
        self._lines = LineReader()
        self._continuation: _Continuation | None = None
        # -d / -t: the dialogue goes to the log as debug records (pop3/trace.py)
        self.tracing = bool(cfg.debug or cfg.tracefile)
        ext = self.extensions
        transaction = TRANSACTION_COMMANDS_WITH_MANGLE if ext.mangle else TRANSACTION_COMMANDS
        self._tables: dict[State, Mapping[str, Command]] = {
            State.AUTHORIZATION: {**AUTHORIZATION_COMMANDS, **ext.authorization_verbs},
            State.TRANSACTION: {**transaction, **ext.transaction_verbs},
        }

    # --- what the session calls -----------------------------------------------------------
    def greeting(self) -> None:
        """Write the banner (docs/compatibility.md, "Greeting and APOP timestamp")."""
        authenticator = self.env.authenticator
        if authenticator.apop_enabled:
            # An authenticator in another process (the monitor) made the timestamp it will
            # check APOP against; otherwise one is made here.
            self.apop_timestamp = (authenticator.banner_timestamp
                                   or challenges.apop_timestamp(self.env.pid, self.now(),
                                                                self.env.hostname))
        if self.cfg.shy:
            text = "ready"
        else:
            text = f"Qpopper (version {QPOPPER_VERSION}) at {self.env.hostname} starting."
        if self.apop_timestamp:
            text = f"{text}  {self.apop_timestamp}"
        self.reply(ok(text))

    def feed(self, data: bytes) -> None:
        """Handle client bytes: any number of lines, partial lines included, in order."""
        if self.closed:
            return
        self._lines.append(data)
        while not self.closed:
            if self.env.client_gone and self.ended_by_a_gone_client():
                return
            continuation = self._continuation
            limit = continuation.limit if continuation else limits.MAX_COMMAND_OCTETS
            line = self._lines.next_line(limit)
            if line is None:
                return
            self._continuation = None
            if line is TOO_LONG:
                self.env.log(syslog.LOG_NOTICE, f"Excessive input from {self._who()}")
                if continuation is not None and continuation.on_too_long is not None:
                    self._run(lambda _: continuation.on_too_long(), b"")
                else:
                    self._bad_command(CommandSyntaxError(LINE_TOO_LONG.format(limit=limit)))
            elif continuation is not None:
                if self.tracing:
                    self._trace("Received", pop_trace.received_continuation(line))
                self._run(continuation.callback, line)
            else:
                if self.tracing:
                    self._trace("Received", pop_trace.received_command(
                        line, self._tables.get(self.state, {})))
                self._run(self._dispatch, line)

    def resume(self, login: Login, unread: bytes = b"", bad_commands: int = 0) -> None:
        """Start a session whose login another process verified and handed over (the user
        session, docs/privsep.md): no banner; open the maildrop and answer the login command
        as login_succeeded does, then go on with the commands the client had already sent."""
        self.bad_commands = bad_commands
        self.login_succeeded(login, no_mime=login.no_mime)
        if unread:
            self.feed(unread)

    def take_unread(self) -> bytes:
        """The bytes read but not yet handled (commands pipelined after the login)."""
        return self._lines.take()

    def stats(self) -> SessionStats | None:
        """Counters for the session's Stats line; None before login."""
        return self.trans.stats() if self.trans else None

    @property
    def pending_user(self) -> PendingUser | None:
        """USER given, PASS expected (Qpopper's auth2 state)."""
        return self._pending_user

    @pending_user.setter
    def pending_user(self, pending: PendingUser | None) -> None:
        self._pending_user = pending
        if pending is not None:
            self.named_user = pending.shown

    @property
    def user(self) -> str | None:
        """The logged-in user, else the last name USER gave, also after its PASS failed
        (for logs and the process title)."""
        if self.login is not None:
            return self.login.user
        return self.named_user

    # --- what handlers and extensions call -------------------------------------------------
    def reply(self, data: bytes) -> None:
        if self.tracing:
            self._trace("Sent", pop_trace.sent_first_line(data))
        self.env.write(data)

    def reply_lines(self, first: bytes, lines) -> None:
        """A multi-line reply: `first` (rendered), then each line dot-stuffed with CRLF, then
        the terminator; written in bounded chunks however long the listing."""
        if self.tracing:
            self._trace("Sent", pop_trace.sent_first_line(first))
        out = bytearray(first)
        for line in lines:
            out += dot_stuff(line)
            out += CRLF
            if len(out) >= _REPLY_CHUNK:
                self.env.write(bytes(out))
                out.clear()
        out += TERMINATOR
        self.env.write(bytes(out))

    def read_continuation(self, callback: Callable[[bytes], None],
                          limit: int = limits.MAX_AUTH_LINE_OCTETS,
                          on_too_long: Callable[[], None] | None = None) -> None:
        """Send the client's next line (without its line end) to `callback` instead of the
        command table: SASL continuations (RFC 5034), XTND XMIT message lines. One line per
        call; the callback calls again for more. An over-long line cancels the exchange and
        is answered as any over-long line, unless `on_too_long` is given: it is called
        instead (its bytes are already discarded) and decides how the exchange goes on —
        XTND XMIT keeps reading to the message's end, so no line of a message is ever read
        as a command."""
        self._continuation = _Continuation(callback, limit, on_too_long)

    def start_tls(self) -> bool:
        """After the `+OK` of STLS: throw away buffered plaintext (it must not be read as if it
        came through TLS), then let the session do the handshake. True when TLS is active."""
        self._lines.discard()
        self.pending_user = None
        self.answered_once.clear()      # RFC 2595 §4: the client must ask CAPA again
        active = bool(self.env.start_tls())
        if not active:
            # Unlike Qpopper, a failed handshake ends the session: the client's TLS state is
            # unknown, so nothing it sends can be read as plain text again (the session logs
            # the handshake error itself).
            self.closed = True
        return active

    def charge_bad_command(self) -> bool:
        """Count one bad command against the budget (limits.MAX_BAD_COMMANDS). False when that
        was one too many: `-ERR Too many bad commands` is sent and the session aborted, so the
        caller must not answer the command."""
        self.bad_commands += 1
        if self.bad_commands <= limits.MAX_BAD_COMMANDS:
            return True
        self.env.log(syslog.LOG_NOTICE, f"Too many bad commands from {self._who()}")
        self.reply(err(TOO_MANY_BAD_COMMANDS))
        self._abort()
        return False

    def refuse_user_name(self, name: str, refusal: PopError, mechanism: str) -> NoReturn:
        """A user name we never pass on (`/`, `..`, control characters, too long, ...): the
        authenticator refuses it as a failed login — same reply, same delay, and it counts
        towards the connection's failure cap, so a client cannot try bad names forever."""
        env = self.env
        env.authenticator.refuse_user_name(printable(name), refusal.text, env.client_ip,
                                           client_host=env.client_host, mechanism=mechanism)
        raise refusal               # the contract says the authenticator raised already

    def login_succeeded(self, login: Login, *, no_mime: bool = False) -> None:
        """Authentication done (USER/PASS, APOP, or an AUTH mechanism): open the maildrop and
        enter TRANSACTION, or reply the maildrop's refusal and close (Qpopper)."""
        if no_mime and not login.no_mime:
            login = dataclasses.replace(login, no_mime=True)
        self.pending_user = None
        self.login = login
        try:
            maildrop = self._open_maildrop(login)
        except PopError as refusal:
            self._log_refusal(refusal)
            self.reply(refusal.render())
            self._close()
            return
        self.trans = Transaction(maildrop)
        self.state = State.TRANSACTION
        self.reply(login_reply(login.user, self.trans))

    def _open_maildrop(self, login: Login):
        try:
            return self.env.open_maildrop(login)
        except OSError as exc:      # the maildrop maps its own errors; a stray one lands here
            raise PopError(MAILDROP_UNAVAILABLE, RespCode.SYS_TEMP,
                           log=f"opening the maildrop of {login.user}: {exc}") from None

    def quit_authorization(self) -> None:
        self.reply(ok(f"Pop server at {self.env.hostname} signing off."))
        self._close()

    def quit_transaction(self) -> None:
        """QUIT in TRANSACTION: UPDATE, then sign off (RFC 1939 §6); not for a client found
        gone by the replies before it, written first."""
        if self.ended_by_a_gone_client(flush=True):
            return
        try:
            self._update(quit=True)
        except PopError as refusal:
            self._log_refusal(refusal, priority=syslog.LOG_ERR)
            self.reply(refusal.render())
        else:
            self.reply(ok(f"Pop server at {self.env.hostname} signing off."))
        self._close()

    # --- dispatch --------------------------------------------------------------------------
    def _run(self, step: Callable[[bytes], None], line: bytes) -> None:
        try:
            step(line)
        except BadCommand as refusal:
            self._bad_command(refusal)
        except PopError as refusal:
            self._log_refusal(refusal)
            self.reply(refusal.render())
            if refusal.close:
                self._abort()

    def _dispatch(self, line: bytes) -> None:
        if 0 in line:          # a NUL octet (the int test is several times faster than b"\0")
            raise CommandSyntaxError(NUL_IN_COMMAND)
        words = line.split()
        if not words:
            raise CommandSyntaxError(EMPTY_COMMAND)
        verb_bytes = words[0]
        if not (verb_bytes.isascii() and verb_bytes.isalpha()):
            raise CommandSyntaxError(INVALID_VERB)
        verb = verb_bytes.decode("ascii").upper()
        command = self._tables.get(self.state, {}).get(verb)
        if command is None:
            raise CommandSyntaxError(UNKNOWN_COMMAND.format(verb=verb_bytes.decode("ascii")))
        if command.rest_of_line:
            rest = line.lstrip()[len(verb_bytes) + 1:]
            args = [rest.decode("utf-8", "surrogateescape")] if rest else []
        else:
            args = [word.decode("utf-8", "surrogateescape") for word in words[1:]]
        if len(args) < command.min_args:
            raise CommandSyntaxError(TOO_FEW_ARGUMENTS.format(verb=verb))
        if len(args) > command.max_args:
            raise CommandSyntaxError(TOO_MANY_ARGUMENTS.format(verb=verb))
        command.handler(self, args)

    def _bad_command(self, refusal: PopError) -> None:
        if self.charge_bad_command():
            self.reply(refusal.render())

    # --- the session's end (and pop3/endings.py) ----------------------------------------------
    def _update(self, *, quit: bool) -> None:
        self.state = State.UPDATE
        self.trans.update(delete_retrieved=quit and self._deletes_retrieved())

    def _deletes_retrieved(self) -> bool:
        # auto-delete and announce-expire 0 ("deleted once
        # retrieved", the one EXPIRE value Qpopper enforces) delete every RETR'd message, at
        # QUIT only: Qpopper skips it when update-on-abort is on, i.e. an aborted
        # session (a client cut off mid-RETR) never loses messages to it. The option's help
        # text says the same ("applies only when update-on-abort is false or at QUIT").
        return bool(self.cfg.auto_delete) or self.cfg.announce_expire == 0

    def _close(self) -> None:
        self.state = State.CLOSED
        self.closed = True
        self._continuation = None
        self._lines.discard()

    def _log_refusal(self, refusal: PopError, priority: int = syslog.LOG_NOTICE) -> None:
        if refusal.log:
            self.env.log(priority, refusal.log)

    def _trace(self, direction: str, text: str) -> None:
        self.env.log(syslog.LOG_DEBUG, pop_trace.trace_record(self.state.value, direction, text))

    def _who(self) -> str:
        user = self.user
        where = f"{self.env.client_host} ({self.env.client_ip})"
        return f"{user} at {where}" if user else where
