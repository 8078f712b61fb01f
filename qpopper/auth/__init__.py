"""Authentication: PAM, the pop.auth store (APOP/SCRAM secrets), SASL, login policy.

What a successful login hands to the session: a Login value.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Login:
    """An authenticated user, as the session needs it to drop privileges and open the drop."""

    user: str            # the final user name (after downcase-user / trim-domain / -no-mime)
    uid: int
    gid: int             # the user's primary group (privsep still uses the spool dir's group)
    home: str
    mechanism: str       # "USER", "APOP", "AUTH PLAIN", ...
    no_mime: bool = False  # the name had the -no-mime suffix: mangle every RETR/TOP
