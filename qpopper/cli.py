"""Entry points. `popper` (console script): parse argv and files, then check the
configuration, or run the demo, the standalone master or one inetd session.

The server modules are imported only when needed, so `popper --check-config` and `--help`
work without them and start fast.
"""

from __future__ import annotations

import os
import socket
import sys

from qpopper import QPOPPER_VERSION, __version__
from qpopper.config import ConfigError, load


def popper_main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--help" in argv or "--version" in argv:
        # Answer these even when the rest of the command line is wrong.
        from qpopper.docgen import usage
        sys.stdout.write(usage() if "--help" in argv else
                         f"popper (qpopper-py) {__version__}, Qpopper {QPOPPER_VERSION} "
                         f"compatible\n")
        return 0
    try:
        cfg, invocation = load(argv)
    except ConfigError as error:
        return refuse_on_config_error(error)
    # Kerberos the system cannot serve is refused by each way of serving, once: the site
    # check (--check-config, the master's start and reload), the demo, and inetd mode (in
    # the log only: its stderr may be the client). --show-config prints without checks.
    if invocation.check_config or invocation.show_config:
        from qpopper.docgen import effective_config
        if invocation.check_config:
            problem = check_site(cfg)
            if problem:
                print(f"popper: {problem}", file=sys.stderr)
                return 1
        sys.stdout.write(effective_config(cfg, invocation))
        return 0
    if invocation.demo:
        from qpopper.demo import run_demo
        return run_demo(invocation)
    if cfg.listen or cfg.tls_listen:
        from qpopper.server.master import run_master
        return run_master(cfg, invocation)
    from qpopper.server.monitor import serve_inetd
    return serve_inetd(cfg, invocation)


CONFIG_ERROR_REPLY = b"-ERR [SYS/PERM] The POP server's configuration has an error\r\n"
"""What an inetd client is told when the configuration does not load: a fixed text, no
file, line or value (those go to the log)."""


def refuse_on_config_error(error: ConfigError) -> int:
    """A configuration that does not load: one line on stderr, exit status 2. In inetd mode
    (stdin a socket) stderr may be the client's socket: the line goes to syslog instead, and a
    connected client gets CONFIG_ERROR_REPLY (docs/operations.md, "Start-up checks")."""
    from qpopper.server.channel import stdin_socket
    probe, listening = stdin_socket()
    if probe is None:
        print(f"popper: {error}", file=sys.stderr)
        return 2
    import syslog

    from qpopper.log import Logger
    log = Logger()                       # the default facility: the configuration named none
    log(syslog.LOG_ERR, f"connection refused, the configuration has an error: {error}")
    log.close()
    with probe:
        if probe.type == socket.SOCK_STREAM and not listening:    # a connection: told
            try:
                os.write(1, CONFIG_ERROR_REPLY)
            except OSError:
                pass                     # the client went: the log has the line
    return 2


def check_site(cfg) -> str | None:
    """`--check-config`: start-up's checks (preflight.check_site, the same function the
    master runs), warnings on stderr; the one line of the first problem, or None."""
    import syslog

    from qpopper.server.preflight import PreflightError, check_site as preflight_check

    def warn(priority: int, text: str) -> None:
        if priority <= syslog.LOG_WARNING:
            print(f"popper: warning: {text}", file=sys.stderr)
    try:
        identity = preflight_check(cfg, warn).tls
    except PreflightError as exc:
        return str(exc)
    if identity is not None:
        identity.close()
    return None

