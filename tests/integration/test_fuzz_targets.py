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
