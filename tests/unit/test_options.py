"""The option table against the manual: every option, flag, alias, default and scope.

The expected lists below are copied from the manual's tables (Qpopper 4.1 admin manual,
"Configure Options", "Run-Time Command Line Options", "Run-Time Options from a Configuration
File") and reference §1.7/§7, independently of qpopper/options.py.
"""

import pytest

from qpopper import limits
from qpopper.options import BY_FLAG, E_FLAG_KEYS, OPTIONS, Scope, lookup

# Every configuration-file option the manual names (its run-time table, the configure table's
# "Configuration File Option" column, the Performance chapter and Qpopper's config.c table).
MANUAL_CONFIG_OPTIONS = """
announce-expire announce-login-delay auth-file auto-delete bulldb-max-tries bulldb-nonfatal
bulldir cache-dir cache-name check-hash-dir check-old-spool-loc check-password-expired
chunky-writes clear-text-password conservative-cache config-file debug downcase-user drac-host
fast-update group-bulletins group-no-server-mode group-server-mode hash-spool home-dir-mail
home-dir-misc keep-temp-drop kerberos kerberos-service log-facility log-login mail-command
mail-lock-check max-bulletins no-atomic-open nonauth-file old-style-uid reverse-lookup
sasl-forward-secrecy sasl-log-login sasl-max-ssf sasl-min-ssf sasl-no-active sasl-no-anonymous
sasl-no-dictionary sasl-no-plaintext server-mode shy spool-dir spool-options statistics
temp-dir temp-name timeout timing tls-cipher-list tls-identity-file tls-options tls-passphrase
tls-private-key-file tls-server-cert-file tls-support tls-version tls-workarounds tracefile
trim-domain update-on-abort update-status-headers user-options uw-kluge
""".split()

# The manual's command-line table: flag -> configuration-file option it sets.
MANUAL_FLAGS = {
    "-b": "bulldir", "-B": "bulldb-nonfatal", "-c": "downcase-user", "-C": "trim-domain",
    "-d": "debug", "-D": "drac-host", "-f": "config-file", "-F": "fast-update",
    "-k": "kerberos", "-K": "kerberos-service", "-l": "tls-support", "-L": "mail-lock-check",
    "-p": "clear-text-password", "-R": "reverse-lookup", "-s": "statistics",
    "-S": "server-mode", "-t": "tracefile", "-T": "timeout", "-u": "user-options",
    "-U": "spool-options", "-y": "log-facility",
}

# Reference §7.3: every spelling seen in the manual or the C source.
ALIASES = {
    "bulldb-max-retries": "bulldb-max-tries", "bulldb-max-retires": "bulldb-max-tries",
    "check-hash-spool": "check-hash-dir", "reverse-lookups": "reverse-lookup",
    "uw-kludge": "uw-kluge", "UW-kluge": "uw-kluge", "group-sever-mode": "group-server-mode",
}

# Built-in defaults: the manual, with reference §7 deciding its conflicts.
DEFAULTS = {
    "announce-expire": -1, "auto-delete": False, "bulldb-max-tries": 75,
    "bulldb-nonfatal": False, "cache-name": ".%s.cache", "check-hash-dir": True,
    "check-old-spool-loc": True, "check-password-expired": True, "chunky-writes": "default",
    "clear-text-password": "default", "conservative-cache": False, "debug": False,
    "downcase-user": False, "fast-update": False, "group-bulletins": False, "hash-spool": 0,
    "home-dir-misc": False, "keep-temp-drop": False, "kerberos": False,
    "kerberos-service": "rcmd", "log-facility": "mail", "mail-lock-check": 5000,
    "max-bulletins": 1, "no-atomic-open": False, "old-style-uid": False,
    "reverse-lookup": True, "sasl-min-ssf": 0, "sasl-max-ssf": 4294967295,
    "sasl-forward-secrecy": False, "sasl-no-active": False, "sasl-no-anonymous": True,
    "sasl-no-dictionary": False, "sasl-no-plaintext": True, "server-mode": False,
    "shy": False, "spool-options": False, "statistics": False, "temp-name": ".%s.pop",
    "timeout": 120, "timing": False, "tls-support": "default", "tls-version": "default",
    "trim-domain": False, "update-on-abort": True, "update-status-headers": True,
    "user-options": False, "uw-kluge": False, "spool-dir": "/var/mail",
}

# The manual's "not permitted in a configuration file in the user's home directory nor in the
# spool directory" notes, "not permitted in ... the user's home directory" (spool-options),
# "permitted in all configuration files", and reference T3 (TLS options are init-only).
SCOPES = {
    "clear-text-password": {Scope.NOT_USER}, "downcase-user": {Scope.NOT_USER},
    "home-dir-mail": {Scope.NOT_USER}, "home-dir-misc": {Scope.NOT_USER},
    "kerberos": {Scope.NOT_USER}, "kerberos-service": {Scope.NOT_USER},
    "reverse-lookup": {Scope.NOT_USER}, "trim-domain": {Scope.NOT_USER},
    "user-options": {Scope.NOT_USER}, "spool-options": {Scope.NOT_HOME},
    "announce-expire": {Scope.ANYWHERE}, "announce-login-delay": {Scope.ANYWHERE},
    "bulldb-max-tries": {Scope.ANYWHERE}, "bulldb-nonfatal": {Scope.ANYWHERE},
    "config-file": {Scope.ANYWHERE},
    # bulldir: the manual allows it anywhere, but bulletins are read with the mail group, so
    # a home file's bulldir could name other users' spools (the admin's spool-dir file may).
    "bulldir": {Scope.NOT_HOME},
    # debug (and tracefile): the manual allows them anywhere, but the session's log is open
    # before the user files are read; the master rebuilds it on HUP.
    "debug": {Scope.STARTUP},
    # drac-host: the manual allows it anywhere, but the DRAC call is made by the root part
    # of the session right after the login, before the user files are read (qpopper/server/drac.py).
    "drac-host": {Scope.NOT_USER}, "fast-update": {Scope.ANYWHERE},
    "mail-lock-check": {Scope.ANYWHERE}, "server-mode": {Scope.ANYWHERE},
    "statistics": {Scope.ANYWHERE}, "timeout": {Scope.ANYWHERE},
    # Qpopper's CfgResInit options: never in user files.
    "auth-file": {Scope.STARTUP}, "nonauth-file": {Scope.STARTUP},
    "check-password-expired": {Scope.STARTUP}, "log-facility": {Scope.STARTUP},
    "log-login": {Scope.STARTUP}, "shy": {Scope.STARTUP},
}

EXTENSIONS = {
    "listen": (), "pam-service": "pop3", "max-children": 200, "max-children-per-address": 20,
    "auth-failure-delay": 2, "pid-file": "/run/qpopper.pid", "daemon": False,
    "pop-auth-file": "/var/lib/qpopper/popauth/pop.auth", "user-database": "system",
    "shutdown-grace": 30, "tls-min-version": "TLSv1.2",
}


def test_every_manual_option_is_in_the_table():
    missing = [name for name in MANUAL_CONFIG_OPTIONS if lookup(name) is None]
    assert missing == []
    for name in MANUAL_CONFIG_OPTIONS:
        assert lookup(name).name == name, "the manual's spelling is the canonical name"


@pytest.mark.parametrize("flag,name", sorted(MANUAL_FLAGS.items()))
def test_every_manual_flag_sets_its_option(flag, name):
    assert BY_FLAG[flag].name == name


def test_e_flag_sets_both_announce_options():
    assert {k: o.name for k, o in E_FLAG_KEYS.items()} == {
        "login_delay": "announce-login-delay", "expire": "announce-expire"}
    assert {o.flag for o in OPTIONS if o.flag} == set(MANUAL_FLAGS) | {"-e"}


@pytest.mark.parametrize("alias,name", sorted(ALIASES.items()))
def test_aliases_resolve_to_the_canonical_option(alias, name):
    assert lookup(alias).name == name
    assert lookup(alias.upper()).name == name


@pytest.mark.parametrize("name,default", sorted(DEFAULTS.items()))
def test_defaults_follow_the_manual_and_reference(name, default):
    assert lookup(name).default == default


def test_idle_timeout_default_comes_from_limits():
    assert lookup("timeout").default == limits.IDLE_TIMEOUT_S == 120


@pytest.mark.parametrize("name,scopes", sorted(SCOPES.items()))
def test_scopes_follow_the_manual_notes(name, scopes):
    assert lookup(name).scope in scopes


def test_tls_options_are_startup_only():
    tls = [o for o in OPTIONS if o.name.startswith("tls-")]
    assert len(tls) >= 10
    assert {o.scope for o in tls} == {Scope.STARTUP}


@pytest.mark.parametrize("name,default", sorted(EXTENSIONS.items()))
def test_extensions_exist_with_their_defaults(name, default):
    opt = lookup(name)
    assert opt.default == default
    assert opt.extension and opt.help.startswith("Extension:")


def test_only_extensions_say_extension_and_every_option_has_help():
    for opt in OPTIONS:
        assert opt.help.strip(), opt.name
        assert opt.help.startswith("Extension:") == opt.extension, opt.name


def test_mnemonic_values_and_numbers_match_the_manual():
    assert lookup("tls-support").choices == ("default", "none", "stls", "alternate-port")
    assert lookup("tls-support").flag_numbers == ("default", "stls", "alternate-port")
    assert lookup("clear-text-password").flag_numbers == (
        "default", "never", "always", "local", "tls")
    assert set(lookup("chunky-writes").accepted_words) == {"default", "always", "never", "tls",
                                                           "ssl"}
    assert lookup("log-facility").choices == ("mail",) + tuple(f"local{n}" for n in range(8))
    assert set(lookup("tls-version").accepted_words) == {"default", "SSLv2", "SSLv3", "TLSv1",
                                                         "SSLv23", "all"}
    assert lookup("user-database").choices == ("system", "pop-auth")
    assert lookup("tls-min-version").choices == ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")


@pytest.mark.parametrize("text,value", [("true", True), ("TRUE", True), ("1", True),
                                        ("false", False), ("False", False), ("0", False)])
def test_boolean_words(text, value):
    assert lookup("debug").parse(text) is value


@pytest.mark.parametrize("text", ["yes", "2", "", "truex", "-1"])
def test_bad_booleans_are_refused(text):
    with pytest.raises(ValueError, match="'debug' expects a boolean"):
        lookup("debug").parse(text)


def test_integers_ranges_and_hex():
    assert lookup("timeout").parse("600") == 600
    assert lookup("tls-options").parse("0x4") == 4
    assert lookup("announce-expire").parse("-1") == -1
    with pytest.raises(ValueError, match="'timeout' expects an integer, got '10s'"):
        lookup("timeout").parse("10s")
    with pytest.raises(ValueError, match="'hash-spool' must be between 0 and 2, got 3"):
        lookup("hash-spool").parse("3")
    with pytest.raises(ValueError, match="'mail-lock-check' must be at least 1, got 0"):
        lookup("mail-lock-check").parse("0")
    with pytest.raises(ValueError, match="'timeout' must be between 1 and 86400, got 0"):
        lookup("timeout").parse("0")


def test_mnemonics_are_case_insensitive_with_synonyms():
    assert lookup("tls-support").parse("STLS") == "stls"
    assert lookup("clear-text-password").parse("SSL") == "tls"
    assert lookup("chunky-writes").parse("ssl") == "tls"
    assert lookup("tls-version").parse("all") == "SSLv23"
    with pytest.raises(ValueError) as error:
        lookup("tls-support").parse("yes")
    assert str(error.value) == ("'tls-support' must be one of default, none, stls, "
                                "alternate-port, got 'yes'")


def test_strings_are_bounded_and_printable():
    opt = lookup("bulldir")
    longest = "/" + "x" * (limits.MAX_STRING_OPTION_CHARS - 1)      # bulldir is a path
    assert opt.parse(longest) == longest and len(longest) == 255
    with pytest.raises(ValueError, match="longer than 255 characters"):
        opt.parse(longest + "x")
    with pytest.raises(ValueError, match="control character"):
        opt.parse("/var/\x01bulls")
    assert opt.parse("") is None


def test_repeatable_options_accumulate():
    listen = lookup("listen")
    value = listen.combine((), listen.parse("110"))
    value = listen.combine(value, listen.parse("[::1]:995"))
    value = listen.combine(value, listen.parse("110"))
    assert value == ("110", "[::1]:995")
    assert listen.combine(value, listen.parse("")) == ()
    tls_options = lookup("tls-options")
    assert tls_options.combine(tls_options.combine(0, 4), 16) == 20
