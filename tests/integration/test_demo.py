"""`popper --demo` (what `make run` starts): the real master and session code serving a local
data folder; curl, poplib and the Makefile target, as a newcomer would use them."""

from __future__ import annotations

import os
import pathlib
import poplib
import re
import shutil
import signal
import socket
import subprocess

import pytest

from tests.helpers.repo import REPO
from tests.server_harness import POPPER, free_port, wait_for_greeting

pytestmark = pytest.mark.timeout(90)


class Demo:
    def __init__(self, cwd, port=None, user=None, command=(POPPER,), env=None):
        # an ordinary user: its own uid, gid and no groups (root's gid 0 would be refused)
        ids = {} if user is None else {"user": user.uid, "group": user.gid, "extra_groups": []}
        self.port = port or free_port()
        self.cwd = cwd
        self.proc = subprocess.Popen(
            [*command, "--demo", f"127.0.0.1:{self.port}"], cwd=cwd, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, **ids,
            start_new_session=True)
        wait_for_greeting("127.0.0.1", self.port, self.proc)

    def stop(self) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)           # Ctrl-C
        try:
            out, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            out, err = self.proc.communicate()
        return self.proc.returncode, out.decode(), err.decode()


def pop(port, password="demo"):
    client = poplib.POP3("127.0.0.1", port, timeout=20)
    try:
        client.user("demo")
        client.pass_(password)
    except BaseException:
        client.close()
        raise
    return client


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_prints_the_first_message(world_tmp):
    tmp_path = pathlib.Path(world_tmp)
    demo = Demo(tmp_path)
    try:
        result = subprocess.run(["curl", "-sS", f"pop3://demo:demo@127.0.0.1:{demo.port}/1"],
                                capture_output=True, timeout=30)
        listing = subprocess.run(["curl", "-sS", f"pop3://demo:demo@127.0.0.1:{demo.port}/"],
                                 capture_output=True, timeout=30)
    finally:
        code, out, err = demo.stop()
    assert result.returncode == 0, result.stderr
    assert b"Subject: Welcome to qpopper-py" in result.stdout
    assert b"This message comes from a real POP3 server" in result.stdout
    assert re.fullmatch(rb"(\d+ \d+\r\n){3}", listing.stdout), listing.stdout
    assert code == 0, err
    assert f"curl pop3://demo:demo@127.0.0.1:{demo.port}/1" in out
    assert "Stop with Ctrl-C" in out
    assert "Stats: demo 0 0 3 " in err                      # the real session's records
    assert (tmp_path / "demo-data" / "spool" / "demo").stat().st_size > 0


def test_the_maildir_user_is_served_from_its_maildir_by_the_same_demo(world_tmp):
    tmp_path = pathlib.Path(world_tmp)
    demo = Demo(tmp_path)
    maildir = tmp_path / "demo-data" / "maildirs" / "maildemo"
    try:
        client = poplib.POP3("127.0.0.1", demo.port, timeout=20)
        try:
            client.user("maildemo")
            client.pass_("maildemo")
            count, _ = client.stat()
            uids = [line.split()[1].decode() for line in client.uidl()[1]]
            _, lines, _ = client.retr(1)
            client.quit()
        finally:
            client.close()
    finally:
        code, out, err = demo.stop()
    assert code == 0, err
    assert count == 3 and b"Subject: Welcome to qpopper-py" in b"\n".join(lines)
    assert sorted(uids) == sorted(name.partition(":")[0] for name in os.listdir(maildir / "cur")
                                  + os.listdir(maildir / "new"))       # base names
    assert any(name.endswith(":2,S") for name in os.listdir(maildir / "cur"))   # RETR'd: seen
    assert f"served from a Maildir: {tmp_path / 'demo-data'}/maildirs/maildemo" in out
    assert (tmp_path / "demo-data" / "spool" / "demo").stat().st_size > 0   # mbox: untouched


def test_wrong_password_and_data_kept_across_restarts_reseeded_when_empty(world_tmp):
    tmp_path = pathlib.Path(world_tmp)
    demo = Demo(tmp_path)
    try:
        with pytest.raises(poplib.error_proto, match=r"^b'-ERR \[AUTH\]"):
            pop(demo.port, password="nope")
        client = pop(demo.port)
        assert client.stat()[0] == 3
        client.dele(1)
        client.quit()
    finally:
        assert demo.stop()[0] == 0

    demo = Demo(tmp_path)                              # mail left on the server stays
    try:
        client = pop(demo.port)
        assert client.stat()[0] == 2
        client.dele(1)
        client.dele(2)
        client.quit()
    finally:
        assert demo.stop()[0] == 0

    demo = Demo(tmp_path)                              # all gone: the samples come back
    try:
        client = pop(demo.port)
        assert client.stat()[0] == 3
        client.quit()
    finally:
        assert demo.stop()[0] == 0


def test_demo_refuses_a_non_loopback_address(tmp_path):
    result = subprocess.run([POPPER, "--demo", f"0.0.0.0:{free_port()}"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "not a loopback address" in result.stderr
    assert not (tmp_path / "demo-data").exists()


SYSTEM_PYTHON = "/usr/bin/python3"
RUNTIME_MODULES = "import daemon, setproctitle, pam, OpenSSL, lockfile"


def popper_for(user, world_tmp) -> tuple[list[str], dict | None]:
    """How `user` runs popper: the virtualenv's script when the user can reach its interpreter
    (a pyenv interpreter under /root cannot be), else Debian's python3 with the Debian runtime
    packages (`make test` installs them as root) and a copy of the package the user can read."""
    try:
        if subprocess.run([POPPER, "--version"], user=user.uid, group=user.gid, extra_groups=[],
                          capture_output=True, timeout=30).returncode == 0:
            return [POPPER], None
    except PermissionError:
        pass
    if not os.access(SYSTEM_PYTHON, os.X_OK) or subprocess.run(
            [SYSTEM_PYTHON, "-c", RUNTIME_MODULES], capture_output=True, timeout=30).returncode:
        pytest.skip("neither the virtualenv's interpreter nor Debian's python3 with the runtime "
                    "packages is usable by other users here")
    code = os.path.join(world_tmp, "code")
    shutil.copytree(REPO / "qpopper", os.path.join(code, "qpopper"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    for root, dirs, files in os.walk(code):
        for name in dirs + files:
            os.chmod(os.path.join(root, name), 0o755 if name in dirs else 0o644)
    os.chmod(code, 0o755)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": code, "HOME": world_tmp, "LANG": "C.UTF-8"}
    return [SYSTEM_PYTHON, "-c", "import sys; from qpopper.cli import popper_main; "
            "sys.argv[0] = 'popper'; sys.exit(popper_main())"], env


def test_demo_runs_as_the_invoking_user(world_tmp, system_users):
    user = system_users.create()
    command, env = popper_for(user, world_tmp)
    data = os.path.join(world_tmp, "run")
    os.mkdir(data)
    os.chown(data, user.uid, user.gid)
    demo = Demo(data, user=user, command=command, env=env)
    try:
        client = pop(demo.port)
        assert client.stat()[0] == 3
        client.quit()
        assert os.stat(f"/proc/{demo.proc.pid}").st_uid == user.uid
    finally:
        code, out, _ = demo.stop()
    assert code == 0
    assert f"running as {user.name}" in out
    assert os.stat(os.path.join(data, "demo-data", "pop.auth")).st_uid == user.uid


def test_as_root_the_demo_serves_as_an_unprivileged_account(world_tmp):
    if os.geteuid() != 0:
        pytest.skip("only root drops to an unprivileged account")
    demo = Demo(world_tmp)
    try:
        client = pop(demo.port)
        assert client.stat()[0] == 3
        client.quit()
        assert os.stat(f"/proc/{demo.proc.pid}").st_uid != 0
    finally:
        code, out, _ = demo.stop()
    assert code == 0 and "running as root" not in out
    assert os.stat(os.path.join(world_tmp, "demo-data")).st_uid != 0


def test_make_run_is_exactly_the_demo():
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^run:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    assert recipe.strip() == "$(VENV)/bin/popper --demo"


def test_as_root_a_data_folder_the_account_cannot_reach_moves_to_tmp(tmp_path):
    """A clone under /root (0700): the unprivileged account gets its data under /tmp."""
    if os.geteuid() != 0:
        pytest.skip("only root drops to an unprivileged account")
    existing = {d for d in os.listdir("/tmp") if d.startswith("qpopper-demo-")}
    demo = Demo(tmp_path)                              # pytest's tmp_path: 0700 ancestors
    try:
        client = pop(demo.port)
        assert client.stat()[0] >= 1
        client.quit()
    finally:
        code, out, _ = demo.stop()
    assert code == 0
    where = re.search(r"^Data \(spool and pop.auth store\): (.*)$", out, re.M).group(1)
    try:
        assert where.startswith("/tmp/qpopper-demo-") and not (tmp_path / "demo-data").exists()
        assert os.stat(where).st_uid == os.stat(f"{where}/pop.auth").st_uid != 0
    finally:
        if os.path.basename(where) not in existing:
            shutil.rmtree(where, ignore_errors=True)


@pytest.mark.skipif(shutil.which("make") is None or shutil.which("git") is None
                    or shutil.which("curl") is None, reason="needs make, git and curl")
def test_make_run_in_a_fresh_clone_serves_the_demo_on_8110(tmp_path):
    """`git clone` + `make run`, as the README says; the clone borrows this checkout's
    virtualenv (building one needs the network), everything else is the clone's."""
    try:
        with socket.create_server(("127.0.0.1", 8110)):
            pass
    except OSError:
        pytest.skip("port 8110 is in use (a demo already running?)")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=60,
                   capture_output=True)
    (clone / ".venv").symlink_to(REPO / ".venv")
    # -o: the borrowed virtualenv counts as built although the clone's files are newer
    proc = subprocess.Popen(["make", "-s", "-o", ".venv/.installed", "run"], cwd=clone,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for_greeting("127.0.0.1", 8110, proc)
        result = subprocess.run(["curl", "-sS", "pop3://demo:demo@127.0.0.1:8110/1"],
                                capture_output=True, timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)            # Ctrl-C on make's terminal
        out, err = proc.communicate(timeout=30)
    assert result.returncode == 0, result.stderr
    assert b"Subject: Welcome to qpopper-py" in result.stdout
    assert b"curl pop3://demo:demo@127.0.0.1:8110/1" in out


def test_the_demo_config_reads_no_proxy_header_even_after_a_reload(tmp_path):
    """The demo's master is built without proxied listeners; a reload, which applies
    proxy-protocol, must not make its loopback listener wait for a PROXY header."""
    from qpopper.config import Config
    from qpopper.demo import demo_config
    cfg = Config.defaults().replace(proxy_protocol=("127.0.0.1:8110",),
                                    proxy_trusted_networks=("10.0.0.0/8",))
    assert demo_config(cfg, str(tmp_path)).proxy_protocol == ()
