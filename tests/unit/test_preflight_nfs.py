"""preflight.warn_of_nfs_without_no_atomic_open (qpopper/server/preflight.py): a spool-dir on
NFS without no-atomic-open is warned of at start-up, reload and --check-config, since its
O_EXCL dot-lock is not atomic across hosts (docs/scale-out.md, "Locks across hosts"). This
machine's kernel has no NFS client, so the mount table's answer is set, as
tests/integration/test_locking_processes.py sets it; the directory is opened for real."""

from __future__ import annotations

import pytest

from qpopper.config import Config
from qpopper.server import preflight
from qpopper.spool import mounts


def warnings(tmp_path, monkeypatch, kind: str | None, **options) -> list[str]:
    monkeypatch.setattr(mounts, "_fields_of",    # one mount's line of the table, past its "-"
                        lambda fd: [kind, "filer:/mail", "rw"] if kind else [])
    said: list[str] = []
    cfg = Config.defaults().replace(spool_dir=str(tmp_path), **options)
    preflight.warn_of_nfs_without_no_atomic_open(cfg, lambda priority, text: said.append(text))
    return said


@pytest.mark.parametrize("kind", sorted(mounts.NFS_TYPES))
def test_a_spool_on_nfs_without_the_option_is_warned_of(tmp_path, monkeypatch, kind):
    [said] = warnings(tmp_path, monkeypatch, kind)
    assert said.startswith(f"spool-dir {tmp_path} is on NFS, but no-atomic-open is off")


@pytest.mark.parametrize("kind, options", [
    ("nfs4", {"no_atomic_open": True}),      # the documented setting
    ("nfs4", {"home_dir_mail": ".mail"}),    # spools in the home directories: not spool-dir
    ("ext4", {}), (None, {}),                # a local disk, or a type that cannot be told
])
def test_otherwise_nothing_is_said(tmp_path, monkeypatch, kind, options):
    assert warnings(tmp_path, monkeypatch, kind, **options) == []
