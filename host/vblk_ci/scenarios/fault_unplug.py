"""fault-unplug: surprise device_del, fired by progress, with QD 8 passthrough reads in flight.

The driver-unplug sequence (driver_unplug.Lifetime) with the unplug tied to
I/O progress instead of a debugfs poll: the job streams its completions and
device_del is fired once it has completed ``TRIGGER_COMPLETIONS`` and holds
commands in flight; once on interrupt-driven queues, once on an IOPOLL ring on
a poll queue (the job keeps polling). Every command completes (error or
success), later commands on the old fd fail with -ENODEV, no splat. Once
more on a file-backed disk whose image is then plugged again as a new disk:
the data written before the unplug reads back intact.
"""

from __future__ import annotations

from ..disks.spec import DiskSpec
from ..errors import CheckFailed
from ..faults.schedule import Schedule, record_schedule
from .base import Scenario, ScenarioContext, register
from .driver_common import MiB, eargs, plug, run_gated, unplug
from .driver_common import POLL_QUEUES_PARAM
from .driver_unplug import JOB_RUNTIME_S, LATENCY_NS, QD, Lifetime
from .fault_common import PROGRESS_MS, file_disk, verify_baseline, write_baseline

TRIGGER_COMPLETIONS = 200
SEED = 57


def unplug_schedule(disk_id: str) -> Schedule:
    return Schedule.from_json({"name": f"surprise-unplug-{disk_id}", "seed": 0, "faults": [
        {"trigger": {"disk": disk_id, "completions": TRIGGER_COMPLETIONS}, "kind": "device-del", "disk": disk_id},
    ]})


class ProgressLifetime(Lifetime):
    """Starts the job with progress and waits for the schedule's trigger; the base class unplugs."""

    def start_io(self, rec: dict) -> None:
        ctx, st = self.ctx, self.st
        args = eargs(st["chardev"], "read", length=MiB, qd=QD, runtime=JOB_RUNTIME_S, iopoll=self.iopoll)
        rec["args"] = args
        st["job"] = rec["job"] = ctx.agent.spawn_with_progress(args, progress_ms=PROGRESS_MS)
        schedule = unplug_schedule(self.disk.id)
        threshold = schedule.thresholds()[0]
        event = ctx.agent.wait_progress(
            st["job"], lambda ev: ev.get("completions", 0) >= threshold and ev.get("in_flight", 0) >= QD // 2,
            ctx.timeouts(60.0))
        if event is None:
            raise CheckFailed(f"the job did not reach {threshold} completions with {QD // 2} in flight "
                              f"(last progress {ctx.agent.progress.get(st['job'])})")
        rec["progress_at_trigger"] = {k: event.get(k) for k in ("completions", "in_flight", "res")}
        st["in_flight_at_unplug"] = event.get("in_flight")
        record_schedule(ctx.run_dir, f"{ctx.scenario}/{self.disk.id}", schedule,
                        [{"index": 0, "kind": "device-del", "disk": self.disk.id, "threshold": threshold,
                          "progress_at_arm": rec["progress_at_trigger"]}])


@register
class FaultUnplug(Scenario):
    name = "fault-unplug"
    description = ("Surprise device_del after 200 completions with QD-8 passthrough reads in flight, with and "
                   "without IOPOLL: all commands complete, later ones fail -ENODEV, close is safe, no splat.")

    def data_survives(self, ctx: ScenarioContext) -> None:
        """The same surprise unplug on a file-backed disk, then its image plugged again as a new
        disk: the data written before the unplug reads back intact."""
        image = file_disk(ctx, "funp2")
        again = DiskSpec(id="funp3", serial="vblk-funp3", backend="file", path=image.path,
                         size_bytes=image.size_bytes).validate()
        first = ProgressLifetime(ctx, image, prefix="file-", after_plug=(
            ("baseline-write", lambda rec: write_baseline(ctx, first.st["chardev"], SEED)(rec)),))
        if not first.run():
            ctx.skip("file-replug-data-intact", "not run: the file-backed unplug did not finish")
            return
        st: dict = {}
        if run_gated(ctx, True, [("file-replug", plug(ctx, again, st))], ""):
            ctx.check("file-replug-data-intact", verify_baseline(ctx, st["chardev"], SEED))
            ctx.check("file-replug-unplug", unplug(ctx, again, st))

    def run(self, ctx: ScenarioContext) -> None:
        irq = DiskSpec(id="funp0", serial="vblk-funp0", backend="null", size_bytes=64 * MiB,
                       latency_ns=LATENCY_NS, num_queues=2).validate()
        polled = DiskSpec(id="funp1", serial="vblk-funp1", backend="null", size_bytes=64 * MiB,
                          latency_ns=LATENCY_NS, num_queues=2).validate()
        ProgressLifetime(ctx, irq).run()
        self.data_survives(ctx)
        if ctx.agent.exec(cmd=f"test -w {POLL_QUEUES_PARAM}").get("rc") != 0:
            ctx.skip("polled-hotplug", f"not run: no writable {POLL_QUEUES_PARAM} in the guest")
            return

        def set_poll_queues(value: int) -> None:
            ctx.agent.write_file(POLL_QUEUES_PARAM, f"{value}\n")
            if ctx.agent.read_file(POLL_QUEUES_PARAM).strip() != str(value):
                raise CheckFailed(f"{POLL_QUEUES_PARAM} did not take {value}")

        try:
            param = ctx.check("polled-set-poll-queues", lambda rec: set_poll_queues(1))
            ProgressLifetime(ctx, polled, prefix="polled-", iopoll=True).run(param.status == "pass",
                                                                             "not run: poll_queues not set")
        finally:
            ctx.check("reset-poll-queues", lambda rec: set_poll_queues(0))
