"""Text generated from the option table: the example configuration file, `popper --help`,
the `popper --check-config` report and the man pages popper(8) and qpopper.config(5).
Nothing here knows an option that options.py does not.

    python -m qpopper.docgen example-config > etc/qpopper/qpopper.config
    python -m qpopper.docgen usage
    python -m qpopper.docgen man popper > man/popper.8
    python -m qpopper.docgen man qpopper.config > man/qpopper.config.5
"""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass

from qpopper import QPOPPER_VERSION, __version__, limits
from qpopper.config import Config, Invocation
from qpopper.options import OPTIONS, BY_NAME, EXPIRE_FLAG, SECRET_OPTIONS, OptType, Option

WIDTH = 78
EXAMPLE_CONFIG_PATH = "etc/qpopper/qpopper.config"
REGENERATE = "python -m qpopper.docgen example-config > etc/qpopper/qpopper.config"


@dataclass(frozen=True)
class ShippedSetting:
    """A value the shipped configuration sets on purpose, with the reason printed beside it."""

    option: str
    value: str                 # config-file text, e.g. "600"
    reason: str


# The settings the packaged /etc/qpopper/qpopper.config changes from the built-in defaults
# (docs/compatibility.md, "QUIT, timeouts and update-on-abort"). The built-in defaults stay Qpopper's; the packages ship these.
SNAKEOIL_CERT = "/etc/ssl/certs/ssl-cert-snakeoil.pem"
SNAKEOIL_KEY = "/etc/ssl/private/ssl-cert-snakeoil.key"
SHIPPED_SETTINGS: tuple[ShippedSetting, ...] = (
    ShippedSetting("clear-text-password", "tls",
                   "passwords travel only inside TLS (STLS on port 110, or port 995), as "
                   "Debian's other mail servers ship (RFC 8314). Set it to default to allow "
                   "USER/PASS without TLS, e.g. on a trusted network."),
    ShippedSetting("timeout", "600",
                   "RFC 1939 section 3 asks for an inactivity timer of at least 10 minutes; "
                   "Qpopper's built-in 120 seconds cuts off slow clients."),
    ShippedSetting("tls-private-key-file", SNAKEOIL_KEY,
                   "the key of that self-signed certificate, read by the master as root "
                   "(the private key directory is not world-readable)."),
    ShippedSetting("tls-server-cert-file", SNAKEOIL_CERT,
                   "a self-signed certificate made when the package is installed (Debian: "
                   "ssl-cert's snake-oil one), so TLS works out of the box; replace it with "
                   "your host's real certificate (clients warn about a self-signed one)."),
    ShippedSetting("tls-support", "stls",
                   "offer STLS (RFC 2595) on the plain POP3 port. Port 995 (TLS from the "
                   "first byte) is served by qpopper.service's --tls-listen=995, or by "
                   "qpopper-tls.socket, whose instances add -l 2 (alternate-port)."),
    ShippedSetting("update-on-abort", "false",
                   "RFC 1939 section 6: a session that ends without QUIT must not enter the "
                   "UPDATE state, so messages marked as deleted stay in the mailbox."),
)


# ---- example configuration file ----------------------------------------------------------------
def example_config(shipped: tuple[ShippedSetting, ...] = SHIPPED_SETTINGS) -> str:
    """The commented example configuration: every option, its default, help and scope."""
    by_option = {}
    for setting in shipped:
        opt = BY_NAME.get(setting.option.lower())
        if opt is None:
            raise ValueError(f"shipped setting for unknown option {setting.option!r}")
        opt.parse(setting.value)       # a shipped value must be valid (ValueError otherwise)
        by_option[opt.name] = setting
    out = _example_header()
    for title, group in (("Qpopper 4.1 options", [o for o in OPTIONS if not o.extension]),
                         ("qpopper-py extensions", [o for o in OPTIONS if o.extension])):
        out += ["", "#" + "=" * (WIDTH - 1), f"# {title}", "#" + "=" * (WIDTH - 1)]
        for opt in group:
            out += [""] + _example_entry(opt, by_option.get(opt.name))
    return "\n".join(out) + "\n"


def _example_header() -> list[str]:
    return [
        "# qpopper-py configuration file (read with: popper -f /etc/qpopper/qpopper.config)",
        "#",
        "# GENERATED from the option table in qpopper/options.py by",
        f"#     {REGENERATE}",
        "# Edit the table, not this file, in the source tree; a test fails when they differ.",
        "#",
        "# Grammar (Qpopper 4.1's):",
        "#     # comment                  comment and blank lines are ignored",
        "#     set OPTION                 a boolean option becomes true",
        "#     set OPTION = VALUE         true/false/1/0, an integer, a mnemonic or a string",
        "#     reset OPTION               a boolean option becomes false",
        "# Spaces or tabs may surround each token. Option names and mnemonics are",
        f"# case-insensitive. Strings are one word of at most {limits.MAX_STRING_OPTION_CHARS}"
        " printable characters,",
        "# or are quoted (\"...\", '...') to include spaces; \"\" unsets a string option.",
        "# Check a file with:  popper --check-config -f FILE",
        "#",
        "# Each option is shown commented out with its built-in default (or, when it has",
        "# no default, an example value). 'Where' says which files may set it: the",
        "# per-user files (~/.qpopper-options with -u / user-options, and",
        "# <spool-dir>/<user>.qpopper-options with -U / spool-options) are restricted.",
        "#",
        "# The settings the packages change from the built-in defaults are the",
        "# uncommented 'set' lines below, each after a 'Shipped setting:' reason.",
    ]


def _example_entry(opt: Option, shipped: ShippedSetting | None) -> list[str]:
    facts = [_option_facts(opt)]
    if opt.flag or opt.extension:
        facts.append(f"command line: {_command_line(opt)}")
    if opt.aliases:
        facts.append("also spelled " + ", ".join(opt.aliases))
    lines = _wrap(f"{opt.name}  ({'; '.join(facts)})", "# ", "#     ")
    lines += _wrap(opt.help, "#   ", "#   ")
    lines += _wrap(f"Where: {opt.scope.description}.", "#   ", "#   ")
    lines.append("#")
    lines.append(f"# set {opt.name} = {_example_value(opt)}")
    if shipped is not None:
        lines += _wrap(f"Shipped setting: {shipped.reason}", "# ", "#   ")
        lines.append(f"set {opt.name} = {shipped.value}")
    return lines


def _example_value(opt: Option) -> str:
    if _has_no_default(opt):
        return opt.format(opt.example)
    if opt.repeatable and isinstance(opt.default, tuple):
        return opt.format(opt.default[0])
    return opt.format(opt.default)


def _flag_text(opt: Option) -> str:
    if opt.flag == EXPIRE_FLAG:
        return f"-e {opt.flag_arg}"
    return f"{opt.flag} {opt.flag_arg}" if opt.flag_arg else opt.flag


def _long_form(opt: Option) -> str:
    """The option as a --NAME argument (booleans take no value)."""
    return f"--{opt.name}" + ("" if opt.type is OptType.BOOL else "=VALUE")


def _command_line(opt: Option) -> str:
    """How to set it on the command line: its Qpopper flag, else --NAME."""
    return _flag_text(opt) if opt.flag else _long_form(opt)


def _single_option_flags() -> list[Option]:
    """The options with a flag of their own (not -e, which sets two), in flag order (-b, -B, -c)."""
    return sorted((o for o in OPTIONS if o.flag and o.flag != EXPIRE_FLAG),
                  key=lambda o: (o.flag.lower(), o.flag))


def _plain_help(opt: Option) -> str:
    """The help text without the "Extension: " mark (sections already say so)."""
    return opt.help.removeprefix("Extension: ")


def _has_no_default(opt: Option) -> bool:
    return opt.default is None or opt.default == ()


def _option_facts(opt: Option) -> str:
    """'TYPE; default: VALUE' (or 'default: unset')."""
    default = "unset" if _has_no_default(opt) else opt.format(opt.default)
    return f"{opt.type_text}; default: {default}"


def _wrap(text: str, first: str, rest: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=first, subsequent_indent=rest,
                         break_on_hyphens=False, break_long_words=False)


# ---- popper --help -----------------------------------------------------------------------------
def usage() -> str:
    out = [
        "usage: popper [[ADDRESS:]PORT ...] [FLAGS] [--OPTION[=VALUE] ...]",
        "       popper --check-config | --show-config [-f FILE ...] [FLAGS]",
        "       popper --demo | --help | --version",
        "",
        "Qpopper 4.1's POP3 server in Python. With [ADDRESS:]PORT (or the listen option) it",
        "is a standalone server; otherwise it serves the connection on stdin (inetd, systemd",
        "Accept=yes). Flags and files are read in order; -f FILE reads a configuration",
        "file at that point.",
        "",
        "Qpopper flags:",
    ]
    rows = [(_flag_text(opt), f"{opt.name}: {_first_sentence(opt.help)}")
            for opt in _single_option_flags()]
    rows.append(("-e login_delay=N,expire=N", "announce-login-delay, announce-expire: "
                 "LOGIN-DELAY and EXPIRE announced in CAPA."))
    rows.sort(key=lambda row: (row[0][1].lower(), row[0][1]))
    out += _table(rows)
    out += ["", "Extensions (also settable in configuration files):"]
    out += _table([(_long_form(o), _first_sentence(_plain_help(o)))
                   for o in OPTIONS if o.extension])
    out += ["", "Every configuration-file option also works as --NAME=VALUE (booleans: --NAME).",
            "", "Invocation:"]
    out += _table([
        ("--check-config", "read the flags and files, make the checks the server makes at "
                           "start-up (certificate and key, directories, accounts, PAM "
                           "service), print every option's value and where it came from; "
                           "exit 0 when valid, 2 with one line naming the file and line of "
                           "a mistake in the configuration, 1 with one line naming the "
                           "option and the file the server could not start with"),
        ("--show-config", "print every option's value and where it came from, without the "
                          "checks of the system (the package scripts read the values with "
                          "it before they create the accounts and directories)"),
        ("--demo", "run the demo server on 127.0.0.1:8110 as the current user"),
        ("--help", "this text"),
        ("--version", "the version"),
    ])
    return "\n".join(out) + "\n"


def _first_sentence(text: str) -> str:
    head, dot, _ = text.partition(". ")
    return head + "." if dot else text


def _table(rows: list[tuple[str, str]]) -> list[str]:
    left = max(len(name) for name, _ in rows) + 2
    left = min(left, 28)
    lines = []
    for name, text in rows:
        wrapped = textwrap.wrap(text, WIDTH - left - 2, break_on_hyphens=False) or [""]
        if len(name) + 2 > left:
            lines.append(f"  {name}")
            lines += [" " * (left + 2) + part for part in wrapped]
        else:
            lines.append(f"  {name.ljust(left)}{wrapped[0]}")
            lines += [" " * (left + 2) + part for part in wrapped[1:]]
    return lines


# ---- popper --check-config ---------------------------------------------------------------------
def effective_config(cfg: Config, invocation: Invocation) -> str:
    """Every option's canonical name, effective value and source, aligned."""
    files = ", ".join(invocation.config_files) or "none"
    # the table is pasted into mails and bug reports: a secret is not shown
    rows = [(opt.name, "(set, not shown)" if opt.name in SECRET_OPTIONS and value
             else opt.format(value), source) for opt, value, source in cfg.items()]
    name_width = max(len(name) for name, _, _ in rows)
    value_width = max(len(value) for _, value, _ in rows)   # no cap: a long path must not shift SOURCE
    verdict = ("configuration valid" if invocation.check_config
               else "configuration read, not checked against the system")
    out = [f"# popper {__version__} (Qpopper {QPOPPER_VERSION}): {verdict}; "
           f"files read: {files}",
           f"{'OPTION'.ljust(name_width)}  {'VALUE'.ljust(value_width)}  SOURCE"]
    for name, value, source in rows:
        out.append(f"{name.ljust(name_width)}  {value.ljust(value_width)}  {source}")
    return "\n".join(out) + "\n"


# ---- man pages ---------------------------------------------------------------------------------
# popper(8) and qpopper.config(5). Their option sections come from the option table, like the
# example configuration; tests/test_manpages.py fails when the committed pages differ.
MAN_PAGES = {"popper": "man/popper.8", "qpopper.config": "man/qpopper.config.5"}
MAN_DATE = "2026-11-27"        # fixed, so builds are reproducible; change it with the text
REGENERATE_MAN = "python -m qpopper.docgen man popper > man/popper.8 (and qpopper.config)"


def _roff(text: str) -> str:
    """Plain text as roff: backslashes and hyphen-minus escaped, no line starting a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line
                     for line in text.split("\n"))


def _bold(text: str) -> str:
    return f"\\fB{_roff(text)}\\fR"


def _italic(text: str) -> str:
    return f"\\fI{_roff(text)}\\fR"


def _man_header(name: str, section: int, title: str) -> list[str]:
    manual = "System Manager's Manual" if section == 8 else "File Formats Manual"
    return [
        f'.\\" GENERATED from qpopper/options.py by: {REGENERATE_MAN}',
        '.\\" Edit the option table or qpopper/docgen.py, not this file.',
        f'.TH {name.upper()} {section} {MAN_DATE} "qpopper\\-py {__version__}" '
        f'"{manual}"',
        ".nh",                 # option names must not be hyphenated
        ".SH NAME",
        f"{_roff(name)} \\- {_roff(title)}",
    ]


def man_popper() -> str:
    """popper(8)."""
    out = _man_header("popper", 8, "the Qpopper POP3 server (qpopper-py)")
    out += [
        ".SH SYNOPSIS",
        f"{_bold('popper')} [[{_italic('ADDRESS')}:]{_italic('PORT')} ...] "
        f"[{_italic('FLAGS')}] [{_bold('--')}{_italic('OPTION')}[={_italic('VALUE')}] ...]",
        ".br",
        f"{_bold('popper --check-config')} | {_bold('--show-config')} "
        f"[{_bold('-f')} {_italic('FILE')} ...] [{_italic('FLAGS')}]",
        ".br",
        f"{_bold('popper')} {_bold('--demo')} | {_bold('--help')} | {_bold('--version')}",
        ".SH DESCRIPTION",
        _roff("popper is Qpopper 4.1's POP3 server (RFC 1939, RFC 2449) rebuilt in Python. "
              "It serves the users' mbox spools, authenticates them through PAM (service "
              "pop3, /etc/pam.d/pop3) or the pop.auth store, and runs each session in a "
              "process that has switched to the user's identity and the mail group."),
        ".PP",
        _roff("With one or more [ADDRESS:]PORT arguments (or the listen option) popper is a "
              "standalone server: a master process, running as root, listens and forks one "
              "child per connection. It stays in the foreground (systemd's qpopper.service, "
              "Type=notify) unless --daemon is given. It also accepts listening sockets "
              "passed by systemd (LISTEN_FDS)."),
        ".PP",
        _roff("Without a port popper serves the single connection on its standard input and "
              "output, as started by inetd or by systemd's qpopper.socket and "
              "qpopper@.service (Accept=yes, StandardInput=socket)."),
        ".PP",
        _roff("Flags, --OPTION arguments and configuration files are read from left to "
              "right; a later setting overrides an earlier one. -f FILE reads a "
              "configuration file at that point (see qpopper.config(5)). The packaged "
              "units run popper -f /etc/qpopper/qpopper.config."),
        ".SH OPTIONS",
        _roff("The flags of Qpopper 4.1:"),
    ]
    for opt in _single_option_flags():
        head = _bold(opt.flag) + (f" {_italic(opt.flag_arg)}" if opt.flag_arg else "")
        out += [".TP", head,
                f"Sets {_bold(opt.name)} ({_roff(_option_facts(opt))}). {_roff(opt.help)}"]
    out += [".TP", f"{_bold('-e')} {_italic('login_delay=N,expire=N')}",
            f"Sets {_bold('announce-login-delay')} and {_bold('announce-expire')}: "
            + _roff("the LOGIN-DELAY and EXPIRE values announced in CAPA.")]
    out += [".PP", _roff("Extensions of qpopper-py (also settable in configuration files):")]
    for opt in (o for o in OPTIONS if o.extension):
        arg = "" if opt.type is OptType.BOOL else f"={_italic('VALUE')}"
        out += [".TP", f"{_bold('--' + opt.name)}{arg}",
                f"({_roff(_option_facts(opt))}) {_roff(_plain_help(opt))}"]
    out += [
        ".PP",
        _roff("Every option of qpopper.config(5) also works on the command line as "
              "--NAME=VALUE (booleans: --NAME); --listen= with an empty value clears the "
              "listen list."),
        ".SS Invocation",
        ".TP", _bold("--check-config"),
        _roff("Read the flags and files, make the checks the standalone server makes at "
              "start-up and on SIGHUP (the same code): the certificate and key files are "
              "readable, parse and match each other; spool-dir, temp-dir, cache-dir, "
              "bulldir and popbulldir are directories; with bulldb, <bulldir>/bulldb "
              "exists (it is created root:mail 2770 when missing) and the sessions' group "
              "may write it; the PAM service file /etc/pam.d/<pam-service> exists; the "
              "accounts and groups the options name exist; prelogin-chroot is an empty "
              "root-owned directory (created, 0755, when missing); the listen and tls-listen "
              "entries resolve and no two take the same address and port; with "
              "user-database pop-auth the store exists; auth-file and nonauth-file can be "
              "read. Then print every option's value and where it came "
              "from. Exit 0 when the server would start with it; 2 with one line naming the "
              "file and line of a mistake in the configuration; 1 with one line naming the "
              "option and the file the server could not start with."),
        ".TP", _bold("--show-config"),
        _roff("Print every option's value and where it came from, as --check-config does, "
              "without the checks of the system: the package scripts read the values with "
              "it before they create the accounts and directories the values name."),
        ".TP", _bold("--demo"),
        _roff("Run the demo server on 127.0.0.1:8110 as the current user, with its own "
              "spool and user store (no root needed)."),
        ".TP", _bold("--help"), _roff("Print a summary of the flags."),
        ".TP", _bold("--version"), _roff("Print the version."),
        ".SH SIGNALS",
        _roff("The standalone master re-reads its configuration files on SIGHUP "
              "(systemctl reload qpopper) for new sessions; sessions already running keep "
              "theirs. On SIGTERM it stops listening, lets running sessions finish for "
              "shutdown-grace seconds, then ends them."),
        *_logging_section(),
        *_brakes_and_fail2ban_section(),
        *_diagnostics_section(),
        ".SH EXIT STATUS",
        _roff("0 on success; 1 when the server could not start (for example a port that "
              "cannot be bound); 2 for a configuration or usage error, reported on one "
              "line with the file and line number."),
        ".SH FILES",
        ".TP", _bold("/etc/qpopper/qpopper.config"),
        _roff("The configuration file the packaged units read."),
        ".TP", _bold("/etc/pam.d/pop3"),
        _roff("The PAM service for USER/PASS (option pam-service)."),
        ".TP", _bold("/var/lib/qpopper/popauth/pop.auth"),
        _roff("The store of APOP and SCRAM secrets (option pop-auth-file), owned by the "
              "pop account."),
        ".TP", _bold("/var/mail/USER"),
        _roff("The users' spools (option spool-dir); .USER.pop is the temporary drop "
              "while a session runs."),
        ".TP", _bold("/lib/systemd/system/qpopper.service"),
        _roff("The standalone master on port 110 (STLS) and port 995 (TLS), enabled by "
              "default. qpopper.socket with qpopper@.service and qpopper-tls.socket with "
              "qpopper-tls@.service are the one-process-per-connection alternative."),
        ".SH SEE ALSO",
        "qpopper.config(5), pam(8), systemd.socket(5), inetd(8)",
        ".PP",
        _roff("RFC 1939 (POP3), RFC 2449 (CAPA), RFC 2595 (STLS), RFC 8314 (port 995)."),
    ]
    return "\n".join(out) + "\n"


def _logging_section() -> list[str]:
    return [
        ".SH LOGGING",
        _roff("popper logs to syslog under the name popper, facility mail (log-facility, -y): "
              "journalctl -t popper (or -u qpopper) shows it, and /var/log/mail.log too where "
              "rsyslog runs. poppassd(8) logs under poppassd, facility authpriv. Every line "
              "an administrator can see is listed under DIAGNOSTICS; client-supplied text in "
              "them (user names) has its control characters replaced by spaces. Lines the "
              "pre-login process logs (TLS handshakes, AUTHORIZATION's lines and -d "
              "dialogue, the PROXY header, the TLS relay after a login) begin with \"pre-login: \": it holds no "
              "syslog socket, its monitor writes them for it, so a process a client took over "
              "cannot pass its lines for the monitor's (LOGIN FAILED, which fail2ban reads)."),
        ".TP", _bold("-s") + " (statistics), " + _bold("timing") + ", " + _bold("log-login"),
        _roff("Add Qpopper's Stats line at the end of each session, its Timing line, and its "
              "login line."),
        ".TP", _bold("-d") + " (debug)",
        _roff("Adds debug records, among them the dialogue of every session: each command the "
              "client sends and the first line of each reply, with the session's state:"),
        ".RS", ".nf",
        _roff('AUTHORIZATION Received: "USER alice"\n'
              'AUTHORIZATION Sent: "+OK Password required for alice."\n'
              'AUTHORIZATION Received: "PASS <hidden>"\n'
              'TRANSACTION Sent: "+OK alice has 2 visible messages (0 hidden) in 4711 '
              'octets."'),
        ".fi", ".RE", ".IP",
        _roff("Never shown: the argument of PASS, the digest of APOP, the initial response of "
              "AUTH, every line sent inside an exchange (SASL responses, XTND XMIT message "
              "lines), and a line whose verb is not a command in that state (a client out of "
              "step may send its password as a line of its own): they read <hidden> with "
              "their length. The pre-login process writes the lines before the login, the "
              "user session those after it."),
        ".TP", _bold("-t") + " " + _italic("FILE") + " (tracefile)",
        _roff("Writes every record to FILE instead of syslog, and turns debug on (as "
              "Qpopper's -t did), one line each: 'Mon dd hh:mm:ss.mmm YYYY [pid] text'. The "
              "master opens FILE (mode 0600, appending, never through a symbolic link); the "
              "pre-login process and the user session, which cannot open it, write to that "
              "descriptor. The trace holds user names and addresses: keep it private and "
              "remove it when done."),
    ]


def _brakes_and_fail2ban_section() -> list[str]:
    return [
        ".SH BRUTE-FORCE BRAKES",
        _roff("Beyond Qpopper's fixed delay after a failed login (auth-failure-delay), popper "
              "slows guessers itself. Only wrong credentials count (a wrong password, digest "
              "or proof, an unknown name); a refusal for policy, whatever the password, is "
              "logged as LOGIN REFUSED (policy) and is neither braked nor counted; the right password "
              "on an expired account or password is logged as LOGIN REFUSED (account), and, "
              "unless the expired password is told, answered, braked and logged (LOGIN FAILED) "
              "as a wrong password, so that it tells a guesser nothing. Once an "
              "address has more than 3 failures in 15 minutes it has a brake: 0.25 s, "
              "doubling with each further failure up to auth-brakes-max-delay; each further "
              "wrong guess from it costs the brake, and a correct password from it waits at "
              "most 0.5 s. A user name with more than 5 failures makes each further failure "
              "wait the same way, without slowing the real user's correct logins. A "
              "connection is closed at its 3rd refusal. Addresses in "
              "auth-brakes-trusted-networks are neither delayed nor counted. The counts live "
              "in auth-brakes-file (/run/qpopper, root only) and are shared by every session "
              "and by poppassd(8). Each failure is logged as a LOGIN FAILED line (see "
              "DIAGNOSTICS), the line fail2ban reads."),
        ".SH FAIL2BAN",
        _roff("The package ships a fail2ban filter, /etc/fail2ban/filter.d/qpopper.conf, "
              "which matches the LOGIN FAILED lines of popper and poppassd and nothing else "
              "(policy refusals never ban), and a jail, /etc/fail2ban/jail.d/qpopper.conf, "
              "disabled until the administrator enables it. The jail reads the systemd "
              "journal, so it works on a Debian system without rsyslog; where rsyslog writes "
              "/var/log/mail.log and /var/log/auth.log, those can be read instead (backend = "
              "auto, logpath). To enable it, put in /etc/fail2ban/jail.d/qpopper.local:"),
        ".RS", ".nf", "[qpopper]", "enabled = true", ".fi", ".RE", ".PP",
        _roff("(with ignoreip listing the auth-brakes-trusted-networks), then run "
              "fail2ban-client reload; fail2ban-client status qpopper shows the banned "
              "addresses. The jail bans from ports 110, 995 and 106 together."),
    ]


def _diagnostics_section() -> list[str]:
    from qpopper.logcatalogue import SECTIONS
    out = [".SH DIAGNOSTICS",
           _roff("Every log line, grouped by where it comes from; * stands for what varies "
                 "(a user name, an address, a path, an error text).")]
    for title, lines in SECTIONS:
        out += [".SS " + _roff(title)]
        for line in lines:
            out += [".TP", _bold(line.pattern), _roff(line.meaning)]
    return out


def man_config() -> str:
    """qpopper.config(5)."""
    out = _man_header("qpopper.config", 5, "configuration file of the Qpopper POP3 server")
    out += [
        ".SH SYNOPSIS",
        _bold("/etc/qpopper/qpopper.config"),
        ".SH DESCRIPTION",
        _roff("popper(8) reads configuration files named with -f on its command line (the "
              "packaged units name /etc/qpopper/qpopper.config) and, after login, the "
              "per-user files when spool-options or user-options is set. Files and "
              "command-line settings are applied in order; the last one wins."),
        ".PP",
        _roff("Each line is one of:"),
        ".TP", _roff("# comment"), _roff("Comment and blank lines are ignored."),
        ".TP", f"{_bold('set')} {_italic('OPTION')}",
        _roff("A boolean option becomes true."),
        ".TP", f"{_bold('set')} {_italic('OPTION')} = {_italic('VALUE')}",
        _roff("true, false, 1 or 0; an integer; one of the option's words; or a string."),
        ".TP", f"{_bold('reset')} {_italic('OPTION')}",
        _roff("A boolean option becomes false."),
        ".PP",
        _roff("Spaces or tabs may surround each token. Option names and words are "
              f"case-insensitive. A string is one word of at most "
              f"{limits.MAX_STRING_OPTION_CHARS} printable characters, or is quoted "
              "(\"...\" or '...') to include spaces; \"\" unsets a string option. A mistake "
              "is reported with the file name and line number; check a file with "
              "popper --check-config -f FILE."),
        ".SS Where options may be set",
        _roff("The global files and the command line may set every option. The per-user "
              "files are restricted: <spool-dir>/<user>.qpopper-options (read with "
              "spool-options; it must not be owned by or writable by the user) and "
              "~/.qpopper-options (read with user-options, after the server has taken the "
              "user's identity). Each option below says where it may be set:"),
    ]
    for text in sorted({o.scope.description for o in OPTIONS}):
        out += [".IP \\(bu 2", _roff(text[:1].upper() + text[1:] + ".")]
    for title, group in (("OPTIONS", [o for o in OPTIONS if not o.extension]),
                         ("EXTENSIONS", [o for o in OPTIONS if o.extension])):
        out += [".SH " + title]
        if title == "EXTENSIONS":
            out += [_roff("Options of qpopper-py that Qpopper 4.1 does not have (most "
                          "replace one of its configure switches).")]
        for opt in group:
            facts = f"{_option_facts(opt)}; command line: {_command_line(opt)}"
            if opt.aliases:
                facts += "; also spelled " + ", ".join(opt.aliases)
            out += [".TP", _bold(opt.name),
                    f"({_roff(facts)})",
                    _roff(_plain_help(opt)),
                    ".br", _roff(f"Where: {opt.scope.description}.")]
    out += [
        ".SH SHIPPED SETTINGS",
        _roff("The Debian and RPM packages' /etc/qpopper/qpopper.config lists every option "
              "commented out with its default and sets these, each with its reason:"),
    ]
    for setting in SHIPPED_SETTINGS:
        out += [".TP", f"{_bold('set ' + setting.option + ' = ' + setting.value)}",
                _roff(setting.reason[:1].upper() + setting.reason[1:])]
    out += [
        ".SH FILES",
        ".TP", _bold("/etc/qpopper/qpopper.config"), _roff("The global configuration file."),
        ".TP", _bold("<spool-dir>/<user>.qpopper-options"),
        _roff("A user's administrator-owned option file (spool-options)."),
        ".TP", _bold("~/.qpopper-options"), _roff("A user's own option file (user-options)."),
        ".SH SEE ALSO",
        "popper(8), pam(8)",
    ]
    return "\n".join(out) + "\n"


MAN_GENERATORS = {"popper": man_popper, "qpopper.config": man_config}
REGENERATE_ALL = "python -m qpopper.docgen regenerate"


def regenerate(root: str = ".") -> int:
    """Rewrite every generated file of the source tree (run from its top directory) after a
    change to the option table: the example configuration and the man pages."""
    import os
    outputs = {EXAMPLE_CONFIG_PATH: example_config()}
    outputs.update({path: MAN_GENERATORS[name]() for name, path in MAN_PAGES.items()})
    for path, text in outputs.items():
        with open(os.path.join(root, path), "w") as f:
            f.write(text)
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["example-config"]:
        sys.stdout.write(example_config())
        return 0
    if argv == ["usage"]:
        sys.stdout.write(usage())
        return 0
    if argv == ["regenerate"]:
        return regenerate()
    if len(argv) == 2 and argv[0] == "man" and argv[1] in MAN_GENERATORS:
        sys.stdout.write(MAN_GENERATORS[argv[1]]())
        return 0
    print("usage: python -m qpopper.docgen example-config | usage | man popper|qpopper.config"
          " | regenerate",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
