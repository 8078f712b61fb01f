"""The configuration snippets of docs/scale-out.md, as the scale-out tests use them: read out of
the document (so what it shows is what runs), with the names in braces filled in; and a real
HAProxy in the foreground with such a configuration."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from qpopper import proxy_protocol
from tests.helpers import daemons
from tests.helpers.repo import REPO
from tests.server_harness import PopperServer, read_greeting

DOC = REPO / "docs" / "scale-out.md"
_SNIPPET_RE = re.compile(r"<!-- snippet: (?P<name>[\w.]+) -->\n```\n(?P<body>.*?)```", re.S)
HAPROXY = "/usr/sbin/haproxy"


def snippet(name: str, **values: str) -> str:
    """The snippet `name` of docs/scale-out.md with every {NAME} replaced by values[NAME]
    (all of them must be given, and all must be used)."""
    found = {m["name"]: m["body"] for m in _SNIPPET_RE.finditer(DOC.read_text())}
    text = found[name]
    wanted = set(re.findall(r"\{([A-Z_]+)\}", text))
    if wanted != set(values):
        raise KeyError(f"snippet {name} needs {sorted(wanted)}, got {sorted(values)}")
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


class ProxiedServer(PopperServer):
    """A master whose listener is a proxy-protocol one: started like PopperServer, but its
    readiness is tested with a PROXY header first (a bare connection would wait for one)."""

    def start(self) -> "ProxiedServer":
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err,
                                         start_new_session=True)
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"popper exited: {self.stderr()}")
            try:
                greeting = proxied_greeting(self.host, self.port, "192.0.2.1")
                if greeting.startswith(b"+OK"):
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"popper did not start: {self.stderr()}")
            time.sleep(0.05)


def proxied_greeting(host: str, port: int, client: str, source: str = "127.0.0.1") -> bytes:
    """Connect from `source`, send a v2 header naming `client`, read the greeting, QUIT."""
    with socket.create_connection((host, port), timeout=5, source_address=(source, 0)) as s:
        s.sendall(proxy_protocol.make_v2(client, 40000, host, port))
        greeting = read_greeting(s)
        s.sendall(b"QUIT\r\n")
        read_greeting(s)
    return greeting


@contextlib.contextmanager
def running_haproxy(workdir: str, config: str):
    """HAProxy in the foreground (-db) with `config` plus a global section with an admin
    socket; yields the socket's path. Stopped (SIGUSR1: soft stop, then KILL) at the end."""
    if shutil.which(HAPROXY) is None:
        raise FileNotFoundError(HAPROXY)
    admin = os.path.join(workdir, "haproxy.sock")
    path = os.path.join(workdir, "haproxy.cfg")
    Path(path).write_text(f"global\n    stats socket {admin} mode 600 level admin\n\n{config}")
    check = subprocess.run([HAPROXY, "-c", "-f", path], capture_output=True, text=True,
                           timeout=30)
    if check.returncode != 0:
        raise RuntimeError(f"haproxy -c: {check.stdout}{check.stderr}")
    log = open(os.path.join(workdir, "haproxy.log"), "wb")
    proc = subprocess.Popen([HAPROXY, "-db", "-f", path], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while not os.path.exists(admin):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("haproxy did not start: " +
                                   Path(log.name).read_text(errors="replace"))
            time.sleep(0.05)
        yield admin
    finally:
        daemons.stop(proc, signal.SIGUSR1, 5)       # USR1: HAProxy's soft stop
        log.close()


def haproxy_command(admin: str, command: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(admin)
        s.sendall(command.encode() + b"\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out.decode(errors="replace")


def server_states(admin: str) -> dict[str, dict[str, str]]:
    """`show stat` of the backend servers: name → the CSV's columns."""
    lines = haproxy_command(admin, "show stat").splitlines()
    header = lines[0].lstrip("# ").split(",")
    rows = {}
    for line in lines[1:]:
        values = line.split(",")
        if len(values) >= len(header):
            row = dict(zip(header, values))
            if row["svname"] not in ("FRONTEND", "BACKEND"):
                rows[row["svname"]] = row
    return rows
