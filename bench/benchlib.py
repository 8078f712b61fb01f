"""What the benchmark scripts share: where the shared tools are, the checks before a run, seeded
spools from ../shared/bench/mkspool.py, pop3bench runs, and the reference server popa3d
(fetched, never installed). Imported by bench/*.py run as scripts (their directory is on
sys.path); they put the repository on sys.path for tests.* before importing this."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_BENCH_DIR = REPO.parent / "shared" / "bench"

POPA3D_SPOOL_DIR = "/var/mail"            # compiled into popa3d (MAIL_SPOOL_PATH)
POPA3D_PAM_FILE = "/etc/pam.d/popa3d"
POPA3D_HOME = "/var/lib/popa3d"
MTIME_BACKDATE_S = 10
POPPER_MAIN = "import sys; from qpopper.cli import popper_main; sys.exit(popper_main())"
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

def _pop3bench_command(bench: Path, scenario: str, port: int, label: str, extra) -> list[str]:
    """The ../shared/bench/pop3bench.py command line; prints a progress line without the
    secrets and long arguments."""
    hidden = {"--password", "--user", "--before", "--users-file", "--server-pid"}
    shown = [a for i, a in enumerate(extra) if a not in hidden and
             (i == 0 or extra[i - 1] not in hidden)]
    print(f"  {time.strftime('%H:%M:%S')} {label:<15} {scenario} {' '.join(shown)}",
          flush=True)
    return [sys.executable, str(bench / "pop3bench.py"), scenario, "--host", "127.0.0.1",
            "--port", str(port), "--timeout", "1200", "--label", label, *extra]


def _pop3bench_result(scenario: str, label: str, returncode: int, stdout: str, stderr: str,
                      started: float, raw_out, ended: float | None = None) -> dict:
    lines = stdout.strip().splitlines()
    if returncode != 0 or not lines or not lines[-1].startswith("{"):
        raise SystemExit(f"pop3bench {scenario} against {label} failed:\n"
                         f"{stderr[-2000:]}{stdout[-2000:]}")
    data = json.loads(lines[-1])
    data["wall_s"] = round((ended or time.monotonic()) - started, 1)
    if data.get("failures"):
        print(f"    WARNING: {len(data['failures'])} failed run(s): {data['failures'][:2]}")
    if raw_out:
        raw_out.write(json.dumps(data) + "\n")
        raw_out.flush()
    return data


def pop3bench(bench: Path, scenario: str, port: int, label: str, *extra: str,
              raw_out=None) -> dict:
    """One ../shared/bench/pop3bench.py run against 127.0.0.1:port; its final JSON line (plus
    wall_s)."""
    cmd = _pop3bench_command(bench, scenario, port, label, extra)
    started = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=7200)
    return _pop3bench_result(scenario, label, result.returncode, result.stdout, result.stderr,
                             started, raw_out)


def pop3bench_together(bench: Path, scenario: str, port: int, label: str, extras,
                       raw_out=None) -> list[dict]:
    """Several pop3bench runs started at once (one process each, so one Python client is not
    the limit), one per argument list in `extras`; their JSON lines, in that order, each with
    its own wall_s. Their output goes to files, so no client waits on a full pipe."""
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        runs = []
        for extra in extras:
            out, err = (stack.enter_context(tempfile.TemporaryFile("w+")) for _ in range(2))
            runs.append((subprocess.Popen(_pop3bench_command(bench, scenario, port, label, extra),
                                          stdout=out, stderr=err, text=True), out, err))
        ended: dict[int, float] = {}
        try:
            while len(ended) < len(runs):
                if time.monotonic() - started > 7200:
                    raise SystemExit(f"pop3bench {scenario} against {label}: no end in 2 h")
                for n, (proc, _, _) in enumerate(runs):
                    if n not in ended and proc.poll() is not None:
                        ended[n] = time.monotonic()
                time.sleep(0.01)
        finally:
            for proc, _, _ in runs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        results = []
        for n, (proc, out, err) in enumerate(runs):
            out.seek(0)
            err.seek(0)
            results.append(_pop3bench_result(scenario, label, proc.returncode, out.read(),
                                              err.read(), started, raw_out,
                                              ended=ended[n]))
    return results


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


# ---------------------------------------------------------------- peers and measurements

@dataclass
class Target:
    server: str
    mode: str
    port: int
    pid: int                               # root of the process tree that serves it
    runs: dict = field(default_factory=dict)     # figure -> one value per round
    roles: dict = field(default_factory=dict)    # the last idle run's new processes by title

    @property
    def label(self) -> str:
        return f"{self.server}/{self.mode}"




def ensure_debian_packages(packages) -> None:
    """Dovecot and stunnel4 from Debian, installed when missing, their system services
    disabled (this run starts its own instances on free loopback ports)."""
    missing = [p for p in packages if subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True
    ).stdout != "install ok installed"]
    if not missing:
        return
    print(f"installing {' '.join(missing)} (system services disabled) ...", flush=True)
    guard = "/usr/sbin/policy-rc.d"          # 101: no maintainer script starts a service
    made_guard = not os.path.exists(guard)
    if made_guard:
        Path(guard).write_text("#!/bin/sh\nexit 101\n")
        os.chmod(guard, 0o755)
    try:
        subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-qq",
                        "--no-install-recommends", *missing], check=True, timeout=900,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    finally:
        if made_guard:
            os.unlink(guard)
    if os.path.isdir("/run/systemd/system"):
        subprocess.run(["systemctl", "disable", "--now", "dovecot.service", "dovecot.socket"],
                       capture_output=True, timeout=120)
    else:
        subprocess.run(["update-rc.d", "dovecot", "disable"], capture_output=True, timeout=120)


@contextlib.contextmanager
def qpopper(work: str, name: str, tree: str, pam: str, pki, max_sessions: int,
            prelogin: str | None, **options):
    """One master of the qpopper-py in `tree`, plain on one port and TLS from the first byte
    on another; `prelogin` the pre-login account (None: the option is left out), `options`
    more configuration lines (write_config's). Yields (server,
    tls_port, spool_dir)."""
    from tests.server_harness import PopperServer, free_port, make_spool_dir, write_config
    root = os.path.join(work, name)
    os.mkdir(root)
    os.chmod(root, 0o755)
    spool_dir = make_spool_dir(root)
    config = write_config(
        os.path.join(root, "qpopper.config"), spool_dir=spool_dir, pam_service=pam,
        timeout=600, auth_brakes_file=os.path.join(root, "auth-brakes.sqlite"),
        max_children=max_sessions, max_children_per_address=max_sessions,
        tls_server_cert_file=pki.cert_file, tls_private_key_file=pki.key_file,
        prelogin_user=None,        # 1dec647 has no such option: the command line has it
        **options)
    server = PopperServer(root, config)
    tls_port = free_port()
    server.argv = [sys.executable, "-P", "-c", POPPER_MAIN, f"127.0.0.1:{server.port}",
                   f"--tls-listen=127.0.0.1:{tls_port}", "-f", config, "-R"]
    if prelogin:
        chroot = os.path.join(root, "empty")
        server.argv += [f"--prelogin-user={prelogin}", f"--prelogin-chroot={chroot}"]
    server.env["PYTHONPATH"] = tree
    with server:
        wait_for_banner(tls_port, server.proc, tls=True)
        yield server, tls_port, spool_dir


@contextlib.contextmanager
def dovecot(work: str, pam: str, pki, max_sessions: int, name: str = "dovecot",
            mail_location: str = "mbox:~/mail:INBOX={spool_dir}/%u"):
    """A Dovecot instance of this run: pop3 and pop3s on free loopback ports, PAM through the
    same service file as qpopper-py, mailboxes under its spool dir in the temp dir
    (`mail_location`, {spool_dir} filled in: mbox spools by default). Yields (proc, port,
    tls_port, spool_dir)."""
    from tests.server_harness import free_port, make_spool_dir
    root = os.path.join(work, name)
    os.mkdir(root)
    spool_dir = make_spool_dir(root)
    port, tls_port = free_port(), free_port()
    conf = os.path.join(root, "dovecot.conf")
    Path(conf).write_text(f"""\
protocols = pop3
listen = 127.0.0.1
base_dir = {root}/run
instance_name = qpt-{name}-bench
log_path = {root}/dovecot.log
ssl = yes
ssl_cert = <{pki.cert_file}
ssl_key = <{pki.key_file}
disable_plaintext_auth = no
auth_mechanisms = plain
passdb {{
  driver = pam
  args = {pam}
}}
userdb {{
  driver = passwd
}}
first_valid_uid = 1000
mail_location = {mail_location.format(spool_dir=spool_dir)}
mail_privileged_group = mail
default_process_limit = {max_sessions}
default_client_limit = {max_sessions * 10}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {tls_port}
    ssl = yes
  }}
}}
""")
    with running(["dovecot", "-F", "-c", conf], os.path.join(root, "dovecot.out"),
                 port) as proc:
        wait_for_banner(tls_port, proc, tls=True)
        yield proc, port, tls_port, spool_dir



def load_pop3bench(bench: Path):
    spec = importlib.util.spec_from_file_location("pop3bench", bench / "pop3bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Window(threading.Thread):
    """`measure(seconds)` in a thread, `delay` seconds into a load run: its steady part."""

    def __init__(self, measure, seconds: float, delay: float = 1.0):
        super().__init__()
        self.measure, self.seconds, self.delay, self.result = measure, seconds, delay, None
        self.start()

    def run(self) -> None:
        time.sleep(self.delay)
        self.result = self.measure(self.seconds)


def tree_cpu_ms(pb, root: int) -> float:
    """CPU time of root and its descendants, with what each reaped of its children (utime,
    stime, cutime, cstime): what a process tree spent, whoever forked whom."""
    ticks = 0
    for pid in pb._descendants(pb._read_procs(), [root]):
        with contextlib.suppress(OSError, ValueError):
            stat = Path(f"/proc/{pid}/stat").read_bytes()
            ticks += sum(int(f) for f in stat[stat.rindex(b")") + 2:].split()[11:15])
    return ticks * 1000 / os.sysconf("SC_CLK_TCK")


def sessions(bench: Path, pb, target: Target, users_file: str, clients: int, seconds: float,
             raw_out=None) -> dict:
    """pop3bench sessions; with the server tree's CPU over its steady part per session."""
    def server_cpu(window: float) -> float:
        start = tree_cpu_ms(pb, target.pid)
        time.sleep(window)
        return tree_cpu_ms(pb, target.pid) - start

    window = Window(server_cpu, max(seconds - 2, seconds / 2))
    data = pop3bench(bench, "sessions", target.port, target.label,
                              "--users-file", users_file, "-c", str(clients), "-d", str(seconds),
                              *(["--tls"] if target.mode == "tls" else []), raw_out=raw_out)
    window.join()
    med = data.get("median", data)
    if med.get("sessions_per_s"):
        med["cpu_ms_per_session"] = round(1000 * med["machine_busy_cores"] /
                                          med["sessions_per_s"], 1)
        med["server_cpu_ms_per_session"] = round(
            window.result / (med["sessions_per_s"] * window.seconds), 1)
    return med


def tree_pss(pb, root: int, names=()) -> dict[int, tuple[int, str]]:
    """pid -> (Pss KiB, role) for root and its descendants; the role is the process title's
    first three words, the program without its directory and user `names` as <user>."""
    procs = pb._read_procs()
    out = {}
    for pid in pb._descendants(procs, [root]):
        mem = pb._mem_of(pid)
        if mem is not None:
            words = procs[pid][2].split()[:3] or [procs[pid][1]]
            title = " ".join([os.path.basename(words[0]), *words[1:]])
            for name in names:
                title = title.replace(name, "<user>")
            out[pid] = (mem["Pss"], title)
    return out


def idle(pb, target: Target, users: list, n: int, settle: float = 1.5) -> dict:
    """n authenticated sessions held (USER, PASS, STAT): the PSS they cost."""
    before = tree_pss(pb, target.pid)
    context = pb.make_sslctx() if target.mode == "tls" else None

    async def hold() -> tuple[dict, int, dict]:
        gate, conns, errors = asyncio.Semaphore(8), [], {}

        async def open_one(user):
            async with gate:
                try:
                    async with asyncio.timeout(60):
                        reader, writer, _, _ = await pb.a_open_auth(
                            "127.0.0.1", target.port, user.name, user.password, target.mode,
                            context)
                        writer.write(b"STAT\r\n")
                        pb._expect_ok(await reader.readline(), "stat")
                    conns.append((reader, writer))
                except (OSError, pb.POPError, TimeoutError, ssl.SSLError) as error:
                    kind = f"{type(error).__name__}: {str(error)[:80]}"
                    errors[kind] = errors.get(kind, 0) + 1

        await asyncio.gather(*(open_one(users[i % len(users)]) for i in range(n)))
        await asyncio.sleep(settle)
        held = tree_pss(pb, target.pid, [u.name for u in users])
        for reader, writer in conns:
            with contextlib.suppress(OSError, pb.POPError, TimeoutError, ssl.SSLError):
                async with asyncio.timeout(30):
                    writer.write(b"QUIT\r\n")
                    await reader.readline()
            writer.close()
        return held, len(conns), errors

    held, opened, errors = asyncio.run(hold())
    new = {pid: v for pid, v in held.items() if pid not in before}
    # Until the sessions' processes are gone; a helper the logins started (a Dovecot auth
    # worker: len(new) not a multiple of the sessions) may stay.
    stay, deadline = len(new) % max(opened, 1), time.monotonic() + 15
    while sum(os.path.exists(f"/proc/{pid}") for pid in new) > stay and \
            time.monotonic() < deadline:
        time.sleep(0.1)
    grown = sum(max(0, held[pid][0] - before[pid][0]) for pid in held if pid in before)
    roles: dict[str, list[int]] = {}
    for pss, role in new.values():
        roles.setdefault(role, []).append(pss)
    per = max(opened, 1)
    result = {"opened": opened, "errors": errors,
              "pss_kb_per_session": round((sum(p for p, _ in new.values()) + grown) / per, 1),
              "procs_per_session": round(len(new) / per, 2),
              "grown_kb_per_session": round(grown / per, 1),
              "tree_delta_kb_per_session": round(
                  (sum(p for p, _ in held.values()) - sum(p for p, _ in before.values())) / per,
                  1),
              "roles": {role: {"n": len(v), "pss_kb_mean": round(statistics.fmean(v), 1)}
                        for role, v in sorted(roles.items())}}
    print(f"  {time.strftime('%H:%M:%S')} {target.label:<15} idle -n {n}: "
          f"{result['pss_kb_per_session']} KiB/session, {result['procs_per_session']} "
          f"procs/session, errors {errors or 0}", flush=True)
    return result


