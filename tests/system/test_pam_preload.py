"""libpam is bound once, in the master, before it forks: a session's login runs no
`/sbin/ldconfig -p` (python-pam's ctypes.util.find_library, twice per process otherwise),
and the PAM service's and the name service's modules stay loaded in the master, so a login
loads none of them (also after a HUP). The real master with a real user and PAM service,
traced by strace (root only)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest

from tests.helpers.sysusers import make_spool
from tests.helpers.messages import mbox
from tests.server_harness import Site, login, proc_status, wait_until
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


def _traced_login(server, user, trace_path: str, calls: str) -> str:
    """strace's record of `calls` in every process of one login (USER, PASS, STAT, QUIT)."""
    tracer = _traced(server.pid, trace_path, calls)
    try:
        client = login(server, user)
        try:
            assert client.stat()[0] == 1
        finally:
            client.quit()
        wait_until(lambda: not server.children(), what="the session to end")
    finally:
        _stop(tracer)
    with open(trace_path) as f:
        trace = f.read()
    # The trace really followed the session: strace records its exit.
    assert "+++ exited with" in trace, trace
    return trace


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_login_in_a_forked_session_execs_no_ldconfig(site, system_users, tmp_path):
    user = system_users.create()
    make_spool(site.spool_dir, user, mbox(("hello", "Body.\n")))
    server = site.server()
    trace = _traced_login(server, user, str(tmp_path / "execve.trace"), "execve")
    execs = [line for line in trace.splitlines() if "execve(" in line]
    helpers = [line for line in execs if any(name in line for name in FIND_LIBRARY_HELPERS)]
    assert helpers == [], "a session ran find_library's helpers:\n" + "\n".join(execs)


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_a_login_loads_no_library_the_master_holds(site, system_users, tmp_path):
    """pam_start in a session finds the service's modules already mapped (the master took a
    reference on them: auth/pam.py, pin_modules) and pam_end does not unload them; a HUP
    pins them again (for an upgraded module file or a changed pam-service). The name
    service's modules (libnss_systemd where nsswitch.conf names it) were loaded by the
    master's own lookups (privsep.warm_name_service)."""
    user = system_users.create()
    make_spool(site.spool_dir, user, mbox(("hello", "Body.\n")))
    server = site.server()
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
