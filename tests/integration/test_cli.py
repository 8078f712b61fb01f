"""`popper` as installed: --check-config, --help, --version, errors, and its dispatch."""

import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.testpki import TestPki
from tests.server_harness import SyslogCapture, free_port, prelogin_args
from qpopper import __version__
from qpopper.auth.store import PopAuthStore
from qpopper.options import OPTIONS
from tests.helpers.repo import REPO

EXAMPLE = REPO / "etc/qpopper/qpopper.config"


def popper_path() -> str:
    for candidate in (Path(sys.executable).parent / "popper", REPO / ".venv/bin/popper"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("popper")
    assert found, "the popper console script is not installed (run make test)"
    return found


def popper(*args, **kw):
    return subprocess.run([popper_path(), *args], capture_output=True, text=True, timeout=60,
                          cwd=REPO, **kw)


@pytest.fixture
def site_args(tmp_path_factory, pam_service):
    """Flags that give the shipped configuration what start-up's checks need on a test
    machine: a certificate and key, a PAM service file, the test run's pre-login account."""
    pki = TestPki(str(tmp_path_factory.mktemp("pki")))
    good = pki.server("good")
    return [f"--tls-server-cert-file={good.cert_file}",
            f"--tls-private-key-file={good.key_file}", f"--pam-service={pam_service}",
            *prelogin_args()]


def test_check_config_prints_every_option_value_and_source(site_args):
    result = popper("--check-config", "-f", str(EXAMPLE), "-T", "600", "-s", "8110",
                    *site_args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"# popper {__version__} ")
    assert lines[0].endswith(f"configuration valid; files read: {EXAMPLE}")
    assert lines[1].split() == ["OPTION", "VALUE", "SOURCE"]
    rows = lines[2:]
    assert [row.split()[0] for row in rows] == [opt.name for opt in OPTIONS]
    by_name = {row.split()[0]: row for row in rows}
    assert by_name["timeout"].split()[1:] == ["600", "argv", "-T"]
    assert by_name["statistics"].split()[1:] == ["true", "argv", "-s"]
    assert by_name["listen"].split()[1:] == ["8110", "argv", "[ADDRESS:]PORT"]
    assert by_name["config-file"].split()[1:] == [str(EXAMPLE), "argv", "-f"]
    assert by_name["update-status-headers"].split()[1:] == ["true", "default"]
    assert by_name["auth-file"].split()[1:] == ["(unset)", "default"]
    # aligned: the source column starts at the same place on every row
    source_column = lines[1].index("SOURCE")
    for row in rows:
        assert row[source_column - 2:source_column] == "  " and row[source_column] != " ", row


def test_check_config_keeps_columns_aligned_for_a_long_path(tmp_path, site_args):
    # a config file deep in a long directory: its path is the widest value of the table
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    config = deep / "qpopper.config"
    config.write_text(EXAMPLE.read_text())
    result = popper("--check-config", "-f", str(config), *site_args)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    source_column = lines[1].index("SOURCE")
    assert source_column > len(str(config))
    for row in lines[2:]:
        assert row[source_column - 2:source_column] == "  " and row[source_column] != " ", row


def test_readme_show_config_example_matches_the_real_output():
    """The README's `popper --show-config` transcript stays true: every row it shows
    (the '...' elisions aside) is a row the command prints for the shipped file."""
    readme = (REPO / "README.md").read_text()
    command = "$ .venv/bin/popper --show-config -f etc/qpopper/qpopper.config\n"
    assert command in readme
    shown = readme.split(command, 1)[1].split("\n\n", 1)[0].splitlines()
    result = popper("--show-config", "-f", "etc/qpopper/qpopper.config")
    assert result.returncode == 0, result.stderr
    printed = set(result.stdout.splitlines())
    rows = [line for line in shown if line != "..."]
    assert len(rows) >= 8
    for line in rows:
        assert line in printed, f"README shows a line popper does not print: {line!r}"


def test_check_config_reports_the_file_and_line_of_a_mistake(tmp_path):
    bad = tmp_path / "bad.config"
    bad.write_text("set statistics\nset tls-support = sometimes\n")
    result = popper("--check-config", "-f", str(bad))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (f"popper: {bad}:2: 'tls-support' must be one of default, none, "
                             f"stls, alternate-port, got 'sometimes'\n")


def inetd_with_a_config_mistake(tmp_path, *args: str, first: bytes = b"",
                                first_line: str = "set statistics"):
    """popper -f BAD ARGS in inetd mode on a socketpair whose client sent `first`: (what the
    client got, exit status, the syslog capture, BAD, whose line 2 is the mistake). The
    caller closes the capture."""
    bad = tmp_path / "bad.config"
    bad.write_text(f"{first_line}\nset tls-support = sometimes\n")
    capture = SyslogCapture(str(tmp_path))
    server_end, client_end = socket.socketpair()
    with server_end, client_end:
        client_end.sendall(first)
        result = subprocess.run([popper_path(), "-f", str(bad), *args], stdin=server_end,
                                stdout=server_end, stderr=server_end, cwd=REPO,
                                env=dict(os.environ, QPOPPER_SYSLOG_SOCKET=capture.path),
                                timeout=30)
        server_end.close()
        client_end.settimeout(10)
        answer = b""
        while chunk := client_end.recv(4096):
            answer += chunk
    return answer, result.returncode, capture, bad


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args", [(), ("-l", "1")])
def test_in_inetd_mode_a_config_mistake_goes_to_the_log_and_the_client_gets_sys_perm(
        tmp_path, args):
    """inetd mode (stdin a socket): stderr may be the client's socket, so the FILE:LINE line
    goes to syslog only, and the client gets a fixed -ERR [SYS/PERM] (docs/operations.md,
    "Start-up checks"); the exit status is still 2."""
    answer, status, capture, bad = inetd_with_a_config_mistake(tmp_path, *args)
    try:
        assert status == 2
        assert answer == b"-ERR [SYS/PERM] The POP server's configuration has an error\r\n"
        capture.wait_for(re.escape(f"connection refused, the configuration has an error: "
                                   f"{bad}:2: 'tls-support' must be one of") + ".*")
    finally:
        capture.close()


def client_hello() -> bytes:
    """What a TLS client sends first: its ClientHello record."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="pop")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args, sends_hello, first_line", [
    (("-l", "2"), False, "set statistics"), (("-sl2",), False, "set statistics"),
    (("--tls-support", "alternate-port"), False, "set statistics"),
    (("-Z", "-l", "2", "--no-such"), False, "set statistics"),
    ((), True, "set statistics"),
    ((), False, "set tls-support = alternate-port")])
def test_in_inetd_mode_a_tls_client_is_closed_unanswered_on_a_config_mistake(
        tmp_path, args, sends_hello, first_line):
    """TLS from the first byte (the TLS socket unit's `-l 2`, after its -f, read past what
    fails; or a tls-support in the part of the file before its mistake; or told by the
    ClientHello already waiting): a plain -ERR is nothing the client can read, so nothing is
    written; the log says why."""
    answer, status, capture, bad = inetd_with_a_config_mistake(
        tmp_path, *args, first=client_hello() if sends_hello else b"", first_line=first_line)
    try:
        assert status == 2 and answer == b""
        capture.wait_for(re.escape(f"connection closed without a reply (the client expects "
                                   f"TLS), the configuration has an error: {bad}:2: ") + ".*")
        assert not [t for t in capture.texts() if t.startswith("connection refused")]
    finally:
        capture.close()


def test_unknown_flag_is_one_line_and_exit_2():
    result = popper("-Z")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "popper: argv: unknown flag '-Z' (popper --help lists them)\n"


def test_help_is_generated_from_the_table():
    result = popper("--help")
    assert result.returncode == 0 and result.stderr == ""
    for opt in OPTIONS:
        if opt.flag:
            assert f"  {opt.flag} " in result.stdout or f"  {opt.flag}\n" in result.stdout, opt.flag
        if opt.extension:
            assert f"--{opt.name}" in result.stdout, opt.name
    for word in ("--check-config", "--demo", "--version", "[ADDRESS:]PORT"):
        assert word in result.stdout


def test_version():
    result = popper("--version")
    assert result.returncode == 0
    assert result.stdout == f"popper (qpopper-py) {__version__}, Qpopper 4.1.0 compatible\n"


@pytest.mark.timeout(60)
def test_without_listen_it_serves_the_connection_on_stdin():
    server_end, client_end = socket.socketpair()
    with server_end, client_end:
        process = subprocess.Popen([popper_path(), "--auth-failure-delay=0", "-R", *prelogin_args()],
                                   stdin=server_end, stdout=server_end,
                                   stderr=subprocess.PIPE, cwd=REPO)
        server_end.close()
        client_end.settimeout(30)
        with client_end.makefile("rb") as replies:
            greeting = replies.readline()
            client_end.sendall(b"QUIT\r\n")
            goodbye = replies.readline()
        assert process.wait(timeout=30) == 0
        process.stderr.close()
    assert greeting.startswith(b"+OK ") and greeting.endswith(b"\r\n")
    assert goodbye.startswith(b"+OK")


@pytest.mark.timeout(60)
def test_with_a_port_it_runs_the_standalone_master(tmp_path, pam_service):
    port = free_port()
    process = subprocess.Popen([popper_path(), f"127.0.0.1:{port}", "-R", *prelogin_args(),
                                f"--pam-service={pam_service}",
                                f"--pid-file={tmp_path / 'popper.pid'}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                connection = socket.create_connection(("127.0.0.1", port), timeout=30)
                break
            except ConnectionRefusedError:
                assert process.poll() is None, process.stderr.read()
                assert time.monotonic() < deadline
                time.sleep(0.05)
        with connection, connection.makefile("rb") as replies:
            assert replies.readline().startswith(b"+OK ")
            connection.sendall(b"QUIT\r\n")
            assert replies.readline().startswith(b"+OK")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        process.stderr.close()


@pytest.mark.parametrize("flag, line", [
    ("--spool-dir=/nonexistent/spool",
     "popper: spool-dir /nonexistent/spool (set at argv --spool-dir): No such file or "
     "directory"),
    ("--pam-service=qpt-no-such-service",
     "popper: pam-service 'qpt-no-such-service' (set at argv --pam-service): "
     "/etc/pam.d/qpt-no-such-service does not exist"),
    ("--group-server-mode=qpt-no-such-group",
     "popper: group-server-mode 'qpt-no-such-group' (set at argv --group-server-mode): no "
     "such group"),
    ("--temp-dir=/etc/passwd",
     "popper: temp-dir /etc/passwd (set at argv --temp-dir): not a directory"),
])
def test_check_config_refuses_what_the_server_could_not_start_with(site_args, flag, line):
    result = popper("--check-config", "-f", str(EXAMPLE), *site_args, flag)
    assert (result.returncode, result.stdout, result.stderr) == (1, "", line + "\n")


def test_check_config_refuses_a_missing_prelogin_account(site_args):
    if not prelogin_args():
        pytest.skip("needs root: the pre-login account is checked only when run as root")
    result = popper("--check-config", "-f", str(EXAMPLE), *site_args,
                    "--prelogin-user=qpt-no-such-account")
    assert (result.returncode, result.stderr) == (
        1, "popper: prelogin-user 'qpt-no-such-account': no such account (prelogin-user set "
           "at argv --prelogin-user)\n")


@pytest.mark.parametrize("entries, line", [
    (["--listen=10.0.0.300:{port}"],
     "listen address 10.0.0.300:{port}: Name or service not known (listen set at argv "
     "--listen)"),
    (["--listen=qpt-no-such-host.invalid:{port}"],
     "listen address qpt-no-such-host.invalid:{port}: Name or service not known (listen set "
     "at argv --listen)"),
    (["--listen={port}", "127.0.0.1:{port}"],
     "listen {port} and listen 127.0.0.1:{port} (listen set at argv [ADDRESS:]PORT): cannot "
     "both be bound, one takes the other's address on that port (a bare port is every "
     "address, IPv4 too); keep one"),
    (["--listen=127.0.0.1:{port}", "--tls-listen=0.0.0.0:{port}"],
     "listen 127.0.0.1:{port} and tls-listen 0.0.0.0:{port} (listen set at argv --listen, "
     "tls-listen set at argv --tls-listen): cannot both be bound, one takes the other's "
     "address on that port (a bare port is every address, IPv4 too); keep one"),
])
def test_check_config_refuses_listen_entries_start_up_cannot_bind(site_args, entries, line):
    """What --check-config accepts, the server starts with (README): an entry that does not
    resolve, or two that take the same address and port, are refused by both, in one line
    naming where the entries were set (docs/operations.md, "Start-up checks")."""
    port = free_port()
    entries = [entry.format(port=port) for entry in entries]
    line = "popper: " + line.format(port=port) + "\n"
    checked = popper("--check-config", "-f", str(EXAMPLE), *site_args, *entries)
    assert (checked.returncode, checked.stdout, checked.stderr) == (1, "", line)
    started = popper("-f", str(EXAMPLE), *site_args, *entries, stdin=subprocess.DEVNULL,
                     env=dict(os.environ, QPOPPER_SYSLOG_SOCKET="/nonexistent"))
    assert (started.returncode, started.stderr) == (1, line)


def test_check_config_refuses_a_missing_pop_auth_store_as_the_user_database(site_args,
                                                                         tmp_path):
    """user-database = pop-auth without the store: every login would fail [SYS/TEMP]; the
    check says so, and how to make it (docs/operations.md, "Start-up checks")."""
    store = tmp_path / "pop.auth"
    args = [*site_args, "--user-database=pop-auth", f"--pop-auth-file={store}",
            f"--pop-auth-owner={pwd.getpwuid(os.geteuid()).pw_name}"]
    result = popper("--check-config", "-f", str(EXAMPLE), *args)
    assert (result.returncode, result.stdout, result.stderr) == (
        1, "", f"popper: pop-auth-file {store} (set at argv --pop-auth-file): does not exist, "
               f"and user-database is pop-auth; create it with popauth -init\n")
    store.write_text("")
    store.chmod(0o644)
    result = popper("--check-config", "-f", str(EXAMPLE), *args)
    assert (result.returncode, result.stderr) == (
        1, f"popper: pop-auth-file {store} (set at argv --pop-auth-file): must be a regular "
           f"file, mode 0600, owned by {pwd.getpwuid(os.geteuid()).pw_name} (pop-auth-owner)\n")
    store.unlink()
    PopAuthStore.create(str(store))
    result = popper("--check-config", "-f", str(EXAMPLE), *args)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", ["auth-file", "nonauth-file"])
def test_check_config_refuses_a_user_list_it_cannot_read(site_args, tmp_path, name):
    """Every login reads auth-file and nonauth-file; one that cannot be read refuses
    everyone, so the check refuses it (docs/operations.md, "Start-up checks")."""
    gone = tmp_path / "gone"
    result = popper("--check-config", "-f", str(EXAMPLE), *site_args, f"--{name}={gone}")
    assert (result.returncode, result.stderr) == (
        1, f"popper: {name} {gone} (set at argv --{name}): No such file or directory; while "
           f"it cannot be read every login is refused\n")
    gone.write_text("someone\n")
    result = popper("--check-config", "-f", str(EXAMPLE), *site_args, f"--{name}={gone}")
    assert result.returncode == 0, result.stderr


def test_a_tls_passphrase_line_in_error_does_not_show_the_passphrase(tmp_path):
    """A configuration error quotes what it could not read, but never a passphrase (its
    line goes to syslog in inetd mode): an unquoted one with spaces, or one without '='."""
    config = tmp_path / "tls-passphrase.config"
    for line, error in (("set tls-passphrase = open sesame 42",
                         "unexpected '(not shown)' after the value of 'tls-passphrase' (quote a "
                         "value that contains spaces)"),
                        ("set tls-passphrase sesame-42",
                         "expected '=' after 'tls-passphrase', got '(not shown)'")):
        config.write_text(line + "\n")
        result = popper("--check-config", "-f", str(config))
        assert (result.returncode, result.stderr) == (2, f"popper: {config}:1: {error}\n")
    config.write_text("set tls-support = never ever\n")      # another option's text is shown
    assert "unexpected 'ever' after" in popper("--check-config", "-f", str(config)).stderr


@pytest.mark.parametrize("name", ["auth-file", "nonauth-file"])
def test_check_config_refuses_a_fifo_as_a_user_list_at_once(site_args, tmp_path, name):
    """A FIFO as auth-file or nonauth-file is no list: the check (start-up's and a reload's)
    refuses it at once instead of waiting in open(2) for a writer."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    try:
        result = subprocess.run([popper_path(), "--check-config", "-f", str(EXAMPLE),
                                 *site_args, f"--{name}={fifo}"],
                                capture_output=True, text=True, timeout=20, cwd=REPO)
    except subprocess.TimeoutExpired:
        pytest.fail(f"--check-config waited on the {name} FIFO")
    assert (result.returncode, result.stderr) == (
        1, f"popper: {name} {fifo} (set at argv --{name}): not a regular file; while it "
           f"cannot be read every login is refused\n")


def test_check_config_warns_of_a_tls_passphrase_others_can_read(site_args, world_tmp):
    """tls-passphrase's help: a file of its own, root-only, named with -f or config-file
    (the packaged configuration file is world-readable, a command line is seen by ps). The
    file is in a directory every user can search (pytest's tmp_path is 0700, which would
    keep it safe: files.who_else_can_read)."""
    secret = Path(world_tmp) / "tls-passphrase.config"
    secret.write_text("set tls-passphrase = secret\n")
    secret.chmod(0o644)
    result = popper("--check-config", "-f", str(EXAMPLE), "-f", str(secret), *site_args)
    assert (result.returncode, result.stderr) == (
        0, f"popper: warning: tls-passphrase is set in {secret}: mode 0644, which every local "
           f"user can read; set it in a root-only file (mode 0600) named with -f or "
           f"config-file\n")
    secret.chmod(0o600)
    if os.geteuid() == 0:                       # 0600, but another account's: it reads it
        os.chown(secret, 65534, -1)
        result = popper("--check-config", "-f", str(EXAMPLE), "-f", str(secret), *site_args)
        assert (result.returncode, result.stderr) == (
            0, f"popper: warning: tls-passphrase is set in {secret}: owned by uid 65534, who "
               f"can read it; set it in a root-only file (mode 0600) named with -f or "
               f"config-file\n")
        os.chown(secret, 0, -1)
    result = popper("--check-config", "-f", str(EXAMPLE), "-f", str(secret), *site_args)
    assert (result.returncode, result.stderr) == (0, "")
    # the table goes into mails and bug reports: the passphrase is not in it
    [row] = [line for line in result.stdout.splitlines() if line.startswith("tls-passphrase ")]
    assert row.split()[1:] == ["(set,", "not", "shown)", f"{secret}:1"]
    assert "secret" not in result.stdout.replace(str(secret), "")
    result = popper("--check-config", "-f", str(EXAMPLE), *site_args, "--tls-passphrase=x")
    assert (result.returncode, result.stderr) == (
        0, "popper: warning: tls-passphrase is set on the command line, which every local "
           "user can read (ps); set it in a root-only file (mode 0600) named with -f or "
           "config-file\n")
