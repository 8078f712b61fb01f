"""The pre-login process's system-call filter (qpopper/server/prelogin_filter.py;
docs/privsep.md, "The pre-login process's system calls"), installed in a forked child as
the sandbox installs it: what it refuses with EPERM, what it lets through, and that a
system call of another ABI ends the process."""

from __future__ import annotations

import ctypes
import errno
import importlib
import os
import platform
import signal
import socket
import threading
import time

import pytest

from qpopper.server import prelogin_filter, privsep

pytestmark = pytest.mark.skipif(platform.machine() not in prelogin_filter.ARCHES,
                                reason=f"no filter for {platform.machine()}")


def sleeper() -> int:
    pid = os.fork()
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    return pid


def in_filtered_child(body, may_signal=()) -> tuple[int, str]:
    """Fork, install the filter, run body() → text; (wait status, text)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            privsep.prctl(privsep.PR_SET_NO_NEW_PRIVS, 1)
            assert privsep.install_syscall_filter(os.getpid(), may_signal)
            os.write(w, body().encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    return os.waitpid(pid, 0)[1], text


def outcome(call) -> str:
    try:
        call()
    except OSError as exc:
        return os.strerror(exc.errno)
    except RuntimeError as exc:                  # a thread that could not start
        return str(exc)
    return "ok"


def test_no_new_socket_connect_or_addressed_send_but_what_it_holds_works():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)

    def body():
        return repr({
            "socket inet": outcome(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)),
            "socket unix": outcome(lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)),
            "connect": outcome(lambda: a.connect("\0qpt-abstract")),
            "sendto an address": outcome(lambda: a.sendto(b"x", "\0qpt-abstract")),
            "sendmsg": outcome(lambda: a.sendmsg([b"x"])),
            "send": outcome(lambda: a.send(b"held")),
            "sendall": outcome(lambda: a.sendall(b"held")),
            "recv": outcome(lambda: a.recv(10, socket.MSG_DONTWAIT) and None),
        })
    with a, b:
        b.send(b"to the child")
        status, text = in_filtered_child(body)
        assert os.waitstatus_to_exitcode(status) == 0
        refused = os.strerror(1)
        assert eval(text) == {"socket inet": refused, "socket unix": refused,
                              "connect": refused, "sendto an address": refused,
                              "sendmsg": refused, "send": "ok", "sendall": "ok", "recv": "ok"}
        assert b.recv(10) == b"held" and b.recv(10) == b"held"


def test_it_signals_only_itself_and_its_helper():
    helper, other = sleeper(), sleeper()
    try:
        def body():
            return repr({
                "itself": outcome(lambda: os.kill(os.getpid(), 0)),
                "helper": outcome(lambda: os.kill(helper, 0)),
                "another pre-login process": outcome(lambda: os.kill(other, signal.SIGKILL)),
                "its monitor": outcome(lambda: os.kill(os.getppid(), 0)),
                "its group": outcome(lambda: os.kill(0, 0)),
                "another's group": outcome(lambda: os.kill(-other, 0)),
            })
        status, text = in_filtered_child(body, may_signal=(helper,))
        refused = os.strerror(1)
        assert eval(text) == {"itself": "ok", "helper": "ok",
                              "another pre-login process": refused, "its monitor": refused,
                              "its group": refused, "another's group": refused}
        assert os.waitpid(other, os.WNOHANG) == (0, 0)          # still there
    finally:
        for pid in (helper, other):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def test_every_refused_call_gets_eperm_whatever_its_arguments():
    """Arguments that would get another error without the filter (a bad descriptor, pid or
    size): EPERM says the filter answered."""
    libc = ctypes.CDLL(None, use_errno=True)
    numbers = prelogin_filter.ARCHES[platform.machine()][1]

    def body():
        answers = {}
        for name in prelogin_filter.REFUSED:
            ctypes.set_errno(0)
            result = libc.syscall(ctypes.c_long(numbers[name]), ctypes.c_long(-1),
                                  ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0),
                                  ctypes.c_long(0), ctypes.c_long(0))
            answers[name] = (result, ctypes.get_errno())
        return repr(answers)
    _, text = in_filtered_child(body)
    assert eval(text) == {name: (-1, 1) for name in prelogin_filter.REFUSED}


def test_the_kernel_interfaces_it_never_needs_are_closed():
    """Calls that would succeed (or fail otherwise) without the filter: the session key
    ring's id, a no-op unshare, a userfaultfd (root may make one), a bad BPF command."""
    libc = ctypes.CDLL(None, use_errno=True)
    numbers = prelogin_filter.ARCHES[platform.machine()][1]
    calls = {"keyctl": (0, -3, 0), "unshare": (0,), "userfaultfd": (0,), "bpf": (-1, 0, 0),
             "setns": (-1, 0), "add_key": (0, 0, 0, 0, 0), "request_key": (0, 0, 0, 0),
             "perf_event_open": (0, 0, -1, -1, 0)}
    assert set(calls) == set(prelogin_filter.KERNEL_SURFACE)
    assert set(calls) <= set(prelogin_filter.REFUSED)

    def run(name):
        ctypes.set_errno(0)
        result = libc.syscall(ctypes.c_long(numbers[name]),
                              *(ctypes.c_long(arg) for arg in calls[name]))
        return result, ctypes.get_errno()

    unfiltered = {name: run(name) for name in ("keyctl", "unshare")}
    if any(result < 0 for result, _ in unfiltered.values()):
        pytest.skip(f"this machine refuses them already (a container's filter?): {unfiltered}")
    _, text = in_filtered_child(lambda: repr({name: run(name) for name in calls}))
    assert eval(text) == {name: (-1, 1) for name in calls}


CLONE_NEWUSER = 0x10000000
CLONE_NUMBERS = {"x86_64": 56, "aarch64": 220}


def test_the_lookup_helper_resolves_but_reaches_nothing_else():
    """The reverse-lookup helper's drop (privsep.drop_to_account, as the pre-login account
    when root): it may make sockets, connect and send to an address (it talks to DNS) and
    still resolves 127.0.0.1; it signals no other process, the rest of the filter stands
    (ptrace, the key rings, unshare), and it starts nothing: no fork, no thread, no clone
    into a new user namespace (RLIMIT_NPROC 0: what it started could outlive it)."""
    import pwd
    importlib.import_module("qpopper.server.reverse_lookup")   # loads what a lookup needs
    libc = ctypes.CDLL(None, use_errno=True)
    numbers = prelogin_filter.ARCHES[platform.machine()][1]
    account = pwd.getpwnam("nobody") if os.geteuid() == 0 else pwd.getpwuid(os.getuid())
    other = sleeper()
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))

    def raw(name, *args):
        ctypes.set_errno(0)
        result = libc.syscall(ctypes.c_long(numbers[name]), *(ctypes.c_long(a) for a in args))
        return "ok" if result >= 0 else os.strerror(ctypes.get_errno())

    def body():
        with open("/proc/self/status") as f:
            seccomp = [line.split()[1] for line in f if line.startswith("Seccomp:")]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            sent = outcome(lambda: udp.sendto(b"query", listener.getsockname()) and None)
        return repr({
            "seccomp": seccomp, "sendto": sent,
            "name": socket.gethostbyaddr("127.0.0.1")[0] != "",
            "kill another": outcome(lambda: os.kill(other, 0)),
            "ptrace": raw("ptrace", 0, 0, 0, 0), "keyctl": raw("keyctl", 0, -3, 0),
            "unshare": raw("unshare", 0), "fork": outcome(fork_once),
            "thread": outcome(lambda: threading.Thread(target=int).start()),
            "clone into a user namespace": clone_once(CLONE_NEWUSER | signal.SIGCHLD),
            "dumpable": libc.prctl(3, 0, 0, 0, 0),            # PR_GET_DUMPABLE
        })

    def fork_once():
        if os.fork() == 0:
            os._exit(0)

    def clone_once(flags):
        ctypes.set_errno(0)
        pid = libc.syscall(ctypes.c_long(CLONE_NUMBERS[platform.machine()]), ctypes.c_long(flags),
                           *(ctypes.c_long(0) for _ in range(4)))
        if pid == 0:
            os._exit(0)
        return "ok" if pid > 0 else os.strerror(ctypes.get_errno())
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            privsep.drop_to_account(account.pw_uid, account.pw_gid, os.getppid())
            os.write(w, body().encode())
        except BaseException as exc:
            os.write(w, repr(repr(exc)).encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        with os.fdopen(r) as f:
            text = f.read()
        assert os.waitpid(pid, 0)[1] == 0
        refused, no_process = os.strerror(1), os.strerror(errno.EAGAIN)
        assert eval(text) == {"seccomp": ["2"], "sendto": "ok", "name": True,
                              "kill another": refused, "ptrace": refused, "keyctl": refused,
                              "unshare": refused, "fork": no_process,
                              "thread": "can't start new thread",
                              "clone into a user namespace": no_process, "dumpable": 0}
        assert listener.recv(10) == b"query"
    finally:
        listener.close()
        os.kill(other, signal.SIGKILL)
        os.waitpid(other, 0)


HEADERS = {"x86_64": "/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
           "aarch64": "/usr/include/asm-generic/unistd.h"}


@pytest.mark.parametrize("machine", sorted(HEADERS))
def test_the_numbers_are_the_kernel_headers(machine):
    """The filter's numbers, checked against the kernel's own table for each machine (the
    tests above call the calls by the filter's numbers, so they would not see a wrong one)."""
    import re
    try:
        with open(HEADERS[machine]) as f:
            text = f.read()
    except OSError:
        pytest.skip(f"no {HEADERS[machine]} (Debian linux-libc-dev)")
    header = {name: int(number) for name, number
              in re.findall(r"#define __NR(?:3264)?_(\w+)\s+(\d+)\b", text)}
    numbers = prelogin_filter.ARCHES[machine][1]
    assert {name: header.get(name) for name in numbers} == numbers


def test_no_process_can_be_named_for_sigio_but_descriptors_still_work():
    """F_SETOWN and its kin would have the kernel signal another process of the same
    account (any pre-login process) when a descriptor is ready; the kernel checks only the
    uid. Blocking mode, flags and locks go on working."""
    import fcntl
    other = sleeper()
    a, b = socket.socketpair()
    try:
        def body():
            return repr({
                "F_SETOWN": outcome(lambda: fcntl.fcntl(a, prelogin_filter.F_SETOWN, other)),
                "F_SETSIG": outcome(lambda: fcntl.fcntl(a, prelogin_filter.F_SETSIG,
                                                        signal.SIGKILL)),
                "F_SETOWN_EX": outcome(lambda: fcntl.fcntl(a, prelogin_filter.F_SETOWN_EX,
                                                           bytes(8))),
                "FIOSETOWN": outcome(lambda: fcntl.ioctl(a, prelogin_filter.FIOSETOWN,
                                                         other.to_bytes(4, "little"))),
                "SIOCSPGRP": outcome(lambda: fcntl.ioctl(a, prelogin_filter.SIOCSPGRP,
                                                         other.to_bytes(4, "little"))),
                "setblocking": outcome(lambda: a.setblocking(False)),
                "F_GETFL": outcome(lambda: fcntl.fcntl(a, fcntl.F_GETFL)),
            })
        _, text = in_filtered_child(body)
        refused = os.strerror(1)
        assert eval(text) == {"F_SETOWN": refused, "F_SETSIG": refused,
                              "F_SETOWN_EX": refused, "FIOSETOWN": refused,
                              "SIOCSPGRP": refused, "setblocking": "ok", "F_GETFL": "ok"}
    finally:
        a.close()
        b.close()
        os.kill(other, signal.SIGKILL)
        os.waitpid(other, 0)


def test_it_changes_only_its_own_limits():
    """A process of the same account may lower another's limits: RLIMIT_CPU 1 s ends it."""
    import resource
    other = sleeper()
    try:
        def body():
            soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
            return repr({
                "its own": outcome(lambda: resource.setrlimit(resource.RLIMIT_CORE,
                                                              (0, hard))),
                "its own, by pid": outcome(lambda: resource.prlimit(os.getpid(),
                                                                    resource.RLIMIT_CORE)),
                "another's": outcome(lambda: resource.prlimit(other, resource.RLIMIT_CPU,
                                                              (1, 1))),
            })
        _, text = in_filtered_child(body)
        assert eval(text) == {"its own": "ok", "its own, by pid": "ok",
                              "another's": os.strerror(1)}
    finally:
        os.kill(other, signal.SIGKILL)
        os.waitpid(other, 0)


def test_a_32_bit_interpreter_on_a_64_bit_kernel_gets_no_filter(monkeypatch):
    """platform.machine() is the kernel's; the architecture check would kill every call of
    an i386 or armhf interpreter."""
    monkeypatch.setattr(prelogin_filter.struct, "calcsize", lambda fmt: 4)
    assert prelogin_filter.available() is False


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x32 is an x86_64 ABI")
def test_a_system_call_of_another_abi_ends_the_process():
    libc = ctypes.CDLL(None, use_errno=True)

    def body():
        libc.syscall(prelogin_filter.X32_SYSCALL_BIT | 39)      # x32 getpid
        return "survived"
    status, text = in_filtered_child(body)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS and text == ""


@pytest.mark.parametrize("resolver", [False, True])
def test_every_jump_lands_inside_the_program(resolver):
    for machine in prelogin_filter.ARCHES:
        code = prelogin_filter.program(machine, 4242, (4243, 4242), resolver=resolver)
        assert code[-1] == (prelogin_filter._RET, 0, 0, prelogin_filter.RET_ALLOW)
        for index, (op, jt, jf, _) in enumerate(code):
            if op in (prelogin_filter._JEQ, prelogin_filter._JGE):
                assert index + 1 + max(jt, jf) < len(code), (machine, index)


def test_a_machine_without_a_filter_is_told(monkeypatch):
    from qpopper.server import preflight
    said = []
    preflight.warn_without_syscall_filter(lambda priority, text: said.append(text))
    assert said == []
    monkeypatch.setattr(prelogin_filter.platform, "machine", lambda: "riscv64")
    assert privsep.install_syscall_filter(os.getpid()) is False
    preflight.warn_without_syscall_filter(lambda priority, text: said.append(text))
    assert said == ["no system-call filter for the pre-login process on riscv64 with a "
                    "64-bit interpreter (64-bit x86_64 and aarch64 only): the rest of its "
                    "sandbox stands alone"]
