"""max-children-per-address counts an IPv6 client by its /64 (one host may use every address
of its /64), IPv4 and IPv4-mapped clients by their address.

The end-to-end test gives the clients real IPv6 addresses: a network namespace joined to this
one by a veth pair, with unique-local addresses (fdXX:...) of the test's choosing used only
between the two ends; the clients in the namespace bind several addresses of one /64 and one of
another /64, and connect to the real master.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import time

import pytest

from qpopper.addresses import address_group
from tests.server_harness import Site

pytestmark = pytest.mark.timeout(120)

SYSTEM_PYTHON = "/usr/bin/python3"
OVER_LIMIT = "-ERR [SYS/TEMP] Too many connections; try again later"


@pytest.mark.parametrize("client,group", [
    ("2001:db8:1:2:a::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
    ("2001:DB8:1:2::7", "2001:db8:1:2::/64"),                 # one spelling per network
    ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
    ("fe80::1%eth0", "fe80::/64"),
    ("::1", "::/64"),
    ("::ffff:192.0.2.7", "192.0.2.7"),                        # IPv4-mapped: the IPv4 /32
    ("192.0.2.7", "192.0.2.7"),
    ("192.0.2.8", "192.0.2.8"),
    ("unknown", "unknown"),                                   # not an IP peer
])
def test_address_group(client, group):
    assert address_group(client) == group


@contextlib.contextmanager
def namespace_with_ipv6():
    """(server address, namespace, [three addresses of one /64], address of another /64)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to make a network namespace")
    if not os.path.exists(SYSTEM_PYTHON):
        pytest.skip(f"needs {SYSTEM_PYTHON} to run the clients inside the namespace")
    tag = secrets.token_hex(3)
    ns, host_if, ns_if = f"qpt{tag}", f"qpth{tag}", f"qptn{tag}"
    ula = f"fd{secrets.token_hex(1)}:{secrets.token_hex(2)}:{secrets.token_hex(2)}"
    one, other = f"{ula}:1", f"{ula}:2"            # two /64s, on this link only
    server = f"{one}::1"
    same_64 = [f"{one}::a", f"{one}:0:1:2:3", f"{one}:ffff:ffff:ffff:fff0"]
    other_64 = f"{other}::5"
    made = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make a network namespace here: {made.stderr.strip()}")
    in_ns = ["ip", "netns", "exec", ns]
    try:
        steps = [["ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if],
                 ["ip", "link", "set", ns_if, "netns", ns],
                 ["ip", "-6", "addr", "add", f"{server}/64", "dev", host_if, "nodad"],
                 ["ip", "-6", "addr", "add", f"{other}::1/64", "dev", host_if, "nodad"],
                 ["ip", "link", "set", host_if, "up"],
                 [*in_ns, "ip", "link", "set", "lo", "up"],
                 [*in_ns, "ip", "link", "set", ns_if, "up"]]
        steps += [[*in_ns, "ip", "-6", "addr", "add", f"{address}/64", "dev", ns_if, "nodad"]
                  for address in [*same_64, other_64]]
        for cmd in steps:
            step = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            if step.returncode != 0:
                pytest.skip(f"cannot set up IPv6 on a veth pair: {' '.join(cmd)}: "
                            f"{step.stderr.strip()}")
        yield server, ns, same_64, other_64
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=20)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


# Connects from each source address in turn, keeping every connection open, and prints the
# greeting (or what the master answered) of each as JSON.
CLIENTS = """
import json, socket, sys
host, port, sources = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
held, answers = [], []
for source in sources:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.settimeout(20)
    s.bind((source, 0))
    s.connect((host, port))
    held.append(s)
    with s.makefile("rb") as reader:
        answers.append(reader.readline().decode().strip())
print(json.dumps(answers))
for s in held:
    s.close()
"""


def greetings(ns: str, server, sources: list[str]) -> list[str]:
    result = subprocess.run(["ip", "netns", "exec", ns, SYSTEM_PYTHON, "-c", CLIENTS,
                             server.host, str(server.port), *sources],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.root
def test_clients_of_one_ipv6_64_share_max_children_per_address(world_tmp, pam_service):
    site = Site(world_tmp, pam_service, max_children_per_address=2)
    try:
        with namespace_with_ipv6() as (server_ip, ns, same_64, other_64):
            server = site.server(host=server_ip)
            answers = greetings(ns, server, [*same_64, other_64])
            # the third of the /64 is over its limit: it takes the place of the connection of
            # that /64 that has waited longest without logging in (none logged in here)
            assert [a.startswith("+OK") for a in answers] == [True, True, True, True], answers
            network = address_group(same_64[0])
            site.syslog.wait_for(rf"2 sessions from {network} \(max-children-per-address 2\): "
                                 rf"ending a connection from {network} that has not logged "
                                 rf"in, for one from {ipaddress.ip_address(same_64[2])}")
            # Those sessions ended when the clients closed: the master's reaping gave the /64
            # its two places back (it decrements the counter it incremented).
            deadline = time.monotonic() + 20
            while True:
                answers = greetings(ns, server, same_64[1:])
                if all(a.startswith("+OK") for a in answers) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert [a.startswith("+OK") for a in answers] == [True, True], answers
    finally:
        site.close()
