"""Logging: syslog with Qpopper's ident and facility, `-d` debug records, `-t` tracefile, and the
exact formats of the lines administrators grep for (Stats, Timing, log-login, timeout).

Every module logs through a `log(priority, text)` callable (priorities from the `syslog`
module); a `Logger` is that callable. We speak the syslog datagram protocol ourselves instead
of using the `syslog` module so that the socket can be kept open across daemonizing and
privilege drops, reopened after a syslog restart, and pointed at a test listener.
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import select
import socket
import stat
import syslog
import time

from qpopper import QPOPPER_VERSION
from qpopper.options import BY_NAME

IDENT = "popper"
"""Qpopper logs under its program name."""

DEFAULT_SYSLOG_SOCKET = "/dev/log"
SYSLOG_SOCKET_ENV = "QPOPPER_SYSLOG_SOCKET"
"""Where syslog datagrams go when set (tests bind a listener there); `/dev/log` otherwise."""

MAX_LOG_LINE_CHARS = 2048
"""A log record longer than this is cut: log lines carry client-supplied names."""

FACILITIES = {name: getattr(syslog, f"LOG_{name.upper()}")
              for name in BY_NAME["log-facility"].choices}
"""The syslog code of each log-facility the option table accepts (mail, local0..local7)."""

QPOPPER_LOG_LOGIN = '(v%0) POP login by user "%1" at (%2) %3'
"""The log-login text of Qpopper built with --enable-log-login (the demo logs logins with it)."""


def facility_code(name: str) -> int:
    """The syslog facility for a log-facility mnemonic ('mail', 'local0'..'local7')."""
    try:
        return FACILITIES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown log facility {name!r}") from None


_CONTROL_TO_SPACE = {code: " " for code in (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0))}
"""Every C0 control (NUL, CR, LF, ESC, TAB, ...), DEL and every C1 control (U+0080-U+009F;
U+009B is CSI on terminals that honour C1) becomes a space. Log lines carry client text (user
names, AUTH identities): CR/LF would forge a second record, NUL cut it, ESC sequences rewrite
the screen of whoever reads the log with less -R, tail or journalctl. TAB goes too: none of
our records contains one, and rsyslog would rewrite it as #011 anyway while the journal keeps
it, so the same record read either way stays the same."""


def _clean(text: str) -> str:
    # One record per line, printable: a client can neither fake a record nor drive a terminal.
    return text.translate(_CONTROL_TO_SPACE)[:MAX_LOG_LINE_CHARS]


class Logger:
    """`log(priority, text)`: to syslog, or to a tracefile (`-t`) instead; debug records only
    with `-d`. Safe to use from forked children (the pid is taken at each record)."""

    def __init__(self, *, facility: int = syslog.LOG_MAIL, debug: bool = False,
                 tracefile: str | None = None, socket_path: str | None = None,
                 stream=None, ident: str = IDENT):
        self.facility = facility
        self.debug = debug
        self.ident = ident
        self.socket_path = socket_path or os.environ.get(SYSLOG_SOCKET_ENV) or DEFAULT_SYSLOG_SOCKET
        self._stream = stream              # demo mode: records on the terminal
        self._trace_fd: int | None = None
        self._trace_to_fifo = False
        self._sock: socket.socket | None = None
        self._forwarding = False           # a pre-login process: to its monitor only
        self._monitor: socket.socket | None = None
        if tracefile:
            # O_APPEND: master and children write whole lines to the same file. O_NONBLOCK:
            # a FIFO no process reads is ENXIO at once, not a wait in open(2)
            # (preflight.opened_log says it); and a FIFO whose reader stops reading drops
            # records (EAGAIN) instead of stopping the master and every session in write(2).
            self._trace_fd = os.open(tracefile, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                                     | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
            self._trace_to_fifo = stat.S_ISFIFO(os.fstat(self._trace_fd).st_mode)
            if not self._trace_to_fifo:
                os.set_blocking(self._trace_fd, True)

    @classmethod
    def from_config(cls, cfg, **kw) -> "Logger":
        # the manual: -t "enables debug logging", written to the file
        return cls(facility=facility_code(cfg.log_facility),
                   debug=bool(cfg.debug or cfg.tracefile),
                   tracefile=cfg.tracefile or None, **kw)

    def reconfigured(self, cfg) -> "Logger":
        """A new Logger with `cfg`'s debug, tracefile and log-facility, and this one's
        destination (syslog socket, terminal stream) and ident: the master's on HUP. Raises
        OSError when the new tracefile cannot be opened (the caller keeps this one)."""
        return type(self).from_config(cfg, socket_path=self.socket_path, stream=self._stream,
                                      ident=self.ident)

    # --- the callable every module uses -----------------------------------------------------
    def __call__(self, priority: int, text: str) -> None:
        if priority == syslog.LOG_DEBUG and not self.debug:
            return
        text = _clean(text)
        if self._forwarding:
            if self._monitor is not None:
                _send_record(self._monitor, priority, text)
        elif self._trace_fd is not None:
            self._write_trace(text)
        elif self._stream is not None:
            self._stream.write(f"{time.strftime('%H:%M:%S')} {self.ident}[{os.getpid()}]: {text}\n")
            self._stream.flush()
        else:
            self._send_syslog(priority, text)

    def fds(self) -> list[int]:
        """Descriptors to keep open when daemonizing."""
        fds = []
        if self._trace_fd is not None:
            fds.append(self._trace_fd)
        if self._sock is not None:
            fds.append(self._sock.fileno())
        return fds

    def open(self) -> None:
        """Connect to syslog now (before chroot-like changes or daemonizing); optional."""
        if self._trace_fd is None and self._stream is None and not self._forwarding:
            self._connect()

    def forward_to(self, monitor: socket.socket) -> None:
        """In a pre-login process, before it reads a client byte: from now on every record
        goes to its monitor over `monitor` (ForwardedRecords logs it), and nowhere else, ever:
        the syslog socket and the tracefile are closed, so a process the client took over
        can neither write records of its own nor reopen them
        (docs/privsep.md, "The pre-login process's log records")."""
        self.close()
        monitor.settimeout(FORWARD_WAIT_S)
        self._forwarding = True
        self._monitor = monitor

    def close(self) -> None:
        if self._monitor is not None:
            self._monitor.close()
            self._monitor = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._trace_fd is not None:
            os.close(self._trace_fd)
            self._trace_fd = None

    # --- destinations -------------------------------------------------------------------------
    def _write_trace(self, text: str) -> None:
        # Qpopper's trace format: "Nov 27 13:21:29.123 2026 [pid] text".
        now = time.time()
        stamp = time.strftime("%b %e %H:%M:%S", time.localtime(now))
        millis = int((now % 1) * 1000)
        year = time.strftime("%Y", time.localtime(now))
        line = f"{stamp}.{millis:03d} {year} [{os.getpid()}] {text}\n"
        data = line.encode("utf-8", "replace")
        if self._trace_to_fifo and len(data) > select.PIPE_BUF:
            # a longer write to a non-blocking pipe may be cut where it is full, and the next
            # record glued to the part: cut the record instead (a whole UTF-8 character)
            data = (data[:select.PIPE_BUF - 1].decode("utf-8", "ignore").encode("utf-8")
                    + b"\n")
        try:
            os.write(self._trace_fd, data)
        except OSError:
            pass   # a full disk must not end the session; nothing else to tell

    def _connect(self) -> bool:
        if self._sock is not None:
            return True
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            return False
        self._sock = sock
        return True

    def _send_syslog(self, priority: int, text: str) -> None:
        # RFC 3164 framing, as glibc's syslog(3) sends it: <PRI>Mmm dd hh:mm:ss ident[pid]: text
        stamp = time.strftime("%b %e %H:%M:%S")
        record = f"<{self.facility | priority}>{stamp} {self.ident}[{os.getpid()}]: {text}"
        data = record.encode("utf-8", "replace")
        for _attempt in range(2):          # second try after reconnecting (syslog restarted)
            if not self._connect():
                return
            try:
                self._sock.send(data)
                return
            except OSError as exc:
                self._sock.close()
                self._sock = None
                if exc.errno not in (errno.ECONNREFUSED, errno.ENOTCONN, errno.EPIPE, errno.ENOENT):
                    return


# --- the pre-login process's records, through its monitor ---------------------------------------
PRELOGIN_PREFIX = "pre-login: "
"""What the monitor writes before each record of its pre-login process: fail2ban's filter and
every other reader anchored at the start of a record can tell them from the monitor's own
(docs/privsep.md, "The pre-login process's log records")."""
MAX_FORWARDED_RECORDS = 200
"""Records one monitor takes from its pre-login process; past them it ends the process (the
connection). A login's dialogue logs a handful; with `-d` (each command traced) the limit is
MAX_FORWARDED_TRACE_RECORDS. Low: past the journal's rate limit (10,000 records in 30 s per
unit by default) it drops the unit's records, the other connections' LOGIN FAILED lines too,
and a process a client took over should need many connections (max-children-per-address)
to get there."""
MAX_FORWARDED_TRACE_RECORDS = 10_000
"""The limit with `-d`: a trace of a few thousand commands before the login."""
FORWARD_BATCH = 64
"""Records one ForwardedRecords.forward() call takes at most: the waits that call it keep
their deadlines even while the process sends without pause."""
FORWARD_WAIT_S = 5
"""How long a pre-login process waits to send a record when its monitor's queue is full. The
monitor reads whenever it waits on the process; after a login over TLS, while the process
relays, nobody reads until the session ends, so a record could wait in vain there."""
_MAX_RECORD_OCTETS = 1 + 4 * MAX_LOG_LINE_CHARS      # priority, and the longest cleaned text


def _send_record(sock: socket.socket, priority: int, text: str) -> None:
    # one datagram per record: its priority, then the cleaned text
    try:
        sock.send(bytes((priority & 7,)) + text.encode("utf-8", "replace"))
    except OSError:
        pass            # the monitor is gone (the connection is ending) or, after the
        #                 handover, not reading: the record is lost, nothing else is


class ForwardedRecords:
    """The monitor's end of its pre-login process's log socket: each record the process sent
    is logged by `log` as the monitor's own, PRELOGIN_PREFIX first, at no higher priority than
    LOG_CRIT (LOG_EMERG goes to every terminal), cleaned and cut as any record. Past `limit`
    records (more with `debug`), `end_process()` is called once, after one line naming `who`,
    and the rest are read and dropped. The process may block sending when it is not read: its
    monitor reads this whenever it waits on the process (children.exited_within).

    The count is kept in a page shared with the processes forked after this was made (the
    authentication process forwards records while it answers requests), so the cap counts
    every record, whoever read it, also those of a process that died without saying how
    many. Make it after the pre-login process is forked: that process must not hold it."""

    def __init__(self, sock: socket.socket, log, *, debug: bool = False, who: str = "",
                 end_process=None):
        self.sock = sock
        self.log = log
        self.limit = MAX_FORWARDED_TRACE_RECORDS if debug else MAX_FORWARDED_RECORDS
        self.who = who
        self.end_process = end_process
        self._count = mmap.mmap(-1, 8)        # anonymous, MAP_SHARED: see above
        sock.setblocking(False)

    @property
    def count(self) -> int:
        return int.from_bytes(self._count[:8], "little")

    @count.setter
    def count(self, value: int) -> None:
        self._count[:8] = value.to_bytes(8, "little")

    def fileno(self) -> int:
        return self.sock.fileno()

    def forward(self) -> int:
        """Log the records waiting now, at most FORWARD_BATCH; how many were read."""
        for taken in range(FORWARD_BATCH):
            try:
                data = self.sock.recv(_MAX_RECORD_OCTETS)
            except OSError:                           # none left (or the socket broke)
                return taken
            self.count += 1        # an empty datagram too: it logs nothing but costs a read
            if self.count > self.limit:
                if self.count == self.limit + 1:
                    self.log(syslog.LOG_WARNING, f"pre-login for {self.who} sent more than "
                                                 f"{self.limit} log records; ending it")
                    if self.end_process is not None:
                        self.end_process()
                continue
            if not data:
                continue
            priority = min(max(data[0], syslog.LOG_CRIT), syslog.LOG_DEBUG)
            text = data[1:].decode("utf-8", "replace")
            self.log(priority, f"{PRELOGIN_PREFIX}{text}")
        return FORWARD_BATCH

    def finish(self) -> None:
        """The process has ended: log every record it left (what its queue held, however
        long), then close. Past the limit it is not ended again: it was reaped, and its pid
        may be another process's by now."""
        self.end_process = None
        while self.forward() == FORWARD_BATCH:
            pass
        self.close()

    def close(self) -> None:
        self.sock.close()


# --- line formats -------------------------------------------------------------------------------
def stats_line(user: str, deleted_msgs: int, deleted_octets: int, msgs_left: int,
               octets_left: int, client_host: str, client_ip: str) -> str:
    """`-s` (docs/compatibility.md, "Logging"), logged at LOG_NOTICE when the update starts."""
    return (f"Stats: {user} {deleted_msgs} {deleted_octets} {msgs_left} {octets_left} "
            f"{client_host} {client_ip}")


def timing_line(user: str, client_host: str, error: bool, auth_s: float, init_s: float,
                clean_s: float) -> str:
    """`timing`: Qpopper's end-of-session record, whole seconds, at LOG_INFO."""
    return (f"(v{QPOPPER_VERSION}) Timing for {user}@{client_host} "
            f"({'error' if error else 'normal'}) "
            f"auth={int(auth_s)} init={int(init_s)} clean={int(clean_s)}")


def timeout_line(seconds: int, user: str, client_host: str, client_ip: str) -> str:
    """Qpopper's record when a client read times out, at LOG_NOTICE."""
    return (f"(v{QPOPPER_VERSION}) Timeout ({seconds} secs) during nw read from {user} "
            f"at {client_host} ({client_ip})")


_LOG_LOGIN_ESCAPE = re.compile(r"%([0-6%])")


def log_login_line(template: str, user: str, client_host: str, client_ip: str, *,
                   authid: str = "", mechanism: str = "", ssf: int | str = "") -> str:
    """Expand a log-login / sasl-log-login template: %0 version, %1 user, %2 client host,
    %3 client ip, %4 SASL authid, %5 mechanism, %6 SSF, %% a percent sign. Other escapes are
    kept as written (Qpopper's behaviour)."""
    values = {"0": QPOPPER_VERSION, "1": user, "2": client_host, "3": client_ip,
              "4": authid, "5": mechanism, "6": str(ssf), "%": "%"}
    return _LOG_LOGIN_ESCAPE.sub(lambda match: values[match[1]], template)
