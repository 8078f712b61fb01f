"""The configuration parser (qpopper/config.py): global files (-f), the per-user option
files (~/.qpopper-options, <spool-dir>/<user>.qpopper-options) and popper's argv.

Only ConfigError may escape, and its text is one line naming where the mistake is (the file
and line, or argv); a per-user file never raises at all (a user's mistake is logged and the
file ignored), and what it logs is one line per record.

First byte: 0 a global file, 1 a home-directory file, 2 a spool-directory file, 3 argv (the
rest split on NUL). A file may chain (config-file) to "other", which holds a few options, or
to itself.
"""

from __future__ import annotations


from fuzz.harness import scratch_dir
from qpopper import config

ALLOWED: tuple[type[BaseException], ...] = (config.ConfigError,)
MAX_LEN = 4096

_dir = scratch_dir("config")
(_dir / "other").write_text("set timeout = 30\nset shy\nreset stats\n")
_main = _dir / "main"


def one_line(text: str) -> None:
    assert "\n" not in text and "\r" not in text, f"a message of several lines: {text!r}"


def one_input(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0] % 4, data[1:]
    try:
        if mode == 3:
            args = [arg.decode("utf-8", "surrogateescape") for arg in rest.split(b"\0")]
            config.load([a for a in args if not a.startswith(("-f", "--config"))])
            return
        _main.write_bytes(rest)
        if mode == 0:
            config.check_combinations(config.read_files([str(_main)]))
            return
        records: list[str] = []
        base = config.Config.defaults()
        kind = "home" if mode == 1 else "spool"
        config.apply_user_file(base, str(_main), kind, lambda priority, text: records.append(text))
        for text in records:
            one_line(text)
    except config.ConfigError as error:
        one_line(str(error))
        assert str(error).startswith((str(_dir), "argv", "override")), str(error)
        raise
