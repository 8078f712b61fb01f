"""APOP and AUTH against the REAL server (tests/server_harness.py: the master as root, real
system users, a real PAM service, a pop.auth store owned by its owner account): Python's
poplib apop(), curl with AUTH=+APOP / PLAIN / LOGIN / CRAM-MD5, and a SCRAM-SHA-256 exchange
computed here from RFC 7677's algorithm."""

from __future__ import annotations

import base64
import hashlib
import os
import poplib
import re
import shutil
import signal
import socket
import stat
import subprocess

import pytest

from qpopper.auth import challenges
from tests.helpers.popauth import owned_store
from tests.helpers.sysusers import make_spool
from tests.helpers.messages import mbox
from tests.helpers.scram_client import ScramClient
from tests.server_harness import Site

pytestmark = pytest.mark.timeout(120)

APOP_SECRET = "mad-hatter-secret"
CURL = shutil.which("curl")


@pytest.fixture
def site(system_users, pam_service, world_tmp):
    """alice: system user with an APOP/SCRAM secret in pop.auth; bob: system user, PAM only."""
    owner, store = owned_store(system_users, world_tmp)
    alice = system_users.create("al")
    bob = system_users.create("bo")
    store.set_secret(alice.name, APOP_SECRET)
    s = Site(world_tmp, pam_service, pop_auth_file=store.path, pop_auth_owner=owner.name,
             store_mechanisms="on",
             sasl_no_plaintext=False, log_login='login "%1" at %3',
             sasl_log_login='sasl login "%1" (%4) with %5 at %3')
    for user in (alice, bob):
        make_spool(s.spool_dir, user, mbox(("hello", f"for {user.name}")))
    s.alice, s.bob, s.store = alice, bob, store
    s.srv = s.server()
    yield s
    s.close()


def test_poplib_apop(site):
    client = poplib.POP3(site.srv.host, site.srv.port, timeout=20)
    try:
        assert client.apop(site.alice.name, APOP_SECRET).startswith(b"+OK")
        assert client.stat()[0] == 1
    finally:
        client.quit()
    site.syslog.wait_for(rf'login "{site.alice.name}" at 127\.0\.0\.1')


def test_poplib_apop_wrong_secret(site):
    client = poplib.POP3(site.srv.host, site.srv.port, timeout=20)
    try:
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\] authentication failure"):
            client.apop(site.alice.name, "wrong")
    finally:
        client.close()


def test_clear_text_default_refuses_users_of_the_apop_store(site):
    client = poplib.POP3(site.srv.host, site.srv.port, timeout=20)
    try:
        client.user(site.alice.name)
        with pytest.raises(poplib.error_proto, match="stronger authentication"):
            client.pass_(site.alice.password)
    finally:
        client.close()


def test_store_with_wrong_mode_is_sys_perm(site):
    os.chmod(site.store.path, 0o640)
    client = poplib.POP3(site.srv.host, site.srv.port, timeout=20)
    try:
        with pytest.raises(poplib.error_proto,
                           match=r"\[SYS/PERM\] POP authentication DB has wrong mode \(0640\)"):
            client.apop(site.alice.name, APOP_SECRET)
    finally:
        client.close()


def test_store_with_wrong_owner_is_sys_perm(site):
    os.chown(site.store.path, site.bob.uid, -1)
    client = poplib.POP3(site.srv.host, site.srv.port, timeout=20)
    try:
        with pytest.raises(poplib.error_proto, match=r"\[SYS/PERM\] POP authentication DB"):
            client.apop(site.alice.name, APOP_SECRET)
    finally:
        client.close()


@pytest.mark.skipif(CURL is None, reason="curl is not installed (Makefile DEB_TEST_PACKAGES)")
@pytest.mark.parametrize("login_options, who", [
    ("AUTH=+APOP", "alice"), ("AUTH=CRAM-MD5", "alice"),
    ("AUTH=PLAIN", "bob"), ("AUTH=LOGIN", "bob")])
def test_curl_logs_in(site, login_options, who):
    user = site.alice if who == "alice" else site.bob
    secret = APOP_SECRET if who == "alice" else user.password
    url = f"pop3://{site.srv.host}:{site.srv.port}/1"
    result = subprocess.run([CURL, "--silent", "--show-error", "--max-time", "30",
                             "--login-options", login_options, "--user", f"{user.name}:{secret}",
                             url], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"for {user.name}" in result.stdout              # RETR 1 came back
    mechanism = login_options.split("=")[1].lstrip("+")
    if mechanism == "APOP":
        site.syslog.wait_for(rf'login "{user.name}" at 127\.0\.0\.1')
    else:
        site.syslog.wait_for(rf'sasl login "{user.name}" \({user.name}\) with {mechanism} at '
                             rf'127\.0\.0\.1')


@pytest.mark.skipif(CURL is None, reason="curl is not installed (Makefile DEB_TEST_PACKAGES)")
def test_curl_plain_with_a_wrong_password_fails(site):
    result = subprocess.run([CURL, "--silent", "--max-time", "30", "--login-options",
                             "AUTH=PLAIN", "--user", f"{site.bob.name}:wrong",
                             f"pop3://{site.srv.host}:{site.srv.port}/"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 67          # CURLE_LOGIN_DENIED


class Lines:
    def __init__(self, sock):
        self.file = sock.makefile("rb")

    def line(self) -> bytes:
        return self.file.readline()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_scram_against_the_real_server(site, mechanism):
    with socket.create_connection((site.srv.host, site.srv.port), timeout=20) as sock:
        reader = Lines(sock)
        assert reader.line().startswith(b"+OK")
        sock.sendall(b"CAPA\r\n")
        capa = []
        while (line := reader.line()) != b".\r\n":
            capa.append(line)
        assert any(line.startswith(b"SASL ") and mechanism.encode() in line for line in capa)
        client = ScramClient(mechanism, site.alice.name, APOP_SECRET)
        sock.sendall(f"AUTH {mechanism} ".encode() + base64.b64encode(client.first()) + b"\r\n")
        challenge = reader.line()
        assert challenge.startswith(b"+ "), challenge
        sock.sendall(base64.b64encode(client.final(base64.b64decode(challenge[2:]))) + b"\r\n")
        final = reader.line()
        assert final.startswith(b"+ "), final
        assert client.server_signature_ok(base64.b64decode(final[2:]))
        sock.sendall(b"\r\n")
        assert reader.line().startswith(f"+OK {site.alice.name} has 1 visible".encode())
        sock.sendall(b"QUIT\r\n")
        assert reader.line().startswith(b"+OK")
        reader.file.close()
    site.syslog.wait_for(rf'sasl login "{site.alice.name}" \({site.alice.name}\) with '
                         rf'{mechanism} at 127\.0\.0\.1')


def scram_salt(srv, name: str) -> bytes:
    """The salt of the server-first message that `name`'s SCRAM-SHA-256 exchange gets."""
    with socket.create_connection((srv.host, srv.port), timeout=20) as sock:
        reader = Lines(sock)
        reader.line()
        first = ScramClient("SCRAM-SHA-256", name, "any").first()
        sock.sendall(b"AUTH SCRAM-SHA-256 " + base64.b64encode(first) + b"\r\n")
        challenge = reader.line()
        sock.sendall(b"*\r\n")
        reader.line()
        reader.file.close()
    assert challenge.startswith(b"+ "), challenge
    fields = dict(part.split(b"=", 1) for part in base64.b64decode(challenge[2:]).split(b","))
    return base64.b64decode(fields[b"s"])


def test_scram_decoys_are_keyed_by_a_secret_only_root_and_the_owner_can_read(site):
    """A name without a verifier gets a made-up salt, stable across connections and
    restarts, keyed by `<store>.decoy-key` (0600, the owner's), not by anything a local user
    can read such as /etc/machine-id (docs/internals.md, "Store mechanisms")."""
    ghost = "qptnosuchscramuser"
    salt = scram_salt(site.srv, ghost)
    assert scram_salt(site.srv, ghost) == salt
    key_path = site.store.path + ".decoy-key"
    st = os.lstat(key_path)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.stat(site.store.path).st_uid and st.st_size == 32
    with open(key_path, "rb") as f:
        key = f.read()
    assert challenges.decoy_verifier("SCRAM-SHA-256", ghost, key).salt == salt
    with open("/etc/machine-id", "rb") as f:
        public = f.read().strip() + ghost.encode() + b"SCRAM-SHA-256"
    assert hashlib.sha256(b"qpopper-scram-decoy" + public).digest()[:16] != salt
    site.srv.stop()
    assert scram_salt(site.server(), ghost) == salt                 # the same after a restart


@pytest.mark.parametrize("fault", ["mode", "owner", "symlink", "size"])
def test_a_decoy_key_that_cannot_be_used_answers_unknown_names_as_known_ones(site, fault):
    """A bad `<store>.decoy-key` (mode 0640, a former owner's, a symbolic link, cut short) is
    read only for names WITHOUT a verifier: its error was theirs alone, a list of the names
    that hold one. Now it is logged, naming the file and why, and the decoy is keyed as
    without a key (/etc/machine-id): every name gets a challenge (docs/internals.md, "Store
    mechanisms")."""
    ghost = "qptnosuchscramuser"
    scram_salt(site.srv, ghost)                                     # the key exists
    key = site.store.path + ".decoy-key"
    why = {"mode": "mode 0640, not 0600",
           "owner": rf"owned by uid {site.bob.uid}, not by uid \d+ \(the store's owner\)",
           "symlink": "Too many levels of symbolic links", "size": "5 octets, not 32"}[fault]
    if fault == "mode":
        os.chmod(key, 0o640)
    elif fault == "owner":
        os.chown(key, site.bob.uid, -1)
    elif fault == "symlink":
        os.rename(key, key + ".real")
        os.symlink(key + ".real", key)
    else:
        with open(key, "r+b") as f:
            f.truncate(5)
    scram_salt(site.srv, site.alice.name)                           # a challenge, as before
    salt = scram_salt(site.srv, ghost)                              # a challenge too
    assert salt == challenges.decoy_verifier("SCRAM-SHA-256", ghost, None).salt
    site.syslog.wait_for(rf"SCRAM decoy key {re.escape(key)}: {why}; SCRAM's made-up "
                         rf"exchanges are keyed by /etc/machine-id until it is fixed")


def test_a_decoy_key_fault_the_master_warned_of_is_not_logged_by_every_exchange(site):
    """The master warns of a bad decoy key at start-up and reload; the processes it forks
    next know it was said, so the SCRAM exchanges for names without a verifier do not log it
    again, one line per exchange (store.first_telling_of_decoy_key_fault)."""
    ghost = "qptnosuchscramuser"
    scram_salt(site.srv, ghost)                                     # the key exists
    key = site.store.path + ".decoy-key"
    os.chmod(key, 0o640)
    os.kill(site.srv.proc.pid, signal.SIGHUP)
    site.syslog.wait_for("configuration reloaded")
    for _ in range(3):
        assert scram_salt(site.srv, ghost) == challenges.decoy_verifier(
            "SCRAM-SHA-256", ghost, None).salt
    client = poplib.POP3(site.srv.host, site.srv.port, timeout=20)  # a line after theirs
    try:
        with pytest.raises(poplib.error_proto):
            client.apop(site.alice.name, "wrong")
    finally:
        client.close()
    site.syslog.wait_for(r"LOGIN FAILED, user=.*")
    told = [text for text in site.syslog.texts()
            if text.startswith(f"SCRAM decoy key {key}: mode 0640, not 0600;")]
    assert len(told) == 1, told


def test_plain_for_system_users_goes_through_pam_policies(site):
    """PLAIN reuses the USER/PASS path: a locked-out name (nonauth-file) is refused the same."""
    with socket.create_connection((site.srv.host, site.srv.port), timeout=20) as sock:
        reader = Lines(sock)
        reader.line()
        token = base64.b64encode(f"\0{site.bob.name}\0wrong".encode())
        sock.sendall(b"AUTH PLAIN " + token + b"\r\n")
        assert reader.line() == (f'-ERR [AUTH] Password supplied for "{site.bob.name}" is '
                                 f'incorrect.\r\n').encode()
        reader.file.close()
    site.syslog.wait_for(rf"\[AUTH\] Failed attempted login to {site.bob.name} from host "
                         rf"\(127\.0\.0\.1\) 127\.0\.0\.1")
    site.syslog.wait_for(rf"LOGIN FAILED, user={site.bob.name}, method=PLAIN, "
                         rf"ip=\[127\.0\.0\.1\], .*")
