"""The monitor's request channel under hostile frames (docs/privsep.md, "The monitor's
requests"): the pre-login process may be an attacker's, so whatever it sends, the monitor
answers within its protocol or ends the connection — it never raises anything else, and it
never logs anyone in who did not prove a credential.

In-process: 100,000 random, truncated, oversized and out-of-order frames through the
monitor's own decode-and-answer path, with a real Authenticator (a PAM service that denies
everyone, no store). Real processes: garbage written into a live monitor's channel (taken
from its pre-login process with pidfd_getfd) ends that connection and the master serves on.
"""

from __future__ import annotations

import os
import pwd
import random
import socket
import struct

import pytest

from qpopper.server import monitor as monitor_mod
from qpopper.server import monitor_wire as wire
from qpopper.config import Config
from tests.helpers import pam_service as pam_helper
from tests.helpers.descriptors import socket_of
from tests.helpers.sysusers import PRELOGIN_USER, is_root
from tests.server_harness import (Site, proc_status, processes_of, read_greeting,
                                  wait_for_greeting, wait_until)

CASES = 100_000
SEED = 20261205


def random_field(rng: random.Random) -> bytes:
    choice = rng.random()
    if choice < 0.3:
        return b""
    if choice < 0.6:
        return rng.choice([b"0", b"1", b"2", b"USER", b"AUTH PLAIN", b"SCRAM-SHA-256",
                           b"root", b"daemon", b"nobody", "é\udcff".encode("utf-8",
                                                                          "surrogateescape")])
    if choice < 0.95:
        return rng.randbytes(rng.randrange(1, 40))
    return rng.randbytes(rng.randrange(200, 20000))


def random_frame(rng: random.Random) -> bytes:
    kind = rng.choice([*wire.Kind, 0, 14, 63, 99, 255])
    limits = wire.FIELD_LIMITS.get(kind, ())
    count = len(limits) if rng.random() < 0.8 else rng.randrange(0, 8)
    out = bytearray((int(kind), count))
    for _ in range(count):
        field = random_field(rng)
        declared = len(field) if rng.random() < 0.9 else rng.randrange(0, 2 ** 32)
        out += struct.pack(">I", declared) + field
    style = rng.random()
    if style < 0.05:
        return bytes(out[:rng.randrange(0, len(out) + 1)])              # truncated
    if style < 0.08:
        return bytes(out) + rng.randbytes(rng.randrange(1, 10))         # trailing junk
    if style < 0.09:
        return bytes(out) + bytes(wire.MAX_FRAME_OCTETS)                 # oversized
    return bytes(out)


class Sink:
    def __init__(self):
        self.records = []

    def __call__(self, priority, text):
        self.records.append(text)

    def open(self):
        pass


def fresh_monitor(cfg, log) -> monitor_mod.Monitor:
    mon = monitor_mod.Monitor(cfg, log, hostname="test.host", peer=("192.0.2.1", 4000),
                              client=monitor_mod.Client(-1, -1, None))
    from qpopper.auth.policy import Authenticator
    mon.authenticator = Authenticator(cfg, log)
    mon.authenticator.sleep = lambda seconds: None      # the failure delays, not under test
    mon.apop_timestamp = "<1.2.3@test.host>"
    return mon


@pytest.mark.skipif(not is_root(), reason="needs root: installs a PAM service file")
@pytest.mark.timeout(600)
def test_a_hundred_thousand_hostile_frames_never_crash_the_monitor_or_log_anyone_in(tmp_path):
    rng = random.Random(SEED)
    with pam_helper.installed_pam_service("auth required pam_deny.so\n"
                                          "account required pam_deny.so\n") as service:
        cfg = Config.defaults().replace(pam_service=service, auth_brakes_file=None,
                                        auth_failure_delay=0, pop_auth_file=None,
                                        reverse_lookup=False)
        log = Sink()
        mon = fresh_monitor(cfg, log)
        outcomes = {"answered": 0, "refused frame": 0, "ended": 0}
        for _ in range(CASES):
            data = random_frame(rng)
            try:
                frame = wire.decode(data, wire.REQUESTS)
                if frame.kind is wire.Kind.HANDOVER:
                    if mon.login is None:
                        raise monitor_mod.ProtocolViolation("HANDOVER without a login")
                    raise AssertionError("a handover was accepted without a login")
                reply = mon._answer(frame)
                wire.decode(reply, {wire.Kind.LOGIN, wire.Kind.REFUSED, wire.Kind.DATA})
                outcomes["answered"] += 1
                if mon._closing:
                    outcomes["ended"] += 1
                    mon = fresh_monitor(cfg, log)
            except wire.FrameError:
                outcomes["refused frame"] += 1
                mon = fresh_monitor(cfg, log)
            except monitor_mod.ProtocolViolation:
                outcomes["ended"] += 1
                mon = fresh_monitor(cfg, log)
            assert mon.login is None
        assert sum(outcomes.values()) >= CASES
        # the generator reached the handlers, not only the decoder
        assert outcomes["answered"] > CASES // 10, outcomes
        assert not any("POP login by" in text for text in log.records)


# --- against a live monitor --------------------------------------------------------------------
def has_ended(pid: int) -> bool:
    """Gone, or a zombie waiting for the master to reap it."""
    try:
        return proc_status(pid)["State"].startswith("Z")
    except OSError:
        return True


def monitor_channel_of(pid: int) -> socket.socket:
    """The pre-login process's end of its monitor channel (the one SEQPACKET socket)."""
    return socket_of(pid, socket.SOCK_SEQPACKET)


GARBAGE = [
    b"",                                            # (an empty datagram reads as the end)
    b"\x01",
    b"\xff\x00",
    bytes((wire.Kind.LOGIN, 4)) + struct.pack(">I", 5) + b"alice" + b"\0" * 12,
    wire.encode(wire.Kind.HANDOVER, b"", False, "h", "0", False),   # no login verified
    wire.encode(wire.Kind.PASSWORD, "root", "x", "AUTH WEIRD", "", False, ""),
    wire.encode(wire.Kind.SCRAM_ACCEPTED),                          # out of order
    wire.encode(wire.Kind.CRAM, "alice", "0" * 32, ""),             # no challenge asked
    bytes((wire.Kind.APOP, 3)) + struct.pack(">I", 2 ** 31) + b"x",
    os.urandom(wire.MAX_FRAME_OCTETS + 100),
]


@pytest.mark.skipif(not is_root(), reason="needs root: reads another process's descriptors")
@pytest.mark.timeout(300)
def test_garbage_in_a_live_monitor_channel_ends_that_connection_only(world_tmp, pam_service):
    site = Site(world_tmp, pam_service)
    try:
        server = site.server()
        prelogin_uid = pwd.getpwnam(PRELOGIN_USER).pw_uid
        for frame in GARBAGE:
            with socket.create_connection((server.host, server.port), timeout=10) as client:
                assert read_greeting(client).startswith(b"+OK")
                prelogin = wait_until(lambda: processes_of(server, prelogin_uid),
                                      what="the pre-login process")[0]
                monitor_pid = int(proc_status(prelogin)["PPid"])
                with monitor_channel_of(prelogin) as channel:
                    try:
                        channel.send(frame)
                    except OSError:
                        pass                       # too long for a datagram: refused at once
                    if frame:
                        # the monitor ends the connection: its processes go away
                        wait_until(lambda: has_ended(monitor_pid), timeout=15,
                                   what="the monitor to end the connection")
            assert wait_for_greeting(server.host, server.port).startswith(b"+OK")
        assert server.proc.poll() is None
        assert not [t for t in site.syslog.texts() if "POP login by" in t]
        assert any("broke the monitor protocol" in t for t in site.syslog.texts())
    finally:
        site.close()
