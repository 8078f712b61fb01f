"""XTND XMIT's OS side: the temporary file and the mail-command process
(docs/compatibility.md, "XTND, MDEF and X-MANGLE").

The protocol layer (extensions/xtnd.py) is pure; the session hands it an `MtaSubmitter`
through the Extensions object, so running the MTA stays out of the state machine.

- The message goes to an anonymous file (memfd_create(2), `xmit`): it needs no directory, so
  it works for every session whatever it may write (a Maildir user's session has left the
  spool group and cannot write the spool directory: docs/maildir.md), and nothing is left
  behind even if the session is killed. xtnd.py's limits.MAX_XMIT_OCTETS bounds it.
- mail-command (default /usr/sbin/sendmail) runs as `<mail-command> -t -i -oem` without a
  shell, stdin the file, killed after limits.XMIT_TIMEOUT_S, through
  privsep.run_user_program: as the logged-in user with the user's own primary group only
  (not the session's mail group), a small fixed environment, cwd `/`, stdout and stderr
  discarded. Exit status 0 means sent.
- xtnd-xmit off: extensions/xtnd.py answers XMIT as a disabled command before any of this.
"""

from __future__ import annotations

import os
import subprocess
import syslog
import weakref
from typing import TYPE_CHECKING, BinaryIO

from qpopper import limits
from qpopper.server.privsep import run_user_program
from qpopper.pop3.responses import PopError, RespCode

if TYPE_CHECKING:  # pragma: no cover
    from qpopper.pop3.protocol import Protocol

DEFAULT_MAIL_COMMAND = "/usr/sbin/sendmail"
MTA_ARGUMENTS = ("-t", "-i", "-oem")
"""-t: recipients from the headers; -i: a lone `.` is not the end; -oem: errors by mail."""

MEMFD_NAME = "xmit"
"""The draft's name in /proc/PID/fd (a memfd has no path)."""


class MtaSubmitter:
    """Makes Drafts for XTND XMIT (one per XMIT command)."""

    def open_draft(self, proto: "Protocol") -> "Draft":
        login = proto.login
        try:
            fd = os.memfd_create(MEMFD_NAME, os.MFD_CLOEXEC)
            os.fchmod(fd, 0o600)
        except OSError as exc:
            raise PopError("Unable to create temporary file", RespCode.SYS_TEMP,
                           log=f"XTND XMIT from {login.user}: temporary file: {exc}") from None
        return Draft(os.fdopen(fd, "w+b"), proto)


class Draft:
    """The message being received; `submit()` runs the MTA on it. Either ends it."""

    def __init__(self, file: BinaryIO, proto: "Protocol"):
        self.file = file
        self.proto = proto
        # A session that ends mid-message (EOF, timeout, an over-long line) just drops the
        # reader holding this draft: the file (already unlinked) is closed with it.
        weakref.finalize(self, file.close)

    def write(self, data: bytes) -> None:
        try:
            self.file.write(data)
        except OSError as exc:         # disk full: refuse the message, not the session
            raise PopError("Unable to write the message", RespCode.SYS_TEMP,
                           log=f"XTND XMIT: writing the temporary file: {exc}") from None

    def discard(self) -> None:
        self.file.close()

    def submit(self) -> bool:
        proto = self.proto
        command = proto.cfg.mail_command or DEFAULT_MAIL_COMMAND
        login = proto.login
        try:
            self.file.flush()
            self.file.seek(0)
            status = run_user_program([command, *MTA_ARGUMENTS], login, stdin=self.file,
                                      timeout_s=limits.XMIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proto.env.log(syslog.LOG_ERR, f"XTND XMIT from {login.user}: {command} took over "
                                          f"{limits.XMIT_TIMEOUT_S} s; killed")
            return False
        except (OSError, subprocess.SubprocessError) as exc:
            proto.env.log(syslog.LOG_ERR, f"XTND XMIT from {login.user}: running {command}: "
                                          f"{exc}")
            return False
        finally:
            self.file.close()
        if status != 0:
            proto.env.log(syslog.LOG_ERR, f"XTND XMIT from {login.user}: {command} exited "
                                          f"with status {status}")
            return False
        return True
