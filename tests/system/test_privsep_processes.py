"""The process model of docs/privsep.md, read from the kernel while a real server serves.

The pre-login process — the one that reads the client's bytes before login, in the TLS
handshake and in AUTHORIZATION — runs as the unprivileged prelogin-user, with no groups, no
capabilities, NoNewPrivs, and its root is the empty prelogin-chroot directory; the monitor
above it stays root and never holds the TLS key; the user session runs as the user and
holds no trace of the TLS private key (its memory is searched for the key's primes).
"""

from __future__ import annotations

import contextlib
import os
import platform
import pwd
import resource
import poplib
import signal
import socket
import ssl
import subprocess
import time

import pytest
from cryptography.hazmat.primitives import serialization

from qpopper.server import prelogin_filter, privsep
from qpopper.config import Config
from tests.helpers.process_memory import memory_holds
from tests.helpers.sysusers import PRELOGIN_USER, in_child, is_root, make_spool
from tests.helpers.messages import mbox
from tests.server_harness import Site, login, proc_status, processes_of, read_greeting, wait_until
from tests.helpers.tls_site import TlsSite, client_context, pipelined

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not is_root(), reason="needs root: the privilege split and "
                                                        "/proc of other users' processes")]

CHROOT = "/run/qpopper/empty"
MESSAGES = (("first", "Body one.\n"), ("second", "Body two.\n"))


def the_one(server, uid: int, what: str) -> int:
    return wait_until(lambda: processes_of(server, uid), what=what)[0]


def assert_locked_in(pid: int) -> None:
    account = pwd.getpwnam(PRELOGIN_USER)
    if platform.machine() in prelogin_filter.ARCHES:
        # the system-call filter is the sandbox's last step (the account comes before it):
        # the process may still be on its way in when the uid already matches
        wait_until(lambda: proc_status(pid)["Seccomp"].strip() == "2",
                   what="the pre-login process's system-call filter (Seccomp: 2)")
    status = proc_status(pid)
    assert status["Uid"].split() == [str(account.pw_uid)] * 4, status["Uid"]
    assert status["Gid"].split() == [str(account.pw_gid)] * 4, status["Gid"]
    assert status["Groups"].strip() == ""
    assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
    assert int(status["CapBnd"], 16) == 0 and int(status["CapAmb"], 16) == 0
    assert status["NoNewPrivs"].strip() == "1"
    assert os.readlink(f"/proc/{pid}/root") == CHROOT


@pytest.fixture
def site(world_tmp, pam_service):
    s = Site(world_tmp, pam_service)
    yield s
    s.close()


def serving(site, system_users):
    """A user with two messages, and the server once its start-up probe has ended."""
    user = system_users.create()
    make_spool(site.spool_dir, user, mbox(*MESSAGES))
    server = site.server()
    wait_until(lambda: not server.children(), what="the start-up probe to end")
    return user, server


def test_authorization_runs_locked_in_and_the_monitor_above_it_is_root(site, system_users):
    user, server = serving(site, system_users)
    with socket.create_connection((server.host, server.port), timeout=10) as client:
        assert read_greeting(client).startswith(b"+OK")
        client.sendall(b"USER someone\r\n")
        assert client.recv(100).startswith(b"+OK")
        prelogin = the_one(server, pwd.getpwnam(PRELOGIN_USER).pw_uid, "the pre-login process")
        assert_locked_in(prelogin)
        monitor = int(proc_status(prelogin)["PPid"])
        assert proc_status(monitor)["Uid"].split()[0] == "0"
        assert int(proc_status(monitor)["PPid"]) == server.pid
    # after the login: the session is the user's, the pre-login process is gone
    client = login(server, user)
    try:
        assert client.stat()[0] == 2
        session = the_one(server, user.uid, "the user session")
        assert proc_status(session)["Uid"].split() == [str(user.uid)] * 4
        assert not processes_of(server, pwd.getpwnam(PRELOGIN_USER).pw_uid)
    finally:
        client.quit()


def test_with_reverse_lookup_the_filter_lets_it_end_its_helper(world_tmp, pam_service,
                                                               system_users):
    """reverse-lookup (on by default): the pre-login process kills its lookup helper once it
    has its answer (or gave up on it); its system-call filter lets it signal that pid, and
    no other (docs/privsep.md, "The pre-login process's system calls")."""
    s = Site(world_tmp, pam_service, reverse_lookup=True)
    try:
        user, server = serving(s, system_users)
        with socket.create_connection((server.host, server.port), timeout=10) as raw:
            assert read_greeting(raw).startswith(b"+OK")
            assert_locked_in(the_one(server, pwd.getpwnam(PRELOGIN_USER).pw_uid,
                                     "the pre-login process"))
        client = login(server, user)
        try:
            assert client.stat()[0] == 2
        finally:
            client.quit()
        s.syslog.wait_for(rf'\(v[\d.]+\) POP login by user "{user.name}" at \(localhost\) '
                          r'127\.0\.0\.1')
    finally:
        s.close()


def test_the_tls_handshake_runs_locked_in(world_tmp, pam_service, pki, good):
    s = TlsSite(world_tmp, pam_service, tls_support="stls",
                tls_server_cert_file=good.combined_file)
    try:
        server = s.tls_server(pki)
        wait_until(lambda: not server.children(), what="the start-up probe to end")
        with socket.create_connection((server.host, server.tls_port), timeout=10):
            # no ClientHello yet: the server waits in the handshake
            prelogin = the_one(server, pwd.getpwnam(PRELOGIN_USER).pw_uid,
                               "the pre-login process")
            assert_locked_in(prelogin)
    finally:
        s.close()


def test_the_sandbox_cannot_reach_spools_shadow_the_store_or_the_key(world_tmp, system_users,
                                                                    good):
    """The sandbox the pre-login process enters (its /proc shows it, above), entered by a
    forked child here: every file that matters is out of its reach."""
    user = system_users.create()
    spool_dir = os.path.join(world_tmp, "spool")
    os.makedirs(spool_dir, exist_ok=True)
    spool = make_spool(spool_dir, user, b"From x\n\nsecret\n")
    store = os.path.join(world_tmp, "pop.auth")
    with open(store, "wb") as f:
        f.write(b"secret")
    os.chmod(store, 0o600)
    cfg = Config.defaults().replace(prelogin_user=PRELOGIN_USER, prelogin_chroot=CHROOT)
    privsep.check_prelogin_setup(cfg)
    uid, gid = privsep.prelogin_account(cfg)

    def in_the_sandbox() -> str:
        privsep.enter_prelogin_sandbox(cfg, uid, gid)
        reached = []
        for path in (spool, "/etc/shadow", store, good.key_file, "/"):
            try:
                if path == "/":
                    reached.append("/:" + ",".join(os.listdir("/")))
                else:
                    os.close(os.open(path, os.O_RDONLY))
                    reached.append(path)
            except OSError:
                pass
        return "\n".join(reached)
    reached = in_child(in_the_sandbox).split("\n")
    assert reached == ["/:"], reached           # an empty root, and nothing else opened


# --- the TLS private key -----------------------------------------------------------------------------
def key_patterns(key_file: str) -> list[bytes]:
    """The RSA primes as OpenSSL keeps them in memory (BIGNUM words, little-endian) and as
    they appear in DER/big-endian form: one of them is in any process that loaded the key."""
    with open(key_file, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    numbers = key.private_numbers()
    patterns = []
    for prime in (numbers.p, numbers.q):
        size = (prime.bit_length() + 7) // 8
        patterns.append(prime.to_bytes(size, "big")[:32])
        patterns.append(prime.to_bytes(size, "little")[:32])
    return patterns


def rsa_identity(directory: str) -> tuple[str, str]:
    """(certificate file, key file): a self-signed RSA certificate, so the key has primes."""
    cert, key = os.path.join(directory, "rsa.crt"), os.path.join(directory, "rsa.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-subj", "/CN=127.0.0.1", "-days", "2"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_no_user_session_over_tls_holds_the_private_key(world_tmp, pam_service, pki,
                                                        system_users):
    cert, key = rsa_identity(world_tmp)
    s = TlsSite(world_tmp, pam_service, tls_support="stls", tls_server_cert_file=cert,
                tls_private_key_file=key)
    try:
        user = system_users.create()
        make_spool(s.spool_dir, user, mbox(*MESSAGES))
        server = s.tls_server(pki)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with socket.create_connection((server.host, server.tls_port), timeout=20) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert read_greeting(tls).startswith(b"+OK")
            replies = pipelined(tls, f"USER {user.name}", f"PASS {user.password}", "STAT")
            assert replies[2].startswith(b"+OK 2 "), replies
            session = the_one(server, user.uid, "the user session")
            relay = the_one(server, pwd.getpwnam(PRELOGIN_USER).pw_uid, "the TLS relay")
            patterns = key_patterns(key)
            assert memory_holds(relay, patterns)     # the search finds a key where it is
            assert not memory_holds(session, patterns)
            assert not memory_holds(server.pid, patterns)        # nor the master
            # the monitor became this session; the master above it holds no key either
            assert int(proc_status(session)["PPid"]) == server.pid
            tls.sendall(b"QUIT\r\n")
            assert b"signing off" in tls.recv(4096)
    finally:
        s.close()


# --- credentials ---------------------------------------------------------------------------------
def shadow_hash(name: str) -> bytes:
    with open("/etc/shadow", "rb") as f:
        for line in f:
            fields = line.split(b":")
            if fields[0] == name.encode():
                return fields[1]
    raise LookupError(name)


def test_the_user_session_never_held_a_credential(world_tmp, pam_service, system_users):
    """The monitor becomes the user session; the authentication process it forked checked
    every credential (server/monitor_auth.py). So the session's memory holds none of them,
    not even freed: neither the password this user sent, nor the shadow entries PAM read, nor
    the pop.auth store's secrets (another user's, read for an APOP attempt on the same
    connection). The search finds them where they are: the pre-login process holds the
    password it read from the client."""
    from tests.helpers.popauth import owned_store
    owner, store = owned_store(system_users, world_tmp)
    other, user = system_users.create("ot"), system_users.create()
    other_secret = f"apop-secret-{os.urandom(8).hex()}"
    store.set_secret(other.name, other_secret)
    site = Site(world_tmp, pam_service, pop_auth_file=store.path, pop_auth_owner=owner.name,
                store_mechanisms="on")
    try:
        make_spool(site.spool_dir, user, mbox(*MESSAGES))
        server = site.server()
        client = poplib.POP3(server.host, server.port, timeout=20)
        try:
            with pytest.raises(poplib.error_proto):
                client.apop(other.name, "not-the-secret")          # reads other's secret
            client.user(other.name)
            with pytest.raises(poplib.error_proto):
                client.pass_("a-wrong-password")                    # PAM reads other's entry
            client.user(user.name)
            client.pass_(user.password)
            assert client.stat()[0] == len(MESSAGES)
            session = the_one(server, user.uid, "the user session")
            secrets = [other_secret.encode(), user.password.encode(), shadow_hash(user.name),
                       shadow_hash(other.name)]
            for secret in secrets:
                assert not memory_holds(session, [secret]), secret
        finally:
            client.quit()
        # the search finds a password where it is (here, in a pre-login process of its own)
        holder = poplib.POP3(server.host, server.port, timeout=20)
        try:
            holder.user(user.name)
            with pytest.raises(poplib.error_proto):
                holder.pass_(other_secret)
            prelogin = the_one(server, pwd.getpwnam(PRELOGIN_USER).pw_uid, "pre-login")
            assert memory_holds(prelogin, [other_secret.encode()])
        finally:
            holder.close()
    finally:
        site.close()


def test_an_authentication_process_that_dies_is_logged_and_the_client_told(site,
                                                                          system_users):
    """A credential check that crashes (a PAM module's fault, the out-of-memory killer):
    the client gets -ERR [SYS/TEMP] from its pre-login process, the log says how the
    authentication process ended, and the connection's processes end."""
    from tests.server_harness import authentication_process_of
    user, server = serving(site, system_users)
    with socket.create_connection((server.host, server.port), timeout=10) as client:
        assert read_greeting(client).startswith(b"+OK")
        client.sendall(f"USER {user.name}\r\n".encode())
        assert client.recv(100).startswith(b"+OK")
        prelogin = the_one(server, pwd.getpwnam(PRELOGIN_USER).pw_uid, "pre-login")
        monitor = int(proc_status(prelogin)["PPid"])
        [authentication] = wait_until(lambda: authentication_process_of(monitor),
                                      what="the authentication process")
        os.kill(authentication, signal.SIGKILL)
        site.syslog.wait_for(r"authentication for 127\.0\.0\.1 ended without an outcome "
                             r"\(killed by signal 9\)")
        client.sendall(f"PASS {user.password}\r\n".encode())
        assert client.recv(200).startswith(b"-ERR [SYS/TEMP] ")
        assert client.recv(100) == b""
    wait_until(lambda: not os.path.exists(f"/proc/{monitor}"), what="the monitor's end")
    assert not processes_of(server, user.uid)


def test_a_prelogin_process_that_cannot_enter_its_sandbox_tells_the_client(world_tmp,
                                                                            pam_service,
                                                                            system_users):
    """A sandbox step refused at run time (here: prelogin-chroot gone after start-up): the
    pre-login process reads no client byte, and the client gets -ERR [SYS/TEMP] rather than
    a silent hang-up; the log says why."""
    chroot = os.path.join(world_tmp, "empty")
    os.mkdir(chroot, 0o755)
    site = Site(world_tmp, pam_service, prelogin_chroot=chroot)
    try:
        serving(site, system_users)
        os.rename(chroot, chroot + ".gone")
        server = site.servers[0]
        with socket.create_connection((server.host, server.port), timeout=10) as client:
            assert client.makefile("rb").readline() == (
                b"-ERR [SYS/TEMP] Unable to serve you now; try again later\r\n")
            assert client.recv(100) == b""
        site.syslog.wait_for(r".*the pre-login sandbox.*entering the pre-login sandbox: .*")
    finally:
        site.close()


def test_a_lower_limit_set_by_the_administrator_is_kept(site, system_users):
    """The pre-login process lowers its descriptor limit to privsep.PRELOGIN_MAX_FILES; a
    hard limit set lower already (LimitNOFILE= in the unit) is kept, not refused, and a soft
    limit lower still stays too: logins go on (before, raising the hard limit failed and
    every connection was dropped)."""
    user, server = serving(site, system_users)
    limit = privsep.PRELOGIN_MAX_FILES - 1
    resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (limit - 1, limit))
    with socket.create_connection((server.host, server.port), timeout=10) as client:
        assert read_greeting(client).startswith(b"+OK")
        prelogin = the_one(server, pwd.getpwnam(PRELOGIN_USER).pw_uid, "pre-login")
        with open(f"/proc/{prelogin}/limits") as f:
            [files] = [line.split()[3:5] for line in f if line.startswith("Max open files")]
        assert files == [str(limit - 1), str(limit)]              # neither went up
        client.sendall(b"QUIT\r\n")
    login(server, user).quit()


def running(pid: int) -> bool:
    """Alive, not a zombie waiting for whoever reaps it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


HANG_S = 75
"""How long the hanging PAM stack below takes: well past login-timeout (1 s) + 30 s + 5 s."""


@pytest.mark.slow
@pytest.mark.timeout(HANG_S + 30)
def test_a_pam_stack_that_hangs_cannot_hold_the_connection_past_its_deadline(world_tmp,
                                                                            system_users):
    """A request the authentication process is still answering when the login deadline
    passes (a PAM stack waiting on a dead directory server, here pam_exec running sleep) does
    not keep a root process of the connection alive: the monitor ends the authentication
    process at the deadline (login-timeout + 30 s, and 5 s for its last words)."""
    from tests.helpers.pam_service import installed_pam_service
    from tests.server_harness import authentication_process_of, read_pid_file
    user = system_users.create()
    # a helper with a child of its own, and a daemon: a process that left its parent first
    # (setsid, its parent gone); each writes its pid
    helper = os.path.join(world_tmp, "hang.sh")
    pidfiles = [os.path.join(world_tmp, f"{name}.pid") for name in ("helper", "child", "daemon")]
    with open(helper, "w") as f:
        f.write(f"#!/bin/sh\necho $$ > {pidfiles[0]}\n"
                f"setsid sh -c 'sleep {HANG_S} & echo $! > {pidfiles[2]}'\n"
                f"sleep {HANG_S} &\necho $! > {pidfiles[1]}\nwait\n")
    os.chmod(helper, 0o755)
    stack = f"auth required pam_exec.so {helper}\naccount required pam_permit.so\n"
    hanging = []
    with installed_pam_service(stack, tag="hang-") as service:
        site = Site(world_tmp, service, login_timeout=1)
        try:
            server = site.server()
            with socket.create_connection((server.host, server.port), timeout=10) as client:
                assert read_greeting(client).startswith(b"+OK")
                client.sendall(f"USER {user.name}\r\n".encode())
                assert client.recv(100).startswith(b"+OK")
                # PASS at once: login-timeout (1 s) runs from the connection's start
                client.sendall(f"PASS {user.password}\r\n".encode())
                started = time.monotonic()
                prelogin = the_one(server, pwd.getpwnam(PRELOGIN_USER).pw_uid, "pre-login")
                monitor = int(proc_status(prelogin)["PPid"])
                [authentication] = wait_until(lambda: authentication_process_of(monitor),
                                              what="the authentication process")
                hanging = [wait_until(lambda: read_pid_file(path), what=path)
                           for path in pidfiles]
                site.syslog.wait_for(r"authentication for 127\.0\.0\.1 did not end by the login "
                                     r"deadline; ending the connection", timeout=HANG_S - 20)
                wait_until(lambda: not os.path.exists(f"/proc/{monitor}"), timeout=10,
                           what="the monitor's end")
                assert not os.path.exists(f"/proc/{authentication}")
                assert time.monotonic() - started < HANG_S - 20
                # the PAM helper, its child and the daemon were ended with it: nothing goes on
                wait_until(lambda: not [pid for pid in hanging if running(pid)], timeout=5,
                           what="the end of PAM's helper")
        finally:
            for pid in hanging:                     # left by a failure: still the test's own?
                if running(pid) and _command_of(pid) in ("/bin/sh", "sleep"):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            site.close()


def _command_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def test_port_995_login_and_retr_through_the_relay(world_tmp, pam_service, pki, good,
                                                   system_users):
    """Implicit TLS: the pre-login process relays; a big message arrives whole."""
    s = TlsSite(world_tmp, pam_service, tls_server_cert_file=good.combined_file)
    try:
        user = system_users.create()
        body = "\n".join(f"line {n:06d} " + "x" * 60 for n in range(20000))
        make_spool(s.spool_dir, user, mbox(("big", body), *MESSAGES))
        server = s.tls_server(pki)
        context = client_context(pki)
        client = poplib.POP3_SSL(server.host, server.tls_port, context=context, timeout=30)
        try:
            client.user(user.name)
            client.pass_(user.password)
            _, lines, _ = client.retr(1)
            assert f"line {19999:06d} ".encode() + b"x" * 60 in lines
            assert len(lines) > 20000
        finally:
            client.quit()
    finally:
        s.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from tests.helpers.testpki import TestPki
    return TestPki(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture(scope="module")
def good(pki):
    return pki.server("good")



def descriptors(pid: int) -> dict[int, str]:
    """What each open descriptor of `pid` is (readlink of /proc/PID/fd/N)."""
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            pass
    return out


def datagram_unix_sockets() -> set[str]:
    """`socket:[inode]` of every Unix datagram socket (the log's: /proc/net/unix type 0002)."""
    found = set()
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            fields = line.split()
            if len(fields) > 6 and fields[4] == "0002":
                found.add(f"socket:[{fields[6]}]")
    return found


def test_children_inherit_no_descriptor_of_the_master(site, system_users):
    """Forked without exec, a child has what the master had open unless it is closed: the
    listening sockets, whatever PAM's or the name service's modules opened when the master
    loaded them (docs/privsep.md, "PAM modules stay loaded in the master"), files of its
    start-up. None of that may reach the pre-login process or the user session. The log's
    datagram socket reaches the user session only: the pre-login process's records go
    through its monitor, and its 0-2 are /dev/null (under systemd, 1 and 2 are the journal's
    stream: docs/privsep.md, "The pre-login process's log records")."""
    user = system_users.create()
    make_spool(site.spool_dir, user, mbox(*MESSAGES))
    server = site.server()
    wait_until(lambda: not server.children(), what="the start-up probe to end")
    master_own = {target for fd, target in descriptors(server.pid).items() if fd > 2}
    log_socket = master_own & datagram_unix_sockets()
    assert len(log_socket) == 1, master_own
    master_own -= log_socket
    assert any(t.startswith("socket:") for t in master_own)     # the listener, at least
    with socket.create_connection((server.host, server.port), timeout=10) as raw:
        assert read_greeting(raw).startswith(b"+OK")
        raw.sendall(b"USER someone\r\n")
        assert raw.recv(100).startswith(b"+OK")
        prelogin = the_one(server, pwd.getpwnam(PRELOGIN_USER).pw_uid, "the pre-login process")
        held = descriptors(prelogin)
        inherited = {fd: t for fd, t in held.items() if t in master_own | log_socket}
        assert inherited == {}, f"pre-login process holds the master's {inherited}"
        assert [held[fd] for fd in (0, 1, 2)] == ["/dev/null"] * 3, held
    client = login(server, user)
    try:
        assert client.stat()[0] == 2
        session = the_one(server, user.uid, "the user session")
        inherited = {fd: t for fd, t in descriptors(session).items()
                     if fd > 2 and t in master_own}
        assert inherited == {}, f"user session holds the master's {inherited}"
    finally:
        client.quit()


def test_the_brakes_file_is_closed_before_the_privilege_drop(site, system_users):
    """The monitor opens the root-only brakes file for the login attempt (auth/brakes.py)
    and becomes the user session: no descriptor on it (or its journal) may survive the
    drop, or the user could read and rewrite everyone's failure counts."""
    user = system_users.create()
    make_spool(site.spool_dir, user, mbox(*MESSAGES))
    brakes_file = os.path.join(site.root, "auth-brakes.sqlite")
    server = site.server()
    wait_until(lambda: not server.children(), what="the start-up probe to end")
    assert not os.path.exists(brakes_file)
    client = login(server, user)
    try:
        assert client.stat()[0] == 2
        assert os.path.exists(brakes_file)          # the login did use it
        session = the_one(server, user.uid, "the user session")
        held = [t for t in descriptors(session).values() if t.startswith(brakes_file)]
        assert held == [], f"user session holds {held}"
    finally:
        client.quit()
