"""Scenario harness and the smoke scenario against a fake machine (no QEMU)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vblk_ci import events as E
from vblk_ci.console.classify import Finding
from vblk_ci.errors import AgentError, CheckFailed, MachineTimeout, QmpError
from vblk_ci.machine.machine import Timeouts, event_match
from vblk_ci.scenarios import SUITES, Scenario, ScenarioContext, register, suite
from vblk_ci.scenarios.smoke import BAD_OFFSET, DISK_SIZE, Smoke


# -- pure helpers -------------------------------------------------------------------------------

def test_event_match_partial_dicts():
    first = {"event": "DEVICE_DELETED", "data": {"path": "/machine/peripheral/d0/virtio-backend"}}
    second = {"event": "DEVICE_DELETED", "data": {"device": "d0", "path": "/machine/peripheral/d0"}}
    want = {"data": {"device": "d0"}}
    assert not event_match(first, want)
    assert event_match(second, want)
    assert event_match(second, {})
    assert not event_match(second, {"data": {"device": "d1"}})
    assert not event_match({"event": "X", "data": None}, want)


def test_timeouts_scale(monkeypatch):
    monkeypatch.delenv("VBLK_CI_TIMEOUT_SCALE", raising=False)
    assert Timeouts.for_accel("tcg")(10) == 10
    assert Timeouts.for_accel("kvm")(10) == 5
    monkeypatch.setenv("VBLK_CI_TIMEOUT_SCALE", "3")
    assert Timeouts.for_accel("tcg")(10) == 30


# -- registry -----------------------------------------------------------------------------------

def test_registry_rejects_malformed_scenarios():
    class NoName(Scenario):
        description = "x"

        def run(self, ctx):
            pass

    class NoDescription(Scenario):
        name = "nodesc"

        def run(self, ctx):
            pass

    class NoRun(Scenario):
        name = "norun"
        description = "x"

    for cls in (NoName, NoDescription, NoRun):
        with pytest.raises(TypeError):
            register(cls)


def test_suites_resolve():
    assert [cls.name for cls in suite("smoke")] == list(SUITES["smoke"])
    with pytest.raises(Exception, match="unknown suite"):
        suite("nope")


# -- fake machine -------------------------------------------------------------------------------

@dataclass
class FakeConsole:
    found: list = field(default_factory=list)
    crashed: threading.Event = field(default_factory=threading.Event)

    def findings(self, mark: int = 0):
        return list(self.found)


class FakeAgent:
    def __init__(self, engine_results: dict | None = None, chardev: bool = True):
        self.calls: list[tuple] = []
        self.engine_results = engine_results or {}
        self.chardev = chardev

    def wait_disk(self, serial, timeout_s=10.0, chardev=True):
        self.calls.append(("wait_disk", serial, chardev))
        if chardev and not self.chardev:
            raise AgentError("Timeout", f"no char device for {serial}")
        return {"name": "vda", "serial": serial, "size_bytes": DISK_SIZE,
                "chardev": "/dev/vdac0" if self.chardev else None}

    def disks(self):
        return [{"name": "vda", "chardev": None}]

    def engine(self, args, timeout_s=120.0):
        self.calls.append(("engine", tuple(args)))
        op = args[args.index("--op") + 1]
        offset = int(args[args.index("--offset") + 1])
        res = {DISK_SIZE: -34, BAD_OFFSET: 1}.get(offset, 0)
        default = {"exit_code": 0, "errors": 0, "mismatches": 0, "results": [res]}
        return {**default, **self.engine_results.get((op, offset), {})}

    def wait_disk_gone(self, name, timeout_s=10.0):
        self.calls.append(("wait_disk_gone", name))
        return {"name": name}


class FakeMachine:
    def __init__(self, agent: FakeAgent, console: FakeConsole | None = None, unplug_error: Exception | None = None):
        self.agent = agent
        self.console = console or FakeConsole()
        self.timeouts = Timeouts()
        self.unplug_error = unplug_error
        self.plugged: list = []

    def hotplug(self, disk, slot, chardev=True):
        self.plugged.append((disk, slot))
        assert disk.backend == "file" and disk.path.stat().st_size == DISK_SIZE
        return E.DiskPlugged(disk.id, disk.serial, 0.05, "vda", None)

    def unplug(self, disk_id):
        if self.unplug_error:
            raise self.unplug_error
        return 0.1


def run_smoke(machine, tmp_path):
    rec = E.Recorder()
    ctx = ScenarioContext("smoke", machine, tmp_path, rec, set())
    Smoke().run(ctx)
    return {c.name: c for c in ctx.checks}, rec


def test_smoke_all_pass(tmp_path):
    agent = FakeAgent()
    checks, rec = run_smoke(FakeMachine(agent), tmp_path)
    assert {n: c.status for n, c in checks.items()} == {
        "hotplug": "pass", "passthru-write-verify": "pass", "passthru-write-block-verify": "pass",
        "block-write-passthru-verify": "pass", "passthru-read-device-error": "pass",
        "passthru-read-past-end-erange": "pass", "unplug": "pass"}
    engine = [c[1] for c in agent.calls if c[0] == "engine"]
    assert engine[0] == ("--path", "/dev/vdac0", "--op", "write", "--offset", "0", "--length", "1048576",
                         "--bs", "4096", "--qd", "4", "--seed", "11")
    assert engine[3][:4] == ("--path", "/dev/vda", "--op", "verify")
    assert engine[4][:4] == ("--path", "/dev/vda", "--op", "write") and "13" in engine[4]
    assert engine[6][:6] == ("--path", "/dev/vdac0", "--op", "read", "--offset", str(BAD_OFFSET))
    assert engine[7][:6] == ("--path", "/dev/vdac0", "--op", "read", "--offset", str(DISK_SIZE))
    assert checks["passthru-write-verify"].data["verify"]["mismatches"] == 0
    assert [type(e).__name__ for e in rec.events].count("CheckEnd") == 7
    assert rec.of(E.DiskPlugged)[0].chardev == "/dev/vdac0"
    assert rec.of(E.DiskUnplugged)[0].seconds == 0.1


@pytest.mark.parametrize("override, failing, message", [
    ({("verify", 0): {"mismatches": 2, "first_mismatch": {"offset": 8}}}, "passthru-write-verify", "2 mismatched"),
    ({("verify", 1 << 20): {"errors": 1, "first_error": {"res": -5}}}, "passthru-write-block-verify", "1 I/O errors"),
    ({("write", 2 << 20): {"exit_code": 3, "stderr": "cannot open /dev/vda\n"}}, "block-write-passthru-verify",
     "exited 3: cannot open /dev/vda"),
    ({("read", BAD_OFFSET): {"results": [0]}}, "passthru-read-device-error", "cqe->res = 0, expected 1"),
    ({("read", DISK_SIZE): {"results": [1]}}, "passthru-read-past-end-erange", "cqe->res = 1, expected -34"),
])
def test_smoke_single_failures(tmp_path, override, failing, message):
    checks, _ = run_smoke(FakeMachine(FakeAgent(override)), tmp_path)
    assert [n for n, c in checks.items() if c.status != "pass"] == [failing]
    assert message in checks[failing].detail


def test_smoke_without_chardev_skips_io_but_still_unplugs(tmp_path):
    agent = FakeAgent(chardev=False)
    checks, _ = run_smoke(FakeMachine(agent), tmp_path)
    assert checks["hotplug"].status == "fail"
    assert "appeared but no char device" in checks["hotplug"].detail
    assert checks["hotplug"].data["disks"] == [{"name": "vda", "chardev": None}]
    assert [c.status for c in checks.values()][1:] == ["skip", "skip", "skip", "skip", "skip", "pass"]
    assert list(checks)[-1] == "unplug"


def test_console_finding_fails_the_check_and_is_reported_once(tmp_path):
    console = FakeConsole([Finding("warning", "WARNING in virtblk_done", "WARNING: ...")])
    console.crashed.set()
    checks, rec = run_smoke(FakeMachine(FakeAgent(), console), tmp_path)
    # The hotplug check fails on the finding; the I/O checks are not run; unplug still is (and fails).
    assert [c.status for c in checks.values()] == ["fail", "skip", "skip", "skip", "skip", "skip", "fail"]
    assert "console: WARNING in virtblk_done" in checks["hotplug"].detail
    assert [e.title for e in rec.of(E.ConsoleFinding)] == ["WARNING in virtblk_done"]


def test_infra_error_is_recorded_then_raised(tmp_path):
    machine = FakeMachine(FakeAgent(), unplug_error=QmpError("device_del", "Timeout", "no reply"))
    rec = E.Recorder()
    ctx = ScenarioContext("smoke", machine, tmp_path, rec, set())
    with pytest.raises(QmpError):
        Smoke().run(ctx)
    assert ctx.checks[-1].name == "unplug" and ctx.checks[-1].status == "error"
    assert rec.of(E.CheckEnd)[-1].passed is False


def test_unplug_never_acked_is_a_failure_not_an_infra_error(tmp_path):
    machine = FakeMachine(FakeAgent(), unplug_error=MachineTimeout("no QMP event DEVICE_DELETED within 30.0s"))
    checks, _ = run_smoke(machine, tmp_path)
    assert checks["unplug"].status == "fail"
    assert "DEVICE_DELETED" in checks["unplug"].detail


def test_check_failed_and_agent_error_are_failures(tmp_path):
    ctx = ScenarioContext("meta", FakeMachine(FakeAgent()), tmp_path, E.discard, set())

    def fails(rec):
        rec["seen"] = 1
        raise CheckFailed("nope")

    def agent_fails(rec):
        raise AgentError("Timeout", "slow")
    assert ctx.check("a", fails).status == "fail"
    assert ctx.checks[0].data == {"seen": 1}
    assert ctx.check("b", agent_fails).detail == "Timeout: slow"
    assert ctx.check("c", lambda rec: None).status == "pass"


# -- run --check: the chosen check and its set-up ----------------------------------------------

def _ran(select: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Run five checks through a context with ``select``; return (bodies run, checks recorded)."""
    ctx = ScenarioContext("demo", FakeMachine(FakeAgent()), Path("/nonexistent"), E.discard, set(), select=select)
    ran: list[str] = []
    for name in ("hotplug", "write", "read-verify", "discard", "unplug"):
        ctx.check(name, lambda rec, n=name: ran.append(n))
    return ran, [c.name for c in ctx.checks]


def test_check_selection_runs_the_prefix_then_only_matches():
    ran, recorded = _ran(("read-*",))
    assert ran == recorded == ["hotplug", "write", "read-verify"]
    ran, recorded = _ran(("demo/write", "demo/discard"))
    assert ran == ["hotplug", "write", "discard"]


def test_check_selection_empty_runs_everything_and_a_miss_runs_all():
    assert _ran(())[0] == ["hotplug", "write", "read-verify", "discard", "unplug"]
    # A glob that matches nothing leaves every check as possible set-up; the runner then
    # reports the run as unjudged ("matched no check").
    assert _ran(("nothing",))[0] == ["hotplug", "write", "read-verify", "discard", "unplug"]


def test_check_selection_skips_scenarios_a_scoped_glob_does_not_name():
    from vblk_ci.scenarios.base import CheckSelection

    sel = CheckSelection(("driver-bounds/*wraps",))
    assert sel.wants_scenario("driver-bounds") and not sel.wants_scenario("driver-ioprio")
    assert CheckSelection(("wraps",)).wants_scenario("driver-ioprio")
    assert CheckSelection(()).wants_scenario("anything")
    assert CheckSelection(("driver-*/x",)).wants_scenario("driver-links")


def test_a_check_glob_that_matched_nothing_is_an_error_not_a_pass(tmp_path):
    from vblk_ci.result import CheckResult, RunResult, ScenarioResult
    from vblk_ci.runner import Plan, judge_selection

    def result_with(*names):
        r = RunResult(status="pass", suite="x", run_dir=str(tmp_path))
        r.scenarios.append(ScenarioResult("demo", "d", checks=[CheckResult("demo", n, "pass") for n in names]))
        return r

    plan = Plan(kernel=tmp_path, initramfs=tmp_path, run_dir=tmp_path, scenarios=("demo",), checks=("verify",))
    missed = result_with("hotplug", "write")
    judge_selection(missed, plan)
    assert missed.status == "error" and missed.reason == "--check verify matched no check of demo"
    hit = result_with("hotplug", "verify")
    judge_selection(hit, plan)
    assert hit.status == "pass"


def test_a_check_result_points_at_its_ctx_check_call(tmp_path):
    @register
    class Pointing(Scenario):
        name = "test-pointing"
        description = "x"

        def run(self, ctx):
            ctx.check("fails", _fails_elsewhere)  # the line the result must name

    ctx = ScenarioContext("test-pointing", FakeMachine(FakeAgent()), tmp_path, E.discard, set())
    Pointing().run(ctx)
    import inspect
    lines, first = inspect.getsourcelines(Pointing.run)
    want = first + next(i for i, text in enumerate(lines) if "ctx.check(" in text)
    assert ctx.checks[0].status == "fail"
    assert ctx.checks[0].source == f"{Path(__file__).resolve()}:{want}"  # outside host/: absolute


def _fails_elsewhere(rec):
    raise CheckFailed("no")


def test_a_packaged_scenario_names_its_file_relative_to_the_repository(tmp_path):
    class ExecAgent(FakeAgent):
        def exec(self, **kw):
            return {"exit_code": 0, "stdout": "6.12.0\n", "stderr": ""}

    ctx = ScenarioContext("meta-failing-check", FakeMachine(ExecAgent()), tmp_path, E.discard, set())
    from vblk_ci.scenarios.meta import FailingCheck
    FailingCheck().run(ctx)
    assert ctx.checks[0].status == "fail"
    path, line = ctx.checks[0].source.rsplit(":", 1)
    assert path == "host/vblk_ci/scenarios/meta.py" and int(line) > 0


def test_machine_unplug_turns_a_missing_device_deleted_into_an_unplug_timeout(monkeypatch):
    """Machine._await_deleted: the one place an unplug wait becomes UnplugTimeout (a verdict)."""
    from vblk_ci.errors import UnplugTimeout
    from vblk_ci.machine.machine import Machine

    class Disk:
        id, node_name = "d0", "n0"

    m = Machine.__new__(Machine)
    m.timeouts = Timeouts()

    def never(name, match, timeout):
        raise MachineTimeout(f"no QMP event {name} matching {match} within {timeout:.1f}s")

    m.events_wait = never
    with pytest.raises(UnplugTimeout, match="unplug d0: no QMP event DEVICE_DELETED") as info:
        m._await_deleted(Disk(), 0.0, 1.0)
    assert isinstance(info.value, MachineTimeout) and info.value.exit_code == 1


def test_a_config_mismatch_raised_in_a_check_is_recorded_as_such(tmp_path):
    """The matrix's config check goes through ctx.check like every other (no private bookkeeping)."""
    from vblk_ci.errors import ConfigMismatch

    rec = E.Recorder()
    ctx = ScenarioContext("matrix-x", FakeMachine(FakeAgent()), tmp_path, rec, set())

    def config(r):
        r["disks"] = {"d0": {}}
        raise ConfigMismatch("d0 num_queues: spec 4, guest 2")

    result = ctx.check("config", config)
    assert (result.status, result.detail, result.data) == ("config-mismatch", "d0 num_queues: spec 4, guest 2",
                                                          {"disks": {"d0": {}}})
    assert ctx.checks == [result] and rec.of(E.CheckEnd)[-1].passed is False
