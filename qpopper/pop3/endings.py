"""How a conversation ends other than by QUIT: the client's EOF, a signal, the idle and login
timeouts, displacement by the connection limits, and the abort that follows them (Qpopper's
update-on-abort: docs/compatibility.md, "QUIT, timeouts and update-on-abort")."""

from __future__ import annotations

import syslog

from qpopper.pop3.responses import TOO_MANY_CONNECTIONS, PopError, RespCode, err
from qpopper.pop3.state import State


class Endings:
    """Part of Protocol (pop3/protocol.py), kept apart so the state machine reads on its
    own: these methods use its state, cfg, env, trans, monotonic, authorization_deadline,
    reply, _update, _close and _who."""

    client_went = False
    """Set once a write found the client gone (ended_by_a_gone_client): the session's end
    is an error (the Timing line)."""

    def eof(self) -> None:
        """The client went away without QUIT (no reply: nobody is listening)."""
        if self.closed:
            return
        if self.state == State.TRANSACTION:
            self.env.log(syslog.LOG_NOTICE, f"EOF from {self._who()} without QUIT")
        self._abort()

    def ended_by_a_gone_client(self, *, flush: bool = False) -> bool:
        """Whether a write (with `flush`, of what is collected now) found the client gone
        (env.client_gone: it reset the connection), and then the end, as at an EOF: nothing
        more it sent is acted on, not a DELE, not a QUIT's update after replies it never saw
        (update-on-abort decides)."""
        if flush:
            self.env.flush()
        if not self.env.client_gone:
            return False
        self.client_went = True
        if self.state == State.TRANSACTION:
            self.env.log(syslog.LOG_NOTICE, f"{self._who()} gone during a reply; what it sent "
                                            f"after is not acted on")
        self._abort()
        return True

    def ended_by_signal(self, reason: str) -> None:
        """A signal ends the session (the master's TERM after shutdown-grace, a SIGHUP):
        logged as that, not as the client's EOF; no reply (Qpopper's catchSIGHUP)."""
        if self.closed:
            return
        self.env.log(syslog.LOG_NOTICE, f"Session of {self._who()} ended without QUIT in "
                                        f"{self.state.value}: {reason}")
        self._abort()

    def displaced(self) -> None:
        """The server ended this connection, which had not logged in, to make room for
        another (its connection limits were reached): say why, then close."""
        if self.state == State.AUTHORIZATION:
            self.reply(err(TOO_MANY_CONNECTIONS, RespCode.SYS_TEMP))
        self._close()

    def read_timeout(self, idle_timeout: float) -> float:
        """How long the session may wait for the client's next bytes: `idle_timeout` (the
        `timeout` option), but in AUTHORIZATION never past the state's deadline
        (`login-timeout` seconds after the connection began): a client sending a byte
        just inside each timeout must not hold a root process forever. 0 means the time is
        up; the session then calls timeout() as for an idle client."""
        if self.state != State.AUTHORIZATION:
            return idle_timeout
        return max(0.0, min(idle_timeout, self.authorization_deadline - self.monotonic()))

    def login_deadline_passed(self) -> bool:
        """Whether the login deadline (login-timeout), not the idle timeout, ended the wait:
        in AUTHORIZATION, once the deadline is reached."""
        return (self.state == State.AUTHORIZATION
                and self.monotonic() >= self.authorization_deadline)

    def timeout(self) -> None:
        """The client sent nothing for cfg.timeout seconds.

        RFC 1939 §3: an autologout sends no response, so nothing is written. Qpopper logs the
        timeout (the session does: log.timeout_line) and aborts; with update-on-abort, its
        default, the abort commits deletions.
        """
        if self.closed:
            return
        if self.login_deadline_passed():
            self.env.log(syslog.LOG_NOTICE, f"{self._who()} did not log in within "
                                            f"login-timeout {self.cfg.login_timeout} s; closing")
        self._abort()

    def _abort(self) -> None:
        """End without QUIT (EOF, timeout, bad-command budget, fatal refusal).

        In TRANSACTION, Qpopper's update-on-abort (its default, against RFC 1939 §6) commits
        as QUIT would; otherwise the maildrop is restored untouched.
        """
        if self.state == State.TRANSACTION and self.trans is not None:
            try:
                if self.cfg.update_on_abort:
                    self._update(quit=False)
                else:
                    self.trans.maildrop.restore()
            except PopError as refusal:
                # Nobody reads a reply now: the log is the only place this can be told.
                self.env.log(syslog.LOG_ERR, f"ending the session of {self._who()}: "
                                             f"{refusal.log or refusal.text}")
        self._close()
