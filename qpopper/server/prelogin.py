"""The pre-login process: the connection until its user has logged in, unprivileged.

Forked by the monitor (monitor.py) for each connection. Before it reads a single client
byte it locks itself in (privsep.enter_prelogin_sandbox): the prelogin-user account with no
supplementary groups, no capabilities (the bounding set emptied too), NoNewPrivs, not dumpable, bounded
RLIMIT_NOFILE / RLIMIT_AS / RLIMIT_CORE and, when started as root, chrooted into the empty
prelogin-chroot directory. Then it runs an ordinary Session whose authenticator is
`MonitorAuthenticator` (every credential goes to the monitor as a frame) and whose
open_maildrop hands the connection over (`Handover`): the monitor becomes the user session.
Without TLS this process then exits; with TLS it stays the TLS end and relays plaintext to
the user session over a socket pair (`relay`), so no process of a mail user ever holds the
TLS private key. docs/privsep.md describes the whole model.
"""

from __future__ import annotations

import select
import socket
import time

from qpopper import proxy_protocol
from qpopper.server import monitor_wire as wire
from qpopper.auth import Login
from qpopper.pop3.responses import PopError, RespCode

MONITOR_GONE = "Unable to check your credentials now; try again later"


# --- the authenticator: a client of the monitor -----------------------------------------------
class Handover(Exception):
    """The monitor has the login: this process's part of the session is over. Raised from
    Session.open_maildrop through the protocol (it is not a PopError)."""


class MonitorAuthenticator:
    """The protocol's authenticator contract (docs/internals.md, "Auth"), each call a frame
    to the monitor and its answer. Secrets, verifiers, PAM and the brakes stay there."""

    def __init__(self, sock: socket.socket, *, apop_enabled: bool,
                 banner_timestamp: str | None):
        self.sock = sock
        self.apop_enabled = apop_enabled
        self.banner_timestamp = banner_timestamp   # made by the monitor: it checks APOP with it

    # -- the requests --------------------------------------------------------------------
    def _ask(self, kind: wire.Kind, *fields) -> wire.Frame:
        try:
            wire.send(self.sock, kind, *fields)
            answer = wire.receive(self.sock, (wire.Kind.LOGIN, wire.Kind.REFUSED,
                                              wire.Kind.DATA))
        except (OSError, wire.FrameError) as exc:
            raise PopError(MONITOR_GONE, RespCode.SYS_TEMP, close=True,
                           log=f"the monitor did not answer: {exc}") from None
        if answer is None:
            raise PopError(MONITOR_GONE, RespCode.SYS_TEMP, close=True,
                           log="the monitor closed the connection")
        if answer.kind is wire.Kind.REFUSED:
            code = answer.text(1)
            raise PopError(answer.text(0), RespCode(code) if code else None,
                           close=answer.flag(2))
        return answer

    def _login(self, kind: wire.Kind, *fields) -> Login:
        return self._as_login(kind, self._ask(kind, *fields))

    @staticmethod
    def _as_login(kind: wire.Kind, answer: wire.Frame) -> Login:
        if answer.kind is not wire.Kind.LOGIN:
            raise PopError(MONITOR_GONE, RespCode.SYS_TEMP, close=True,
                           log=f"the monitor answered {kind.name} with {answer.kind.name}")
        return Login(user=answer.text(0), uid=-1, gid=-1, home=None,
                     mechanism=answer.text(1), no_mime=answer.flag(2))

    def _data(self, kind: wire.Kind, *fields) -> tuple[bytes, bool]:
        answer = self._ask(kind, *fields)
        if answer.kind is not wire.Kind.DATA:
            raise PopError(MONITOR_GONE, RespCode.SYS_TEMP, close=True,
                           log=f"the monitor answered {kind.name} with {answer.kind.name}")
        return answer.fields[0], answer.flag(1)

    # -- the contract --------------------------------------------------------------------
    def refuse_user_name(self, user, text, client_ip, *, client_host=None, mechanism="USER"):
        self._ask(wire.Kind.REFUSE_NAME, user, text, mechanism, client_host or "")
        raise PopError(text, RespCode.AUTH)      # the monitor always refuses

    def check_password(self, user, password, client_ip, *, client_host=None,
                       tls_active=False, mechanism="USER", authid=None) -> Login:
        return self._login(wire.Kind.PASSWORD, user, password, mechanism, authid or "",
                           bool(tls_active), client_host or "")

    def check_apop(self, user, timestamp, digest, client_ip, *, client_host=None) -> Login:
        return self._login(wire.Kind.APOP, user, digest, client_host or "")

    def cram_challenge(self, hostname: str) -> bytes:
        return self._data(wire.Kind.CRAM_CHALLENGE)[0]

    def check_cram_md5(self, user, challenge, digest, client_ip, *, client_host=None):
        return self._login(wire.Kind.CRAM, user, digest, client_host or "")

    def scram_begin(self, user: str, mechanism: str, client_nonce: str) -> str:
        return self._data(wire.Kind.SCRAM_BEGIN, mechanism, user,
                          client_nonce)[0].decode("ascii")

    def scram_prove(self, client_first_bare, client_final_without_proof, proof, client_ip, *,
                    client_host=None) -> tuple[Login, bytes]:
        answer = self._ask(wire.Kind.SCRAM_PROVE, client_first_bare,
                           client_final_without_proof, proof, client_host or "")
        return self._as_login(wire.Kind.SCRAM_PROVE, answer), answer.fields[3]

    def scram_accepted(self, client_ip, *, client_host=None) -> None:
        self._data(wire.Kind.SCRAM_ACCEPTED)

    def check_scram(self, user, mechanism, proved, client_ip, *, client_host=None):
        # only ever called to refuse (a channel-binding failure): the monitor refuses
        self._ask(wire.Kind.SCRAM_BINDING_FAILED, user, mechanism, client_host or "")
        raise PopError("authentication failure", RespCode.AUTH)

    def gss_step(self, token, client_ip, *, first=False, client_host=None):
        return self._data(wire.Kind.GSS_STEP, token, bool(first), client_host or "")

    def gss_offer(self, client_ip, *, client_host=None) -> bytes:
        return self._data(wire.Kind.GSS_OFFER, client_host or "")[0]

    def gss_choose(self, answer, normalise, client_ip, *, client_host=None):
        login = self._login(wire.Kind.GSS_CHOOSE, answer, client_host or "")
        return login, login.no_mime


# --- before the greeting: the PROXY protocol header --------------------------------------------
class NoHeader(Exception):
    """The peer closed (or reset) before sending a single octet: a TCP health check, not an
    error."""


def read_proxy_header(sock: socket.socket, timeout_s: float) -> proxy_protocol.ProxyHeader:
    """Exactly the header's octets off `sock`, leaving what follows (POP3 or a TLS
    handshake) unread; NoHeader, or ProxyError (malformed, too long, truncated, late).
    Octets are peeked first and only those known to belong to the header are taken."""
    deadline = time.monotonic() + timeout_s
    taken = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([sock], [], [], remaining)[0]:
            raise proxy_protocol.ProxyError(f"no PROXY protocol header within {timeout_s:g} s")
        try:
            peeked = sock.recv(proxy_protocol.MAX_V2_OCTETS, socket.MSG_PEEK)
        except ConnectionResetError:
            # a health checker that aborts (SO_LINGER 0) rather than closes: no header either
            if not taken:
                raise NoHeader() from None
            raise proxy_protocol.ProxyError("connection reset inside the PROXY protocol "
                                            "header") from None
        except OSError as exc:
            raise proxy_protocol.ProxyError(f"reading the PROXY protocol header: "
                                            f"{exc.strerror}") from None
        if not peeked:
            if not taken:
                raise NoHeader()
            raise proxy_protocol.ProxyError("connection closed inside the PROXY protocol header")
        length = proxy_protocol.header_length(taken + peeked)
        # without a known length every octet seen so far is still part of the header
        want = len(peeked) if length is None else min(len(peeked), length - len(taken))
        taken += sock.recv(want, socket.MSG_WAITALL)
        if length is not None and len(taken) == length:
            return proxy_protocol.parse(taken)


# --- after the login: the TLS relay -------------------------------------------------------------
RELAY_CHUNK = 64 * 1024


def relay(tls_channel, plain: socket.socket, timeout_s: float) -> None:
    """Plaintext between the user session (`plain`) and the client's TLS connection, until
    the session closes (docs/privsep.md, "The TLS relay"). The user session applies the POP3
    timeouts; `timeout_s` only bounds a write to a client that stopped reading.

    The relay never waits on the session while the session may be waiting on it: what the
    client sent waits in `to_session` while the session's output is still read, and the
    client is read again only when the session has taken it all. The client's end of input
    reaches the session as its end of input; the session's replies to what came before
    still go to the client unless the client asked for the end of both directions (TLS
    1.2's close_notify): then they are read and dropped. A client that a write finds gone
    ends the relay."""
    plain.setblocking(False)
    session_fd, client_fd = plain.fileno(), tls_channel.in_fd
    poller = select.poll()
    to_session = bytearray()
    client_open, session_told = True, False
    client_readable = True               # the login's last records may hold commands
    while True:
        if client_open and client_readable and not to_session:
            chunks = tls_channel.read_available()
            # a client's pipelined commands come one TLS record each: one send for all of
            # them wakes the session once
            to_session += b"".join(chunks)
            if chunks and not chunks[-1]:
                client_open = False
                if not tls_channel.replies_may_follow_end():
                    tls_channel.close()          # our close_notify at once
        if to_session:
            _send_some(plain, to_session)
        if not client_open and not to_session and not session_told:
            _shut(plain)                         # the session reads to the end, then EOF
            session_told = True
        poller.register(session_fd, select.POLLIN | select.POLLPRI
                        | (select.POLLOUT if to_session else 0))
        if client_open and not to_session:
            poller.register(client_fd, select.POLLIN | select.POLLPRI)
        else:
            try:
                poller.unregister(client_fd)
            except KeyError:
                pass
        client_readable = False
        for fd, event in poller.poll():
            if fd == client_fd:
                client_readable = True
                continue
            if not event & ~select.POLLOUT:
                continue                         # writable only: to_session's turn
            data = _session_output(plain)
            if not data:
                if data is not None:             # the session closed: so does the relay
                    if not tls_channel.closed:
                        tls_channel.close()      # close_notify, then the TCP close
                    return
            elif not tls_channel.closed:
                try:
                    tls_channel.write_all(data, timeout_s)
                except tls_channel.closed_error:
                    # the client is gone (a reply could not be written): what it sent that
                    # the session has not had is dropped, and the relay ends, so the
                    # session's next write fails and it acts on no further command
                    return


def _send_some(plain: socket.socket, to_session: bytearray) -> None:
    """As much of `to_session` as the session's socket takes now, taken off its front. A
    session that is gone takes everything: its end of output follows."""
    try:
        sent = plain.send(to_session)
    except BlockingIOError:
        return
    except OSError:
        sent = len(to_session)
    del to_session[:sent]


def _session_output(plain: socket.socket) -> bytes | None:
    """One read of the session's output: b'' when it closed, None when there is none now."""
    try:
        return plain.recv(RELAY_CHUNK)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
