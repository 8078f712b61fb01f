"""Clients with their DEFAULT choices against the real server (root, real system users, a real
PAM service): curl (no --login-options: it picks the strongest mechanism CAPA offers), mpop (its
`auth on`: the strongest method it may use) and Python's poplib (user/pass_). mpop's defaults
include TLS (STARTTLS, the certificate checked against the test CA); without TLS its `auth on`
only considers methods that keep the password off the wire, so the test that it picks SCRAM
turns TLS off. A system user without a store secret logs in with each, whether or not a
pop.auth store exists, because the store mechanisms are offered only where the site turns them
on (store-mechanisms: docs/internals.md, "Store mechanisms"); once it does, a store user logs in
with APOP, CRAM-MD5 and SCRAM, and a system user without a secret who is offered them anyway
gets a reply naming the reason, logged as a policy refusal (not `LOGIN FAILED`)."""

from __future__ import annotations

import os
import poplib
import shutil
import subprocess

import pytest

from tests.helpers.popauth import owned_store
from tests.helpers.sysusers import make_spool
from tests.helpers.testpki import TestPki
from tests.helpers.messages import mbox
from tests.server_harness import Site

pytestmark = pytest.mark.timeout(120)

CURL = shutil.which("curl")
MPOP = shutil.which("mpop")
SECRET = "store-secret-of-alice"
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed "
                                                     "(Makefile DEB_TEST_PACKAGES)")
needs_mpop = pytest.mark.skipif(MPOP is None, reason="mpop is not installed "
                                                     "(Makefile DEB_TEST_PACKAGES)")


def make_site(system_users, pam_service, world_tmp, *, store: bool, **options) -> Site:
    """bob: a system user with no store secret; alice: one with a secret when `store`. STLS
    is offered, with a certificate of the test CA (site.pki)."""
    pki = TestPki(os.path.join(world_tmp, "pki"))
    owner, pop_auth = owned_store(system_users, world_tmp)
    # stock Debian accounts (yescrypt, through PAM), as the clients meet them
    alice = system_users.create("al", crypt_method=None)
    bob = system_users.create("bo", crypt_method=None)
    if store:
        pop_auth.set_secret(alice.name, SECRET)
    else:
        os.unlink(pop_auth.path)                 # no store at all
    site = Site(world_tmp, pam_service, pop_auth_file=pop_auth.path,
                pop_auth_owner=owner.name, sasl_no_plaintext=False,
                log_login='login "%1" at %3', sasl_log_login='sasl login "%1" with %5 at %3',
                tls_support="stls", tls_server_cert_file=pki.server("pop").combined_file,
                **options)
    site.pki = pki
    for user in (alice, bob):
        make_spool(site.spool_dir, user, mbox(("hello", f"for {user.name}")))
    site.alice, site.bob = alice, bob
    site.srv = site.server()
    return site


@pytest.fixture(params=["with a store", "without a store"])
def site(request, system_users, pam_service, world_tmp):
    s = make_site(system_users, pam_service, world_tmp, store=request.param == "with a store")
    yield s
    s.close()


@pytest.fixture
def enabled_site(system_users, pam_service, world_tmp):
    """A site that turned the store mechanisms on (store-mechanisms = on)."""
    s = make_site(system_users, pam_service, world_tmp, store=True, store_mechanisms="on")
    yield s
    s.close()


def curl(site, user, secret, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([CURL, "--silent", "--show-error", "--verbose", "--max-time", "30",
                           *extra, "--user", f"{user.name}:{secret}",
                           f"pop3://{site.srv.host}:{site.srv.port}/1"],
                          capture_output=True, text=True, timeout=60)


def mpop(site, user, secret, directory, *, tls: bool = True) -> subprocess.CompletedProcess:
    """mpop with its defaults (auth on; TLS by STARTTLS, checked against the test CA), or
    with `tls off` (then it only considers methods that keep the password off the wire)."""
    mbox_path = os.path.join(directory, f"{user.name}.mbox")
    open(mbox_path, "w").close()
    config = os.path.join(directory, f"{user.name}.mpoprc")
    with open(os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        tls_lines = (f"tls on\ntls_trust_file {site.pki.ca_file}\n" if tls else "tls off\n")
        f.write(f"account default\nhost localhost\nport {site.srv.port}\n{tls_lines}"
                f"user {user.name}\npassword {secret}\nkeep on\n"
                f"uidls_file {directory}/{user.name}.uidls\ndelivery mbox {mbox_path}\n")
    result = subprocess.run([MPOP, "-C", config, "--debug"], capture_output=True, text=True,
                            timeout=60, env=dict(os.environ, HOME=directory))
    with open(mbox_path) as f:
        result.delivered = f.read()
    return result


def assert_told_why(site, mechanism: str, prefix: str, transcript: str) -> None:
    """bob (no secret) was answered the reason, with no response code, in the client's
    `transcript` (server lines after `prefix`), and it was logged as a policy refusal."""
    assert (f'{prefix}-ERR No {mechanism} secret is stored for "{site.bob.name}"; log in with '
            f"USER/PASS or AUTH PLAIN") in transcript
    site.syslog.wait_for(rf"LOGIN REFUSED \(policy\), user={site.bob.name}, method={mechanism}, "
                         rf"ip=\[127\.0\.0\.1\], reason=no AUTH {mechanism} secret in the "
                         rf"pop\.auth store")
    no_failure_lines(site)


def no_failure_lines(site) -> None:
    texts = site.syslog.texts()
    assert not [t for t in texts if "LOGIN FAILED" in t or "Failed attempted login" in t], texts


# --- a system user, every client's default, with and without a store ----------------------------
@needs_curl
def test_curl_default_choice_logs_a_system_user_in(site):
    result = curl(site, site.bob, site.bob.password)
    assert result.returncode == 0, result.stderr
    assert f"for {site.bob.name}" in result.stdout
    assert "CRAM-MD5" not in result.stderr and "SCRAM" not in result.stderr   # not offered
    site.syslog.wait_for(rf'(sasl )?login "{site.bob.name}".* at 127\.0\.0\.1')
    no_failure_lines(site)


@needs_mpop
def test_mpop_default_choice_logs_a_system_user_in(site, world_tmp):
    result = mpop(site, site.bob, site.bob.password, world_tmp)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"for {site.bob.name}" in result.delivered
    site.syslog.wait_for(rf'(sasl )?login "{site.bob.name}".* at 127\.0\.0\.1')
    no_failure_lines(site)


def test_poplib_user_pass_logs_a_system_user_in(site):
    client = poplib.POP3(site.srv.host, site.srv.port, timeout=20)
    try:
        assert client.getwelcome().count(b"<") == 0           # no APOP timestamp offered
        client.user(site.bob.name)
        assert client.pass_(site.bob.password).startswith(b"+OK")
        assert client.stat()[0] == 1
    finally:
        client.quit()
    no_failure_lines(site)


def test_a_store_user_uses_user_pass_while_the_store_mechanisms_are_off(system_users,
                                                                        pam_service, world_tmp):
    """Off (the default for system users), nothing stronger is offered, so
    clear-text-password default cannot ask a store user for it: USER/PASS works."""
    s = make_site(system_users, pam_service, world_tmp, store=True)
    try:
        client = poplib.POP3(s.srv.host, s.srv.port, timeout=20)
        try:
            client.user(s.alice.name)
            assert client.pass_(s.alice.password).startswith(b"+OK")
        finally:
            client.quit()
        no_failure_lines(s)
    finally:
        s.close()


# --- the site turned the store mechanisms on ----------------------------------------------------
def test_enabled_a_store_user_logs_in_with_apop(enabled_site):
    site = enabled_site
    client = poplib.POP3(site.srv.host, site.srv.port, timeout=20)
    try:
        assert client.apop(site.alice.name, SECRET).startswith(b"+OK")
    finally:
        client.quit()
    site.syslog.wait_for(rf'login "{site.alice.name}" at 127\.0\.0\.1')


@needs_curl
def test_enabled_curl_default_choice_is_cram_md5_and_works_for_a_store_user(enabled_site):
    site = enabled_site
    result = curl(site, site.alice, SECRET)
    assert result.returncode == 0, result.stderr
    assert "AUTH CRAM-MD5" in result.stderr
    site.syslog.wait_for(rf'sasl login "{site.alice.name}" with CRAM-MD5 at 127\.0\.0\.1')


@needs_mpop
def test_enabled_mpop_default_choice_is_scram_and_works_for_a_store_user(enabled_site,
                                                                         world_tmp):
    site = enabled_site
    result = mpop(site, site.alice, SECRET, world_tmp, tls=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--> AUTH SCRAM-SHA-256" in result.stdout
    assert f"for {site.alice.name}" in result.delivered
    site.syslog.wait_for(rf'sasl login "{site.alice.name}" with SCRAM-SHA-256 at 127\.0\.0\.1')


@needs_curl
def test_enabled_a_user_without_a_secret_is_told_why_and_it_is_no_failure(enabled_site):
    """curl picks CRAM-MD5 for bob, who has no secret: the reply names the reason, with no
    [AUTH] code (the password is not at fault), and the log has a policy line, not a
    failure; his USER/PASS still works."""
    site = enabled_site
    result = curl(site, site.bob, site.bob.password)
    assert result.returncode == 67, result.stderr                 # CURLE_LOGIN_DENIED
    assert_told_why(site, "CRAM-MD5", "< ", result.stderr)
    result = curl(site, site.bob, site.bob.password, "--login-options", "AUTH=PLAIN")
    assert result.returncode == 0, result.stderr


@needs_mpop
def test_enabled_mpop_scram_for_a_user_without_a_secret_is_told_why(enabled_site, world_tmp):
    """Without TLS mpop picks SCRAM-SHA-256 for bob too: the exchange runs on a decoy (the
    server-first reveals nothing), and the answer to the proof names the reason."""
    site = enabled_site
    result = mpop(site, site.bob, site.bob.password, world_tmp, tls=False)
    assert result.returncode != 0
    assert "--> AUTH SCRAM-SHA-256" in result.stdout
    assert_told_why(site, "SCRAM-SHA-256", "<-- ", result.stdout)
