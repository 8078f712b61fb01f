"""DRAC (POP-before-SMTP) on a proxy-protocol listener: the address the monitor gives the DRAC
server is the client's from the PROXY header, never the balancer's (docs/scale-out.md)."""

from __future__ import annotations

import socket
import struct

import pytest

from qpopper import proxy_protocol
from tests.helpers.drac_peers import drac_peers
from tests.helpers.scaleout_recipe import ProxiedServer
from tests.helpers.sysusers import make_spool
from tests.helpers.messages import mbox
from tests.server_harness import Site, free_port, read_greeting

pytestmark = pytest.mark.timeout(60)

CLIENT = "203.0.113.9"


def test_drac_is_told_the_clients_address(world_tmp, pam_service, system_users):
    with drac_peers() as (portmapper, dracd):
        site = Site(world_tmp, pam_service, drac_host=f"127.0.0.1:{portmapper.port}")
        try:
            port = free_port()
            with open(site.config, "a") as f:
                f.write(f"set proxy-protocol = 127.0.0.1:{port}\n"
                        f"set proxy-trusted-networks = 127.0.0.1/32\n")
            server = ProxiedServer(site.root, site.config, port=port, syslog=site.syslog)
            site.servers.append(server)
            server.start()
            user = system_users.create()
            make_spool(site.spool_dir, user, mbox(("hi", "there")))
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(proxy_protocol.make_v2(CLIENT, 40000, "127.0.0.1", port))
                assert read_greeting(sock).startswith(b"+OK")
                for command in (f"USER {user.name}", f"PASS {user.password}", "QUIT"):
                    sock.sendall(command.encode() + b"\r\n")
                    assert read_greeting(sock).startswith(b"+OK"), command
            site.syslog.wait_for(rf"\[drac\]: login by {user.name} from host "
                                 rf"{CLIENT.replace('.', '[.]')} \({CLIENT.replace('.', '[.]')}\)")
        finally:
            site.close()
    assert dracd.added == [struct.unpack(">I", socket.inet_aton(CLIENT))[0]]
