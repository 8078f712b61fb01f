"""The pre-login process's system-call filter (seccomp), the last step of its sandbox
(docs/privsep.md, "The pre-login process's system calls").

The process needs no new socket and no signal for anyone but itself and its reverse-lookup
helper: everything it talks to (the client, its monitor, the TLS relay's pair) it holds from
the fork. So, once it has locked itself in, the kernel refuses it, with EPERM:

- socket, connect, sendmsg, sendmmsg, and sendto with an address: no syslog on the network
  or on an abstract socket, no DRAC daemon, no other host, no reconnecting the datagram
  socket it logs through (it sends with send(), which is sendto without an address);
- kill (but for itself and the helper), tkill, tgkill (but within itself), the queued and
  pidfd signals: it cannot signal the other connections' pre-login processes, which run
  under the same account;
- naming another process to get SIGIO/SIGURG when a descriptor is ready (fcntl F_SETOWN,
  F_SETOWN_EX, F_SETSIG; ioctl FIOSETOWN, SIOCSPGRP): the kernel checks only the uid there;
- prlimit64 on another process, setpriority, the sched_set* calls and ioprio_set: for
  these too the kernel checks the account only, and a lowered RLIMIT_CPU kills;
- ptrace, process_vm_readv/writev, pidfd_getfd, io_uring_setup (io_uring makes sockets
  without the socket call);
- the key rings (add_key, request_key, keyctl), userfaultfd, perf_event_open, bpf, unshare
  and setns: kernel interfaces it never needs, and a common way from a taken-over process to
  a kernel bug.

The pre-login process's reverse-lookup helper, which talks to DNS outside the chroot, gets
the same filter as a resolver (`resolver=True`): new sockets, connect and addressed sends are
let through, it signals only itself, and everything else above stays refused.

A system call of another ABI (i386 through int 0x80, x32) kills the process: the filter
could not read its numbers. Only x86_64 and arm64 are known; elsewhere no filter is
installed, the rest of the sandbox stands alone, and start-up and --check-config say so.
This module only builds the filter; privsep.install_syscall_filter installs it.
"""

from __future__ import annotations

import errno
import platform
import struct
from typing import Iterable

RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000
DENY = RET_ERRNO | errno.EPERM

# classic BPF: load a word of struct seccomp_data, compare with a constant, return
_LD_ABS = 0x20                       # BPF_LD | BPF_W | BPF_ABS
_JEQ = 0x15                          # BPF_JMP | BPF_JEQ | BPF_K
_JGE = 0x35                          # BPF_JMP | BPF_JGE | BPF_K
_RET = 0x06                          # BPF_RET | BPF_K
_NR, _ARCH = 0, 4                    # offsets in struct seccomp_data
_INSTRUCTION = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k
INSTRUCTION_OCTETS = _INSTRUCTION.size


def _arg_low(index: int) -> int:
    return 16 + 8 * index            # args[], little-endian: the low 32 bits first


def _arg_high(index: int) -> int:
    return 16 + 8 * index + 4


X32_SYSCALL_BIT = 0x40000000

AUDIT_ARCHES = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
"""AUDIT_ARCH_* of each machine the filter knows."""

SYSCALLS = {                         # name: (x86_64, aarch64)
    "socket": (41, 198), "connect": (42, 203), "sendto": (44, 206), "sendmsg": (46, 211),
    "sendmmsg": (307, 269), "kill": (62, 129), "tkill": (200, 130), "tgkill": (234, 131),
    "rt_sigqueueinfo": (129, 138), "rt_tgsigqueueinfo": (297, 240), "ptrace": (101, 117),
    "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "pidfd_send_signal": (424, 424), "io_uring_setup": (425, 425), "pidfd_getfd": (438, 438),
    "fcntl": (72, 25), "ioctl": (16, 29), "prlimit64": (302, 261), "setpriority": (141, 140),
    "sched_setparam": (142, 118), "sched_setscheduler": (144, 119),
    "sched_setaffinity": (203, 122), "sched_setattr": (314, 274), "ioprio_set": (251, 30),
    "add_key": (248, 217), "request_key": (249, 218), "keyctl": (250, 219),
    "userfaultfd": (323, 282), "perf_event_open": (298, 241), "bpf": (321, 280),
    "unshare": (272, 97), "setns": (308, 268),
}
"""The numbers of each call the filter names, on each machine it knows (asm/unistd_64.h,
asm-generic/unistd.h)."""

ARCHES = {machine: (audit, {name: pair[i] for name, pair in SYSCALLS.items()})
          for i, (machine, audit) in enumerate(AUDIT_ARCHES.items())}
"""(AUDIT_ARCH_*, system call numbers) of each machine the filter knows."""

F_SETOWN, F_SETSIG, F_SETOWN_EX = 8, 10, 15
FIOSETOWN, SIOCSPGRP = 0x8901, 0x8902
REFUSED_COMMANDS = (("fcntl", (F_SETOWN, F_SETSIG, F_SETOWN_EX)),
                    ("ioctl", (FIOSETOWN, SIOCSPGRP)))
"""Commands (the second argument) that name a process to signal when a descriptor is ready."""

KERNEL_SURFACE = ("add_key", "request_key", "keyctl", "userfaultfd", "perf_event_open", "bpf",
                  "unshare", "setns")
"""Kernel interfaces the process never needs, and whose bugs have been a way to root: the
key rings, userfaultfd (it holds a racing kernel thread still), perf events, BPF, and new
namespaces (a new user namespace is refused in a chroot, but not in the demo's sandbox)."""

REFUSED = ("socket", "connect", "sendmsg", "sendmmsg", "tkill", "rt_sigqueueinfo",
           "rt_tgsigqueueinfo", "pidfd_send_signal", "ptrace", "process_vm_readv",
           "process_vm_writev", "pidfd_getfd", "io_uring_setup", "setpriority",
           "sched_setparam", "sched_setscheduler", "sched_setaffinity", "sched_setattr",
           "ioprio_set", *KERNEL_SURFACE)


NETWORK = ("socket", "connect", "sendmsg", "sendmmsg")
"""What a resolver needs (a UDP or TCP socket to the name server, nscd's Unix socket, glibc's
sendmmsg of the A and AAAA queries), with sendto to an address."""


def program(machine: str, own_pid: int, may_signal: Iterable[int] = (), *,
            resolver: bool = False) -> list[tuple]:
    """The filter for `machine` as (code, jump if true, jump if false, k) instructions;
    with `resolver`, the reverse-lookup helper's (NETWORK and sendto allowed)."""
    audit_arch, numbers = ARCHES[machine]
    out = [(_LD_ABS, 0, 0, _ARCH),
           (_JEQ, 1, 0, audit_arch),
           (_RET, 0, 0, RET_KILL_PROCESS),
           (_LD_ABS, 0, 0, _NR),
           (_JGE, 0, 1, X32_SYSCALL_BIT),
           (_RET, 0, 0, RET_KILL_PROCESS)]
    for name in REFUSED:
        if not (resolver and name in NETWORK):
            out += [(_JEQ, 0, 1, numbers[name]), (_RET, 0, 0, DENY)]
    if not resolver:
        # sendto only without an address (args[4] == NULL): send() on what it holds
        out += [(_JEQ, 0, 6, numbers["sendto"]),
                (_LD_ABS, 0, 0, _arg_low(4)), (_JEQ, 0, 2, 0),
                (_LD_ABS, 0, 0, _arg_high(4)), (_JEQ, 1, 0, 0),
                (_RET, 0, 0, DENY), (_RET, 0, 0, RET_ALLOW),
                (_LD_ABS, 0, 0, _NR)]
    # kill(pid): itself and its helper; tgkill(tgid): within itself (the kernel reads a
    # pid_t, the low 32 bits of the register)
    # prlimit64(pid): its own limits only (0 is itself); the kernel lets a process of the
    # same account lower another's, RLIMIT_CPU 1 s ending it
    for name, pids in (("kill", (own_pid, *may_signal)), ("tgkill", (own_pid,)),
                       ("prlimit64", (0, own_pid))):
        out += _deciding_on_arg(numbers[name], 0, tuple(dict.fromkeys(pids)), RET_ALLOW, DENY)
    for name, commands in REFUSED_COMMANDS:
        out += _deciding_on_arg(numbers[name], 1, commands, DENY, RET_ALLOW)
    out.append((_RET, 0, 0, RET_ALLOW))
    return out


def _deciding_on_arg(number: int, index: int, values: tuple[int, ...], listed: int,
                     other: int) -> list[tuple]:
    """For system call `number`: `listed` when the low 32 bits of args[index] are one of
    `values`, `other` when not; any other call goes on to what follows, with the system call
    number loaded again."""
    out = [(_JEQ, 0, len(values) + 3, number), (_LD_ABS, 0, 0, _arg_low(index))]
    out += [(_JEQ, len(values) - i, 0, value) for i, value in enumerate(values)]
    return out + [(_RET, 0, 0, other), (_RET, 0, 0, listed), (_LD_ABS, 0, 0, _NR)]


def available() -> bool:
    """Whether this machine gets the filter: a known machine, and this interpreter of its
    64-bit ABI. platform.machine() is the kernel's: an i386 or armhf userland on a 64-bit
    kernel would have every system call killed by the architecture check."""
    return platform.machine() in ARCHES and struct.calcsize("P") == 8


def encoded(own_pid: int, may_signal: Iterable[int] = (), *,
            resolver: bool = False) -> bytes | None:
    """This machine's filter as struct sock_filter octets, for privsep to install; None on a
    machine the filter does not know (available())."""
    if not available():
        return None
    return b"".join(_INSTRUCTION.pack(*instruction)
                    for instruction in program(platform.machine(), own_pid, may_signal,
                                               resolver=resolver))
