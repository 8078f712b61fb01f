"""The real packages, end to end (root): `make package` builds the .deb and the RPM in a
temporary copy of the tree and lints them; the .deb is installed with apt-get, its units pass
`systemd-analyze verify`, the installed /usr/sbin/popper is started exactly as each unit starts
it (on a free loopback port instead of 110/995), a real user logs in through the installed
/etc/pam.d/pop3 and fetches a message; the built maintainer scripts, run with stub systemd
tools, keep the socket units listening across an upgrade and stop them on removal; postinst
makes the hashed spool directories; reinstall and purge are idempotent and purge leaves every
spool with mail untouched. The RPM is installed into a private rpm root.

The tests of this module run in file order and share one build and one installation
(module fixture); the last test purges, and the fixture purges again whatever happened.
"""

from __future__ import annotations

import configparser
import contextlib
import grp
import os
import poplib
import pwd
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers.sysusers import SystemUsers, is_root, world_readable_tmpdir
from tests.server_harness import free_port
from tests.helpers.repo import REPO

PACKAGE = "qpopper-py"
UNIT_DIR = Path("/lib/systemd/system")
CONFIG = Path("/etc/qpopper/qpopper.config")
POSTINST = Path(f"/var/lib/dpkg/info/{PACKAGE}.postinst")
STATE = Path("/var/lib/qpopper-py/created")
SYS_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"       # Debian's python3, never pyenv's (recipe P1)
APT = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "-y", "-q"]
TOOLS = ("apt-get", "dpkg-buildpackage", "lintian", "rpmbuild", "rpmlint", "rpm",
         "systemd-analyze", "systemd-socket-activate", "make", "git")
LETTERS = "abcdefghijklmnopqrstuvwxyz"
SNAKEOIL = ("/etc/ssl/certs/ssl-cert-snakeoil.pem", "/etc/ssl/private/ssl-cert-snakeoil.key")
SPOOL = (b"From sender1@example.org Mon Nov  2 10:01:00 2026\n"
         b"From: Sender <sender1@example.org>\nSubject: packaged hello\n\nfirst body line\n\n"
         b"From sender2@example.org Mon Nov  2 10:02:00 2026\n"
         b"From: Sender <sender2@example.org>\nSubject: second\n\nanother body\n\n")

pytestmark = [
    pytest.mark.root, pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not is_root(), reason="needs root: installs and purges a Debian package"),
    pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                       reason="packaging tools missing (make debs installs them): "
                              + ", ".join(t for t in TOOLS if shutil.which(t) is None)),
]


def run(*cmd: str, check: bool = True, timeout: float = 180, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=SYS_PATH, DEBIAN_FRONTEND="noninteractive")
    env.pop("PYTHONPATH", None)
    env.update(kw.pop("env", {}))
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, **kw)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> {result.returncode}\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def installed_version() -> str | None:
    result = run("dpkg-query", "-W", "-f=${Status} ${Version}", PACKAGE, check=False)
    words = result.stdout.split()
    return words[-1] if result.returncode == 0 and "installed" in words[:3] else None


def account_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def exec_start(unit_name: str) -> list[str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str
    parser.read(UNIT_DIR / unit_name)
    return shlex.split(parser["Service"]["ExecStart"])


def tree_snapshot(root: str) -> dict[str, tuple]:
    """Path -> (mode, uid, gid, size, mtime, content of files) for everything under root."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            content = Path(path).read_bytes() if os.path.isfile(path) else None
            snap[path] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, content)
    return snap


def build_leftovers() -> tuple:
    """What a build in the checkout would leave: dpkg-buildpackage's outputs in '..', and
    untracked or ignored files under debian/, rpm/, .pybuild/, build/."""
    beside = sorted(n for n in os.listdir(REPO.parent) if n.startswith(f"{PACKAGE}_"))
    status = run("git", "-C", str(REPO), "status", "--porcelain", "--ignored", "--",
                 "debian", "rpm", ".pybuild", "build", "dist", check=False).stdout
    return beside, status


# ---- the build and the installation, shared by the module ---------------------------------------
class Installation:
    def __init__(self, workdir: str):
        self.workdir = workdir
        self.out = os.path.join(workdir, "dist")
        self.build_log = ""
        self.deb = self.rpm = ""
        self.pop_account_existed = account_exists("pop")
        self.snakeoil_existed = os.path.exists(SNAKEOIL[0])


@pytest.fixture(scope="module")
def packages():
    if installed_version() is not None:
        pytest.skip(f"{PACKAGE} is already installed on this machine; not touching it")
    leftovers_before = build_leftovers()
    with tempfile.TemporaryDirectory(prefix="qpt-pkg-") as workdir:
        inst = Installation(workdir)
        started = time.monotonic()
        result = run("make", "-C", str(REPO), "package", f"PKG_OUT={inst.out}", check=False,
                     timeout=200)
        inst.build_log = result.stdout + result.stderr
        assert result.returncode == 0, inst.build_log[-5000:]
        inst.build_seconds = time.monotonic() - started
        # arch-dependent: the C accelerators (docs/accelerators.md, "Packaging")
        deb_arch = run("dpkg", "--print-architecture").stdout.strip()
        rpm_arch = run("rpm", "--eval", "%{_arch}").stdout.strip()
        inst.deb = next(str(p) for p in Path(inst.out).glob(f"{PACKAGE}_*_{deb_arch}.deb"))
        inst.rpm = next(str(p) for p in Path(inst.out).glob(f"{PACKAGE}-*.{rpm_arch}.rpm"))
        # The build ran in a copy: no build output in the checkout, nor beside it in '..'.
        assert build_leftovers() == leftovers_before
        try:
            yield inst
        finally:
            if installed_version() is not None:
                run(*APT, "purge", PACKAGE, check=False)
            if not inst.pop_account_existed and account_exists("pop"):
                run("deluser", "--system", "pop", check=False)
            if not inst.snakeoil_existed:          # made by postinst; ssl-cert's, not ours
                hash_links = [str(p) for p in Path("/etc/ssl/certs").iterdir()
                              if p.is_symlink() and os.readlink(p) == os.path.basename(SNAKEOIL[0])]
                for path in (*SNAKEOIL, *hash_links):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)


@pytest.fixture(scope="module")
def users():
    with SystemUsers() as made:
        yield made


@pytest.fixture(scope="module")
def alice(users):
    """A real user with a spool in /var/mail (the shipped spool-dir), owned user:mail 0600,
    as Debian's delivery agents make it; a yescrypt password, as Debian's PAM sets it."""
    user = users.create("pkg", password="S3cret-pkg-alice", crypt_method=None)
    spool = Path("/var/mail") / user.name
    fd = os.open(spool, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(SPOOL)
    os.chown(spool, user.uid, grp.getgrnam("mail").gr_gid)
    yield user
    with contextlib.suppress(FileNotFoundError):
        spool.unlink()


# ---- running popper as the units do -------------------------------------------------------------
def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Until something accepts on the port (systemd-socket-activate binds before it forks)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: "
                                 f"{proc.stderr.read().decode(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture(scope="module", autouse=True)
def private_brakes():
    """The brute-force brakes count failures per client address in one file for the whole
    host (auth-brakes-file, /run/qpopper): 127.0.0.1's failures from every other test would
    delay these logins. Each server here gets a private file instead (a test override)."""
    directory = tempfile.mkdtemp(prefix="qpt-brakes-")         # 0700 root, like /run/qpopper
    TEST_OVERRIDES.append(f"--auth-brakes-file={directory}/auth-brakes.sqlite")
    yield
    TEST_OVERRIDES.clear()
    shutil.rmtree(directory, ignore_errors=True)


TEST_OVERRIDES: list[str] = []


def stop(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM (unless it already ended), SIGKILL if it outlives `timeout`; its stderr pipe
    closed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    proc.stderr.close()


@contextlib.contextmanager
def master_as_service(*overrides: str):
    """qpopper.service's ExecStart, moved to free loopback ports (`--listen=` and
    `--tls-listen=` clear the unit's 110 and 995), with NOTIFY_SOCKET like Type=notify.
    Yields (port, tls_port, proc, notify socket, first notification)."""
    port, tls_port = free_port(), free_port()
    argv = exec_start("qpopper.service") + [
        "--listen=", f"--listen=127.0.0.1:{port}",
        "--tls-listen=", f"--tls-listen=127.0.0.1:{tls_port}", *TEST_OVERRIDES, *overrides]
    with tempfile.TemporaryDirectory(prefix="qpt-notify-") as tmp:
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(os.path.join(tmp, "notify"))
        notify.settimeout(0.2)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, cwd="/",
                                env={"PATH": SYS_PATH, "NOTIFY_SOCKET": notify.getsockname()})
        try:
            ready = ""
            deadline = time.monotonic() + 20
            while "READY=1" not in ready:
                if proc.poll() is not None:
                    raise AssertionError(f"the installed popper exited with {proc.returncode} "
                                         f"before READY=1:\n{proc.stderr.read().decode()}")
                assert time.monotonic() < deadline, "no READY=1 from the installed popper"
                with contextlib.suppress(socket.timeout):
                    ready += notify.recv(4096).decode()
            notify.settimeout(15)
            yield port, tls_port, proc, notify, ready
        finally:
            stop(proc, timeout=40)
            notify.close()


@contextlib.contextmanager
def socket_unit_instance(template: str, *overrides: str):
    """What a socket unit + its template service do (Accept=yes, StandardInput=socket):
    qpopper.socket + qpopper@.service, qpopper-tls.socket, poppassd.socket."""
    port = free_port()
    argv = ["systemd-socket-activate", "--accept", "--inetd", "-l", f"127.0.0.1:{port}",
            *exec_start(template), *TEST_OVERRIDES, *overrides]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, cwd="/", env={"PATH": SYS_PATH})
    try:
        wait_for_port(port, proc)
        yield port
    finally:
        stop(proc, timeout=10)


def snakeoil_context() -> ssl.SSLContext:
    """The installed certificate is the snake-oil one: encryption without verification."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


def fetch_first_message(port: int, user, *, tls: str = "") -> bytes:
    if tls == "implicit":
        pop = poplib.POP3_SSL("127.0.0.1", port, timeout=15, context=snakeoil_context())
    else:
        pop = poplib.POP3("127.0.0.1", port, timeout=15)
    try:
        if tls == "stls":
            pop.stls(snakeoil_context())
        pop.user(user.name)
        pop.pass_(user.password)
        count, _ = pop.stat()
        assert count == 2
        _, lines, _ = pop.retr(1)
        pop.quit()
        return b"\n".join(lines)
    finally:
        pop.close()


# ---- the tests, in order -------------------------------------------------------------------------
def test_build_and_lint(packages):
    log = packages.build_log
    assert "== lintian" in log and "== rpmlint" in log
    lintian = log.split("== lintian", 1)[1].split("== rpmbuild", 1)[0]
    # lintian ran with --fail-on error; we also want no warnings (overrides are justified).
    tags = [l for l in lintian.splitlines() if re.match(r"^[EW]: ", l)]
    assert tags == [], "\n".join(tags)
    assert re.search(r"1 packages and 1 specfiles checked; 0 errors, 0 warnings", log)
    # The build-time tests ran under Debian's python3 (pybuild), not pyenv's.
    assert re.search(r"=+ \d+ passed", log), log[-3000:]
    assert packages.build_seconds < 120


def test_the_deb_ships_the_administrators_documentation(packages):
    names = run("dpkg-deb", "-c", packages.deb).stdout
    doc = f"./usr/share/doc/{PACKAGE}/"
    for name in ("README.Debian", "README.md", "operations.md", "privsep.md"):
        assert re.search(rf" {re.escape(doc + name)}(\.gz)?$", names, re.M), name


SOCKETS = ("qpopper.socket", "qpopper-tls.socket", "poppassd.socket")


def systemd_calls(deb: str, *steps: tuple[str, ...]) -> list[list[str]]:
    """Run the .deb's own maintainer scripts (`(script, args...)` in order; postinst only from
    debhelper's part on: the rest changes the system) as if systemd were PID 1, with stubs for
    the tools they call that only record their arguments; the recorded
    deb-systemd-invoke/systemctl calls of each step."""
    with tempfile.TemporaryDirectory(prefix="qpt-maint-") as t:
        run("dpkg-deb", "-e", deb, f"{t}/ctl")
        os.makedirs(f"{t}/bin")
        os.makedirs(f"{t}/run-systemd")
        for tool in ("deb-systemd-invoke", "deb-systemd-helper", "systemctl", "py3compile",
                     "py3clean"):
            Path(f"{t}/bin/{tool}").write_text(f'#!/bin/sh\necho "{tool} $*" >> {t}/calls\n')
            os.chmod(f"{t}/bin/{tool}", 0o755)
        for name in ("preinst", "postinst", "prerm"):
            if not (Path(t) / "ctl" / name).exists():      # no script: nothing to call
                Path(f"{t}/{name}").write_text("#!/bin/sh\n")
                continue
            text = (Path(t) / "ctl" / name).read_text()
            if name == "postinst":
                text = "#!/bin/sh\nset -e\n" + text[text.index("# Automatically added by dh_"):]
            Path(f"{t}/{name}").write_text(text.replace("/run/systemd/system", f"{t}/run-systemd"))
        found = []
        for script, *args in steps:
            Path(f"{t}/calls").write_text("")
            run("sh", f"{t}/{script}", *args, env={"PATH": f"{t}/bin:{SYS_PATH}"})
            found.append([line.split() for line in Path(f"{t}/calls").read_text().splitlines()
                          if line.startswith(("deb-systemd-invoke", "systemctl"))])
        return found


def test_socket_units_survive_an_upgrade_and_stop_on_removal(packages):
    """An administrator who runs the socket units: the upgrade leaves them listening and
    restarts the running ones after it; removal stops them (as the RPM's %preun); a first
    install starts none of them (they share ports with qpopper.service)."""
    preinst, postinst, prerm_upgrade = systemd_calls(
        packages.deb, ("preinst", "upgrade", "0.0.9"), ("postinst", "configure", "0.0.9"),
        ("prerm", "upgrade", "0.1.0"))
    stopped = {u for call in preinst + prerm_upgrade if call[1] == "stop" for u in call[2:]}
    assert not stopped & set(SOCKETS), preinst + prerm_upgrade
    restarted = {u for call in postinst if call[1] == "try-restart" for u in call[2:]}
    assert set(SOCKETS) <= restarted, postinst
    (first_install,) = systemd_calls(packages.deb, ("postinst", "configure"))
    started = {u for call in first_install if call[1] in ("start", "restart") for u in call[2:]}
    assert started == {"qpopper.service"}, first_install
    (prerm_remove,) = systemd_calls(packages.deb, ("prerm", "remove"))
    stopped = {u for call in prerm_remove if call[1] == "stop" for u in call[2:]}
    assert stopped == {"qpopper.service", *SOCKETS}, prerm_remove


def test_install_with_apt(packages):
    installed = run(*APT, "install", "--no-install-recommends", packages.deb)
    # postinst made the accounts, directories and certificate before running --check-config
    assert "cannot start" not in installed.stdout + installed.stderr, installed.stderr
    assert run("popper", "--check-config", "-f", str(CONFIG), "--listen=110",
               "--tls-listen=995").returncode == 0
    assert installed_version() == "0.1.0"
    for path in ("/usr/sbin/popper", "/usr/sbin/popauth", "/etc/pam.d/pop3", str(CONFIG),
                 "/usr/share/man/man8/popper.8.gz", "/usr/share/man/man8/popauth.8.gz",
                 "/usr/share/man/man5/qpopper.config.5.gz", "/usr/sbin/poppassd",
                 "/etc/pam.d/poppassd", "/usr/share/man/man8/poppassd.8.gz"):
        assert os.path.exists(path), path
    conffiles = run("dpkg-query", "-W", "-f=${Conffiles}", PACKAGE).stdout
    assert "/etc/pam.d/pop3" in conffiles and str(CONFIG) in conffiles
    # Only the masters are enabled; the socket units are their disabled alternative.
    wants = Path("/etc/systemd/system/multi-user.target.wants")
    assert (wants / "qpopper.service").is_symlink()
    sockets = Path("/etc/systemd/system/sockets.target.wants")
    assert not (sockets / "qpopper.socket").exists()
    assert not (sockets / "qpopper-tls.socket").exists()
    assert not (sockets / "poppassd.socket").exists()          # port 106: never by default
    # postinst: the pop account that owns pop.auth; /var/mail root:mail with group write+setgid.
    assert account_exists("pop")
    # The snake-oil certificate the shipped config names exists (made by ssl-cert's tool).
    assert os.path.exists(SNAKEOIL[0])
    key = os.stat(SNAKEOIL[1])
    assert key.st_mode & 0o077 in (0, 0o040) and key.st_uid == 0   # root, group ssl-cert at most
    st = os.stat("/var/mail")
    assert st.st_gid == grp.getgrnam("mail").gr_gid and st.st_mode & 0o2070 == 0o2070


USES_ACCELERATORS = ("from qpopper.spool import mbox_send as m, mbox_batch as b; "
                     "print(m.wire_join is m.wire_join_c is not None, m.wire_join_c.__module__, "
                     "b.candidates is b.compiled_candidates is not None, "
                     "b.header_block is b.compiled_header_block is not None, "
                     "b.plain_from_lines is b.compiled_plain_from_lines is not None)")
USED = ["True", "qpopper.spool._wire", "True", "True", "True"]
"""RETR converts with the compiled wire pass and the cold mbox scan uses the compiled one."""
ACCELERATORS = ("_wire", "_scan")


def test_the_installed_server_converts_with_the_compiled_accelerator():
    """The .deb ships qpopper/spool/_wire*.so and _scan*.so, linked with Debian's hardening
    (full RELRO: bind now), and the installed package's Python imports them: RETR and the cold
    scan use the C passes."""
    files = run("dpkg", "-L", PACKAGE).stdout.split()
    for name in ACCELERATORS:
        (so,) = [f for f in files if re.search(rf"/qpopper/spool/{name}\.[^/]*\.so$", f)]
        dynamic = run("readelf", "-d", "-W", so).stdout
        assert re.search(r"\(FLAGS\)\s+BIND_NOW|\(FLAGS_1\)\s+Flags: NOW", dynamic), dynamic
        assert "GNU_RELRO" in run("readelf", "-l", "-W", so).stdout
    # isolated, from /: the installed package, never the checkout's tree
    result = run("/usr/bin/python3", "-I", "-c", USES_ACCELERATORS, cwd="/")
    assert result.stdout.split() == USED, result.stdout


def test_installed_popauth_manages_a_store_owned_by_the_pop_account(alice):
    with world_readable_tmpdir("qpt-popauth-") as top:
        store = os.path.join(top, "auth", "pop.auth")
        run("/usr/sbin/popauth", "--file", store, "-init")
        st = os.stat(store)
        assert (st.st_uid, st.st_mode & 0o777) == (pwd.getpwnam("pop").pw_uid, 0o600)
        run("/usr/sbin/popauth", "--file", store, "-user", alice.name, "apop-secret")
        assert alice.name in run("/usr/sbin/popauth", "--file", store, "-list").stdout.split()


def test_installed_units_verify():
    units = sorted(str(p) for p in [*UNIT_DIR.glob("qpopper*"), *UNIT_DIR.glob("poppassd*")])
    assert len(units) == 7
    result = run("systemd-analyze", "verify", "--man=no", *units, check=False)
    assert result.returncode == 0 and result.stdout + result.stderr == "", (
        result.stdout + result.stderr)


def test_shipped_policy_refuses_passwords_without_tls(alice):
    with master_as_service() as (port, _, proc, _, ready):
        assert "READY=1" in ready
        pop = poplib.POP3("127.0.0.1", port, timeout=15)
        try:
            assert "USER" not in pop.capa()      # clear-text-password = tls, no TLS yet
            with pytest.raises(poplib.error_proto):
                pop.user(alice.name)
                pop.pass_(alice.password)
        finally:
            pop.close()
        assert proc.poll() is None


def test_master_as_qpopper_service_serves_a_real_user(alice):
    # The unit's command line, plus one override: passwords without TLS (TLS is tested below).
    with master_as_service("--clear-text-password=always") as (port, _, proc, notify, ready):
        assert "READY=1" in ready
        assert b"Subject: packaged hello" in fetch_first_message(port, alice)
        # ExecReload: HUP re-reads the configuration and says so to systemd.
        proc.send_signal(signal.SIGHUP)
        messages = ""
        while "READY=1" not in messages.split("RELOADING=1", 1)[-1]:
            messages += notify.recv(4096).decode()
        assert "RELOADING=1" in messages
        assert b"first body line" in fetch_first_message(port, alice)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0


def test_socket_unit_instance_serves_a_real_user(alice):
    with socket_unit_instance("qpopper@.service", "--clear-text-password=always") as port:
        assert b"Subject: packaged hello" in fetch_first_message(port, alice)
        # The login went through the installed /etc/pam.d/pop3: deny there, and it fails.
        pam_file = Path("/etc/pam.d/pop3")
        original = pam_file.read_bytes()
        try:
            pam_file.write_bytes(b"auth requisite pam_deny.so\n" + original)
            with pytest.raises(poplib.error_proto, match="-ERR"):
                fetch_first_message(port, alice)
        finally:
            pam_file.write_bytes(original)
        assert b"Subject: packaged hello" in fetch_first_message(port, alice)


def test_installed_poppassd_checks_passwords_through_its_pam_service(alice):
    """poppassd.socket + poppassd@.service (Accept=yes, StandardInput=socket), on a free
    port: the old password is checked through the installed /etc/pam.d/poppassd. Nothing is
    changed (quit before newpass): alice's password is used by the other tests. It reads the
    installed configuration; its brakes count in the tests' private file, as the servers'."""
    with socket_unit_instance("poppassd@.service") as port, \
            socket.create_connection(("127.0.0.1", port), timeout=15) as conn, \
            conn.makefile("rwb") as f:
        def say(line: str) -> bytes:
            f.write(line.encode() + b"\r\n")
            f.flush()
            return f.readline()
        assert f.readline().startswith(b"200 poppassd (qpopper-py ")
        assert say(f"user {alice.name}") == b"200 Your password please.\r\n"
        assert say(f"pass {alice.password}") == b"200 Your new password please.\r\n"
        assert say("quit") == b"200 Bye.\r\n"


def test_stls_and_port_995_of_the_service(alice):
    # The shipped configuration, unchanged: passwords are accepted inside TLS.
    with master_as_service() as (port, tls_port, _, _, ready):
        assert "READY=1" in ready
        assert b"Subject: packaged hello" in fetch_first_message(port, alice, tls="stls")
        assert b"Subject: packaged hello" in fetch_first_message(tls_port, alice,
                                                                tls="implicit")


def test_port_995_socket_unit_instance(alice):
    with socket_unit_instance("qpopper-tls@.service") as port:
        assert b"Subject: packaged hello" in fetch_first_message(port, alice, tls="implicit")
    with socket_unit_instance("qpopper@.service") as port:
        assert b"Subject: packaged hello" in fetch_first_message(port, alice, tls="stls")


@contextlib.contextmanager
def config_with(text: str):
    original = CONFIG.read_bytes()
    try:
        CONFIG.write_bytes(original + text.encode())
        yield
    finally:
        CONFIG.write_bytes(original)


def run_postinst() -> None:
    run(str(POSTINST), "configure", "0.1.0")


@pytest.fixture(scope="module")
def hashed_spools():
    with world_readable_tmpdir("qpt-hash-") as top:
        yield top


def mail_state(path: str) -> tuple:
    st = os.stat(path)
    return st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, Path(path).read_bytes()


def existing_mail(hashed_spools: str, level: int, user) -> tuple[str, str]:
    """(directory, mail file) that existed before postinst ran: a 0700 letter directory."""
    directory = os.path.join(hashed_spools, f"spool{level}", "q")
    return directory, os.path.join(directory, user.name)


def test_postinst_makes_hashed_spool_directories(hashed_spools, alice):
    mail_gid = grp.getgrnam("mail").gr_gid
    for level in (1, 2):
        spool = os.path.join(hashed_spools, f"spool{level}")
        os.mkdir(spool)
        os.chown(spool, 0, mail_gid)
        os.chmod(spool, 0o2775)
        kept, mail = existing_mail(hashed_spools, level, alice)
        os.mkdir(kept, 0o700)
        Path(mail).write_bytes(b"From x\nSubject: keep me\n\nbody\n")
        before = (os.stat(kept).st_mode, mail_state(mail))
        with config_with(f"\nset spool-dir = {spool}\nset hash-spool = {level}\n"
                         f"set temp-dir = {spool}/tmp-drops\n"):
            run_postinst()
            first = tree_snapshot(spool)
            run_postinst()                               # idempotent: nothing changes
            assert tree_snapshot(spool) == first
        expected = {os.path.join(spool, a) for a in LETTERS}
        if level == 2:
            expected |= {os.path.join(spool, a, b) for a in LETTERS for b in LETTERS}
        expected.add(os.path.join(spool, "tmp-drops"))
        made = {path for path in first if os.path.isdir(path)}
        assert made == expected                          # and nothing else
        for path in expected - {kept}:
            st = os.stat(path)
            assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, mail_gid, 0o2775), path
        assert (os.stat(kept).st_mode, mail_state(mail)) == before   # existing mail untouched
        recorded = set(STATE.read_text().split())
        assert expected - {kept} <= recorded and kept not in recorded


def test_reinstall_from_a_shell_whose_path_starts_with_another_python(packages, hashed_spools,
                                                                    tmp_path):
    """A root shell with pyenv's (or any other) python3 first on PATH: postinst uses Debian's
    /usr/bin/python3, so the spool directories are still made; and when the helper cannot run
    at all, the installation fails instead of going on without them."""
    other = tmp_path / "other-python"
    run("/usr/bin/python3", "-m", "venv", "--without-pip", str(other))   # no qpopper in it
    spool = os.path.join(hashed_spools, "spool-other-python")
    os.mkdir(spool)
    os.chown(spool, 0, grp.getgrnam("mail").gr_gid)
    os.chmod(spool, 0o2775)
    shell_path = f"{other}/bin:{SYS_PATH}"
    assert run("sh", "-c", "command -v python3", env={"PATH": shell_path}).stdout.strip() \
        == f"{other}/bin/python3"
    with config_with(f"\nset spool-dir = {spool}\nset hash-spool = 1\n"):
        run("dpkg", "-i", packages.deb, env={"PATH": shell_path})
        assert sorted(os.listdir(spool)) == sorted(LETTERS)
        # Had it used that python3 (which cannot import qpopper), the script fails loudly
        # instead of going on without the directories.
        result = run("sh", "-c", f"sed 's|/usr/bin/python3 -m|{other}/bin/python3 -m|' "
                     f"{POSTINST} > {tmp_path}/postinst && sh {tmp_path}/postinst configure 0.1.0",
                     check=False, env={"PATH": shell_path},
                     cwd=str(tmp_path))   # not the checkout: `python3 -m` would import it
    assert result.returncode != 0
    assert re.search(r"qpopper.tools.maintscript [a-z-]+ failed", result.stderr)


def test_reinstall_and_install_twice_are_idempotent(packages, alice):
    spool = Path("/var/mail") / alice.name
    before = (spool.read_bytes(), STATE.read_text(), pwd.getpwnam("pop").pw_uid,
              os.stat("/var/mail").st_mode)
    run(*APT, "install", "--no-install-recommends", packages.deb)              # already there
    run(*APT, "install", "--no-install-recommends", "--reinstall", packages.deb)   # upgrade path
    assert installed_version() == "0.1.0"
    after = (spool.read_bytes(), STATE.read_text(), pwd.getpwnam("pop").pw_uid,
             os.stat("/var/mail").st_mode)
    assert after == before
    with master_as_service("--clear-text-password=always") as (port, *_):
        assert b"Subject: packaged hello" in fetch_first_message(port, alice)


def test_purge_removes_only_what_the_package_made(packages, alice, hashed_spools):
    mail_spool = str(Path("/var/mail") / alice.name)
    var_mail = os.stat("/var/mail")
    mail_before = mail_state(mail_spool)
    kept = [existing_mail(hashed_spools, level, alice)[1] for level in (1, 2)]
    kept_before = [mail_state(k) for k in kept]
    # The administrator's pop.auth store (default place, made with popauth -init) must survive.
    store = Path("/var/lib/qpopper/popauth/pop.auth")
    made_dirs = [d for d in (store.parent.parent, store.parent) if not d.exists()]
    if not store.exists():
        run("/usr/sbin/popauth", "-init")
        run("/usr/sbin/popauth", "-user", alice.name, "apop-secret")
    store_before = mail_state(str(store))
    try:
        run(*APT, "purge", PACKAGE)
        assert mail_state(str(store)) == store_before
        assert account_exists("pop")                     # it owns the store that is left
    finally:
        if made_dirs:
            shutil.rmtree(made_dirs[0])
    assert installed_version() is None
    assert not CONFIG.exists() and not Path("/etc/pam.d/pop3").exists()
    assert not Path("/usr/sbin/popper").exists() and not STATE.parent.exists()
    assert not Path("/etc/systemd/system/multi-user.target.wants/qpopper.service").exists()
    # Every spool with mail is untouched; the empty hashed directories postinst made are gone.
    assert mail_state(mail_spool) == mail_before
    after = os.stat("/var/mail")
    assert (after.st_mode, after.st_uid, after.st_gid) == (
        var_mail.st_mode, var_mail.st_uid, var_mail.st_gid)
    assert [mail_state(k) for k in kept] == kept_before
    for level in (1, 2):
        spool = os.path.join(hashed_spools, f"spool{level}")
        assert sorted(os.listdir(spool)) == ["q"]
    # Purging again is a no-op (apt no longer knows a package installed from a file: dpkg).
    again = run("dpkg", "--purge", PACKAGE)
    assert "isn't installed" in again.stderr + again.stdout


def test_rpm_installs_into_a_private_root(packages):
    with tempfile.TemporaryDirectory(prefix="qpt-rpmroot-") as root:
        run("rpm", "--root", root, "--initdb")
        run("rpm", "--root", root, "--nodeps", "--noscripts", "-i", packages.rpm)
        listed = run("rpm", "--root", root, "-ql", PACKAGE).stdout.split()
        for path in ("/usr/sbin/popper", "/usr/sbin/popauth", "/etc/pam.d/pop3",
                     "/etc/qpopper/qpopper.config", "/usr/share/man/man8/popauth.8.gz",
                     "/usr/lib/systemd/system/qpopper.service",
                     "/usr/lib/systemd/system/qpopper-tls@.service",
                     "/usr/share/man/man8/popper.8.gz", "/usr/sbin/poppassd",
                     "/etc/pam.d/poppassd", "/usr/lib/systemd/system/poppassd.socket"):
            assert path in listed and os.path.exists(root + path), path
        assert "password-auth" in Path(root, "etc/pam.d/pop3").read_text()
        site = next(Path(root, "usr/lib").glob("python3*/site-packages"))
        # arch-dependent site-packages (sitearch), with the C accelerator, which imports
        for name in ACCELERATORS:
            assert list(site.glob(f"qpopper/spool/{name}.*.so")), \
                sorted(map(str, site.rglob("*.so")))
        result = run("/usr/bin/python3", "-c", USES_ACCELERATORS, cwd="/",
                     env={"PYTHONPATH": str(site)})
        assert result.stdout.split() == USED, result.stdout
        # The packaged popper reads the packaged config (with Fedora's certificate paths).
        result = run("/usr/bin/python3", f"{root}/usr/sbin/popper", "--show-config",
                     "-f", f"{root}/etc/qpopper/qpopper.config",
                     env={"PYTHONPATH": str(site)})
        assert re.search(r"^tls-server-cert-file\s+/etc/pki/tls/certs/qpopper.pem", result.stdout,
                         re.M)
        assert re.search(r"^clear-text-password\s+tls\s", result.stdout, re.M)
        # The scriptlets are valid sh (they cannot run in an empty root).
        scripts = run("rpm", "-qp", "--scripts", packages.rpm).stdout
        for body in re.split(r"^\S+ scriptlet \(using /bin/sh\):\n", scripts, flags=re.M)[1:]:
            check = run("sh", "-n", input=body, check=False)
            assert check.returncode == 0, check.stderr
        assert "getent passwd pop" in scripts and "maintscript spool-dirs" in scripts
