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
        return refuse_on_config_error(error, argv)
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


def refuse_on_config_error(error: ConfigError, argv: list[str] = ()) -> int:
    """A configuration that does not load: one line on stderr, exit status 2. In inetd mode
    (stdin a socket) stderr may be the client's socket: the line goes to syslog instead, and a
    connected client gets CONFIG_ERROR_REPLY, unless it expects TLS from the first byte
    (_client_expects_tls): plain text is nothing a TLS client can read, so it is closed
    without a word (docs/operations.md, "Start-up checks")."""
    from qpopper.server.channel import stdin_socket
    probe, listening = stdin_socket()
    if probe is None:
        print(f"popper: {error}", file=sys.stderr)
        return 2
    import syslog

    from qpopper.log import Logger
    log = Logger()                       # the default facility: the configuration named none
    with probe:
        connection = probe.type == socket.SOCK_STREAM and not listening
        if connection and _client_expects_tls(argv, probe):
            log(syslog.LOG_ERR, f"connection closed without a reply (the client expects "
                                f"TLS), the configuration has an error: {error}")
            _drop_what_was_sent(probe)   # so the close is an end of file, not a reset
        else:
            log(syslog.LOG_ERR, f"connection refused, the configuration has an error: {error}")
            if connection:                                          # told
                try:
                    os.write(1, CONFIG_ERROR_REPLY)
                except OSError:
                    pass                 # the client went: the log has the line
    log.close()
    return 2


TLS_HANDSHAKE_RECORD = b"\x16"
"""The first octet of a TLS client's first record (its ClientHello)."""


def _client_expects_tls(argv: list[str], sock: socket.socket) -> bool:
    """Does this inetd connection start with TLS? The configuration did not load, so the
    client says it (a TLS client speaks first, a POP client waits for the greeting: a
    handshake record already waiting is one), or argv and its files read leniently (the
    TLS socket unit passes `-l 2` after its -f; docs/operations.md, "Start-up checks")."""
    try:
        first = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:
        first = b""
    if first == TLS_HANDSHAKE_RECORD:
        return True
    from qpopper.config import read_argv_leniently
    return read_argv_leniently(argv, "tls-support") == "alternate-port"


def _drop_what_was_sent(sock: socket.socket) -> None:
    """Read and drop what the client has sent so far (its ClientHello), without waiting."""
    for _ in range(16):
        try:
            if not sock.recv(4096, socket.MSG_DONTWAIT):
                return
        except OSError:
            return


def check_site(cfg) -> str | None:
    """`--check-config`: start-up's checks (preflight.check_site, the same function the
    master runs), warnings on stderr; the one line of the first problem, or None."""
    import syslog

    from qpopper.server.preflight import PreflightError, check_site as preflight_check

    def warn(priority: int, text: str) -> None:
        if priority <= syslog.LOG_WARNING:
            print(f"popper: warning: {text}", file=sys.stderr)
    try:
        identity = preflight_check(cfg, warn, check_only=True).tls
    except PreflightError as exc:
        return str(exc)
    if identity is not None:
        identity.close()
    return None

