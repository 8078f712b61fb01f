"""poppassd's privilege separation (docs/privsep.md, "poppassd"): the process that reads the
client's bytes is the sandboxed pre-login process, read from the kernel while a real client
is connected; and the root process, driven over a real socket pair as a hostile pre-login
process would drive it, changes no password out of order."""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import subprocess
import time

import pytest

from qpopper.auth import pam as pam_auth
from qpopper.server import monitor_wire as wire
from qpopper.server.children import ProtocolViolation
from qpopper.tools import poppassd_monitor as pm
from tests.helpers import pam_service as pam_files
from tests.helpers.poppassd_service import POPPASSD, Conversation, PoppassdService
from tests.helpers.sysusers import PRELOGIN_USER
from tests.integration.test_poppassd import poppassd_service
from tests.server_harness import Site, children_of, proc_status, wait_until

pytestmark = pytest.mark.timeout(90)
Kind = wire.Kind


def test_the_process_reading_the_client_is_the_sandboxed_prelogin_user(world_tmp, pam_service):
    with poppassd_service(world_tmp, pam_files.FAST_UNIX_PASSWORD) as svc:
        with svc.connect() as c:
            assert c.say("user someone") == b"200 Your password please."
            [root] = wait_until(lambda: children_of(svc.proc.pid), what="poppassd")
            [prelogin] = wait_until(lambda: children_of(root), what="its pre-login process")
            assert proc_status(root)["Uid"].split() == ["0"] * 4
            # the root process holds no descriptor of the client's connection
            wait_until(lambda: {os.readlink(f"/proc/{root}/fd/{fd}") for fd in (0, 1)}
                       == {"/dev/null"}, what="the root process to let go of the client")
            account = pwd.getpwnam(PRELOGIN_USER)
            status = proc_status(prelogin)
            assert status["Uid"].split() == [str(account.pw_uid)] * 4, status["Uid"]
            assert status["Gid"].split() == [str(account.pw_gid)] * 4, status["Gid"]
            assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0
            assert status["NoNewPrivs"].strip() == "1"
            assert os.readlink(f"/proc/{prelogin}/root") != "/"
            assert os.readlink(f"/proc/{prelogin}/fd/0").startswith("socket:")
            assert c.say("quit") == b"200 Bye."


def test_under_classic_inetd_the_root_process_lets_go_of_the_client_on_2_too(world_tmp,
                                                                              pam_service):
    """Classic inetd gives the client's socket to descriptors 0, 1 and 2: the root process
    points all three at /dev/null (what it or a PAM module it loads writes to stderr never
    reaches the client, and it holds no descriptor of the connection)."""
    with pam_files.installed_pam_service(pam_files.FAST_UNIX_PASSWORD, tag="pw-") as name:
        site = Site(world_tmp, name)
        server_end, client_end = socket.socketpair()
        proc = subprocess.Popen([POPPASSD, "-s", name, "-f", site.config],
                                stdin=server_end, stdout=server_end, stderr=server_end,
                                env=dict(os.environ, QPOPPER_SYSLOG_SOCKET=site.syslog.path))
        server_end.close()
        client_end.settimeout(30)
        try:
            c = Conversation(client_end)
            assert c.greeting.startswith(b"200 poppassd")
            wait_until(lambda: {os.readlink(f"/proc/{proc.pid}/fd/{fd}") for fd in (0, 1, 2)}
                       == {"/dev/null"}, what="the root process to let go of the client")
            assert c.say("quit") == b"200 Bye."
            assert proc.wait(30) == 0
            c.close()
        finally:
            client_end.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            site.close()


@pytest.mark.skipif(not os.path.exists("/usr/bin/setpriv"),
                    reason="needs setpriv (util-linux) to drop CAP_SYS_CHROOT")
def test_a_pre_login_process_that_cannot_enter_its_sandbox_tells_the_client(world_tmp,
                                                                            pam_service):
    """poppassd run without CAP_SYS_CHROOT (a unit's CapabilityBoundingSet that leaves it
    out): the pre-login process cannot chroot, reads no client byte, and the client is told
    to try again later rather than left without a reply; the log says why."""
    without_chroot = ("/usr/bin/setpriv", "--bounding-set", "-sys_chroot",
                      "--inh-caps", "-sys_chroot", "--")
    with pam_files.installed_pam_service(pam_files.FAST_UNIX_PASSWORD, tag="pw-") as name:
        site = Site(world_tmp, name)
        svc = PoppassdService(site, name, wrapper=without_chroot)
        try:
            with svc.connect() as c:
                assert c.greeting == b"500 Server error, try again later."
                assert c.reply() == b""
            site.syslog.wait_for(r".*the pre-login sandbox.*entering the pre-login sandbox: "
                                 r".*Operation not permitted.*")
        finally:
            svc.stop()
            site.close()


@pytest.fixture
def accounts(world_tmp, pam_service, system_users):
    """(PAM service, the attacker's own account, another user's)."""
    with pam_files.installed_pam_service(pam_files.FAST_UNIX_PASSWORD, tag="pw-") as name:
        yield name, system_users.create("pp"), system_users.create("pp")


def drive(pam_service: str, *frames) -> tuple[list[str], list[str]]:
    """The root side answering `frames` (kind, fields...; or raw bytes) sent as a pre-login
    process would send them: (its answers, its log lines); raises what it raises."""
    lines: list[str] = []
    keeper = pm.PasswordKeeper(lambda priority, text: lines.append(text),
                               pam_service=pam_service, client_ip="127.0.0.1")
    ours, theirs = wire.channel_pair()
    answers: list[str] = []
    with ours, theirs:
        for frame in frames:
            theirs.sendall(frame if isinstance(frame, bytes) else wire.encode(*frame))
        theirs.shutdown(socket.SHUT_WR)            # then end of file, as the process exits
        try:
            assert pm.serve_requests(ours, keeper, time.monotonic() + 30)
        finally:
            theirs.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while (answer := wire.receive(theirs)) is not None:
                    answers.append(answer.text(0))
    return answers, lines


def authenticates(pam_service: str, user, password: str) -> bool:
    return pam_auth.authenticate(pam_service, user.name, password).ok


def test_a_change_before_a_right_old_password_is_refused(accounts):
    service, _, victim = accounts
    with pytest.raises((ProtocolViolation, wire.FrameError)):
        drive(service, (Kind.POPPASSD_CHANGE, "taken-over-1"))
    assert authenticates(service, victim, victim.password)


def test_a_change_after_a_wrong_old_password_is_refused(accounts):
    service, _, victim = accounts
    with pytest.raises((ProtocolViolation, wire.FrameError)):
        drive(service, (Kind.POPPASSD_CHECK, victim.name, "a-guess"),
              (Kind.POPPASSD_CHANGE, "taken-over-2"))
    assert authenticates(service, victim, victim.password)


def test_a_check_of_another_user_cannot_follow_a_right_one(accounts):
    """The attacker proves their own password, then names the victim: refused before the
    victim's check, so the change that follows can only ever be the attacker's."""
    service, own, victim = accounts
    with pytest.raises((ProtocolViolation, wire.FrameError)):
        drive(service, (Kind.POPPASSD_CHECK, own.name, own.password),
              (Kind.POPPASSD_CHECK, victim.name, victim.password),
              (Kind.POPPASSD_CHANGE, "taken-over-3"))
    assert authenticates(service, victim, victim.password)
    assert authenticates(service, own, own.password)


def test_one_change_per_right_old_password(accounts):
    service, own, _ = accounts
    with pytest.raises((ProtocolViolation, wire.FrameError)):
        drive(service, (Kind.POPPASSD_CHECK, own.name, own.password),
              (Kind.POPPASSD_CHANGE, "first-change-4"),
              (Kind.POPPASSD_CHANGE, "second-change-5"))
    assert authenticates(service, own, "first-change-4")
    assert not authenticates(service, own, "second-change-5")


def test_the_dialogue_in_order_changes_the_verified_users_password(accounts):
    service, own, _ = accounts
    answers, lines = drive(service, (Kind.POPPASSD_CHECK, own.name, own.password),
                           (Kind.POPPASSD_CHANGE, own.password),        # the old one: refused
                           (Kind.POPPASSD_CHANGE, "in-order-6"),
                           (Kind.POPPASSD_END, "timeout"))
    assert answers == [pm.RIGHT, pm.REFUSED, pm.CHANGED]
    assert authenticates(service, own, "in-order-6")
    assert lines == [f'password changed for "{own.name}" from 127.0.0.1',
                     "timeout after 60.0s from 127.0.0.1"]


def test_a_pre_login_process_that_keeps_asking_is_ended(accounts):
    """Each answer moves the root side's deadline on, so the number of requests is what
    bounds its time: past MAX_REQUESTS (here refused new passwords after a right old one)
    the connection ends, however quickly they come."""
    service, own, _ = accounts
    with pytest.raises(ProtocolViolation):
        drive(service, (Kind.POPPASSD_CHECK, own.name, own.password),
              *[(Kind.POPPASSD_CHANGE, "")] * pm.MAX_REQUESTS)
    assert authenticates(service, own, own.password)


@pytest.mark.parametrize("frame", [
    b"\x60",                                                   # no header
    bytes((Kind.POPPASSD_CHECK, 1, 0, 0, 0, 1)) + b"x",        # one field of two
    bytes((Kind.PASSWORD, 0)),                                 # popper's kind
    wire.encode(Kind.POPPASSD_END, "bored"),                   # an unknown reason
    wire.encode(Kind.POPPASSD_VERDICT, pm.RIGHT),              # an answer, not a request
])
def test_malformed_frames_end_the_connection(accounts, frame):
    service, _, _ = accounts
    with pytest.raises((ProtocolViolation, wire.FrameError)):
        drive(service, frame)
