"""A proxy-protocol listener of the real master (docs/scale-out.md's qpopper.config lines, no
HAProxy in front): what a balancer or a health checker may do before or instead of a header,
seen in the server's own log."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from tests.helpers.scaleout_recipe import ProxiedServer, snippet
from tests.server_harness import Site, free_port

pytestmark = pytest.mark.timeout(120)

BALANCER = "127.0.0.1"


@pytest.fixture
def proxied_site(world_tmp, pam_service):
    site = Site(world_tmp, pam_service, debug=True)
    port = free_port()
    with open(site.config, "a") as f:
        f.write(snippet("qpopper.config", LISTEN=f"127.0.0.1:{port}", BALANCER=BALANCER,
                        SPOOL=site.spool_dir))
    server = ProxiedServer(world_tmp, site.config, port=port, syslog=site.syslog)
    site.servers.append(server)
    server.start()
    try:
        yield site, server
    finally:
        site.close()


def test_a_check_that_resets_before_a_header_is_logged_at_debug_only(proxied_site):
    """A TCP health check that connects and aborts (SO_LINGER 0: a reset, as many checkers
    close) sends nothing, like one that closes: debug only, not a refused header."""
    site, server = proxied_site
    sock = socket.create_connection((server.host, server.port), source_address=(BALANCER, 0))
    time.sleep(0.2)                      # accepted and the header being waited for
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    site.syslog.wait_for(r"pre-login: 127\.0\.0\.1: closed before a PROXY header")
    assert not [text for text in site.syslog.texts() if "refused" in text], site.syslog.texts()


def test_a_reset_inside_a_header_is_a_refused_header(proxied_site):
    site, server = proxied_site
    sock = socket.create_connection((server.host, server.port), source_address=(BALANCER, 0))
    sock.sendall(b"PROXY TCP4 192.0.2.")
    time.sleep(0.2)                      # those octets taken as the header's beginning
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    site.syslog.wait_for(r"pre-login: PROXY protocol header from 127\.0\.0\.1 refused: "
                         r"connection reset inside the PROXY protocol header; closing")
