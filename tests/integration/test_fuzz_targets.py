"""The fuzz targets (fuzz/, docs/fuzzing.md) keep working: every seed of every target's
corpus replays without a finding, and each target runs briefly under atheris (libFuzzer)
and stops clean. The long runs are `make fuzz`; their figures are in docs/fuzzing.md."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from fuzz import harness
from tests.helpers.repo import REPO

TARGETS = harness.target_names()
SMOKE_RUNS = 3000


def test_every_surface_has_a_target():
    assert {"pop3", "sasl", "mbox", "mbox_writeback", "config", "monitor_wire",
            "proxy_protocol", "wire"} <= set(TARGETS)


@pytest.mark.parametrize("name", TARGETS)
def test_the_seed_corpus_replays_clean(name):
    assert harness.replay(name) >= 5, f"fuzz/corpus/{name} holds fewer than 5 seeds"


@pytest.mark.parametrize("name", TARGETS)
@pytest.mark.timeout(240)
def test_a_short_fuzz_run_finds_nothing(name, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fuzz.run", name, "--runs", str(SMOKE_RUNS), "-seed=1",
         "--work", str(tmp_path / "work"), "--findings", str(tmp_path / "findings")],
        cwd=REPO, capture_output=True, text=True, errors="replace", timeout=200,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-3000:]
    # libFuzzer stops at the first check after -runs: a run or two more (seen under load)
    done = re.search(r"^Done (\d+) runs", result.stderr, re.M)
    assert done and int(done.group(1)) >= SMOKE_RUNS, result.stderr[-3000:]
    assert not list((tmp_path / "findings").iterdir())


def test_an_undocumented_exception_is_a_finding(tmp_path, monkeypatch):
    """The harness's one rule, checked against a target that breaks it."""
    target = harness.load_target("config")
    monkeypatch.setattr(target, "one_input", lambda data: {}[data])
    with pytest.raises(KeyError):
        harness.check(target, b"x")
    monkeypatch.setattr(target, "one_input", lambda data: (_ for _ in ()).throw(
        target.ALLOWED[0]("documented")))
    harness.check(target, b"x")


def test_the_mbox_targets_padding_check_scans_with_the_inputs_split(monkeypatch):
    """Bit 5 (the batch scan in small parts) holds for the padded spool's scans too: the
    padding invariant is checked after the input's split is set, not with the last input's."""
    from qpopper.spool import mbox_batch
    target = harness.load_target("mbox")
    for name in ("SPLIT_OCTETS", "CHUNK_OCTETS", "BIG_MESSAGE_OCTETS"):
        monkeypatch.setattr(mbox_batch, name, getattr(mbox_batch, name))   # restored after
    checked = target.same_as_without_padding
    seen = []

    def same_as_without_padding(*args):
        seen.append((mbox_batch.SPLIT_OCTETS, mbox_batch.CHUNK_OCTETS,
                     mbox_batch.BIG_MESSAGE_OCTETS))
        checked(*args)
    monkeypatch.setattr(target, "same_as_without_padding", same_as_without_padding)
    spool = b"\r\n\n" + b"".join(b"From a@b Wed Dec  2 05:53:22 1992\nSubject: %d\n\n%s\n\n"
                                 % (n, b"x" * 300) for n in range(4))
    for flags in (32, 0, 32 | 16):
        target.one_input(bytes([flags, 1]) + spool)
    small, whole = (0, 256, 128), (target.SPLIT_OCTETS, target.CHUNK_OCTETS,
                                   target.BIG_MESSAGE_OCTETS)
    assert seen == [small, whole, small]
