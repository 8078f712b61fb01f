"""Both implementations of the RETR/TOP wire conversion, for the tests that must hold for each
(docs/accelerators.md, "How it is tested"): the compiled qpopper.spool._wire when it was built
and the pure-Python definition.

A module runs every test once per implementation with
    each_wire_impl = wire_impls.each_wire_impl
    pytestmark = pytest.mark.usefixtures("each_wire_impl")
The C case skips when the extension is not built; test_wire_accelerator.py fails then if a
compiler was there to build it.
"""

from __future__ import annotations

import pytest

from qpopper.spool import mbox_send

NOT_BUILT = "qpopper.spool._wire is not built (no compiler or Python.h at install time)"
WIRE_IMPLS = [
    pytest.param(mbox_send.wire_join_c, id="wire-c",
                 marks=pytest.mark.skipif(mbox_send.wire_join_c is None, reason=NOT_BUILT)),
    pytest.param(mbox_send.wire_join_python, id="wire-python"),
]


@pytest.fixture(params=WIRE_IMPLS)
def each_wire_impl(request, monkeypatch):
    """mbox_send (send_message, WireLines) converts with this implementation's wire_join for
    the test."""
    monkeypatch.setattr(mbox_send, "wire_join", request.param)
    return request.param
