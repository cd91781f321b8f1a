"""Fire a schedule's faults at the points of I/O progress it names.

The engine jobs run with progress reporting (``AgentClient.spawn_with_progress``);
each entry waits for its trigger (completions on a disk's job, or a time since
the start), arms its fault, keeps it armed ``duration_s`` and disarms it.
What fired when, with the progress seen at that moment, is returned for
``schedule.json``.
"""

from __future__ import annotations

import time

from ..errors import CheckFailed
from .kinds import Fault
from .schedule import Schedule


def _progress_view(event: dict | None) -> dict | None:
    if not event:
        return None
    return {k: event.get(k) for k in ("completions", "in_flight", "res")}


class ScheduleRun:
    def __init__(self, machine, agent, schedule: Schedule, faults: list[Fault], jobs: dict[str, int],
                 trigger_timeout_s: float):
        self.machine, self.agent, self.schedule, self.faults = machine, agent, schedule, faults
        self.jobs = jobs  # disk id -> engine job id reporting progress
        self.trigger_timeout_s = trigger_timeout_s
        self.fired: list[dict] = []
        self.left_armed: list[Fault] = []

    def _wait_trigger(self, index: int, threshold: int | None, t0: float) -> dict | None:
        trigger = self.schedule.faults[index].trigger
        if trigger.at_s is not None:
            time.sleep(max(0.0, t0 + trigger.at_s - time.monotonic()))
            return None
        assert trigger.disk is not None and threshold is not None
        job = self.jobs.get(trigger.disk)
        if job is None:
            raise CheckFailed(f"schedule {self.schedule.name!r}: no job runs on disk {trigger.disk!r}")
        event = self.agent.wait_progress(job, lambda ev: int(ev.get("completions", 0)) >= threshold,
                                         self.trigger_timeout_s)
        if event is None:
            last = _progress_view(self.agent.progress.get(job))
            raise CheckFailed(f"schedule {self.schedule.name!r}: faults[{index}] waits for {threshold} completions "
                              f"on {trigger.disk}, none within {self.trigger_timeout_s:.0f}s (last progress {last})")
        return event

    def run(self) -> list[dict]:
        t0 = time.monotonic()
        for i, (entry, fault, threshold) in enumerate(zip(self.schedule.faults, self.faults,
                                                         self.schedule.thresholds())):
            event = self._wait_trigger(i, threshold, t0)
            record = {"index": i, **fault.describe(), "threshold": threshold,
                      "progress_at_arm": _progress_view(event)}
            fault.arm(self.machine)
            record["armed_at_s"] = round(time.monotonic() - t0, 3)
            self.fired.append(record)
            if fault.one_shot:
                continue
            if entry.duration_s is None:
                self.left_armed.append(fault)
                continue
            time.sleep(entry.duration_s)
            fault.disarm(self.machine)
            record["disarmed_at_s"] = round(time.monotonic() - t0, 3)
            if entry.trigger.disk is not None:
                record["progress_after_disarm"] = _progress_view(self.settled_progress(self.jobs[entry.trigger.disk]))
        return self.fired

    def settled_progress(self, job: int) -> dict | None:
        """Progress once every I/O prepared before this moment has completed: what a fault
        armed until now did to the job is all in it.

        A ping's reply follows every event the agent sent before it, so the next event is
        newer than the ping; its ``prepared`` covers every I/O issued before; then wait for
        that many completions."""
        self.agent.ping()
        seen = (self.agent.progress.get(job) or {}).get("seq", -1)
        fresh = self.agent.wait_progress(job, lambda ev: ev.get("seq", -1) > seen, 5.0)
        if fresh is None:
            return None
        issued = int(fresh.get("prepared", 0))
        return self.agent.wait_progress(job, lambda ev: int(ev.get("completions", 0)) >= issued, 10.0)

    def disarm_all(self) -> None:
        """Take back faults left armed (no duration), newest first; for a scenario's clean-up."""
        while self.left_armed:
            self.left_armed.pop().disarm(self.machine)
