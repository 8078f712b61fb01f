"""The PROXY header with TLS (docs/scale-out.md): before the handshake on a tls-listen port,
before the greeting on a plain port with STLS; the TLS session and the login are then logged
with the header's client address, and a health check on the TLS port gets nothing."""

from __future__ import annotations

import socket

import pytest

from qpopper import proxy_protocol
from tests.helpers.scaleout_recipe import ProxiedServer
from tests.helpers.sysusers import make_spool
from tests.helpers.testpki import TestPki
from tests.helpers.tls_site import TlsSite, client_context
from tests.helpers.messages import mbox
from tests.server_harness import free_port, read_greeting

pytestmark = pytest.mark.timeout(120)

TLS_LINE = r"pre-login: TLS session with {ip}: TLSv1\.[23], [A-Z0-9_-]+, \d+ bits"
LOGIN_LINE = r'\(v[\d.]+\) POP login by user "{user}" at \({ip}\) {ip}'


@pytest.fixture
def proxied_tls(world_tmp, pam_service, system_users, tmp_path_factory):
    pki = TestPki(str(tmp_path_factory.mktemp("pki")))
    good = pki.server("good")
    site = TlsSite(world_tmp, pam_service, tls_support="stls", clear_text_password="tls",
                   tls_server_cert_file=good.cert_file, tls_private_key_file=good.key_file)
    plain, tls = free_port(), free_port()
    with open(site.config, "a") as f:
        f.write(f"set proxy-protocol = 127.0.0.1:{plain}\n"
                f"set proxy-protocol = 127.0.0.1:{tls}\n"
                f"set proxy-trusted-networks = 127.0.0.1\n")
    server = ProxiedServer(site.root, site.config, port=plain, syslog=site.syslog,
                           extra_args=(f"--tls-listen=127.0.0.1:{tls}",))
    site.servers.append(server)
    server.start()
    user = system_users.create()
    make_spool(site.spool_dir, user, mbox(("one", "first")))
    yield site, pki, plain, tls, user
    site.close()


def login_and_quit(sock, user) -> None:
    for command, expected in ((f"USER {user.name}", b"+OK"), (f"PASS {user.password}", b"+OK"),
                              ("QUIT", b"+OK")):
        sock.sendall(command.encode() + b"\r\n")
        assert read_greeting(sock).startswith(expected), command


def test_header_before_the_handshake_on_the_tls_port(proxied_tls):
    site, pki, _, tls_port, user = proxied_tls
    with socket.create_connection(("127.0.0.1", tls_port), timeout=10) as raw:
        raw.sendall(proxy_protocol.make_v2("203.0.113.7", 40001, "127.0.0.1", tls_port))
        with client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert read_greeting(tls).startswith(b"+OK")
            login_and_quit(tls, user)
    site.syslog.wait_for(TLS_LINE.format(ip=r"203\.0\.113\.7"))
    site.syslog.wait_for(LOGIN_LINE.format(user=user.name, ip=r"203\.0\.113\.7"))


def test_header_before_the_greeting_then_stls(proxied_tls):
    site, pki, plain_port, _, user = proxied_tls
    with socket.create_connection(("127.0.0.1", plain_port), timeout=10) as raw:
        raw.sendall(proxy_protocol.make_v1("203.0.113.8", 40002, "127.0.0.1", plain_port))
        assert read_greeting(raw).startswith(b"+OK")
        raw.sendall(b"STLS\r\n")
        assert read_greeting(raw).startswith(b"+OK")
        with client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            login_and_quit(tls, user)
    site.syslog.wait_for(TLS_LINE.format(ip=r"203\.0\.113\.8"))
    site.syslog.wait_for(LOGIN_LINE.format(user=user.name, ip=r"203\.0\.113\.8"))


def test_a_health_check_on_the_tls_port_gets_nothing(proxied_tls):
    site, _, _, tls_port, _ = proxied_tls
    with socket.create_connection(("127.0.0.1", tls_port), timeout=10) as raw:
        raw.sendall(proxy_protocol.make_v2(None))
        assert raw.recv(100) == b""
    assert not [t for t in site.syslog.texts() if t.startswith("TLS session")    # no handshake
                or "handshake" in t]
