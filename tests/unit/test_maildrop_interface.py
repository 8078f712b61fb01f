"""The one interface the session uses of a mailbox (maildrop.SessionMaildrop): every kind of
mailbox implements each of its methods with the same parameters, so the protocol code never
asks which kind it has (docs/internals.md, "Spool")."""

from __future__ import annotations

import inspect

import pytest

from qpopper.spool.maildir_drop import MaildirDrop
from qpopper.spool.maildrop import Maildrop, SessionMaildrop
from qpopper.spool.normal_mode import NormalModeMaildrop
from qpopper.spool.server_mode import ServerModeMaildrop

METHODS = [name for name, value in vars(SessionMaildrop).items()
           if callable(value) and not name.startswith("_")]
ATTRIBUTES = sorted(SessionMaildrop.__annotations__)


def parameters(function) -> list[tuple[str, object]]:
    return [(p.name, p.default) for p in inspect.signature(function).parameters.values()]


def test_the_interface_is_what_the_protocol_calls():
    assert sorted(METHODS) == ["check_available", "close", "restore", "send", "update"]
    assert ATTRIBUTES == ["hidden_count", "messages", "server_mode"]


@pytest.mark.parametrize("kind", [NormalModeMaildrop, ServerModeMaildrop, MaildirDrop],
                         ids=lambda kind: kind.__name__)
def test_every_mailbox_kind_implements_every_method_alike(kind):
    for name in METHODS:
        method = getattr(kind, name)
        assert method is not getattr(SessionMaildrop, name), f"{kind.__name__}.{name} missing"
        assert parameters(method) == parameters(getattr(SessionMaildrop, name)), name
        if kind is not MaildirDrop and name in ("update", "restore"):
            assert method is not getattr(Maildrop, name), f"{kind.__name__}.{name} abstract"
