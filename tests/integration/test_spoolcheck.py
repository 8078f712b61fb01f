"""The spool tests' own helper (tests/helpers/spoolcheck.py): a failure in in_child's forked
process reaches the parent's assertion, and nothing is written for it — before, the error
went to "<result file>.err", which without a result file was /dev/null.err, as root."""

from __future__ import annotations

import os

import pytest

from tests.helpers.spoolcheck import in_child


def fail_with_a_reason():
    raise RuntimeError("the reason the child failed")


@pytest.mark.parametrize("with_result_file", [False, True])
def test_a_failing_child_reports_through_the_parent_and_writes_nothing(tmp_path, with_result_file):
    existed = os.path.exists("/dev/null.err")
    result = tmp_path / "result.pickle" if with_result_file else None
    with pytest.raises(AssertionError, match="the reason the child failed"):
        in_child(fail_with_a_reason, result, expect_kill=False)
    assert list(tmp_path.iterdir()) == []
    assert os.path.exists("/dev/null.err") == existed


def test_a_child_value_comes_back_through_the_result_file(tmp_path):
    assert in_child(lambda: {"a": 1}, tmp_path / "r.pickle", expect_kill=False) == {"a": 1}
