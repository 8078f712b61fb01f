"""Authentication: PAM, the pop.auth store (APOP/SCRAM secrets), SASL, login policy.

What a successful login hands to the session: a Login value.
"""

from __future__ import annotations

from dataclasses import dataclass

from qpopper.pop3.responses import PopError
from qpopper.spool.paths import check_user_name


def is_possible_user_name(name: str) -> bool:
    """Could `name` be an account? The ONE test of every login path (USER, APOP, AUTH, the
    authenticator), so nothing authenticates that the maildrop would then refuse.

    The name becomes part of file names: spool.paths.check_user_name's rules (empty, too
    long, `/`, `..`, a leading `.`, control characters). Beyond those: a leading `-` (it could
    pass for an option to a program, mail-command), white space and anything unprintable
    (undecodable bytes included), so a name never fools a log line.
    """
    try:
        check_user_name(name)
    except PopError:
        return False
    return (not name.startswith("-") and name.isprintable()
            and not any(ch.isspace() for ch in name))


@dataclass(frozen=True)
class Login:
    """An authenticated user, as the session needs it to drop privileges and open the drop."""

    user: str            # the final user name (after downcase-user / trim-domain / -no-mime)
    uid: int
    gid: int             # the user's primary group (privsep still uses the spool dir's group)
    home: str | None     # None: no home of its own (pop.auth users): no ~/ files, no home-dir-mail
    mechanism: str       # "USER", "APOP", "AUTH PLAIN", ...
    no_mime: bool = False  # the name had the -no-mime suffix: mangle every RETR/TOP
