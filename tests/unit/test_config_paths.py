"""Options naming a file or directory must be absolute paths (docs/options.md, "Paths"): a
daemon, a systemd service and an inetd child work from /, so a relative one would be checked
at start-up in one directory and used in another. Refused as any bad value is, with the file
and line (or the argv flag), by popper and popper --check-config alike."""

import subprocess
import sys
import syslog

import pytest

from qpopper.config import Config, apply_user_file, load
from qpopper.options import OPTIONS, lookup
from qpopper.spool.paths import SpoolPaths
from tests.unit.test_config import Recorder, error_of, write

# Written out here, not taken from the table: the table must mark every one of them.
ABSOLUTE_PATH_OPTIONS = """
auth-file nonauth-file bulldir popbulldir cache-dir spool-dir temp-dir tls-identity-file
tls-private-key-file tls-server-cert-file tracefile pid-file prelogin-chroot pop-auth-file
auth-brakes-file
""".split()

RELATIVE = ("spool", "./spool", "../var/mail", "var/spool/bulls", "~/cache", "%h/x")


def complaint(name, text):
    return f"'{name}' must be an absolute path (beginning with /), got '{text}'"


@pytest.mark.parametrize("name", ABSOLUTE_PATH_OPTIONS)
def test_a_relative_path_in_a_file_is_refused_naming_file_and_line(tmp_path, name):
    for text in RELATIVE:
        path = write(tmp_path, "q.config", f"# site\nset {name} = {text}\n")
        assert error_of(load, ["-f", path]) == f"{path}:2: {complaint(name, text)}"
    path = write(tmp_path, "q.config", f"set {name} = /srv/qpt-{name}\n")
    assert load(["-f", path])[0].get(name) == f"/srv/qpt-{name}"


@pytest.mark.parametrize("name", ABSOLUTE_PATH_OPTIONS)
def test_a_relative_path_on_argv_is_refused_naming_the_flag(name):
    assert error_of(load, [f"--{name}=spool"]) == f"argv --{name}: {complaint(name, 'spool')}"
    flag = lookup(name).flag
    if flag:
        assert error_of(load, [flag, "spool"]) == f"argv {flag}: {complaint(name, 'spool')}"


def test_the_table_marks_exactly_these_options_as_absolute_paths():
    marked = {opt.name for opt in OPTIONS if opt.type_text == "absolute path"}
    assert marked == set(ABSOLUTE_PATH_OPTIONS)
    assert lookup("maildir").type_text == "path: absolute, or from ~/ or %h/"


def test_the_type_is_named_where_a_value_is_missing(tmp_path):
    path = write(tmp_path, "q.config", "set spool-dir\n")
    assert error_of(load, ["-f", path]) == (f"{path}:1: 'spool-dir' needs '= value' "
                                            f"(absolute path)")


def test_maildir_is_absolute_once_the_home_directory_is_put_in():
    """spool/maildir.py serves a Maildir only at an absolute path: a relative pattern would
    silently serve everyone from the mbox spool."""
    for text in ("~/Maildir", "%h/Maildir", "/var/maildirs/%u", "~"):
        assert load([f"--maildir={text}"])[0].maildir == text
    for text in ("Maildir", "%u/Maildir", "./Maildir"):
        assert error_of(load, [f"--maildir={text}"]) == (
            f"argv --maildir: 'maildir' must be an absolute path, or ~ or %h (the home "
            f"directory) followed by / or nothing, got '{text}'")


def test_relative_names_that_mean_something_else_stay_allowed(tmp_path):
    """home-dir-mail is inside each home, cache-name and temp-name inside their directories,
    mail-command runs from / with a fixed PATH, config-file is relative to its file."""
    write(tmp_path, "chained.config", "set home-dir-mail = .mail\n")
    path = write(tmp_path, "q.config", "set config-file = chained.config\n"
                                       "set cache-name = .%s.c\nset temp-name = .%s.p\n"
                                       "set mail-command = sendmail\n")
    cfg, _ = load(["-f", path])
    assert (cfg.home_dir_mail, cfg.cache_name, cfg.temp_name, cfg.mail_command) == (
        ".mail", ".%s.c", ".%s.p", "sendmail")


def test_a_spool_options_file_with_a_relative_path_is_logged_and_ignored(tmp_path):
    path = write(tmp_path, "qpt.qpopper-options", "set server-mode\nset temp-dir = tmp\n")
    log = Recorder()
    base = Config.defaults()
    assert apply_user_file(base, path, "spool", log) is base
    assert log.records == [(syslog.LOG_ERR, f"{path}:2: {complaint('temp-dir', 'tmp')}; "
                                            f"options file ignored")]


def test_check_config_stops_on_a_relative_path_with_status_2(tmp_path):
    """What start-up refuses (the daemon's start: tests/system/test_server_master.py)."""
    (tmp_path / "spool").mkdir()            # there, from here: what the check would have seen
    path = write(tmp_path, "qpopper.config", "set spool-dir = spool\n")
    child = subprocess.run([sys.executable, "-c", "import sys; from qpopper.cli import "
                            "popper_main; sys.exit(popper_main(sys.argv[1:]))",
                            "--check-config", "-f", path],
                           capture_output=True, text=True, timeout=60, cwd=tmp_path,
                           stdin=subprocess.DEVNULL)
    assert (child.returncode, child.stdout, child.stderr) == (
        2, "", f"popper: {path}:1: {complaint('spool-dir', 'spool')}\n")



def test_a_reload_reads_relative_f_names_from_where_popper_started(tmp_path, monkeypatch):
    """The detached master works from /: its reloads give load() the directory it was
    started in (Invocation.start_dir), where `-f qpopper.config` was typed."""
    write(tmp_path, "chained.config", "set timeout = 300\n")
    write(tmp_path, "qpopper.config", "set config-file = chained.config\n")
    monkeypatch.chdir("/")
    assert error_of(load, ["-f", "qpopper.config"]) == (
        "argv -f: 'qpopper.config': cannot read configuration file: No such file or directory")
    cfg, invocation = load(["-f", "qpopper.config"], str(tmp_path))
    assert cfg.timeout == 300 and cfg.source("timeout") == f"{tmp_path}/chained.config:1"
    assert invocation.config_files == (f"{tmp_path}/qpopper.config",
                                       f"{tmp_path}/chained.config")
    absolute = write(tmp_path, "other.config", "set timeout = 400\n")
    assert load(["-f", absolute], "/elsewhere")[0].timeout == 400


def test_home_dir_mail_is_a_file_inside_each_home(tmp_path):
    """Qpopper's genpath writes home "/" home-dir-mail: an absolute value would be one spool
    for every user (os.path.join drops the home), a `..` part a file outside the home."""
    for value in ("/var/mail/shared", "../shared", "mail/../../x"):
        path = write(tmp_path, "q.config", f"set home-dir-mail = {value}\n")
        assert error_of(load, ["-f", path]).startswith(f"{path}:1: 'home-dir-mail' must ")
    cfg, _ = load(["--home-dir-mail=mail/.inbox", f"--spool-dir={tmp_path}"])
    assert SpoolPaths.for_user(cfg, "qptalice", "/home/qptalice").spool == \
        "/home/qptalice/mail/.inbox"


def test_maildir_s_home_forms_are_followed_by_a_slash_or_nothing():
    """`~Maildir` names a directory beside the home (the home's name with Maildir after it:
    another user's, for some names), not in it: refused like a relative pattern."""
    for value in ("~Maildir", "%hMaildir", "~x/Maildir"):
        assert error_of(load, [f"--maildir={value}"]).startswith("argv --maildir:"), value
    for value in ("~", "%h", "~/Maildir", "%h/Maildir", "/var/maildirs/%u"):
        assert load([f"--maildir={value}"])[0].maildir == value


@pytest.mark.parametrize("name", ["spool-dir", "temp-name", "cache-name", "prelogin-user",
                                  "prelogin-chroot", "pam-service", "pop-auth-owner"])
def test_options_nothing_works_without_cannot_be_unset(tmp_path, name):
    """An empty quoted value unsets a string option; these have no meaning unset (every login
    died in the session, --check-config raised a traceback): a configuration error naming
    the file and line, as any bad value."""
    path = write(tmp_path, "q.config", f'set {name} = ""\n')
    assert error_of(load, ["-f", path]).startswith(f"{path}:1: '{name}' cannot be unset")


def test_options_meant_to_be_unset_still_can_be(tmp_path):
    path = write(tmp_path, "q.config", 'set pid-file = ""\nset auth-brakes-file = ""\n'
                                       'set pop-auth-file = ""\n')
    cfg, _ = load(["-f", path])
    assert (cfg.pid_file, cfg.auth_brakes_file, cfg.pop_auth_file) == (None, None, None)
