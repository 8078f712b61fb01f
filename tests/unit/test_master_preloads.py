"""A session forked by the master loads no module of its own: every spool module a session
can use is imported with the master (imported after the fork, a module's objects and code
would sit on pages private to each session: ~1.5 MiB per idle session for the two mbox
modes, bench/README.md, "vs_peers.py")."""

from __future__ import annotations

import subprocess
import sys

SESSION_SPOOL_MODULES = ("qpopper.spool.normal_mode", "qpopper.spool.server_mode",
                         "qpopper.spool.maildir_drop", "qpopper.spool.maildrop")


def test_the_master_imports_every_maildrop_kind():
    code = ("import sys, qpopper.server.master; "
            f"print(' '.join(m for m in {SESSION_SPOOL_MODULES!r} if m not in sys.modules))")
    missing = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, timeout=60).stdout.split()
    assert missing == []
