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

from tests.server_harness import (POPPER, PopperServer, Site, free_port, login, prelogin_args,
                                  read_greeting,
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


# --- review: legitimate configurations the read-only checks refuse ---------------------------
def _in_namespace(server, read_only: str, writable: str = ""):
    """`server` (not started yet) run in a mount namespace of its own where `read_only` is
    read-only and `writable`, a place under it, writable: as a unit's ProtectSystem=strict
    with a ReadWritePaths= of that place leaves them."""
    script = ('mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && '
              'if [ -n "$2" ]; then mount --bind "$2" "$2" && '
              'mount -o remount,bind,rw "$2"; fi && shift 2 && exec "$@"')
    server.argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                   read_only, writable, *server.argv]
    return server


def test_a_maildir_site_with_a_read_only_spool_dir_starts_and_serves(world_tmp, pam_service,
                                                                     system_users):
    """A Maildir user's session writes nothing in spool-dir (its lock and journal are in the
    Maildir; docs/maildir.md): a site whose users all have Maildirs is served with spool-dir
    on a read-only mount (a read-only root file system, the packaged unit without /var/mail).
    The read-only check refuses that start."""
    from tests.system.test_maildir_server import deliver_with_mailbox
    site = Site(world_tmp, pam_service, maildir="~/Maildir")
    try:
        user = system_users.create()
        os.chmod(user.home, 0o711)
        deliver_with_mailbox(user, [b"Subject: one\n\nbody\n"])
        server = _in_namespace(PopperServer(site.root, site.config, syslog=site.syslog),
                               site.spool_dir)
        site.servers.append(server)
        server.start()
        client = login(server, user)
        try:
            assert client.stat()[0] == 1
        finally:
            client.quit()
    finally:
        site.close()


def test_bulldb_with_a_read_only_bulldir_and_a_writable_bulldb_directory_starts(site):
    """With bulldb the sessions write <bulldir>/bulldb/bulldb.sqlite only; the bulletins
    themselves are read. A unit that makes only that directory writable (ReadWritePaths=
    /var/spool/bulls/bulldb, the least a drop-in needs) is refused: the check looks at
    bulldir."""
    bulldir = os.path.join(site.root, "bulls")
    os.mkdir(bulldir, 0o755)
    with open(site.config, "a") as f:
        f.write(f'set bulldir = "{bulldir}"\nset bulldb\n')
    checked = subprocess.run([POPPER, "--check-config", "-f", site.config, *prelogin_args()],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr          # made <bulldir>/bulldb
    server = _in_namespace(PopperServer(site.root, site.config, syslog=site.syslog),
                           bulldir, os.path.join(bulldir, "bulldb"))
    site.servers.append(server)
    server.start()


def test_home_dir_misc_with_a_read_only_temp_dir_it_does_not_use_starts(site):
    """home-dir-misc puts the temporary drop and the cache in the home directory: temp-dir
    and cache-dir are not used (spool/paths.py). Read-only, they are refused all the same."""
    unused = os.path.join(site.root, "unused-temp")
    os.mkdir(unused, 0o755)
    with open(site.config, "a") as f:
        f.write(f'set home-dir-misc\nset temp-dir = "{unused}"\n')
    server = _in_namespace(PopperServer(site.root, site.config, syslog=site.syslog), unused)
    site.servers.append(server)
    server.start()


# --- review: read-only places the checks pass, where every login fails ----------------------
def test_a_read_only_bulldb_directory_under_a_writable_bulldir_refuses_the_start(site):
    """With bulldb the sessions write <bulldir>/bulldb/bulldb.sqlite: that directory on a
    read-only mount (its own mount, or a unit whose ReadWritePaths= names bulldir's parent
    and a ReadOnlyPaths= the database) fails every login with bulletins [SYS/TEMP] (without
    bulldb-nonfatal). The check looks at bulldir only, and passes it."""
    bulldir = os.path.join(site.root, "bulls")
    os.mkdir(bulldir, 0o755)
    with open(os.path.join(bulldir, "00001.Example_bulletin"), "wb") as f:
        f.write(b"From qpop Wed Nov  9 13:31:08 1994\nSubject: Example bulletin\n\nbody\n")
    with open(site.config, "a") as f:
        f.write(f'set bulldir = "{bulldir}"\nset bulldb\n')
    checked = subprocess.run([POPPER, "--check-config", "-f", site.config, *prelogin_args()],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr          # made <bulldir>/bulldb
    bulldb = os.path.join(bulldir, "bulldb")
    server = _in_namespace(PopperServer(site.root, site.config, syslog=site.syslog), bulldb)
    site.servers.append(server)
    with pytest.raises(RuntimeError, match=r"popper: bulldb.* read-only"):
        server.start()


def test_home_dir_mail_with_the_temporary_drops_in_a_read_only_spool_dir_refuses_the_start(
        site):
    """home-dir-mail without temp-dir or home-dir-misc: the temporary drops are made in
    spool-dir (spool/paths.py), so a read-only spool-dir fails every login; the check skips
    spool-dir with home-dir-mail, and passes it."""
    with open(site.config, "a") as f:
        f.write('set home-dir-mail = ".mail"\n')
    server = _in_namespace(PopperServer(site.root, site.config, syslog=site.syslog),
                           site.spool_dir)
    site.servers.append(server)
    with pytest.raises(RuntimeError, match=r"popper: spool-dir.* read-only"):
        server.start()


# --- review: the tracefile FIFO's non-blocking writes ---------------------------------------
def test_a_record_longer_than_pipe_buf_reaches_a_fifo_tracefile_whole_or_not_at_all(world_tmp):
    """Writes of at most PIPE_BUF (4096) octets to a non-blocking pipe are whole or EAGAIN;
    a longer one is cut where the pipe is full. A record of 2048 characters (the cap) that
    are not ASCII (a client's undecodable octets are U+FFFD, three octets each) is over
    4096: its head is written without its line end, the rest dropped, and the next record
    is glued to it: one line, two records."""
    import syslog
    from qpopper.log import Logger
    fifo = os.path.join(world_tmp, "trace.fifo")
    os.mkfifo(fifo, 0o600)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        fcntl.fcntl(reader, F_SETPIPE_SZ, 4096)
        log = Logger(tracefile=fifo)
        try:
            log(syslog.LOG_INFO, "\ufffd" * 2000)         # the pipe is empty: room for 4096
            first = os.read(reader, 65536)
            log(syslog.LOG_INFO, "the next record")
            second = os.read(reader, 65536)
        finally:
            log.close()
    finally:
        os.close(reader)
    records = (first + second).decode("utf-8", "replace").splitlines(keepends=True)
    stamp = re.compile(r"\w{3} [ \d]\d \d\d:\d\d:\d\d\.\d{3} \d{4} \[\d+\] ")
    for record in records:
        assert record.endswith("\n") and len(stamp.findall(record)) == 1, \
            (len(first), record[:60] + "..." + record[-60:])


def test_a_device_tracefile_with_no_driver_is_not_called_a_fifo(site):
    """opened_log words every ENXIO "a FIFO no process reads"; a character device whose
    driver is not there (check_tracefile accepts character devices: /dev/null, a terminal)
    opens with ENXIO too, and is no FIFO."""
    device = os.path.join(site.root, "trace.dev")
    os.mknod(device, 0o600 | 0o020000, os.makedev(240, 0))   # S_IFCHR; 240: local/experimental
    with open(site.config, "a") as f:
        f.write(f'set tracefile = "{device}"\n')
    started = subprocess.run([POPPER, f"127.0.0.1:{free_port()}", "-f", site.config,
                              *prelogin_args()], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL)
    assert started.returncode == 1
    assert started.stderr.startswith(f"popper: tracefile {device} (set at ")
    assert "FIFO" not in started.stderr, started.stderr
