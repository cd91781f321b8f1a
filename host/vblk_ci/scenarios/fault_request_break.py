"""fault-request-break: a write held inside QEMU (qemu-io break) past the guest's timeout.

The block queue's io_timeout is lowered to 1 s, a blkdebug breakpoint
suspends the next write, and a single passthrough write is issued. It is held
for HOLD_S (well past the timeout), then resumed. virtio_blk has no timeout
handler for these commands, so the expected outcome is: nothing gives up,
the write completes with success once resumed, no splat, earlier data
intact. What the guest logged meanwhile is recorded.
"""

from __future__ import annotations

import time

from ..errors import AgentError
from ..faults.kinds import make_fault
from .base import Scenario, ScenarioContext, register
from .driver_common import CheckFailed, MiB, eargs, expect_clean, plug, run_engine, run_gated, unplug
from .fault_common import BLOCK, expect_res, file_disk, kill_job, verify_baseline, write_baseline

SEED = 51
TARGET = 8 * MiB
HOLD_S = 4.0
IO_TIMEOUT_MS = 1000


@register
class FaultRequestBreak(Scenario):
    name = "fault-request-break"
    description = (f"A passthrough write suspended in QEMU (qemu-io break/resume) for {HOLD_S:g} s with the queue's "
                   f"io_timeout at {IO_TIMEOUT_MS} ms: it stays pending, completes with success after resume, no splat.")

    def run(self, ctx: ScenarioContext) -> None:
        disk = file_disk(ctx, "fbrk0")
        st: dict = {}
        if not run_gated(ctx, True, [("hotplug", plug(ctx, disk, st))], ""):
            return
        ctx.check("baseline-write", write_baseline(ctx, st["chardev"], SEED))

        def held(rec: dict) -> None:
            timeout_path = f"/sys/block/{st['name']}/queue/io_timeout"
            old_timeout = ctx.agent.read_file(timeout_path).strip()
            rec["io_timeout_was"] = old_timeout
            ctx.agent.write_file(timeout_path, f"{IO_TIMEOUT_MS}\n")
            seq = ctx.agent.dmesg().get("next_seq", 0)
            fault = make_fault("request-break", disk, {"op": "write"})
            fault.arm(ctx.machine)
            job = None
            try:
                job = ctx.agent.spawn(eargs(st["chardev"], "write", offset=TARGET, length=BLOCK, bs=BLOCK, seed=SEED + 1))
                time.sleep(HOLD_S)
                try:
                    early = ctx.agent.wait_job(job, timeout_s=0.1)
                    job = None
                    rec["early"] = early
                    raise CheckFailed(f"the write finished while suspended in QEMU: results {early.get('results')}")
                except AgentError as exc:
                    if exc.kind != "Timeout":
                        raise
                rec["pending_after_s"] = HOLD_S
            finally:
                fault.disarm(ctx.machine)
                ctx.agent.write_file(timeout_path, f"{old_timeout}\n")
            try:
                result = ctx.agent.wait_job(job, timeout_s=ctx.timeouts(30.0))
                job = None
            finally:
                kill_job(ctx, job)
            rec["job"] = result
            rec["guest_log"] = [r.get("text") for r in ctx.agent.dmesg(since_seq=seq).get("records", [])][-20:]
            expect_res("write", (result.get("results") or [None])[0], 0, "the resumed write")
            expect_clean("verify", run_engine(ctx, rec, "verify", eargs(st["chardev"], "verify", offset=TARGET,
                                                                        length=BLOCK, bs=BLOCK, seed=SEED + 1)))

        ctx.check("write-held-past-timeout", held)
        ctx.check("data-intact", verify_baseline(ctx, st["chardev"], SEED))
        ctx.check("unplug", unplug(ctx, disk, st))
