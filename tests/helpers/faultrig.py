"""The driver of the kill-at-every-step fault tests, shared by every maildrop mode: record the
steps a session takes, run it to the end or SIGKILL it at its k-th step, then look at what
the next session shows. Each run is its own fork()ed process (spoolcheck.in_child), as a
session is; a test file says only how its spool is laid out and how a session runs."""

from __future__ import annotations

import contextlib

from tests.helpers.spoolcheck import allowed_after_kill, another_host, in_child, killer_at


class FaultRig:
    """One spool shape under test, in directory `work`. Subclasses provide prepare() (lay the
    spool out afresh), session(scenario, hook) (one session with a step hook) and view(hook)
    (the next session as a client sees it, and the files left: spoolcheck.next_session_view)."""

    def __init__(self, work, tmp_path):
        self.work = work
        self.tmp = tmp_path

    def prepare(self) -> None:
        raise NotImplementedError

    def session(self, scenario: str, hook) -> None:
        raise NotImplementedError

    def view(self, hook=None):
        raise NotImplementedError

    # --- runs, each in a process of its own ---------------------------------------------------
    def steps(self, scenario: str) -> list[str]:
        """The steps of `scenario` on a fresh spool, in order."""
        self.prepare()

        def run():
            seen = []
            self.session(scenario, seen.append)
            return seen
        return in_child(run, self.tmp / "steps.pickle", expect_kill=False)

    def next_view(self, hook=None, *, other_host: bool = False):
        """(messages, leftover files) of the next session; `other_host`: run on another host
        of the same NFS spool, whose mount has another device number (spoolcheck.another_host)."""
        def look():
            with another_host() if other_host else contextlib.nullcontext():
                return self.view(hook)
        return in_child(look, self.tmp / "snap.pickle", expect_kill=False)

    def untouched(self) -> list:
        """The messages of a fresh spool no session has run on."""
        self.prepare()
        return self.next_view()[0]

    def outcome(self, scenario: str) -> list:
        """The messages after `scenario` ran to its end without a crash."""
        self.prepare()
        in_child(lambda: self.session(scenario, None), expect_kill=False)
        return self.next_view()[0]

    def check_each_crash_from_another_host(self, untouched, before, committed,
                                           label: str) -> int:
        """Kill the update at each of its steps, then look from another host of the NFS spool:
        no file left over, and what the next session shows is allowed after a kill there
        (spoolcheck.allowed_after_kill). Returns how many steps were checked."""
        steps = self.steps("update")
        for k, step in enumerate(steps):
            self.crash("update", k)
            seen, leftovers = self.next_view(other_host=True)
            where = f"{label}: killed at step {k} {step!r}, next session on another host"
            assert leftovers == [], where
            assert seen in allowed_after_kill(step, "update", untouched, before,
                                              committed), where
        return len(steps)

    def crash(self, scenario: str, k: int) -> None:
        """A fresh spool, and `scenario` killed at its k-th step."""
        self.prepare()
        in_child(lambda: self.session(scenario, killer_at(k)), expect_kill=True)

    def recovery_crashes(self, first_step: str):
        """For each distinct step of the update from `first_step` on: kill the update there,
        then kill the next session at each of its `recover:` steps in turn. Yields (update
        step, recovery step) after each double crash, for the caller to look."""
        steps = self.steps("update")
        chosen: dict[str, int] = {}
        for k in range(steps.index(first_step), len(steps)):
            chosen.setdefault(steps[k], k)
        for step, k in chosen.items():
            self.crash("update", k)
            recovery = in_child(self._steps_of_view, self.tmp / "r.pickle", expect_kill=False)
            for j, recovery_step in enumerate(recovery):
                if not recovery_step.startswith("recover:"):
                    continue                 # the next session's own open steps
                self.crash("update", k)
                in_child(lambda: self.view(killer_at(j)), expect_kill=True)
                yield step, recovery_step

    def _steps_of_view(self) -> list[str]:
        seen: list[str] = []
        self.view(seen.append)
        return seen
