"""The authentication process: the monitor's second child, root, which answers the pre-login
process's requests (PAM, the pop.auth store, the brakes, GSS-API, DRAC, the authentication
cache, the PROXY header's address) and tells its monitor the outcome.

    monitor (root) ── fork ──► pre-login (prelogin-user, chroot)
        │   │                        │ frames (monitor_wire)
        │   └── fork ──► authentication (root) ◄──┘
        │                    │ OUTCOME (+ HANDOVER after a login), then it exits
        └◄───────────────────┘
    then the monitor becomes the user session

Every credential is checked here and nowhere else: the password the client sent, what PAM
read (shadow entries), the pop.auth store's pages (other users' secrets among them), the
keytab's key. The monitor, which becomes the user session, never held any of them
(docs/privsep.md, "The authentication process"). The monitor waits for the outcome until
the login deadline, then ends both children: a request that is still being answered (a
PAM stack that hangs) cannot keep the connection past it.
"""

from __future__ import annotations

import dataclasses
import os
import select
import signal
import socket
import syslog
import time

import setproctitle

from qpopper.auth import Login, sasl
from qpopper.pop3.auth_state import sasl_normaliser
from qpopper.pop3.responses import PopError
from qpopper.server import monitor_wire as wire
from qpopper.server import privsep
from qpopper.server.children import (ProtocolViolation, close_fds, close_sockets, exit_after,
                                     exited_within, kill_quietly, reap, reap_code)
from qpopper.server.monitor_handover import claimed_tls, handover_fields

PASSWORD_MECHANISMS = frozenset({"USER", "AUTH PLAIN", "AUTH LOGIN"})
SCRAM_MECHANISMS = frozenset({"SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-1-PLUS",
                              "SCRAM-SHA-256-PLUS"})
REFUSAL_MECHANISMS = frozenset({"USER", "APOP"} | {f"AUTH {name}" for name in sasl.MECHANISMS})
"""What REFUSE_NAME may name: the text goes into the failure's log line (fail2ban reads it)."""
MAX_REQUESTS = 64
"""Frames one pre-login process may send: a login needs at most a handful (GSSAPI's context
tokens are the most); more is a loop, and the connection ends."""
MAX_HOST_CHARS = 255
AUTHENTICATION_LAST_WORDS_S = 5
"""How long past the login deadline the monitor waits for the authentication process's
outcome, and then for its exit, before it ends it."""


class AuthenticationProcess:
    """Part of Monitor (server/monitor.py): see the module docstring."""

    # --- in the monitor ----------------------------------------------------------------------
    def _authenticate(self, requests: socket.socket, relay_end) -> wire.Frame | None:
        """Fork the authentication process on the pre-login process's channel `requests`
        (closed here) and wait for its outcome: the HANDOVER frame of a verified login
        (self.login set), or None. What only the authentication process needs is closed
        here: the authentication cache's socket, the authenticator."""
        ours, theirs = wire.channel_pair()
        monitor = os.getpid()
        try:
            pid = os.fork()
        except OSError as exc:
            self.log(syslog.LOG_ERR, f"cannot serve {self.client_ip}: {exc}")
            close_sockets(ours, theirs, requests)
            self._end_prelogin()
            return None
        if pid == 0:
            ours.close()
            exit_after(self.log, f"authentication for {self.client_ip}",
                       lambda: self._run_authentication(monitor, requests, theirs, relay_end))
        close_sockets(theirs, requests)
        if self.password_cache is not None:
            close_fds({self.password_cache.fd})
            self.password_cache = None
        self.authenticator.close()
        self.authenticator = None
        try:
            return self._await_outcome(ours, pid)
        finally:
            ours.close()

    def _await_outcome(self, sock: socket.socket, pid: int) -> wire.Frame | None:
        """The outcome, until the login deadline and AUTHENTICATION_LAST_WORDS_S more; the
        process is reaped. Past that deadline, or after an outcome that cannot be read, the
        pre-login process and the authentication process (and what it forked: a PAM
        helper) are ended at once. A process that ended without an outcome (it crashed) is
        logged; the pre-login process, which has seen its end of the requests, answers its
        client and ends, as after any dialogue (_wait_prelogin)."""
        left = self.deadline + AUTHENTICATION_LAST_WORDS_S - time.monotonic()
        if not select.select([sock], [], [], max(0.0, left))[0]:
            self.log(syslog.LOG_NOTICE, f"authentication for {self.client_ip} did not end "
                                        f"by the login deadline; ending the connection")
            return self._end_both(pid)
        handover = None
        try:
            outcome = wire.receive(sock, {wire.Kind.OUTCOME})
            if outcome is not None:
                self._take_outcome(outcome)
                if self.login is not None:
                    if select.select([sock], [], [], AUTHENTICATION_LAST_WORDS_S)[0]:
                        handover = wire.receive(sock, {wire.Kind.HANDOVER})
                    if handover is None:
                        raise wire.FrameError("no HANDOVER after the login")
        except (OSError, ValueError, wire.FrameError) as exc:
            self.log(syslog.LOG_ERR, f"authentication for {self.client_ip}: bad outcome "
                                     f"({exc})")
            self.login = None
            return self._end_both(pid)
        if not exited_within(pid, AUTHENTICATION_LAST_WORDS_S):
            _kill_with_children(pid)
        code = reap_code(pid)
        if outcome is None:
            self.log(syslog.LOG_ERR, f"authentication for {self.client_ip} ended without an "
                                     f"outcome ({_how_it_ended(code)})")
        return handover

    def _end_both(self, pid: int) -> None:
        """The authentication process (with its tree) and the pre-login process ended,
        the first reaped: no outcome."""
        _kill_with_children(pid)
        self._end_prelogin()
        reap(pid)

    def _take_outcome(self, outcome: wire.Frame) -> None:
        """The client's address (a PROXY header's, on a proxy-protocol connection) and the
        login (an empty user name: none). ValueError for numbers that are not."""
        if self.proxy is not None and outcome.text(0) != self.client_ip:
            self.client_ip = outcome.text(0)
            self.peer = (self.client_ip, int(outcome.text(1) or 0))
            setproctitle.setproctitle(f"popper: {self.client_ip} monitor")
        if outcome.text(2):
            self.login = Login(outcome.text(2), int(outcome.text(3)), int(outcome.text(4)),
                               outcome.text(6) if outcome.flag(5) else None, outcome.text(7),
                               outcome.flag(8))

    # --- in the authentication process -------------------------------------------------------
    def _run_authentication(self, monitor: int, requests: socket.socket,
                            outcome: socket.socket, relay_end) -> int:
        """Serve the requests, then report the outcome: the client's address (a PROXY
        header's may have replaced it) and the verified login, followed by the HANDOVER
        frame as received; an empty user name when there was no login."""
        privsep.prctl(privsep.PR_SET_PDEATHSIG, signal.SIGKILL)   # the monitor gone: so are we
        if os.getppid() != monitor:
            return 1                       # it went before the signal was asked for
        # what a PAM helper leaves behind (setsid, its parent gone) stays our child, so the
        # monitor's deadline kill finds it (_kill_with_children)
        try:
            privsep.prctl(privsep.PR_SET_CHILD_SUBREAPER, 1)
        except OSError as exc:
            self.log(syslog.LOG_WARNING, f"authentication for {self.client_ip}: no child "
                                         f"subreaper ({exc}); a PAM helper's daemon could "
                                         f"outlive the login deadline")
        setproctitle.setproctitle(f"popper: {self.client_ip} authentication")
        if relay_end is not None:
            relay_end.close()
        if self.proxy is None and self.notice_fd is not None:
            close_fds({self.notice_fd})    # the notice pipe: only for a PROXY header's address
        self.client.leave()                # it never talks to the client
        try:
            handover = self._serve(requests)
        finally:
            self.authenticator.close()
        login = self.login if handover is not None else None
        port = str(self.peer[1]) if self.peer else ""
        said = (login.user, str(login.uid), str(login.gid), login.home is not None,
                login.home or "", login.mechanism, login.no_mime) if login is not None \
            else ("", "", "", False, "", "", False)
        wire.send(outcome, wire.Kind.OUTCOME, self.client_ip, port, *said)
        if login is not None:
            outcome.sendall(wire.encode(wire.Kind.HANDOVER, *handover.fields))
        return 0

    def _serve(self, sock: socket.socket) -> wire.Frame | None:
        """Answer the pre-login process's requests until the dialogue ends: the HANDOVER
        frame that follows a verified login, or None (the process ended or was ended: it
        broke the protocol, or the deadline passed)."""
        while True:
            remaining = self.deadline - time.monotonic()
            ready = select.select([sock, self.records], [], [], remaining)[0] \
                if remaining > 0 else []
            if not ready:
                self.log(syslog.LOG_NOTICE, f"{self.client_ip}: no login within the "
                                            f"deadline; ending the connection")
                self._end_prelogin()
                return None
            if self.records in ready:
                self.records.forward()        # logged before the request that followed them
                if sock not in ready:
                    continue
            try:
                frame = wire.receive(sock, wire.REQUESTS)
                if frame is None:
                    return None                       # the pre-login process ended
                self.requests += 1
                if self.requests > MAX_REQUESTS:
                    raise ProtocolViolation(f"more than {MAX_REQUESTS} requests")
                if self.proxy is not None and not self.proxied \
                        and frame.kind is not wire.Kind.PROXIED:
                    raise ProtocolViolation(f"{frame.kind.name} before the PROXY header")
                if frame.kind is wire.Kind.HANDOVER:
                    if self.login is None:
                        raise ProtocolViolation("HANDOVER without a verified login")
                    handover_fields(frame, self.tls_mode)
                    return frame
                reply = self._answer(frame)
            except (wire.FrameError, ProtocolViolation) as exc:
                self._broke_protocol(exc)
                return None
            except OSError:
                self._end_prelogin()
                return None
            try:
                sock.sendall(reply)
            except OSError:
                return None
            if self._closing:
                return None

    def _broke_protocol(self, exc: Exception) -> None:
        self.log(syslog.LOG_WARNING, f"pre-login for {self.client_ip} broke the monitor "
                                     f"protocol ({exc}); ending it")
        self._end_prelogin()

    def _end_prelogin(self) -> None:
        kill_quietly(self.prelogin_pid)

    def _answer(self, frame: wire.Frame) -> bytes:
        try:
            return self._dispatch(frame)
        except PopError as refusal:
            if refusal.log:
                self.log(syslog.LOG_NOTICE, refusal.log)
            self._closing = bool(refusal.close)
            code = refusal.code.value if refusal.code else ""
            return wire.encode(wire.Kind.REFUSED, refusal.text[:wire.SECRET], code,
                               bool(refusal.close))
        except (UnicodeError, ValueError, TypeError, LookupError) as exc:
            raise ProtocolViolation(f"{frame.kind.name}: {type(exc).__name__}") from None

    def _dispatch(self, frame: wire.Frame) -> bytes:
        auth = self.authenticator
        kind = frame.kind
        ip = self.client_ip
        if self.login is not None:
            # A verified login is followed by HANDOVER (taken in _serve) and nothing else: no
            # second attempt may open the brakes file or PAM again once a login is handed
            # over (docs/privsep.md, "The monitor's requests").
            raise ProtocolViolation(f"{kind.name} after a verified login")
        if kind is wire.Kind.PROXIED:
            return self._proxied(frame)
        if kind is wire.Kind.PASSWORD:
            mechanism = frame.text(2)
            if mechanism not in PASSWORD_MECHANISMS:
                raise ProtocolViolation(f"PASSWORD for mechanism {mechanism!r}")
            login = auth.check_password(frame.text(0), frame.text(1), ip,
                                        client_host=self._host(frame, 5),
                                        tls_active=claimed_tls(self.tls_mode, frame.flag(4)),
                                        mechanism=mechanism,
                                        authid=frame.text(3) or None)
            return self._logged_in(login)
        if kind is wire.Kind.APOP:
            if self.apop_timestamp is None:
                raise ProtocolViolation("APOP without a banner timestamp")
            return self._logged_in(auth.check_apop(frame.text(0), self.apop_timestamp,
                                                   frame.text(1), ip,
                                                   client_host=self._host(frame, 2)))
        if kind is wire.Kind.CRAM_CHALLENGE:
            self.cram = auth.cram_challenge(self.hostname)
            return wire.encode(wire.Kind.DATA, self.cram, False)
        if kind is wire.Kind.CRAM:
            challenge, self.cram = self.cram, None
            if challenge is None:
                raise ProtocolViolation("CRAM without a challenge")
            return self._logged_in(auth.check_cram_md5(frame.text(0), challenge,
                                                       frame.text(1), ip,
                                                       client_host=self._host(frame, 2)))
        if kind is wire.Kind.SCRAM_BEGIN:
            mechanism = frame.text(0)
            if mechanism not in SCRAM_MECHANISMS:
                raise ProtocolViolation(f"SCRAM_BEGIN for {mechanism!r}")
            if mechanism.endswith("-PLUS"):
                claimed_tls(self.tls_mode, True)  # channel binding binds to a TLS channel
            server_first = auth.scram_begin(frame.text(1), mechanism, frame.text(2))
            return wire.encode(wire.Kind.DATA, server_first, False)
        if kind is wire.Kind.SCRAM_PROVE:
            login, signature = auth.scram_prove(frame.text(0), frame.text(1), frame.fields[2],
                                                ip, client_host=self._host(frame, 3))
            # not self.login yet: only SCRAM_ACCEPTED makes it one
            return wire.encode(wire.Kind.LOGIN, login.user, login.mechanism, login.no_mime,
                               signature)
        if kind is wire.Kind.SCRAM_ACCEPTED:
            login = auth.scram_accepted(ip)
            if login is None:
                raise ProtocolViolation("SCRAM_ACCEPTED without a proof")
            self.login = login
            return wire.encode(wire.Kind.DATA, b"", True)
        if kind is wire.Kind.SCRAM_BINDING_FAILED:
            if frame.text(1) not in SCRAM_MECHANISMS:
                raise ProtocolViolation(f"SCRAM_BINDING_FAILED for {frame.text(1)!r}")
            auth.check_scram(frame.text(0), frame.text(1), False, ip,
                             client_host=self._host(frame, 2))
            raise ProtocolViolation("a refusal did not refuse")
        if kind is wire.Kind.REFUSE_NAME:
            if frame.text(2) not in REFUSAL_MECHANISMS:
                raise ProtocolViolation(f"REFUSE_NAME for {frame.text(2)!r}")
            auth.refuse_user_name(frame.text(0), frame.text(1), ip,
                                  client_host=self._host(frame, 3), mechanism=frame.text(2))
            raise ProtocolViolation("a refusal did not refuse")
        if kind is wire.Kind.GSS_STEP:
            out, complete = auth.gss_step(frame.fields[0], ip, first=frame.flag(1),
                                          client_host=self._host(frame, 2))
            return wire.encode(wire.Kind.DATA, out, complete)
        if kind is wire.Kind.GSS_OFFER:
            return wire.encode(wire.Kind.DATA, auth.gss_offer(ip, client_host=self._host(frame, 0)),
                               False)
        if kind is wire.Kind.GSS_CHOOSE:
            login, no_mime = auth.gss_choose(frame.fields[0], sasl_normaliser(self.cfg), ip,
                                             client_host=self._host(frame, 1))
            return self._logged_in(dataclasses.replace(login, no_mime=no_mime))
        raise ProtocolViolation(f"unexpected {kind.name}")

    def _logged_in(self, login) -> bytes:
        self.login = login
        return wire.encode(wire.Kind.LOGIN, login.user, login.mechanism, login.no_mime, b"")

    def _host(self, frame: wire.Frame, index: int) -> str:
        """The client's name as the pre-login process looked it up: only a plausible host
        name is believed (it goes into log lines); anything else is the address."""
        text = frame.text(index)
        if (0 < len(text) <= MAX_HOST_CHARS and text.isascii()
                and all(ch.isalnum() or ch in ".-_:" for ch in text)):
            return text
        return self.client_ip


def _kill_with_children(pid: int) -> None:
    """SIGKILL the authentication process and its process tree (a PAM module's helper and
    what that runs: nothing signals them when their parent dies). Each process is stopped,
    and seen stopped, before its children are read, so none reaps one meanwhile: their pids
    stay theirs. The authentication process is a subreaper: one that left its parent
    (setsid, its parent gone) is its child, and a walk that found a new process walks again,
    for one orphaned while the last walk went on. All are stopped before any is killed."""
    victims: dict[int, None] = {}          # stopped, in the order found
    for _ in range(MAX_WALKS):
        known = len(victims)
        todo = [pid]
        while todo and len(victims) < MAX_TREE:
            victim = todo.pop()
            if victim in victims or _stopped(victim):
                victims[victim] = None
                todo += _children_of(victim)
        if len(victims) == known:
            break
    for victim in reversed(victims):
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _how_it_ended(code: int | None) -> str:
    """children.reap_code's answer, for the log."""
    if code is None:
        return "reaped already"
    return f"killed by signal {-code}" if code < 0 else f"exit status {code}"


MAX_WALKS = 4
MAX_TREE = 64
STOP_WAIT_S = 0.5


def _stopped(pid: int) -> bool:
    """SIGSTOP `pid` and wait (STOP_WAIT_S at most) until the kernel shows it stopped or
    dead; False when there is no such process."""
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + STOP_WAIT_S
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("T", "t", "Z", "X"):
                    break
        except (OSError, IndexError):
            break
        time.sleep(0.001)
    return True


def _children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(word) for word in f.read().split()]
    except (OSError, ValueError):
        return []
