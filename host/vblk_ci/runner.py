"""build artifacts check -> boot -> agent ready -> scenarios -> verdict.

``run(plan, emit)`` never prints: it emits events and returns a ``RunResult``.
The run dir gets console.log (QEMU), qemu.log, qmp.jsonl, agent.log,
events.jsonl, run.log (tracebacks), results.json and junit.xml.

Verdicts: ``pass``; ``fail`` (a check failed, the guest did not come up, or the
console showed a finding anywhere -- the excerpt goes in the reason); ``error``
(the machinery failed: QEMU, QMP, a timeout of the host side); ``config-mismatch``
is reserved. Problems found before anything runs (missing kernel, unknown suite,
no QEMU) are raised as ``MissingPrerequisite``/``UsageError`` instead.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from . import events as E
from .console.classify import classify
from .coverage.collect import GcdaCollector
from .errors import AgentError, BootError, CheckFailed, InfraError, MissingPrerequisite, UnplugTimeout
from .machine.accel import choose
from .machine.argv import MachineSpec
from .machine.machine import Machine, Timeouts
from .machine.qemuinfo import DEFAULT_QEMU, probe_caps, resolve_binary
from .report.json_report import write_json
from .report.junit import write_junit
from .report.summary import append_step_summary
from .repro.bundle import write_bundle
from .result import SKIP, CheckResult, FindingRecord, RunResult, ScenarioResult
from .scenarios import ScenarioContext, suite
from .scenarios.base import CheckSelection
from .scenarios import get as get_scenario
from .strict import unallowed_skips


@dataclass(frozen=True)
class Plan:
    kernel: Path
    initramfs: Path
    run_dir: Path
    qemu: str = DEFAULT_QEMU
    accel: str = "auto"
    smp: int = 2
    memory_mb: int = 1024
    suite: str = "smoke"
    disk_slots: int = 4
    append: tuple[str, ...] = ()
    repro_bundle: bool = True  # write repro-bundle.tar.gz when the verdict is not pass
    schedule: Path | None = None  # a fault schedule (JSON): runs scenario fault-schedule-file after the suite
    strict: bool = False  # a skip not on strict.ALLOWED_SKIPS fails the run
    coverage: bool = False  # copy virtio_blk's gcov counters to <run_dir>/coverage/ after boot and each scenario
    scenarios: tuple[str, ...] = ()  # run these scenarios (any registered one) instead of the suite's
    checks: tuple[str, ...] = ()  # only checks whose name matches one of these globs run (the rest are not run)

    @property
    def label(self) -> str:
        """What the run is called in reports: the suite, or the scenarios chosen with --scenario."""
        return ",".join(self.scenarios) if self.scenarios else self.suite


def check_artifacts(plan: Plan) -> None:
    for what, path in (("kernel image", plan.kernel), ("initramfs", plan.initramfs)):
        if not Path(path).is_file():
            raise MissingPrerequisite(f"{what} not found: {path}")


class EventLog:
    """An Emit that appends every event to events.jsonl and keeps them for the result."""

    def __init__(self, path: Path, downstream: E.Emit):
        self.path = path
        self.downstream = downstream
        self.events: list[E.Event] = []

    def __call__(self, event: E.Event) -> None:
        self.events.append(event)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"type": type(event).__name__, **dataclasses.asdict(event)}, default=str) + "\n")
        self.downstream(event)


def _log_exception(run_dir: Path, exc: BaseException) -> None:
    with open(run_dir / "run.log", "a", encoding="utf-8") as f:
        f.write("".join(traceback.format_exception(exc)))


def record_abort(result: RunResult, run_dir: Path, exc: Exception) -> None:
    """A run that stopped early: the machinery (``InfraError``) is an error; a guest that
    did not boot or a check that gave up is a failure. The traceback goes to run.log."""
    _log_exception(run_dir, exc)
    result.status = E.ERROR if isinstance(exc, InfraError) else E.FAIL
    result.reason = str(exc)


def _scenario_status(checks: list[CheckResult]) -> str:
    statuses = {c.status for c in checks}
    for status in (E.ERROR, E.FAIL):
        if status in statuses:
            return status
    if statuses and statuses <= {SKIP}:
        return SKIP
    return E.PASS


def _planned_scenarios(plan: Plan) -> list:
    classes = [get_scenario(n) for n in plan.scenarios] if plan.scenarios else suite(plan.suite)
    if plan.schedule is not None:
        classes.append(get_scenario("fault-schedule-file"))
    return classes


def _run_scenarios(plan: Plan, machine: Machine, emit: E.Emit, result: RunResult, reported: set[str]) -> None:
    options = {"schedule": plan.schedule} if plan.schedule is not None else {}
    collector = GcdaCollector(plan.run_dir, emit) if plan.coverage else None
    if collector is not None:
        collector.snapshot(machine, "boot")
    for cls in _planned_scenarios(plan):
        scenario = cls()
        ctx = ScenarioContext(cls.name, machine, plan.run_dir, emit, reported, options, select=plan.checks)
        if not ctx.select.wants_scenario(cls.name):
            continue
        record = ScenarioResult(cls.name, cls.description)
        result.scenarios.append(record)
        reasons = scenario.requires(ctx)
        if reasons:
            record.status, record.skip_reasons = SKIP, list(reasons)
            emit(E.ScenarioSkipped(cls.name, tuple(reasons)))
            continue
        emit(E.ScenarioStart(cls.name, cls.description))
        try:
            scenario.run(ctx)
        except (CheckFailed, AgentError, UnplugTimeout) as exc:  # raised outside ctx.check
            ctx.checks.append(CheckResult(cls.name, "(scenario)", E.FAIL, str(exc)))
        finally:
            record.checks = ctx.checks
            record.status = _scenario_status(ctx.checks)
            if collector is not None and machine.is_running():
                collector.snapshot(machine, cls.name)


def run(plan: Plan, emit: E.Emit = E.discard) -> RunResult:
    started = time.monotonic()
    run_dir = Path(plan.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = EventLog(run_dir / "events.jsonl", emit)
    emit = log
    emit(E.RunStart(str(run_dir), plan.label))

    check_artifacts(plan)
    qemu = resolve_binary(plan.qemu)
    caps = probe_caps(qemu)
    _planned_scenarios(plan)  # unknown suite or scenario: UsageError before anything boots
    emit(E.BuildStep("artifacts", f"kernel {plan.kernel}, initramfs {plan.initramfs}", done=True))
    accel = choose(qemu, Path(plan.kernel), plan.accel)
    emit(E.Note(f"accelerator {accel.name}: {accel.reason}"))

    result = RunResult(
        status=E.PASS, suite=plan.label, run_dir=str(run_dir),
        started_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        accel=accel.name, accel_reason=accel.reason, qemu=qemu,
        qemu_version=".".join(map(str, caps.version)), kernel=str(plan.kernel), initramfs=str(plan.initramfs),
    )
    spec = MachineSpec(
        qemu=qemu, kernel=Path(plan.kernel), initrd=Path(plan.initramfs), accel=accel.name,
        smp=plan.smp, memory_mb=plan.memory_mb, append=tuple(plan.append), disk_slots=plan.disk_slots,
    )
    machine = Machine(spec, run_dir, Timeouts.for_accel(accel.name), caps)
    reported: set[str] = set()
    try:
        emit(E.BootStart(accel.name))
        with machine:
            result.boot_seconds = machine.wait_boot()
            emit(E.BootEnd(result.boot_seconds, accel.name))
            result.agent_seconds = machine.wait_agent()
            emit(E.AgentReady(result.agent_seconds))
            try:
                _run_scenarios(plan, machine, emit, result, reported)
            finally:
                for warning in getattr(machine.agent, "warnings", []):
                    result.agent_warnings.append(warning)
                    emit(E.Note(f"agent warning: {warning}"))
    except (BootError, InfraError, CheckFailed, AgentError) as exc:
        record_abort(result, run_dir, exc)
    finally:
        result.qemu_exitcode = machine.exitcode
    judge(result, machine, emit, reported, log.events, strict=plan.strict)
    judge_selection(result, plan)
    result.seconds = time.monotonic() - started
    write_json(result, run_dir / "results.json")
    write_junit(result, run_dir / "junit.xml")
    append_step_summary(result)
    if result.status != E.PASS and plan.repro_bundle:
        _write_repro_bundle(plan, result, run_dir, emit)
    emit(E.Verdict(result.status, result.reason))
    return result


def judge_selection(result: RunResult, plan: Plan) -> None:
    """``--check`` that matched nothing judged nothing: an error, not a pass on the set-up checks."""
    selection = CheckSelection(plan.checks)
    if plan.checks and not any(selection.matches(c.scenario, c.name) for c in result.checks()):
        if result.status == E.PASS or result.reason == "no check ran":
            result.status = E.ERROR
            result.reason = f"--check {' '.join(plan.checks)} matched no check of {plan.label}"


def _write_repro_bundle(plan: Plan, result: RunResult, run_dir: Path, emit: E.Emit) -> None:
    try:
        path = write_bundle(plan, result, run_dir)
    except OSError as exc:  # a full disk must not hide the verdict
        _log_exception(run_dir, exc)
        emit(E.Note(f"could not write the reproduction bundle: {exc}"))
        return
    emit(E.Note(f"reproduction bundle: {path} (replay: vblk-ci repro {path})"))


def judge(result: RunResult, machine: Machine, emit: E.Emit, reported: set[str], events: list[E.Event],
          strict: bool = False) -> None:
    """Fold console findings, check results and timings into the verdict; ``strict``: a skip
    without an allowed reason (strict.py) fails a run that would otherwise pass."""
    try:
        console = (machine.paths.console_log if machine.paths else Path(result.run_dir) / "console.log").read_text(
            errors="replace")
    except OSError:
        console = ""
    findings = classify(console)
    for f in findings:
        result.findings.append(FindingRecord(f.kind, f.title, f.excerpt))
        if f.title not in reported:
            reported.add(f.title)
            emit(E.ConsoleFinding(f.title, f.excerpt))
    if machine.panicked and not findings:
        result.findings.append(FindingRecord("panic", "guest panicked (GUEST_PANICKED)", ""))
    failed = [c for c in result.checks() if c.status == E.FAIL]
    errored = [c for c in result.checks() if c.status == E.ERROR]
    if result.findings:
        first = result.findings[0]
        result.status = E.FAIL
        result.reason = f"console: {first.title}\n{first.excerpt}".rstrip()
    elif result.status == E.PASS and errored:
        result.status, result.reason = E.ERROR, f"{errored[0].full_name}: {errored[0].detail}"
    elif result.status == E.PASS and failed:
        result.status = E.FAIL
        result.reason = f"{len(failed)} check(s) failed, first {failed[0].full_name}: {failed[0].detail}"
    elif result.status == E.PASS and not result.checks():
        result.status, result.reason = E.ERROR, "no check ran"
    if strict and result.status == E.PASS:
        skips = unallowed_skips(result)
        if skips:
            result.status = E.FAIL
            result.reason = f"strict: {len(skips)} skip(s) without an allowed reason, first {skips[0]}"
    result.timings = {
        "hotplug_visible_s": [e.seconds_to_visible for e in events if isinstance(e, E.DiskPlugged)],
        "unplug_deleted_s": [e.seconds for e in events if isinstance(e, E.DiskUnplugged)],
    }
