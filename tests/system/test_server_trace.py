"""`-d -t FILE` through the real server (root only): the trace file shows the dialogue — each
command and the first line of each reply, with the session's state — written by the
pre-login process and the user session, with every secret masked (qpopper/pop3/trace.py)."""

from __future__ import annotations

import base64
import hashlib
import os
import poplib
import re
import stat

import pytest

from tests.helpers.sysusers import make_spool
from tests.helpers.messages import mbox
from tests.server_harness import Site

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

TRACE_RE = re.compile(r"\w{3} [ \d]\d \d\d:\d\d:\d\d\.\d{3} \d{4} \[(?P<pid>\d+)\] (?P<text>.*)")


@pytest.fixture
def traced_site(world_tmp, pam_service):
    trace = os.path.join(world_tmp, "popper.trace")
    s = Site(world_tmp, pam_service, tracefile=trace, debug=True, clear_text_password="default",
             sasl_no_plaintext=False)
    yield s, trace
    s.close()


def trace_records(path: str) -> list[tuple[int, str]]:
    with open(path, encoding="utf-8") as f:
        return [(int(m["pid"]), m["text"]) for m in map(TRACE_RE.fullmatch, f.read().splitlines())
                if m]


def test_trace_shows_the_dialogue_with_secrets_masked(traced_site, system_users):
    site, trace = traced_site
    user = system_users.create("tr", password="Tr4ce-secret-pw")
    make_spool(site.spool_dir, user, mbox(("first", "hello")))
    server = site.server()
    client = poplib.POP3(server.host, server.port, timeout=20)
    plain = base64.b64encode(f"\0{user.name}\0Sasl-wrong-pw".encode()).decode()
    login_response = base64.b64encode(b"Login-wrong-pw").decode()
    try:
        client.capa()
        with pytest.raises(poplib.error_proto):      # a wrong password: masked as well
            client.user(user.name)
            client.pass_("Wr0ng-guess-pw")
        # a secret in an AUTH initial response and in a SASL continuation (the third failure
        # ends the connection)
        with pytest.raises(poplib.error_proto):
            client._shortcmd(f"AUTH PLAIN {plain}")
        with pytest.raises((poplib.error_proto, OSError)):
            client._shortcmd("AUTH LOGIN")
            client._shortcmd(base64.b64encode(user.name.encode()).decode())
            client._shortcmd(login_response)
    finally:
        client.close()
    client = poplib.POP3(server.host, server.port, timeout=20)
    digest = hashlib.md5(b"<x@y>Apop-digest-source").hexdigest()
    try:
        with pytest.raises(poplib.error_proto):
            client._shortcmd(f"APOP {user.name} {digest}")
        client.user(user.name)
        client.pass_(user.password)
        client.stat()
        client.retr(1)
        client.quit()
    finally:
        client.close()
    records = trace_records(trace)
    text = "\n".join(t for _, t in records)
    for secret in (user.password, "Wr0ng-guess-pw", plain, digest, login_response):
        assert secret not in text
    dialogue = [t for _, t in records if " Received: " in t or " Sent: " in t]
    assert 'pre-login: AUTHORIZATION Received: "CAPA"' in dialogue
    assert 'pre-login: AUTHORIZATION Sent: "+OK Capability list follows"' in dialogue
    assert f'pre-login: AUTHORIZATION Received: "USER {user.name}"' in dialogue
    assert 'pre-login: AUTHORIZATION Received: "PASS <hidden>"' in dialogue
    assert 'pre-login: AUTHORIZATION Received: "AUTH PLAIN <hidden>"' in dialogue
    assert 'pre-login: AUTHORIZATION Received: "AUTH LOGIN"' in dialogue
    assert any(re.fullmatch(r'pre-login: AUTHORIZATION Received: "<hidden> \(\d+ octets '
                            r'inside an exchange\)"', t) for t in dialogue)
    assert f'pre-login: AUTHORIZATION Received: "APOP {user.name} <hidden>"' in dialogue
    assert any(t.startswith('pre-login: AUTHORIZATION Sent: "-ERR [AUTH] ') for t in dialogue)
    assert any(re.fullmatch(rf'TRANSACTION Sent: "\+OK {user.name} has 1 visible message.*"', t)
               for t in dialogue)
    assert 'TRANSACTION Received: "STAT"' in dialogue
    assert 'TRANSACTION Received: "RETR 1"' in dialogue
    assert 'TRANSACTION Received: "QUIT"' in dialogue
    # the pre-login process's records are written (prefixed) by the root processes of its
    # connection — its authentication process while it answers requests, the monitor those
    # left after the last one — never by the master
    before = {pid for pid, t in records if t.startswith("pre-login: AUTHORIZATION Received: ")}
    after = {pid for pid, t in records if t.startswith("TRANSACTION Received: ")}
    assert len(after) == 1 and before and server.pid not in before | after
    assert stat.S_IMODE(os.stat(trace).st_mode) == 0o600
