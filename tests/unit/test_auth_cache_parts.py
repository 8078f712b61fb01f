"""The authentication cache's parts in one process (docs/auth-cache.md): the key, what may be
remembered of PAM's answer, the table's LRU and TTLs, and the cache process's request handling
over a real socket pair. With the real server: tests/system/test_auth_cache.py."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from qpopper.auth import pam as pam_auth
from qpopper.auth import password_cache
from qpopper.server import auth_cache
from qpopper.server import monitor_wire as wire

ASKED_AT_NS = 123
"""When PAM was asked (time.monotonic_ns(), as pam_or_cached passes it)."""


def test_the_key_depends_on_every_part_and_the_salt():
    salt = password_cache.new_salt()
    base = ("pop3", "maida", 1001, "pw")
    key = password_cache.derive_key(salt, *base)
    assert len(key) == password_cache.KEY_OCTETS
    assert password_cache.derive_key(salt, *base) == key
    for changed in (("pop3x", "maida", 1001, "pw"), ("pop3", "maidb", 1001, "pw"),
                    ("pop3", "maida", 1002, "pw"), ("pop3", "maida", None, "pw"),
                    ("pop3", "maida", 1001, "pw2"), ("pop", "3maida", 1001, "pw"),
                    ("pop3", "maida", 1001, "pw", b"$y$j9T$other\x0020000")):
        assert password_cache.derive_key(salt, *changed) != key
    assert password_cache.derive_key(password_cache.new_salt(), *base) != key


def test_only_the_password_steps_own_yes_and_wrong_password_are_remembered():
    result = pam_auth.PamResult
    replay = password_cache.Replay
    # right: nothing else (a refusal after it asks PAM whole: nothing of it is replayed)
    right = password_cache.verdict_of(result(True, 0, "", password_code=0, fail_delay_s=0.5,
                                             password_step_s=0.0472104))
    assert right == "right" and password_cache.is_right(right)
    assert not password_cache.is_right("7 500000 47210")
    # the password was right, the account expired: the password is still right
    assert password_cache.is_right(password_cache.verdict_of(
        result(False, pam_auth.PAM_ACCT_EXPIRED, "", password_code=0)))
    wrong = pam_auth.python_pam.PAM_AUTH_ERR
    # with the base of the failure delay libpam drew and the step's time: the step waited
    # again, the delay drawn again from the base
    verdict = password_cache.verdict_of(result(False, wrong, "", password_code=wrong,
                                                fail_delay_s=1.4236, password_step_s=0.05,
                                                fail_delay_base_us=2_000_000))
    assert verdict == f"{wrong} 2000000 50000"
    assert password_cache.remembered_refusal(verdict) == (wrong, replay(0.05, 2_000_000))
    # nor a step longer than a replay may wait (it would be replayed shorter)
    assert password_cache.verdict_of(result(
        False, wrong, "", password_code=wrong, fail_delay_base_us=2_000_000,
        password_step_s=password_cache.MAX_REMEMBERED_STEP_S + 0.5)) is None
    # a delay whose base libpam's draw does not give is not remembered
    assert password_cache.verdict_of(result(False, wrong, "", password_code=wrong,
                                            fail_delay_s=1.4236)) is None
    assert not password_cache.is_right(verdict)
    for code in (pam_auth.python_pam.PAM_SYSTEM_ERR, pam_auth.PAM_MAXTRIES,
                 pam_auth.python_pam.PAM_AUTHINFO_UNAVAIL):
        assert password_cache.verdict_of(result(False, code, "", password_code=code)) is None
    # the step never ran
    assert password_cache.verdict_of(result(True, 0, "")) is None
    # times that are no times are remembered as none
    assert password_cache.verdict_of(result(False, wrong, "", password_code=wrong,
                                            fail_delay_s=float("nan"), password_step_s=-1.0,
                                            fail_delay_base_us=0)) == f"{wrong} 0 0"


def test_a_remembered_verdict_waits_at_most_its_caps():
    """A corrupt verdict cannot make a hit wait unboundedly: each time has its cap."""
    wrong = pam_auth.python_pam.PAM_AUTH_ERR
    huge = "9" * 20
    caps = password_cache.Replay(password_cache.MAX_REMEMBERED_STEP_S,
                                 int(password_cache.MAX_REMEMBERED_DELAY_S * 1e6))
    assert password_cache.remembered_refusal(f"{wrong} {huge} {huge}") == (wrong, caps)
    assert password_cache.remembered_refusal(f"{wrong} 0 0") == (
        wrong, password_cache.Replay(0.0, 0))


def test_a_verdict_not_in_its_form_is_a_miss():
    """What parsing does not understand, e.g. a verdict of the format before the password
    step's time was kept ("right 0.500 <ns>", "7 1.424"), or a corrupt one, is no verdict:
    PAM is asked, and nothing raises."""
    wrong = pam_auth.python_pam.PAM_AUTH_ERR
    for odd in ("right 0.500 123", "right 500000 123",
                "right 500000 47000 123 4", "right 500000 47000 \u00b2",
                "right 500000 47000 " + "9" * 5000, "right 0.5 47000 123",
                "right -1 47000 123", "right 500000 nan 123", "right  500000 47000",
                "Right 500000 47000 123", "right 500000 47000 123\n", "", None):
        assert not password_cache.is_right(odd), odd
        assert password_cache.remembered_refusal(odd) is None, odd
    for odd in (str(wrong), f"{wrong} 1.424", f"{wrong} 1424000", f"{wrong} 1e9 0",
                f"{wrong} nan 0", f"{wrong} 1424000 x", f"{wrong} 1424000 47000 9",
                f"{wrong} +1 0", f"{wrong} 1424000  ", "4 1424000 47000",
                "\u00b2 1424000 47000", f"{wrong} \u00b2 0", f" {wrong} 1 1",
                f"{wrong} 1 " + "9" * 21):
        assert password_cache.remembered_refusal(odd) is None, odd
        assert not password_cache.is_right(odd), odd


def test_the_table_forgets_the_least_recently_used_and_what_expired():
    table = auth_cache.CacheTable(size=2, ttl_s=10, negative_ttl_s=1)
    s = auth_cache.NS_PER_S
    table.put(b"a", password_cache.RIGHT, 0, 0)
    table.put(b"b", "7", 0, 0)
    assert table.get(b"a", s) == password_cache.RIGHT            # a is now the most recent
    table.put(b"c", password_cache.RIGHT, s, s)
    assert table.get(b"b", s) is None                            # b went first
    assert table.get(b"a", 9 * s) == password_cache.RIGHT
    assert table.get(b"a", 10 * s) is None                       # 10 s after PAM was asked
    table.put(b"d", "7", 20 * s, 20 * s)
    assert table.get(b"d", 21 * s) is None                       # the negative TTL
    off = auth_cache.CacheTable(size=2, ttl_s=10, negative_ttl_s=0)
    off.put(b"e", "7", 0, 0)
    assert off.entries == {}
    # an entry lives from when PAM was asked, never from a later moment
    table.put(b"f", password_cache.RIGHT, 50 * s, 30 * s)
    assert table.get(b"f", 40 * s) is None
    # only the verdict "right" lives the positive TTL: anything else the negative one
    table.put(b"g", "right 500000 47000 100", 100 * s, 100 * s)
    assert table.get(b"g", 101 * s) is None


def test_the_cache_process_answers_only_its_generation():
    """Over a real socket pair, as a monitor would ask: a store of another generation (a
    monitor forked before the last HUP) is ignored, and so is its lookup."""
    requests, serving = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    table = auth_cache.CacheTable(size=10, ttl_s=60, negative_ttl_s=60)
    now = time.monotonic_ns()
    old = password_cache.PasswordCache(requests.fileno(), b"s" * 32, generation=0)
    new = password_cache.PasswordCache(requests.fileno(), b"s" * 32, generation=1)
    try:
        old.remember(b"k" * 32, password_cache.RIGHT, now)
        auth_cache._answer_one(serving, table, 1)
        assert table.entries == {}
        new.remember(b"k" * 32, password_cache.RIGHT, now)
        auth_cache._answer_one(serving, table, 1)
        assert list(table.entries) == [b"k" * 32]
        for handle, expected in ((new, password_cache.RIGHT), (old, None)):
            answer = {}

            def ask(handle=handle):
                answer["verdict"] = handle.lookup(b"k" * 32)
            asker = threading.Thread(target=ask)
            asker.start()
            auth_cache._answer_one(serving, table, 1)
            asker.join(10)
            assert answer["verdict"] == expected
    finally:
        requests.close()
        serving.close()


def test_the_wire_keeps_cache_frames_out_of_the_pre_login_requests():
    assert not wire.CACHE_REQUESTS & wire.REQUESTS
    frame = wire.encode(wire.Kind.CACHE_LOOKUP, "0", b"k" * 32)
    with pytest.raises(wire.FrameError):
        wire.decode(frame, wire.REQUESTS)


def test_the_cache_process_survives_what_it_cannot_use():
    """Garbage, a pre-login frame, a lookup without an answer socket, a store with one, and a
    descriptor that is no socket: nothing is stored, nothing answered, and only the last one
    is an error (OSError: serve() goes on with the next request)."""
    requests, serving = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    table = auth_cache.CacheTable(size=10, ttl_s=60, negative_ttl_s=60)
    store = wire.encode(wire.Kind.CACHE_STORE, "0", b"k" * 32, password_cache.RIGHT, "1")
    answer_end, kept = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pipe_r, pipe_w = os.pipe()
    try:
        unusable = ((b"\xff\x00garbage", []),
                    (wire.encode(wire.Kind.APOP, "u", "d", "h"), []),
                    (wire.encode(wire.Kind.CACHE_LOOKUP, "0", b"k" * 32), []),
                    (store, [answer_end.fileno()]))
        for data, fds in unusable:
            socket.send_fds(requests, [data], fds)
            auth_cache._answer_one(serving, table, 0)
        assert table.entries == {}
        kept.setblocking(False)
        with pytest.raises(BlockingIOError):
            kept.recv(100)                       # no answer went to the store's socket
        socket.send_fds(requests, [wire.encode(wire.Kind.CACHE_LOOKUP, "0", b"k" * 32)],
                        [pipe_r])
        with pytest.raises(OSError):
            auth_cache._answer_one(serving, table, 0)
    finally:
        for sock in (requests, serving, answer_end, kept):
            sock.close()
        os.close(pipe_r)
        os.close(pipe_w)


def _lock_in_verdict(master_of) -> str:
    """Fork a process that calls _lock_in with the master `master_of(parent)` names, where
    `parent` is its real parent's pid; what it did: "stop" or "went on"."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        verdict = b"went on"
        try:
            os.close(read_end)
            try:
                auth_cache._lock_in(lambda *args: None, master_of(os.getppid()))
            except auth_cache.Stop:
                verdict = b"stop"
            os.write(write_end, verdict)
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        os.waitpid(pid, 0)
        with os.fdopen(read_end, "rb") as f:
            return f.read().decode()
    except BaseException:
        os.close(read_end)
        raise


def test_the_cache_process_ends_when_its_master_went_before_the_death_signal():
    """The master dying between the fork and the parent-death signal would leave the cache
    process running, reparented: it stops instead. With its master there it goes on."""
    assert _lock_in_verdict(lambda parent: parent) == "went on"
    assert _lock_in_verdict(lambda parent: parent + 1) == "stop"


def test_libpam_s_draw_is_worked_back_to_its_base_and_drawn_again():
    """auth/pam_delay.py: libpam 1.5's failure delay is the base times a jitter of the
    wall-clock second; a base in whole milliseconds is recovered from its draw and gives
    each second's draw."""
    import random
    from qpopper.auth import pam_delay
    rng = random.Random(7)
    for _ in range(5000):
        second, base = rng.randrange(1, 2 ** 33), rng.randrange(1, 60_000) * 1000
        drawn = pam_delay.drawn_delay_us(second, base)
        assert 0.5 * base - 1 <= drawn <= 1.5 * base
        assert pam_delay.base_of(drawn, (second,)) == base
    assert pam_delay.base_of(0, (5,)) == 0


LIBPAM_DRAWS = [(1765000028, 2_000_000, 1749916), (1765000037, 2_000_000, 1985498),
                (1765000056, 2_000_000, 1258920), (1765000056, 400_000, 251784),
                (1765000815, 400_000, 358020)]
"""(second, base µs, delay µs) as Linux-PAM 1.5.2's _pam_compute_delay computes it, compiled
with gcc -O2 on x86_64 (review 135: sum = (sum/3.)/1e6 - .5; ans = base*(1.+sum))."""


def test_the_redraw_is_libpam_s_to_the_microsecond():
    from qpopper.auth import pam_delay
    for second, base, drawn in LIBPAM_DRAWS:
        assert pam_delay.drawn_delay_us(second, base) == drawn, (second, base)


def test_a_draw_of_another_second_or_another_libpam_is_seldom_worked_back():
    """A second that turned between qpopper's reading of the clock and libpam's, or a libpam
    that draws with getrandom (1.6 and later, which draws_from_the_second also tells): the
    delay is taken for a base only by chance, seldom (review 135: 1880 of 2000 before)."""
    import random
    from qpopper.auth import pam_delay
    rng = random.Random(135)
    wrongly_taken = 0
    for _ in range(1000):
        second = rng.randrange(1_700_000_000, 1_800_000_000)
        other_seconds = pam_delay.drawn_delay_us(second - 1, 2_000_000)
        total = sum((rng.getrandbits(32) // 10) % 1_000_000 for _ in range(3))
        random_draw = int(2_000_000 * (1.0 + ((total / 3.0) / 1e6 - 0.5)))
        for drawn in (other_seconds, random_draw):
            if pam_delay.base_of(drawn, (second,)) not in (None, 2_000_000):
                wrongly_taken += 1
    assert wrongly_taken < 20, wrongly_taken


def test_only_an_account_step_that_ran_is_given_again(monkeypatch):
    """After a hit whose account check did not let the user in, PAM is asked whole with the
    account step's answer given again, not asked twice; but a check whose pam_start failed
    (no account step ran: a stack being rewritten, no memory) gave no answer of the account
    step's, and PAM is asked whole as it is (review 136)."""
    given = []

    def authenticate(service, user, password, rhost, *, check_password_expired,
                     account_answer=None):
        given.append(account_answer)
        return pam_auth.PamResult(False, pam_auth.python_pam.PAM_ACCT_EXPIRED, "x",
                                  password_code=0)

    class Remembered:
        salt = b"s" * 32

        def lookup(self, key):
            return password_cache.RIGHT

        def remember(self, key, verdict, asked_at):
            pass
    monkeypatch.setattr(pam_auth, "authenticate", authenticate)
    monkeypatch.setattr(password_cache, "shadow_stamp", lambda user: b"")
    for ran, expected in ((True, pam_auth.python_pam.PAM_ACCT_EXPIRED),
                          (False, None)):
        monkeypatch.setattr(pam_auth, "check_account", lambda *a, **k: pam_auth.PamResult(
            False, pam_auth.python_pam.PAM_ACCT_EXPIRED if ran else pam_auth.python_pam.PAM_ABORT,
            "y", account_step_ran=ran))
        given.clear()
        password_cache.pam_or_cached(Remembered(), "pop3", "qptx", 1001, "pw", "127.0.0.1",
                                     check_password_expired=True)
        assert given == [expected], (ran, given)
