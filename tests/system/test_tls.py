"""TLS on the real master (root only: real users, PAM, privilege drop): STLS on the POP3 port,
TLS from the first byte on a tls-listen port or with -l 2, in inetd mode too; poplib, curl and
openssl s_client as clients, verifying the server against a CA made by the test
(tests/helpers/testpki.py); TLS 1.0/1.1 refused by default; the identity file with an encrypted
key; each bad certificate set-up refused at start-up in one line; no command injection across
STLS; clear-text-password = tls over both kinds of TLS; HUP re-reads the certificate."""

from __future__ import annotations

import contextlib
import os
import poplib
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading

import pytest

from qpopper import limits
from tests.helpers.sysusers import make_spool
from tests.helpers.testpki import TestPki
from tests.helpers.tls_site import TlsSite, client_context, pipelined
from tests.helpers.repo import REPO
from tests.helpers.messages import mbox
from tests.server_harness import (POPPER, PopperServer, free_port, read_greeting, read_pid_file,
                                  wait_until, write_config)

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

MESSAGES = (("first", "Body one.\n.dot line\n"), ("second", "Body two.\n"))
TLS_ONLY = "Clear text passwords are permitted only over TLS; use STLS first"
TLS_LINE = r"pre-login: TLS session with 127\.0\.0\.1: TLSv1\.[23], [A-Z0-9_-]+, \d+ bits"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return TestPki(str(tmp_path_factory.mktemp("pki")))


@pytest.fixture
def good(pki):
    return pki.server("good")


@pytest.fixture
def site(world_tmp, pam_service, good):
    s = TlsSite(world_tmp, pam_service, tls_support="stls", clear_text_password="tls",
                tls_server_cert_file=good.cert_file, tls_private_key_file=good.key_file)
    yield s
    s.close()


@pytest.fixture
def user(site, system_users):
    u = system_users.create()
    make_spool(site.spool_dir, u, mbox(*MESSAGES))
    return u


def fetch_first_and_quit(client, user) -> bytes:
    client.user(user.name)
    assert client.pass_(user.password).startswith(b"+OK")
    lines = client.retr(1)[1]
    assert client.quit().startswith(b"+OK")
    return b"\n".join(lines)


# --- STLS ------------------------------------------------------------------------------------------
def test_stls_with_poplib_capa_and_clear_text_password_tls(site, user, pki, good):
    server = site.server()
    client = poplib.POP3(server.host, server.port, timeout=20)
    try:
        capa = client.capa()
        assert "STLS" in capa and "USER" not in capa
        with pytest.raises(poplib.error_proto, match=re.escape(f"-ERR [AUTH] {TLS_ONLY}")):
            client.user(user.name)                # refused before any password is sent
        client.stls(client_context(pki))
        assert client.sock.getpeercert()["subject"] == ((("commonName", good.common_name),),)
        capa = client.capa()
        assert "STLS" not in capa and "USER" in capa      # CAPA re-evaluated inside TLS
        with pytest.raises(poplib.error_proto, match=r"-ERR TLS in progress"):
            client._shortcmd("STLS")
        body = fetch_first_and_quit(client, user)
    finally:
        client.close()
    assert b"Subject: first" in body and b".dot line" in body
    site.syslog.wait_for(TLS_LINE)


def test_stls_is_refused_when_tls_support_is_off(world_tmp, pam_service, good):
    s = TlsSite(world_tmp, pam_service, tls_server_cert_file=good.cert_file,
                tls_private_key_file=good.key_file)
    try:
        server = s.server()
        client = poplib.POP3(server.host, server.port, timeout=20)
        try:
            assert "STLS" not in client.capa()
            with pytest.raises(poplib.error_proto, match=r"-ERR Command not enabled"):
                client._shortcmd("STLS")
        finally:
            client.quit()
    finally:
        s.close()


def test_stls_is_an_authorization_state_command(world_tmp, pam_service, system_users, good):
    s = TlsSite(world_tmp, pam_service, tls_support="stls", clear_text_password="default",
                tls_server_cert_file=good.combined_file)
    try:
        u = system_users.create()
        make_spool(s.spool_dir, u, mbox(*MESSAGES))
        server = s.server()
        client = poplib.POP3(server.host, server.port, timeout=20)
        try:
            client.user(u.name)
            client.pass_(u.password)                  # clear text allowed by this site
            assert "STLS" not in client.capa()
            with pytest.raises(poplib.error_proto, match=r"-ERR Unknown command"):
                client._shortcmd("STLS")              # RFC 2595 §4: AUTHORIZATION only
        finally:
            client.quit()
    finally:
        s.close()


def test_commands_sent_with_stls_are_discarded(site, user, pki):
    """`STLS\\r\\nUSER victim\\r\\n` in one packet: the USER must not survive the upgrade."""
    server = site.server()
    with socket.create_connection((server.host, server.port), timeout=20) as raw:
        read_greeting(raw)
        raw.sendall(b"STLS\r\nUSER victim\r\nCAPA\r\n")
        assert read_greeting(raw) == b"+OK STLS\r\n"
        with client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"PASS secret\r\n")
            # no pending USER: PASS without USER, and no stray CAPA reply before it
            assert read_greeting(tls) == b"-ERR No user name given: send USER before PASS.\r\n"
            tls.sendall(f"USER {user.name}\r\nPASS {user.password}\r\nQUIT\r\n".encode())
            replies = b""
            while replies.count(b"\r\n") < 3:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                replies += chunk
    lines = replies.split(b"\r\n")
    assert lines[0].startswith(b"+OK") and lines[1].startswith(b"+OK ") and b" 2 visible messages" in lines[1]
    assert not any("victim" in text for text in site.syslog.texts())


def test_failed_stls_handshake_closes_the_connection(site):
    server = site.server()
    with socket.create_connection((server.host, server.port), timeout=20) as raw:
        read_greeting(raw)
        raw.sendall(b"STLS\r\n")
        assert read_greeting(raw) == b"+OK STLS\r\n"
        raw.sendall(b"USER plaintext-after-stls\r\n")       # not a ClientHello
        rest = b""
        while chunk := raw.recv(4096):
            rest += chunk
    assert b"+OK" not in rest and b"-ERR" not in rest        # at most a TLS alert, then EOF
    site.syslog.wait_for(r"pre-login: TLS handshake with 127\.0\.0\.1 failed: .*")


# --- port 995 ----------------------------------------------------------------------------------------
def test_one_master_serves_stls_and_tls_ports(site, user, pki):
    server = site.tls_server(pki)
    client = poplib.POP3_SSL(server.host, server.tls_port, context=client_context(pki),
                             timeout=20)
    try:
        assert "STLS" not in client.capa()          # already in TLS
        body = fetch_first_and_quit(client, user)
    finally:
        client.close()
    assert b"Subject: first" in body
    site.syslog.wait_for(r"master listening on 127\.0\.0\.1:\d+ \(STLS\), "
                         r"127\.0\.0\.1:\d+ \(TLS\)")
    # the plain port of the same master still refuses clear text passwords, at USER
    client = poplib.POP3(server.host, server.port, timeout=20)
    try:
        with pytest.raises(poplib.error_proto, match=re.escape(TLS_ONLY)):
            client.user(user.name)
    finally:
        client.close()


def test_alternate_port_instance_with_dash_l_2(site, user, pki):
    """The manual's recipe: a second instance with tls-support alternate-port (-l 2)."""
    server = site.implicit_only_server(pki)
    client = poplib.POP3_SSL(server.host, server.port, context=client_context(pki), timeout=20)
    try:
        body = fetch_first_and_quit(client, user)
    finally:
        client.close()
    assert b"Subject: first" in body
    # a plain-text client gets no banner, and the failure is logged
    with socket.create_connection((server.host, server.port), timeout=20) as raw:
        raw.sendall(b"CAPA\r\n")
        rest = b""
        while chunk := raw.recv(4096):
            rest += chunk
    assert not rest.startswith(b"+OK")
    site.syslog.wait_for(r"pre-login: TLS handshake with 127\.0\.0\.1 failed: .*")


def test_manual_three_configuration_files_recipe(site, user, pki):
    """Two instances, each reading its own -f file (tls-support stls / alternate-port) that
    chains, with config-file, to a third holding everything else (the manual's recipe)."""
    common = site.config                    # spool-dir, PAM, certificate, clear-text-password
    stls_file = os.path.join(site.root, "qpopper-stls.config")
    alternate_file = os.path.join(site.root, "qpopper-alt.config")
    with open(stls_file, "w") as f:
        f.write(f"set tls-support = stls\nset config-file = {common}\n")
    with open(alternate_file, "w") as f:
        f.write(f"set tls-support = alternate-port\nset config-file = {common}\n")
    # the chained file is read where config-file appears: its own tls-support (stls) must
    # not undo alternate-port, so the common file of the recipe leaves tls-support out
    site.options.pop("tls_support")
    write_config(common, **site.options)
    site.config = stls_file
    stls = site.server()
    site.config = alternate_file
    alternate = site.implicit_only_server(pki, extra_args=())
    client = poplib.POP3(stls.host, stls.port, timeout=20)
    try:
        assert "STLS" in client.capa()
        client.stls(client_context(pki))
        assert b"Subject: first" in fetch_first_and_quit(client, user)
    finally:
        client.close()
    client = poplib.POP3_SSL(alternate.host, alternate.port, context=client_context(pki),
                             timeout=20)
    try:
        assert b"Subject: first" in fetch_first_and_quit(client, user)
    finally:
        client.close()


def test_inetd_mode_with_alternate_port(site, user, pki):
    """`popper -l 2` with the connection on stdin, as qpopper-tls@.service runs it."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        proc = subprocess.Popen([POPPER, "-f", site.config, "-l", "2"], stdin=theirs,
                                stdout=theirs, stderr=subprocess.PIPE,
                                env=dict(os.environ, QPOPPER_SYSLOG_SOCKET=site.syslog.path))
        theirs.close()
        try:
            ours.settimeout(20)
            with client_context(pki).wrap_socket(ours, server_hostname="127.0.0.1") as tls:
                assert read_greeting(tls).startswith(b"+OK")
                tls.sendall(f"USER {user.name}\r\nPASS {user.password}\r\nQUIT\r\n".encode())
                replies = b""
                while chunk := tls.recv(4096):
                    replies += chunk
            assert proc.wait(20) == 0, proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stderr.close()
    lines = replies.split(b"\r\n")
    assert lines[1].startswith(b"+OK ") and b" 2 visible messages" in lines[1]
    assert lines[2].startswith(b"+OK Pop server")
    site.syslog.wait_for(r"pre-login: TLS session with unknown: TLSv1\.3, .*")


def test_inetd_mode_logs_a_bad_certificate_and_exits(site, pki):
    expired = pki.server("inetd-expired", expired=True)
    config = os.path.join(site.root, "expired.config")
    write_config(config, **dict(site.options, tls_server_cert_file=expired.combined_file,
                                tls_private_key_file=""))
    ours, theirs = socket.socketpair()
    with ours, theirs:
        result = subprocess.run([POPPER, "-f", config, "-l", "2"], stdin=theirs, stdout=theirs,
                                stderr=subprocess.PIPE, timeout=30,
                                env=dict(os.environ, QPOPPER_SYSLOG_SOCKET=site.syslog.path))
        theirs.close()
        ours.settimeout(5)
        assert ours.recv(100) == b""                 # nothing at all reached the client
    assert result.returncode == 1 and result.stderr == b""
    site.syslog.wait_for(r"TLS: tls-server-cert-file .*/inetd-expired\.pem: the certificate expired on .*")


def test_over_the_limit_a_tls_port_closes_without_plain_text(world_tmp, pam_service, good, pki,
                                                             system_users):
    s = TlsSite(world_tmp, pam_service, tls_support="stls", max_children_per_address=1,
                tls_server_cert_file=good.combined_file)
    try:
        u = system_users.create()
        make_spool(s.spool_dir, u, mbox(*MESSAGES))
        server = s.tls_server(pki)
        wait_until(lambda: not server.children(), 10, "the start-up probe's session to end")
        context = client_context(pki)
        with socket.create_connection((server.host, server.tls_port), timeout=20) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as first:
            assert read_greeting(first).startswith(b"+OK")
            # logged in: the one slot cannot be made free (an idle one would be ended)
            replies = pipelined(first, f"USER {u.name}", f"PASS {u.password}")
            assert replies[1].startswith(b"+OK"), replies
            with socket.create_connection((server.host, server.tls_port), timeout=20) as second:
                assert second.recv(100) == b""       # no -ERR a TLS client would choke on
            s.syslog.wait_for(r"Refused connection from 127\.0\.0\.1: .*")
    finally:
        s.close()


# --- other clients -----------------------------------------------------------------------------------
def test_curl_pop3s_and_ssl_reqd(site, user, pki):
    server = site.tls_server(pki)
    for url, extra in ((f"pop3s://127.0.0.1:{server.tls_port}/1", []),
                       (f"pop3://127.0.0.1:{server.port}/2", ["--ssl-reqd"])):
        result = subprocess.run(["curl", "-sS", "--max-time", "20", "--cacert", pki.ca_file,
                                 *extra, "-u", f"{user.name}:{user.password}", url],
                                capture_output=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert b"Subject: " + (b"first" if url.endswith("/1") else b"second") in result.stdout


@pytest.mark.parametrize("starttls", [True, False])
def test_openssl_s_client_verifies_the_certificate(site, user, pki, starttls):
    server = site.tls_server(pki)
    port = server.port if starttls else server.tls_port
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", pki.ca_file,
            "-verify_return_error", "-verify_ip", "127.0.0.1", "-crlf", "-ign_eof"]
    if starttls:
        argv[2:2] = ["-starttls", "pop3"]
    result = subprocess.run(argv, input=b"CAPA\nQUIT\n", capture_output=True, timeout=30)
    out = result.stdout
    assert result.returncode == 0, result.stderr
    assert b"Verify return code: 0 (ok)" in out
    assert b"+OK Capability list follows" in out and b"+OK Pop server at" in out


# --- protocol versions -----------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
def test_tls_1_0_and_1_1_are_refused_by_default(site, pki, version):
    server = site.tls_server(pki)
    result = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{server.tls_port}",
                             "-" + version.lower().replace("v", ""),
                             "-cipher", "DEFAULT@SECLEVEL=0"],
                            input=b"", capture_output=True, timeout=30)
    assert result.returncode != 0
    # the refusal is the server's (the client did send its hello)
    site.syslog.wait_for(r"pre-login: TLS handshake with 127\.0\.0\.1 failed: .*(unsupported protocol|"
                         r"version).*")


def test_tls_min_version_re_admits_tls_1_0_with_a_warning(world_tmp, pam_service, good, pki):
    s = TlsSite(world_tmp, pam_service, tls_support="stls", tls_min_version="TLSv1",
                tls_version="SSLv3", tls_server_cert_file=good.combined_file)
    try:
        server = s.tls_server(pki)
        result = subprocess.run(["openssl", "s_client", "-connect",
                                 f"127.0.0.1:{server.tls_port}", "-tls1", "-cipher",
                                 "DEFAULT@SECLEVEL=0", "-CAfile", pki.ca_file, "-crlf",
                                 "-ign_eof"], input=b"QUIT\n", capture_output=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert re.search(rb"Protocol *: TLSv1\n", result.stdout), result.stdout
        assert b"+OK Pop server at" in result.stdout
        s.syslog.wait_for(r"TLS certificate CN=good\.qpopper-test from .*/good\.pem, TLSv1 and "
                          r"later")
        s.syslog.wait_for(r"tls-min-version TLSv1 admits TLS versions RFC 8996 deprecated.*")
        s.syslog.wait_for(r"tls-version SSLv3 is obsolete and unsafe; using TLSv1 and later.*")
    finally:
        s.close()


def test_default_tls_1_2_uses_ecdhe_aead(site, pki):
    server = site.tls_server(pki)
    context = client_context(pki, maximum_version=ssl.TLSVersion.TLSv1_2)
    context.set_ciphers("ALL:@SECLEVEL=0")       # offer everything: the server chooses
    with socket.create_connection((server.host, server.tls_port), timeout=20) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        name, version, _ = tls.cipher()
        assert version == "TLSv1.2"
        assert name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20" in name)
    # a client with only CBC suites is refused
    context = client_context(pki, maximum_version=ssl.TLSVersion.TLSv1_2)
    context.set_ciphers("ECDHE+AES+SHA1:@SECLEVEL=0")
    with socket.create_connection((server.host, server.tls_port), timeout=20) as raw:
        with pytest.raises(ssl.SSLError):
            context.wrap_socket(raw, server_hostname="127.0.0.1")


def test_tls_cipher_list_is_applied(world_tmp, pam_service, good, pki):
    s = TlsSite(world_tmp, pam_service, tls_support="stls",
                tls_cipher_list="ECDHE-ECDSA-CHACHA20-POLY1305",
                tls_server_cert_file=good.cert_file, tls_private_key_file=good.key_file)
    try:
        server = s.tls_server(pki)
        context = client_context(pki, maximum_version=ssl.TLSVersion.TLSv1_2)
        with socket.create_connection((server.host, server.tls_port), timeout=20) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.cipher()[0] == "ECDHE-ECDSA-CHACHA20-POLY1305"
    finally:
        s.close()


def test_tls_options_bits_and_workarounds_reach_openssl(world_tmp, pam_service, good, pki):
    """tls-options = 0x20000000 is OpenSSL's SSL_OP_NO_TLSv1_3: the server then speaks 1.2."""
    s = TlsSite(world_tmp, pam_service, tls_support="stls", tls_options=0x20000000,
                tls_workarounds=True, tls_server_cert_file=good.combined_file)
    try:
        server = s.tls_server(pki)
        with socket.create_connection((server.host, server.tls_port), timeout=20) as raw, \
                client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.version() == "TLSv1.2"
            assert read_greeting(tls).startswith(b"+OK")
    finally:
        s.close()


# --- certificates --------------------------------------------------------------------------------------
@pytest.mark.parametrize("key_passphrase", ["correct horse", ""])
def test_identity_file_with_encrypted_key_and_passphrase(world_tmp, pam_service, system_users,
                                                         pki, key_passphrase):
    """tls-passphrase decrypts the key; with a clear key it is not used (start-up and the
    check accept that, so every connection must too)."""
    identity = pki.identity_file("identity", key_passphrase)
    s = TlsSite(world_tmp, pam_service, tls_support="stls", clear_text_password="tls",
                tls_identity_file=identity, tls_passphrase="correct horse")
    try:
        u = system_users.create()
        make_spool(s.spool_dir, u, mbox(*MESSAGES))
        server = s.tls_server(pki)
        client = poplib.POP3_SSL(server.host, server.tls_port, context=client_context(pki),
                                 timeout=20)
        try:
            assert client.sock.getpeercert()["subject"] == (
                (("commonName", "identity.qpopper-test"),),)
            assert b"Subject: first" in fetch_first_and_quit(client, u)
        finally:
            client.close()
    finally:
        s.close()


def start_failure(world_tmp, pam_service, **options) -> tuple[int, str]:
    """Start `popper` with a TLS configuration that must be refused: (exit status, stderr).
    `popper --check-config` on the same file must refuse it with the same line."""
    config = os.path.join(world_tmp, "bad.config")
    write_config(config, tls_support="stls", pam_service=pam_service,
                 spool_dir=world_tmp, **options)
    os.chmod(config, 0o600)     # root-only, as tls-passphrase asks: no warning on stderr
    checked = subprocess.run([POPPER, "--check-config", "-f", config], capture_output=True,
                             text=True, timeout=30)
    result = subprocess.run([POPPER, f"127.0.0.1:{free_port()}", "-f", config],
                            capture_output=True, text=True, timeout=30,
                            env=dict(os.environ, QPOPPER_SYSLOG_SOCKET="/nonexistent"))
    assert (checked.returncode, checked.stdout, checked.stderr) == (1, "", result.stderr), \
        options
    return result.returncode, result.stderr


def test_check_config_accepts_what_the_server_starts_with(world_tmp, pam_service, pki, good):
    config = os.path.join(world_tmp, "good.config")
    write_config(config, tls_support="stls", pam_service=pam_service, spool_dir=world_tmp,
                 tls_server_cert_file=good.cert_file, tls_private_key_file=good.key_file)
    checked = subprocess.run([POPPER, "--check-config", "-f", config], capture_output=True,
                             text=True, timeout=30)
    assert checked.returncode == 0 and checked.stderr == "", checked.stderr
    assert "configuration valid" in checked.stdout.splitlines()[0]
    server = PopperServer(world_tmp, config).start()
    try:
        with socket.create_connection((server.host, server.port), timeout=20) as raw:
            assert read_greeting(raw).startswith(b"+OK ")
    finally:
        server.stop()


def test_bad_certificates_are_refused_at_start_up(world_tmp, pam_service, pki, good):
    expired = pki.server("expired", expired=True)
    stray = pki.stray_key("stray")
    identity = pki.identity_file("locked", "right")
    cases = [
        (dict(tls_server_cert_file=os.path.join(world_tmp, "missing.pem")),
         r"TLS: tls-server-cert-file .*/missing\.pem: No such file or directory"),
        (dict(tls_server_cert_file=world_tmp),
         r"TLS: tls-server-cert-file .*: Is a directory"),
        (dict(tls_server_cert_file=good.cert_file, tls_private_key_file=stray),
         r"TLS: tls-private-key-file .*/stray\.key: the private key does not match the "
         r"certificate in tls-server-cert-file .*/good\.crt"),
        (dict(tls_server_cert_file=expired.combined_file),
         r"TLS: tls-server-cert-file .*/expired\.pem: the certificate expired on "
         r"\d{4}-\d\d-\d\d \d\d:\d\d UTC"),
        (dict(tls_server_cert_file=good.cert_file),
         r"TLS: tls-server-cert-file .*/good\.crt: no PEM private key in it \(set tls-private-key-file\)"),
        (dict(tls_server_cert_file=good.key_file, tls_private_key_file=good.key_file),
         r"TLS: tls-server-cert-file .*/good\.key: no PEM certificate in it"),
        (dict(tls_identity_file=identity),
         r"TLS: tls-identity-file .*/locked\.pem: the private key is encrypted; set tls-passphrase"),
        (dict(tls_identity_file=identity, tls_passphrase="wrong"),
         r"TLS: tls-identity-file .*/locked\.pem: cannot decrypt the private key with tls-passphrase .*"),
        ({}, r"TLS: tls-support stls needs a certificate: set tls-server-cert-file .*"),
        (dict(tls_server_cert_file=good.combined_file, tls_cipher_list="NOSUCHCIPHER"),
         r"TLS: tls-cipher-list 'NOSUCHCIPHER' selects no usable cipher"),
    ]
    for options, expected in cases:
        status, stderr = start_failure(world_tmp, pam_service, **options)
        assert status == 1, (options, stderr)
        lines = stderr.strip().splitlines()
        # the option named first, and where the configuration file set it
        said = re.fullmatch(r"popper: " + expected + r" \(([a-z-]+) set at \S+:\d+\)", lines[0])
        assert len(lines) == 1 and said and said[1] == lines[0].split()[2], (options, stderr)


def test_a_certificate_file_larger_than_any_chain_is_refused(world_tmp, pam_service, good):
    """A wrong path (a log, a disk image) is not copied whole into the memory every pre-login
    process holds: past limits.MAX_TLS_FILE_OCTETS the start refuses it, naming the file. The
    same file with its padding cut is a good one."""
    cert = os.path.join(world_tmp, "padded.pem")
    with open(good.combined_file, "rb") as f:
        pem = f.read()
    with open(cert, "wb") as f:
        f.write(pem + b"\n" * limits.MAX_TLS_FILE_OCTETS)
    status, stderr = start_failure(world_tmp, pam_service, tls_server_cert_file=cert)
    assert status == 1 and re.fullmatch(
        rf"popper: TLS: tls-server-cert-file {re.escape(cert)}: \d+ octets, more than a "
        rf"certificate chain or key needs \(at most {limits.MAX_TLS_FILE_OCTETS}\) "
        rf"\(tls-server-cert-file set at \S+:\d+\)\n", stderr), stderr
    os.truncate(cert, limits.MAX_TLS_FILE_OCTETS)
    config = os.path.join(world_tmp, "padded.config")
    write_config(config, tls_support="stls", pam_service=pam_service, spool_dir=world_tmp,
                 tls_server_cert_file=cert)
    checked = subprocess.run([POPPER, "--check-config", "-f", config], capture_output=True,
                             text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr


def test_hup_reloads_the_certificate_for_new_connections(site, pki, good):
    server = site.tls_server(pki)
    context = client_context(pki)

    def subject():
        with socket.create_connection((server.host, server.tls_port), timeout=20) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            read_greeting(tls)
            return tls.getpeercert()["subject"][0][0][1]

    assert subject() == good.common_name
    renewed = pki.server("renewed")
    with open(good.cert_file, "rb") as f:
        old_cert = f.read()
    with open(good.key_file, "rb") as f:
        old_key = f.read()
    try:
        os.replace(renewed.cert_file, good.cert_file)
        os.replace(renewed.key_file, good.key_file)
        os.kill(server.pid, signal.SIGHUP)
        site.syslog.wait_for("configuration reloaded")
        assert subject() == "renewed.qpopper-test"
        # a broken certificate on HUP: logged, the running one kept
        with open(good.cert_file, "wb") as f:
            f.write(b"not a certificate\n")
        os.kill(server.pid, signal.SIGHUP)
        site.syslog.wait_for(r"reload failed, keeping the running configuration: .*no PEM "
                             r"certificate.*")
        assert subject() == "renewed.qpopper-test"
    finally:
        with open(good.cert_file, "wb") as f:
            f.write(old_cert)
        with open(good.key_file, "wb") as f:
            f.write(old_key)


# --- chunky-writes over TLS ------------------------------------------------------------------------
class RecordCountingProxy:
    """A loopback TCP relay that counts the TLS records the server sends (RFC 8446 §5.1: a
    5-octet header, the third and fourth octets the length)."""

    def __init__(self, upstream_port: int):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.upstream_port = upstream_port
        self.records = 0
        self._threads = [threading.Thread(target=self._serve, daemon=True)]
        self._threads[0].start()

    def _serve(self) -> None:
        client, _ = self.listener.accept()
        server = socket.create_connection(("127.0.0.1", self.upstream_port))
        up = threading.Thread(target=self._pump, args=(client, server, False), daemon=True)
        up.start()
        self._threads.append(up)
        self._pump(server, client, True)
        up.join(10)
        client.close()
        server.close()

    def _pump(self, source, sink, count: bool) -> None:
        pending = b""
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)
                return
            sink.sendall(data)
            if count:
                pending += data
                while len(pending) >= 5:
                    length = 5 + int.from_bytes(pending[3:5], "big")
                    if len(pending) < length:
                        break
                    self.records += 1
                    pending = pending[length:]

    def close(self) -> None:
        for thread in self._threads:
            thread.join(10)
        self.listener.close()


CAPAS = limits.MAX_BAD_COMMANDS
"""Pipelined CAPAs before the login: the first is free, the repeats spend the budget."""


def records_for_pipelined_capas(server, pki, count: int) -> int:
    """TLS records for `count` pipelined CAPAs before the login, where the pre-login process
    writes its TLS records itself (after it, its relay cuts records); `count` stays inside
    the bad-command budget that repeated CAPAs spend."""
    proxy = RecordCountingProxy(server.tls_port)
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=20) as raw, \
                client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            read_greeting(tls)
            tls.sendall(b"CAPA\r\n" * count + b"QUIT\r\n")    # one read on the server
            replies = b""
            while chunk := tls.recv(65536):
                replies += chunk
        assert replies.count(b"+OK Capability list follows") == count
        assert replies.endswith(b"signing off.\r\n")
    finally:
        proxy.close()
    return proxy.records


def test_chunky_writes_decides_how_replies_become_tls_records(world_tmp, pam_service, good,
                                                               pki):
    """`tls` (and default) gather a batch of pipelined replies into few TLS records; `never`
    sends one write, hence at least one record, per reply."""
    counts = {}
    for mode in ("never", "tls", "default"):
        root = os.path.join(world_tmp, mode)
        os.mkdir(root, 0o755)
        s = TlsSite(root, pam_service, tls_support="stls", chunky_writes=mode,
                    tls_server_cert_file=good.combined_file)
        try:
            counts[mode] = records_for_pipelined_capas(s.tls_server(pki), pki, CAPAS)
        finally:
            s.close()
    assert counts["never"] >= CAPAS + 1
    assert counts["tls"] <= counts["never"] - 8
    assert counts["default"] <= counts["never"] - 8


def test_large_retr_over_tls_with_unbuffered_writes(world_tmp, pam_service, system_users, good,
                                                    pki):
    body = "".join(f"line {n} of a long message\n" for n in range(20000))
    s = TlsSite(world_tmp, pam_service, tls_support="stls", chunky_writes="never",
                tls_server_cert_file=good.combined_file)
    try:
        u = system_users.create()
        make_spool(s.spool_dir, u, mbox(("big", body)))
        server = s.tls_server(pki)
        client = poplib.POP3_SSL(server.host, server.tls_port, context=client_context(pki),
                                 timeout=20)
        try:
            client.user(u.name)
            client.pass_(u.password)
            lines = client.retr(1)[1]
            client.quit()
        finally:
            client.close()
        assert lines.count(b"line 19999 of a long message") == 1
        assert sum(1 for line in lines if line.startswith(b"line ")) == 20000
    finally:
        s.close()


# --- socket activation ---------------------------------------------------------------------------------
def test_listen_fds_sockets_take_their_tls_mode_from_tls_listen(site, user, pki):
    plain = socket.create_server(("127.0.0.1", 0))
    secure = socket.create_server(("127.0.0.1", 0))
    plain_port, tls_port = plain.getsockname()[1], secure.getsockname()[1]
    # what systemd does: the sockets as descriptors 3 and 4, LISTEN_PID = the server's pid
    launcher = ("import os, sys\n"
                "plain, secure = os.dup(int(sys.argv[1])), os.dup(int(sys.argv[2]))\n"
                "os.dup2(plain, 3); os.dup2(secure, 4)\n"
                "os.set_inheritable(3, True); os.set_inheritable(4, True)\n"
                "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='2')\n"
                "os.execv(sys.argv[3], sys.argv[3:])\n")
    proc = subprocess.Popen([sys.executable, "-c", launcher, str(plain.fileno()),
                             str(secure.fileno()), POPPER, "-f", site.config,
                             f"--tls-listen=127.0.0.1:{tls_port}"],
                            pass_fds=(plain.fileno(), secure.fileno()),
                            env=dict(os.environ, QPOPPER_SYSLOG_SOCKET=site.syslog.path),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    plain.close()
    secure.close()
    try:
        site.syslog.wait_for(rf"master listening on 127\.0\.0\.1:{plain_port} \(STLS\), "
                             rf"127\.0\.0\.1:{tls_port} \(TLS\)")
        client = poplib.POP3_SSL("127.0.0.1", tls_port, context=client_context(pki), timeout=20)
        try:
            assert b"Subject: first" in fetch_first_and_quit(client, user)
        finally:
            client.close()
        client = poplib.POP3("127.0.0.1", plain_port, timeout=20)
        try:
            assert "STLS" in client.capa()
        finally:
            client.quit()
    finally:
        proc.terminate()
        proc.wait(30)
        proc.stderr.close()


def test_the_login_deadline_bounds_a_silent_tls_handshake(world_tmp, pam_service, good, pki):
    """A client that connects to the TLS port and never sends its ClientHello is cut off at
    login-timeout, not after the idle `timeout` (600 s here): a pre-login process is not
    held for the idle timeout."""
    s = TlsSite(world_tmp, pam_service, tls_support="stls", login_timeout=2, timeout=600,
                tls_server_cert_file=good.combined_file)
    try:
        server = s.tls_server(pki)
        with socket.create_connection((server.host, server.tls_port), timeout=30) as raw:
            assert raw.recv(100) == b""          # closed by the server, long before 600 s
        s.syslog.wait_for(r"pre-login: TLS handshake with 127\.0\.0\.1 failed: timed out")
    finally:
        s.close()


def test_the_readmes_start_without_systemd_serves_both_ports(site, pki):
    """The README's SysV-style command, with the test's configuration and free ports in
    place of /etc/qpopper/qpopper.config, 110 and 995: STLS on one port, TLS on the other."""
    readme = (REPO / "README.md").read_text()
    command = re.search(r"Without systemd, `(popper [^`]*)`", readme.replace("\n", " "))[1]
    plain, implicit = free_port(), free_port()
    pid_file = os.path.join(site.root, "popper.pid")
    argv = [POPPER if word == "popper" else word for word in command.split()]
    argv = [site.config if word == "/etc/qpopper/qpopper.config" else
            word.replace("=110", f"=127.0.0.1:{plain}").replace("=995", f"=127.0.0.1:{implicit}")
            for word in argv]
    assert argv[-1] == "--daemon" and f"--tls-listen=127.0.0.1:{implicit}" in argv
    result = subprocess.run([*argv, f"--pid-file={pid_file}"], capture_output=True, text=True,
                            timeout=30, stdin=subprocess.DEVNULL,
                            env=dict(os.environ, QPOPPER_SYSLOG_SOCKET=site.syslog.path))
    assert result.returncode == 0, result.stderr
    master = wait_until(lambda: read_pid_file(pid_file), what="the pid file")
    try:
        with socket.create_connection(("127.0.0.1", plain), timeout=20) as raw:
            assert read_greeting(raw).startswith(b"+OK")
            assert pipelined(raw, "STLS")[0].startswith(b"+OK")      # STLS offered
        with socket.create_connection(("127.0.0.1", implicit), timeout=20) as raw, \
                client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert read_greeting(tls).startswith(b"+OK")
    finally:
        os.kill(master, signal.SIGTERM)
    wait_until(lambda: not os.path.exists(pid_file), what="the master to stop")

