"""Two masters as two hosts (tests/helpers/twohosts.py: network and UTS namespaces of their own,
joined by a veth pair) serving one shared spool directory, each with docs/scale-out.md's
qpopper.config lines (no-atomic-open, a proxy-protocol listener on port 110: the clients
play the balancer from the other host's address).

1,000 randomized sessions from several client threads, with deliveries by dotlockfile and
procmail's lockfile racing them, must end with every message exactly once (deleted, or in
the mailbox) and never two sessions owning one mailbox at once; kill -9 of a host's master
and its session in the middle of an update must lose nothing."""

from __future__ import annotations

import contextlib
import os
import poplib
import random
import re
import shutil
import signal
import subprocess
import threading
import time

import pytest

from qpopper import proxy_protocol
from tests.helpers import twohosts
from tests.helpers.sysusers import make_spool
from tests.helpers.scaleout_recipe import snippet
from tests.server_harness import POPPER, SyslogCapture, prelogin_args, write_config

pytestmark = pytest.mark.timeout(900)

SESSIONS = int(os.environ.get('QPT_SESSIONS', 1000))
CLIENT_THREADS = 4
USERS = 3
INITIAL_MESSAGES = 5
POP_PORT = 110
SESSIONS_DEADLINE_S = 600           # a bound on the run, not a measurement
MESSAGE_ID_RE = re.compile(rb"^Message-ID: <(m\d+)@scaleout>$", re.M)


class HostPOP3(poplib.POP3):
    """poplib over a socket made on the client's host, behind a v2 PROXY header naming the
    client (the client plays the balancer, as the trusted peer)."""

    def __init__(self, namespace: str, address: str, client_ip: str):
        self._namespace, self._client_ip = namespace, client_ip
        try:
            super().__init__(address, POP_PORT, timeout=60)
        except BaseException:
            for part in (getattr(self, "file", None), getattr(self, "sock", None)):
                if part is not None:     # poplib leaves the socket open when the welcome fails
                    part.close()
            raise

    def _create_socket(self, timeout):
        sock = twohosts.socket_on(self._namespace)
        try:
            sock.settimeout(timeout)
            sock.connect((self.host, self.port))
            sock.sendall(proxy_protocol.make_v2(self._client_ip, 40000, self.host, self.port))
        except BaseException:
            sock.close()
            raise
        return sock


class Host:
    """One host's master: started with docs/scale-out.md's lines, on the shared spool."""

    def __init__(self, name, namespace, address, peer_address, root, spool, pam_service,
                 syslog):
        self.name, self.namespace, self.address = name, namespace, address
        self.config = os.path.join(root, f"host-{name}.config")
        write_config(self.config, pam_service=pam_service, timeout=60, auth_failure_delay=0,
                     reverse_lookup=False, log_login='POP login by "%1" at %3',
                     auth_brakes_file=os.path.join(root, f"brakes-{name}.sqlite"))
        with open(self.config, "a") as f:
            f.write(snippet("qpopper.config", LISTEN=f"{address}:{POP_PORT}",
                            BALANCER=peer_address, SPOOL=spool))
        self.syslog = syslog
        self.stderr_path = os.path.join(root, f"host-{name}.stderr")
        self.proc = None
        self.client_namespace = None      # the other host's: set by the fixture

    def start(self, env=None) -> "Host":
        argv = twohosts.on_host(self.namespace, f"host-{self.name}",
                                [POPPER, f"{self.address}:{POP_PORT}", "-f", self.config,
                                 *prelogin_args()])
        environ = dict(os.environ, QPOPPER_SYSLOG_SOCKET=self.syslog.path, **(env or {}))
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(argv, env=environ, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err,
                                         start_new_session=True)
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"host-{self.name} exited: " + open(self.stderr_path).read())
            try:
                HostPOP3(self.client_namespace, self.address, "192.0.2.1").quit()
                return self
            except (OSError, poplib.error_proto):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def processes(self) -> list[int]:
        from tests.server_harness import descendants_of
        return descendants_of(self.proc.pid)

    def kill9(self) -> None:
        """kill -9 of the master and every process of its connections."""
        pids = [self.proc.pid, *self.processes()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill9()


@pytest.fixture
def cluster(world_tmp, system_users, pam_service):
    for tool in ("dotlockfile", "lockfile"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (liblockfile-bin, procmail: make test installs them)")
    try:
        context = twohosts.two_hosts()
        hosts_info = context.__enter__()
    except PermissionError as exc:
        pytest.skip(str(exc))
    syslog = SyslogCapture(world_tmp)
    spool = os.path.join(world_tmp, "spool")
    os.mkdir(spool)
    os.chown(spool, 0, __import__("grp").getgrnam("mail").gr_gid)
    os.chmod(spool, 0o2775)
    users = [system_users.create(password=f"Pw-{n}-scaleout") for n in range(USERS)]
    delivery = Delivery(spool)
    for user in users:
        make_spool(spool, user)
        for _ in range(INITIAL_MESSAGES):
            delivery.deliver(user.name)
    (ns_a, addr_a), (ns_b, addr_b) = hosts_info["a"], hosts_info["b"]
    hosts = {"a": Host("a", ns_a, addr_a, addr_b, world_tmp, spool, pam_service, syslog),
             "b": Host("b", ns_b, addr_b, addr_a, world_tmp, spool, pam_service, syslog)}
    hosts["a"].client_namespace, hosts["b"].client_namespace = ns_b, ns_a
    try:
        for host in hosts.values():
            host.start()
        yield dict(hosts=hosts, users=users, delivery=delivery, spool=spool, syslog=syslog,
                   root=world_tmp)
    finally:
        for host in hosts.values():
            host.stop()
        syslog.close()
        context.__exit__(None, None, None)


class Delivery:
    """Messages with unique ids appended under the dot-lock of a real delivery agent's tool
    (dotlockfile -p, or procmail's lockfile, alternately), then fcntl, as Debian's MDAs do."""

    def __init__(self, spool: str):
        self.spool = spool
        self.delivered: dict[str, set[str]] = {}
        self._next = 0
        self._lock = threading.Lock()

    def deliver(self, user: str, rng=random, tool: str | None = None) -> str:
        """`tool`: "dotlockfile" or "lockfile"; by default each in turn."""
        with self._lock:
            self._next += 1
            message_id = f"m{self._next}"
        lock = os.path.join(self.spool, f"{user}.lock")
        dotlockfile = tool == "dotlockfile" if tool else self._next % 2 == 0
        take = (["dotlockfile", "-l", "-p", "-r", "0", lock] if dotlockfile
                else ["lockfile", "-r", "0", "-l", "300", lock])
        deadline = time.monotonic() + 120
        while subprocess.run(take, capture_output=True, timeout=30).returncode != 0:
            assert time.monotonic() < deadline, f"{user}'s dot-lock never free"
            time.sleep(rng.uniform(0.005, 0.03))
        try:
            import fcntl
            fd = os.open(os.path.join(self.spool, user), os.O_WRONLY | os.O_APPEND)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX)
                os.write(fd, (f"From mda@example.org Sat Dec  5 21:00:00 2026\n"
                              f"Message-ID: <{message_id}@scaleout>\nSubject: {message_id}\n\n"
                              f"body of {message_id}\n\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            if dotlockfile:
                subprocess.run(["dotlockfile", "-u", lock], check=True, timeout=30)
            else:
                os.unlink(lock)
        with self._lock:
            self.delivered.setdefault(user, set()).add(message_id)
        return message_id


class Ledger:
    """What the clients saw: ids deleted by a session that ended (QUIT said +OK, or the
    client left and update-on-abort committed), the intervals in
    which a client knew it owned a mailbox, the refusals."""

    def __init__(self):
        self.lock = threading.Lock()
        self.deleted: dict[str, list[str]] = {}
        self.owned: dict[str, list[tuple[float, float, str]]] = {}
        self.refusals: dict[str, int] = {}
        self.refusal_texts: set[str] = set()
        self.sessions = 0
        self.errors: list[str] = []

    def count(self, what: str, text: str) -> None:
        with self.lock:
            self.refusals[what] = self.refusals.get(what, 0) + 1
            self.refusal_texts.add(text)


def one_session(host: Host, user, ledger: Ledger, rng: random.Random) -> None:
    client = HostPOP3(host.client_namespace, host.address,
                      f"198.51.100.{rng.randrange(1, 50)}")
    try:
        client.user(user.name)
        try:
            client.pass_(user.password)
        except poplib.error_proto as refusal:
            text = refusal.args[0]
            text = text.decode(errors="replace") if isinstance(text, bytes) else text
            code = re.match(r"-ERR \[([A-Z/-]+)\]", text)
            ledger.count(code[1] if code else text, text)
            return
        owned_from = time.monotonic()          # the PASS +OK has arrived: we own it now
        count = client.stat()[0]
        to_delete = rng.sample(range(1, count + 1), k=min(count, rng.randrange(0, 4)))
        ids = []
        for n in to_delete:
            found = MESSAGE_ID_RE.search(b"\n".join(client.retr(n)[1]))
            assert found, f"message {n} of {user.name} has no id"
            ids.append(found[1].decode())
            client.dele(n)
        time.sleep(rng.uniform(0, 0.02))       # hold the mailbox a little: contention
        owned_until = time.monotonic()         # from here on QUIT may release it
        with ledger.lock:
            ledger.owned.setdefault(user.name, []).append((owned_from, owned_until, host.name))
        if rng.random() < 0.2:
            # a client that vanishes: update-on-abort (Qpopper's default) commits its
            # deletions as QUIT would
            client.close()
        else:
            client.quit()
        with ledger.lock:
            ledger.deleted.setdefault(user.name, []).extend(ids)
    finally:
        client.close()


def fetch_ids(host: Host, user) -> list[str]:
    client = HostPOP3(host.client_namespace, host.address, "192.0.2.9")
    try:
        client.user(user.name)
        client.pass_(user.password)
        ids = []
        for n in range(1, client.stat()[0] + 1):
            found = MESSAGE_ID_RE.search(b"\n".join(client.retr(n)[1]))
            ids.append(found[1].decode())
        client.quit()
        return ids
    finally:
        client.close()


def check_exactly_once(cluster, ledger: Ledger, crashed_deletions=()) -> None:
    host = cluster["hosts"]["a"]
    for user in cluster["users"]:
        delivered = cluster["delivery"].delivered[user.name]
        deleted = ledger.deleted.get(user.name, [])
        remaining = fetch_ids(host, user)
        assert len(deleted) == len(set(deleted)), f"{user.name}: a message deleted twice"
        assert len(remaining) == len(set(remaining)), f"{user.name}: a message twice"
        assert not set(deleted) & set(remaining), f"{user.name}: deleted yet still there"
        unknown = (set(deleted) | set(remaining)) - delivered
        assert not unknown, f"{user.name}: never delivered: {unknown}"
        lost = delivered - set(deleted) - set(remaining) - set(crashed_deletions)
        assert not lost, f"{user.name}: lost {sorted(lost)}"


def test_randomized_sessions_and_deliveries_across_two_hosts(cluster):
    hosts, users, delivery = cluster["hosts"], cluster["users"], cluster["delivery"]
    ledger = Ledger()
    started = [0]
    counter = threading.Lock()
    stop_deliveries = threading.Event()
    deadline = time.monotonic() + SESSIONS_DEADLINE_S

    def client_thread(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            with counter:
                if started[0] >= SESSIONS:
                    return
                started[0] += 1
            try:
                one_session(hosts[rng.choice("ab")], rng.choice(users), ledger, rng)
                with ledger.lock:
                    ledger.sessions += 1
            except Exception as exc:          # noted; the test fails on it below
                with ledger.lock:
                    ledger.errors.append(f"{type(exc).__name__}: {exc}")

    def delivery_thread() -> None:
        rng = random.Random(99)
        while not stop_deliveries.is_set():
            delivery.deliver(rng.choice(users).name, rng)
            time.sleep(rng.uniform(0, 0.05))

    clients = [threading.Thread(target=client_thread, args=(seed,)) for seed in
               range(CLIENT_THREADS)]
    deliverer = threading.Thread(target=delivery_thread)
    deliverer.start()
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    stop_deliveries.set()
    deliverer.join()

    assert not ledger.errors, ledger.errors[:5]
    assert ledger.sessions == SESSIONS, f"only {ledger.sessions} sessions before the deadline"
    # contention did happen across the hosts: refused with [IN-USE] while another owned it
    assert ledger.refusals.get("IN-USE", 0) > 0, ledger.refusals
    if not set(ledger.refusals) <= {"IN-USE", "SYS/TEMP"}:
        problems = [text for priority, _, text in cluster["syslog"].records
                    if priority & 7 <= 4]          # warning and worse: what the hosts said
        pytest.fail(f"refusals {ledger.refusals}: {sorted(ledger.refusal_texts)}; "
                    f"the hosts logged: {problems[-20:]}")
    for user, intervals in ledger.owned.items():
        intervals.sort()
        for (start, end, host), (next_start, _, next_host) in zip(intervals, intervals[1:]):
            assert next_start >= end, (f"{user}: sessions on host-{host} and host-{next_host} "
                                       f"owned the mailbox at once")
    assert {host for i in ledger.owned.values() for _, _, host in i} == {"a", "b"}
    check_exactly_once(cluster, ledger)


def update_steps(cluster, user) -> list[str]:
    """The maildrop steps of one QUIT on host b (its test-only step log)."""
    host = cluster["hosts"]["b"]
    log = os.path.join(cluster["root"], "steps")
    with open(log, "w"):
        pass
    os.chmod(log, 0o666)
    host.stop()
    host.start(env={"QPOPPER_TEST_STEP_LOG": log})
    client = HostPOP3(host.client_namespace, host.address, "192.0.2.7")
    client.user(user.name)
    client.pass_(user.password)
    client.dele(1)
    client.quit()
    host.stop()
    with open(log) as f:
        return [line.strip() for line in f if line.startswith("update:")]


def test_kill_9_of_a_host_mid_update_loses_nothing(cluster):
    hosts, users, delivery = cluster["hosts"], cluster["users"], cluster["delivery"]
    user = users[0]
    ledger = Ledger()
    first = fetch_ids(hosts["b"], user)
    steps = update_steps(cluster, user)
    deleted_by_steps_run = set(first) - set(fetch_ids(hosts["a"], user))
    ledger.deleted[user.name] = sorted(deleted_by_steps_run)
    assert len(steps) >= 3, steps
    crash_at = steps[len(steps) // 2]             # in the middle of the update
    b = hosts["b"]
    b.start(env={"QPOPPER_TEST_CRASH_AT": crash_at})
    client = HostPOP3(b.client_namespace, b.address, "192.0.2.8")
    client.user(user.name)
    client.pass_(user.password)
    doomed = []
    for n in (1, 2):
        doomed.append(MESSAGE_ID_RE.search(b"\n".join(client.retr(n)[1]))[1].decode())
        client.dele(n)
    with pytest.raises((poplib.error_proto, OSError, EOFError)):
        client.quit()                          # the session SIGKILLs itself at `crash_at`
    client.close()
    b.kill9()                                  # and its master with it
    # dotlockfile -p breaks the dead session's lock (its pid is gone) and delivers; then
    # the other host either recovers the crashed update itself or refuses safely
    late = delivery.deliver(user.name, tool="dotlockfile")
    other = HostPOP3(hosts["a"].client_namespace, hosts["a"].address, "192.0.2.10")
    try:
        other.user(user.name)
        try:
            other.pass_(user.password)
            other.quit()
        except poplib.error_proto as refusal:
            assert re.match(rb"-ERR \[(SYS/TEMP|IN-USE)\]", refusal.args[0]), refusal
    finally:
        other.close()
    b.start()                                  # host b comes back
    check_exactly_once(cluster, ledger, crashed_deletions=doomed)
    assert late in fetch_ids(hosts["b"], user)
