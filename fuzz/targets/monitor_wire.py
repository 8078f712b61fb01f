"""The monitor's request channel (qpopper/server/monitor_wire.py decode, then the monitor's
own answer path), as tests/integration/test_monitor_fuzz.py drives it with random frames, but
guided by coverage: the pre-login process may be an attacker's, so whatever it sends, the monitor
answers within its protocol or ends the connection (FrameError, ProtocolViolation), and it
never logs anyone in: alice's pop.auth secret is random per run, so no input can know it.

The input is a sequence of frames, each preceded by its length in two octets (big-endian).
"""

from __future__ import annotations

import secrets

from fuzz.harness import scratch_dir
from qpopper.server import monitor as monitor_mod
from qpopper.server import monitor_wire as wire
from qpopper.auth.policy import Authenticator
from qpopper.auth.store import PopAuthStore
from qpopper.config import Config

ALLOWED: tuple[type[BaseException], ...] = (wire.FrameError, monitor_mod.ProtocolViolation)
MAX_LEN = 4096
REPLIES = {wire.Kind.LOGIN, wire.Kind.REFUSED, wire.Kind.DATA}

_dir = scratch_dir("monitor_wire")
_store = PopAuthStore.create(str(_dir / "pop.auth"))
_store.set_secret("alice", secrets.token_hex(20))
_cfg = Config.defaults().replace(user_database="pop-auth", pop_auth_owner="nobody",
                                 auth_brakes_file=None, auth_failure_delay=0,
                                 reverse_lookup=False)


def frames(data: bytes):
    at = 0
    while at + 2 <= len(data):
        size = int.from_bytes(data[at:at + 2], "big")
        yield data[at + 2:at + 2 + size]
        at += 2 + size


def one_input(data: bytes) -> None:
    mon = monitor_mod.Monitor(_cfg, lambda priority, text: None, hostname="test.host",
                              peer=("192.0.2.1", 4000), client=monitor_mod.Client(-1, -1, None))
    mon.authenticator = Authenticator(_cfg, mon.log, store=_store)
    mon.authenticator.sleep = lambda seconds: None
    mon.apop_timestamp = "<1.2.3@test.host>"
    for frame_bytes in frames(data):
        frame = wire.decode(frame_bytes, wire.REQUESTS)
        if frame.kind is wire.Kind.HANDOVER:
            raise monitor_mod.ProtocolViolation("HANDOVER without a login")
        reply = mon._answer(frame)
        wire.decode(reply, REPLIES)
        assert mon.login is None, f"logged in {mon.login} without the secret"
        if mon._closing:
            return
