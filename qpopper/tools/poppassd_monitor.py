"""poppassd's root side (docs/privsep.md, "poppassd"): the process inetd or poppassd.socket
starts forks, for each connection, a pre-login process that enters popper's pre-login sandbox
(privsep.enter_prelogin_sandbox: chroot, prelogin-user, no capabilities, rlimits, the
system-call filter) before it reads a client byte, and speaks the whole dialogue
(poppassd.Dialogue). This root process never reads the client's socket: it answers the
pre-login process's two questions over a SEQPACKET socket pair (monitor_wire's frames):

    POPPASSD_CHECK  user, old password  -> POPPASSD_VERDICT right | wrong | later
    POPPASSD_CHANGE new password        -> POPPASSD_VERDICT changed | refused | failed
    POPPASSD_END    why (timeout | deadline | overlong): the dialogue ended so; no answer

and treats that process as hostile: frames are decoded strictly, in the order of the dialogue
(a change only after a right old password, for that user, once, with the old password kept
here, never one sent again), and anything else ends the connection. The brakes, delays, PAM
calls and log lines are this process's, as they were when poppassd was one process. The whole
connection has a deadline here too (the pre-login process may hang): the dialogue's, plus the
time this process spent answering, plus SUPERVISE_MARGIN_S.
"""

from __future__ import annotations

import os
import pwd
import select
import socket
import stat
import syslog
import time

from qpopper import limits
from qpopper.auth import is_possible_user_name
from qpopper.auth import pam as pam_auth
from qpopper.auth.brakes import Brakes
from qpopper.auth.policy_checks import account_line, account_undecided_line
from qpopper.log import ForwardedRecords
from qpopper.server import monitor_wire as wire
from qpopper.server import privsep
from qpopper.server.children import (ProtocolViolation, close_sockets, exit_after,
                                     kill_quietly,
                                     exited_within, log_failure, reap_code,
                                     standard_fds_to_null)

Kind = wire.Kind
RIGHT, WRONG, LATER = "right", "wrong", "later"              # answers to POPPASSD_CHECK
CHANGED, REFUSED, FAILED = "changed", "refused", "failed"    # answers to POPPASSD_CHANGE
ENDINGS = ("timeout", "deadline", "overlong")                # POPPASSD_END's reasons
EXIT_FAILED = 1
SUPERVISE_MARGIN_S = 10.0
"""Past the dialogue's deadline (and the time spent answering it), how long the pre-login
process has to write its last reply and exit before it is killed."""
LAST_WORDS_S = 5.0
"""After its socket closed, how long the pre-login process has to exit."""
MAX_REQUESTS = 64
"""Frames one pre-login process may send: a person's dialogue needs a handful (a check, a few
new passwords the stack refuses, a change). Each answer's time moves the deadline on, so
without this a process that knows one password could keep the root process checking and
changing it for hours; past it the connection ends, as popper's monitor ends it."""


def acceptable(new_password: str, old_password: str | None) -> bool:
    """Not empty, printable (no control characters), valid UTF-8, not the old one."""
    if not new_password or not new_password.isprintable() or new_password == old_password:
        return False
    try:
        new_password.encode("utf-8")
    except UnicodeEncodeError:             # undecodable bytes came in as surrogates
        return False
    return True


class PasswordKeeper:
    """The root side's state for one connection: the user whose old password it verified
    (and that password, kept here), and the requests the pre-login process may send next."""

    def __init__(self, log, *, pam_service: str, client_ip: str = "unknown",
                 brakes: Brakes | None = None, timeout_s: float = float(limits.POPPASSD_TIMEOUT_S),
                 deadline_s: float = limits.POPPASSD_DEADLINE_S, brake_method: str = "poppassd"):
        self.log = log
        self.pam_service = pam_service
        self.client_ip = client_ip
        # No brakes given: nothing is counted across connections (the fixed delay remains).
        self.brakes = brakes if brakes is not None else Brakes(None, 0, log)
        self.timeout_s, self.deadline_s = timeout_s, deadline_s
        self.brake_method = brake_method
        self.user: str | None = None            # verified here, on this connection
        self.old_password: str | None = None
        self.expected = frozenset({Kind.POPPASSD_CHECK, Kind.POPPASSD_END})

    def answer(self, frame: wire.Frame) -> str | None:
        """The answer to `frame` (None for POPPASSD_END); ProtocolViolation for a frame out of
        order (the caller decoded it with `allowed=self.expected`, and checks again here)."""
        if frame.kind not in self.expected:
            raise ProtocolViolation(f"{frame.kind.name} is not expected here")
        if frame.kind is Kind.POPPASSD_CHECK:
            verdict = self.check(frame.text(0), frame.text(1))
            self.expected = frozenset({Kind.POPPASSD_CHANGE if verdict == RIGHT
                                       else Kind.POPPASSD_END, Kind.POPPASSD_END})
            return verdict
        if frame.kind is Kind.POPPASSD_CHANGE:
            verdict = self.change(frame.text(0))
            if verdict != REFUSED:
                # changed: the verification is used up (the next change needs a new check);
                # failed: the dialogue ends
                self.user = self.old_password = None
                self.expected = frozenset({Kind.POPPASSD_CHECK if verdict == CHANGED
                                           else Kind.POPPASSD_END, Kind.POPPASSD_END})
            return verdict
        self._ended(frame.text(0))
        self.expected = frozenset()
        return None

    def _ended(self, why: str) -> None:
        if why == "deadline":
            self.log(syslog.LOG_NOTICE, f"dialogue from {self.client_ip} not finished "
                                        f"within {self.deadline_s:g} s; closed")
        elif why == "timeout":
            self.log(syslog.LOG_INFO, f"timeout after {self.timeout_s}s from {self.client_ip}")
        elif why == "overlong":
            self.log(syslog.LOG_NOTICE, f"over-long line from {self.client_ip}; closed")
        else:
            raise ProtocolViolation("POPPASSD_END with an unknown reason")

    # ---- the old password ----------------------------------------------------------------
    def check(self, user: str, old_password: str) -> str:
        # The address's brake before anything is checked: hanging up cannot shorten it, and
        # every new connection pays it again.
        self.brakes.hold_address(self.client_ip)
        started = time.monotonic()
        refusal = self._check_old_password(user, old_password)
        if refusal is None:
            self.brakes.record_success(user)
            self.user, self.old_password = user, old_password
            return RIGHT
        verdict, reason, guessed, result = refusal
        # The right password, and PAM's account step could not decide: "try again later",
        # as every wrong guess is told meanwhile; timed, counted and held as one, without
        # its fail2ban line (popper's policy_checks._account_step_undecided;
        # docs/operations.md, "When PAM's account step cannot decide").
        undecided = (verdict == LATER and result is not None
                     and result.password_code == pam_auth.PAM_SUCCESS)
        as_wrong_guess = verdict == WRONG or undecided
        if undecided:
            if not self.brakes.account_undecided():
                self.log(syslog.LOG_WARNING, account_undecided_line(self.pam_service))
        elif verdict == WRONG and self.brakes.account_undecided():
            verdict = LATER
            reason += " (answered [SYS/TEMP]: PAM's account step cannot decide)"
        self.log(syslog.LOG_NOTICE, f'password change for "{user}" from '
                                    f"{self.client_ip} refused: {reason}")
        if as_wrong_guess:
            if not guessed and not undecided:
                # The right password, refused by PAM's account step (an expired account):
                # this line says why, as popper logs it
                # (docs/internals.md, "Failures and policy refusals");
                # told, timed, braked and logged for fail2ban as a wrong one, or a ban
                # coming one attempt late would tell it.
                self.log(syslog.LOG_NOTICE, account_line(user, self.brake_method,
                                                         self.client_ip, reason))
            # Counted from the check's start, not from PAM's answer: a blocked account (no
            # PAM call) and a wrong password (pam_unix's own ~2 s delay) take the same time -
            # the fixed delay, or the user name's brake when that is longer - PAM's owed
            # failure delay (an account refusal; a name NSS does not know) included.
            self.brakes.wait_as_wrong_guess(result, self.client_ip, user, self.brake_method,
                                            limits.POPPASSD_FAILURE_DELAY_S, since=started,
                                            account_undecided=undecided)
        return verdict

    def _check_old_password(self, user: str,
                            old_password: str
                            ) -> tuple[str, str, bool, pam_auth.PamResult | None] | None:
        """None when `user` proved `old_password`; else (verdict, reason for the log, whether
        it was a wrong guess: False when the password was right and only PAM's account step
        refused, or PAM could not decide; and PAM's answer, None when PAM was not asked: the
        failure delay it leaves owed, Brakes.wait_as_wrong_guess)."""
        # The one user-name rule, and no ":" either: it separates /etc/passwd's fields.
        if not is_possible_user_name(user) or ":" in user:
            return WRONG, "invalid user name", True, None
        try:
            account = pwd.getpwnam(user)
        except KeyError:
            account = None
        if account is not None and account.pw_uid <= limits.BLOCKED_UID_MAX:
            return WRONG, f"uid {account.pw_uid} is blocked", True, None
        try:
            old_password.encode("utf-8")
        except UnicodeEncodeError:
            return WRONG, "old password is not UTF-8", True, None
        # An unknown name goes through PAM too, as in popper (auth/policy.py): its failure
        # delay (pam_faildelay's may pass POPPASSD_FAILURE_DELAY_S) and an outage's "try
        # again later" then tell no one which names exist.
        # check_password_expired=False: an expired password may (must) be changed.
        result = pam_auth.authenticate(self.pam_service, user, old_password, self.client_ip,
                                       check_password_expired=False)
        reason = f"PAM service {self.pam_service}: {result.reason} ({result.code})"
        if result.system_error:
            return LATER, reason, False, result
        if account is None:
            return WRONG, "no such user", True, result
        if not result.ok:
            return WRONG, reason, result.password_code != pam_auth.PAM_SUCCESS, result
        return None

    # ---- the new password ----------------------------------------------------------------
    def change(self, new_password: str) -> str:
        """For the user verified here, with the old password kept here."""
        user, old_password = self.user, self.old_password
        if user is None or old_password is None:
            raise ProtocolViolation("POPPASSD_CHANGE before a right old password")
        if not acceptable(new_password, old_password):
            return REFUSED
        result = pam_auth.change_password(self.pam_service, user, old_password,
                                          new_password, self.client_ip)
        why = f"PAM service {self.pam_service}: {result.reason} ({result.code})"
        if result.code in pam_auth.NEW_PASSWORD_REFUSED:
            self.log(syslog.LOG_NOTICE, f'new password for "{user}" from '
                                        f"{self.client_ip} refused: {why}")
            return REFUSED
        if not result.ok:
            self.log(syslog.LOG_ERR, f'password change for "{user}" from '
                                     f"{self.client_ip} failed: {why}")
            return FAILED
        self.log(syslog.LOG_NOTICE, f'password changed for "{user}" from {self.client_ip}')
        return CHANGED


def serve_requests(sock: socket.socket, keeper: PasswordKeeper, deadline: float,
                   records: ForwardedRecords | None = None) -> bool:
    """Answer the pre-login process's frames on `sock` until it closes it (True) or
    `deadline` (time.monotonic) passes (False); each answer's time moves the deadline on.
    ProtocolViolation or wire.FrameError for anything but the dialogue's frames in order,
    or for more than MAX_REQUESTS of them."""
    requests = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        watched = [sock] + ([records] if records is not None else [])
        ready, _, _ = select.select(watched, [], [], left)
        if records is not None and records in ready:
            records.forward()
        if sock not in ready:
            continue
        frame = wire.receive(sock, allowed=keeper.expected)
        if frame is None:
            return True
        requests += 1
        if requests > MAX_REQUESTS:
            raise ProtocolViolation(f"more than {MAX_REQUESTS} requests")
        started = time.monotonic()
        verdict = keeper.answer(frame)
        deadline += time.monotonic() - started
        if verdict is not None:
            wire.send(sock, Kind.POPPASSD_VERDICT, verdict)


class MonitorLink:
    """The pre-login process's end: what poppassd.Dialogue asks the root process."""

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def _ask(self, kind: Kind, *fields) -> str:
        wire.send(self.sock, kind, *fields)
        frame = wire.receive(self.sock, allowed=frozenset({Kind.POPPASSD_VERDICT}))
        if frame is None:
            raise ConnectionResetError("the poppassd monitor is gone")
        return frame.text(0)

    def check(self, user: str, old_password: str) -> str:
        return self._ask(Kind.POPPASSD_CHECK, user, old_password)

    def change(self, new_password: str) -> str:
        return self._ask(Kind.POPPASSD_CHANGE, new_password)

    def ended(self, why: str) -> None:
        try:
            wire.send(self.sock, Kind.POPPASSD_END, why)
        except OSError:
            pass


def serve_connection(cfg, log, *, keeper_args: dict, run_dialogue, refuse_client,
                     deadline_s: float, uid: int, gid: int) -> int:
    """Fork the pre-login process (which runs `run_dialogue(MonitorLink)` in the sandbox on
    descriptors 0 and 1, or `refuse_client()` when it cannot enter the sandbox), answer it,
    and return its exit status (EXIT_FAILED when it broke the protocol, overran the deadline
    or was killed)."""
    ours, theirs = wire.channel_pair()
    log_ours, log_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    # Classic inetd gives descriptor 2 the client's socket too: then it goes as 0 and 1 do.
    client_on_2 = client_on_stderr()
    pid = os.fork()
    if pid == 0:
        close_sockets(ours, log_ours)
        log.forward_to(log_theirs)       # docs/privsep.md, "The pre-login process's log records"
        standard_fds_to_null(keep=(0, 1))
        exit_after(log, f"pre-login for {keeper_args['client_ip']}",
                   lambda: _prelogin(cfg, log, uid, gid, theirs, run_dialogue,
                                     refuse_client))
    close_sockets(theirs, log_theirs)
    # the client's socket: this process never reads it, nor do the PAM modules it loads
    standard_fds_to_null(keep=() if client_on_2 else (2,))
    client_ip = keeper_args["client_ip"]

    def end_prelogin() -> None:
        kill_quietly(pid)

    records = ForwardedRecords(log_ours, log, who=client_ip, end_process=end_prelogin)
    # Made after the fork: the pre-login process holds no descriptor of the brakes' file.
    keeper = PasswordKeeper(log, brakes=Brakes.from_config(cfg, log), **keeper_args)
    status = None
    try:
        if not serve_requests(ours, keeper, time.monotonic() + deadline_s + SUPERVISE_MARGIN_S,
                              records):
            log(syslog.LOG_NOTICE, f"pre-login for {client_ip} did not end within "
                                   f"{deadline_s + SUPERVISE_MARGIN_S:g} s; ending it")
            end_prelogin()
            status = EXIT_FAILED
    except (ProtocolViolation, wire.FrameError) as exc:
        log(syslog.LOG_WARNING, f"pre-login for {client_ip} broke the poppassd protocol "
                                f"({exc}); ending it")
        end_prelogin()
        status = EXIT_FAILED
    except OSError:
        pass                              # it went away while being answered
    finally:
        ours.close()
    if not exited_within(pid, LAST_WORDS_S, records):
        end_prelogin()
    code = reap_code(pid)
    records.finish()
    if status is None:
        status = code if code is not None and code >= 0 else EXIT_FAILED
    return status


def client_on_stderr() -> bool:
    """Whether descriptor 2 is the client's socket (0), as classic inetd gives it: then
    nothing meant for the administrator may be written there."""
    try:
        out, client = os.fstat(2), os.fstat(0)
    except OSError:
        return False
    return stat.S_ISSOCK(client.st_mode) and os.path.samestat(out, client)


def _prelogin(cfg, log, uid: int, gid: int, sock: socket.socket, run_dialogue,
              refuse_client) -> int:
    try:
        privsep.enter_prelogin_sandbox(cfg, uid, gid)
    except privsep.SandboxError as exc:
        log_failure(log, "the pre-login sandbox", exc, syslog.LOG_CRIT)
        refuse_client()                    # not a silent hang-up: try again later
        return privsep.EXIT_PRIVSEP_FAILED
    return run_dialogue(MonitorLink(sock))
