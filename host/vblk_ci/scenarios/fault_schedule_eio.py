"""fault-schedule-eio: a JSON schedule fires EIO bursts at points of I/O progress.

A write job at queue depth 8 runs on the char device and streams its progress;
the schedule (saved to schedule.json with the run) arms EIO on writes for a
short window after a number of completions (seeded jitter), then EIO on reads
(the job only writes: no effect expected), then stops the VM for a moment.
Inside the write window the device answers VIRTIO_BLK_S_IOERR; the job must
see those and successes only, every error by the end of the write window,
keep running, and finish when told.
"""

from __future__ import annotations

from ..faults.schedule import Schedule
from .base import Scenario, ScenarioContext, register
from .driver_common import VIRTIO_BLK_S_IOERR, CheckFailed, MiB, eargs, errno_text, plug, run_gated, unplug
from .fault_common import (JOB_RUNTIME_S, expect_progress, fire_schedule, file_disk, kill_job, res_counts,
                           spawn_progress, stop_job, verify_baseline, write_baseline)

SEED = 43
SCHEDULE = {
    "name": "eio-burst",
    "seed": 5,
    "faults": [
        {"trigger": {"disk": "fsch0", "completions": 300, "jitter": 100},
         "kind": "blkdebug-error", "disk": "fsch0", "params": {"op": "write"}, "duration_s": 0.5},
        {"trigger": {"disk": "fsch0", "completions": 900},
         "kind": "blkdebug-error", "disk": "fsch0", "params": {"op": "read"}, "duration_s": 0.5},
        {"trigger": {"disk": "fsch0", "completions": 1200}, "kind": "vm-stop", "duration_s": 0.5},
    ],
}


@register
class FaultScheduleEio(Scenario):
    name = "fault-schedule-eio"
    description = ("A seeded JSON schedule tied to completions: EIO on writes for 0.5 s after ~300 completions "
                   "of a QD-8 write job, EIO on reads (no effect on a write job), a VM stop; the job sees "
                   "VIRTIO_BLK_S_IOERR only inside the write window, keeps going and finishes; data intact.")

    def run(self, ctx: ScenarioContext) -> None:
        disk = file_disk(ctx, "fsch0")
        schedule = Schedule.from_json(SCHEDULE, "fault-schedule-eio")
        st: dict = {}
        if not run_gated(ctx, True, [("hotplug", plug(ctx, disk, st))], ""):
            return
        ctx.check("baseline-write", write_baseline(ctx, st["chardev"], SEED))

        def scheduled(rec: dict) -> None:
            args = eargs(st["chardev"], "write", offset=16 * MiB, length=16 * MiB, qd=8, runtime=JOB_RUNTIME_S,
                         bench=True)
            job = spawn_progress(ctx, args)
            try:
                fire_schedule(ctx, schedule, {disk.id: disk}, {disk.id: job}, rec)
                expect_progress(ctx, job, 100, "the schedule")  # the last fault did not wedge it
                result = stop_job(ctx, job, rec)
                job = None
            finally:
                kill_job(ctx, job)
            counts = res_counts(result)
            rec["res_counts"] = counts
            wrong = {k: v for k, v in counts.items() if k not in (0, VIRTIO_BLK_S_IOERR)}
            if wrong:
                raise CheckFailed(f"unexpected cqe->res values: {', '.join(f'{errno_text(k)} x{v}' for k, v in wrong.items())}")
            if not counts.get(VIRTIO_BLK_S_IOERR):
                raise CheckFailed(f"no write failed during the armed window: {counts}")
            if not counts.get(0):
                raise CheckFailed("no write succeeded")
            after_window = ((rec["fired"][0].get("progress_after_disarm") or {}).get("res") or {}).get("1")
            rec["ioerr_after_write_window"] = after_window
            if after_window is None or int(after_window) != counts[VIRTIO_BLK_S_IOERR]:
                raise CheckFailed(f"{counts[VIRTIO_BLK_S_IOERR]} writes failed in all, {after_window} by the end of "
                                  "the write window: the read window or the VM stop failed writes too")

        ctx.check("scheduled-eio-bursts", scheduled)
        ctx.check("data-intact", verify_baseline(ctx, st["chardev"], SEED))
        ctx.check("unplug", unplug(ctx, disk, st))
