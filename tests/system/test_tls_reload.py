"""TLS across a reload (SIGHUP) on the real master (root only): a port that spoke TLS from the
first byte keeps doing so or the reload is refused, whichever option made it a TLS port."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess

import pytest

from tests.helpers.testpki import TestPki
from tests.helpers.tls_site import TlsSite, client_context
from tests.server_harness import POPPER, free_port, read_greeting, wait_until, write_config

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return TestPki(str(tmp_path_factory.mktemp("pki")))


def test_an_alternate_port_listener_never_falls_back_to_plain_text_on_hup(world_tmp,
                                                                         pam_service, pki):
    """tls-support alternate-port made the listen port a TLS port at start-up; a reload whose
    file says no TLS (none, or stls) is refused, as one dropping tls-listen is: a POP3S port
    that answered in clear text would greet the client's ClientHello with a banner, and a
    client told to use that port for its password would next be asked for it in clear."""
    good = pki.server("good")
    site = TlsSite(world_tmp, pam_service, tls_support="alternate-port",
                   tls_server_cert_file=good.cert_file, tls_private_key_file=good.key_file)
    try:
        server = site.implicit_only_server(pki, extra_args=())
        context = client_context(pki)
        for n, tls_support in enumerate(("none", "stls"), 1):
            write_config(site.config, **dict(site.options, tls_support=tls_support))
            os.kill(server.proc.pid, signal.SIGHUP)
            wait_until(lambda: len(said(site, r"reload failed, keeping the running "
                                              r"configuration: .*alternate-port.*")) == n
                       or said(site, "configuration reloaded"), 15, "the reload's verdict")
            assert not said(site, "configuration reloaded")
            with socket.create_connection((server.host, server.port), timeout=20) as raw, \
                    context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert read_greeting(tls).startswith(b"+OK")
    finally:
        site.close()


def test_a_port_a_reload_made_a_tls_port_stays_one_and_the_refusal_says_why(world_tmp,
                                                                            pam_service, pki):
    """A plain port that a reload turned into a POP3S port (tls-support alternate-port) is one
    to its clients from then on: a later reload back to stls is refused, as for a port
    alternate-port made one at start-up, and the refusal names the option that did it (not
    "opened at start-up", which this port was not as a TLS port)."""
    good = pki.server("turned")
    site = TlsSite(world_tmp, pam_service, tls_support="none",
                   tls_server_cert_file=good.cert_file, tls_private_key_file=good.key_file)
    try:
        server = site.server()
        context = client_context(pki)
        write_config(site.config, **dict(site.options, tls_support="alternate-port"))
        os.kill(server.proc.pid, signal.SIGHUP)
        site.syslog.wait_for("configuration reloaded")
        with socket.create_connection((server.host, server.port), timeout=20) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert read_greeting(tls).startswith(b"+OK")
        write_config(site.config, **dict(site.options, tls_support="stls"))
        os.kill(server.proc.pid, signal.SIGHUP)
        site.syslog.wait_for(r"reload failed, keeping the running configuration: tls-support "
                             r"alternate-port made the listen ports TLS ports, which they stay "
                             r"until a restart: keep tls-support alternate-port and a "
                             r"certificate")
        with socket.create_connection((server.host, server.port), timeout=20) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert read_greeting(tls).startswith(b"+OK")
    finally:
        site.close()


def test_a_tls_listen_port_stays_one_when_a_reload_drops_its_entry(world_tmp, pam_service,
                                                                    pki):
    """The listeners are start-up's: a reload whose file no longer names a tls-listen port
    (TLS still configured) is accepted and the port still speaks TLS from the first byte; a
    file with no TLS left at all is refused (docs/operations.md, "Start-up checks")."""
    good = pki.server("listed")
    tls_port = free_port()
    site = TlsSite(world_tmp, pam_service, tls_support="stls",
                   tls_server_cert_file=good.cert_file, tls_private_key_file=good.key_file,
                   tls_listen=f"127.0.0.1:{tls_port}")
    try:
        server = site.server()
        context = client_context(pki)
        without_entry = {k: v for k, v in site.options.items() if k != "tls_listen"}
        write_config(site.config, **without_entry)
        os.kill(server.proc.pid, signal.SIGHUP)
        site.syslog.wait_for("configuration reloaded")
        with socket.create_connection((server.host, tls_port), timeout=20) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert read_greeting(tls).startswith(b"+OK")
        write_config(site.config, **dict(without_entry, tls_support="none"))
        os.kill(server.proc.pid, signal.SIGHUP)
        site.syslog.wait_for(r"reload failed, keeping the running configuration: .*tls-listen.*")
        with socket.create_connection((server.host, tls_port), timeout=20) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert read_greeting(tls).startswith(b"+OK")
    finally:
        site.close()


def said(site, pattern: str) -> list[str]:
    return [text for text in site.syslog.texts() if re.fullmatch(pattern, text)]


def test_a_fifo_in_place_of_the_certificate_is_refused_not_waited_on(world_tmp, pam_service,
                                                                     pki):
    """Whoever may write the certificate's directory (a renewal account) puts a FIFO there: the
    reload must refuse it at once, as it refuses a directory, not block the master in open(2)
    waiting for a writer, which would stop it accepting anyone."""
    good = pki.server("good")
    cert = os.path.join(world_tmp, "cert.pem")
    shutil.copy(good.combined_file, cert)
    site = TlsSite(world_tmp, pam_service, tls_support="stls", tls_server_cert_file=cert)
    server = site.server()
    try:
        os.replace(cert, cert + ".old")
        os.mkfifo(cert, 0o600)
        os.kill(server.proc.pid, signal.SIGHUP)
        site.syslog.wait_for(r"reload failed, keeping the running configuration: TLS: "
                             r"tls-server-cert-file .*/cert\.pem: not a regular file .*")
        with socket.create_connection((server.host, server.port), timeout=20) as raw:
            assert read_greeting(raw).startswith(b"+OK")
        checked = subprocess.run([POPPER, "--check-config", "-f", site.config],
                                 capture_output=True, text=True, timeout=30)
        assert checked.returncode == 1 and "not a regular file" in checked.stderr
    finally:
        with contextlib.suppress(OSError):      # a master stuck in open(2) is let go
            os.close(os.open(cert, os.O_WRONLY | os.O_NONBLOCK))
        site.close()
