"""After a verified login the monitor becomes the user session: the pre-login process hands
its protocol state over, the monitor drops to the user (verified) and runs the session
(docs/privsep.md)."""

from __future__ import annotations

import dataclasses
import fcntl
import os
import signal
import socket
import struct
import syslog
import termios
from typing import NoReturn

from qpopper import limits
from qpopper.server import privsep
from qpopper.server import monitor_wire as wire
from qpopper.server.channel import Channel
from qpopper.server.session import Session, spool_group
from qpopper.pop3.responses import PopError
from qpopper.spool.paths import SpoolPaths
from qpopper.server.children import (ProtocolViolation, close_fds, exit_after, exited_within,
                                     reap)

RELAY_LAST_WORDS_S = 5
"""Beyond the relay's own bound on a write to the client (timeout), how long the user
session waits for the TLS relay to end after its last reply."""
RELAY_MAX_WINDOWS = 8
"""How many waits of timeout + RELAY_LAST_WORDS_S, in all, the user session gives its TLS
relay after the session while the relay still takes the session's output (_relay_ended).
At most the socket's send buffer is queued then (~208 KiB by default) and the relay reads
up to 64 KiB at a time: an honest relay needs ~5; more only holds a session slot longer."""


def claimed_tls(tls_mode: str | None, claimed: bool) -> bool:
    """The pre-login process's word that the connection runs inside TLS, checked where the
    monitor knows better: never without TLS, always on an implicit-TLS port (STLS may or
    may not have been used)."""
    if claimed and tls_mode is None:
        raise ProtocolViolation("TLS claimed on a connection without TLS")
    if not claimed and tls_mode == "implicit":
        raise ProtocolViolation("no TLS claimed on a TLS port")
    return claimed


@dataclasses.dataclass(frozen=True)
class HandoverFields:
    leftover: bytes              # what the client sent after the login command
    tls_active: bool
    bad_commands: int
    no_mime: bool                # the name carried -no-mime (USER's rules)


def handover_fields(frame: wire.Frame, tls_mode: str | None) -> HandoverFields:
    """The HANDOVER frame read and checked: the one parser of it, run where it arrives (the
    authentication process: a bad frame is the pre-login process's protocol violation) and
    again by the monitor, which trusts no other process's check. The client's host name
    (field 2) is the monitor's to judge (_host). ProtocolViolation or wire.FrameError for a
    frame that is not right."""
    bad_text = frame.text(3)
    if not (bad_text.isascii() and bad_text.isdigit()) \
            or int(bad_text) > limits.MAX_BAD_COMMANDS:
        raise ProtocolViolation("HANDOVER with a bad command count")
    return HandoverFields(frame.fields[0], claimed_tls(tls_mode, frame.flag(1)), int(bad_text),
                          frame.flag(4))


class BecomingTheSession:
    """Part of Monitor (server/monitor.py): see the module docstring."""

    # --- the login handed over: the user session -----------------------------------------------
    def _handover(self, frame: wire.Frame, relay_end) -> None:
        """The HANDOVER frame the authentication process passed on with the login it
        verified (self.login): checked here, then the session; returns only when there is
        no session after all (the reply was written)."""
        login = self.login
        if login is None:
            raise ProtocolViolation("HANDOVER without a verified login")
        fields = handover_fields(frame, self.tls_mode)
        leftover, tls_active = fields.leftover, fields.tls_active
        if fields.no_mime:
            login = dataclasses.replace(login, no_mime=True)
        client_host = self._host(frame, 2)
        if tls_active and relay_end is None:
            raise ProtocolViolation("HANDOVER inside TLS without TLS")
        try:
            spool_gid = spool_group(self.cfg)
            if self.cfg.check_hash_dir:
                SpoolPaths.for_user(self.cfg, login.user, login.home).ensure_hash_dirs(self.log)
        except PopError as refusal:
            self.log(syslog.LOG_ERR, refusal.log or f"preparing the session of {login.user}: "
                                                    f"{refusal.text}")
            self._answer_login(refusal.render(), tls_active, relay_end)
            return
        if self.on_login is not None:
            self.on_login()
        self._become_user_session(login, spool_gid, leftover, tls_active, client_host,
                                  fields.bad_commands, relay_end)

    def _become_user_session(self, login, spool_gid: int, leftover: bytes,
                             tls_active: bool, client_host: str, bad_commands: int,
                             relay_end) -> NoReturn:
        """After a verified login the monitor's work is done: rather than fork once more, it
        becomes the user session itself. It never held a credential (the authentication
        process checked them) nor the TLS key (closed at the first fork). Nothing privileged
        stays open: the master's notice pipe is closed (the pre-login channel and the
        authentication cache's socket were, when the authentication process was forked);
        then the verified privilege drop (privsep.drop_privileges). Without TLS the pre-login
        process, which flushed its last reply before HANDOVER, is ended first, so no other
        process holds the client's socket; with TLS it goes on relaying, as this process's
        child."""
        close_fds(self._privileged_fds())
        if not tls_active:
            self._end_prelogin()
            reap(self.prelogin_pid)
            self.records.finish()
            if relay_end is not None:
                relay_end.close()
            relay_end = None
        exit_after(self.log, f"session of {login.user}",
                   lambda: self._run_user_session(login, spool_gid, leftover, tls_active,
                                                  client_host, bad_commands, relay_end))

    def _answer_login(self, reply: bytes, tls_active: bool, relay_end) -> None:
        """No session after all: the reply to the login command, written by the monitor (a
        fixed text, nothing read) — through the pre-login process's TLS relay if need be."""
        try:
            if tls_active:
                relay_end.sendall(reply)
                relay_end.shutdown(socket.SHUT_WR)
            else:
                os.write(self.client.out_fd, reply)
        except OSError:
            pass

    def _run_user_session(self, login, spool_gid: int, leftover: bytes, tls_active: bool,
                          client_host: str, bad_commands: int, relay_end) -> int:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        if relay_end is not None:
            self.client.close()
            channel = Channel(relay_end.fileno(), relay_end.fileno(), relay_end)
        else:
            client = self.client
            channel = Channel(client.in_fd, client.out_fd, client.sock)
        # made before the drop: it notes who may own the spool options file (root)
        session = Session(self.cfg, channel, log=self.log, hostname=self.hostname,
                          peer=self.peer, client_host=client_host,
                          tls_active=tls_active, login_done=True, own_process=True)
        privsep.drop_privileges(login, spool_gid, self.log)   # verified, or _exit
        # the session shuts its channel down and closes it (the relay's end of input); this
        # end stays to see how much of the session's output the relay has still to take
        watch = relay_end.dup() if relay_end is not None else None
        status = session.run(resume=(login, leftover, bad_commands))
        if watch is not None:
            # the relay sends the last replies, then ends; one that does not is ended by its
            # parent-death signal when this process exits
            if self._relay_ended(watch):
                reap(self.prelogin_pid)
                self.records.finish()
            else:
                self.log(syslog.LOG_NOTICE, f"the TLS relay of {login.user} did not end")
            watch.close()
        return status

    def _relay_ended(self, watch: socket.socket) -> bool:
        """Whether the TLS relay ended, given waits of `timeout` + RELAY_LAST_WORDS_S (at
        most RELAY_MAX_WINDOWS) as long as it took some of the session's output during the
        last one: a client that reads its last replies slowly, but reads, still gets them,
        as the kernel goes on sending a plain-text session's after it exited
        (docs/privsep.md, "The TLS relay")."""
        window = self.cfg.timeout + RELAY_LAST_WORDS_S
        left = _unread(watch)
        for _ in range(RELAY_MAX_WINDOWS):
            if exited_within(self.prelogin_pid, window, self.records):
                return True
            still = _unread(watch)
            if still >= left:
                return False                 # nothing taken in a whole window
            left = still
        return False


def _unread(sock: socket.socket) -> int:
    """Octets this end sent that its peer has not read yet (SIOCOUTQ); 0 when unknown."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
    except OSError:
        return 0
