"""fault-vm-stop-reset: the whole VM paused, and reset, in the middle of I/O.

- ``stop``/``cont``: after some completions of a QD-8 write job the VM is
  stopped for a second; after ``cont`` the job goes on (progress resumes),
  every write succeeded, and it finishes when told;
- ``system_reset``: after some completions of a QD-8 read job the VM is reset
  (with reboot=reset so -no-reboot does not end QEMU); the guest boots again,
  the agent answers, the disk is back with its char device, and the data
  written before reads back intact.
"""

from __future__ import annotations

from ..faults.schedule import Schedule
from .base import Scenario, ScenarioContext, register
from .driver_common import CheckFailed, MiB, eargs, errno_text, guest_disk, plug, run_gated, unplug
from .fault_common import (JOB_RUNTIME_S, expect_progress, fire_schedule, file_disk, kill_job, res_counts,
                           spawn_progress, stop_job, verify_baseline, write_baseline)

SEED = 47


def schedule(kind: str, disk_id: str, completions: int, duration_s: float | None) -> Schedule:
    entry: dict = {"trigger": {"disk": disk_id, "completions": completions}, "kind": kind}
    if duration_s is not None:
        entry["duration_s"] = duration_s
    return Schedule.from_json({"name": kind, "seed": 0, "faults": [entry]})


@register
class FaultVmStopReset(Scenario):
    name = "fault-vm-stop-reset"
    description = ("QMP stop for 1 s mid-I/O then cont: the QD-8 job resumes and every write succeeds; "
                   "system_reset mid-I/O: the guest reboots cleanly, the disk comes back, earlier data intact.")

    def run(self, ctx: ScenarioContext) -> None:
        disk = file_disk(ctx, "fvm0")
        st: dict = {}
        if not run_gated(ctx, True, [("hotplug", plug(ctx, disk, st))], ""):
            return
        ctx.check("baseline-write", write_baseline(ctx, st["chardev"], SEED))

        def stop_cont(rec: dict) -> None:
            job = spawn_progress(ctx, eargs(st["chardev"], "write", offset=16 * MiB, length=16 * MiB, qd=8,
                                            runtime=JOB_RUNTIME_S, bench=True))
            try:
                seen = len(ctx.machine.events())
                fire_schedule(ctx, schedule("vm-stop", disk.id, 300, 1.0), {disk.id: disk}, {disk.id: job}, rec)
                # QEMU really paused and resumed the VM (events since the schedule started only)
                names = [e.get("event") for e in ctx.machine.events()[seen:]]
                rec["qmp_events"] = names
                if [n for n in names if n in ("STOP", "RESUME")] != ["STOP", "RESUME"]:
                    raise CheckFailed(f"expected QMP events STOP then RESUME, got {names}")
                expect_progress(ctx, job, 200, "cont")
                result = stop_job(ctx, job, rec)
                job = None
            finally:
                kill_job(ctx, job)
            counts = res_counts(result)
            rec["res_counts"] = counts
            if set(counts) != {0}:
                raise CheckFailed(f"writes across stop/cont: {', '.join(f'{errno_text(k)} x{v}' for k, v in counts.items())}"
                                  "; expected only successes")

        ctx.check("stop-cont-mid-io", stop_cont)

        def reset(rec: dict) -> None:
            job = spawn_progress(ctx, eargs(st["chardev"], "read", offset=16 * MiB, length=16 * MiB, qd=8,
                                            runtime=JOB_RUNTIME_S, bench=True))
            mark = ctx.machine.console.mark()
            run = None
            try:
                run = fire_schedule(ctx, schedule("system-reset", disk.id, 200, None), {disk.id: disk},
                                    {disk.id: job}, rec)
                rec["seconds_to_reboot"] = ctx.machine.wait_reboot(mark)
            finally:
                if run is not None:
                    for fault in run.faults:
                        fault.disarm(ctx.machine)  # reboot=shutdown again
            guest_disk(ctx, disk, st, rec)
            st["blockdev"] = st["info"].get("blockdev")

        ctx.check("system-reset-mid-io", reset)
        ctx.check("data-intact", verify_baseline(ctx, st["chardev"], SEED))
        ctx.check("unplug", unplug(ctx, disk, st))
