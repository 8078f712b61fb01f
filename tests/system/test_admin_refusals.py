"""The administrator's refusals (README.md, "Check a configuration"; docs/operations.md,
"Start-up checks"): what the server cannot start with is one line naming the option and
where it was set, at once, never a start or a reload left waiting."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import socket
import subprocess
import threading

import pytest

from tests.server_harness import (POPPER, Site, free_port, prelogin_args, read_greeting,
                                  wait_for_greeting,
                                  wait_until)

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


@pytest.fixture
def site(world_tmp, pam_service):
    s = Site(world_tmp, pam_service)
    yield s
    s.close()


def _last_line(path: str) -> int:
    with open(path) as f:
        return len(f.read().splitlines())


def _held_port() -> socket.socket:
    """A loopback port another program listens on."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder


def test_a_start_on_a_port_in_use_names_the_entry_and_where_it_was_set(site):
    """Binding fails at start-up only (--check-config cannot refuse a port the running
    server holds: the documented check before a reload): the line still names the option,
    the entry and where it was set, as every other refusal does."""
    with _held_port() as holder:
        port = holder.getsockname()[1]
        with open(site.config, "a") as f:
            f.write(f"set listen = 127.0.0.1:{port}\n")
        line_no = _last_line(site.config)
        started = subprocess.run([POPPER, "-f", site.config, *prelogin_args()],
                                 capture_output=True, text=True, timeout=30,
                                 stdin=subprocess.DEVNULL)
    assert started.returncode == 1
    assert re.fullmatch(rf"popper: listen 127\.0\.0\.1:{port}: cannot listen on "
                        rf"127\.0\.0\.1:{port}: Address already in use \(listen set at "
                        rf"{re.escape(site.config)}:{line_no}\)\n", started.stderr), started.stderr


def _fifo(site) -> str:
    path = os.path.join(site.root, "trace-fifo")
    os.mkfifo(path, 0o600)
    return path


def test_a_fifo_tracefile_no_process_reads_refuses_the_start_at_once(site):
    """open(2) for writing waits for a FIFO's reader: the start stayed in it, no port
    opened, no line said why. It is refused at once, naming the option and where it was
    set; --check-config, which cannot know whether a reader will be there, passes it."""
    fifo = _fifo(site)
    with open(site.config, "a") as f:
        f.write(f'set tracefile = "{fifo}"\n')
    line_no = _last_line(site.config)
    listen = "127.0.0.1:1"                      # never bound: the log opens first
    try:
        started = subprocess.run([POPPER, listen, "-f", site.config, *prelogin_args()],
                                 capture_output=True, text=True, timeout=30,
                                 stdin=subprocess.DEVNULL)
    finally:                                    # a master stuck in open(2) is let go
        try:
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        except OSError:
            pass
    assert started.returncode == 1
    assert started.stderr == (f"popper: tracefile {fifo} (set at {site.config}:{line_no}): "
                              f"a FIFO no process reads\n")


def test_a_fifo_tracefile_a_process_reads_gets_the_records(site):
    """A FIFO with a reader stays a tracefile as before (the refusal above is for none)."""
    fifo = _fifo(site)
    got: list[bytes] = []

    def read() -> None:
        with open(fifo, "rb") as f:
            got.append(f.read())
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    with open(site.config, "a") as f:
        f.write(f'set tracefile = "{fifo}"\n')
    server = site.server()
    try:
        assert wait_for_greeting(server.host, server.port).startswith(b"+OK")
    finally:
        server.stop()
        reader.join(10)
    assert re.search(rb"^\w{3} [ \d]\d \d\d:\d\d:\d\d\.\d{3} \d{4} \[\d+\] ", b"".join(got), re.M)


def test_hup_to_a_fifo_tracefile_no_process_reads_is_refused_and_keeps_accepting(site):
    """A reload that would open such a FIFO: refused in one line, the running configuration
    kept, the master accepting (it was stuck in open(2), accepting no one)."""
    server = site.server()
    assert wait_for_greeting(server.host, server.port).startswith(b"+OK")
    fifo = _fifo(site)
    with open(site.config, "a") as f:
        f.write(f'set tracefile = "{fifo}"\n')
    line_no = _last_line(site.config)
    try:
        os.kill(server.pid, signal.SIGHUP)
        site.syslog.wait_for(rf"reload failed, keeping the running configuration: tracefile "
                             rf"{re.escape(fifo)} \(set at {re.escape(site.config)}:{line_no}\): "
                             rf"a FIFO no process reads")
        assert wait_for_greeting(server.host, server.port, timeout=10).startswith(b"+OK")
    finally:
        try:
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        except OSError:
            pass


def test_a_spool_dir_mounted_read_only_where_the_server_runs_refuses_the_start(site):
    """The packaged units' ProtectSystem=strict leaves a spool-dir outside their
    ReadWritePaths read-only: the master started, and every login failed writing its
    temporary drop. Here a mount namespace of the start's own mounts spool-dir read-only,
    as the unit would: the start refuses it in one line naming the option and where it
    was set."""
    spool = site.spool_dir
    started = _start_with_read_only(site, spool)
    assert started.returncode == 1
    assert re.fullmatch(rf"popper: spool-dir {re.escape(spool)} \(set at "
                        rf"{re.escape(site.config)}:\d+\): on a file system mounted read-only "
                        rf"here \(under the packaged systemd units, a place not in "
                        rf"ReadWritePaths: add it in a drop-in\)\n", started.stderr), started.stderr


def test_hup_with_new_listen_entries_says_they_wait_for_a_restart(site):
    """The listeners stay those start-up opened (docs/operations.md): a reload that reads
    other listen entries applies the rest and says so, instead of a port silently not
    opened. A reload that leaves them alone says nothing of them."""
    server = site.server()
    assert wait_for_greeting(server.host, server.port).startswith(b"+OK")
    os.kill(server.pid, signal.SIGHUP)
    site.syslog.wait_for("configuration reloaded")
    added = free_port()
    with open(site.config, "a") as f:
        f.write(f"set listen = 127.0.0.1:{added}\n")
    os.kill(server.pid, signal.SIGHUP)
    site.syslog.wait_for("listen and tls-listen changed: the listeners stay those start-up "
                         "opened until a restart")
    texts = [text for *_, text in site.syslog.records]
    assert texts.count("configuration reloaded") == 2
    assert texts.count("listen and tls-listen changed: the listeners stay those start-up "
                       "opened until a restart") == 1
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", added), timeout=5).close()


def test_a_second_detaching_master_names_pid_file_and_where_it_was_set(site):
    """A pid file a running master holds: the second start's line names the option and
    where it was set, like every other refusal at start-up."""
    pid_file = os.path.join(site.root, "popper.pid")
    with open(site.config, "a") as f:
        f.write(f'set pid-file = "{pid_file}"\n')
    line_no = _last_line(site.config)
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    env["QPOPPER_SYSLOG_SOCKET"] = site.syslog.path

    def start() -> subprocess.CompletedProcess:
        return subprocess.run([POPPER, f"127.0.0.1:{free_port()}", "-f", site.config,
                               "--daemon", *prelogin_args()], env=env, capture_output=True,
                              text=True, timeout=30, stdin=subprocess.DEVNULL)
    first = start()
    assert first.returncode == 0, first.stderr
    wait_until(lambda: _pid_in(pid_file), what="the detached master's pid file")
    try:
        second = start()
        assert second.returncode == 1
        assert second.stderr == (f"popper: pid-file {pid_file} (set at {site.config}:"
                                 f"{line_no}): held by a running master\n")
    finally:
        os.kill(_pid_in(pid_file), signal.SIGTERM)


def _pid_in(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def test_a_fifo_tracefile_whose_reader_stops_reading_drops_records_not_clients(site):
    """A FIFO's reader that keeps it open but reads no more (a stalled logger): once the
    pipe is full, a write(2) waited for it, the master or every connection's processes with
    it, and clients got no greeting. Records are dropped instead; clients are served."""
    fifo = _fifo(site)
    stalled = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)    # open, never read
    try:
        fcntl.fcntl(stalled, F_SETPIPE_SZ, 4096)            # full after a few records
        with open(site.config, "a") as f:
            f.write(f'set tracefile = "{fifo}"\n')
        server = site.server()
        for _ in range(40):
            with socket.create_connection((server.host, server.port), timeout=10) as sock:
                assert read_greeting(sock).startswith(b"+OK")
                sock.sendall(b"QUIT\r\n")
                assert sock.recv(100).startswith(b"+OK")
        assert len(os.read(stalled, 65536)) > 0                 # the records that fitted
    finally:
        os.close(stalled)


F_SETPIPE_SZ = 1031
"""fcntl's F_SETPIPE_SZ (Linux; the fcntl module names it from Python 3.10 on)."""


def test_auth_brakes_file_under_a_read_only_mount_refuses_the_start(site):
    """auth-brakes-file where the server cannot write (outside the units' ReadWritePaths):
    the master started, and each failed login turned the brakes off for its connection,
    counting no guess across connections. The start refuses it, naming the option."""
    place = os.path.join(site.root, "ro")
    os.mkdir(place, 0o755)
    brakes = os.path.join(place, "qpopper", "auth-brakes.sqlite")    # made at a failure
    with open(site.config, "a") as f:
        f.write(f'set auth-brakes-file = "{brakes}"\n')
    line_no = _last_line(site.config)
    started = _start_with_read_only(site, place)
    assert started.returncode == 1
    assert started.stderr == (f"popper: auth-brakes-file {brakes} (set at {site.config}:"
                              f"{line_no}): {place} is on a file system mounted read-only "
                              f"here: failed logins would not be counted (under the packaged "
                              f"systemd units, a place not in ReadWritePaths: add it in a "
                              f"drop-in)\n")


def _start_with_read_only(site, place: str) -> subprocess.CompletedProcess:
    """The master started in a mount namespace of its own where `place` is read-only, as a
    unit's ProtectSystem=strict leaves it (a start still running after 20 s fails)."""
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", place,
            POPPER, f"127.0.0.1:{free_port()}", "-f", site.config, *prelogin_args()]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the master started with {place} read-only")
