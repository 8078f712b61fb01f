"""--check-config run by an account other than root: files only root reads (a 0600 auth-file,
nonauth-file) are not refused for that; the logins read them as root (preflight)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qpopper.config import Config
from qpopper.server import preflight
NOBODY = 65534


def as_nobody(check) -> str:
    """What check() says in a child that became nobody: "" when it passes."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                check()
                said = ""
            except preflight.PreflightError as exc:
                said = str(exc) or "refused"
            os.write(write_end, said.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        said = f.read().decode()
    os.waitpid(pid, 0)
    return said


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a file only root reads")
@pytest.mark.parametrize("option", ["auth_file", "nonauth_file"])
def test_a_list_only_root_reads_is_not_refused_by_a_check_without_root(world_tmp, option):
    tmp_path = Path(world_tmp)
    listed = tmp_path / "users"
    listed.write_text("alice\n")
    os.chmod(listed, 0o600)
    cfg = Config.defaults().replace(**{option: str(listed)})

    assert as_nobody(lambda: preflight.check_user_lists(cfg)) == ""
    missing = cfg.replace(**{option: str(tmp_path / "missing")})
    with pytest.raises(preflight.PreflightError, match="No such file"):
        preflight.check_user_lists(missing)
