"""clear-text-password (-p 0..4) over real connections to the real server, CAPA's USER line
included. For `local`, the refused client is a host of the test's own: a network namespace
joined to this one by a veth pair with addresses of the test's choosing (10.200.N.0/30, used
only between the two ends), so the server sees a real non-loopback peer."""

from __future__ import annotations

import contextlib
import os
import poplib
import re
import secrets
import shutil
import subprocess
from types import SimpleNamespace

import pytest

from tests.helpers.popauth import owned_store
from tests.helpers.sysusers import make_spool
from tests.helpers.messages import mbox
from tests.server_harness import Site

pytestmark = pytest.mark.timeout(120)

STRONGER = "You must use stronger authentication such as AUTH or APOP to access this account"
LOCAL_ONLY = "Clear text passwords are permitted only from the local host"
OVER_TLS_ONLY = "Clear text passwords are permitted only over TLS"
TLS_ONLY = f"{OVER_TLS_ONLY}; use STLS first"
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture
def site(system_users, pam_service, world_tmp):
    """alice has an APOP secret in pop.auth (so `default` refuses her USER/PASS); bob has not."""
    owner, store = owned_store(system_users, world_tmp)
    alice = system_users.create("al")
    bob = system_users.create("bo")
    store.set_secret(alice.name, "apop-secret")
    s = Site(world_tmp, pam_service, pop_auth_file=store.path, pop_auth_owner=owner.name,
             store_mechanisms="on")
    for user in (alice, bob):
        make_spool(s.spool_dir, user, mbox(("hi", "there")))
    s.alice, s.bob = alice, bob
    yield s
    s.close()


def user_pass(server, user, password=None) -> str:
    """'+OK ...' or the -ERR text of PASS; CAPA is checked separately."""
    client = poplib.POP3(server.host, server.port, timeout=20)
    try:
        client.user(user.name)
        try:
            return client.pass_(user.password if password is None else password).decode()
        except poplib.error_proto as refusal:
            return str(refusal.args[0].decode())
    finally:
        client.close()


def capa(server) -> dict:
    client = poplib.POP3(server.host, server.port, timeout=20)
    try:
        return client.capa()
    finally:
        client.quit()


def test_p0_default(site):
    srv = site.server(extra_args=["-p", "0"])
    assert "USER" in capa(srv)
    assert user_pass(srv, site.bob).startswith(f"+OK {site.bob.name} has 1 visible")
    assert user_pass(srv, site.alice) == f"-ERR [AUTH] {STRONGER}"


def test_p0_default_wrong_password_does_not_reveal_who_has_an_apop_secret(site):
    """`default` refuses USER/PASS for alice (she has an APOP secret), but says so only for
    her right password: with a wrong one she gets the reply an unknown name gets, so
    guessing at names does not find the store's users."""
    srv = site.server(extra_args=["-p", "0"])
    ghost = SimpleNamespace(name=site.alice.name[:-1] + ("x" if site.alice.name[-1] != "x"
                                                           else "y"))
    for user in (site.alice, ghost):
        assert user_pass(srv, user, "wrong") == \
            f'-ERR [AUTH] Password supplied for "{user.name}" is incorrect.'
    assert user_pass(srv, site.alice) == f"-ERR [AUTH] {STRONGER}"


def user_refused(server, user) -> str:
    """USER's -ERR text: poplib.user raises, so poplib never sends the password."""
    client = poplib.POP3(server.host, server.port, timeout=20)
    try:
        with pytest.raises(poplib.error_proto) as refusal:
            client.user(user.name)
        return refusal.value.args[0].decode()
    finally:
        client.quit()


def assert_no_failed_login(site) -> None:
    """USER refused up front carried no password: not a failed login, no brake."""
    site.syslog.wait_for(r"pre-login: USER from .* refused before the password: clear-text-password \w+")
    texts = site.syslog.texts()
    assert not any("Failed attempted login" in text or "LOGIN FAILED" in text for text in texts)


def test_p1_never(site):
    srv = site.server(extra_args=["-p", "1"])
    caps = capa(srv)
    assert "USER" not in caps
    assert not {"PLAIN", "LOGIN"} & set(caps.get("SASL", []))
    assert user_refused(srv, site.bob) == f"-ERR [AUTH] {STRONGER}"
    assert user_refused(srv, site.alice) == f"-ERR [AUTH] {STRONGER}"
    assert_no_failed_login(site)
    # APOP still works: `never` is about clear text only.
    client = poplib.POP3(srv.host, srv.port, timeout=20)
    try:
        assert client.apop(site.alice.name, "apop-secret").startswith(b"+OK")
    finally:
        client.quit()


@pytest.mark.parametrize("args, refusal", [
    (["--store-mechanisms=off"],
     "Clear text passwords are not permitted, and this server offers no other way to log in"),
    (["--sasl-no-dictionary"],
     "You must use stronger authentication such as APOP to access this account"),
])
def test_p1_never_names_only_what_is_offered(site, args, refusal):
    """Qpopper's "such as AUTH or APOP" would send a client to what is not offered: without
    the store's mechanisms nothing but clear text is (AUTH offers PLAIN and LOGIN only, both
    refused under never); with sasl-no-dictionary, AUTH offers nothing but APOP is there
    (docs/compatibility.md, "Clear-text passwords")."""
    srv = site.server(extra_args=["-p", "1", *args])
    assert user_refused(srv, site.bob) == f"-ERR [AUTH] {refusal}"
    assert_no_failed_login(site)


def test_p2_always(site):
    srv = site.server(extra_args=["-p", "2"])
    assert "USER" in capa(srv)
    assert user_pass(srv, site.alice).startswith(f"+OK {site.alice.name} has 1 visible")
    assert user_pass(srv, site.bob).startswith("+OK")


def test_p4_tls_without_tls_configured_refuses_clear_text_at_user(site):
    srv = site.server(extra_args=["-p", "4"])
    caps = capa(srv)
    assert "USER" not in caps
    assert "PLAIN" not in " ".join(caps.get("SASL", []))
    assert user_refused(srv, site.bob) == f"-ERR [AUTH] {OVER_TLS_ONLY}"   # no STLS to suggest
    assert_no_failed_login(site)


# --- local: loopback admitted, a real non-loopback peer refused ------------------------------------
@contextlib.contextmanager
def namespace_host():
    """(host-side address, namespace name): a veth pair into a fresh network namespace."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to make a network namespace")
    tag = secrets.token_hex(3)
    ns, host_if, ns_if = f"qpt{tag}", f"qpth{tag}", f"qptn{tag}"
    subnet = 200 + secrets.randbelow(50)            # 10.200-249.N.0/30: ours, on this link only
    third = secrets.randbelow(250)
    host_ip, ns_ip = f"10.{subnet}.{third}.1", f"10.{subnet}.{third}.2"
    made = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make a network namespace here: {made.stderr.strip()}")
    try:
        for cmd in (["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if],
                    ["ip", "link", "set", ns_if, "netns", ns],
                    ["ip", "addr", "add", f"{host_ip}/30", "dev", host_if],
                    ["ip", "link", "set", host_if, "up"],
                    ["ip", "netns", "exec", ns, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_if],
                    ["ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "up"],
                    ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"]):
            step = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            if step.returncode != 0:
                pytest.skip(f"cannot set up the veth pair: {' '.join(cmd)}: {step.stderr.strip()}")
        yield host_ip, ns_ip, ns
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=20)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


CLIENT = """
import poplib, sys
host, port, user, password = sys.argv[1:5]
c = poplib.POP3(host, int(port), timeout=20)
c.user(user)
try:
    print(c.pass_(password).decode())
except poplib.error_proto as e:
    print(e.args[0].decode())
c.close()
"""


def test_p3_local(site):
    with namespace_host() as (host_ip, ns_ip, ns):
        loopback = site.server(extra_args=["-p", "3"])
        outside = site.server(host=host_ip, extra_args=["-p", "3"])
        assert "USER" in capa(loopback)
        assert user_pass(loopback, site.bob).startswith(f"+OK {site.bob.name} has 1 visible")
        result = subprocess.run(["ip", "netns", "exec", ns, SYSTEM_PYTHON, "-c", CLIENT,
                                 host_ip, str(outside.port), site.bob.name, site.bob.password],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"-ERR [AUTH] {LOCAL_ONLY}"
        # a policy refusal (the password was right), not a failed login
        site.syslog.wait_for(rf"LOGIN REFUSED \(policy\), user={site.bob.name}, method=USER, "
                             rf"ip=\[{ns_ip}\], reason=clear-text-password local, client not "
                             rf"on loopback")
        assert not [t for t in site.syslog.texts() if "LOGIN FAILED" in t or "Failed" in t]


# --- tls: inside STLS, clear text and the plaintext SASL mechanisms are admitted ------------------
@pytest.fixture
def tls_site(system_users, pam_service, world_tmp, tmp_path):
    from tests.helpers.testpki import TestPki
    pki = TestPki(str(tmp_path / "pki"))
    good = pki.server("good")
    s = Site(world_tmp, pam_service, tls_support="stls", clear_text_password="tls",
             tls_server_cert_file=good.cert_file, tls_private_key_file=good.key_file,
             sasl_log_login='sasl "%1" with %5')
    user = system_users.create("tl")
    make_spool(s.spool_dir, user, mbox(("over tls", "secret mail")))
    s.user, s.pki = user, pki
    s.srv = s.server()
    yield s
    s.close()


def test_p4_plain_sasl_only_after_stls(tls_site):
    import base64
    import ssl
    user, srv = tls_site.user, tls_site.srv
    client = poplib.POP3(srv.host, srv.port, timeout=20)
    try:
        caps = client.capa()
        assert "USER" not in caps and "PLAIN" not in caps.get("SASL", [])
        token = base64.b64encode(f"\0{user.name}\0{user.password}".encode()).decode()
        with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\] Plaintext authentication "
                                                     r"is permitted only over TLS; use STLS"):
            client._shortcmd(f"AUTH PLAIN {token}")
        client.stls(ssl.create_default_context(cafile=tls_site.pki.ca_file))
        caps = client.capa()
        assert "USER" in caps and {"PLAIN", "LOGIN"} <= set(caps["SASL"])
        assert client._shortcmd(f"AUTH PLAIN {token}").startswith(
            f"+OK {user.name} has 1 visible".encode())
        client.quit()
    finally:
        client.close()
    tls_site.syslog.wait_for(rf'sasl "{user.name}" with PLAIN')


def test_p4_user_before_stls_is_refused_and_the_password_never_sent(tls_site):
    """RFC 2595 §2.3: poplib's USER gets -ERR [AUTH] with the hint to use STLS, so it never
    sends PASS; after STLS the same client logs in with USER/PASS."""
    import ssl
    user, srv = tls_site.user, tls_site.srv
    client = poplib.POP3(srv.host, srv.port, timeout=20)
    try:
        with pytest.raises(poplib.error_proto, match=re.escape(f"-ERR [AUTH] {TLS_ONLY}")):
            client.user(user.name)
        client.stls(ssl.create_default_context(cafile=tls_site.pki.ca_file))
        assert client.user(user.name).startswith(b"+OK")
        assert client.pass_(user.password).startswith(f"+OK {user.name} has 1 visible".encode())
        client.quit()
    finally:
        client.close()
    assert_no_failed_login(tls_site)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_p4_curl_plaintext_sasl_over_stls(tls_site, mechanism):
    user, srv = tls_site.user, tls_site.srv
    result = subprocess.run(["curl", "-sS", "--max-time", "30", "--ssl-reqd", "--cacert",
                             tls_site.pki.ca_file, "--login-options", f"AUTH={mechanism}",
                             "-u", f"{user.name}:{user.password}",
                             f"pop3://127.0.0.1:{srv.port}/1"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "secret mail" in result.stdout
    tls_site.syslog.wait_for(rf'sasl "{user.name}" with {mechanism}')
