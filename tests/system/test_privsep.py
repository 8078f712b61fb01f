"""privsep.drop_privileges, for real: a forked child of the test drops to a `qpt` user with
the mail group (effective and saved; the user's own group real) and reports what the kernel
says about it (/proc/self/status); privsep.run_user_program then starts a program with the
user's own group only."""

from __future__ import annotations

import json
import os
import pwd
import subprocess

import pytest

from qpopper.server import privsep
from qpopper.auth import Login
from tests.helpers import sysusers

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(not sysusers.is_root(),
                                 reason="needs root: changes uid/gid in a forked child")]


def login_for(user) -> Login:
    return Login(user=user.name, uid=user.uid, gid=user.gid, home=user.home, mechanism="USER")


def in_child(body) -> tuple[int, list]:
    """Run body(report) in a forked child; returns (exit status, what it reported).

    The child always leaves through os._exit, so pytest's own state is never run twice."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        status = 0
        try:
            with os.fdopen(write_end, "w") as out:
                def report(*items):
                    out.write(json.dumps(items) + "\n")
                    out.flush()
                body(report)
        except BaseException:
            status = 99
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end) as reader:
        lines = [json.loads(line) for line in reader]
    _, wait_status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(wait_status), lines


def status_fields() -> dict[str, list[str]]:
    with open("/proc/self/status") as f:
        fields = dict(line.rstrip("\n").split(":", 1) for line in f)
    return {key: fields[key].split() for key in ("Uid", "Gid", "Groups")}


def test_drop_leaves_only_the_user_and_the_mail_group(system_users, world_tmp):
    """The mail group is the effective and saved group (the spool); the real group is the
    user's own, kept for the programs the session runs."""
    alice, bob = system_users.create(), system_users.create()
    mail = sysusers.mail_gid()
    own = sysusers.make_spool(world_tmp, alice, b"From x\n\nmine\n")
    other = sysusers.make_spool(world_tmp, bob, b"From y\n\nnot yours\n")

    def body(report):
        privsep.drop_privileges(login_for(alice), mail)
        report("status", status_fields())
        report("umask", os.umask(0o007))
        with open(own, "rb") as f:
            report("own", f.read().decode())
        try:
            open(other, "rb").close()
            report("other", "opened")
        except PermissionError:
            report("other", "PermissionError")
        for name, attempt in (("setuid", lambda: os.setuid(0)),
                              ("seteuid", lambda: os.seteuid(0)),
                              ("setgroups", lambda: os.setgroups([0]))):
            try:
                attempt()
                report(name, "regained")
            except PermissionError:
                report(name, "PermissionError")

    code, lines = in_child(body)
    assert code == 0
    facts = {line[0]: line[1] for line in lines}
    assert facts["status"]["Uid"] == [str(alice.uid)] * 4      # real, effective, saved, fs
    # real, effective, saved, fs
    assert facts["status"]["Gid"] == [str(alice.gid), str(mail), str(mail), str(mail)]
    assert facts["status"]["Groups"] == []
    assert facts["umask"] == 0o007
    assert facts["own"] == "From x\n\nmine\n"
    assert facts["other"] == "PermissionError"
    assert facts["setuid"] == facts["seteuid"] == facts["setgroups"] == "PermissionError"


def test_a_program_the_session_runs_has_the_users_own_group_only(system_users, world_tmp,
                                                                   monkeypatch):
    frank = system_users.create()
    mail = sysusers.mail_gid()
    monkeypatch.setenv("QPOPPER_TEST_SERVER_SECRET", "must-not-leak")
    script = os.path.join(world_tmp, "report-identity")
    with open(script, "w") as f:
        f.write("#!/bin/sh\ngrep -E '^(Uid|Gid|Groups):' /proc/$$/status\nenv\n")
    os.chmod(script, 0o755)

    out_dir = os.path.join(world_tmp, "out")
    os.mkdir(out_dir, 0o700)
    os.chown(out_dir, frank.uid, frank.gid)       # the program runs as frank
    out = os.path.join(out_dir, "identity")

    def body(report):
        privsep.drop_privileges(login_for(frank), mail)
        report("user program", privsep.run_user_program(
            ["/bin/sh", "-c", f"exec {script} > {out}"], login_for(frank),
            stdin=subprocess.DEVNULL, timeout_s=20))
        with open(out) as f:
            report("output", f.read())
        report("gids after", os.getresgid())

    code, lines = in_child(body)
    assert code == 0, lines
    facts = {line[0]: line[1] for line in lines}
    assert facts["user program"] == 0
    output = facts["output"].splitlines()
    status = dict(line.split(":", 1) for line in output[:3])
    assert status["Uid"].split() == [str(frank.uid)] * 4
    assert status["Gid"].split() == [str(frank.gid)] * 4      # no mail group anywhere
    assert status["Groups"].split() == []
    variables = dict(line.split("=", 1) for line in output[3:])
    assert "QPOPPER_TEST_SERVER_SECRET" not in variables
    assert variables["PATH"] == privsep.USER_PROGRAM_PATH
    assert (variables["USER"], variables["HOME"]) == (frank.name, frank.home)
    assert facts["gids after"] == [frank.gid, mail, mail]       # the session keeps the spool


@pytest.mark.parametrize("low_user", ["root", "daemon", "mail"])
def test_drop_aborts_for_low_uids(low_user):
    entry = pwd.getpwnam(low_user)
    login = Login(user=low_user, uid=entry.pw_uid, gid=entry.pw_gid, home=entry.pw_dir,
                  mechanism="USER")

    def body(report):
        privsep.drop_privileges(login, sysusers.mail_gid(),
                                log=lambda priority, text: report("log", priority, text))
        report("continued", os.getuid())

    code, lines = in_child(body)
    assert code == privsep.EXIT_PRIVSEP_FAILED
    assert not any(line[0] == "continued" for line in lines)
    logged = [line for line in lines if line[0] == "log"]
    assert logged and "refusing to run a session as uid" in logged[0][2]


def test_drop_aborts_for_gid_zero(system_users):
    carol = system_users.create()

    def body(report):
        privsep.drop_privileges(login_for(carol), 0)
        report("continued")

    code, lines = in_child(body)
    assert code == privsep.EXIT_PRIVSEP_FAILED and lines == []


def test_drop_aborts_for_a_user_whose_own_group_is_root(system_users):
    """Its real group would let the session make group 0 its effective group again."""
    carol = system_users.create()
    rooted = Login(user=carol.name, uid=carol.uid, gid=0, home=carol.home, mechanism="USER")

    def body(report):
        privsep.drop_privileges(rooted, sysusers.mail_gid(),
                                log=lambda priority, text: report("log", text))
        report("continued")

    code, lines = in_child(body)
    assert code == privsep.EXIT_PRIVSEP_FAILED
    assert len(lines) == 1 and "refusing to run a session" in lines[0][1]


def test_a_failed_setuid_aborts_instead_of_continuing(system_users, monkeypatch):
    """If the kernel refused a step (here: setresuid made to fail), the child must not go
    on as root: it exits with the privsep status."""
    dave = system_users.create()

    def refuse(*ids):
        raise PermissionError(1, "Operation not permitted")

    def body(report):
        monkeypatch.setattr(os, "setresuid", refuse)
        privsep.drop_privileges(login_for(dave), sysusers.mail_gid(),
                                log=lambda priority, text: report("log", text))
        report("continued")

    code, lines = in_child(body)
    assert code == privsep.EXIT_PRIVSEP_FAILED
    assert lines == [["log", f"privilege drop to uid {dave.uid} gid {sysusers.mail_gid()} "
                             "failed: Operation not permitted"]]


def test_a_drop_that_silently_did_nothing_is_caught(system_users, monkeypatch):
    """The checks after the calls are what count: a setresuid that 'succeeds' without effect
    leaves uid 0, and the verification aborts the child."""
    erin = system_users.create()

    def body(report):
        monkeypatch.setattr(os, "setresuid", lambda *ids: None)
        privsep.drop_privileges(login_for(erin), sysusers.mail_gid(),
                                log=lambda priority, text: report("log", text))
        report("continued")

    code, lines = in_child(body)
    assert code == privsep.EXIT_PRIVSEP_FAILED
    assert len(lines) == 1 and "not effective" in lines[0][1]
    assert "uids (0, 0, 0)" in lines[0][1] and "setuid(0) succeeded" in lines[0][1]


def test_a_maildir_session_of_a_server_that_never_had_root_keeps_its_real_gid(system_users):
    """The demo as an ordinary user after newgrp: its real gid is not its passwd group, which
    it may not take. Leaving and dropping the spool group keep the real gid there, where a
    session that had root (the master's warm-up included) takes the login's own."""
    alice = system_users.create()
    other_gid = alice.gid + 1 if alice.gid + 1 != sysusers.mail_gid() else alice.gid + 2

    def body(report):
        os.setgroups([])
        os.setresgid(other_gid, other_gid, other_gid)       # newgrp: not the passwd group
        os.setresuid(alice.uid, alice.uid, alice.uid)       # never root again
        privsep.leave_spool_group(alice.gid)
        report("left", os.getresgid())
        privsep.drop_spool_group(alice.gid)
        report("dropped", os.getresgid())

    code, lines = in_child(body)
    assert code == 0, lines
    facts = {line[0]: line[1] for line in lines}
    assert facts["left"] == facts["dropped"] == [other_gid] * 3


def test_the_spool_group_is_never_root_s_group(system_users):
    """Under EffectiveIdentity (the master's warm-up) the saved gid is root's 0: a Maildir
    round's spool_group() must not take it as the spool group."""
    alice = system_users.create()

    def body(report):
        identity = privsep.EffectiveIdentity(alice.name)
        identity.enter()
        privsep.leave_spool_group(alice.gid)
        with privsep.spool_group():
            report("inside", os.getresgid())
        identity.leave()

    code, lines = in_child(body)
    assert code == 0, lines
    facts = {line[0]: line[1] for line in lines}
    assert facts["inside"][1] != 0, facts
