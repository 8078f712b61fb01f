"""The list of what runs as root (privsep.py's docstring, the one list; docs/privsep.md) names
files that exist, and names the processes that do run as root: the master and the monitor.
A module renamed or added to the root side without the list changing fails here."""

from __future__ import annotations

import re
from pathlib import Path

from qpopper.server import privsep
from tests.helpers.repo import REPO



def root_files() -> list[Path]:
    text = privsep.__doc__
    block = text[text.index("What runs as root"):text.index("The pre-login process")]
    files, directory = [], None
    for line in block.splitlines()[2:]:
        names = re.findall(r"[\w/]+\.py", re.split(r"\s{3,}", line.strip())[0])
        for name in names:
            if "/" in name:
                directory = (REPO / name).parent
                files.append(REPO / name)
            else:
                files.append(directory / name)
    return files


def test_every_file_the_root_list_names_exists():
    files = root_files()
    assert len(files) >= 15
    missing = [str(path.relative_to(REPO)) for path in files if not path.is_file()]
    assert missing == []


def test_the_master_the_monitor_and_the_authenticator_are_on_the_list():
    names = {str(path.relative_to(REPO)) for path in root_files()}
    for module in ("qpopper/server/master.py", "qpopper/server/monitor.py",
                   "qpopper/server/monitor_auth.py", "qpopper/server/monitor_wire.py",
                   "qpopper/auth/policy.py", "qpopper/auth/pam.py", "qpopper/server/privsep.py"):
        assert module in names


def test_the_pre_login_side_is_not_on_the_list():
    names = {str(path.relative_to(REPO)) for path in root_files()}
    for module in ("qpopper/server/session.py", "qpopper/pop3/protocol.py", "qpopper/server/prelogin.py",
                   "qpopper/auth/sasl.py"):
        assert module not in names
