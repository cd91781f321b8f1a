"""Helpers the fault-* scenarios share: a file-backed disk with known data on it,
background engine jobs that report progress, firing and recording schedules.

Not a scenario itself (nothing here registers).
"""

from __future__ import annotations

from ..disks.spec import DiskSpec, create_sparse_file
from ..errors import AgentError, CheckFailed
from ..faults.kinds import Fault
from ..faults.runner import ScheduleRun
from ..faults.schedule import Schedule, record_schedule
from .base import ScenarioContext
from .driver_common import MiB, eargs, errno_text, expect_clean, run_engine

# Data written before a fault and read back after it: the first MiB of every fault disk.
BASELINE_OFFSET = 0
BASELINE_LENGTH = MiB
BLOCK = 4096
PROGRESS_MS = 50
JOB_RUNTIME_S = 120  # upper bound for background jobs; they are stopped with SIGINT


def file_disk(ctx: ScenarioContext, disk_id: str, size: int = 64 * MiB, **kw) -> DiskSpec:
    image = create_sparse_file(ctx.scratch() / f"{disk_id}.raw", size)
    return DiskSpec(id=disk_id, serial=f"vblk-{disk_id}", backend="file", path=image, size_bytes=size,
                    num_queues=2, **kw).validate()


def write_baseline(ctx: ScenarioContext, path: str, seed: int):
    def check(rec: dict) -> None:
        args = eargs(path, "write", offset=BASELINE_OFFSET, length=BASELINE_LENGTH, qd=4, seed=seed)
        expect_clean("write", run_engine(ctx, rec, "write", args))
    return check


def verify_baseline(ctx: ScenarioContext, path: str, seed: int):
    """The data written before the fault reads back intact."""
    def check(rec: dict) -> None:
        args = eargs(path, "verify", offset=BASELINE_OFFSET, length=BASELINE_LENGTH, qd=4, seed=seed)
        expect_clean("verify", run_engine(ctx, rec, "verify", args))
    return check


def one_io(ctx: ScenarioContext, rec: dict, key: str, path: str, op: str, offset: int, length: int = BLOCK,
           **opts) -> int:
    """Run one I/O (op at offset), return its cqe->res."""
    result = run_engine(ctx, rec, key, eargs(path, op, offset=offset, length=length, bs=length, **opts))
    res = (result.get("results") or [None])[0]
    if not isinstance(res, int):
        raise CheckFailed(f"{key}: the engine reported no result ({result.get('ios')} I/Os)")
    return res


def expect_res(key: str, res: int, expected: int, why: str) -> None:
    if res != expected:
        raise CheckFailed(f"{key}: cqe->res = {errno_text(res)}, expected {errno_text(expected)} ({why})")


def res_counts(result: dict) -> dict[int, int]:
    return {int(k): int(v) for k, v in (result.get("res_counts") or {}).items()}


def spawn_progress(ctx: ScenarioContext, args: list[str]) -> int:
    return ctx.agent.spawn_with_progress(args, progress_ms=PROGRESS_MS)


def expect_progress(ctx: ScenarioContext, job: int, more: int, after: str, bound_s: float = 30.0) -> None:
    """CheckFailed unless ``job`` completes ``more`` I/Os beyond its last progress report
    within ``bound_s`` (``after``: what the job had to get past, for the message)."""
    last = ctx.agent.progress.get(job, {}).get("completions", 0)
    if ctx.agent.wait_progress(job, lambda ev: ev.get("completions", 0) >= last + more,
                               ctx.timeouts(bound_s)) is None:
        raise CheckFailed(f"no progress after {after}: stuck at {last} completions")


def stop_job(ctx: ScenarioContext, job: int, rec: dict, key: str = "job", bound_s: float = 30.0) -> dict:
    """SIGINT, then the job's result within ``bound_s``; CheckFailed if it hangs."""
    ctx.agent.signal_job(job, "INT")
    try:
        result = ctx.agent.wait_job(job, timeout_s=ctx.timeouts(bound_s))
    except AgentError as exc:
        if exc.kind != "Timeout":
            raise
        ctx.agent.signal_job(job, "KILL")
        raise CheckFailed(f"{key}: the job did not finish {bound_s:.0f}s after SIGINT: I/O hung ({exc})") from exc
    rec[key] = result
    if result.get("exit_code") != 0:
        raise CheckFailed(f"{key}: the job exited {result.get('exit_code')}: {(result.get('stderr') or '').strip()}")
    return result


def kill_job(ctx: ScenarioContext, job: int | None) -> None:
    if job is None:
        return
    try:
        ctx.agent.signal_job(job, "KILL")
        ctx.agent.wait_job(job, timeout_s=ctx.timeouts(20.0))
    except AgentError:
        pass


def with_fault(ctx: ScenarioContext, fault: Fault, rec: dict, body) -> None:
    """Arm ``fault``, run ``body()``, always disarm."""
    reason = fault.requires(ctx.machine.caps.version)
    if reason:
        raise CheckFailed(reason)
    fault.arm(ctx.machine)
    rec["fault"] = fault.describe()
    try:
        body()
    finally:
        fault.disarm(ctx.machine)


def fire_schedule(ctx: ScenarioContext, schedule: Schedule, disks: dict[str, DiskSpec], jobs: dict[str, int],
                  rec: dict, trigger_timeout_s: float = 60.0) -> ScheduleRun:
    """Fire ``schedule`` against running jobs; what fired is kept in ``rec`` and ``schedule.json``."""
    faults = schedule.bind(disks)
    for fault in faults:
        reason = fault.requires(ctx.machine.caps.version)
        if reason:
            raise CheckFailed(reason)
    run = ScheduleRun(ctx.machine, ctx.agent, schedule, faults, jobs, ctx.timeouts(trigger_timeout_s))
    try:
        run.run()
    finally:
        rec["schedule"] = schedule.to_json()
        rec["fired"] = run.fired
        record_schedule(ctx.run_dir, ctx.scenario, schedule, run.fired)
    return run
