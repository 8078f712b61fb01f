"""The per-user option files, read by the session after the privilege drop
(docs/compatibility.md, "Spool locations and option files")."""

from __future__ import annotations

import os
import stat
import syslog

from qpopper import config as config_mod
from qpopper.server import privsep

USER_OPTIONS_FILE = ".qpopper-options"


def apply(cfg, login, spool_options_file: str, owner: int, log):
    """~/.qpopper-options (-u), then the administrator's <spool-dir>/<user>.qpopper-options
    (-U, SpoolPaths.options_file; used only when `owner` owns it and alone may write it), so
    the administrator has the last word. Returns the Config with both applied."""
    if cfg.user_options and login.home:
        path = os.path.join(login.home, USER_OPTIONS_FILE)
        # The user's file and whatever it chains to (config-file) are read with the user's
        # own group only: with the spool group a chain to another user's 0660 spool would
        # open it (docs/privsep.md, "The user's option files").
        with privsep.without_spool_group(login.gid):
            if _readable_regular_file(path, log):
                cfg = _apply_home_file(cfg, path, log)
    if cfg.spool_options:
        cfg = config_mod.apply_spool_options_file(cfg, spool_options_file, owner, log)
    return cfg


def _apply_home_file(cfg, path: str, log):
    try:
        return config_mod.apply_user_file(cfg, path, "home", log)
    except OSError as exc:
        # e.g. a home directory the user made unreadable: Qpopper goes on without it
        log(syslog.LOG_NOTICE, f"Ignoring {path}: {exc.strerror}")
        return cfg


def _readable_regular_file(path: str, log) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        log(syslog.LOG_NOTICE, f"Unable to check {path}: {exc}")
        return False
    if not stat.S_ISREG(st.st_mode):
        log(syslog.LOG_NOTICE, f"Ignoring {path}: not a regular file")
        return False
    return True
