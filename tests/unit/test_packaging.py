"""The packaging sources, checked without building: systemd units, PAM files, debian/ and the
RPM spec agree with each other and with what popper accepts. The build, install and run of
the real packages is tests/test_packaging_install.py (root)."""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess

import pytest

from qpopper.config import load
from qpopper.options import lookup
from tests.helpers.repo import REPO

UNITS = REPO / "systemd"
EXAMPLE = REPO / "etc/qpopper/qpopper.config"
INSTALLED_CONFIG = "/etc/qpopper/qpopper.config"

SERVICES = ("qpopper.service",)                                  # the standalone master
SOCKETS = {"qpopper.socket": "qpopper@.service", "qpopper-tls.socket": "qpopper-tls@.service"}
ALL_UNITS = (*SERVICES, *SOCKETS, *SOCKETS.values())
POPPASSD_UNITS = ("poppassd.socket", "poppassd@.service")       # port 106, never enabled


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None,
                                       delimiters=("=",), comment_prefixes=("#", ";"))
    parser.optionxform = str                     # keys are case-sensitive in systemd
    parser.read_string((UNITS / name).read_text())
    return parser


def multi(name: str, section: str, key: str) -> list[str]:
    """Every value of a key that may repeat (configparser keeps the last one only)."""
    values, current = [], None
    for line in (UNITS / name).read_text().splitlines():
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section and line.startswith(key + "="):
            values.append(line.split("=", 1)[1])
    return values


def exec_start(name: str) -> list[str]:
    return shlex.split(unit(name)["Service"]["ExecStart"])


def effective(name: str):
    """The Config popper would run with from this unit's ExecStart, reading the repository's
    shipped config in place of /etc/qpopper/qpopper.config."""
    argv = [str(EXAMPLE) if a == INSTALLED_CONFIG else a for a in exec_start(name)[1:]]
    return load(argv)[0]


def test_every_unit_file_is_shipped_by_both_packages():
    shipped = sorted(p.name for p in UNITS.iterdir())
    assert shipped == sorted(ALL_UNITS + POPPASSD_UNITS)
    install = (REPO / "debian/install").read_text().split("\n")
    spec = (REPO / "rpm/qpopper.spec").read_text()
    for name in ALL_UNITS + POPPASSD_UNITS:
        assert f"systemd/{name} lib/systemd/system/" in install, name
        assert f"%{{_unitdir}}/{name}\n" in spec, name
    assert "pam.d/pop3 etc/pam.d/" in install
    assert "install -D -m 0644 pam.d/pop3.redhat %{buildroot}%{_pam_confdir}/pop3" in spec
    assert "%{_sbindir}/popauth\n" in spec                  # rules moves every script to sbin
    assert "pam.d/poppassd etc/pam.d/" in install
    assert ("install -D -m 0644 pam.d/poppassd.redhat %{buildroot}%{_pam_confdir}/poppassd"
            in spec)
    assert "%{_sbindir}/poppassd\n" in spec
    for page in ("man/popper.8", "man/qpopper.config.5", "man/popauth.8", "man/poppassd.8"):
        assert page in (REPO / "debian/manpages").read_text().split()
        assert f"install -D -m 0644 {page} " in spec


def test_every_unit_runs_the_installed_popper_with_the_shipped_config():
    for name in (*SERVICES, *SOCKETS.values()):
        argv = exec_start(name)
        assert argv[:3] == ["/usr/sbin/popper", "-f", INSTALLED_CONFIG], name


def test_master_listens_and_instances_serve_stdin():
    main = effective("qpopper.service")
    # One master: STLS on 110 (the file's tls-support), TLS from the first byte on 995.
    assert main.listen == ("110",) and main.tls_listen == ("995",)
    assert main.tls_support == "stls"
    for instance in SOCKETS.values():
        cfg = effective(instance)
        assert cfg.listen == () and cfg.tls_listen == ()   # inetd mode: the connection is on stdin
        assert unit(instance)["Service"]["StandardInput"] == "socket"
        assert unit(instance)["Service"]["StandardOutput"] == "socket"
    assert effective("qpopper@.service").tls_support == "stls"
    assert effective("qpopper-tls@.service").tls_support == "alternate-port"
    # The shipped policy holds on every port: passwords only inside TLS.
    for name in (*SERVICES, *SOCKETS.values()):
        assert effective(name).clear_text_password == "tls", name


def test_service_units_are_notify_masters_with_reload():
    for name in SERVICES:
        service = unit(name)["Service"]
        assert service["Type"] == "notify"
        assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
        assert "--daemon" not in service["ExecStart"]      # the master stays in the foreground
        assert unit(name)["Install"]["WantedBy"] == "multi-user.target"


def test_units_that_run_popper_start_after_the_remote_file_systems():
    """spool-dir on NFS: a popper started before its mount would take the empty mount point
    for the spool, and its health checks answer +OK from it (docs/scale-out.md, "The load
    balancer")."""
    for name in (*SERVICES, *SOCKETS.values()):
        assert "remote-fs.target" in unit(name)["Unit"]["After"].split(), name


def test_socket_units_pair_with_their_template_and_conflict_with_the_master():
    ports = {"qpopper.socket": "110", "qpopper-tls.socket": "995"}
    for name, template in SOCKETS.items():
        sock = unit(name)
        assert sock["Socket"]["Accept"] == "yes"
        assert sock["Socket"]["ListenStream"] == ports[name]
        assert (UNITS / template).exists()        # Accept=yes starts NAME@.service
        assert sock["Unit"]["Conflicts"] == "qpopper.service"
    assert set(unit("qpopper.service")["Unit"]["Conflicts"].split()) == set(SOCKETS)


def test_hardening_keeps_what_the_server_needs():
    for name in (*SERVICES, *SOCKETS.values()):
        text = (UNITS / name).read_text()
        service = unit(name)["Service"]
        caps = set(service["CapabilityBoundingSet"].split())
        assert {"CAP_SETUID", "CAP_SETGID", "CAP_DAC_OVERRIDE", "CAP_CHOWN"} <= caps, name
        assert ("CAP_NET_BIND_SERVICE" in caps) == (name in SERVICES), name
        # the master signals user children; every monitor ends its pre-login process
        assert "CAP_KILL" in caps, name
        # only the master runs the authentication cache, which mlockall()s its memory
        assert ("CAP_IPC_LOCK" in caps) == (name == "qpopper.service"), name
        # XTND XMIT runs sendmail; Postfix's postdrop is setgid: NoNewPrivileges would break it.
        assert "NoNewPrivileges" not in service
        assert "NoNewPrivileges is NOT set" in text and "postdrop" in text
        assert service["ProtectSystem"] == "strict"
        rw = " ".join(multi(name, "Service", "ReadWritePaths")).split()
        assert "-/var/mail" in rw and "-/var/spool/mail" in rw
        assert "-/var/spool/postfix/maildrop" in rw
        assert service["PrivateTmp"] == "yes"
        # The brakes' counts live in a root-only runtime directory systemd makes writable.
        brakes = lookup("auth-brakes-file")
        if brakes is not None and brakes.default:
            assert brakes.default.startswith("/run/" + service["RuntimeDirectory"] + "/")
            assert service["RuntimeDirectoryMode"] == "0700"
            assert service["RuntimeDirectoryPreserve"] == "yes"
        # Hashed spool directories are made setgid like the spool directory.
        assert service["RestrictSUIDSGID"] == "no"
        assert "MemoryDenyWriteExecute" not in service     # ctypes closures (python-pam)


MTA_WRITES = {
    "postfix": ("/var/spool/postfix/maildrop",),
    "exim4": ("/var/spool/exim4/input", "/var/spool/exim4/msglog", "/var/spool/exim4/db",
              "/var/log/exim4/mainlog"),
    "sendmail": ("/var/spool/mqueue-client",),
    "nullmailer": ("/var/spool/nullmailer/queue", "/var/spool/nullmailer/tmp"),
}
"""Where the Debian MTAs' /usr/sbin/sendmail writes when XTND XMIT runs it inside the unit (as
the user; Exim's is setuid root and logs each message it receives): their packages' spool and
log directories (exim4-base's postinst, exim4-config's SPOOLDIR, sendmail's MSP queue)."""


def writable(name: str) -> list[str]:
    return [path.lstrip("-") for path in
            " ".join(multi(name, "Service", "ReadWritePaths")).split()]


def may_write(places: list[str], path: str) -> bool:
    return any(path == place or path.startswith(place.rstrip("/") + "/") for place in places)


@pytest.mark.parametrize("name", (*SERVICES, *SOCKETS.values()))
def test_the_units_let_the_mta_and_the_configured_places_be_written(name):
    """ProtectSystem=strict: what the shipped configuration writes (with the places the
    options' help calls usual), and every Debian MTA XTND XMIT may run, is in ReadWritePaths;
    what stays read-only (~/.popbull under /home) README.Debian tells how to open."""
    places = writable(name)
    for mta, paths in MTA_WRITES.items():
        for path in paths:
            assert may_write(places, path), (mta, path)
    cfg = effective(name)
    for option in ("spool-dir", "temp-dir", "cache-dir", "bulldir", "popbulldir"):
        for path in (cfg.get(option), lookup(option).example):
            assert path is None or may_write(places, path), (option, path)
    # MTA_WRITES are the writes of the Debian MTAs' /usr/sbin/sendmail: the program the
    # unit's configuration runs for XTND XMIT must be that one.
    assert not cfg.xtnd_xmit or cfg.mail_command == DEBIAN_MTA_PROGRAM, cfg.mail_command
    # ~/.popbull stays read-only: README.Debian's drop-in is what opens it.
    assert not may_write(places, "/home/someone/.popbull")
    assert may_write([*places, *readme_drop_in()], "/home/someone/.popbull")


DEBIAN_MTA_PROGRAM = "/usr/sbin/sendmail"
"""What every Debian MTA (default-mta | mail-transport-agent, debian/control's Recommends)
provides, and where MTA_WRITES's places come from."""


def readme_debian() -> str:
    return (REPO / "debian/README.Debian").read_text()


def readme_drop_in() -> list[str]:
    """The ReadWritePaths of the drop-in README.Debian tells the administrator to add."""
    return " ".join(re.findall(r"^\s+ReadWritePaths=(.+)$", readme_debian(), re.M)).split()


def test_readme_debian_names_the_places_the_units_may_write_and_the_mta_program():
    """README.Debian's list of where the server may write (with the program XTND XMIT runs)
    is true of every server unit: each place it names is in the unit's ReadWritePaths, and the
    program is the shipped configuration's mail-command."""
    text = " ".join(readme_debian().split())
    listing = text[text.index("Where the server may write"):text.index("Anything else")]
    named = re.findall(r"/[\w./-]*\w", listing)
    assert DEBIAN_MTA_PROGRAM in named
    places = [path for path in named if path != DEBIAN_MTA_PROGRAM]
    assert len(places) >= 8, places
    for name in (*SERVICES, *SOCKETS.values()):
        assert effective(name).mail_command == DEBIAN_MTA_PROGRAM, name
        for place in places:
            assert may_write(writable(name), place), (name, place)


def test_only_the_masters_are_enabled_by_default():
    rules = (REPO / "debian/rules").read_text()
    assert "dh_installsystemd qpopper.service\n" in rules
    assert ("dh_installsystemd --no-enable --no-start --restart-after-upgrade qpopper.socket "
            "qpopper-tls.socket\n") in rules
    spec = (REPO / "rpm/qpopper.spec").read_text()
    assert "preset qpopper.service >" in spec
    # poppassd (clear-text passwords on port 106) is installed, never enabled or started.
    assert ("dh_installsystemd --no-enable --no-start --restart-after-upgrade "
            "poppassd.socket\n") in rules
    assert "preset poppassd" not in spec


def test_poppassd_units_serve_stdin_on_port_106():
    sock = unit("poppassd.socket")
    assert sock["Socket"]["ListenStream"] == "106" and sock["Socket"]["Accept"] == "yes"
    service = unit("poppassd@.service")["Service"]
    assert exec_start("poppassd@.service") == ["/usr/sbin/poppassd"]
    assert service["StandardInput"] == "socket" and service["StandardOutput"] == "socket"
    # pam_unix rewrites /etc/shadow: /etc must stay writable (ProtectSystem=yes, not strict/full).
    assert service["ProtectSystem"] == "yes"
    assert {"CAP_DAC_OVERRIDE", "CAP_CHOWN", "CAP_FOWNER"} <= set(
        service["CapabilityBoundingSet"].split())
    # the pre-login process: chroot, prelogin-user, an empty bounding set (docs/privsep.md)
    assert {"CAP_SYS_CHROOT", "CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP"} <= set(
        service["CapabilityBoundingSet"].split())
    # ... and the root process ends it: it runs as another uid (docs/privsep.md, "poppassd")
    assert "CAP_KILL" in service["CapabilityBoundingSet"].split()
    pam = (REPO / "pam.d/poppassd").read_text().splitlines()
    # common-password: the new password goes through PAM's password stack (pwquality, ...)
    assert [l for l in pam if l.startswith("@include")] == [
        "@include common-auth", "@include common-account", "@include common-password"]
    redhat = [l.split() for l in (REPO / "pam.d/poppassd.redhat").read_text().splitlines()
              if l and not l.startswith("#")]
    assert ["password", "include", "password-auth"] in redhat
    from qpopper.tools.poppassd import DEFAULT_PAM_SERVICE
    assert DEFAULT_PAM_SERVICE == "poppassd"


def test_pam_service_files():
    debian = (REPO / "pam.d/pop3").read_text().splitlines()
    assert [l for l in debian if l.startswith("@include")] == [
        "@include common-auth", "@include common-account",
        "@include common-session-noninteractive"]
    redhat = [l.split() for l in (REPO / "pam.d/pop3.redhat").read_text().splitlines()
              if l and not l.startswith("#")]
    assert ["auth", "include", "password-auth"] in redhat
    assert ["account", "include", "password-auth"] in redhat
    # The service name matches the option's default.
    assert load([])[0].pam_service == "pop3"


def test_debian_control_relations():
    control = (REPO / "debian/control").read_text()
    fields = dict(re.findall(r"^(Provides|Conflicts|Replaces|Depends): (.*(?:\n .*)*)", control,
                             re.M))
    assert fields["Provides"] == "pop3-server"
    conflicts = {c.strip() for c in fields["Conflicts"].split(",")}
    # File clashes only: qpopper (popper), courier-pop (/etc/pam.d/pop3), mailutils-pop3d
    # (popauth). dovecot-pop3d and other pop3-server providers may run on another port.
    assert conflicts == {"qpopper", "courier-pop", "mailutils-pop3d"}
    assert "pop3-server" not in conflicts
    depends = {d.strip() for d in fields["Depends"].replace("\n", " ").split(",")}
    assert {"${python3:Depends}", "adduser", "ssl-cert"} <= depends


@pytest.mark.skipif(shutil.which("sh") is None, reason="no sh")
@pytest.mark.parametrize("script", ["debian/postinst", "debian/postrm", "debian/prerm"])
def test_maintainer_scripts_are_valid_sh(script):
    result = subprocess.run(["sh", "-n", str(REPO / script)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    text = (REPO / script).read_text()
    # exactly once: debhelper replaces every occurrence, also one in a comment
    assert text.count("#DEBHELPER#") == 1 and text.startswith("#!/bin/sh\n") and "set -e" in text


def test_removal_stops_every_socket_unit_as_the_rpm_does():
    """--no-start leaves the sockets' stop on removal to debian/prerm; the RPM's %preun
    stops the same units."""
    prerm = (REPO / "debian/prerm").read_text()
    spec = (REPO / "rpm/qpopper.spec").read_text()
    preun = spec.split("%preun", 1)[1].split("%postun", 1)[0]
    for name in ("qpopper.socket", "qpopper-tls.socket", "poppassd.socket"):
        assert name in preun
        assert re.search(rf'"\$1" = remove .*\n.*deb-systemd-invoke stop [^\n]*\b{name}\b',
                         prerm), name


def test_rpm_spec_defines_fallbacks_for_missing_fedora_macros():
    spec = (REPO / "rpm/qpopper.spec").read_text()
    for macro in ("__python3", "python3_sitearch", "_unitdir", "_pam_confdir"):
        assert f"%{{!?{macro}:" in spec, macro
    # An undefined %systemd_post would land literally in the scriptlet: written out instead.
    body = spec.split("%post\n", 1)[1]
    assert "%systemd_post" not in body.replace("%%systemd_post", "")


def test_the_package_build_runs_test_files_that_exist():
    """debian/rules runs some unit tests at build time: a test moved without it changing
    would fail only when the package is built."""
    rules = (REPO / "debian" / "rules").read_text()
    named = re.findall(r"\{dir\}/(tests/\S+\.py)", rules)
    assert named and [path for path in named if not (REPO / path).is_file()] == []


def make_dry_run_packages(target: str) -> list[list[str]]:
    """The Debian package lists `make TARGET` would install (its `for p in ...` loops),
    read from make's dry run: the Makefile as make itself expands it."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    result = subprocess.run(["make", "-n", "-s", target], cwd=REPO, capture_output=True,
                            text=True, timeout=60, env={"PATH": "/usr/bin:/bin",
                                                        "HOME": "/nonexistent"})
    assert result.returncode == 0, result.stderr
    return [m.split() for m in re.findall(r"for p in ([^;]*); do dpkg-query", result.stdout)]


def test_make_debs_installs_only_build_tools_and_test_peers_have_their_own_target():
    (build,) = make_dry_run_packages("debs")
    (peers,) = make_dry_run_packages("test-peers")
    for tool in ("debhelper", "dh-python", "lintian", "rpm", "build-essential", "python3-all-dev"):
        assert tool in build
    for peer in ("curl", "socat", "krb5-kdc", "krb5-admin-server", "gcc", "libkrb5-dev",
                 "procmail", "strace", "fetchmail", "mpop", "fail2ban"):
        assert peer in peers and peer not in build, peer
    # make test installs both: the packaging tests build the .deb, the others use the peers
    assert sorted(map(sorted, make_dry_run_packages("test"))) == sorted([sorted(build),
                                                                         sorted(peers)])
    readme = (REPO / "README.md").read_text()
    assert "make debs" in readme and "make test-peers" in readme


def test_readme_debian_traces_where_the_unit_can_write_and_warns_about_fail2ban():
    """README.Debian's -t example names a file the shipped master unit may write
    (ProtectSystem=strict: its ReadWritePaths or RuntimeDirectory), and says that a trace
    takes every record away from the journal, so from fail2ban."""
    text = " ".join((REPO / "debian/README.Debian").read_text().split())
    traces = re.findall(r"-t (/\S+?)[:,.]?\s", text)
    assert traces, "README.Debian suggests no -t FILE"
    service = unit("qpopper.service")["Service"]
    writable = [path.lstrip("-") for path in
                " ".join(multi("qpopper.service", "Service", "ReadWritePaths")).split()]
    writable.append("/run/" + service["RuntimeDirectory"])
    for trace in traces:
        assert any(trace.startswith(place + "/") for place in writable), trace
    assert "fail2ban sees no failed logins while tracing" in text
