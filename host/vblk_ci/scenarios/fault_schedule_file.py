"""fault-schedule-file: fire a user's JSON schedule (``vblk-ci run --schedule FILE``).

Runs after the suite, only when a schedule is given. Every disk the schedule
names is plugged fresh (file-backed, 64 MiB, QEMU's default error policy),
gets known data in its first MiB and a QD-8 write job on the char device that
streams progress; the schedule fires against those jobs. Afterwards: every
job finishes when told (no hang) with only success, VIRTIO_BLK_S_IOERR or,
on a disk the schedule unplugged, -ENODEV/-ENXIO; a disk the schedule
unplugged is deleted; after a system-reset the guest comes back with the
disks; the known data reads back intact on every disk still there; no splat.
"""

from __future__ import annotations

from pathlib import Path

from ..disks.spec import DiskSpec
from ..errors import CheckFailed, MachineTimeout, UsageError
from ..events import DiskUnplugged
from ..faults.schedule import Schedule, load_schedule
from .base import Scenario, ScenarioContext, register
from .driver_common import ENODEV, ENXIO, VIRTIO_BLK_S_IOERR, MiB, eargs, errno_text, guest_disk, plug, run_gated, \
    unplug
from .fault_common import (JOB_RUNTIME_S, fire_schedule, file_disk, kill_job, res_counts, spawn_progress, stop_job,
                           verify_baseline, write_baseline)

MAX_DISKS = 4  # the machine's hot-plug slots


def check_schedule_file(path: Path) -> Schedule:
    """Load and check a schedule for this scenario; UsageError (one line) if it cannot run."""
    schedule = load_schedule(path)
    ids = schedule.disk_ids()
    if len(ids) > MAX_DISKS:
        raise UsageError(f"{path}: names {len(ids)} disks; at most {MAX_DISKS} can be plugged")
    for disk_id in ids:
        DiskSpec(id=disk_id, serial="vblk-x").validate()  # the id must make a valid disk
    schedule.bind({i: DiskSpec(id=i, serial="vblk-x", backend="file", path=Path("/x")) for i in ids})
    return schedule


@register
class FaultScheduleFile(Scenario):
    name = "fault-schedule-file"
    description = ("The JSON schedule given with --schedule, fired at fresh file-backed disks running QD-8 write "
                   "jobs: jobs finish with only expected results, unplugged disks go, data intact, no splat.")

    def requires(self, ctx: ScenarioContext) -> list[str]:
        if ctx.options.get("schedule") is None:
            return ["no --schedule FILE given"]
        return []

    def run(self, ctx: ScenarioContext) -> None:
        schedule = check_schedule_file(Path(ctx.options["schedule"]))
        disks = {i: file_disk(ctx, i) for i in schedule.disk_ids()}
        states: dict[str, dict] = {i: {} for i in disks}
        seeds = {i: 61 + n for n, i in enumerate(disks)}
        ready = [i for i in disks if run_gated(ctx, True, [(f"hotplug-{i}", plug(ctx, disks[i], states[i]))], "")]
        for i in ready:
            ctx.check(f"baseline-write-{i}", write_baseline(ctx, states[i]["chardev"], seeds[i]))
        if len(ready) != len(disks):
            for i in ready:
                ctx.check(f"unplug-{i}", unplug(ctx, disks[i], states[i]))
            return
        jobs: dict[str, int] = {}
        fired: dict = {}
        rebooted = False

        def run_schedule(rec: dict) -> None:
            nonlocal rebooted
            for i in disks:
                jobs[i] = spawn_progress(ctx, eargs(states[i]["chardev"], "write", offset=16 * MiB, length=16 * MiB,
                                                    qd=8, runtime=JOB_RUNTIME_S, bench=True))
            mark = ctx.machine.console.mark()
            run = fire_schedule(ctx, schedule, disks, jobs, rec)
            fired["run"] = run
            run.disarm_all()
            if any(f.kind == "system-reset" for f in run.faults if f.armed):
                rec["seconds_to_reboot"] = ctx.machine.wait_reboot(mark)
                rebooted = True
                for f in run.faults:
                    f.disarm(ctx.machine)

        def jobs_finish(rec: dict) -> None:
            deleted = {f.disk.id for f in fired["run"].faults if f.kind == "device-del" and f.armed}
            problems = []
            for i, job in list(jobs.items()):
                result = stop_job(ctx, job, rec, key=f"job-{i}")
                del jobs[i]
                counts = res_counts(result)
                rec[f"res_counts-{i}"] = counts
                allowed = {0, VIRTIO_BLK_S_IOERR} | ({-ENODEV, -ENXIO} if i in deleted else set())
                wrong = {k: v for k, v in counts.items() if k not in allowed}
                if wrong:
                    problems.append(f"{i}: " + ", ".join(f"{errno_text(k)} x{v}" for k, v in wrong.items()))
            if problems:
                raise CheckFailed("unexpected cqe->res values: " + "; ".join(problems))

        ok = ctx.check("schedule", run_schedule).status == "pass"
        if not rebooted and ok:
            ctx.check("jobs-finish", jobs_finish)
        for job in jobs.values():
            kill_job(ctx, job)
        run = fired.get("run")
        deleted = {f.disk.id for f in run.faults if f.kind == "device-del" and f.armed} if run else set()
        for i, disk in disks.items():
            st = states[i]
            if i in deleted:
                def gone(rec: dict, disk=disk) -> None:
                    try:
                        seconds = ctx.machine.complete_unplug(disk.id, timeout=ctx.timeouts(30.0))
                    except MachineTimeout as exc:
                        raise CheckFailed(f"device_del from the schedule never completed: {exc}") from exc
                    ctx.emit(DiskUnplugged(disk.id, seconds))
                ctx.check(f"unplugged-by-schedule-{i}", gone)
                continue
            if rebooted:
                ctx.check(f"back-after-reset-{i}", lambda rec, disk=disk, st=st: guest_disk(ctx, disk, st, rec))
            ctx.check(f"data-intact-{i}", verify_baseline(ctx, st["chardev"], seeds[i]))
            ctx.check(f"unplug-{i}", unplug(ctx, disk, st))
