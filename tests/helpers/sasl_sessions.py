"""AUTH transcripts' site (tests/unit/test_sasl_protocol.py, tests/integration/test_scram_plus.py):
alice's spool and her secret in a real pop.auth store, sessions of the real Protocol and
Authenticator on it, and the base64 of the exchanges."""

from __future__ import annotations

import base64
import re

import pytest

from qpopper.auth.policy import Authenticator
from qpopper.auth.store import PopAuthStore
from qpopper.pop3.protocol import State
from tests.transcripts.harness import Spool

SECRET = "tea-party-2026"
OK_ALICE = re.compile(rb"^\+OK alice has 1 visible message \(0 hidden\) in \d+ octets\.\r\n$")
AUTH_FAILED = b"-ERR [AUTH] authentication failure\r\n"
MESSAGE = b"From x@example.org Tue Nov 14 22:13:20 2023\nSubject: hi\n\nHello.\n"


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def challenge_of(reply: bytes) -> bytes:
    assert reply.startswith(b"+ ") and reply.endswith(b"\r\n"), reply
    return base64.b64decode(reply[2:-2], validate=True)


@pytest.fixture
def site(tmp_path):
    """A spool for alice and a pop.auth store holding her secret (and SCRAM verifiers)."""
    spool = Spool(tmp_path / "spool", sasl_no_dictionary=False, sasl_no_plaintext=False,
                  user_database="pop-auth", pop_auth_owner="nobody", log_login="login %1 %5",
                  sasl_log_login="sasl %1 (%4) with %5 ssf %6", auth_brakes_file=None)
    spool.write("alice", MESSAGE)
    store = PopAuthStore.create(str(tmp_path / "pop.auth"))
    store.set_secret("alice", SECRET)
    spool.store = store
    yield spool
    spool.close()


def session(site, *, tls_active=False, start_tls=None, **cfg):
    cfg_now = site.cfg.replace(**cfg) if cfg else site.cfg
    logs = []
    auth = Authenticator(cfg_now, lambda p, t: logs.append((p, t)), store=site.store)
    pop = site.session(authenticator=auth, tls_active=tls_active, start_tls=start_tls, **cfg)
    pop.authlog = logs
    pop.greet()
    return pop


def assert_logged_in(pop, reply):
    assert OK_ALICE.match(reply), reply
    assert pop.proto.state == State.TRANSACTION
