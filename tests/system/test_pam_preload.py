"""libpam is bound once, in the master, before it forks: a session's login runs no
`/sbin/ldconfig -p` (python-pam's ctypes.util.find_library, twice per process otherwise;
with Debian's python-pam 2.0.x twice per PAM transaction), and the PAM service's and the
name service's modules stay loaded in the master, so a login loads none of them (also after
a HUP). The real master with a real user and PAM service, traced by strace (root only);
with the installed python-pam and with Debian's python3-pampy where it is installed."""

from __future__ import annotations

import os
import poplib
import shutil
import signal
import subprocess
import sys

import pytest

from tests.helpers.sysusers import make_spool
from tests.helpers.messages import mbox
from tests.server_harness import Site, proc_status, wait_until
from tests.helpers.repo import REPO

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

# What ctypes.util.find_library runs on Linux to locate a library.
FIND_LIBRARY_HELPERS = ("ldconfig", "gcc", "cc\"", "/ld\"", "objdump")


@pytest.fixture
def site(world_tmp, pam_service):
    s = Site(world_tmp, pam_service)
    yield s
    s.close()


def _traced(pid: int, trace_path: str, calls: str) -> subprocess.Popen:
    """strace following every process the master forks from now on, `calls` only."""
    tracer = subprocess.Popen(["strace", "-f", "-q", "-e", f"trace={calls}", "-o", trace_path,
                               "-p", str(pid)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: proc_status(pid)["TracerPid"] != "0", what="strace to attach")
    except BaseException:
        _stop(tracer)
        raise
    return tracer


def _stop(tracer: subprocess.Popen) -> None:
    tracer.send_signal(signal.SIGINT)              # strace detaches and exits
    try:
        tracer.wait(10)
    except subprocess.TimeoutExpired:
        tracer.kill()
        tracer.wait(5)


def _traced_login(server, user, trace_path: str, calls: str,
                  wrong_password_first=(False,)) -> str:
    """strace's record of `calls` in every process of the logins: a connection for each item
    of `wrong_password_first` (USER, PASS, STAT, QUIT; after a refused USER/PASS if True)."""
    tracer = _traced(server.pid, trace_path, calls)
    try:
        for wrong_first in wrong_password_first:
            client = poplib.POP3(server.host, server.port, timeout=20)
            try:
                if wrong_first:
                    client.user(user.name)
                    with pytest.raises(poplib.error_proto, match="-ERR"):
                        client.pass_("wrong " + user.password)
                client.user(user.name)
                client.pass_(user.password)
                assert client.stat()[0] == 1
                client.quit()
            finally:
                client.close()
        wait_until(lambda: not server.children(), what="the sessions to end")
    finally:
        _stop(tracer)
    with open(trace_path) as f:
        trace = f.read()
    # The trace really followed the session: strace records its exit.
    assert "+++ exited with" in trace, trace
    return trace


DEBIAN_PYTHON_PAM = "/usr/lib/python3/dist-packages/pam"
"""Debian's python3-pampy (python-pam 2.0.x): every PamAuthenticator() looks libpam and
libpam_misc up again with find_library (2.1 binds them once per class)."""

WHICH_PYTHON_PAM = "import pam.__internals as m, sys; sys.stdout.write(m.__file__)"


def _python_pam_env(which: str, directory: str) -> dict[str, str]:
    """The environment of a popper that imports `which` python-pam: the installed one, or
    Debian's (with the `six` it needs) from a directory put first on its PYTHONPATH."""
    if which == "installed":
        return {}
    if not os.path.isfile(os.path.join(DEBIAN_PYTHON_PAM, "__init__.py")):
        pytest.skip("needs Debian's python3-pampy (python-pam 2.0.x)")
    shim = os.path.join(directory, "debian-python-pam")
    os.mkdir(shim)
    os.symlink(DEBIAN_PYTHON_PAM, os.path.join(shim, "pam"))
    os.symlink(os.path.join(os.path.dirname(DEBIAN_PYTHON_PAM), "six.py"),
               os.path.join(shim, "six.py"))
    path = os.pathsep.join(p for p in (shim, str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {"PYTHONPATH": path}
    loaded = subprocess.run([sys.executable, "-c", WHICH_PYTHON_PAM], capture_output=True,
                            text=True, timeout=60, env=dict(os.environ, **env), check=True)
    assert loaded.stdout.startswith(os.path.join(shim, "pam")), loaded.stdout
    return env


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
@pytest.mark.parametrize("which_python_pam", ["installed", "debian"])
def test_login_in_a_forked_session_execs_no_ldconfig(which_python_pam, site, system_users,
                                                       tmp_path):
    """Two logins, the first after a wrong password on the same connection (two PAM
    transactions in one authentication process): no find_library anywhere."""
    user = system_users.create()
    make_spool(site.spool_dir, user, mbox(("hello", "Body.\n")))
    server = site.server(env=_python_pam_env(which_python_pam, site.root))
    trace = _traced_login(server, user, str(tmp_path / "execve.trace"), "execve",
                          wrong_password_first=(True, False))
    execs = [line for line in trace.splitlines() if "execve(" in line]
    helpers = [line for line in execs if any(name in line for name in FIND_LIBRARY_HELPERS)]
    assert helpers == [], "a session ran find_library's helpers:\n" + "\n".join(execs)


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
@pytest.mark.parametrize("which_python_pam", ["installed", "debian"])
def test_a_login_loads_no_library_the_master_holds(which_python_pam, site, system_users,
                                                   tmp_path):
    """pam_start in a session finds the service's modules already mapped (the master took a
    reference on them: auth/pam.py, pin_modules) and pam_end does not unload them; a HUP
    pins them again (for an upgraded module file or a changed pam-service). The name
    service's modules (libnss_systemd where nsswitch.conf names it) were loaded by the
    master's own lookups (privsep.warm_name_service). python-pam 2.0.x's CDLL of libpam
    in each session's PamAuthenticator finds the master's copy."""
    user = system_users.create()
    make_spool(site.spool_dir, user, mbox(("hello", "Body.\n")))
    server = site.server(env=_python_pam_env(which_python_pam, site.root))
    for round_ in ("started", "after HUP"):
        trace = _traced_login(server, user, str(tmp_path / f"open-{round_}.trace"),
                              "open,openat")
        # the trace saw the login: PAM's password step read the shadow file
        assert '"/etc/shadow"' in trace, trace
        opened = [line.split('"')[1] for line in trace.splitlines() if '"' in line]
        libraries = [path for path in opened if ".so" in path]     # ld.so.cache: a dlopen
        assert libraries == [], f"{round_}: a login loaded libraries:\n" + "\n".join(libraries)
        if round_ == "started":
            os.kill(server.pid, signal.SIGHUP)
            site.syslog.wait_for("configuration reloaded")


THREE_TRANSACTIONS = """
import sys
from qpopper.auth import pam as pam_auth

for _ in range(3):
    result = pam_auth.authenticate(sys.argv[1], "qptnosuchuser", "not the password")
    assert result.code == pam_auth.python_pam.PAM_USER_UNKNOWN, result
"""


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
@pytest.mark.parametrize("which_python_pam", ["installed", "debian"])
def test_a_process_without_preload_looks_libpam_up_once(which_python_pam, pam_service,
                                                         world_tmp, tmp_path):
    """poppassd, or a test, runs PAM transactions without the master's preload: only the
    first looks libpam and libpam_misc up (two `ldconfig -p`), whichever python-pam."""
    env = dict(os.environ, **_python_pam_env(which_python_pam, world_tmp))
    trace_path = str(tmp_path / "execve.trace")
    result = subprocess.run(["strace", "-f", "-q", "-e", "trace=execve", "-o", trace_path,
                             sys.executable, "-c", THREE_TRANSACTIONS, pam_service],
                            capture_output=True, text=True, timeout=60, cwd=str(REPO), env=env)
    assert result.returncode == 0, result.stderr
    with open(trace_path) as f:
        execs = [line for line in f if "execve(" in line]
    lookups = [line for line in execs if any(name in line for name in FIND_LIBRARY_HELPERS)]
    assert len(lookups) == 2, "".join(execs)


FORKED_CHILD_SEES_BINDINGS = """
import os, sys
import pam as python_pam
from qpopper.auth import pam as pam_auth

before = python_pam.PamAuthenticator._libs_ready
pam_auth.preload()
pid = os.fork()
if pid == 0:
    os._exit(0 if python_pam.PamAuthenticator._libs_ready else 1)
_, status = os.waitpid(pid, 0)
print(before, os.waitstatus_to_exitcode(status) == 0)
"""


def test_preload_binds_libpam_for_forked_children():
    """The master's call leaves the class-level bindings ready; a fork inherits them. In a
    fresh interpreter, so that no earlier test's PamAuthenticator made them ready already."""
    result = subprocess.run([sys.executable, "-c", FORKED_CHILD_SEES_BINDINGS],
                            capture_output=True, text=True, timeout=60,
                            cwd=str(REPO))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]


PIN_AND_RELEASE = """
import sys
from qpopper.auth import pam as pam_auth

def mapped():
    return {line.split(maxsplit=5)[5].strip() for line in open("/proc/self/maps")
            if len(line.split()) == 6}

pinned = pam_auth.pin_modules(sys.argv[1])
held = any(path.endswith("/pam_unix.so") for path in mapped())
pam_auth.release_modules()
print(sorted(path.rsplit("/", 1)[-1] for path in pinned if "/security/" in path),
      held, any(path.endswith("/pam_unix.so") for path in mapped()))
"""


def test_pinned_modules_stay_mapped_until_released(pam_service):
    """pin_modules keeps the service's modules mapped after its pam_end; release_modules
    (a HUP, before pinning again) unmaps them, so a replaced module file is loaded afresh.
    In a fresh interpreter, where no earlier pam_start left anything loaded."""
    result = subprocess.run([sys.executable, "-c", PIN_AND_RELEASE, pam_service],
                            capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert result.returncode == 0, result.stderr
    modules, held, still_held = result.stdout.rsplit(" ", 2)
    assert "pam_unix.so" in modules
    assert (held, still_held.strip()) == ("True", "False")
