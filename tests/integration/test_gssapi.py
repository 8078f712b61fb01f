"""Kerberos (-k / -K) as SASL GSSAPI (RFC 4752), against a real MIT Kerberos KDC that the test
starts on 127.0.0.1 with its own realm, database and keytab; and the start-up refusals when
Kerberos cannot be served."""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.sysusers import is_root, make_spool
from tests.helpers.messages import mbox
from tests.helpers.repo import REPO
from tests.server_harness import POPPER, Site, free_port

pytestmark = pytest.mark.timeout(120)

REALM = "QPT.TEST"
SERVICE = "pop"
HOST = socket.gethostname().lower()
KDC_TOOLS = ("/usr/sbin/krb5kdc", "/usr/sbin/kdb5_util", "/usr/sbin/kadmin.local")

try:
    import gssapi
    from gssapi.raw import acquire_cred_with_password
except ImportError:             # the tests that need it skip with the reason below
    gssapi = None


def popper_refusal(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([POPPER, *args, "--check-config"], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, **(env or {})))


def test_service_name_follows_kerberos_service_and_its_table_default():
    """The manual: kerberos-service defaults to rcmd (pop is a common choice); an unset
    value means that default, never a second one made up in the code."""
    from qpopper.auth.sasl import service_name
    from qpopper.config import Config
    cfg = Config.defaults()
    assert service_name(cfg) == f"rcmd@{HOST}"
    assert service_name(cfg.replace(kerberos_service=None)) == f"rcmd@{HOST}"
    assert service_name(cfg.replace(kerberos_service="pop")) == f"pop@{HOST}"


def test_kerberos_without_a_keytab_is_refused_at_start_up(tmp_path):
    result = popper_refusal("-k", env={"KRB5_KTNAME": str(tmp_path / "none.keytab")})
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    if gssapi is None:
        assert "the python-gssapi module is not installed" in result.stderr
    else:
        assert f"there is no readable keytab {tmp_path / 'none.keytab'}" in result.stderr
    assert result.stderr.startswith("popper: kerberos (-k): Kerberos is served as SASL GSSAPI")


def test_kerberos_without_a_loadable_libkrb5_is_refused_at_start_up(monkeypatch):
    """The principal's account comes from libkrb5 (auth/krb5_names.py), loaded through
    ctypes beside python-gssapi: a system where it does not load would refuse every GSSAPI
    login after the proof. Start-up, reload and --check-config say so in one line instead
    (preflight.check_kerberos, before the keytab: what the system lacks first). Here no
    library name the search tries exists."""
    if gssapi is None:
        pytest.skip("python-gssapi is not installed")
    from qpopper.auth import krb5_names
    from qpopper.config import Config
    from qpopper.server.preflight import PreflightError, check_kerberos
    monkeypatch.setattr(krb5_names, "_library_names", lambda: iter(["libqptnokrb5.so.9"]))
    krb5_names.library.cache_clear()
    try:
        with pytest.raises(PreflightError) as refused:
            check_kerberos(Config.defaults().replace(kerberos=True))
    finally:
        krb5_names.library.cache_clear()
    text = str(refused.value)
    assert "\n" not in text
    assert text.startswith("kerberos (-k): Kerberos is served as SASL GSSAPI, which "
                           "this installation cannot offer: no Kerberos 5 library (libkrb5): "
                           "libqptnokrb5.so.9: "), text


class Kdc:
    """krb5kdc on 127.0.0.1:<free port> for realm QPT.TEST, everything under `root`."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port(udp=True)           # it listens on both
        self.conf = root / "krb5.conf"
        self.kdc_conf = root / "kdc.conf"
        self.keytab = root / "pop.keytab"
        self.map_names()
        self.kdc_conf.write_text(f"""[kdcdefaults]
    kdc_listen = 127.0.0.1:{self.port}
    kdc_tcp_listen = 127.0.0.1:{self.port}
[realms]
    {REALM} = {{
        database_name = {root}/principal
        key_stash_file = {root}/stash
        acl_file = {root}/kadm5.acl
    }}
[logging]
    kdc = FILE:{root}/kdc.log
""")
        self.env = dict(os.environ, KRB5_CONFIG=str(self.conf), KRB5_KDC_PROFILE=str(self.kdc_conf))
        self.proc = None

    def map_names(self, *rules: str):
        """krb5.conf, with `rules` (auth_to_local lines) in the realm's section."""
        mapping = "".join(f"        {rule}\n" for rule in rules)
        self.conf.write_text(f"""[libdefaults]
    default_realm = {REALM}
    dns_canonicalize_hostname = false
    rdns = false
    dns_lookup_kdc = false
    dns_lookup_realm = false
[realms]
    {REALM} = {{
        kdc = 127.0.0.1:{self.port}
{mapping}    }}
[domain_realm]
    {HOST} = {REALM}
""")

    def run(self, *cmd, stdin=None):
        result = subprocess.run(cmd, env=self.env, capture_output=True, text=True, input=stdin,
                                timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {result.stderr.strip()}")
        return result

    def start(self):
        self.run("/usr/sbin/kdb5_util", "create", "-s", "-r", REALM, "-P", "master-Pw-1")
        self.run("/usr/sbin/kadmin.local", "-r", REALM, "-q",
                 f"addprinc -randkey {SERVICE}/{HOST}")
        self.run("/usr/sbin/kadmin.local", "-r", REALM, "-q",
                 f"ktadd -k {self.keytab} {SERVICE}/{HOST}")
        self.proc = subprocess.Popen(["/usr/sbin/krb5kdc", "-n", "-r", REALM], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"krb5kdc exited: {self.proc.stderr.read().decode()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError("krb5kdc did not listen")

    def add_user(self, name: str, password: str):
        self.run("/usr/sbin/kadmin.local", "-r", REALM, "-q",
                 f"addprinc -pw {password} {name}")

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc.stderr.close()


def cannot_run(reason: str):
    """Without root the Makefile cannot install what these tests need: skip. As root
    `make test` installs it, so anything missing is a broken set-up: fail."""
    if is_root():
        pytest.fail(f"{reason} (as root make test installs what the GSSAPI tests need)")
    pytest.skip(reason)


@pytest.fixture
def kdc(tmp_path, monkeypatch):
    if gssapi is None:
        cannot_run("python-gssapi is not installed in this Python (pip install gssapi needs "
                   "libkrb5-dev and gcc; the Makefile installs both)")
    missing = [tool for tool in KDC_TOOLS if not os.access(tool, os.X_OK)]
    if missing:
        cannot_run(f"MIT Kerberos KDC tools missing: {', '.join(missing)} (Debian krb5-kdc, "
                   f"krb5-admin-server)")
    root = tmp_path / "kdc"
    root.mkdir()
    server = Kdc(root)
    try:
        server.start()
    except RuntimeError as exc:
        server.stop()
        cannot_run(f"the test KDC cannot start here: {exc}")
    monkeypatch.setenv("KRB5_CONFIG", str(server.conf))
    monkeypatch.setenv("KRB5CCNAME", f"MEMORY:qpt{os.getpid()}")
    yield server
    server.stop()


def gssapi_site(kdc, alice, pam_service, root, **options) -> Site:
    """A server offering GSSAPI with alice's mailbox, under `root` (options: the config's)."""
    keytab = Path(root) / "pop.keytab"
    shutil.copy(kdc.keytab, keytab)
    os.chmod(keytab, 0o600)
    s = Site(root, pam_service, sasl_log_login='sasl "%1" (%4) with %5', **options)
    make_spool(s.spool_dir, alice, mbox(("kerberos", "hello via GSSAPI")))
    s.alice = alice
    s.kdc = kdc
    s.srv = s.server(extra_args=["-k", "-K", SERVICE],
                     env={"KRB5_CONFIG": str(kdc.conf), "KRB5_KTNAME": str(keytab)})
    return s


@pytest.fixture
def site(kdc, system_users, pam_service, world_tmp):
    alice = system_users.create("al")
    kdc.add_user(alice.name, "kerberos-Pw-1")
    s = gssapi_site(kdc, alice, pam_service, world_tmp)
    yield s
    s.close()


def client_context(user: str, password: str):
    name = gssapi.Name(f"{user}@{REALM}", gssapi.NameType.kerberos_principal)
    creds = acquire_cred_with_password(name, password.encode(), usage="initiate").creds
    target = gssapi.Name(f"{SERVICE}@{HOST}", gssapi.NameType.hostbased_service)
    return gssapi.SecurityContext(name=target, creds=creds, usage="initiate",
                                  flags=[gssapi.RequirementFlag.mutual_authentication])


class Conn:
    def __init__(self, srv):
        self.sock = socket.create_connection((srv.host, srv.port), timeout=30)
        self.file = self.sock.makefile("rb")
        assert self.file.readline().startswith(b"+OK")

    def send(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.file.readline()

    def close(self):
        self.file.close()
        self.sock.close()


def gssapi_login(srv, context, authzid: bytes = b"", conn: Conn | None = None) -> bytes:
    """The whole exchange on a new connection (closed after), or on `conn` (left open)."""
    own = conn is None
    conn = conn or Conn(srv)
    try:
        # RFC 5034 §4: an initial response that would make the command longer than 255
        # octets (a Kerberos AP-REQ always does) is sent after an empty challenge instead.
        assert conn.send(b"AUTH GSSAPI") == b"+ \r\n"
        reply = conn.send(base64.b64encode(context.step()))
        while not context.complete:
            assert reply.startswith(b"+ "), reply
            token = context.step(base64.b64decode(reply[2:]))
            reply = conn.send(base64.b64encode(token or b""))
        if reply.startswith(b"+ ") and reply.strip() != b"+":
            layers = context.unwrap(base64.b64decode(reply[2:])).message
        else:                                   # the mutual-authentication round was empty
            reply = conn.send(b"")
            layers = context.unwrap(base64.b64decode(reply[2:])).message
        assert layers[0] & 0x01 and len(layers) == 4          # "no security layer" offered
        answer = context.wrap(b"\x01\x00\x00\x00" + authzid, False).message
        return conn.send(base64.b64encode(answer))
    finally:
        if own:
            conn.close()


def test_capa_lists_gssapi(site):
    conn = Conn(site.srv)
    try:
        conn.sock.sendall(b"CAPA\r\n")
        lines = []
        while (line := conn.file.readline()) != b".\r\n":
            lines.append(line)
    finally:
        conn.close()
    sasl = [line for line in lines if line.startswith(b"SASL ")]
    assert sasl and sasl[0].split()[1] == b"GSSAPI"


def test_gssapi_login(site):
    context = client_context(site.alice.name, "kerberos-Pw-1")
    reply = gssapi_login(site.srv, context)
    assert reply.startswith(f"+OK {site.alice.name} has 1 visible".encode()), reply
    site.syslog.wait_for(rf'sasl "{site.alice.name}" \({site.alice.name}@{REALM}\) with GSSAPI')


def test_a_cancelled_exchange_leaves_no_context_behind(site):
    """`*` after the first token, then a new AUTH GSSAPI on the same connection: it starts
    a new security context (the cancelled one's must not take the new token)."""
    conn = Conn(site.srv)
    try:
        assert conn.send(b"AUTH GSSAPI") == b"+ \r\n"
        first = client_context(site.alice.name, "kerberos-Pw-1")
        assert conn.send(base64.b64encode(first.step())).startswith(b"+ ")
        assert conn.send(b"*").startswith(b"-ERR")
        context = client_context(site.alice.name, "kerberos-Pw-1")
        reply = gssapi_login(site.srv, context, conn=conn)
        assert reply.startswith(f"+OK {site.alice.name} has 1 visible".encode()), reply
    finally:
        conn.close()


def test_gssapi_authzid_of_someone_else_is_refused(site):
    context = client_context(site.alice.name, "kerberos-Pw-1")
    reply = gssapi_login(site.srv, context, authzid=b"root")
    assert reply == b"-ERR [AUTH] authentication failure\r\n"


def test_gssapi_principal_without_an_account_is_refused(site):
    site.kdc.add_user("qptnoaccount", "kerberos-Pw-2")
    context = client_context("qptnoaccount", "kerberos-Pw-2")
    assert gssapi_login(site.srv, context) == b"-ERR [AUTH] authentication failure\r\n"


def assert_refused_as_a_failed_login(s, principal: str):
    """No mailbox opened; Qpopper's failure line for the principal's own name, and why."""
    s.syslog.wait_for(rf"\[AUTH\] Failed attempted login to {re.escape(principal)} from .*")
    s.syslog.wait_for(rf"LOGIN FAILED, user={re.escape(principal)}, method=GSSAPI, .*")
    s.syslog.wait_for(rf'login of "{re.escape(principal)}" refused: USER\'s name rules would '
                      rf"make {re.escape(principal)}@{REALM} log in as {s.alice.name}")
    assert not any(f'sasl "{s.alice.name}"' in text for text in s.syslog.texts())


def test_a_principal_that_the_no_mime_suffix_would_change_is_refused(site):
    """Kerberos proves `alice-no-mime`: that is not alice, whose mailbox USER's -no-mime rule
    would open (docs/compatibility.md, "SASL and Kerberos")."""
    principal = f"{site.alice.name}-no-mime"
    site.kdc.add_user(principal, "kerberos-Pw-3")
    reply = gssapi_login(site.srv, client_context(principal, "kerberos-Pw-3"))
    assert reply == b"-ERR [AUTH] authentication failure\r\n"
    assert_refused_as_a_failed_login(site, principal)


def test_a_principal_that_downcase_user_would_change_is_refused(kdc, system_users, pam_service,
                                                                world_tmp):
    """With downcase-user, `ALICE@REALM` is another principal than `alice@REALM`: refused,
    while alice's own principal still logs in."""
    alice = system_users.create("al")
    kdc.add_user(alice.name, "kerberos-Pw-1")
    kdc.add_user(alice.name.upper(), "kerberos-Pw-4")
    s = gssapi_site(kdc, alice, pam_service, world_tmp, downcase_user=True)
    try:
        reply = gssapi_login(s.srv, client_context(alice.name.upper(), "kerberos-Pw-4"))
        assert reply == b"-ERR [AUTH] authentication failure\r\n"
        assert_refused_as_a_failed_login(s, alice.name.upper())
        reply = gssapi_login(s.srv, client_context(alice.name, "kerberos-Pw-1"))
        assert reply.startswith(f"+OK {alice.name} has 1 visible".encode()), reply
    finally:
        s.close()


def test_auth_to_local_maps_a_mixed_case_principal_to_its_account(kdc, system_users,
                                                                   pam_service, world_tmp):
    """An Active Directory site: `QPTUser@REALM` is the account `qptuser`. krb5.conf's
    auth_to_local says so, and GSSAPI logs in that account, downcase-user or not
    (docs/compatibility.md, "SASL and Kerberos")."""
    alice = system_users.create("al")
    principal = "QPT" + alice.name[3:].capitalize()
    kdc.add_user(principal, "kerberos-Pw-5")
    kdc.map_names(f"auth_to_local = RULE:[1:$1@$0](^{principal}@{re.escape(REALM)}$)"
                  f"s/.*/{alice.name}/",
                  "auth_to_local = DEFAULT")
    s = gssapi_site(kdc, alice, pam_service, world_tmp, downcase_user=True)
    try:
        reply = gssapi_login(s.srv, client_context(principal, "kerberos-Pw-5"))
        assert reply.startswith(f"+OK {alice.name} has 1 visible".encode()), reply
        s.syslog.wait_for(rf'sasl "{alice.name}" \({principal}@{REALM}\) with GSSAPI')
    finally:
        s.close()


def test_a_principal_auth_to_local_maps_to_no_account_is_refused(kdc, system_users, pam_service,
                                                                 world_tmp):
    """auth_to_local rules without DEFAULT map only what they name: alice's own principal is
    then no account here, and is refused as a failed login, logged with krb5's reason; the
    principal a rule names logs in."""
    alice = system_users.create("al")
    kdc.add_user(alice.name, "kerberos-Pw-1")
    mapped = f"{alice.name}/pop"
    kdc.add_user(mapped, "kerberos-Pw-6")
    kdc.map_names(f"auth_to_local = RULE:[2:$1/$2@$0](^{alice.name}/pop@{re.escape(REALM)}$)"
                  f"s/.*/{alice.name}/")
    s = gssapi_site(kdc, alice, pam_service, world_tmp)
    try:
        reply = gssapi_login(s.srv, client_context(alice.name, "kerberos-Pw-1"))
        assert reply == b"-ERR [AUTH] authentication failure\r\n"
        principal = f"{alice.name}@{REALM}"
        s.syslog.wait_for(rf"\[AUTH\] Failed attempted login to {re.escape(principal)} from .*")
        s.syslog.wait_for(rf"LOGIN FAILED, user={re.escape(principal)}, method=GSSAPI, .*")
        s.syslog.wait_for(rf'login of "{re.escape(principal)}" refused: Kerberos maps '
                          rf"{re.escape(principal)} to no local account: no auth_to_local rule "
                          rf"in krb5.conf maps it to a local name")
        assert not any(f'sasl "{alice.name}"' in text for text in s.syslog.texts())
        reply = gssapi_login(s.srv, client_context(mapped, "kerberos-Pw-6"))
        assert reply.startswith(f"+OK {alice.name} has 1 visible".encode()), reply
    finally:
        s.close()


def test_kerberos_with_user_database_pop_auth_is_refused_at_start_up(tmp_path):
    """pop.auth users are no system accounts, and a principal names a system account:
    GSSAPI under user-database pop-auth logged in system accounts the site said were not
    its POP users. Refused, naming both settings."""
    config = tmp_path / "qpopper.config"
    config.write_text("set user-database = pop-auth\n")
    result = popper_refusal("-f", str(config), "-k")
    assert result.returncode == 2, result.stderr            # a configuration mistake
    assert result.stderr == (
        f"popper: argv -k: 'kerberos' cannot be used with 'user-database = pop-auth' (set at "
        f"{config}:1): GSSAPI proves a Kerberos principal, which names a system account, not "
        f"a pop.auth user\n")


def test_the_demo_refuses_kerberos_for_its_pop_auth_users(tmp_path):
    """config.check_combinations is the one rule against GSSAPI for pop.auth users (the
    authenticator does not check again): config.load runs it (start-up, reload, inetd mode,
    --check-config: the test above), and the demo, which puts user-database pop-auth on top
    of its command line, runs it on the Config it serves with."""
    from qpopper.config import Config, ConfigError
    from qpopper.demo import demo_config
    with pytest.raises(ConfigError) as refused:
        demo_config(Config.defaults().replace(kerberos=True), str(tmp_path))
    assert "'kerberos' cannot be used with 'user-database = pop-auth' (set at demo mode)" in (
        str(refused.value))


class ProvedPrincipal:
    """A complete GSS-API context's last step, for a principal (the KDC's part is the
    tests above): the client's layer choice, unwrapped, and who it proved to be."""

    def __init__(self, principal: str):
        self.principal = principal

    def choice(self, answer: bytes) -> tuple[bytes, str]:
        return answer, self.principal


@pytest.mark.parametrize("principal, rule, line", [
    (f"qpt\x1bmallory@OTHER.{REALM}", "DEFAULT",
     r'login of "\(gssapi\)" refused: Kerberos maps qpt\\x1bmallory@OTHER\.QPT\.TEST to no '
     r'local account: no auth_to_local rule in krb5\.conf maps it to a local name'),
    (f"qpt\x1bmallory@{REALM}", "DEFAULT",
     r'login of "qpt\\x1bmallory" refused: invalid user name'),
    (f"qpt\x1bmallory@{REALM}", r"RULE:[1:$1@$0](^.*@QPT\.TEST$)s/.*/QPTALICE/",
     r'login of "QPTALICE" refused: USER\'s name rules would make qpt\\x1bmallory@QPT\.TEST '
     r'log in as qptalice'),
])
def test_a_principal_is_logged_with_its_control_characters_escaped(tmp_path, monkeypatch,
                                                                   principal, rule, line):
    """A principal, and a name auth_to_local made of it, go to the log as client text does
    (option_types.shown: control characters escaped, nothing added), in every GSSAPI refusal
    that names them: the KDC vouches for who the client is, not for what the name holds."""
    from qpopper.auth.policy import Authenticator
    from qpopper.config import Config
    from qpopper.pop3.auth_state import sasl_normaliser
    from qpopper.pop3.responses import PopError
    conf = tmp_path / "krb5.conf"
    conf.write_text(f"[libdefaults]\n    default_realm = {REALM}\n"
                    f"[realms]\n    {REALM} = {{\n        auth_to_local = {rule}\n    }}\n")
    monkeypatch.setenv("KRB5_CONFIG", str(conf))
    records = []
    cfg = Config.defaults().replace(kerberos=True, auth_brakes_file=None, auth_failure_delay=0,
                                    downcase_user=True)
    auth = Authenticator(cfg, lambda priority, text: records.append(text))
    auth._gss = ProvedPrincipal(principal)
    with pytest.raises(PopError):
        auth.gss_choose(b"\x01\x00\x00\x00", sasl_normaliser(cfg), "127.0.0.1")
    assert any(re.fullmatch(line, text) for text in records), records
    assert all(text.isprintable() for text in records), records


def test_garbage_token_is_refused(site):
    conn = Conn(site.srv)
    try:
        reply = conn.send(b"AUTH GSSAPI " + base64.b64encode(b"not a kerberos token"))
    finally:
        conn.close()
    assert reply == b"-ERR [AUTH] authentication failure\r\n"


def keytab_keys(keytab) -> list[bytes]:
    """The keys in `keytab`, as klist -K prints them."""
    listing = subprocess.run(["klist", "-k", "-K", str(keytab)], capture_output=True, text=True,
                             timeout=30, check=True).stdout
    return [bytes.fromhex(key) for key in re.findall(r"\(0x([0-9a-f]{32,})\)", listing)]


def holding_after(body) -> tuple[int, int, bytes]:
    """A child that runs body() (→ bytes, written back) and then waits to be searched:
    (pid, read end, what body said). Nothing of the keytab is read here before."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.write(w, body())
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(w)
    return pid, r, os.read(r, 20)


def test_the_start_up_check_of_the_keytab_leaves_no_key_in_the_master(kdc, monkeypatch):
    """kerberos_refusal runs in the master (start-up, reload, --check-config), whose memory
    every connection's processes start from, the user session included: the keys libkrb5
    read to find the service's entry must not stay there (MIT Kerberos wipes them), so only
    the authentication process ever holds one (docs/privsep.md, "The authentication
    process"). The same search finds the keys in a process that read the keytab file."""
    if not is_root():
        pytest.skip("needs root: /proc/<pid>/mem of another process")
    from qpopper.auth.sasl import kerberos_refusal
    from qpopper.config import Config
    from tests.helpers.process_memory import memory_holds
    monkeypatch.setenv("KRB5_KTNAME", str(kdc.keytab))
    cfg = Config.defaults().replace(kerberos=True, kerberos_service=SERVICE)
    checked = holding_after(lambda: b"served" if kerberos_refusal(cfg) is None else b"no")
    reader = holding_after(lambda: b"read" if kdc.keytab.read_bytes() else b"empty")
    try:
        assert checked[2] == b"served" and reader[2] == b"read"
        keys = keytab_keys(kdc.keytab)
        assert keys
        assert memory_holds(reader[0], keys)
        assert not memory_holds(checked[0], keys)
    finally:
        for pid, r, _ in (checked, reader):
            os.close(r)
            os.kill(pid, 9)
            os.waitpid(pid, 0)


def test_kerberos_with_a_keytab_lacking_the_service_is_refused(kdc, tmp_path):
    result = popper_refusal("-k", "-K", "imap", env={"KRB5_CONFIG": str(kdc.conf),
                                                     "KRB5_KTNAME": str(kdc.keytab)})
    assert result.returncode == 1, result.stderr
    assert f"no key for imap@{HOST} in {kdc.keytab}" in result.stderr


def test_a_principal_with_a_nul_in_its_name_maps_to_no_prefix_of_it(tmp_path, monkeypatch):
    """`alice\\0x@REALM` (a NUL inside the name: krb5's `\\0`) is another principal than
    `alice@REALM`, but krb5_aname_to_localname's DEFAULT rule returns a C string that ends at
    the NUL: `alice`. The mapping refuses it (libkrb5 itself, this realm's krb5.conf; MIT's
    KDC issues such a principal no service ticket, other KDCs may)."""
    from qpopper.auth import krb5_names
    conf = tmp_path / "krb5.conf"
    conf.write_text(f"[libdefaults]\n    default_realm = {REALM}\n")
    monkeypatch.setenv("KRB5_CONFIG", str(conf))
    assert krb5_names.local_name(f"qptalice@{REALM}") == "qptalice"
    assert krb5_names.local_name(f"qpt\\\\0x@{REALM}") == "qpt\\0x"   # an escaped backslash
    for principal in (f"qptalice\\0x@{REALM}", f"qptalice\0x@{REALM}", "qptalice\0@OTHER"):
        with pytest.raises(krb5_names.NoLocalName, match="its name holds a NUL"):
            krb5_names.local_name(principal)


def test_mapping_a_principal_runs_no_program(tmp_path):
    """libkrb5 is found by its soname: ctypes.util.find_library (which runs /sbin/ldconfig
    -p, a fork and exec in the root authentication process at each connection's first
    GSSAPI login) is asked only when that fails. Traced in a process of its own."""
    conf = tmp_path / "krb5.conf"
    conf.write_text(f"[libdefaults]\n    default_realm = {REALM}\n")
    trace = tmp_path / "execve.trace"
    strace = shutil.which("strace")
    assert strace, "strace is not installed (the Makefile's Debian test packages)"
    code = ("from qpopper.auth import krb5_names; "
            f"print(krb5_names.local_name('qptalice@{REALM}'))")
    result = subprocess.run([strace, "-f", "-qq", "-e", "trace=execve", "-o", str(trace),
                             sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=REPO,
                            env=dict(os.environ, KRB5_CONFIG=str(conf), PYTHONPATH=str(REPO)))
    assert result.stdout == "qptalice\n", result.stderr
    programs = re.findall(r'execve\("([^"]+)"', trace.read_text())
    assert programs == [sys.executable], programs
