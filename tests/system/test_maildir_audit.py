"""An adversarial audit of Maildir serving on the real master: odd files in new/ and cur/,
byte-exact RETR/TOP, UPDATE against other programs (docs/maildir.md)."""

from __future__ import annotations

import os
import socket
import time

import pytest

from qpopper.spool import maildir
from tests.server_harness import Site

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]


@pytest.fixture
def site(world_tmp, pam_service):
    s = Site(world_tmp, pam_service, maildir="~/Maildir")
    yield s
    s.close()


@pytest.fixture
def user(system_users):
    user = system_users.create()
    os.chmod(user.home, 0o711)
    box = os.path.join(user.home, "Maildir")
    for sub in ("", "cur", "new", "tmp"):
        os.mkdir(os.path.join(box, sub), 0o700)
        os.chown(os.path.join(box, sub), user.uid, user.gid)
    return user


_SEQ = [0]


def deliver(user, data: bytes, name: str | None = None, sub: str = "new",
            owner=None, age: float = 60) -> str:
    """The Maildir protocol by hand: written in tmp/, renamed into `sub`/."""
    _SEQ[0] += 1
    box = os.path.join(user.home, "Maildir")
    name = name or f"{int(time.time()) - 100 + _SEQ[0]}.M{_SEQ[0]}P{os.getpid()}.audit"
    tmp = os.path.join(box, "tmp", f"t{_SEQ[0]}")
    with open(tmp, "wb") as f:
        f.write(data)
    uid, gid = owner if owner is not None else (user.uid, user.gid)
    os.chown(tmp, uid, gid)
    when = time.time() - age
    os.utime(tmp, (when, when))
    os.rename(tmp, os.path.join(box, sub, name))
    return f"{sub}/{name}"


def listing(user) -> dict[str, bytes]:
    box = os.path.join(user.home, "Maildir")
    out = {}
    for sub in ("new", "cur"):
        for name in os.listdir(os.path.join(box, sub)):
            p = os.path.join(box, sub, name)
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as f:
                    out[f"{sub}/{name}"] = f.read()
    return out


class Raw:
    """A byte-exact POP3 client."""

    def __init__(self, server, user):
        self.sock = socket.create_connection((server.host, server.port), timeout=20)
        self.f = self.sock.makefile("rb")
        self.line()
        assert self.cmd(f"USER {user.name}").startswith(b"+OK")
        self.greeting = self.cmd(f"PASS {user.password}")

    def line(self) -> bytes:
        return self.f.readline()

    def cmd(self, text: str) -> bytes:
        self.sock.sendall(text.encode() + b"\r\n")
        return self.line()

    def multi(self, text: str) -> tuple[bytes, bytes]:
        status = self.cmd(text)
        if not status.startswith(b"+OK"):
            return status, b""
        body = []
        while True:
            line = self.line()
            assert line, "connection closed in a multi-line reply"
            if line == b".\r\n":
                return status, b"".join(body)
            body.append(line)

    def close(self):
        self.f.close()
        self.sock.close()


def expected_wire(data: bytes) -> bytes:
    """What RETR must send for a file's bytes (before the terminator)."""
    if data.endswith(b"\r"):            # the CR is the CR of the CRLF (docs/maildir.md)
        data = data[:-1] + b"\n"
    text = data.replace(b"\r\n", b"\n")
    if text and not text.endswith(b"\n"):
        text += b"\n"
    lines = [(b"." + line if line.startswith(b".") else line) for line in text.split(b"\n")[:-1]]
    return b"".join(line.replace(b"\0", b" ") + b"\r\n" for line in lines)



def expected_top(data: bytes, n: int) -> bytes:
    """TOP's data: the header, its empty line (LF or CRLF alone) and n lines more."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
        ends = [True] * len(lines)
    else:
        ends = [True] * (len(lines) - 1) + [False]
    out, body = [], None
    for line, ended in zip(lines, ends):
        if body is not None:
            if body == n:
                break
            body += 1
        out.append(line + (b"\n" if ended else b""))
        if body is None and line in (b"", b"\r"):
            body = 0
    return expected_wire(b"".join(out))


ODD = [
    b"",
    b"no header no newline",
    b"Subject: x\n\nno final newline",
    b"Subject: crlf\r\nX: y\r\n\r\nbody\r\n.\r\n..two\r\nend\r\n",
    b"Subject: bare cr\rinside\n\nbody\rcr\n\r\n.\n",
    b"Subject: nul\0here\n\n\0\0\n",
    b"Subject: ends in cr\n\nbody\r",
    b"\n\nempty header\n",
    b"\r\n\r\nempty crlf header\r\n",
    b".\n.\n..\n.\r\n",
    b"Subject: mixed\n\r\nbody after crlf empty\n\nmore\n",
    b"Subject: long\n\n" + b"x" * 100000 + b"\n.y\n",
    b"Subject: big\r\n\r\n" + b"".join(b".line %d\r\n" % i for i in range(200000)),
    b"Subject: big lf\n\n" + b"".join(b"line %d\r\r\n" % i for i in range(100000)) + b"\r",
]


def test_every_odd_message_comes_out_byte_for_byte_in_retr_top_and_list(site, user):
    names = [deliver(user, data) for data in ODD]
    server = site.server()
    client = Raw(server, user)
    assert client.greeting.startswith(b"+OK"), client.greeting
    status, listed = client.multi("LIST")
    sizes = dict(line.split() for line in listed.decode().splitlines())
    problems = []
    for n, data in enumerate(ODD, 1):
        status, got = client.multi(f"RETR {n}")
        want = expected_wire(data)
        if got != want:
            problems.append(("RETR", n, got[:80], want[:80], len(got), len(want)))
        unstuffed = len(want) - sum(1 for line in want.split(b"\r\n") if line.startswith(b".."))
        if int(sizes[str(n)]) != unstuffed or str(unstuffed).encode() not in status:
            problems.append(("LIST", n, sizes[str(n)], unstuffed, status))
        for lines in (0, 1, 2, 5):
            _, top = client.multi(f"TOP {n} {lines}")
            if top != expected_top(data, lines):
                problems.append(("TOP", n, lines, top[:80], expected_top(data, lines)[:80]))
    assert client.cmd("QUIT").startswith(b"+OK")
    client.close()
    assert not problems, [repr(p)[:300] for p in problems]
    after = {maildir.base_name(name): data for name, data in listing(user).items()}
    assert after == {maildir.base_name(name): data for name, data in zip(names, ODD)}


def uidl(client) -> dict[int, str]:
    status, body = client.multi("UIDL")
    assert status.startswith(b"+OK"), status
    return {int(n): u for n, u in (line.split() for line in body.decode().splitlines())}


def test_odd_names_and_odd_files_keep_their_uids_and_only_deleted_files_go(site, user):
    box = os.path.join(user.home, "Maildir")
    odd_names = [
        "no-info-part",
        "with space and tab\there",
        "1700000000.M1P1.host:2,",
        "1700000001.M2P2.host:2,RS",
        "1700000002.M3P3.host:1,experimental",
        "1700000003.M4P4.host;2,F",
        "1700000004.M5P5.host!2,",
        "x" * 250,
        "1700000005.M6P6.\udcff\udcfename",
        "1700000006.M7P7.host,S=5,W=7",
        "1700000007.M8P8.new\nline",
        "-dash",
        "1700000008.M9P9.ünïcode",
        "1700000009.M10P10.host:2,S:2,S",
    ]
    contents = {}
    for i, name in enumerate(odd_names):
        data = b"Subject: %d\n\nbody %d\n" % (i, i)
        contents[deliver(user, data, name=name, sub="cur" if ":" in name else "new")] = data
    # things that are not messages
    os.mkdir(os.path.join(box, "new", "a-directory"))
    os.symlink("/etc/passwd", os.path.join(box, "new", "1700000010.link"))
    os.mkfifo(os.path.join(box, "cur", "1700000011.fifo:2,"))
    server = site.server()
    client = Raw(server, user)
    assert client.greeting.startswith(b"+OK"), client.greeting
    first = uidl(client)
    assert len(first) == len(odd_names), first
    assert len(set(first.values())) == len(first)
    for n in first:
        status, _ = client.multi(f"RETR {n}")
        assert status.startswith(b"+OK"), (n, status)
    assert client.cmd("QUIT").startswith(b"+OK")
    client.close()
    client = Raw(server, user)
    second = uidl(client)
    assert second == first
    victims = [n for n in second if n % 2]
    for n in victims:
        assert client.cmd(f"DELE {n}").startswith(b"+OK")
    assert client.cmd("QUIT").startswith(b"+OK")
    client.close()
    client = Raw(server, user)
    third = uidl(client)
    assert sorted(third.values()) == sorted(u for n, u in first.items() if n not in victims)
    assert client.cmd("QUIT").startswith(b"+OK")
    client.close()
    assert os.path.isdir(os.path.join(box, "new", "a-directory"))
    assert os.path.islink(os.path.join(box, "new", "1700000010.link"))
    assert os.path.exists(os.path.join(box, "cur", "1700000011.fifo:2,"))
    assert len(listing(user)) == len(odd_names) - len(victims)


def test_a_root_owned_file_new_to_the_index_is_left_out_not_the_whole_maildir(site, user):
    """A restore run as root leaves a root-owned 0600 file in cur/. New to the index, the
    login's measurement (maildir._measure) raised EACCES, which MaildirDrop.open turned into
    `-ERR [SYS/TEMP] Unable to open your Maildir` at every login: none of the user's other
    mail could be fetched. Now it is left out (and logged) and the rest served; once it is
    given back (a chown, which changes no directory) the next login serves it too."""
    deliver(user, b"Subject: mine\n\nbody\n")
    restored = deliver(user, b"Subject: restored\n\nby root\n", sub="cur",
                       name="1600000000.M1P1.host:2,S", owner=(0, 0))
    path = os.path.join(user.home, "Maildir", restored)
    os.chmod(path, 0o600)
    server = site.server()
    for _ in range(2):
        client = Raw(server, user)
        try:
            assert client.greeting.startswith(b"+OK"), client.greeting
            assert uidl(client) == {1: uidl_of_mine(user)}
            _, body = client.multi("RETR 1")
            assert body == b"Subject: mine\r\n\r\nbody\r\n"
            assert client.cmd("QUIT").startswith(b"+OK")
        finally:
            client.close()
    site.syslog.wait_for(r"Maildir .*: cur/1600000000\.M1P1\.host:2,S cannot be read "
                         r"\(Permission denied\); left out until it can")
    os.chown(path, user.uid, user.gid)
    client = Raw(server, user)
    try:
        assert sorted(uidl(client).values()) == sorted(["1600000000.M1P1.host",
                                                       uidl_of_mine(user)])
        _, body = client.multi("RETR 1")
        assert body == b"Subject: restored\r\n\r\nby root\r\n"
        assert client.cmd("QUIT").startswith(b"+OK")
    finally:
        client.close()


def uidl_of_mine(user) -> str:
    [mine] = [maildir.base_name(name) for name in listing(user)
              if not name.startswith("cur/1600000000.")]
    return mine


@pytest.mark.parametrize("data", [
    b"Subject: crlf header\r\n\r\nbody\nX-UIDL: chosen-in-the-body-1\n\nmore\n",
    b"Subject: lf header, crlf empty line\n\r\nX-UIDL: chosen-in-the-body-2\n\nmore\n",
], ids=["crlf-header", "crlf-empty-line"])
def test_an_x_uidl_line_in_the_body_is_not_the_uid(site, user, data):
    """docs/maildir.md, "The header": the header ends at its first empty line, LF alone or
    CR LF, "for TOP, XTND XLST, EUIDL's From and the X-UIDL header alike". TOP ended this
    header where it should, but maildir.first_header_uid took the first LF LF anywhere
    (in the body here) for the header's end before it tried CRLF CRLF, so a line of the
    body chose the message's UID."""
    name = deliver(user, data)
    client = Raw(site.server(), user)
    try:
        assert client.greeting.startswith(b"+OK"), client.greeting
        _, top = client.multi("TOP 1 0")
        assert b"X-UIDL" not in top                      # TOP: not a header line
        assert uidl(client) == {1: maildir.base_name(name)}
        client.cmd("QUIT")
    finally:
        client.close()


def test_a_dele_update_skips_for_a_file_touched_during_the_session_is_not_a_quiet_ok(
        site, user):
    """docs/maildir.md, "UPDATE and crash safety": "a DELE not done must not look done".
    A message whose modification time another program changed during the session (a
    backup tool restoring times, an IMAP server setting the received date, `touch`) is no
    longer "the file measured": MessageFiles.current() says None and MaildirDrop.update()
    leaves the DELE out of the journal without a word, so QUIT answers +OK and the message
    (its UID unchanged) is served again at the next login: a client that deleted it sees it
    come back; one that keeps UIDs never learns the DELE failed."""
    first = deliver(user, b"Subject: one\n\nbody\n")
    deliver(user, b"Subject: two\n\nbody\n")
    server = site.server()
    client = Raw(server, user)
    try:
        before = uidl(client)
        path = os.path.join(user.home, "Maildir", first)
        later = time.time() - 30
        os.utime(path, (later, later))                  # another program touches it
        assert client.cmd("DELE 1").startswith(b"+OK")
        quit_reply = client.cmd("QUIT")
    finally:
        client.close()
    again = Raw(server, user)
    try:
        after = uidl(again)
        again.cmd("QUIT")
    finally:
        again.close()
    # either the DELE is done, or QUIT says it was not (RFC 1939 section 6)
    assert after == {1: before[2]} or quit_reply.startswith(b"-ERR"), (quit_reply, after)


def test_a_huge_message_is_measured_without_holding_it_in_memory(site, user):
    """maildir._measure read a file without `,W=` in its name whole (durable.read_up_to:
    the parts and their join) to count its CRLF octets and find its X-UIDL header: the
    session's peak memory was about twice the largest new message, where RETR streams it in
    limits.COPY_CHUNK_OCTETS parts. procmail, Postfix and maildrop write no `,W=`."""
    from tests.server_harness import processes_of, proc_status
    size = 160 * 1024 * 1024
    box = os.path.join(user.home, "Maildir")
    name = f"{int(time.time()) - 100}.M1P1.huge"
    with open(os.path.join(box, "tmp", name), "wb") as f:
        f.write(b"Subject: huge\n\n")
        line = b"x" * 75 + b"\n"
        chunk = line * (1024 * 1024 // len(line))
        while f.tell() < size:
            f.write(chunk)
    os.chown(os.path.join(box, "tmp", name), user.uid, user.gid)
    os.rename(os.path.join(box, "tmp", name), os.path.join(box, "new", name))
    server = site.server()
    client = Raw(server, user)
    try:
        assert client.greeting.startswith(b"+OK"), client.greeting
        [session] = [pid for pid in processes_of(server, user.uid)]
        peak_kib = int(proc_status(session)["VmHWM"].split()[0])
        client.cmd("QUIT")
    finally:
        client.close()
        os.unlink(os.path.join(box, "new", name))
    assert peak_kib * 1024 < size // 2, f"peak {peak_kib} KiB for a {size >> 20} MiB message"


def test_procmail_deliveries_during_sessions_that_delete_everything_are_each_fetched_once(
        site, user):
    """Debian's procmail delivers 40 messages while sessions log in one after another, RETR
    and DELE every message they see and QUIT: each message is fetched exactly once, byte for
    byte, and the Maildir ends empty (no delivery lost to an UPDATE, none served twice)."""
    import shutil
    import subprocess
    import threading
    if shutil.which("procmail") is None:
        pytest.skip("procmail not installed")
    rc = os.path.join(user.home, ".procmailrc")
    with open(rc, "w") as f:
        f.write(f"DEFAULT={user.home}/Maildir/\nLOGFILE=/dev/null\n")
    os.chown(rc, user.uid, user.gid)
    os.chmod(rc, 0o600)
    sent = [b"From: s@example.org\nSubject: %d\n\n.dot %d\nend\n" % (n, n) for n in range(40)]
    errors = []

    def deliver_all():
        try:
            for data in sent:
                subprocess.run(["procmail", "-d", user.name], input=data, check=True,
                               timeout=30)
        except BaseException as error:              # reported by the test below
            errors.append(error)
    thread = threading.Thread(target=deliver_all)
    server = site.server()
    fetched = []
    thread.start()
    try:
        while thread.is_alive() or listing(user):
            client = Raw(server, user)
            try:
                assert client.greeting.startswith(b"+OK"), client.greeting
                for n in uidl(client):
                    status, body = client.multi(f"RETR {n}")
                    assert status.startswith(b"+OK"), status
                    fetched.append(body)
                    assert client.cmd(f"DELE {n}").startswith(b"+OK")
                assert client.cmd("QUIT").startswith(b"+OK")
            finally:
                client.close()
    finally:
        thread.join()
    assert not errors, errors
    assert sorted(fetched) == sorted(expected_wire(data) for data in sent)
    assert listing(user) == {}


def test_a_dele_is_counted_off_a_maildir_plus_plus_quota(site, user):
    """A Maildir++ quota (Courier maildrop, Dovecot's maildir quota, Postfix's VDA patch)
    keeps the mailbox's size in `maildirsize`: a delivery appends `<octets> 1`, a reader
    that removes a message appends `-<octets> -1`. Were UPDATE to append nothing, the quota
    would not go down by what POP deleted until the file is recalculated (maildrop: only
    once over quota and the file is 15 minutes old), and deliveries could bounce as over
    quota in the meantime (docs/maildir.md, "Maildir++ quotas")."""
    data = b"Subject: counted\n\n" + b"x" * 1000 + b"\n"
    deliver(user, data, name=f"{int(time.time()) - 100}.M1P1.host,S={len(data)}")
    quota = os.path.join(user.home, "Maildir", "maildirsize")
    with open(quota, "w") as f:
        f.write(f"100000S,100C\n{len(data)} 1\n")
    os.chown(quota, user.uid, user.gid)
    client = Raw(site.server(), user)
    try:
        assert client.cmd("DELE 1").startswith(b"+OK")
        assert client.cmd("QUIT").startswith(b"+OK")
    finally:
        client.close()
    assert listing(user) == {}
    with open(quota) as f:
        lines = f.read().splitlines()
    assert sum(int(line.split()[0]) for line in lines[1:]) == 0, lines
    assert lines[-1] == f"-{len(data)} -1"
    assert os.stat(quota).st_uid == user.uid


def test_random_contents_across_chunk_boundaries_come_out_byte_for_byte(site, user):
    """Random messages of CR, LF, dots, NUL and text, some longer than the send's parts
    (limits.COPY_CHUNK_OCTETS) with a CR LF or a header's end at a part's edge: RETR and TOP
    send each as the rule says, and LIST counts what RETR sends."""
    import random
    rng = random.Random(132)
    edge = 64 * 1024
    messages = []
    for n in range(24):
        body = bytes(rng.choice(b"\r\n\n..x\0") for _ in range(rng.randrange(0, 300)))
        if n % 3 == 0:
            pad = b"Subject: %d\n" % n
            pad += b"X: " + b"y" * (edge - len(pad) - 5 - n % 3) + b"\n"
            body = pad + b"\r\n" + body + b"z" * (edge - n) + b"\r\n.\r\n" + body
        messages.append(body)
    for data in messages:
        deliver(user, data)
    client = Raw(site.server(), user)
    problems = []
    try:
        assert client.greeting.startswith(b"+OK"), client.greeting
        sizes = dict(line.split() for line in client.multi("LIST")[1].decode().splitlines())
        for n, data in enumerate(messages, 1):
            _, got = client.multi(f"RETR {n}")
            want = expected_wire(data)
            stuffed = sum(1 for line in want.split(b"\r\n") if line.startswith(b".."))
            if got != want or int(sizes[str(n)]) != len(want) - stuffed:
                problems.append(("RETR", n))
            for lines in (0, 1, 3):
                if client.multi(f"TOP {n} {lines}")[1] != expected_top(data, lines):
                    problems.append(("TOP", n, lines))
        client.cmd("QUIT")
    finally:
        client.close()
    assert not problems, problems


def test_sigkill_at_a_random_moment_of_a_big_update_is_all_or_nothing(site, user):
    """The session is sent SIGKILL from outside at a random moment after its QUIT, in an
    UPDATE that removes 150 messages and marks 20 seen, while procmail-style deliveries go
    on: after the next login every message not deleted is there, byte for byte, and the
    deleted ones are all gone or (killed before the journal's commit) all there."""
    import random
    import signal
    from tests.server_harness import processes_of
    rng = random.Random(7)
    server = site.server()
    box = os.path.join(user.home, "Maildir")
    for round_ in range(6):
        for sub in ("new", "cur"):
            for name in os.listdir(os.path.join(box, sub)):
                os.unlink(os.path.join(box, sub, name))
        contents = {}
        for n in range(300):
            data = b"Subject: %d-%d\n\nbody\n" % (round_, n)
            contents[maildir.base_name(deliver(user, data))] = data
        client = Raw(server, user)
        assert client.greeting.startswith(b"+OK"), client.greeting
        uids = uidl(client)
        deleted = {uids[n] for n in uids if n % 2}
        for n in uids:
            if n % 2:
                client.sock.sendall(b"DELE %d\r\n" % n)
        for n in range(2, 42, 2):
            client.sock.sendall(b"RETR %d\r\n" % n)
        for _ in range(len(deleted) + 20):
            line = client.line()
            if line.startswith(b"+OK") and b"octets" in line:
                while client.line() != b".\r\n":
                    pass
        [session] = processes_of(server, user.uid)
        client.sock.sendall(b"QUIT\r\n")
        time.sleep(rng.random() * 0.03)
        late = deliver(user, b"Subject: during the update %d\n\nx\n" % round_)
        contents[maildir.base_name(late)] = b"Subject: during the update %d\n\nx\n" % round_
        try:
            os.kill(session, signal.SIGKILL)
        except ProcessLookupError:
            pass
        client.close()
        again = Raw(server, user)
        assert again.greeting.startswith(b"+OK"), again.greeting
        after = set(uidl(again).values())
        again.cmd("QUIT")
        again.close()
        files = {maildir.base_name(name): data for name, data in listing(user).items()}
        assert set(files) == after
        kept = set(contents) - deleted
        assert kept <= after, ("lost", kept - after)
        assert after & deleted in (set(), deleted), (round_, len(after & deleted))
        assert all(files[base] == contents[base] for base in after)


def test_skewed_times_on_messages_and_directories_lose_nothing(site, user):
    """Times from a skewed clock: messages dated 1970 and 2100 (an IMAP APPEND's date, a
    delivery host's clock on NFS) and new/ and cur/ dated in the future. Every login lists
    them all with stable UIDs, a delivery after the index was written is seen at once, a DELE
    removes only its file, and a RETR'd message is marked seen without losing the others."""
    box = os.path.join(user.home, "Maildir")
    old = deliver(user, b"Subject: 1970\n\nold\n", age=time.time() - 1)
    future = deliver(user, b"Subject: 2100\n\nfuture\n", age=time.time() - 4102444800)
    for sub in ("new", "cur"):
        os.utime(os.path.join(box, sub), (4102444800, 4102444800))
    server = site.server()
    client = Raw(server, user)
    first = uidl(client)
    client.cmd("QUIT")
    client.close()
    assert sorted(first.values()) == sorted(map(maildir.base_name, (old, future)))
    late = deliver(user, b"Subject: late\n\nafter the index\n", age=0)
    for sub in ("new", "cur"):
        os.utime(os.path.join(box, sub), (4102444800, 4102444800))     # set ahead again
    client = Raw(server, user)
    second = uidl(client)
    assert sorted(second.values()) == sorted(map(maildir.base_name, (old, future, late)))
    by_uid = {u: n for n, u in second.items()}
    client.multi(f"RETR {by_uid[maildir.base_name(old)]}")
    assert client.cmd(f"DELE {by_uid[maildir.base_name(future)]}").startswith(b"+OK")
    assert client.cmd("QUIT").startswith(b"+OK")
    client.close()
    left = listing(user)
    assert sorted(map(maildir.base_name, left)) == sorted(map(maildir.base_name, (old, late)))
    assert f"cur/{maildir.base_name(old)}:2,S" in left


def test_a_delivery_is_seen_when_new_s_time_is_set_back_to_the_indexed_one(site, user):
    """The index is trusted while new/'s and cur/'s (mtime, inode) are what it stamped. A
    directory's mtime can be set back (`rsync -a`/`cp -a` of a restore or migration set it
    to the copy's; `touch -d`; on a file system with one-second times, the clock stepped
    back): a message delivered since was not served until new/ changed again. The
    directory's ctime, which no program can set, tells (it changed with the utime)."""
    box = os.path.join(user.home, "Maildir")
    deliver(user, b"Subject: before\n\nx\n")
    stamped = time.time() - 60
    for sub in ("new", "cur"):
        os.utime(os.path.join(box, sub), (stamped, stamped))
    server = site.server()
    client = Raw(server, user)
    assert len(uidl(client)) == 1
    client.cmd("QUIT")
    client.close()
    deliver(user, b"Subject: after\n\ny\n")
    os.utime(os.path.join(box, "new"), (stamped, stamped))
    client = Raw(server, user)
    try:
        assert len(uidl(client)) == 2
        client.cmd("QUIT")
    finally:
        client.close()


def test_a_fifo_put_at_a_listed_messages_name_is_not_waited_on(site, user):
    """A message listed at login, then replaced by a FIFO of its name (a user's tool, a
    restore of a special file): RETR opened it without O_NONBLOCK, so the session hung in
    open(2) for a writer that never comes, past its idle timeout (PEP 475 retries an open a
    signal interrupts), holding the Maildir's lock: every later login got [IN-USE] until
    someone SIGKILLed it. As for the journal and the index, a FIFO is not waited on."""
    name = deliver(user, b"Subject: soon a fifo\n\nx\n")
    deliver(user, b"Subject: plain\n\ny\n")
    server = site.server()
    client = Raw(server, user)
    try:
        assert client.greeting.startswith(b"+OK"), client.greeting
        path = os.path.join(user.home, "Maildir", name)
        os.unlink(path)
        os.mkfifo(path, 0o600)
        os.chown(path, user.uid, user.gid)
        client.sock.settimeout(10)
        reply = client.cmd("RETR 1")
        assert reply.startswith(b"-ERR"), reply
        _, body = client.multi("RETR 2")
        assert body == b"Subject: plain\r\n\r\ny\r\n"
        assert client.cmd("QUIT").startswith(b"+OK")
    finally:
        client.close()
    again = Raw(server, user)
    try:
        assert again.greeting.startswith(b"+OK"), again.greeting
        again.cmd("QUIT")
    finally:
        again.close()
