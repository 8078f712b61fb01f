"""Running the real `popper` for server tests: free ports, a syslog listener, a spool directory
like /var/mail, the server process started and waited for by connecting (never by sleeping).
Used by tests/test_server_*.py and tests/test_demo.py.
"""

from __future__ import annotations

import contextlib
import grp
import itertools
import os
import poplib
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

POPPER = str(Path(sys.executable).with_name("popper"))
START_TIMEOUT_S = 15.0

GREETING_RE = re.compile(rb"^\+OK .*\r\n")


def prelogin_args() -> list[str]:
    """As root, the test run's pre-login account (tests/conftest.py makes it)."""
    if os.geteuid() != 0:
        return []
    from tests.helpers.sysusers import PRELOGIN_USER
    return [f"--prelogin-user={PRELOGIN_USER}"]


PORTS_OUTSIDE_EPHEMERAL = 12_000
_port_choice = random.SystemRandom()      # not the global one, which pytest-randomly reseeds
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1", *, udp: bool = False) -> int:
    """A port nothing is bound to on `host` (TCP, and UDP too with `udp`), for a server to
    listen on, taken outside the kernel's ephemeral range (net.ipv4.ip_local_port_range): a
    port bind(0) returns lies in it, where every outgoing connection takes its local port,
    so between the pick and the server's bind a readiness probe or a client of another
    server could take it. Below the range (up to PORTS_OUTSIDE_EPHEMERAL ports), or above
    it when there is no room below. Never the same port twice in a run."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp else (socket.SOCK_STREAM,)
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low, ephemeral_high = (int(word) for word in f.read().split())
    except (OSError, ValueError):
        ephemeral_low, ephemeral_high = 32768, 60999
    low = max(1024, ephemeral_low - PORTS_OUTSIDE_EPHEMERAL)
    pool = (range(low, ephemeral_low) if ephemeral_low - low >= 1000
            else range(ephemeral_high + 1, 65536))
    outside = (_port_choice.choice(pool) for _ in range(200 if len(pool) >= 1000 else 0))
    kernels = (_kernel_pick(family, host) for _ in range(20))   # no room outside the range
    for port in itertools.chain(outside, kernels):
        if port not in _handed_out and _bindable(family, kinds, host, port):
            _handed_out.add(port)
            return port
    raise OSError(f"no free port on {host}")


def _kernel_pick(family, host: str) -> int:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _bindable(family, kinds, host: str, port: int) -> bool:
    for kind in kinds:
        with socket.socket(family, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def make_spool_dir(parent: str) -> str:
    """`<parent>/spool`, root:mail 2775 like Debian's /var/mail."""
    path = os.path.join(parent, "spool")
    os.mkdir(path)
    os.chown(path, 0, grp.getgrnam("mail").gr_gid)
    os.chmod(path, 0o2775)
    return path


def write_config(path: str, **options) -> str:
    """A global configuration file; True/False booleans become set/reset lines, None leaves
    the option out (for a server that does not know it). The brute-force brakes count
    failures in a file beside it unless told otherwise: never the host's /run/qpopper, which
    would carry one test's failures into the next."""
    options.setdefault("auth_brakes_file", os.path.join(os.path.dirname(os.path.abspath(path)),
                                                        "auth-brakes.sqlite"))
    if os.geteuid() == 0:
        from tests.helpers.sysusers import PRELOGIN_USER
        options.setdefault("prelogin_user", PRELOGIN_USER)     # tests/conftest.py makes it
    lines = []
    for attr, value in options.items():
        name = attr.replace("_", "-")
        if value is None:
            continue
        if value is True:
            lines.append(f"set {name}")
        elif value is False:
            lines.append(f"reset {name}")
        else:
            # Quoted strings escape their quotes and backslashes (config.py's grammar).
            quoted = str(value).replace("\\", "\\\\").replace('"', '\\"')
            lines.append(f'set {name} = "{quoted}"' if isinstance(value, str) else
                         f"set {name} = {value}")
    Path(path).write_text("\n".join(lines) + "\n")
    return path


def read_greeting(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def wait_for_greeting(host: str, port: int, proc: subprocess.Popen | None = None,
                      timeout: float = START_TIMEOUT_S) -> bytes:
    """Connect until the server answers with +OK (or the process died: then fail)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"popper exited with {proc.returncode} before serving")
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                greeting = read_greeting(s)
                s.sendall(b"QUIT\r\n")
                read_greeting(s)
            if GREETING_RE.match(greeting):
                return greeting
            last_error = RuntimeError(f"unexpected greeting {greeting!r}")
        except OSError as exc:
            last_error = exc
        time.sleep(0.02)                 # between connection attempts, not instead of them
    raise TimeoutError(f"popper on {host}:{port} did not answer: {last_error}")


class SyslogCapture:
    """A datagram listener standing in for /dev/log (QPOPPER_SYSLOG_SOCKET)."""

    RECORD_RE = re.compile(r"<(?P<pri>\d+)>\w{3} [ \d]\d \d\d:\d\d:\d\d "
                           r"(?P<ident>[^\[]+)\[(?P<pid>\d+)\]: (?P<text>.*)", re.S)

    def __init__(self, directory: str):
        self.path = os.path.join(directory, "syslog.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o666)       # children that dropped privileges may reconnect
        self.sock.settimeout(0.2)
        self._records: list[tuple[int, int, str]] = []    # (priority, pid, text)
        self._lock = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            match = self.RECORD_RE.fullmatch(data.decode("utf-8", "replace"))
            if match:
                with self._lock:
                    self._records.append((int(match["pri"]), int(match["pid"]), match["text"]))
                    self._lock.notify_all()

    @property
    def records(self) -> list[tuple[int, int, str]]:
        """The records so far, (priority, pid, text): a copy, taken under the lock the
        receiving thread appends under."""
        with self._lock:
            return list(self._records)

    def texts(self) -> list[str]:
        return [text for _, _, text in self.records]

    def wait_for(self, pattern: str, timeout: float = 10.0) -> tuple[int, int, str]:
        """The first record whose text matches `pattern` (a regex, fullmatch)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for record in self._records:
                    if regex.fullmatch(record[2]):
                        return record
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no syslog record matching {pattern!r}; got:\n" +
                                         "\n".join(t for _, _, t in self._records))
                self._lock.wait(remaining)

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        self.sock.close()


class PopperServer:
    """The real standalone master as a subprocess: `popper ADDRESS:PORT -f CONFIG ...`."""

    def __init__(self, workdir: str, config: str | None, *, host: str = "127.0.0.1",
                 port: int | None = None, extra_args=(), env=None, syslog: SyslogCapture | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.workdir = workdir
        listen = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        self.argv = [POPPER, listen, *(["-f", config] if config else []), *prelogin_args(),
                     *extra_args]
        self.env = dict(os.environ, **(env or {}))
        if syslog is not None:
            self.env["QPOPPER_SYSLOG_SOCKET"] = syslog.path
        self.proc: subprocess.Popen | None = None
        self.stderr_path = os.path.join(workdir, f"popper-{self.port}.stderr")

    def start(self) -> "PopperServer":
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err,
                                         start_new_session=True)
        try:
            wait_for_greeting(self.host, self.port, self.proc)
        except BaseException:
            self.stop()
            raise RuntimeError(f"popper did not start: {self.stderr()}")
        return self

    def stderr(self) -> str:
        with contextlib.suppress(OSError):
            return Path(self.stderr_path).read_text()
        return ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def children(self) -> list[int]:
        """Every process under the master: each connection's monitor, its pre-login process
        and its user session (docs/privsep.md)."""
        return descendants_of(self.proc.pid)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        self._monitors = self.children() if self.proc.poll() is None else []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        # children of a killed master must not outlive the test (each connection's
        # processes are a process group of their own)
        for pid in self._monitors:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.returncode

    def __enter__(self) -> "PopperServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def children_of(pid: int) -> list[int]:
    result = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # the command may contain spaces and parentheses: ppid is after the last ')'
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[1]) == pid:
            result.append(int(entry))
    return result


def descendants_of(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in children_of(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def processes_of(server, uid: int) -> list[int]:
    """The processes under the master running as `uid` (real uid); ones that end meanwhile
    are left out."""
    found = []
    for pid in descendants_of(server.pid):
        try:
            if int(proc_status(pid)["Uid"].split()[1]) == uid:
                found.append(pid)
        except (OSError, KeyError):
            continue
    return found


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def authentication_process_of(monitor: int) -> list[int]:
    """The monitor's authentication process (server/monitor_auth.py), while it runs."""
    found = []
    for pid in children_of(monitor):
        try:
            if proc_title(pid).endswith(" authentication"):
                found.append(pid)
        except OSError:
            continue
    return found


def proc_title(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace").strip()


def wait_until(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError(f"timed out waiting for {what}")


def read_pid_file(path: str) -> int | None:
    """The pid a detached master wrote (--daemon, pid-file), or None while there is none."""
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def rss_kib(pid: int) -> int:
    return int(proc_status(pid)["VmRSS"].split()[0])


class Site:
    """A spool directory, a syslog listener, a config file, and the server using them."""

    def __init__(self, root: str, pam_service: str, **options):
        self.root = root
        self.spool_dir = make_spool_dir(root)
        self.syslog = SyslogCapture(root)
        self.config = os.path.join(root, "qpopper.config")
        self.options = dict(spool_dir=self.spool_dir, pam_service=pam_service, timeout=30,
                            auth_failure_delay=0, reverse_lookup=False, statistics=True,
                            timing=True, log_login='(v%0) POP login by user "%1" at (%2) %3')
        self.options.update(options)
        write_config(self.config, **self.options)
        self.servers: list[PopperServer] = []

    def server(self, host="127.0.0.1", **kw) -> PopperServer:
        srv = PopperServer(self.root, self.config, host=host, syslog=self.syslog, **kw)
        self.servers.append(srv)
        return srv.start()

    def close(self):
        for srv in self.servers:
            srv.stop()
        self.syslog.close()


def login(server, user, password=None):
    client = poplib.POP3(server.host, server.port, timeout=20)
    try:
        client.user(user.name)
        client.pass_(user.password if password is None else password)
    except BaseException:
        client.close()
        raise
    return client


def spool_text(site, user) -> str:
    with open(os.path.join(site.spool_dir, user.name), "rb") as f:
        return f.read().decode()
