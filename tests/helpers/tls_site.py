"""A Site whose server also listens with TLS, and the client-side TLS helpers the TLS tests share."""

from __future__ import annotations

import socket
import ssl
import subprocess

from tests.server_harness import PopperServer, Site, free_port, read_greeting, wait_until


def pipelined(sock, *commands: str) -> list[bytes]:
    """Send the commands in one write; their one-line replies, in order."""
    sock.sendall("".join(f"{command}\r\n" for command in commands).encode())
    replies = b""
    while replies.count(b"\r\n") < len(commands):
        chunk = sock.recv(4096)
        if not chunk:
            break
        replies += chunk
    return replies.split(b"\r\n")[:len(commands)]


def client_context(pki, **versions) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.ca_file)
    for attr, value in versions.items():
        setattr(context, attr, value)
    return context


class TlsSite(Site):
    """A Site whose server may also (or only) listen with TLS from the first byte."""

    def tls_server(self, pki, *, extra_args=(), tls_port=None) -> PopperServer:
        """Plain port (tls-support from the config) plus a tls-listen port."""
        tls_port = tls_port or free_port()
        srv = PopperServer(self.root, self.config, syslog=self.syslog,
                           extra_args=(f"--tls-listen=127.0.0.1:{tls_port}", *extra_args))
        srv.tls_port = tls_port
        self.servers.append(srv)
        return srv.start()

    def implicit_only_server(self, pki, extra_args=("-l", "2")) -> PopperServer:
        """`popper 127.0.0.1:PORT -l 2`: the manual's alternate-port instance."""
        srv = PopperServer(self.root, self.config, syslog=self.syslog, extra_args=extra_args)
        self.servers.append(srv)
        with open(srv.stderr_path, "wb") as err:
            srv.proc = subprocess.Popen(srv.argv, env=srv.env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=err,
                                        start_new_session=True)
        context = client_context(pki)

        def answers():
            assert srv.proc.poll() is None, srv.stderr()
            try:
                with socket.create_connection((srv.host, srv.port), timeout=2) as raw, \
                        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    return read_greeting(tls).startswith(b"+OK")
            except OSError:
                return False
        wait_until(answers, 15, "the TLS listener")
        srv.tls_port = srv.port
        return srv
