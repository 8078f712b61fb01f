"""A real /etc/pam.d service file under a unique test name (root only), removed afterwards.

Stacks:
  STOCK_POP3   what the packages ship as /etc/pam.d/pop3 (Debian's common-auth/-account).
               Successes take ~30 ms; every failure ~2.2 s (pam_unix's built-in fail delay).
  FAST_UNIX    pam_unix with `nodelay`: same checks (password, locked, expired account,
               expired password), failures in ~25 ms. Use it for negative tests.
  FAST_UNIX_PASSWORD  FAST_UNIX plus a password stack (pam_unix writes /etc/shadow), for
               pam_chauthtok (poppassd).
  PASSWORD_DENIED     FAST_UNIX whose password stack refuses every new password (pam_deny).

    with installed_pam_service(FAST_UNIX) as service:
        cfg = Config.defaults().replace(pam_service=service)
"""

from __future__ import annotations

import contextlib
import os
import secrets

PAM_DIR = "/etc/pam.d"
PREFIX = "qpt-"

STOCK_POP3 = "@include common-auth\n@include common-account\n"

FAST_UNIX = ("auth     required  pam_unix.so nodelay\n"
             "account  required  pam_unix.so\n")

FAST_UNIX_PASSWORD = FAST_UNIX + "password required  pam_unix.so yescrypt\n"

PASSWORD_DENIED = FAST_UNIX + "password requisite pam_deny.so\n"


@contextlib.contextmanager
def installed_pam_service(stack: str = FAST_UNIX, tag: str = ""):
    """Yields the service name (`qpt-<tag><random>`); the file is gone afterwards."""
    name = f"{PREFIX}{tag}{secrets.token_hex(4)}"
    path = os.path.join(PAM_DIR, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(f"# qpopper-py test service; removed when the test ends\n{stack}")
        yield name
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
