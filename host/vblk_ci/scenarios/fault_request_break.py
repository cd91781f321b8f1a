"""fault-request-break: a write held inside QEMU (qemu-io break) past the guest's timeout.

The block queue's io_timeout is lowered to 1 s, a blkdebug breakpoint
suspends the next write, and a single passthrough write is issued. It is held
for HOLD_S (well past the timeout), then resumed. virtio_blk has no timeout
handler for these commands, so the expected outcome is: nothing gives up,
the write completes with success once resumed, no splat, earlier data
intact. What the guest logged meanwhile is recorded.

The same on a poll queue (virtio_blk.poll_queues=1, IOPOLL ring) with the
ring's owner stopped across the hold and the resume: nothing but the
driver's timeout handler (patch 5/5, polled commands get a 1 s timeout and
the handler polls the poll queue) can complete the request then, and it
must, within POLLED_REAP_S.
"""

from __future__ import annotations

import time

from ..errors import AgentError
from ..faults.kinds import make_fault
from .base import Scenario, ScenarioContext, register
from .driver_common import CheckFailed, MiB, eargs, expect_clean, plug, run_engine, run_gated, unplug
from .driver_common import POLL_QUEUES_PARAM
from .fault_common import BLOCK, expect_res, file_disk, kill_job, verify_baseline, write_baseline

SEED = 51
TARGET = 8 * MiB
HOLD_S = 4.0
IO_TIMEOUT_MS = 1000
POLLED_REAP_S = 5.0  # the driver's polled-command timeout is 1 s; allow a few periods


@register
class FaultRequestBreak(Scenario):
    name = "fault-request-break"
    description = (f"A passthrough write suspended in QEMU (qemu-io break/resume) for {HOLD_S:g} s with the queue's "
                   f"io_timeout at {IO_TIMEOUT_MS} ms: it stays pending, completes with success after resume, no "
                   "splat; the same on an IOPOLL ring whose owner is stopped: the driver's timeout handler reaps it.")

    def run(self, ctx: ScenarioContext) -> None:
        disk = file_disk(ctx, "fbrk0")
        st: dict = {}
        if run_gated(ctx, True, [("hotplug", plug(ctx, disk, st))], ""):
            ctx.check("baseline-write", write_baseline(ctx, st["chardev"], SEED))
            ctx.check("write-held-past-timeout", lambda rec: held_write(ctx, disk, st, rec, polled=False))
            ctx.check("data-intact", verify_baseline(ctx, st["chardev"], SEED))
            ctx.check("unplug", unplug(ctx, disk, st))
        if ctx.agent.exec(cmd=f"test -w {POLL_QUEUES_PARAM} && test -d /sys/kernel/debug/block").get("rc") != 0:
            ctx.skip("polled-hotplug", f"not run: no writable {POLL_QUEUES_PARAM} or no debugfs in the guest")
            return
        polled = file_disk(ctx, "fbrk1")
        sp: dict = {}
        try:
            ctx.agent.write_file(POLL_QUEUES_PARAM, "1\n")
            if run_gated(ctx, True, [("polled-hotplug", plug(ctx, polled, sp))], ""):
                ctx.check("polled-baseline-write", write_baseline(ctx, sp["chardev"], SEED))
                ctx.check("polled-write-held-owner-stopped",
                          lambda rec: held_write(ctx, polled, sp, rec, polled=True))
                ctx.check("polled-data-intact", verify_baseline(ctx, sp["chardev"], SEED))
                ctx.check("polled-unplug", unplug(ctx, polled, sp))
        finally:
            ctx.agent.write_file(POLL_QUEUES_PARAM, "0\n")


def busy_requests(ctx: ScenarioContext, name: str) -> list[str]:
    out = ctx.agent.exec(cmd=f"cat /sys/kernel/debug/block/{name}/hctx*/busy 2>/dev/null; true")
    return out.get("stdout", "").split("\n")[:-1] if out.get("stdout") else []


def held_write(ctx: ScenarioContext, disk, st: dict, rec: dict, polled: bool) -> None:
    """One passthrough write suspended in QEMU for HOLD_S, then resumed; it must complete with success.

    ``polled``: on an IOPOLL ring (poll queue), and its owner is stopped from before the hold
    until after the resume: only the driver's timeout handler (patch 5/5: it polls the poll
    queue) can then complete the request, which must happen within POLLED_REAP_S.
    """
    timeout_path = f"/sys/block/{st['name']}/queue/io_timeout"
    old_timeout = ctx.agent.read_file(timeout_path).strip()
    rec["io_timeout_was"] = old_timeout
    ctx.agent.write_file(timeout_path, f"{IO_TIMEOUT_MS}\n")
    seq = ctx.agent.dmesg().get("next_seq", 0)
    fault = make_fault("request-break", disk, {"op": "write"})
    fault.arm(ctx.machine)
    job = None
    stopped = False
    try:
        job = ctx.agent.spawn(eargs(st["chardev"], "write", offset=TARGET, length=BLOCK, bs=BLOCK, seed=SEED + 1,
                                    iopoll=polled))
        if polled:
            time.sleep(0.5)  # submitted and polling
            stopped = ctx.agent.signal_job(job, "STOP")
        time.sleep(HOLD_S)
        rec["busy_while_held"] = busy_requests(ctx, st["name"])
        try:
            early = ctx.agent.wait_job(job, timeout_s=0.1)
            job = None
            rec["early"] = early
            raise CheckFailed(f"the write finished while suspended in QEMU: results {early.get('results')}")
        except AgentError as exc:
            if exc.kind != "Timeout":
                raise
        if not rec["busy_while_held"]:
            raise CheckFailed("no request in flight on the device while the write was held in QEMU")
        rec["pending_after_s"] = HOLD_S
    finally:
        fault.disarm(ctx.machine)
        ctx.agent.write_file(timeout_path, f"{old_timeout}\n")
    try:
        if polled and stopped:
            # Resumed in QEMU, owner still stopped: the completion sits on the poll queue until
            # the timeout handler polls it.
            deadline = time.monotonic() + ctx.timeouts(POLLED_REAP_S)
            while busy_requests(ctx, st["name"]) and time.monotonic() < deadline:
                time.sleep(0.2)
            rec["busy_after_resume_owner_stopped"] = left = busy_requests(ctx, st["name"])
            ctx.agent.signal_job(job, "CONT")
            if left:
                raise CheckFailed(f"{POLLED_REAP_S:g} s after the resume, with the ring's owner stopped, the "
                                  f"request is still in flight: nothing polled the poll queue ({left})")
        result = ctx.agent.wait_job(job, timeout_s=ctx.timeouts(30.0))
        job = None
    finally:
        if stopped and job is not None:
            ctx.agent.signal_job(job, "CONT")
        kill_job(ctx, job)
    rec["job"] = result
    rec["guest_log"] = [r.get("text") for r in ctx.agent.dmesg(since_seq=seq).get("records", [])][-20:]
    expect_res("write", (result.get("results") or [None])[0], 0, "the resumed write")
    expect_clean("verify", run_engine(ctx, rec, "verify", eargs(st["chardev"], "verify", offset=TARGET,
                                                                length=BLOCK, bs=BLOCK, seed=SEED + 1)))
