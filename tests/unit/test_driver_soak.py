"""driver-soak against a fake machine: what it asks the guest for, and how it judges."""

from __future__ import annotations

import pytest

from vblk_ci import events as E
from vblk_ci.errors import UsageError
from vblk_ci.machine.machine import Timeouts
from vblk_ci.scenarios import SUITES, ScenarioContext
from vblk_ci.scenarios.driver_soak import DriverSoak, mix_args, soak_seconds


class FakeAgent:
    def __init__(self, results):
        self.results = results
        self.spawned = []

    def wait_disk(self, serial, timeout_s=10.0, chardev=True):
        i = int(serial[-1])
        return {"name": f"vd{'ab'[i]}", "chardev": f"/dev/vd{'ab'[i]}c0", "blockdev": f"/dev/vd{'ab'[i]}"}

    def spawn(self, args):
        self.spawned.append(args)
        return len(self.spawned)

    def wait_job(self, job, timeout_s=120.0):
        return self.results[job - 1]


class FakeConsole:
    crashed = type("Flag", (), {"is_set": staticmethod(lambda: False)})()


class FakeMachine:
    def __init__(self, results):
        self.agent = FakeAgent(results)
        self.console = FakeConsole()
        self.timeouts = Timeouts()
        self.slots = [0, 1, 2, 3]
        self.plugged, self.unplugged = [], []

    def free_slot(self):
        return self.slots.pop(0) if self.slots else None

    def hotplug(self, disk, slot, chardev=True):
        self.plugged.append((disk.id, slot))

    def unplug(self, disk_id):
        self.unplugged.append(disk_id)
        return 0.1


def run(results, tmp_path, monkeypatch, seconds="3"):
    monkeypatch.setenv("VBLK_CI_SOAK_SECONDS", seconds)
    machine = FakeMachine(results)
    ctx = ScenarioContext("driver-soak", machine, tmp_path, E.Recorder(), set())
    DriverSoak().run(ctx)
    return {c.name: c for c in ctx.checks}, machine


CLEAN = {"exit_code": 0, "ios": 1000, "errors": 0, "mismatches": 0}


def test_two_disks_mixed_across_both_nodes(tmp_path, monkeypatch):
    checks, machine = run([CLEAN, CLEAN], tmp_path, monkeypatch)
    assert {n: c.status for n, c in checks.items()} == {"plug-2-disks": "pass", "mix-3s": "pass", "unplug": "pass"}
    assert machine.plugged == [("soak0", 0), ("soak1", 1)] and machine.unplugged == ["soak0", "soak1"]
    first = machine.agent.spawned[0]
    assert first[:4] == ["--path", "/dev/vdac0", "--path2", "/dev/vda"] and "--with-trim" in first
    assert checks["mix-3s"].data["ios"] == 2000
    assert "driver-soak" in SUITES["driver"]


@pytest.mark.parametrize("bad, message", [
    ({"mismatches": 3, "first_mismatch": {"offset": 8}}, "3 mismatched words"),
    ({"errors": 2, "first_error": {"res": -5}}, "2 I/O errors"),
    ({"exit_code": 3, "stderr": "cannot open\n"}, "mix exited 3"),
    ({"ios": 0}, "issued no I/O"),
])
def test_any_error_mismatch_or_idle_job_fails(tmp_path, monkeypatch, bad, message):
    checks, _ = run([CLEAN, {**CLEAN, **bad}], tmp_path, monkeypatch)
    assert checks["mix-3s"].status == "fail" and message in checks["mix-3s"].detail


def test_duration_is_validated(monkeypatch):
    monkeypatch.setenv("VBLK_CI_SOAK_SECONDS", "ten")
    with pytest.raises(UsageError, match="not a number"):
        soak_seconds()
    monkeypatch.setenv("VBLK_CI_SOAK_SECONDS", "0")
    with pytest.raises(UsageError, match="between 1 and 86400"):
        soak_seconds()
    assert mix_args("/dev/vdbc0", "/dev/vdb", 600.0, 7)[-4:] == ["--runtime", "600", "--seed", "7"]


def test_an_unplug_the_guest_never_acknowledges_fails_the_check(tmp_path, monkeypatch):
    # The same path as every other scenario (issue 14): an UnplugTimeout is a failed check,
    # where driver-soak used to let a MachineTimeout escape as an infrastructure error.
    from vblk_ci.errors import UnplugTimeout

    class Stuck(FakeMachine):
        def unplug(self, disk_id):
            raise UnplugTimeout(f"unplug {disk_id}: no QMP event DEVICE_DELETED within 30.0s")

    monkeypatch.setenv("VBLK_CI_SOAK_SECONDS", "3")
    ctx = ScenarioContext("driver-soak", Stuck([CLEAN, CLEAN]), tmp_path, E.Recorder(), set())
    DriverSoak().run(ctx)
    unplug = {c.name: c for c in ctx.checks}["unplug"]
    assert unplug.status == "fail" and "DEVICE_DELETED" in unplug.detail
