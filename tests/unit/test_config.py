"""The configuration-file grammar, argv, per-user files and their errors (file and line named)."""

import copy
import os
import pickle
import subprocess
import sys
import syslog
import textwrap

import pytest

from qpopper import limits
from qpopper.config import (Config, ConfigError, Invocation, apply_spool_options_file,
                            apply_user_file, load, read_files)
from qpopper.options import BY_FLAG, OPTIONS, OptType, Scope, lookup

NON_FILE_OPTIONS = {"config-file"}       # reads a file instead of holding a plain value


def other_value(opt):
    """(config-file text, typed value): a valid value different from the default."""
    if opt.type is OptType.BOOL:
        return ("false", False) if opt.default else ("true", True)
    if opt.type is OptType.INT:
        number = opt.default + 1
        if opt.maximum is not None and number > opt.maximum:
            number = opt.default - 1
        if opt.repeatable:
            return "7", opt.default + 7
        return str(number), number
    if opt.type is OptType.MNEMONIC:
        choice = next(c for c in opt.choices if c != opt.default)
        return choice.upper(), choice
    if opt.name in ("listen", "tls-listen", "proxy-protocol"):
        return "127.0.0.1:8110", ("127.0.0.1:8110",)
    if opt.name in ("auth-brakes-trusted-networks", "proxy-trusted-networks"):
        return "192.0.2.0/24", ("192.0.2.0/24",)          # checked: a CIDR list
    if opt.name == "drac-host":                    # checked: HOST[:PORT]
        return "drac.example.org:111", "drac.example.org:111"
    if opt.name == "home-dir-mail":                # checked: inside the home
        return "qpt-value/.mail", "qpt-value/.mail"
    return "/srv/qpt-value", "/srv/qpt-value"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def error_of(call, *args):
    with pytest.raises(ConfigError) as error:
        call(*args)
    return str(error.value)


class Recorder:
    """A log(priority, text) callable that keeps what was logged."""

    def __init__(self):
        self.records = []

    def __call__(self, priority, text):
        self.records.append((priority, text))


# ---- every option, every spelling -------------------------------------------------------------
SPELLINGS = [(opt.name, spelling) for opt in OPTIONS if opt.name not in NON_FILE_OPTIONS
             for spelling in opt.spellings]


@pytest.mark.parametrize("name,spelling", SPELLINGS)
def test_set_every_option_in_a_file(tmp_path, name, spelling):
    opt = lookup(name)
    text, expected = other_value(opt)
    path = write(tmp_path, "q.config", f"# comment\n\nset {spelling} = {text}\n")
    cfg, invocation = load(["-f", path])
    assert cfg.get(name) == expected
    assert cfg.source(name) == f"{path}:3"
    assert invocation.config_files == (path,)
    # everything else stays at its default
    changed = {o.name for o, _, s in cfg.items() if s != "default"}
    assert changed == {name, "config-file"}


BOOLEANS = [opt.name for opt in OPTIONS if opt.type is OptType.BOOL]


@pytest.mark.parametrize("name", BOOLEANS)
def test_set_and_reset_every_boolean(tmp_path, name):
    spelling = lookup(name).spellings[-1]
    path = write(tmp_path, "q.config", f"reset {spelling}\nset {spelling}\n")
    assert read_files([path]).get(name) is True
    path = write(tmp_path, "q.config", f"set {spelling}\n\treset\t{spelling}   # off\n")
    cfg = read_files([path])
    assert cfg.get(name) is False and cfg.source(name) == f"{path}:2"
    for word, value in (("TRUE", True), ("0", False), ("1", True), ("false", False)):
        path = write(tmp_path, "q.config", f"set {spelling} = {word}\n")
        assert read_files([path]).get(name) is value


@pytest.mark.parametrize("name", [o.name for o in OPTIONS if o.name not in NON_FILE_OPTIONS])
def test_every_option_as_a_long_flag(name):
    opt = lookup(name)
    text, expected = other_value(opt)
    cfg, _ = load([f"--{name}={text}"])
    assert cfg.get(name) == expected
    assert cfg.source(name) == f"argv --{name}"


FLAG_CASES = [
    (["-b", "/var/spool/bulls"], "bulldir", "/var/spool/bulls"),
    (["-B"], "bulldb-nonfatal", True),
    (["-c"], "downcase-user", True),
    (["-C"], "trim-domain", True),
    (["-d"], "debug", True),
    (["-D", "drac.example.org"], "drac-host", "drac.example.org"),
    (["-F"], "fast-update", True),
    (["-k"], "kerberos", True),
    (["-K", "pop"], "kerberos-service", "pop"),
    (["-l", "0"], "tls-support", "default"),
    (["-l", "1"], "tls-support", "stls"),
    (["-l", "2"], "tls-support", "alternate-port"),
    (["-l2"], "tls-support", "alternate-port"),
    (["-L", "100"], "mail-lock-check", 100),
    (["-p", "0"], "clear-text-password", "default"),
    (["-p", "1"], "clear-text-password", "never"),
    (["-p", "2"], "clear-text-password", "always"),
    (["-p", "3"], "clear-text-password", "local"),
    (["-p", "4"], "clear-text-password", "tls"),
    (["-p", "tls"], "clear-text-password", "tls"),
    (["-R"], "reverse-lookup", False),
    (["-s"], "statistics", True),
    (["-S"], "server-mode", True),
    (["-t", "/var/log/qpt.trace"], "tracefile", "/var/log/qpt.trace"),
    (["-T", "600"], "timeout", 600),
    (["-T600"], "timeout", 600),
    (["-u"], "user-options", True),
    (["-U"], "spool-options", True),
    (["-y", "local4"], "log-facility", "local4"),
    (["-y", "MAIL"], "log-facility", "mail"),
    (["-e", "login_delay=30,expire=0"], "announce-login-delay", 30),
    (["-e", "login_delay=30,expire=0"], "announce-expire", 0),
    (["-eexpire=5"], "announce-expire", 5),
    (["127.0.0.1:8110"], "listen", ("127.0.0.1:8110",)),
    (["110", "[::1]:995"], "listen", ("110", "[::1]:995")),
    (["--daemon"], "daemon", True),
    (["--pam-service=qpt"], "pam-service", "qpt"),
    (["--pam-service", "qpt"], "pam-service", "qpt"),
    (["--auth-failure-delay=0"], "auth-failure-delay", 0),
    (["--listen=8110", "--listen", "[::1]:8110"], "listen", ("8110", "[::1]:8110")),
]


@pytest.mark.parametrize("argv,name,expected", FLAG_CASES, ids=lambda v: str(v))
def test_command_line_flags(argv, name, expected):
    cfg, invocation = load(argv)
    assert cfg.get(name) == expected
    assert invocation.argv == tuple(argv)
    assert not invocation.check_config and not invocation.demo


def test_every_flag_in_the_table_has_a_case():
    covered = {arg for argv, _, _ in FLAG_CASES for arg in argv if arg.startswith("-")}
    for flag in BY_FLAG:
        if flag != "-f":                         # -f: test_f_reads_the_file_at_its_place
            assert any(arg.startswith(flag) for arg in covered), flag


def test_flag_sources_name_the_flag():
    cfg, _ = load(["-sS", "-T", "600", "-R", "-e", "expire=0", "8110"])
    assert cfg.source("timeout") == "argv -T"
    assert cfg.source("statistics") == "argv -s"
    assert cfg.source("server-mode") == "argv -S"
    assert cfg.source("reverse-lookups") == "argv -R"
    assert cfg.source("announce-expire") == "argv -e"
    assert cfg.source("listen") == "argv [ADDRESS:]PORT"
    assert cfg.source("debug") == "default"


def test_f_reads_the_file_at_its_place(tmp_path):
    path = write(tmp_path, "q.config", "set timeout = 120\nset statistics\n")
    cfg, invocation = load(["-T", "60", "-f", path])
    assert cfg.timeout == 120 and cfg.source("timeout") == f"{path}:1"
    cfg, invocation = load(["-f", path, "-T", "60"])
    assert cfg.timeout == 60 and cfg.source("timeout") == "argv -T"
    assert cfg.statistics is True
    assert cfg.config_file == path and cfg.source("config-file") == "argv -f"
    assert invocation.config_files == (path,)


def test_invocation_flags():
    cfg, invocation = load(["--check-config", "--demo"])
    assert invocation == Invocation(check_config=True, demo=True,
                                    argv=("--check-config", "--demo"))
    assert cfg == Config.defaults()


# ---- the grammar --------------------------------------------------------------------------------
def test_grammar_spaces_tabs_comments_quotes_case(tmp_path):
    path = write(tmp_path, "q.config", "\n".join([
        "# Qpopper-style configuration",
        "   # an indented comment",
        "",
        "set timeout=600",
        "\tset\tmail-lock-check\t=\t500\t# refresh more often",
        "SET Server-Mode",
        "set UW-kluge = TRUE",
        "set tls-support = STLS",
        'set log-login = "(v%0) POP login by user \\"%1\\" at (%2) %3"',
        "set bulldir = '/var/spool/my bulls'   # quoted, with a space",
        "set temp-name = .%s.pop#not-a-comment",
        "set clear-text-password = ssl",
        "set drac-host = `drac.example.org`",
        "set tls-options = 4",
        "set tls-options = 0x10",
        "set listen = 110",
        "set listen = [::1]:8110",
        "",
    ]) + "\r\n")
    cfg = read_files([path])
    assert cfg.timeout == 600
    assert cfg.mail_lock_check == 500 and cfg.source("mail-lock-check") == f"{path}:5"
    assert cfg.server_mode is True and cfg.uw_kluge is True
    assert cfg.tls_support == "stls"
    assert cfg.log_login == '(v%0) POP login by user "%1" at (%2) %3'
    assert cfg.bulldir == "/var/spool/my bulls"
    assert cfg.temp_name == ".%s.pop#not-a-comment"
    assert cfg.clear_text_password == "tls"
    assert cfg.drac_host == "drac.example.org"
    assert cfg.tls_options == 20
    assert cfg.listen == ("110", "[::1]:8110")


def test_crlf_line_ends_and_empty_quoted_string_unsets(tmp_path):
    path = write(tmp_path, "q.config", "set bulldir = /x\r\nset bulldir = \"\"\r\n"
                                       "set listen = 110\r\nset listen = ''\r\n")
    cfg = read_files([path])
    assert cfg.bulldir is None and cfg.source("bulldir") == f"{path}:2"
    assert cfg.listen == ()


def test_config_file_chains_relative_to_the_including_file(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path, "sub/tls.config", "set tls-support = alternate-port\n")
    first = write(tmp_path, "q.config", "set timeout = 30\nset config-file = sub/tls.config\n"
                                        "set shy\n")
    cfg, invocation = load(["-f", first])
    chained = os.path.join(str(tmp_path), "sub/tls.config")
    assert cfg.tls_support == "alternate-port"
    assert cfg.source("tls-support") == f"{chained}:1"
    assert cfg.source("config-file") == f"{first}:2"
    assert cfg.shy is True
    assert invocation.config_files == (first, chained)


def test_the_same_file_may_be_read_twice_in_sequence(tmp_path):
    common = write(tmp_path, "common.config", "set statistics\n")
    stls = write(tmp_path, "stls.config", f"set tls-support = stls\nset config-file = {common}\n")
    cfg, invocation = load(["-f", stls, "-f", common])
    assert invocation.config_files == (stls, common, common)
    assert cfg.statistics is True


# ---- bad input: each error names the file and the line ------------------------------------------
BAD_LINES = [
    ("set fooo = 1", "unknown option 'fooo'"),
    ("set timout = 600", "unknown option 'timout' (did you mean 'timeout'?)"),
    ("set debug = maybe", "'debug' expects a boolean (true, false, 1 or 0), got 'maybe'"),
    ("set timeout = abc", "'timeout' expects an integer, got 'abc'"),
    ("set timeout = 12.5", "'timeout' expects an integer, got '12.5'"),
    ("set hash-spool = 3", "'hash-spool' must be between 0 and 2, got 3"),
    ("set tls-support = yes",
     "'tls-support' must be one of default, none, stls, alternate-port, got 'yes'"),
    ("set log-facility = daemon", "'log-facility' must be one of mail, local0, local1, "
                                  "local2, local3, local4, local5, local6, local7, got 'daemon'"),
    ("set bulldir = " + "b" * 256, "'bulldir' value is longer than 255 characters (256)"),
    ("set bulldir = /var/spool/my bulls",
     "unexpected 'bulls' after the value of 'bulldir' (quote a value that contains spaces)"),
    ("reset spool-dir", "'reset' needs a boolean option; 'spool-dir' is a string"),
    ("reset timeout", "'reset' needs a boolean option; 'timeout' is an integer"),
    ("reset debug = true", "'reset debug' takes no value, got '= true'"),
    ("set timeout 600", "expected '=' after 'timeout', got '600'"),
    ("set debug true", "expected '=' after 'debug', got 'true'"),
    ("set timeout", "'timeout' needs '= value' (integer 1..86400)"),
    ("set timeout =", "'timeout' needs a value after '=' (integer 1..86400)"),
    ("set timeout = 600 700", "unexpected '700' after the value of 'timeout'"),
    ("set", "expected an option name after 'set'"),
    ("set = 5", "expected an option name after 'set'"),
    ("timeout = 600", "expected 'set' or 'reset', got 'timeout'"),
    ("= 600", "expected 'set' or 'reset', got '='"),
    ('set log-login = "unterminated', "unterminated quoted value for 'log-login'"),
    ("set listen = 99999", "'listen' expects [ADDRESS:]PORT (IPv6 addresses in brackets, "
                           "PORT 0..65535), got '99999'"),
]


@pytest.mark.parametrize("line,message", BAD_LINES, ids=[b[0][:30] for b in BAD_LINES])
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    path = write(tmp_path, "bad.config", "# good so far\nset statistics\n" + line + "\n")
    assert error_of(load, ["-f", path]) == f"{path}:3: {message}"


def test_overlong_line_and_non_utf8(tmp_path):
    path = write(tmp_path, "long.config", "set debug\n#" + "x" * limits.MAX_CONFIG_LINE_CHARS
                 + "\n")
    assert error_of(read_files, [path]) == (
        f"{path}:2: line longer than {limits.MAX_CONFIG_LINE_CHARS} characters")
    path = tmp_path / "latin1.config"
    path.write_bytes(b"set bulldir = /var/sp\xf6ol\n")
    assert error_of(read_files, [str(path)]) == f"{path}:1: not UTF-8 text"


def test_config_file_loop_is_an_error(tmp_path):
    a, b = str(tmp_path / "a.config"), str(tmp_path / "b.config")
    write(tmp_path, "a.config", f"set statistics\nset config-file = {b}\n")
    write(tmp_path, "b.config", f"# back again\nset config-file = {a}\n")
    assert error_of(load, ["-f", a]) == f"{b}:2: config-file loop: {a} -> {b} -> {a}"
    write(tmp_path, "self.config", "set config-file = self.config\n")
    self_path = str(tmp_path / "self.config")
    assert error_of(load, ["-f", self_path]) == (
        f"{self_path}:1: config-file loop: {self_path} -> {self_path}")


def test_config_file_depth_is_limited(tmp_path):
    depth = limits.MAX_CONFIG_FILE_DEPTH
    for n in range(depth + 1):
        write(tmp_path, f"{n}.config", f"set config-file = {n + 1}.config\n")
    write(tmp_path, f"{depth + 1}.config", "set debug\n")
    message = error_of(load, ["-f", str(tmp_path / "0.config")])
    assert message == (f"{tmp_path / f'{depth - 1}.config'}:1: config-file nesting deeper "
                       f"than {depth} levels")
    # exactly at the limit is fine
    write(tmp_path, f"{depth - 1}.config", "set debug\n")
    assert load(["-f", str(tmp_path / "0.config")])[0].debug is True


def test_unreadable_files_give_the_os_reason(tmp_path):
    missing = str(tmp_path / "missing.config")
    assert error_of(load, ["-f", missing]) == (
        f"argv -f: '{missing}': cannot read configuration file: No such file or directory")
    assert error_of(load, ["-f", str(tmp_path)]) == (
        f"argv -f: '{tmp_path}': cannot read configuration file: not a regular file")
    chain = write(tmp_path, "chain.config", "\nset config-file = nowhere.config\n")
    assert error_of(load, ["-f", chain]) == (
        f"{chain}:2: '{tmp_path / 'nowhere.config'}': cannot read configuration file: "
        f"No such file or directory")


BAD_ARGV = [
    (["-x"], "argv: unknown flag '-x' (popper --help lists them)"),
    (["-sx"], "argv: unknown flag '-x' (popper --help lists them)"),
    (["-T"], "argv: -T needs an argument (secs)"),
    (["-T", "soon"], "argv -T: 'timeout' expects an integer, got 'soon'"),
    (["-p", "5"], "argv -p: expects 0..4 or one of default, never, always, local, tls, ssl, "
                  "got '5'"),
    (["-l", "3"], "argv -l: expects 0..2 or one of default, none, stls, alternate-port, got '3'"),
    (["-y", "kern"], "argv -y: 'log-facility' must be one of mail, local0, local1, local2, "
                     "local3, local4, local5, local6, local7, got 'kern'"),
    (["-e", "delay=3"], "argv -e: expected login_delay=N,expire=N, got 'delay=3'"),
    (["-e", "expire=never"], "argv -e: 'announce-expire' expects an integer, got 'never'"),
    (["--timeout"], "argv: --timeout needs an argument (value)"),
    (["--no-such=1"], "argv: unknown option '--no-such'"),
    (["--demo=1"], "argv: --demo takes no value"),
    (["--daemon=perhaps"], "argv --daemon: 'daemon' expects a boolean (true, false, 1 or 0), "
                           "got 'perhaps'"),
    (["pop3"], "argv: unexpected argument 'pop3' (expected [ADDRESS:]PORT, IPv6 addresses in "
               "brackets)"),
    (["::1:110"], "argv: unexpected argument '::1:110' (expected [ADDRESS:]PORT, IPv6 "
                  "addresses in brackets)"),
]


@pytest.mark.parametrize("argv,message", BAD_ARGV, ids=lambda v: str(v))
def test_bad_argv(argv, message):
    assert error_of(load, argv) == message


# ---- options that cannot go together --------------------------------------------------------------
@pytest.mark.parametrize("home_option", [["--home-dir-mail", ".mail"], ["--home-dir-misc"]])
def test_pop_auth_users_cannot_have_home_dir_files_argv(home_option):
    """pop.auth users share one account: home-dir-mail would give them one mail file."""
    message = error_of(load, ["--user-database", "pop-auth", *home_option])
    name = home_option[0][2:]
    assert message == (f"argv {home_option[0]}: '{name}' cannot be used with 'user-database = "
                       f"pop-auth' (set at argv --user-database): pop.auth users share one "
                       f"account, so they would share one home directory and one mail file")


def test_pop_auth_with_home_dir_mail_in_a_file_names_the_line(tmp_path):
    path = write(tmp_path, "qpopper.config",
                 "set user-database = pop-auth\n# mail in the home\nset home-dir-mail = .mail\n")
    message = error_of(load, ["-f", path])
    assert message.startswith(f"{path}:3: 'home-dir-mail' cannot be used with "
                              f"'user-database = pop-auth' (set at {path}:1)")
    # either alone is fine, and so is the system user database with home-dir-mail
    assert load(["-f", path, "--user-database", "system"])[0].home_dir_mail == ".mail"
    assert load(["--user-database", "pop-auth"])[0].home_dir_mail is None


def test_check_config_refuses_pop_auth_with_home_dir_mail(tmp_path):
    path = write(tmp_path, "qpopper.config", "set user-database = pop-auth\nset home-dir-misc\n")
    child = subprocess.run([sys.executable, "-c", "import sys; from qpopper.cli import "
                            "popper_main; sys.exit(popper_main(sys.argv[1:]))",
                            "--check-config", "-f", path],
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == 2 and child.stdout == ""
    assert child.stderr.startswith(f"popper: {path}:2: 'home-dir-misc' cannot be used with ")


# ---- per-user files -------------------------------------------------------------------------------
def test_user_file_scope_is_enforced_logged_and_not_fatal(tmp_path):
    path = write(tmp_path, ".qpopper-options", "\n".join([
        "set server-mode",                      # anywhere: applied
        "set spool-dir = /tmp/evil",            # not in the home file
        "set clear-text-password = always",     # not in user files
        "set tls-support = stls",               # startup only
        "set timeout = 300",                    # anywhere: applied
    ]) + "\n")
    log = Recorder()
    base = Config.defaults()
    cfg = apply_user_file(base, path, "home", log)
    assert cfg.server_mode is True and cfg.source("server-mode") == f"{path}:1"
    assert cfg.timeout == 300
    assert cfg.spool_dir == "/var/mail" and cfg.clear_text_password == "default"
    assert cfg.tls_support == "default"
    assert log.records == [
        (syslog.LOG_WARNING, f"{path}:2: option 'spool-dir' may not be set in a "
                             f"home-directory ~/.qpopper-options file; ignored"),
        (syslog.LOG_WARNING, f"{path}:3: option 'clear-text-password' may not be set in a "
                             f"home-directory ~/.qpopper-options file; ignored"),
        (syslog.LOG_WARNING, f"{path}:4: option 'tls-support' may not be set in a "
                             f"home-directory ~/.qpopper-options file; ignored"),
    ]
    assert base.server_mode is False, "the Config given is not changed"


def test_spool_dir_file_may_set_not_home_options(tmp_path):
    path = write(tmp_path, "qpt.qpopper-options",
                 "set spool-dir = /srv/mail\nset downcase-user\nset hash-spool = 2\n")
    log = Recorder()
    cfg = apply_user_file(Config.defaults(), path, "spool", log)
    assert cfg.spool_dir == "/srv/mail" and cfg.hash_spool == 2
    assert cfg.downcase_user is False
    assert log.records == [(syslog.LOG_WARNING, f"{path}:2: option 'downcase-user' may not be "
                                                f"set in a spool-directory options file; "
                                                f"ignored")]


@pytest.mark.parametrize("kind", ["home", "spool"])
def test_scope_table_drives_user_files(tmp_path, kind):
    for opt in OPTIONS:
        if opt.name in NON_FILE_OPTIONS:
            continue
        text, expected = other_value(opt)
        path = write(tmp_path, "user.options", f"set {opt.name} = {text}\n")
        log = Recorder()
        cfg = apply_user_file(Config.defaults(), path, kind, log)
        allowed = opt.scope is Scope.ANYWHERE or (kind == "spool" and opt.scope is Scope.NOT_HOME)
        assert (cfg.get(opt.name) == expected) is allowed, opt.name
        assert bool(log.records) is not allowed, opt.name


def test_user_file_syntax_error_ignores_the_whole_file(tmp_path):
    path = write(tmp_path, ".qpopper-options", "set server-mode\nset timeout = forever\n")
    log = Recorder()
    base = Config.defaults().replace(timeout=60)
    assert apply_user_file(base, path, "home", log) is base
    assert log.records == [(syslog.LOG_ERR, f"{path}:2: 'timeout' expects an integer, got "
                                            f"'forever'; options file ignored")]


def test_user_file_missing_symlinked_or_chained(tmp_path):
    log = Recorder()
    base = Config.defaults()
    assert apply_user_file(base, str(tmp_path / "absent"), "home", log) is base
    assert log.records == []
    target = write(tmp_path, "target", "set server-mode\n")
    link = tmp_path / ".qpopper-options"
    link.symlink_to(target)
    assert apply_user_file(base, str(link), "home", log) is base
    assert log.records == [(syslog.LOG_ERR, f"{link}: cannot read configuration file: is a "
                                            f"symbolic link; options file ignored")]
    # a chained file keeps the user file's restrictions
    log = Recorder()
    write(tmp_path, "more", "set spool-dir = /tmp/evil\nset statistics\n")
    user = write(tmp_path, "user", "set config-file = more\n")
    cfg = apply_user_file(base, user, "home", log)
    assert cfg.statistics is True and cfg.spool_dir == "/var/mail"
    assert len(log.records) == 1 and "'spool-dir' may not be set" in log.records[0][1]


def spool_options(tmp_path, text: str, mode: int = 0o644) -> str:
    path = write(tmp_path, "qpt.qpopper-options", text)
    os.chmod(path, mode)
    return path


def test_spool_options_file_of_the_server_account_is_applied(tmp_path):
    """The owner the session passes: root, or (here, for a server not running as root) the
    server's own account. Errors still name the file and the line."""
    path = spool_options(tmp_path, "set statistics\nset hash-spool = 2\n")
    log = Recorder()
    cfg = apply_spool_options_file(Config.defaults(), path, os.geteuid(), log)
    assert cfg.statistics is True and cfg.source("statistics") == f"{path}:1"
    assert cfg.hash_spool == 2 and log.records == []
    path = spool_options(tmp_path, "set statistics\nset timeout = forever\n")
    assert apply_spool_options_file(Config.defaults(), path, os.geteuid(), log).statistics is False
    assert log.records == [(syslog.LOG_ERR, f"{path}:2: 'timeout' expects an integer, got "
                                            f"'forever'; options file ignored")]


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_spool_options_file_writable_by_group_or_others_is_ignored(tmp_path, mode):
    path = spool_options(tmp_path, "set statistics\n", mode)
    log = Recorder()
    base = Config.defaults()
    assert apply_spool_options_file(base, path, os.geteuid(), log) is base
    assert log.records == [(syslog.LOG_WARNING, f"Ignoring {path}: writable by group or "
                                                f"others (mode {mode:04o})")]


def test_spool_options_file_of_another_owner_is_ignored(tmp_path):
    path = spool_options(tmp_path, "set statistics\n")
    log = Recorder()
    base = Config.defaults()
    other = os.geteuid() + 1
    assert apply_spool_options_file(base, path, other, log) is base
    assert log.records == [(syslog.LOG_WARNING, f"Ignoring {path}: owned by uid "
                                                f"{os.geteuid()} (must be uid {other}, "
                                                f"the server's account)")]


def test_spool_options_link_fifo_and_missing_file(tmp_path):
    log = Recorder()
    base = Config.defaults()
    owner = os.geteuid()
    assert apply_spool_options_file(base, str(tmp_path / "absent"), owner, log) is base
    link = tmp_path / "link.qpopper-options"
    link.symlink_to(spool_options(tmp_path, "set statistics\n"))
    fifo = tmp_path / "fifo.qpopper-options"
    os.mkfifo(fifo, 0o644)                   # opened O_NONBLOCK: no writer cannot hang us
    assert apply_spool_options_file(base, str(link), owner, log) is base
    assert apply_spool_options_file(base, str(fifo), owner, log) is base
    assert log.records == [(syslog.LOG_WARNING, f"Ignoring {link}: is a symbolic link"),
                           (syslog.LOG_WARNING, f"Ignoring {fifo}: not a regular file")]


def test_huge_sparse_files_are_refused_without_reading_them(tmp_path):
    """A sparse ~/.qpopper-options claiming 64 GiB: read at most the bound, in a child whose
    address space is capped at 1 GiB (reading it whole would fail there, not exhaust us)."""
    user_file = tmp_path / ".qpopper-options"
    with open(user_file, "wb") as f:
        f.write(b"set server-mode\n")
        f.truncate(64 << 30)
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent("""
            import resource, sys
            resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
            from qpopper.config import Config, apply_user_file
            logged = []
            base = Config.defaults()
            cfg = apply_user_file(base, sys.argv[1], "home", lambda *record: logged.append(record))
            print(cfg is base, logged)
            """), str(user_file)],
        capture_output=True, text=True, timeout=60, cwd=os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))))
    assert child.returncode == 0, child.stderr
    bound = limits.MAX_CONFIG_FILE_OCTETS
    assert child.stdout.strip() == str(True) + " " + repr(
        [(syslog.LOG_ERR, f"{user_file}: larger than {bound} octets; options file ignored")])
    # the bound itself is fine, one octet more is not; a chained file gets the same bound
    main = tmp_path / "main.config"
    main.write_text("set config-file = big.config\n")
    big = tmp_path / "big.config"
    big.write_bytes(b"set debug\n" + b"#" * 100 + b"\n" * (bound - 110))
    assert big.stat().st_size == bound
    assert load(["-f", str(main)])[0].debug is True
    with open(big, "ab") as f:
        f.write(b"\n")
    assert error_of(load, ["-f", str(main)]) == (
        f"{main}:1: '{big}': larger than {bound} octets")


def test_apply_user_file_refuses_unknown_kinds(tmp_path):
    with pytest.raises(ValueError):
        apply_user_file(Config.defaults(), str(tmp_path / "x"), "global", Recorder())


# ---- the Config object --------------------------------------------------------------------------
def test_config_api():
    cfg = Config.defaults()
    assert cfg.update_on_abort is True and cfg.get("uw-kludge") is False
    changed = cfg.replace(timeout=5, spool_dir="/tmp/spool")
    assert (changed.timeout, changed.spool_dir) == (5, "/tmp/spool")
    assert changed.source("timeout") == "override" and cfg.timeout == 120
    with pytest.raises(AttributeError):
        cfg.timeout = 5
    with pytest.raises(AttributeError):
        cfg.no_such_option
    with pytest.raises(KeyError):
        cfg.get("no-such-option")
    with pytest.raises(ConfigError, match="unknown option 'bogus'"):
        cfg.replace(bogus=1)
    assert [opt.name for opt, _, _ in cfg.items()] == [opt.name for opt in OPTIONS]
    assert pickle.loads(pickle.dumps(changed)) == changed
    assert copy.deepcopy(changed).source("spool-dir") == "override"
    assert "timeout=5" in repr(changed)
