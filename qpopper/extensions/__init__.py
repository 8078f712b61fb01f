"""Qpopper's protocol extensions, plugged into the state machine through
command.Extensions: XTND XMIT / XLST (xtnd.py, with submit.py doing XMIT's OS part),
MDEF macros (mdef.py) and MIME mangling for RETR/TOP and `-no-mime` users (mangle.py).

Layering (tests/test_import_directions.py): these modules are protocol-layer code — pure, no
os, no subprocess — except submit.py, a domain-layer module the session builds and hands in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qpopper.pop3.command import Command, Extensions
from qpopper.extensions import mangle, mdef, xtnd

if TYPE_CHECKING:  # pragma: no cover
    from qpopper.extensions.xtnd import Submitter


def standard_extensions(submitter: "Submitter") -> Extensions:
    """One session's extensions: XTND, MDEF and the mangle hook, with a fresh macro table
    (MDEF definitions last for the session; build one Extensions per Protocol)."""
    macros: dict[str, str] = {}
    return Extensions(
        transaction_verbs={
            "XTND": Command(xtnd.make_cmd_xtnd(submitter), 1, 4),
            "MDEF": Command(mdef.make_cmd_mdef(macros), 1, 1, rest_of_line=True),
        },
        mangle=mangle.mangle_hook(macros),
    )
