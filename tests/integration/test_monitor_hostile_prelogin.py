"""A pre-login process that is an attacker's (docs/privsep.md, "The monitor's requests"):
what it may name in a refusal, what it may say about the session it hands over, and that
it cannot keep its root monitor past the login deadline nor fork a process that would
outlive the connection."""

from __future__ import annotations

import fcntl
import os
import pwd
import resource
import signal
import socket
import subprocess
import time

import pytest

from qpopper.auth import Login
from qpopper.config import Config
from qpopper.log import ForwardedRecords, Logger
from qpopper.server import monitor as monitor_mod
from qpopper.server import monitor_wire as wire
from qpopper.server import privsep
from tests.helpers.sysusers import PRELOGIN_USER, is_root


class Sink(list):
    def __call__(self, priority, text):
        self.append(text)

    def open(self):
        pass

    def close(self):
        pass


def frame(kind: wire.Kind, *fields) -> wire.Frame:
    return wire.decode(wire.encode(kind, *fields), wire.REQUESTS)


def monitor(log: Sink, tls_mode: str | None = None) -> monitor_mod.Monitor:
    """An in-process monitor; `tls_mode` as for a connection on such a port (the TLS
    identity itself is not used by the requests)."""
    cfg = Config.defaults().replace(auth_brakes_file=None, pop_auth_file=None,
                                    auth_failure_delay=0, reverse_lookup=False)
    mon = monitor_mod.Monitor(cfg, log, hostname="test.host", peer=("192.0.2.10", 4000),
                              client=monitor_mod.Client(-1, -1, None),
                              tls=object() if tls_mode else None, tls_mode=tls_mode)
    from qpopper.auth.policy import Authenticator
    mon.authenticator = Authenticator(cfg, log)
    mon.authenticator.sleep = lambda seconds: None
    return mon


FORGED = "USER, ip=[198.51.100.77], x=y"
"""A mechanism that would put another address into a failure's log line, for fail2ban."""


@pytest.mark.parametrize("request_frame", [
    frame(wire.Kind.REFUSE_NAME, "alice", "text", FORGED, ""),
    frame(wire.Kind.SCRAM_BINDING_FAILED, "alice", FORGED, ""),
])
def test_a_refusal_names_only_a_mechanism_the_monitor_knows(request_frame):
    log = Sink()
    with pytest.raises(monitor_mod.ProtocolViolation, match="for 'USER, ip="):
        monitor(log)._answer(request_frame)
    assert not any("198.51.100.77" in line for line in log)


def test_a_refusal_with_a_known_mechanism_is_logged_as_a_failure():
    log = Sink()
    reply = monitor(log)._answer(frame(wire.Kind.REFUSE_NAME, "alice", "text", "AUTH PLAIN",
                                       ""))
    assert wire.decode(reply, {wire.Kind.REFUSED}).text(0) == "text"
    assert any(line.startswith("LOGIN FAILED, user=alice, method=PLAIN, ip=[192.0.2.10]")
               for line in log), log


@pytest.mark.parametrize("count", ["²", "١٠", "-1", ""])
def test_handover_takes_only_an_ascii_count_of_bad_commands(count):
    mon = monitor(Sink())
    mon.login = Login("alice", 1000, 1000, None, "USER")
    with pytest.raises(monitor_mod.ProtocolViolation, match="bad command count"):
        mon._handover(frame(wire.Kind.HANDOVER, b"", False, "host", count, False), None)


@pytest.mark.parametrize("fields, why", [
    ((b"x", "0", b"0"), "flag"), ((b"0", "0", b""), "flag"),
    ((b"0", "x", b"0"), "bad command count"), ((b"1", "0", b"0"), "TLS claimed"),
])
def test_a_bad_handover_ends_the_connection_where_it_arrives(fields, why):
    """The authentication process passes the HANDOVER on to the monitor: it is checked
    where it arrives (handover_fields, the monitor's own parser), and a bad one ends the
    pre-login process as a protocol violation."""
    log = Sink()
    mon = monitor(log)
    mon.login = Login("alice", 1000, 1000, None, "USER")
    ours, theirs = wire.channel_pair()
    records_ours, records_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    mon.records = ForwardedRecords(records_ours, log)
    stand_in = subprocess.Popen(["sleep", "60"])          # the pre-login process
    mon.prelogin_pid = stand_in.pid
    try:
        tls, count, no_mime = fields
        theirs.send(wire.encode(wire.Kind.HANDOVER, b"", tls, "host", count, no_mime))
        assert mon._serve(ours) is None
        assert stand_in.wait(10) < 0                     # killed
        assert any("broke the monitor protocol" in line and why in line for line in log), log
    finally:
        stand_in.kill()
        stand_in.wait()
        for sock in (ours, theirs, records_ours, records_theirs):
            sock.close()


def stand_in_authentication(frames: list[bytes], stay: bool = True
                            ) -> tuple[socket.socket, int]:
    """A forked stand-in for the authentication process: it sends `frames` to the monitor
    and, with `stay`, stays (the monitor must end it). (the monitor's end, its pid)"""
    ours, theirs = wire.channel_pair()
    pid = os.fork()
    if pid == 0:
        try:
            ours.close()
            for data in frames:
                theirs.send(data)
            if stay:
                time.sleep(60)
        finally:
            os._exit(0)
    theirs.close()
    return ours, pid


def outcome(user="", uid="", address="192.0.2.10") -> bytes:
    return wire.encode(wire.Kind.OUTCOME, address, "4000", user, uid, "1000", False, "",
                       "USER" if user else "", False)


@pytest.mark.parametrize("frames, logged", [
    ([outcome("alice", "x")], "bad outcome (invalid literal"),
    ([outcome("alice", "1000")], "bad outcome (no HANDOVER after the login)"),
    ([outcome("alice", "1000"), wire.encode(wire.Kind.DATA, b"", False)],
     "bad outcome (DATA is not expected here)"),
])
def test_an_outcome_the_monitor_cannot_take_ends_the_connection(monkeypatch, frames, logged):
    """Should never happen (the authentication process is the monitor's own code): a login
    without its HANDOVER, or numbers that are not, end both children and give no login."""
    from qpopper.server import monitor_auth
    monkeypatch.setattr(monitor_auth, "AUTHENTICATION_LAST_WORDS_S", 0.5)
    log = Sink()
    mon = monitor(log)
    records_ours, records_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    mon.records = ForwardedRecords(records_ours, log)
    stand_in = subprocess.Popen(["sleep", "60"])          # the pre-login process
    mon.prelogin_pid = stand_in.pid
    sock, pid = stand_in_authentication(frames)
    try:
        assert mon._await_outcome(sock, pid) is None
        assert mon.login is None
        assert stand_in.wait(10) < 0                     # killed
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)                  # ended and reaped
        assert any(logged in line for line in log), log
    finally:
        stand_in.kill()
        stand_in.wait()
        for end in (sock, records_ours, records_theirs):
            end.close()


@pytest.mark.parametrize("proxy", [None, ("192.0.2.0/24",)])
def test_the_outcome_names_the_client_only_behind_a_proxy(proxy):
    """The address in OUTCOME is a PROXY header's: taken only on a proxy-protocol
    connection."""
    log = Sink()
    mon = monitor(log)
    mon.proxy = proxy
    records_ours, records_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    mon.records = ForwardedRecords(records_ours, log)
    sock, pid = stand_in_authentication([outcome(address="198.51.100.9")], stay=False)
    try:
        assert mon._await_outcome(sock, pid) is None and mon.login is None
        assert mon.client_ip == ("198.51.100.9" if proxy else "192.0.2.10")
    finally:
        for end in (sock, records_ours, records_theirs):
            end.close()


@pytest.mark.parametrize("tls_mode, request_frame, why", [
    (None, frame(wire.Kind.PASSWORD, "alice", "pw", "USER", "", True, ""), "without TLS"),
    ("implicit", frame(wire.Kind.PASSWORD, "alice", "pw", "USER", "", False, ""),
     "on a TLS port"),
    (None, frame(wire.Kind.SCRAM_BEGIN, "SCRAM-SHA-256-PLUS", "alice", "nonce"),
     "without TLS"),
])
def test_the_tls_flag_is_believed_only_where_it_can_be_true(tls_mode, request_frame, why):
    """clear-text-password=tls and the -PLUS mechanisms rest on the pre-login process's
    word that TLS is on: not on a connection without TLS, and it cannot deny TLS on an
    implicit-TLS port (STLS may or may not have been used: believed there)."""
    with pytest.raises(monitor_mod.ProtocolViolation, match=why):
        monitor(Sink(), tls_mode)._answer(request_frame)


def test_handover_cannot_deny_tls_on_a_tls_port():
    mon = monitor(Sink(), "implicit")
    mon.login = Login("alice", 1000, 1000, None, "USER")
    with pytest.raises(monitor_mod.ProtocolViolation, match="on a TLS port"):
        mon._handover(frame(wire.Kind.HANDOVER, b"", False, "host", "0", False), None)


# --- real processes: a pre-login process that ends the dialogue and stays -------------------
@pytest.fixture
def prelogin_config(tmp_path):
    if not is_root():
        pytest.skip("needs root: the pre-login sandbox (chroot, the pre-login account)")
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o755)
    return Config.defaults().replace(prelogin_user=PRELOGIN_USER, prelogin_chroot=str(empty),
                                     auth_brakes_file=None, pop_auth_file=None,
                                     reverse_lookup=False, login_timeout=2)


def run_monitor(cfg, prelogin_body, monkeypatch, log_path: str = os.devnull) -> int:
    """Fork a monitor as the master does; its pre-login process enters the real sandbox and
    then runs `prelogin_body(channel)` (an attacker's code) instead of the pre-login's. The
    monitor logs to `log_path` (the demo's terminal format: `HH:MM:SS popper[PID]: text`)."""
    monkeypatch.setattr(monitor_mod, "DEADLINE_MARGIN_S", 1)

    def attacker(self, sock, relay_end, uid, gid):
        privsep.enter_prelogin_sandbox(self.cfg, uid, gid)
        return prelogin_body(sock)
    monkeypatch.setattr(monitor_mod.Monitor, "_run_prelogin", attacker)
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        ours.close()
        os.setpgid(0, 0)                 # ended_within can end it and its pre-login process
        status = 99
        try:
            log = Logger(stream=open(log_path, "a"), debug=True)    # closed by os._exit
            status = monitor_mod.Monitor(
                cfg, log, hostname="test.host", peer=("192.0.2.10", 4000),
                client=monitor_mod.Client(theirs.fileno(), theirs.fileno(), theirs)).run()
        finally:
            os._exit(status)
    theirs.close()
    ours.close()
    return pid


def ended_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return True
        time.sleep(0.05)
    os.killpg(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return False


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ending", ["empty datagram", "shutdown"])
def test_a_prelogin_process_that_stays_after_the_dialogue_is_ended(prelogin_config,
                                                                   monkeypatch, ending):
    """It ends the dialogue (an empty datagram reads as its end; or it shuts its side) and
    then neither exits nor answers signals it may ignore: the monitor still ends it, at the
    login deadline (2 s + 1 s here) or PRELOGIN_LAST_WORDS_S after, and ends itself."""
    def stay(channel):
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        if ending == "empty datagram":
            channel.send(b"")
        else:
            channel.shutdown(socket.SHUT_WR)
        while True:
            time.sleep(1000)
    pid = run_monitor(prelogin_config, stay, monkeypatch)
    assert ended_within(pid, 3 + monitor_mod.PRELOGIN_LAST_WORDS_S + 10)


@pytest.mark.timeout(60)
def test_the_prelogin_sandbox_cannot_fork(prelogin_config, monkeypatch):
    """A child of the pre-login process would outlive the monitor's SIGKILL (the parent-death
    signal is not inherited): RLIMIT_NPROC 0 refuses the fork. The answer goes back over
    the channel as the pre-login's one request."""
    read_end, write_end = os.pipe()

    def try_to_fork(channel):
        try:
            child = os.fork()
        except OSError as exc:
            os.write(write_end, f"refused {exc.errno}".encode())
            return 0
        if child == 0:
            os._exit(0)
        os.write(write_end, b"forked")
        return 0
    pid = run_monitor(prelogin_config, try_to_fork, monkeypatch)
    os.close(write_end)
    assert ended_within(pid, 20)
    assert os.read(read_end, 100) == b"refused 11"          # EAGAIN
    os.close(read_end)


@pytest.mark.timeout(60)
def test_a_taken_over_prelogin_process_logs_only_through_its_monitor(prelogin_config,
                                                                    monkeypatch, tmp_path):
    """Inside the real sandbox an attacker's code finds no way to a log of its own: no new
    socket (UDP syslog), no reconnecting or addressing its log socket (an abstract syslog
    socket), no signal for another connection's pre-login process (the same account), not
    even through SIGIO; what it sends on its log socket comes out of the monitor prefixed
    (docs/privsep.md, "The pre-login process's log records" and "The pre-login process's
    system calls")."""
    read_end, write_end = os.pipe()
    forged = "LOGIN FAILED, user=x, method=USER, ip=[198.51.100.9], failures=5, brake=0s"
    account = pwd.getpwnam(PRELOGIN_USER)
    other = os.fork()                    # stands in for another connection's process
    if other == 0:
        os.setresgid(account.pw_gid, account.pw_gid, account.pw_gid)
        os.setresuid(account.pw_uid, account.pw_uid, account.pw_uid)
        time.sleep(60)
        os._exit(0)

    def attack(channel):
        tried = {}
        log_fd = next(fd for fd in range(3, 64) if _is_datagram_socket(fd))
        log_socket = socket.socket(fileno=os.dup(log_fd))
        mine, _ = socket.socketpair()
        for name, call in (
                ("udp socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)),
                ("reconnect", lambda: log_socket.connect("\0qpt-syslog")),
                ("sendto", lambda: log_socket.sendto(b"x", "\0qpt-syslog")),
                ("kill another", lambda: os.kill(other, signal.SIGKILL)),
                ("SIGIO to another", lambda: fcntl.fcntl(mine, fcntl.F_SETOWN, other)),
                ("limit another", lambda: resource.prlimit(other, resource.RLIMIT_CPU,
                                                           (1, 1)))):
            try:
                call()
                tried[name] = "done"
            except OSError as exc:
                tried[name] = exc.errno
        log_socket.send(bytes((0,)) + forged.encode())            # LOG_EMERG
        os.write(write_end, repr(tried).encode())
        channel.send(b"")                                           # the dialogue's end
        return 0
    log_path = tmp_path / "monitor.log"
    try:
        pid = run_monitor(prelogin_config, attack, monkeypatch, log_path=str(log_path))
        os.close(write_end)
        assert ended_within(pid, 20)
        assert eval(os.read(read_end, 1000)) == {
            "udp socket": 1, "reconnect": 1, "sendto": 1, "kill another": 1,
            "SIGIO to another": 1, "limit another": 1}                # EPERM
        assert os.waitpid(other, os.WNOHANG) == (0, 0)                # alive
    finally:
        os.kill(other, signal.SIGKILL)
        os.waitpid(other, 0)
        os.close(read_end)
    lines = log_path.read_text().splitlines()
    assert [line.split(": ", 1)[1] for line in lines if forged in line] == [
        f"pre-login: {forged}"], lines


def _is_datagram_socket(fd: int) -> bool:
    try:
        probe = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    try:
        return probe.type == socket.SOCK_DGRAM
    finally:
        probe.close()
