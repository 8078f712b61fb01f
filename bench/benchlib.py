"""What the benchmark scripts share: where the shared tools are, the checks before a run, seeded
spools from ../shared/bench/mkspool.py, pop3bench runs, and the reference server popa3d
(fetched, never installed). Imported by bench/*.py run as scripts (their directory is on
sys.path); they put the repository on sys.path for tests.* before importing this."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BENCH_DIR = REPO.parent / "shared" / "bench"

POPA3D_SPOOL_DIR = "/var/mail"            # compiled into popa3d (MAIL_SPOOL_PATH)
POPA3D_PAM_FILE = "/etc/pam.d/popa3d"
POPA3D_HOME = "/var/lib/popa3d"
MTIME_BACKDATE_S = 10
# What a script prints as its name in errors (set by the script: vs_reference.py, ...).
SCRIPT = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "bench"


def require_runnable(script: str, bench: Path, root_for: str, tools=()) -> None:
    """Exit 2 with one line when the script cannot run: it must be root and find
    pop3bench.py and the programs `tools` ((name, Debian package) pairs)."""
    missing = [f"{name} (package {package})" for name, package in tools
               if not shutil.which(name)]
    why = (f"{script}: run as root ({root_for})" if os.geteuid() != 0 else
           f"{script}: no pop3bench.py in {bench} (use --bench-dir)"
           if not (bench / "pop3bench.py").exists() else
           f"{script}: missing {', '.join(missing)}" if missing else None)
    if why:
        print(why, file=sys.stderr)
        raise SystemExit(2)


def make_spool(bench: Path, out: str, *, seed: int, user: str, size: str | None = None,
               count: int | None = None) -> dict:
    """A seeded mbox for `user` at `out`; mkspool.py's summary (messages, bytes, seed)."""
    cmd = [sys.executable, str(bench / "mkspool.py"), "--seed", str(seed), "--user", user,
           "-o", out]
    if size:
        cmd += ["-s", size]
    if count:
        cmd += ["-n", str(count)]
    made = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=1800)
    return json.loads(made.stderr.strip().splitlines()[-1])


def run_quiet(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)


def raise_on_signal(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def clean_up_on_signals() -> None:
    """Ctrl-C, kill and a closed terminal all unwind the script's ExitStack (SIGINT too: a
    shell starts background jobs with it ignored)."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, raise_on_signal)


# ---------------------------------------------------------------- pop3bench

def pop3bench(bench: Path, scenario: str, port: int, label: str, *extra: str,
              raw_out=None) -> dict:
    """One ../shared/bench/pop3bench.py run against 127.0.0.1:port; its final JSON line (plus
    wall_s). Secrets and long arguments are left out of the progress line."""
    cmd = [sys.executable, str(bench / "pop3bench.py"), scenario, "--host", "127.0.0.1",
           "--port", str(port), "--timeout", "1200", "--label", label, *extra]
    started = time.monotonic()
    hidden = {"--password", "--user", "--before", "--users-file", "--server-pid"}
    shown = [a for i, a in enumerate(extra) if a not in hidden and
             (i == 0 or extra[i - 1] not in hidden)]
    print(f"  {time.strftime('%H:%M:%S')} {label:<15} {scenario} {' '.join(shown)}",
          flush=True)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=7200)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines or not lines[-1].startswith("{"):
        raise SystemExit(f"pop3bench {scenario} against {label} failed:\n"
                         f"{result.stderr[-2000:]}{result.stdout[-2000:]}")
    data = json.loads(lines[-1])
    data["wall_s"] = round(time.monotonic() - started, 1)
    if data.get("failures"):
        print(f"    WARNING: {len(data['failures'])} failed run(s): {data['failures'][:2]}")
    if raw_out:
        raw_out.write(json.dumps(data) + "\n")
        raw_out.flush()
    return data


def write_restore_script(work: str) -> str:
    """restore.sh SRC DEST USER [EXTRA...]: a fresh copy of SRC as DEST (new inode, user:mail,
    0600, mtime backdated: popa3d waits ~1 s on a mailbox changed this second), and EXTRA
    files (a stale cache) removed."""
    path = os.path.join(work, "restore.sh")
    Path(path).write_text(
        "#!/bin/sh\nset -e\nsrc=$1 dest=$2 user=$3\nshift 3\n"
        'cp "$src" "$dest.tmp"\nchown "$user:mail" "$dest.tmp"\nchmod 600 "$dest.tmp"\n'
        f'touch -d "@$(( $(date +%s) - {MTIME_BACKDATE_S} ))" "$dest.tmp"\n'
        'mv "$dest.tmp" "$dest"\nrm -f "$@"\n')
    os.chmod(path, 0o755)
    return path


# ---------------------------------------------------------------- the reference server popa3d

@contextlib.contextmanager
def reference_binary(explicit: str | None, work: str):
    """Yields (path of popa3d, text of the package's PAM file or None)."""
    if explicit:
        yield os.path.abspath(explicit), None
        return
    where = os.path.join(work, "popa3d-deb")
    os.mkdir(where)
    result = subprocess.run(["apt-get", "download", "popa3d"], cwd=where, capture_output=True,
                            text=True, timeout=300)
    debs = sorted(Path(where).glob("popa3d_*.deb"))
    if result.returncode != 0 or not debs:
        raise SystemExit(f"{SCRIPT}: `apt-get download popa3d` failed (use "
                         f"--reference-binary):\n{result.stderr.strip()}")
    tree = os.path.join(where, "root")
    run_quiet("dpkg-deb", "-x", str(debs[0]), tree)
    pam_text = Path(tree, "etc/pam.d/popa3d").read_text()
    yield os.path.join(tree, "usr/sbin/popa3d"), pam_text


@contextlib.contextmanager
def popa3d_prerequisites(pam_text: str | None):
    """What popa3d's postinst and package would provide; removes only what it created."""
    from tests.helpers.pam_service import STOCK_POP3
    undo = []
    try:
        try:
            grp.getgrnam("popa3d")
        except KeyError:
            run_quiet("groupadd", "--system", "popa3d")
            undo.append(("group", "popa3d"))
        try:
            pwd.getpwnam("popa3d")
        except KeyError:
            run_quiet("useradd", "--system", "--gid", "popa3d", "--home-dir", POPA3D_HOME,
                      "--no-create-home", "--shell", "/usr/sbin/nologin", "popa3d")
            undo.append(("user", "popa3d"))
        if not os.path.isdir(POPA3D_HOME):
            os.mkdir(POPA3D_HOME, 0o755)
            undo.append(("dir", POPA3D_HOME))
        if not os.path.exists(POPA3D_PAM_FILE):
            fd = os.open(POPA3D_PAM_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                         0o644)
            with os.fdopen(fd, "w") as f:
                f.write(pam_text or STOCK_POP3)
            undo.append(("file", POPA3D_PAM_FILE))
        yield [f"{kind} {name}" for kind, name in undo]
    finally:
        for kind, name in reversed(undo):
            with contextlib.suppress(OSError, subprocess.CalledProcessError, KeyError):
                if kind == "file":
                    os.unlink(name)
                elif kind == "dir":
                    os.rmdir(name)
                elif kind == "user":
                    run_quiet("userdel", name)
                elif kind == "group":
                    grp.getgrnam(name)            # userdel may already have removed it
                    run_quiet("groupdel", name)


def client_tls_context() -> ssl.SSLContext:
    """A client context that does not check the server's certificate (a fresh test one)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def wait_for_banner(port: int, proc: subprocess.Popen, timeout: float = 15.0,
                    tls: bool = False) -> None:
    """Connect until the server says +OK (popa3d's banner is a bare `+OK`); with tls, after
    a TLS handshake (the certificate is not checked)."""
    context = client_tls_context()
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"{SCRIPT}: the server on port {port} exited ({proc.returncode})")
        with contextlib.suppress(OSError):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                sock = context.wrap_socket(raw) if tls else raw
                banner = sock.recv(512)
                sock.sendall(b"QUIT\r\n")
                sock.recv(512)
            if banner.startswith(b"+OK"):
                return
        if time.monotonic() > deadline:
            raise SystemExit(f"{SCRIPT}: no +OK banner on 127.0.0.1:{port}")
        time.sleep(0.05)                  # between connection attempts


def processes_running(binary: str) -> list[int]:
    """Pids whose executable is `binary` (a popa3d left behind by its activator)."""
    real = os.path.realpath(binary)
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry}/exe").removesuffix(" (deleted)") == real:
                    pids.append(int(entry))
    return pids


@contextlib.contextmanager
def running(argv: list[str], log: str, port: int, *, tls: bool = False, leftovers=(),
            stop_signal=signal.SIGTERM):
    """A server started in a session of its own, waited for by its banner on port, and
    stopped at the end (its process group; then any process whose executable is one of
    `leftovers`: a session that outlived its parent). Yields the Popen."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)
    try:
        wait_for_banner(port, proc, tls=tls)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, stop_signal)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        for binary in leftovers:
            for pid in processes_running(binary):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def popa3d_server(binary: str, work: str):
    """popa3d inetd-style behind systemd-socket-activate on a free loopback port (fork +
    exec per connection). Yields (Popen of the activator, port)."""
    from tests.server_harness import free_port
    port = free_port()
    argv = ["systemd-socket-activate", "--inetd", "-a", "-l", f"127.0.0.1:{port}", binary]
    with running(argv, os.path.join(work, "popa3d.log"), port, leftovers=(binary,)) as proc:
        yield proc, port


def remove_popa3d_spools(users) -> None:
    """userdel -r removes /var/mail/USER too; this also covers a half-made user."""
    for user in users:
        for suffix in ("", ".tmp", ".lock"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(POPA3D_SPOOL_DIR, user.name + suffix))
