"""qpopper.server.session: the I/O around the protocol, over real socket pairs and TCP on loopback.

A Session runs in a thread here (the master and inetd tests run it in real processes): one reply
batch is one write, chunky-writes=never writes each piece, idle clients time out with Qpopper's
log line and no reply, a client that stops reading cannot hold the session, TCP_NODELAY is set.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import syslog
import threading
import time

import pytest

from qpopper.config import Config
from qpopper.log import Logger
from qpopper.addresses import normalize_ip
from qpopper.server.channel import Channel, ChannelClosed
from qpopper.server.session import Session
from tests.server_harness import SyslogCapture

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def syslog_capture(tmp_path):
    capture = SyslogCapture(str(tmp_path))
    yield capture
    capture.close()


@pytest.fixture
def quiet_log():
    with open("/dev/null", "w") as sink:
        yield Logger(stream=sink)


def run_session(cfg, server_sock, log, peer=("127.0.0.1", 40000)):
    """The session in a thread; returns the thread (joined by the caller)."""
    channel = Channel(server_sock.fileno(), server_sock.fileno(), server_sock)
    session = Session(cfg, channel, log=log, peer=peer, hostname="test.host")
    thread = threading.Thread(target=session.run, daemon=True)
    thread.start()
    return thread


def packets(sock, count, timeout=5.0):
    sock.settimeout(timeout)
    return [sock.recv(65536) for _ in range(count)]


def cfg_with(**kw):
    return Config.defaults().replace(reverse_lookup=False, **kw)


@contextlib.contextmanager
def one_packet_per_write(cfg, log):
    """A session over a SEQPACKET pair, which keeps write boundaries: each packet the client
    receives is one write(2) of the server. Yields (client, greeting packet); on the way out,
    QUIT must be answered with the sign-off and end the session."""
    client, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with client:
        thread = run_session(cfg, server, log)
        greeting, = packets(client, 1)
        yield client, greeting
        client.send(b"QUIT\r\n")
        assert packets(client, 1)[0].startswith(b"+OK Pop server at test.host signing off.")
        thread.join(10)
    assert not thread.is_alive()


def test_a_reply_batch_leaves_in_one_write(quiet_log):
    with one_packet_per_write(cfg_with(), quiet_log) as (client, greeting):
        assert greeting.startswith(b"+OK Qpopper (version 4.1.0) at test.host starting.")
        client.send(b"CAPA\r\nUSER first\r\nUSER someone\r\n")        # pipelined
        batch, = packets(client, 1)
        assert batch.startswith(b"+OK Capability list follows\r\n")
        assert re.search(rb"\r\n\.\r\n\+OK Password required for first\.\r\n"
                         rb"\+OK Password required for someone\.\r\n$", batch), batch


def test_chunky_writes_never_sends_each_reply_as_it_comes(quiet_log):
    with one_packet_per_write(cfg_with(chunky_writes="never"), quiet_log) as (client, _):
        client.send(b"USER a\r\nUSER b\r\nUSER c\r\n")
        assert packets(client, 3) == [b"+OK Password required for %s.\r\n" % n
                                      for n in (b"a", b"b", b"c")]


def test_chunky_writes_tls_does_not_aggregate_without_tls(quiet_log):
    with one_packet_per_write(cfg_with(chunky_writes="tls"), quiet_log) as (client, _):
        client.send(b"USER a\r\nUSER b\r\n")
        assert len(packets(client, 2)) == 2


def test_idle_client_times_out_without_a_reply_and_is_logged(syslog_capture):
    client, server = socket.socketpair()
    log = Logger(socket_path=syslog_capture.path)
    with client:
        started = time.monotonic()
        thread = run_session(cfg_with(timeout=1), server, log)
        client.settimeout(5)
        assert client.recv(4096).startswith(b"+OK")
        client.send(b"USER idler\r\n")
        assert client.recv(4096).startswith(b"+OK Password required")
        assert client.recv(4096) == b""                        # closed, nothing said (RFC 1939)
        assert 0.9 <= time.monotonic() - started < 4
        thread.join(10)
    log.close()
    syslog_capture.wait_for(r"\(v4\.1\.0\) Timeout \(1 secs\) during nw read from idler at "
                            r"127\.0\.0\.1 \(127\.0\.0\.1\)")


def test_client_that_stops_reading_cannot_hold_a_write():
    client, server = socket.socketpair()
    with client, server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        channel = Channel(server.fileno(), server.fileno(), server)
        started = time.monotonic()
        with pytest.raises(ChannelClosed):
            channel.write_all(b"x" * (8 * 1024 * 1024), timeout_s=0.5)
        assert time.monotonic() - started < 5


@pytest.mark.parametrize("error", [errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EPIPE])
def test_a_write_after_the_route_to_the_client_failed_means_the_client_is_gone(monkeypatch,
                                                                               error):
    """After TCP gives up on a route the kernel reports the ICMP error it kept (not
    ETIMEDOUT): the client is gone, not a fault that ends the process with a traceback."""
    def unreachable(fd, pieces):
        raise OSError(error, os.strerror(error))
    monkeypatch.setattr("qpopper.server.channel.os.writev", unreachable)
    client, server = socket.socketpair()
    with client, server:
        with pytest.raises(ChannelClosed):
            Channel(server.fileno(), server.fileno(), server).write_all(b"+OK\r\n", 1.0)


@pytest.mark.parametrize("error", [errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT])
def test_a_read_after_the_route_to_the_client_failed_is_its_end(monkeypatch, error):
    def unreachable(fd, size):
        raise OSError(error, os.strerror(error))
    client, server = socket.socketpair()
    with client, server:
        client.sendall(b"NOOP\r\n")                      # so poll says readable
        monkeypatch.setattr("qpopper.server.channel.os.read", unreachable)
        assert Channel(server.fileno(), server.fileno(), server).read(1.0) == b""


def test_eof_ends_the_session(quiet_log):
    client, server = socket.socketpair()
    thread = run_session(cfg_with(), server, quiet_log)
    client.settimeout(5)
    assert client.recv(4096).startswith(b"+OK")
    client.close()
    thread.join(10)
    assert not thread.is_alive()


def test_tcp_connections_get_nodelay():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        with socket.create_connection(listener.getsockname()) as client:
            conn, _ = listener.accept()
            with conn:
                Channel(conn.fileno(), conn.fileno(), conn)
                assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
                assert Channel(conn.fileno(), conn.fileno(), conn).peer() == (
                    "127.0.0.1", client.getsockname()[1])


def test_v4_mapped_addresses_are_shown_as_v4():
    assert normalize_ip("::ffff:10.0.0.5") == "10.0.0.5"
    assert normalize_ip("fe80::1%eth0") == "fe80::1"
    assert normalize_ip("::1") == "::1"


def test_debug_records_are_silent_by_default(syslog_capture):
    log = Logger(socket_path=syslog_capture.path)
    log(syslog.LOG_DEBUG, "quiet")
    log(syslog.LOG_INFO, "loud")
    log.close()
    syslog_capture.wait_for("loud")
    assert "quiet" not in syslog_capture.texts()


def test_session_and_spool_read_options_without_fallbacks():
    """Config has every option of the table: a `getattr(cfg, "x", default)` fallback is dead
    code that would hide a misspelt name (and some disagreed with the table's defaults)."""
    import ast
    from pathlib import Path

    import qpopper

    package = Path(qpopper.__file__).parent
    offenders = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
                continue
            if node.func.id == "getattr_option" or (
                    node.func.id == "getattr" and len(node.args) == 3
                    and "cfg" in ast.unparse(node.args[0])):
                offenders.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert offenders == []
