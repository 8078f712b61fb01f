"""poppassd: the password-changing daemon Qpopper builds with --enable-poppassd (port 106).

One connection on standard input and output, inetd style (inetd, or systemd's
poppassd.socket with Accept=yes, or `systemd-socket-activate --inetd -l 106 poppassd`).
The dialogue (docs/compatibility.md, "poppassd"; Eudora's "Change Password" speaks it):

    S: 200 poppassd (qpopper-py 0.1.0) hello, who are you?    (the product's version;
                                                                 none with `shy`)
    C: user alice                S: 200 Your password please.
    C: pass OLD                  S: 200 Your new password please.
    C: newpass NEW               S: 200 Password changed, thank-you.
    C: quit                      S: 200 Bye.

Errors start with 500. The argument is the rest of the line after one space, so passwords may
hold spaces. How the password is changed, and why:
  - the old password is verified with PAM (pam_authenticate + pam_acct_mgmt, service
    `poppassd` by default, PAM_RHOST = the client), like a POP login; an expired password
    is accepted here, since changing it is the point;
  - the new one is set by pam_chauthtok in the same service (auth.pam.change_password), so
    its password stack (common-password: pam_pwquality, pam_pwhistory, pam_unix) decides
    and writes it, as for passwd(1). Running as root, pam_unix does not ask for the old
    password (it was proved above); a module that asks gets it, every "new password" and
    "retype" prompt gets the new one. A new password the stack refuses (PAM_AUTHTOK_ERR)
    gets `500 New password not acceptable.` and may be given again. pam_pwquality and
    pam_pwhistory let root through unless given `enforce_for_root` (pam.d/poppassd).
Safety: passwords are never logged; an unknown user, a user with uid <= 10 (limits.
BLOCKED_UID_MAX), a locked or expired account and a wrong old password all get the same
reply (`500 Old password is incorrect.`) after the same delay (limits.POPPASSD_FAILURE_DELAY_S),
and the connection closes (the right password of an expired account is logged as
`LOGIN REFUSED (account)`, like popper's, and braked and logged (LOGIN FAILED) as a wrong
one, or the next attempt's brake or a ban would tell it); lines are
bounded (POPPASSD_MAX_LINE_OCTETS), every read times out (POPPASSD_TIMEOUT_S), the whole
dialogue has a deadline (POPPASSD_DEADLINE_S, --deadline), bad commands are counted
(POPPASSD_MAX_BAD_COMMANDS).
Qpopper's poppassd said `500 Unknown user, <name>.`: that tells a guesser which names exist.
An unknown name's password goes through PAM as an existing one's does, so the stack's failure
delay, and an outage's `500 Server error, try again later.`, are the same for both.

Brute-force brakes: `pass` checks a password, so it is one more way to guess one. poppassd
uses the POP server's brakes (auth/brakes.py) with the same counts: the same
`auth-brakes-file` and `auth-brakes-max-delay`, read from the same configuration
(/etc/qpopper/qpopper.config, or -f FILE; the two options may also be given as flags, as to
popper). Before a `pass` is checked the client's address waits its brake; a failure is
counted for the address and the user name, logged as the fail2ban line the POP server logs
(`LOGIN FAILED, user=..., method=poppassd, ip=[...]`), and answered after the fixed delay or
the user name's brake when longer; a success clears the user name's count. So failures here
slow POP logins from that address and the other way round, and neither is a free oracle.

Processes (docs/privsep.md, "poppassd"): this root process never reads the client's bytes. It
forks a pre-login process that enters popper's pre-login sandbox before its first read and
speaks the whole dialogue (Dialogue, below); the checks above - PAM, the brakes, the delays,
the log lines - stay in the root process (poppassd_monitor.PasswordKeeper), which the pre-login
process asks over a socket pair only "is this USER's old password" and "change it to NEW".

Usage: see USAGE. Log lines go to syslog (facility authpriv, ident poppassd).
"""

from __future__ import annotations

import contextlib
import enum
import os
import select
import socket
import sys
import syslog
import time

from qpopper import __version__, limits
from qpopper.addresses import normalize_ip
from qpopper.config import Config, ConfigError, load
from qpopper.log import Logger
from qpopper.server import privsep
from qpopper.tools import poppassd_monitor as pm
from qpopper.tools.popauth import DEFAULT_CONFIG

DEFAULT_PAM_SERVICE = "poppassd"
EXIT_FAILED = 1
EXIT_USAGE = 2
USAGE = ("usage: poppassd [-f|--config FILE] [-s|--pam-service SERVICE] [-t|--timeout SECONDS] "
         "[--deadline SECONDS] [--auth-brakes-file PATH] [--auth-brakes-max-delay SECONDS] "
         "| --version | --help")
MAX_TIME_FLAG_S = 3600
"""The largest --timeout and --deadline: an hour is far past any person typing."""
BRAKE_METHOD = "poppassd"
"""The `method=` of poppassd's fail2ban lines (the POP server's say USER, APOP, PLAIN, ...)."""

GREETING = f"200 poppassd (qpopper-py {__version__}) hello, who are you?"
SHY_GREETING = "200 poppassd hello, who are you?"
"""The greeting when the configuration sets `shy`, as popper's banner then names no version."""
ASK_PASSWORD = "200 Your password please."
ASK_NEW_PASSWORD = "200 Your new password please."
CHANGED = "200 Password changed, thank-you."
BYE = "200 Bye."
BAD_OLD_PASSWORD = "500 Old password is incorrect."
NEW_PASSWORD_REFUSED = "500 New password not acceptable."
NOT_CHANGED = "500 Server error, password not changed."
TRY_LATER = "500 Server error, try again later."
LINE_TOO_LONG = "500 Line too long."
TIMED_OUT = "500 Timeout, closing connection."
TOO_MANY_BAD_COMMANDS = "500 Too many bad commands, closing connection."


class State(enum.Enum):
    USER = "user"            # waiting for `user NAME`
    PASS = "pass"            # waiting for `pass OLD`
    NEWPASS = "newpass"      # waiting for `newpass NEW`


EXPECTED = {State.USER: "500 Username required.",
            State.PASS: "500 Password required.",
            State.NEWPASS: "500 New password required."}
"""The reply to any other command in that state."""


class DeadlinePassed(TimeoutError):
    """The dialogue's total time (Channel.deadline_s) is up."""


class Channel:
    """Line I/O on two descriptors, bounded and timed: each read by `timeout_s`, all of them
    together by `deadline_s` from the channel's making."""

    def __init__(self, in_fd: int, out_fd: int, timeout_s: float,
                 deadline_s: float = limits.POPPASSD_DEADLINE_S):
        self.in_fd, self.out_fd, self.timeout_s = in_fd, out_fd, timeout_s
        self.deadline_s = deadline_s
        self.deadline = time.monotonic() + deadline_s
        self.buffer = b""

    def write_line(self, text: str) -> None:
        data = text.encode("utf-8", "surrogateescape") + b"\r\n"
        while data:
            data = data[os.write(self.out_fd, data):]

    def _wait_s(self) -> float:
        """The next read's wait: the idle timeout, but never past the deadline."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DeadlinePassed
        return min(self.timeout_s, left)

    def discard_rest_of_line(self, max_octets: int = 64 * 1024, wait_s: float = 1.0) -> None:
        """Read (and drop) the rest of an over-long line before closing: closing with unread
        input makes TCP reset the connection, and the client might lose our reply."""
        deadline = time.monotonic() + wait_s
        seen = 0
        while b"\n" not in self.buffer and seen < max_octets:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.in_fd], [], [], remaining)[0]:
                return
            self.buffer = os.read(self.in_fd, 4096)
            if not self.buffer:
                return
            seen += len(self.buffer)

    def read_line(self) -> bytes | None:
        """The next line without its CRLF; None at EOF. Raises TimeoutError (DeadlinePassed
        when the whole dialogue's time is up), or OverflowError for a line longer than the
        limit."""
        while b"\n" not in self.buffer:
            if len(self.buffer) >= limits.POPPASSD_MAX_LINE_OCTETS:
                raise OverflowError
            ready, _, _ = select.select([self.in_fd], [], [], self._wait_s())
            if not ready:
                raise DeadlinePassed if time.monotonic() >= self.deadline else TimeoutError
            chunk = os.read(self.in_fd, limits.POPPASSD_MAX_LINE_OCTETS)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        if len(line) + 1 > limits.POPPASSD_MAX_LINE_OCTETS:
            raise OverflowError
        return line.removesuffix(b"\r")


def peer_address(fd: int = 0) -> str:
    """The client's address when `fd` is a socket (inetd), else "unknown". An IPv4 client of
    a dual-stack socket (poppassd.socket listens on [::]:106) is written as IPv4, as popper
    writes it: the same address in both services' fail2ban lines and brakes."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return "unknown"
    with sock:
        try:
            peer = sock.getpeername()
        except OSError:
            return "unknown"
    return normalize_ip(peer[0]) if isinstance(peer, tuple) else "unknown"


class Dialogue:
    """One poppassd connection, in the pre-login process: one command table per state. The
    old password is checked, and the new one set, by the root process (`monitor`: a
    poppassd_monitor.MonitorLink), which logs, brakes and delays (docs/privsep.md,
    "poppassd")."""

    def __init__(self, channel: Channel, monitor, *, greeting: str = GREETING):
        self.channel = channel
        self.greeting = greeting
        self.monitor = monitor
        self.state = State.USER
        self.user: str | None = None
        self.bad_commands = 0
        self.done = False
        self.commands = {
            State.USER: {"user": self.cmd_user, "quit": self.cmd_quit},
            State.PASS: {"pass": self.cmd_pass, "quit": self.cmd_quit},
            State.NEWPASS: {"newpass": self.cmd_newpass, "quit": self.cmd_quit},
        }

    def run(self) -> int:
        self.channel.write_line(self.greeting)
        while not self.done:
            try:
                line = self.channel.read_line()
            except DeadlinePassed:
                return self._end(TIMED_OUT, "deadline")
            except TimeoutError:
                return self._end(TIMED_OUT, "timeout")
            except OverflowError:
                self.channel.discard_rest_of_line()
                return self._end(LINE_TOO_LONG, "overlong")
            if line is None:
                return 0
            self.dispatch(line.decode("utf-8", "surrogateescape"))
        return 0

    def _end(self, reply: str, why: str) -> int:
        """The last reply, and why to the root process, which logs it."""
        self.channel.write_line(reply)
        self.monitor.ended(why)
        return EXIT_FAILED

    def dispatch(self, line: str) -> None:
        verb, _, argument = line.partition(" ")
        handler = self.commands[self.state].get(verb.lower())
        if handler is None or (not argument and verb.lower() != "quit"):
            self.bad_commands += 1
            if self.bad_commands >= limits.POPPASSD_MAX_BAD_COMMANDS:
                self.channel.write_line(TOO_MANY_BAD_COMMANDS)
                self.done = True
            else:
                self.channel.write_line(EXPECTED[self.state])
            return
        handler(argument)

    # ---- commands ----------------------------------------------------------------------------
    def cmd_user(self, name: str) -> None:
        # Whatever the name, the same reply: whether it exists is said by nothing but `pass`.
        self.user = name
        self.state = State.PASS
        self.channel.write_line(ASK_PASSWORD)

    def cmd_pass(self, old_password: str) -> None:
        verdict = self.monitor.check(self.user, old_password)
        if verdict == pm.RIGHT:
            self.state = State.NEWPASS
            self.channel.write_line(ASK_NEW_PASSWORD)
            return
        self.channel.write_line(TRY_LATER if verdict == pm.LATER else BAD_OLD_PASSWORD)
        self.done = True

    def cmd_newpass(self, new_password: str) -> None:
        # Whether NEW is acceptable (not empty, printable, not the old one) is the root
        # process's to say, with the old password it kept: REFUSED.
        verdict = self.monitor.change(new_password)
        if verdict == pm.REFUSED:
            self.channel.write_line(NEW_PASSWORD_REFUSED)
            return
        if verdict != pm.CHANGED:
            self.channel.write_line(NOT_CHANGED)
            self.done = True
            return
        self.channel.write_line(CHANGED)
        self.state = State.USER          # like Qpopper's: the client says quit next
        self.user = None

    def cmd_quit(self, _argument: str) -> None:
        self.channel.write_line(BYE)
        self.done = True


class Settings:
    """What the command line says: poppassd's own flags, and the configuration to read."""

    def __init__(self):
        self.pam_service = DEFAULT_PAM_SERVICE
        self.timeout = float(limits.POPPASSD_TIMEOUT_S)
        self.deadline = float(limits.POPPASSD_DEADLINE_S)
        self.config_file: str | None = None     # None: DEFAULT_CONFIG when it exists
        self.brake_flags: list[str] = []        # popper's spelling, for config.load

    def config(self) -> Config:
        """The qpopper configuration with the brake flags on top; ConfigError (one line)."""
        config_file = self.config_file
        if config_file is None and os.path.exists(DEFAULT_CONFIG):
            config_file = DEFAULT_CONFIG
        cfg, _ = load([*(["-f", config_file] if config_file else []), *self.brake_flags])
        return cfg


FLAGS = {"-f": "config", "--config": "config", "-s": "pam-service", "--pam-service": "pam-service",
         "-t": "timeout", "--timeout": "timeout", "--deadline": "deadline",
         "--auth-brakes-file": "auth-brakes-file",
         "--auth-brakes-max-delay": "auth-brakes-max-delay"}
"""Every flag takes a value (`-s NAME`; long ones also `--name=VALUE`) -> what it sets."""


def _parse_args(argv: list[str]) -> Settings:
    settings = Settings()
    args = list(argv)
    while args:
        flag = args.pop(0)
        if flag in ("-h", "--help"):
            raise SystemExit(print(USAGE) or 0)
        if flag == "--version":
            raise SystemExit(print(f"poppassd (qpopper-py) {__version__}") or 0)
        flag, has_value, value = flag.partition("=") if flag.startswith("--") else (flag, "", "")
        if flag not in FLAGS:
            raise ValueError(f"unexpected argument {flag!r}")
        if not has_value:
            if not args:
                raise ValueError(f"{flag} needs a value")
            value = args.pop(0)
        _set(settings, FLAGS[flag], flag, value)
    return settings


def _set(settings: Settings, what: str, flag: str, value: str) -> None:
    if what == "config":
        if not value:
            raise ValueError(f"{flag} needs a file name")
        settings.config_file = value
    elif what == "pam-service":
        if not value or "/" in value or not value.isprintable():
            raise ValueError(f"bad PAM service name {value!r}")
        settings.pam_service = value
    elif what in ("timeout", "deadline"):
        setattr(settings, what, _seconds(what, value))
    else:
        # popper's own option: its table checks the value (a bad one is a usage error here).
        try:
            load([f"--{what}={value}"])
        except ConfigError as error:
            raise ValueError(str(error).removeprefix("argv ")) from None
        settings.brake_flags.append(f"--{what}={value}")


def _seconds(what: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"--{what} needs a number of seconds, got {value!r}") from None
    if not 0 < seconds <= MAX_TIME_FLAG_S:
        raise ValueError(f"--{what} must be between 0 and {MAX_TIME_FLAG_S} seconds")
    return seconds


def main(argv: list[str] | None = None) -> int:
    try:
        settings = _parse_args(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(f"poppassd: {exc}; {USAGE}", file=sys.stderr)
        return EXIT_USAGE
    log = Logger(facility=syslog.LOG_AUTHPRIV, ident="poppassd")

    def refuse_client() -> None:
        with contextlib.suppress(OSError):
            Channel(0, 1, settings.timeout).write_line(TRY_LATER)

    if os.geteuid() != 0:
        # pam_unix reads /etc/shadow and rewrites it: only root can do either.
        print("poppassd: must run as root (from inetd or poppassd.socket)", file=sys.stderr)
        return EXIT_FAILED
    step = "configuration"
    try:
        cfg = settings.config()
        step = "pre-login sandbox"
        privsep.check_prelogin_setup(cfg)
        uid, gid = privsep.prelogin_account(cfg)
    except (ConfigError, privsep.SandboxError) as error:
        # The administrator's mistake: said on stderr (the journal) and in the log; the
        # client is told to come back rather than left without an answer, and is not told
        # the mistake (classic inetd gives 2 the client's socket too).
        if not pm.client_on_stderr():
            print(f"poppassd: {error}", file=sys.stderr)
        log(syslog.LOG_ERR, f"{step}: {error}; no password changed")
        refuse_client()
        return EXIT_FAILED
    log.open()                   # before the pre-login process is forked (it forwards)
    greeting = SHY_GREETING if cfg.shy else GREETING

    def run_dialogue(monitor) -> int:
        # In the pre-login sandbox: the first client byte is read here.
        channel = Channel(0, 1, settings.timeout, settings.deadline)
        try:
            return Dialogue(channel, monitor, greeting=greeting).run()
        except (BrokenPipeError, ConnectionResetError):
            return EXIT_FAILED

    keeper_args = dict(pam_service=settings.pam_service, client_ip=peer_address(0),
                       timeout_s=settings.timeout, deadline_s=settings.deadline,
                       brake_method=BRAKE_METHOD)
    return pm.serve_connection(cfg, log, keeper_args=keeper_args, run_dialogue=run_dialogue,
                               refuse_client=refuse_client, deadline_s=settings.deadline,
                               uid=uid, gid=gid)


if __name__ == "__main__":
    sys.exit(main())
