"""The TLS identity with the system's pyOpenSSL and cryptography as well as the venv's
(qpopper/server/tls.py, TAKES_CRYPTOGRAPHY_OBJECTS): the Debian package runs on python3's
own python3-openssl (23.0 on Debian 12, which takes only its own X509 and PKey objects), the
venv on a newer pyOpenSSL (which deprecates them). Both must check a certificate and key,
build the pre-login process's context from the master's snapshot, and complete a handshake,
without a deprecation warning."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import testpki
from tests.helpers.repo import REPO

SYSTEM_PYTHON = "/usr/bin/python3"

HANDSHAKE = r"""
import socket, ssl, sys, threading
sys.path.insert(0, {repo!r})
from OpenSSL import SSL
from qpopper.config import Config
from qpopper.server import tls
cfg = Config.defaults().replace(tls_support="stls", tls_server_cert_file={cert!r},
                                tls_private_key_file={key!r})
identity = tls.open_server_tls(cfg)
server_tls = identity.build()
ours, theirs = socket.socketpair()
def serve():
    conn = SSL.Connection(server_tls.context, ours)
    conn.set_accept_state()
    conn.do_handshake()
    conn.sendall(b"hello")
thread = threading.Thread(target=serve)
thread.start()
client = ssl.create_default_context(cafile={ca!r})
wrapped = client.wrap_socket(theirs, server_hostname="localhost")
print(tls.TAKES_CRYPTOGRAPHY_OBJECTS, wrapped.recv(5).decode(), identity.description)
thread.join()
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    made = testpki.TestPki(str(tmp_path_factory.mktemp("pki")))
    return made, made.server("localhost", common_name="localhost")


@pytest.mark.parametrize("python", [SYSTEM_PYTHON, sys.executable])
def test_check_build_and_handshake_with_this_pyopenssl(python, pki):
    if python == SYSTEM_PYTHON and not os.path.exists(python):
        pytest.skip("no system python3 (make test installs python3-openssl for it)")
    authority, identity = pki
    script = HANDSHAKE.format(repo=str(REPO), cert=identity.cert_file, key=identity.key_file,
                              ca=authority.ca_file)
    done = subprocess.run([python, "-W", "error::DeprecationWarning", "-c", script],
                          capture_output=True, text=True, timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr
    takes, greeting, description = done.stdout.split(" ", 2)
    assert greeting == "hello" and description.strip()
    version = subprocess.run([python, "-c", "import OpenSSL; print(OpenSSL.__version__)"],
                             capture_output=True, text=True, timeout=60).stdout.strip()
    newer = tuple(map(int, version.split(".")[:2])) >= (24, 3)
    assert takes == str(newer), (version, takes)
