"""What the monitor believes of a PROXY header the pre-login process reports (docs/scale-out.md,
"Where the client's address comes from"), and the master's start-up checks of proxy-protocol.
The pre-login process may be an attacker's: the address is taken only on a proxy-protocol
listener, once, first, from a trusted real peer, and only as an address and a port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from qpopper.server import monitor as monitor_mod
from qpopper.server import monitor_wire as wire
from qpopper.addresses import parse_networks
from qpopper.config import Config
from qpopper.log import ForwardedRecords
from qpopper.server.listeners import ListenError, bind_listeners, proxy_listeners
from qpopper.server.preflight import PreflightError, check_listeners, check_proxy_protocol
from qpopper.spool.mounts import mount_point_of
from tests.helpers.spoolcheck import small_tmpfs
from tests.server_harness import POPPER, free_port, prelogin_args

TRUSTED = parse_networks("127.0.0.1/32, 10.0.0.0/8")


class Sink(list):
    def __call__(self, priority, text):
        self.append(text)

    def open(self):
        pass


def monitor(peer=("127.0.0.1", 5000), proxy=TRUSTED, cfg=None, spool_mount=None):
    reported = []
    mon = monitor_mod.Monitor(cfg or Config.defaults(), Sink(), hostname="test.host", peer=peer,
                              client=monitor_mod.Client(-1, -1, None), proxy=proxy,
                              on_client_address=reported.append,
                              on_health_check=lambda *words: reported.append(words),
                              spool_mount=spool_mount)
    return mon, reported


def proxied(local=False, address="203.0.113.9", port="4000") -> wire.Frame:
    return wire.decode(wire.encode(wire.Kind.PROXIED, local, address, port), wire.REQUESTS)


def test_the_client_address_is_taken_from_a_trusted_proxy_once():
    mon, reported = monitor()
    reply = wire.decode(mon._answer(proxied()), {wire.Kind.DATA})
    assert (reply.text(0), reply.flag(1)) == ("203.0.113.9", False)
    assert (mon.client_ip, mon.peer, mon.real_ip) == ("203.0.113.9", ("203.0.113.9", 4000),
                                                      "127.0.0.1")
    assert reported == ["203.0.113.9"]
    with pytest.raises(monitor_mod.ProtocolViolation, match="without a PROXY header"):
        mon._answer(proxied(address="198.51.100.1"))          # never a second time
    assert mon.client_ip == "203.0.113.9"


def test_ipv6_and_mapped_addresses_are_normalised():
    mon, reported = monitor(peer=("10.1.2.3", 1))
    mon._answer(proxied(address="2001:DB8::0:1"))
    assert reported == ["2001:db8::1"]
    mon, reported = monitor()
    mon._answer(proxied(address="::ffff:192.0.2.5"))
    assert reported == ["192.0.2.5"]


@pytest.mark.parametrize("peer, proxy, frame, why", [
    (("127.0.0.66", 1), TRUSTED, proxied(), "untrusted 127.0.0.66"),
    (("127.0.0.1", 1), None, proxied(), "without a PROXY header"),
    (("127.0.0.1", 1), TRUSTED, proxied(address="host.example"), "PROXIED: ValueError"),
    (("127.0.0.1", 1), TRUSTED, proxied(address=""), "PROXIED: ValueError"),
    (("127.0.0.1", 1), TRUSTED, proxied(port="65536"), "bad port"),
    (("127.0.0.1", 1), TRUSTED, proxied(port="-1"), "bad port"),
    (("127.0.0.1", 1), TRUSTED, proxied(port="٣"), "bad port"),
    # a scope id's text is free: it would become the notice lines the master reads
    (("127.0.0.1", 1), TRUSTED, proxied(address="fe80::1%x\n1 203.0.113.66"), "scope id"),
    (("127.0.0.1", 1), TRUSTED, proxied(address="fe80::1%eth0"), "scope id"),
])
def test_refused_reports_end_the_connection(peer, proxy, frame, why):
    mon, reported = monitor(peer=peer, proxy=proxy)
    with pytest.raises(monitor_mod.ProtocolViolation, match=why):
        mon._answer(frame)
    assert reported == [] and mon.client_ip == peer[0]


def health_check(**kwargs) -> tuple[str, list]:
    """A health check's answer (the -ERR reason, "" for +OK) and what the master was told."""
    mon, reported = monitor(**kwargs)
    reply = wire.decode(mon._answer(proxied(local=True, address="", port="0")), {wire.Kind.DATA})
    assert reply.flag(1) and mon._closing
    assert mon.client_ip == "127.0.0.1"
    return reply.text(0), reported


def test_a_health_check_ends_the_requests(tmp_path):
    cfg = Config.defaults().replace(spool_dir=str(tmp_path))
    mount = mount_point_of(str(tmp_path))
    assert health_check(cfg=cfg, spool_mount=mount) == ("", [("spool-dir", "ok")])


def test_a_health_check_looks_at_spool_dir(tmp_path):
    """docs/scale-out.md, "The load balancer": gone, or no longer on the file system mounted
    where the master found it, is -ERR; with home-dir-mail there is no spool directory to
    look at."""
    gone = Config.defaults().replace(spool_dir=str(tmp_path / "gone"))
    assert health_check(cfg=gone) == ("spool-dir cannot be examined: No such file or directory",
                                      [("spool-dir", "ENOENT")])
    here = Config.defaults().replace(spool_dir=str(tmp_path))
    # recorded as a mount point, tmp_path is none now: what an NFS mount gone leaves
    assert health_check(cfg=here, spool_mount=str(tmp_path)) \
        == ("spool-dir's mount is gone", [("spool-dir", "unmounted")])
    assert health_check(cfg=here, spool_mount="/")[1] == [("spool-dir", "ok")]
    assert health_check(cfg=gone.replace(home_dir_mail=".mail"), spool_mount=str(tmp_path)) \
        == ("", [("spool-dir", "ok")])


def test_a_health_check_stats_spool_dir_once(tmp_path, monkeypatch):
    """One stat of spool-dir per check, on its own mount too (mounts.spool_mount_state): on
    a hard NFS mount whose server is slow each is a round trip the balancer waits for."""
    with small_tmpfs(tmp_path / "mnt") as mnt:
        spool_dir = mnt / "mail"
        spool_dir.mkdir()
        cfg = Config.defaults().replace(spool_dir=str(spool_dir))
        real_stat = os.stat
        stated = []

        def stat(path, *args, **kwargs):
            stated.append(path)
            return real_stat(path, *args, **kwargs)
        monkeypatch.setattr(os, "stat", stat)
        assert health_check(cfg=cfg, spool_mount=str(mnt)) == ("", [("spool-dir", "ok")])
        assert health_check(cfg=cfg, spool_mount="/") == ("", [("spool-dir", "ok")])
        monkeypatch.undo()
        assert stated.count(str(spool_dir)) == 2


def test_any_other_request_before_the_header_kills_the_prelogin_process():
    mon, reported = monitor()
    ours, theirs = wire.channel_pair()
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    mon.prelogin_pid = stand_in.pid
    records_ours, records_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    mon.records = ForwardedRecords(records_ours, mon.log)
    try:
        wire.send(theirs, wire.Kind.PASSWORD, "alice", "secret", "USER", "", False, "")
        mon._serve(ours)
        assert stand_in.wait(10) < 0                     # killed
        assert any("PASSWORD before the PROXY header" in line for line in mon.log)
    finally:
        stand_in.kill()
        stand_in.wait()
        ours.close()
        theirs.close()
        mon.records.close()
        records_theirs.close()


def test_proxy_protocol_names_listeners():
    port, other = free_port(), free_port()
    listeners = bind_listeners([f"127.0.0.1:{port}", f"127.0.0.1:{other}"])
    try:
        assert proxy_listeners((f"127.0.0.1:{port}",), listeners) == [listeners[0]]
        assert proxy_listeners((str(other),), listeners) == [listeners[1]]
        assert proxy_listeners((), listeners) == []
        with pytest.raises(ListenError, match="no listen or tls-listen entry"):
            proxy_listeners(("127.0.0.2:110",), listeners)
    finally:
        for sock in listeners:
            sock.close()


def checked_entries(cfg) -> tuple[str, ...]:
    """check_proxy_protocol as check_site calls it: against the listen entries' addresses."""
    return check_proxy_protocol(cfg, check_listeners(cfg))


def test_the_preflight_alone_requires_trusted_networks_and_hands_over_the_entries():
    cfg = Config.defaults().replace(listen=("127.0.0.1:110",),
                                    proxy_protocol=("127.0.0.1:110",),
                                    proxy_trusted_networks=("127.0.0.1",))
    assert checked_entries(cfg) == ("127.0.0.1:110",)
    assert checked_entries(cfg.replace(proxy_protocol=())) == ()
    with pytest.raises(PreflightError, match="needs proxy-trusted-networks"):
        checked_entries(cfg.replace(proxy_trusted_networks=()))
    with pytest.raises(PreflightError, match="no listen or tls-listen entry has this address"):
        checked_entries(cfg.replace(proxy_protocol=("111",)))


@pytest.mark.parametrize("entry, listen", [
    ("127.0.0.2:{port}", "127.0.0.1:{port}"),        # another address, the same port
    ("127.0.0.1:{port}", "{port}"),                  # a wildcard socket is no named address
    ("[::1]:{port}", "127.0.0.1:{port}"),
    ("127.0.0.1:{other}", "127.0.0.1:{port}"),
])
def test_the_check_refuses_every_entry_start_up_would_refuse(entry, listen):
    """What --check-config passes, start-up binds and matches (listeners.proxy_listeners):
    the same entries fail both, with the same words."""
    port = free_port()
    other = port + 1 if port < 65535 else port - 1
    entry, listen = entry.format(port=port, other=other), listen.format(port=port, other=other)
    cfg = Config.defaults().replace(listen=(listen,), proxy_protocol=(entry,),
                                    proxy_trusted_networks=("127.0.0.1",))
    with pytest.raises(PreflightError) as checked:
        checked_entries(cfg)
    listeners = bind_listeners([listen])
    try:
        with pytest.raises(ListenError) as started:
            proxy_listeners((entry,), listeners)
    finally:
        for sock in listeners:
            sock.close()
    assert str(checked.value) == f"proxy-protocol {entry} (set at override): no listen or " \
                                 f"tls-listen entry has this address and port"
    assert str(started.value) == str(checked.value).replace(" (set at override)", "")


@pytest.mark.parametrize("entry, listen", [
    ("{port}", "127.0.0.1:{port}"), ("127.0.0.1:{port}", "127.0.0.1:{port}"),
    ("0.0.0.0:{port}", "127.0.0.1:{port}"), ("{port}", "{port}"),
])
def test_the_check_passes_every_entry_start_up_takes(entry, listen):
    port = free_port()
    entry, listen = entry.format(port=port), listen.format(port=port)
    cfg = Config.defaults().replace(listen=(listen,), proxy_protocol=(entry,),
                                    proxy_trusted_networks=("127.0.0.1",))
    assert checked_entries(cfg) == (entry,)
    listeners = bind_listeners([listen])
    try:
        assert proxy_listeners((entry,), listeners) == listeners
    finally:
        for sock in listeners:
            sock.close()


def test_popper_refuses_to_start_with_a_proxy_listener_and_no_trusted_networks(tmp_path):
    port = free_port()
    config = tmp_path / "qpopper.config"
    config.write_text(f"set proxy-protocol = 127.0.0.1:{port}\n")
    run = subprocess.run([POPPER, f"127.0.0.1:{port}", "-f", str(config), *prelogin_args()],
                         capture_output=True, text=True, timeout=30,
                         env=dict(os.environ, QPOPPER_SYSLOG_SOCKET=str(tmp_path / "none")))
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == (
        f"popper: proxy-protocol (set at {config}:1) needs proxy-trusted-networks: the load "
        f"balancers allowed to send the header")
    # --check-config refuses what start-up refuses, with the same words.
    check = subprocess.run([POPPER, "--check-config", f"127.0.0.1:{port}", "-f", str(config),
                            *prelogin_args()], capture_output=True, text=True, timeout=30)
    assert check.returncode == 1
    assert run.stderr.strip().splitlines()[-1] in check.stderr.strip().splitlines()[-1]
    config.write_text(f"set proxy-protocol = 127.0.0.1:{port + 1}\n"
                      "set proxy-trusted-networks = 127.0.0.1\n")
    check = subprocess.run([POPPER, "--check-config", f"127.0.0.1:{port}", "-f", str(config),
                            *prelogin_args()], capture_output=True, text=True, timeout=30)
    assert check.returncode == 1 and "no listen or tls-listen entry" in check.stderr


@pytest.mark.parametrize("line, complaint", [
    ("set proxy-trusted-networks = 10.0.0.0/33", "expects IPv4 or IPv6 networks"),
    ("set proxy-trusted-networks = 127.0.0.1,example.org", "'example.org' is not an IPv4"),
    ("set proxy-protocol = 127.0.0.1:99999", "expects [ADDRESS:]PORT"),
])
def test_bad_values_name_file_and_line(tmp_path, line, complaint):
    from qpopper import config as config_mod
    path = tmp_path / "qpopper.config"
    path.write_text("# first\n" + line + "\n")
    with pytest.raises(config_mod.ConfigError) as refused:
        config_mod.load(["-f", str(path)])
    assert str(refused.value).startswith(f"{path}:2:") and complaint in str(refused.value)


def test_the_reverse_lookup_waits_for_the_header_address():
    """The pre-login process forks its lookup helper before the sandbox, when the client's
    address is not known yet; begin() hands it the header's address."""
    import pwd

    from qpopper.server.reverse_lookup import ForkedReverseLookup
    from tests.helpers.sysusers import PRELOGIN_USER, is_root
    if not is_root():
        pytest.skip("needs root: the helper drops to the pre-login account")
    account = pwd.getpwnam(PRELOGIN_USER)
    for address, name in (("127.0.0.1", "localhost"), ("127.0.0.41", "127.0.0.41")):
        lookup = ForkedReverseLookup(None, account.pw_uid, account.pw_gid)
        lookup.begin(address)
        assert lookup.result() == name
        os.waitpid(*lookup.pids(), 0)       # left a zombie: the pre-login never reaps it


@pytest.mark.parametrize("entry, wanted", [
    ("{port}", True), ("127.0.0.1:{port}", True), ("0.0.0.0:{port}", True),
    ("[::]:{port}", True), ("127.0.0.2:{port}", False), ("[::1]:{port}", False),
    ("127.0.0.1:{other}", False),
])
def test_inetd_mode_matches_proxy_protocol_entries_as_the_master_does(entry, wanted):
    """An inetd connection is refused when an entry names its port, and its address unless
    the entry has none (an unspecified address is every address)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        spec = entry.format(port=port, other=port + 1 if port < 65535 else port - 1)
        cfg = Config.defaults().replace(proxy_protocol=(spec,),
                                        proxy_trusted_networks=TRUSTED)
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listener.accept()
            with accepted:
                assert monitor_mod._wants_proxy_header(cfg, accepted) is wanted
            client.close()


def test_inetd_mode_on_a_unix_socket_is_never_taken_for_a_proxy_port():
    """stdin may be a UNIX socket (an abstract name's address is bytes): no port, no entry."""
    cfg = Config.defaults().replace(proxy_protocol=("110",), proxy_trusted_networks=TRUSTED)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(b"\0qpt-proxy-test-" + os.urandom(4).hex().encode())
        listener.listen()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(listener.getsockname())
            accepted, _ = listener.accept()
            with accepted:
                assert monitor_mod._wants_proxy_header(cfg, accepted) is False
