"""What bounds the AUTHORIZATION state (the root-owned part of a session): refused user names
count as failed logins, one user-name rule for every login path, and a total deadline.

The real Protocol and the real Authenticator over a real pop.auth store (user-database
pop-auth: no PAM involved), as in tests/test_sasl_protocol.py."""

from __future__ import annotations

import base64
import io
import socket
import syslog
import threading
import time

import pytest

from qpopper import limits

from qpopper.pop3 import auth_state
from qpopper.auth import is_possible_user_name
from qpopper.auth import policy
from qpopper.auth.policy import Authenticator
from qpopper.auth.store import PopAuthStore
from qpopper.config import Config
from qpopper.log import Logger
from qpopper.pop3.protocol import State
from qpopper.pop3.responses import PopError
from qpopper.server.channel import Channel
from qpopper.server.session import Session
from qpopper.spool.paths import check_user_name
from tests.transcripts.harness import Spool

pytestmark = pytest.mark.timeout(30)

MESSAGE = b"From x@example.org Tue Nov 14 22:13:20 2023\nSubject: hi\n\nHello.\n"
ODD_NAMES = (".x", "a..b", "..b", "a..")


@pytest.fixture
def site(tmp_path):
    spool = Spool(tmp_path / "spool", sasl_no_dictionary=False, sasl_no_plaintext=False,
                  user_database="pop-auth", pop_auth_owner="nobody", auth_brakes_file=None)
    spool.cfg = spool.cfg.replace(auth_failure_delay=2)
    spool.write("alice", MESSAGE)
    store = PopAuthStore.create(str(tmp_path / "pop.auth"))
    store.set_secret("alice", "secret")
    for name in ODD_NAMES:
        store.set_secret(name, "secret")         # the store takes them; no login may
    spool.store = store
    yield spool
    spool.close()


def session(site, **cfg_changes):
    logs: list[tuple[int, str]] = []
    auth = Authenticator(site.cfg, lambda p, t: logs.append((p, t)), store=site.store)
    auth.slept = []
    auth.sleep = auth.slept.append
    pop = site.session(authenticator=auth, **cfg_changes)
    pop.authlog = logs
    pop.greet()
    return pop


# --- refused names are failed logins ------------------------------------------------------------
def test_bad_user_names_count_towards_the_failure_cap_and_close_the_connection(site):
    pop = session(site)
    for attempt in range(1, limits.MAX_AUTH_FAILURES_PER_CONNECTION + 1):
        assert pop.send("USER ../x") == b"+OK Password required for ../x.\r\n"
        assert pop.send("PASS y") == b'-ERR [AUTH] Password supplied for "../x" is incorrect.\r\n'
        assert pop.proto.closed == (attempt == limits.MAX_AUTH_FAILURES_PER_CONNECTION)
    assert pop.send("USER alice") == b""                 # nothing more is read
    auth = pop.env.authenticator
    assert auth.failures == limits.MAX_AUTH_FAILURES_PER_CONNECTION
    assert auth.slept == [2] * limits.MAX_AUTH_FAILURES_PER_CONNECTION
    texts = [text for _, text in pop.authlog]
    assert texts.count("[AUTH] Failed attempted login to ../x from host (client.example.net) "
                       "127.0.0.1") == limits.MAX_AUTH_FAILURES_PER_CONNECTION
    assert any("failed logins on one connection; closing it" in text
               for _, text in pop.env.logs)


def test_bad_names_and_wrong_passwords_share_one_cap(site):
    pop = session(site)
    pop.send("USER alice")
    assert pop.send("PASS wrong").startswith(b"-ERR [AUTH]")
    assert pop.send("APOP ../alice 0123456789abcdef0123456789abcdef") == \
        b"-ERR [AUTH] authentication failure\r\n"
    assert not pop.proto.closed
    pop.send("USER a/b")
    pop.send("PASS y")
    assert pop.proto.closed


def test_bad_sasl_names_count_too(site):
    pop = session(site)
    plain = base64.b64encode(b"\0../x\0secret").decode()
    for _ in range(limits.MAX_AUTH_FAILURES_PER_CONNECTION):
        assert pop.send(f"AUTH PLAIN {plain}").startswith(b"-ERR [AUTH]")
    assert pop.proto.closed
    assert pop.env.authenticator.failures == limits.MAX_AUTH_FAILURES_PER_CONNECTION


def test_control_characters_never_reach_the_log(site):
    pop = session(site)
    pop.send(b"USER al\x01ice\r\n")
    assert pop.send("PASS y") == b'-ERR [AUTH] Password supplied for "al?ice" is incorrect.\r\n'
    assert all("\x01" not in text for _, text in pop.authlog + pop.env.logs)


# --- one user-name rule -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ODD_NAMES)
def test_names_the_maildrop_refuses_are_refused_at_login(site, name):
    """`.x` (it would be user x's temporary drop) and `a..b` are in the store with the right
    secret, yet refused like a wrong password, at PASS, at APOP and at AUTH PLAIN: never a
    logged login followed by a maildrop refusal."""
    pop = session(site)
    assert pop.send(f"USER {name}") == f"+OK Password required for {name}.\r\n".encode()
    assert pop.send("PASS secret") == \
        f'-ERR [AUTH] Password supplied for "{name}" is incorrect.\r\n'.encode()
    plain = base64.b64encode(f"\0{name}\0secret".encode()).decode()
    assert pop.send(f"AUTH PLAIN {plain}").startswith(b"-ERR [AUTH]")
    assert pop.proto.state == State.AUTHORIZATION and pop.proto.login is None
    assert not any("Invalid user name" in text for _, text in pop.env.logs)


@pytest.mark.parametrize("name", ["alice", "a.b", "x" * limits.MAX_USER_NAME_OCTETS, "j_doe",
                                  "a-b", "../x", ".x", "a..b", "a/b", "-x", "a b", "a\tb",
                                  "", ".", "x" * (limits.MAX_USER_NAME_OCTETS + 1), "a\x7fb",
                                  "a\udcffb"])
def test_the_login_rule_never_admits_a_name_the_spool_refuses(name):
    try:
        check_user_name(name)
        spool_ok = True
    except PopError:
        spool_ok = False
    if is_possible_user_name(name):
        assert spool_ok, name
    # the protocol and the authenticator use this very function
    assert policy.is_possible_user_name is auth_state.is_possible_user_name \
        is is_possible_user_name


# --- the AUTHORIZATION deadline -----------------------------------------------------------------
def test_the_login_timeout_defaults_to_dovecots_three_minutes():
    assert Config.defaults().login_timeout == limits.LOGIN_TIMEOUT_S == 180


def clocked_session(site, **cfg_changes):
    """A session whose monotonic clock the test moves (starting at 1000)."""
    clock = [1000.0]
    pop = session(site, **cfg_changes)
    pop.proto.monotonic = lambda: clock[0]
    pop.proto.authorization_deadline = 1000.0 + pop.proto.cfg.login_timeout
    return pop, clock


def test_read_timeout_is_bounded_by_the_login_timeout(site):
    pop, clock = clocked_session(site, login_timeout=40)
    assert pop.proto.read_timeout(600) == 40
    clock[0] += 40 - 5
    assert pop.proto.read_timeout(600) == 5
    assert pop.proto.read_timeout(2) == 2
    clock[0] += 10
    assert pop.proto.read_timeout(600) == 0
    pop.proto.timeout()
    assert pop.proto.closed
    assert (syslog.LOG_NOTICE, "client.example.net (127.0.0.1) did not log in within "
                               "login-timeout 40 s; closing") in pop.env.logs


def test_the_login_timeout_option_sets_the_deadline(site):
    pop = site.session(login_timeout=7)
    now = pop.proto.monotonic()
    assert now + 6 < pop.proto.authorization_deadline <= now + 7
    assert pop.proto.read_timeout(600) <= 7


def test_the_deadline_ends_with_the_login(site):
    pop, clock = clocked_session(site)
    pop.send("USER alice")
    assert pop.send("PASS secret").startswith(b"+OK alice has 1 visible message")
    clock[0] += 10 * limits.LOGIN_TIMEOUT_S
    assert pop.proto.read_timeout(600) == 600


def test_a_trickling_client_is_cut_off_at_the_deadline(tmp_path):
    """The real Session over a socket pair: one byte every 0.2 s keeps inside any idle
    timeout, yet the session ends at the AUTHORIZATION deadline (login-timeout), without a
    reply."""
    cfg = Config.defaults().replace(reverse_lookup=False, timeout=5, spool_dir=str(tmp_path),
                                    auth_brakes_file=None, login_timeout=1)
    terminal = io.StringIO()
    log = Logger(stream=terminal)
    client, server = socket.socketpair()
    with client, server:
        channel = Channel(server.fileno(), server.fileno(), server)
        session = Session(cfg, channel, log=log, peer=("127.0.0.1", 40000), hostname="test.host")
        thread = threading.Thread(target=session.run, daemon=True)
        started = time.monotonic()
        thread.start()
        client.settimeout(5)
        assert client.recv(4096).startswith(b"+OK")
        for byte in b"USER alice and more":
            if not thread.is_alive():
                break
            try:
                client.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.2)
        thread.join(10)
        elapsed = time.monotonic() - started
        assert not thread.is_alive()
        assert client.recv(4096) == b""                 # closed, no reply (RFC 1939 §3)
    assert 0.9 <= elapsed < 3.5
    assert "127.0.0.1 (127.0.0.1) did not log in within login-timeout 1 s; closing" in terminal.getvalue()
    # the deadline ended the wait, not the idle timeout: no "Timeout (5 secs) during nw read"
    # line for a timeout that never happened
    assert "Timeout (" not in terminal.getvalue(), terminal.getvalue()
