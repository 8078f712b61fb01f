"""Text generated from the option table: the example configuration file, `popper --help` and
the `popper --check-config` report. Nothing here knows an option that options.py does not.

    python -m qpopper.docgen example-config > etc/qpopper/qpopper.config
    python -m qpopper.docgen usage
"""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass

from . import QPOPPER_VERSION, __version__, limits
from .config import Config, Invocation
from .options import OPTIONS, BY_NAME, EXPIRE_FLAG, OptType, Option

WIDTH = 78
EXAMPLE_CONFIG_PATH = "etc/qpopper/qpopper.config"
REGENERATE = "python -m qpopper.docgen example-config > etc/qpopper/qpopper.config"


@dataclass(frozen=True)
class ShippedSetting:
    """A value the shipped configuration sets on purpose, with the reason printed beside it."""

    option: str
    value: str                 # config-file text, e.g. "600"
    reason: str


# The settings the packaged /etc/qpopper/qpopper.config changes from the built-in defaults.
# Empty for now: the example file shows only defaults. (A later issue adds e.g. timeout = 600,
# "RFC 1939 asks for at least 10 minutes", reference §7.7.)
SHIPPED_SETTINGS: tuple[ShippedSetting, ...] = ()


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
        f"# GENERATED from the option table in qpopper/options.py by",
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
    ]


def _example_entry(opt: Option, shipped: ShippedSetting | None) -> list[str]:
    facts = [opt.type_text]
    if opt.default is None or opt.default == ():
        facts.append("default: unset")
    else:
        facts.append(f"default: {opt.format(opt.default)}")
    if opt.flag:
        facts.append(f"command line: {_flag_text(opt)}")
    elif opt.extension:
        facts.append(f"command line: --{opt.name}" + ("" if opt.type is OptType.BOOL
                                                       else "=VALUE"))
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
    if opt.default is None or opt.default == ():
        return opt.format(opt.example)
    if opt.repeatable and isinstance(opt.default, tuple):
        return opt.format(opt.default[0])
    return opt.format(opt.default)


def _flag_text(opt: Option) -> str:
    if opt.flag == EXPIRE_FLAG:
        return f"-e {opt.flag_arg}"
    return f"{opt.flag} {opt.flag_arg}" if opt.flag_arg else opt.flag


def _wrap(text: str, first: str, rest: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=first, subsequent_indent=rest,
                         break_on_hyphens=False, break_long_words=False)


# ---- popper --help -----------------------------------------------------------------------------
def usage() -> str:
    out = [
        "usage: popper [[ADDRESS:]PORT ...] [FLAGS] [--OPTION[=VALUE] ...]",
        "       popper --check-config [-f FILE ...] [FLAGS]",
        "       popper --demo | --help | --version",
        "",
        "Qpopper 4.1's POP3 server in Python. With [ADDRESS:]PORT (or the listen option) it",
        "is a standalone server; otherwise it serves the connection on stdin (inetd, systemd",
        "Accept=yes). Flags and files are read in order; -f FILE reads a configuration",
        "file at that point.",
        "",
        "Qpopper flags:",
    ]
    rows = []
    for opt in sorted((o for o in OPTIONS if o.flag), key=lambda o: (o.flag.lower(), o.flag)):
        if opt.flag == EXPIRE_FLAG:
            continue
        rows.append((_flag_text(opt), f"{opt.name}: {_first_sentence(opt.help)}"))
    rows.append(("-e login_delay=N,expire=N", "announce-login-delay, announce-expire: "
                 "LOGIN-DELAY and EXPIRE announced in CAPA."))
    rows.sort(key=lambda row: (row[0][1].lower(), row[0][1]))
    out += _table(rows)
    out += ["", "Extensions (also settable in configuration files):"]
    out += _table([(f"--{o.name}" + ("" if o.type is OptType.BOOL else "=VALUE"),
                    _first_sentence(o.help.removeprefix("Extension: ")))
                   for o in OPTIONS if o.extension])
    out += ["", "Every configuration-file option also works as --NAME=VALUE (booleans: --NAME).",
            "", "Invocation:"]
    out += _table([
        ("--check-config", "read the flags and files, print every option's value and "
                           "where it came from; exit 0 when valid, 2 with one line naming "
                           "the file and line of the first mistake"),
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
    rows = [(opt.name, opt.format(value), source) for opt, value, source in cfg.items()]
    name_width = max(len(name) for name, _, _ in rows)
    value_width = min(max(len(value) for _, value, _ in rows), 40)
    out = [f"# popper {__version__} (Qpopper {QPOPPER_VERSION}): configuration valid; "
           f"files read: {files}",
           f"{'OPTION'.ljust(name_width)}  {'VALUE'.ljust(value_width)}  SOURCE"]
    for name, value, source in rows:
        out.append(f"{name.ljust(name_width)}  {value.ljust(value_width)}  {source}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["example-config"]:
        sys.stdout.write(example_config())
        return 0
    if argv == ["usage"]:
        sys.stdout.write(usage())
        return 0
    print("usage: python -m qpopper.docgen example-config | usage", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
