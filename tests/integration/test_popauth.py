"""popauth, run as a subprocess exactly as an administrator runs it: as root (the venv's console
script), as the pop-auth-owner account and as an ordinary user (Debian's /usr/bin/python3
-m qpopper.tools.popauth: the venv's interpreter lives under /root), every command and every
misuse; secrets typed on a real terminal (a pty) twice without echo; a C Qpopper dbm file
made with Debian's Python and python3-gdbm imported."""

from __future__ import annotations

import os
import pty
import select
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from qpopper.auth import scram
from qpopper.auth.store import PopAuthStore
from tests.helpers.repo import REPO
from tests.helpers.sysusers import is_root
from tests.server_harness import SyslogCapture

pytestmark = pytest.mark.timeout(120)

POPAUTH = str(Path(sys.executable).with_name("popauth"))
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture
def env(system_users, world_tmp):
    owner = system_users.create("own")
    other = system_users.create("oth")
    store_path = os.path.join(world_tmp, "popauth", "pop.auth")

    class Env:
        pass
    e = Env()
    e.owner, e.other, e.path = owner, other, store_path
    e.args = ["--file", store_path, "--owner", owner.name]
    return e


def run_root(env, *args, extra_env=None):
    return subprocess.run([POPAUTH, *env.args, *args], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, **(extra_env or {})))


def run_as(user: str, env, *args):
    """popauth as another account, with Debian's Python (the package's interpreter)."""
    return subprocess.run(["runuser", "-u", user, "--", SYSTEM_PYTHON, "-m",
                           "qpopper.tools.popauth", *env.args, *args],
                          capture_output=True, text=True, timeout=60, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))


def store(env) -> PopAuthStore:
    return PopAuthStore(env.path, env.owner.uid)


def refused(result, status, text):
    assert result.returncode == status, (result.stdout, result.stderr)
    assert result.stderr.count("\n") == 1, result.stderr          # one line
    assert result.stderr.startswith("popauth: ") and text in result.stderr, result.stderr


# --- commands ----------------------------------------------------------------------------------
def test_init_creates_the_store_and_its_directory_for_the_owner(env):
    result = run_root(env, "-init")
    assert result.returncode == 0, result.stderr
    st = os.stat(env.path)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (env.owner.uid, 0o600)
    directory = os.stat(os.path.dirname(env.path))
    assert (directory.st_uid, stat.S_IMODE(directory.st_mode)) == (env.owner.uid, 0o700)
    assert store(env).list_users() == []
    refused(run_root(env, "-init"), 1, "already exists")


def test_init_and_later_commands_make_the_scram_decoy_key(env):
    """<store>.decoy-key keys SCRAM's made-up exchanges (docs/internals.md, "Store
    mechanisms"): -init makes it, 0600 and the owner's; a store without it gets it from the
    next command."""
    key_path = env.path + ".decoy-key"
    assert run_root(env, "-init").returncode == 0
    st = os.lstat(key_path)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == env.owner.uid
    assert st.st_size == 32
    os.unlink(key_path)
    assert run_root(env, "-list").returncode == 0
    assert os.lstat(key_path).st_uid == env.owner.uid


def test_init_needs_root(env):
    refused(run_as(env.owner.name, env, "-init"), 1, "-init must be run by root")
    assert not os.path.exists(env.path)


def test_user_stores_apop_secret_and_scram_verifiers(env):
    run_root(env, "-init")
    result = run_root(env, "-user", "alice", "s3cret words")
    assert result.returncode == 0, result.stderr
    s = store(env)
    assert s.get_secret("alice") == "s3cret words"
    for mechanism in ("SCRAM-SHA-1", "SCRAM-SHA-256"):
        verifier = s.get_scram("alice", mechanism)
        assert verifier.iterations >= 4096 and len(verifier.salt) == 16
        fresh = scram.make_verifier(mechanism, "s3cret words", salt=verifier.salt,
                                    iterations=verifier.iterations)
        assert fresh == verifier


def test_the_owner_account_manages_the_store(env):
    """The reason -init gives the directory to the owner: SQLite's journal goes beside the
    store, so the owner could not change a store in a root-owned directory."""
    run_root(env, "-init")
    for args in (["-user", "bob", "b0b"], ["-user", "carol", "c4rol"], ["-delete", "carol"]):
        result = run_as(env.owner.name, env, *args)
        assert result.returncode == 0, result.stderr
    listed = run_as(env.owner.name, env, "-list")
    assert listed.stdout.split() == ["bob"]
    assert store(env).get_secret("bob") == "b0b"


def test_list_and_delete(env):
    run_root(env, "-init")
    run_root(env, "-user", "zed", "z")
    run_root(env, "-user", "amy", "a")
    assert run_root(env, "-list").stdout.split() == ["amy", "zed"]
    assert run_root(env, "-delete", "zed").returncode == 0
    assert run_root(env, "-list").stdout.split() == ["amy"]
    refused(run_root(env, "-delete", "zed"), 1, "zed is not in")


# --- misuse ------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, status, text", [
    (["-bogus"], 2, "unknown command '-bogus'"),
    (["-user"], 2, "-user takes 1 to 2 arguments"),
    (["-user", "a", "b", "c"], 2, "-user takes 1 to 2 arguments"),
    (["-delete"], 2, "-delete takes 1 argument"),
    (["-list", "x"], 2, "-list takes no arguments"),
    (["-init", "x"], 2, "-init takes no arguments"),
    (["--import-dbm"], 2, "--import-dbm takes 1 argument"),
])
def test_usage_errors(env, args, status, text):
    refused(run_root(env, *args), status, text)


def test_option_without_value(env):
    result = subprocess.run([POPAUTH, "--file"], capture_output=True, text=True, timeout=60)
    refused(result, 2, "--file needs a value")


def test_missing_owner_account(env):
    result = subprocess.run([POPAUTH, "--file", env.path, "--owner", "qpt-no-such-account",
                             "-list"], capture_output=True, text=True, timeout=60)
    refused(result, 1, "pop-auth-owner account 'qpt-no-such-account' does not exist")


def test_store_missing(env):
    refused(run_root(env, "-user", "a", "b"), 1, "does not exist; create it with popauth -init")


def test_store_with_wrong_mode(env):
    run_root(env, "-init")
    os.chmod(env.path, 0o644)
    refused(run_root(env, "-list"), 1, "mode 0644")


def test_invalid_name_and_empty_secret(env):
    run_root(env, "-init")
    refused(run_root(env, "-user", "a/b", "x"), 1, "invalid user name")
    refused(run_root(env, "-user", "amy", ""), 1, "must be non-empty")
    assert store(env).list_users() == []


def test_other_users_may_not_manage_the_store(env):
    run_root(env, "-init")
    for args in (["-user", "x", "y"], ["-delete", "x"], ["-list"]):
        refused(run_as(env.other.name, env, *args), 1, f"must be run by root or {env.owner.name}")


def test_plain_popauth_needs_sudo(env):
    run_root(env, "-init")
    refused(run_as(env.other.name, env), 1, "needs sudo")
    refused(run_as(env.owner.name, env), 2, "use -user NAME")
    refused(run_root(env, extra_env={"SUDO_USER": ""}), 2, "use -user NAME")


# --- secrets typed on a terminal -----------------------------------------------------------------
def read_pty(fd: int) -> bytes:
    """What the pty has; b"" once the child closed it (EIO)."""
    try:
        return os.read(fd, 1024)
    except OSError:
        return b""


def on_terminal(argv, answers, extra_env=None, timeout=60.0):
    """Run argv on a new pty; answer each prompt ending in ': ' with the next answer.
    Returns (exit status, everything the terminal showed)."""
    pid, fd = pty.fork()
    if pid == 0:                                             # the child: exec at once
        os.execve(argv[0], argv, dict(os.environ, **(extra_env or {})))
    shown, pending, answered = b"", list(answers), 0
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                os.kill(pid, signal.SIGKILL)
                raise TimeoutError(shown)
            chunk = read_pty(fd)
            if not chunk:
                break
            shown += chunk
            # Answer each prompt once, after it is shown: getpass flushes typed-ahead input.
            if pending and shown.endswith(b": ") and shown.count(b": ") > answered:
                answered += 1
                os.write(fd, pending.pop(0).encode() + b"\n")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace")


def test_user_without_secret_prompts_twice_without_echo(env):
    run_root(env, "-init")
    code, shown = on_terminal([POPAUTH, *env.args, "-user", "dora"], ["typed-secret"] * 2)
    assert code == 0, shown
    assert "New secret for dora:" in shown and "Retype the secret for dora:" in shown
    assert "typed-secret" not in shown                        # never echoed
    assert store(env).get_secret("dora") == "typed-secret"


def test_prompted_secrets_must_match(env):
    run_root(env, "-init")
    code, shown = on_terminal([POPAUTH, *env.args, "-user", "dora"], ["one", "two"])
    assert code == 1 and "the two secrets differ; nothing was changed" in shown
    assert store(env).list_users() == []


def test_plain_popauth_through_sudo_sets_the_callers_own_secret(env):
    """What `sudo popauth` does: root, SUDO_USER = the caller; only their own entry."""
    run_root(env, "-init")
    code, shown = on_terminal([POPAUTH, *env.args], ["mine"] * 2,
                              extra_env={"SUDO_USER": env.other.name})
    assert code == 0, shown
    assert store(env).list_users() == [env.other.name]
    assert store(env).get_secret(env.other.name) == "mine"


def pop_only_config(env) -> str:
    """A configuration with user-database pop-auth: the store's names are POP-only users."""
    config = os.path.join(os.path.dirname(env.path), "qpopper.config")
    with open(config, "w") as f:
        f.write(f"set user-database = pop-auth\nset pop-auth-file = {env.path}\n"
                f"set pop-auth-owner = {env.owner.name}\n")
    return config


def sudo_popauth(env, config, answers):
    return on_terminal([POPAUTH, "-f", config], answers, extra_env={"SUDO_USER": env.other.name})


def test_with_pop_only_users_sudo_popauth_needs_the_entrys_current_secret(env):
    """user-database pop-auth: an account named like a POP-only user is not that user; it
    changes the entry only by typing its current secret (popauth(8), "no command")."""
    run_root(env, "-init")
    store(env).set_secret(env.other.name, "the-pop-users-own")
    config = pop_only_config(env)
    code, shown = sudo_popauth(env, config, ["guessed", "taken-over", "taken-over"])
    assert code == 1, shown
    assert f"that is not the current secret of {env.other.name}; nothing was changed" in shown
    assert "New secret" not in shown and "guessed" not in shown
    assert store(env).get_secret(env.other.name) == "the-pop-users-own"
    code, shown = sudo_popauth(env, config, ["the-pop-users-own", "renewed", "renewed"])
    assert code == 0, shown
    assert f"Current secret for {env.other.name}:" in shown
    assert store(env).get_secret(env.other.name) == "renewed"


def test_a_wrong_current_secret_is_logged_and_its_pause_outlasts_a_ctrl_c(env, world_tmp):
    """A wrong current secret goes to syslog (authpriv) with SUDO_USER, and the pause of the
    check cannot be cut short by the signals sudo relays (^C, TERM, HUP), nor stopped (^Z)
    while it holds the one turn every check waits for: the process is still there after them
    and ends with its refusal, neither killed nor stopped. Before, the pause came
    after the verdict, a right guess answered at once, so a ^C after a few ms skipped it."""
    run_root(env, "-init")
    store(env).set_secret(env.other.name, "the-pop-users-own")
    config = pop_only_config(env)
    syslog = SyslogCapture(world_tmp)
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(POPAUTH, [POPAUTH, "-f", config], dict(
            os.environ, SUDO_USER=env.other.name, QPOPPER_SYSLOG_SOCKET=syslog.path))
    shown = b""
    try:
        while b"Current secret" not in shown:
            assert select.select([fd], [], [], 30)[0], shown
            shown += os.read(fd, 1024)
        os.write(fd, b"guessed\n")
        syslog.wait_for(rf"wrong current secret for {env.other.name} typed by SUDO_USER "
                        rf"{env.other.name}; nothing was changed", timeout=30)
        os.write(fd, b"\x03")                    # ^C on the terminal, as sudo relays it
        # ^Z's SIGTSTP would be dropped by the kernel here (the pty's process group is
        # orphaned), so what it would do is read from the process: ignored, as the rest
        with open(f"/proc/{pid}/status") as status_file:
            status_text = status_file.read()
        ignored = int(re.search(r"^SigIgn:\s*([0-9a-f]+)$", status_text, re.M).group(1), 16)
        assert all(ignored >> (number - 1) & 1 for number in (
            signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGTSTP,
            signal.SIGTTIN, signal.SIGTTOU)), hex(ignored)
        for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            os.kill(pid, number)
        assert os.waitpid(pid, os.WNOHANG) == (0, 0)     # the 2 s pause goes on
        while True:
            assert select.select([fd], [], [], 30)[0], shown
            chunk = read_pty(fd)
            if not chunk:
                break
            shown += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
        syslog.close()
    assert os.waitstatus_to_exitcode(status) == 1, shown
    assert b"that is not the current secret of" in shown
    assert store(env).get_secret(env.other.name) == "the-pop-users-own"


def test_with_pop_only_users_sudo_popauth_adds_no_entry(env):
    run_root(env, "-init")
    code, shown = sudo_popauth(env, pop_only_config(env), ["mine", "mine"])
    assert code == 1, shown
    assert (f"popauth: {env.other.name} has no secret in the store, and with user-database "
            f"pop-auth only the administrator adds one") in shown
    assert store(env).list_users() == []


# --- C Qpopper's dbm file --------------------------------------------------------------------------
MAKE_DBM = r"""
import dbm.gnu, sys
db = dbm.gnu.open(sys.argv[1], "c", 0o600)
for name, secret in [("alice", "wonder land"), ("bob", "b0b!"), ("carol", "c")]:
    db[name.encode() + b"\0"] = bytes(b ^ 0xFF for b in secret.encode())
db.close()
"""


def system_python_has_gdbm() -> bool:
    if not os.path.exists(SYSTEM_PYTHON):
        return False
    return subprocess.run([SYSTEM_PYTHON, "-c", "import dbm.gnu"], capture_output=True,
                          timeout=30).returncode == 0


def c_qpopper_dbm_file(tmp_path) -> str:
    """A pop.auth gdbm file written by Debian's Python and python3-gdbm, as C Qpopper's."""
    if not system_python_has_gdbm():
        reason = ("Debian's /usr/bin/python3 with python3-gdbm is needed to write and read a "
                  "gdbm file (Makefile DEB_TEST_PACKAGES installs python3-gdbm)")
        if is_root():
            pytest.fail(f"{reason}; as root make test installs it")
        pytest.skip(reason)
    dbm_file = str(tmp_path / "pop.auth.gdbm")
    subprocess.run([SYSTEM_PYTHON, "-c", MAKE_DBM, dbm_file], check=True, timeout=30)
    return dbm_file


def test_import_c_qpopper_dbm(env, tmp_path):
    dbm_file = c_qpopper_dbm_file(tmp_path)
    run_root(env, "-init")
    result = subprocess.run([SYSTEM_PYTHON, "-m", "qpopper.tools.popauth", *env.args,
                             "--import-dbm", dbm_file], capture_output=True, text=True,
                            timeout=60, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stderr
    assert "imported 3 users" in result.stdout
    s = store(env)
    assert s.list_users() == ["alice", "bob", "carol"]
    assert s.get_secret("alice") == "wonder land" and s.get_secret("bob") == "b0b!"
    assert s.get_scram("carol", "SCRAM-SHA-256") is not None


def test_import_misuse(env, tmp_path):
    run_root(env, "-init")
    refused(run_root(env, "--import-dbm", str(tmp_path / "absent")), 1, "no such file")
    junk = tmp_path / "junk"
    junk.write_bytes(b"this is not a dbm file at all\n" * 10)
    result = subprocess.run([SYSTEM_PYTHON, "-m", "qpopper.tools.popauth", *env.args,
                             "--import-dbm", str(junk)], capture_output=True, text=True,
                            timeout=60, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    refused(result, 1, "not a dbm file this Python can read")
    assert store(env).list_users() == []


WITHOUT_DBM_MODULES = """
import runpy, sys
for name in ("dbm.gnu", "dbm.ndbm", "_gdbm", "_dbm"):
    sys.modules[name] = None           # what a Python built without them has: ImportError
sys.argv[0] = "popauth"
runpy.run_module("qpopper.tools.popauth", run_name="__main__")
"""


def test_import_without_a_dbm_module_says_what_to_install(env, tmp_path):
    """A Python without dbm.gnu and dbm.ndbm (the venv's pyenv build may lack both) cannot
    read C Qpopper's gdbm file: popauth says what to install, in one line, and imports
    nothing. The same file imports with Debian's Python (test_import_c_qpopper_dbm), so the
    refusal is about the missing modules, whichever Python runs the tests."""
    dbm_file = c_qpopper_dbm_file(tmp_path)
    run_root(env, "-init")
    result = subprocess.run([sys.executable, "-c", WITHOUT_DBM_MODULES, *env.args,
                             "--import-dbm", dbm_file], capture_output=True, text=True,
                            timeout=60, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    refused(result, 1, "install python3-gdbm")
    assert store(env).list_users() == []
