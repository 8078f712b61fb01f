"""The real server's site of the policy-refusal and fail2ban tests
(tests/system/test_policy_refusals.py, test_fail2ban.py): users refused for policy with the
correct password, a trusted network, and a USER/PASS login from a chosen loopback address."""

from __future__ import annotations

import os
import socket

from tests.helpers.messages import mbox
from tests.helpers.popauth import owned_store
from tests.helpers.sysusers import make_spool
from tests.server_harness import Site


def policy_site(system_users, pam_service, world_tmp) -> Site:
    """alice: a store secret (USER/PASS refused: stronger authentication required); carl:
    listed in nonauth-file; bob and dora: ordinary system users; eve: an expired account.
    127.0.0.8/29 is trusted.
    The caller closes it."""
    owner, store = owned_store(system_users, world_tmp)
    alice, bob, carl, dora = (system_users.create(p) for p in ("al", "bo", "ca", "do"))
    store.set_secret(alice.name, "alice-store-secret")
    nonauth = os.path.join(world_tmp, "nonauth")
    with open(nonauth, "w") as f:
        f.write(f"{carl.name}\n")
    s = Site(world_tmp, pam_service, pop_auth_file=store.path, pop_auth_owner=owner.name,
             store_mechanisms="on", nonauth_file=nonauth, auth_brakes_max_delay=1,
             auth_brakes_trusted_networks="127.0.0.8/29")
    for user in (alice, bob, carl, dora):
        make_spool(s.spool_dir, user, mbox(("hi", f"for {user.name}")))
    s.alice, s.bob, s.carl, s.dora = alice, bob, carl, dora
    s.eve = system_users.create("ev", account_expired=True)
    s.srv = s.server()
    return s


def greeted(site, source: str):
    """A connection from `source` whose greeting was read: (socket, its lines)."""
    sock = socket.create_connection((site.srv.host, site.srv.port), timeout=30,
                                    source_address=(source, 0))
    lines = sock.makefile("rb")
    assert lines.readline().startswith(b"+OK")
    return sock, lines


def user_pass(site, source: str, name: str, password: str) -> bytes:
    """One connection from `source`: USER, PASS, QUIT; the PASS reply."""
    sock, lines = greeted(site, source)
    with sock:
        sock.sendall(f"USER {name}\r\n".encode())
        assert lines.readline().startswith(b"+OK")
        sock.sendall(f"PASS {password}\r\n".encode())
        reply = lines.readline()
        sock.sendall(b"QUIT\r\n")
        lines.readline()
        return reply
