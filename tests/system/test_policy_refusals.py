"""Only wrong credentials are failures, on the REAL server (root, real system users, a real PAM
service, a pop.auth store): refusals for policy with the CORRECT password (a store user using
USER/PASS under clear-text-password default, nonauth-file, auth-file, the low-UID block) and
[IN-USE] after a correct password are logged as what they are, never as `LOGIN FAILED`, and
cost no brake; five wrong passwords still do both. The right password of an account PAM's
account step refuses (expired, pam_access) is no `LOGIN FAILED` either, but, answered as a
wrong password, is braked as one. Addresses in auth-brakes-trusted-networks
are never braked. The tests read the log lines and the brakes file, not the clock."""

from __future__ import annotations

import os
import re
import sqlite3

import pytest

from qpopper import limits
from tests.helpers.policy_site import greeted, policy_site, user_pass

pytestmark = pytest.mark.timeout(120)

FREE = limits.BRAKE_FREE_FAILURES_PER_ADDRESS


@pytest.fixture
def site(system_users, pam_service, world_tmp):
    s = policy_site(system_users, pam_service, world_tmp)
    yield s
    s.close()


def lines_about(site, source: str) -> tuple[list[str], list[str], list[str]]:
    """(LOGIN FAILED lines, policy lines, brake waits) naming `source`."""
    texts = site.syslog.texts()
    address = re.escape(source)
    return ([t for t in texts if re.match(rf"LOGIN FAILED, .*ip=\[{address}\]", t)],
            [t for t in texts if re.match(rf"LOGIN REFUSED \(policy\), .*ip=\[{address}\]", t)],
            [t for t in texts if t.startswith(f"brute-force brake: {source} waits")])


def address_rows(site, source: str) -> list[tuple]:
    """The brakes file's rows keyed by `source` (an address; or a user name)."""
    path = os.path.join(site.root, "auth-brakes.sqlite")      # server_harness.write_config
    if not os.path.exists(path):
        return []
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT kind, key, count FROM failures WHERE key = ?",
                          (source,)).fetchall()
    db.close()
    return rows


def brakes_state(site, source: str, user: str) -> tuple[list[tuple], int]:
    """What the brakes hold against `source` and `user` ((kind, count) of their rows, 'held'
    included) and how many of `source`'s attempts waited a brake before being checked."""
    rows = address_rows(site, source) + address_rows(site, user)
    return sorted((kind, count) for kind, _, count in rows), len(lines_about(site, source)[2])


def test_five_policy_refusals_are_no_failures_five_wrong_passwords_are(site):
    policy_source, guess_source = "127.0.0.3", "127.0.0.4"
    refusals = [(site.alice, b"-ERR [AUTH] You must use stronger authentication"),
                (site.carl, b"-ERR [AUTH] Permission denied."),
                (site.alice, b"-ERR [AUTH] You must use stronger authentication"),
                (site.carl, b"-ERR [AUTH] Permission denied."),
                (None, b"-ERR [AUTH] Access is blocked for UIDs below")]
    for user, expected in refusals:
        name, password = (user.name, user.password) if user else ("daemon", "any")
        reply = user_pass(site, policy_source, name, password)
        assert reply.startswith(expected), reply
    # the next login from there is not braked, and nothing was counted against it
    assert user_pass(site, policy_source, site.bob.name, site.bob.password).startswith(b"+OK")
    site.syslog.wait_for(rf'\(v\S+\) POP login by user "{site.bob.name}" at '
                         rf'\({policy_source}\) {policy_source}')
    failed, policy, waits = lines_about(site, policy_source)
    assert failed == [] and waits == [], (failed, waits)
    assert len(policy) == 5, policy
    assert any(f"user={site.alice.name}, method=USER" in t and "reason=clear-text-password "
               "default" in t for t in policy)
    assert any(f"user={site.carl.name}," in t and "reason=listed in nonauth-file" in t
               for t in policy)
    assert not [t for t in site.syslog.texts() if "Failed attempted login" in t]
    assert address_rows(site, policy_source) == []

    # five wrong passwords: five failures; once an address has more than FREE, its next
    # attempts are braked
    for i in range(5):
        reply = user_pass(site, guess_source, site.bob.name, f"wrong-{i}")
        assert reply.startswith(b"-ERR [AUTH] Password supplied"), reply
    failed, policy, waits = lines_about(site, guess_source)
    assert [re.search(r"failures=(\d+)", t)[1] for t in failed] == ["1", "2", "3", "4", "5"]
    assert policy == [] and len(waits) == 5 - (FREE + 1), waits      # the 5th waited
    assert ("address", guess_source, 5) in address_rows(site, guess_source)


def test_in_use_after_a_correct_password_is_not_a_failure(site):
    """bob's session holds his maildrop; five more logins with his correct password get
    [IN-USE]: not failed guesses (no LOGIN FAILED, nothing counted), so the next login from
    that address, once the first session ended, is not braked."""
    source = "127.0.0.5"
    holder, lines = greeted(site, source)
    with holder:
        holder.sendall(f"USER {site.bob.name}\r\nPASS {site.bob.password}\r\n".encode())
        assert lines.readline().startswith(b"+OK")
        assert lines.readline().startswith(b"+OK"), "bob's first session"
        for _ in range(5):
            reply = user_pass(site, source, site.bob.name, site.bob.password)
            assert reply.startswith(b"-ERR [IN-USE]"), reply
        holder.sendall(b"QUIT\r\n")
        assert lines.readline().startswith(b"+OK")
    assert user_pass(site, source, site.bob.name, site.bob.password).startswith(b"+OK")
    failed, _, waits = lines_about(site, source)
    assert failed == [] and waits == [], (failed, waits)
    assert address_rows(site, source) == []


def test_a_trusted_network_is_never_braked(site):
    """127.0.0.9 lies in auth-brakes-trusted-networks: ten wrong passwords are logged (for
    the administrator; fail2ban's ignoreip should hold the same networks) but not counted,
    and no attempt waits a brake. 127.0.0.6, outside, is braked after the same guesses."""
    for source in ("127.0.0.9", "127.0.0.6"):
        for i in range(10):
            reply = user_pass(site, source, site.dora.name, f"wrong-{i}")
            assert reply.startswith(b"-ERR [AUTH]"), reply
        assert user_pass(site, source, site.dora.name, site.dora.password).startswith(b"+OK")
    failed, _, waits = lines_about(site, "127.0.0.9")
    assert len(failed) == 10 and all("failures=0, brake=0.00s" in t for t in failed), failed
    assert waits == [] and address_rows(site, "127.0.0.9") == []
    failed, _, waits = lines_about(site, "127.0.0.6")
    assert len(failed) == 10 and len(waits) == 11 - (FREE + 1), waits
    bound = limits.BRAKE_MAX_WAIT_BEFORE_CHECK_S
    # the correct password, after the guesses were answered, waited the bound at most
    assert waits[-1].startswith(f"brute-force brake: 127.0.0.6 waits {bound:.2f}s "), waits


def test_a_right_password_on_an_expired_account_is_logged_as_refused_by_the_account_step(
        site, system_users):
    """PAM's password step says yes, its account step no (an expired account, an expired
    password). Each is logged `LOGIN REFUSED (account)` with PAM's reason; only the expired
    password is told as such, and costs no brake and no `LOGIN FAILED`; the expired account
    is answered, braked and logged (`LOGIN FAILED` too) as a wrong guess, which tells a
    guesser nothing."""
    source = "127.0.0.7"
    gone = system_users.create("dx", account_expired=True)
    stale = system_users.create("dp", password_expired=True)
    wrong_guess = f'-ERR [AUTH] Password supplied for "{gone.name}" is incorrect.\r\n'.encode()
    for _ in range(3):
        assert user_pass(site, source, gone.name, gone.password) == wrong_guess
        reply = user_pass(site, source, stale.name, stale.password)
        assert reply == f'-ERR [AUTH] The password of "{stale.name}" has expired\r\n'.encode()
    assert user_pass(site, source, gone.name, "wrong") == wrong_guess
    # the three account refusals of `gone` counted with its wrong password
    site.syslog.wait_for(rf"LOGIN FAILED, user={gone.name}, .*ip=\[{source}\], failures=4, .*")
    texts = site.syslog.texts()
    account = [t for t in texts if t.startswith("LOGIN REFUSED (account), ")]
    assert len(account) == 6, account
    assert sum(t.startswith(f"LOGIN REFUSED (account), user={gone.name}, method=USER, "
                            f"ip=[{source}], reason=PAM service ") and t.endswith("(13)")
               for t in account) == 3, account
    assert sum(f"user={stale.name}," in t and t.endswith("(12)") for t in account) == 3
    failed, policy, waits = lines_about(site, source)
    assert len(failed) == 4 and policy == [] and waits == [], (failed, policy, waits)
    assert all(f"user={gone.name}," in t for t in failed), failed
    assert not [t for t in texts if "Failed attempted login to " + stale.name in t]
    # each of `gone`'s refusals logged as a wrong guess is: why first, then Qpopper's failure
    # line and the fail2ban line (the order poppassd logs them in)
    kinds = [kind for t in texts if f"{gone.name}," in t or f"login to {gone.name} " in t
             for kind in ("LOGIN REFUSED (account)", "[AUTH] Failed", "LOGIN FAILED")
             if t.startswith(kind)]
    assert kinds == ["LOGIN REFUSED (account)", "[AUTH] Failed", "LOGIN FAILED"] * 3 + \
        ["[AUTH] Failed", "LOGIN FAILED"], kinds
    assert ("address", source, 4) in address_rows(site, source)
    assert address_rows(site, stale.name) == []


def test_an_account_refusal_raises_the_brakes_as_a_wrong_password_does(site, system_users):
    """The right password of an expired account (answered as a wrong password) counts in the
    brakes exactly as a wrong password does: the address's count and the user name's, the
    hold, and the brake the next attempts from there wait. Else the next attempt from that
    address, not braked, told a guesser that the password was right (and so, under
    contention for the brakes file, did a read's time against a wrong guess's write)."""
    right_from, wrong_from = "127.0.0.41", "127.0.0.42"
    gone, lost = (system_users.create(tag, account_expired=True) for tag in ("dr", "dw"))
    attempts = FREE + 3          # the user name's free failures passed: the last one is held
    for _ in range(attempts):
        for source, user, password in ((right_from, gone, gone.password),
                                       (wrong_from, lost, "guess")):
            reply = user_pass(site, source, user.name, password)
            assert reply == (f'-ERR [AUTH] Password supplied for "{user.name}" is '
                             f'incorrect.\r\n').encode()
    # the last attempt's line: every line before it is in (one socket, in order)
    site.syslog.wait_for(rf"LOGIN FAILED, user={lost.name}, .*failures={attempts}, .*")
    assert len([t for t in site.syslog.texts() if t.startswith(
        f"LOGIN REFUSED (account), user={gone.name}, method=USER, ip=[{right_from}]")]) == attempts
    guessed = brakes_state(site, wrong_from, lost.name)
    assert guessed == (sorted([("address", attempts), ("held", 0), ("user", attempts)]),
                       attempts - (FREE + 1)), guessed
    assert brakes_state(site, right_from, gone.name) == guessed


def test_an_expired_account_from_a_braked_address_holds_it_like_a_wrong_guess(site):
    """From an address whose brake is above the bounded wait, the right password of an
    expired account is answered as a wrong guess after as long a wait, and the address is
    held for that wait as after a wrong guess (a guesser's second connection could otherwise
    tell the two apart), and counted and logged as one."""
    source = "127.0.0.31"
    for n in range(FREE + 3):                # the brake grows to 1 s (auth-brakes-max-delay)
        user_pass(site, source, f"qptnobody{n}", "guess")
    assert ("held", source, 0) not in address_rows(site, source)
    reply = user_pass(site, source, site.eve.name, site.eve.password)
    assert reply == f'-ERR [AUTH] Password supplied for "{site.eve.name}" is incorrect.\r\n'.encode()
    rows = address_rows(site, source)
    assert ("held", source, 0) in rows and ("address", source, FREE + 4) in rows, rows
    site.syslog.wait_for(rf"LOGIN REFUSED \(account\), user={site.eve.name}, .*")
    site.syslog.wait_for(rf"LOGIN FAILED, user={site.eve.name}, .*failures={FREE + 4}, .*")


def test_an_account_pam_access_bars_answers_its_right_password_as_a_wrong_one(system_users,
                                                                              world_tmp):
    """An account the site keeps out of POP with pam_access (an administrator's): PAM's
    account step refuses after the right password, which is logged LOGIN REFUSED (account),
    but answered with the wrong password's text, braked and logged (LOGIN FAILED) as a wrong
    password, so POP is no
    way to guess that account's password (docs/operations.md, "An expired account or
    password")."""
    from tests.helpers.messages import mbox
    from tests.helpers.pam_service import installed_pam_service
    from tests.helpers.sysusers import make_spool
    from tests.server_harness import Site
    admin = system_users.create("acx")
    access = os.path.join(world_tmp, "access.conf")
    with open(access, "w") as f:
        f.write(f"-:{admin.name}:ALL\n")
    stack = ("auth     required  pam_unix.so nodelay\n"
             "account  required  pam_unix.so\n"
             f"account  required  pam_access.so accessfile={access}\n")
    with installed_pam_service(stack, tag="acx-") as service:
        barred = Site(world_tmp, service, auth_brakes_max_delay=1)
        make_spool(barred.spool_dir, admin, mbox(("hi", "x")))
        barred.srv = barred.server()
        try:
            right = user_pass(barred, "127.0.0.21", admin.name, admin.password)
            wrong = user_pass(barred, "127.0.0.22", admin.name, "guess-1")
            assert right == wrong == (f'-ERR [AUTH] Password supplied for "{admin.name}" is '
                                      f'incorrect.\r\n').encode()
            barred.syslog.wait_for(rf"LOGIN REFUSED \(account\), user={admin.name}, "
                                   rf"method=USER, ip=\[127\.0\.0\.21\], .*")
            for source in ("21", "22"):
                barred.syslog.wait_for(rf"LOGIN FAILED, user={admin.name}, method=USER, "
                                       rf"ip=\[127\.0\.0\.{source}\], failures=1, .*")
            assert [row[::2] for row in address_rows(barred, "127.0.0.21")] == \
                   [row[::2] for row in address_rows(barred, "127.0.0.22")] == [("address", 1)]
        finally:
            barred.close()


def test_what_fail2ban_counts_does_not_tell_an_account_refusal_from_a_wrong_password(
        site, system_users):
    """A guesser's view through fail2ban (maxretry N: banned after N `LOGIN FAILED` lines
    from its address): the same replies, the same waits, the same brakes; the lines fail2ban
    counts should be alike too, or the one attempt that does not bring the ban nearer is the
    right password of an account PAM's account step bars from POP (docs/operations.md, "An
    expired account or password": "cannot have its password guessed through POP")."""
    right_from, wrong_from = "127.0.0.51", "127.0.0.52"
    gone = system_users.create("df", account_expired=True)
    for source, password in ((right_from, gone.password), (wrong_from, "guess")):
        assert user_pass(site, source, gone.name, password) == (
            f'-ERR [AUTH] Password supplied for "{gone.name}" is incorrect.\r\n').encode()
    site.syslog.wait_for(rf"LOGIN FAILED, user={gone.name}, .*ip=\[{wrong_from}\], .*")
    site.syslog.wait_for(rf"LOGIN REFUSED \(account\), user={gone.name}, .*ip=\[{right_from}\].*")

    def counted(source):
        return len([t for t in site.syslog.texts()
                    if t.startswith("LOGIN FAILED") and f"ip=[{source}]" in t])
    assert counted(right_from) == counted(wrong_from)
