"""fault-device-reset: device resets while IOPOLL rings poll the disk's poll queue.

A PCIe function-level reset of a virtio-blk disk (written to the guest's
``/sys/bus/pci/devices/<function>/reset``) runs virtio_blk's reset_prepare,
which drains the queue, quiesces it, unfreezes it and deletes the virtqueues,
then reset_done, which builds new ones. Commands submitted meanwhile wait in
the quiesced queue; their rings keep polling. The uapi fuzzer's reset fault
found that polling then dereferenced the freed virtqueue array (a NULL pointer
in do_raw_spin_lock() from virtblk_poll(), fixed by the series' 2/9); this
scenario makes that window busy every time instead of when a seed draws it.

With ``virtio_blk.poll_queues=1`` (one poll queue of two) and a file-backed
disk written with a pattern first, JOBS IOPOLL rings (one engine process
each, /dev/vdXc0 open) read the pattern back while the disk's function is
reset RESETS times. Checks: each reset returns (a reset_prepare that waits
forever would hang the write); every command completes with 0 (a reset must
fail nothing: the drain waits for what the device holds); every job ends when
told; the pattern reads back intact through the char device afterwards; no
splat (the runner's console classifier).

Needs a kernel whose virtio_blk has reset_prepare (7.3 has, 6.12 has not:
there virtio-pci resets the device under a driver that keeps using it).
"""

from __future__ import annotations

import time

from ..errors import AgentError, CheckFailed
from ..kernel_features import HAS_RESET_PREPARE, pci_function
from .base import Scenario, ScenarioContext, register
from .driver_common import (
    DEBUGFS_BLOCK, POLL_QUEUES_PARAM, MiB, KiB, eargs, expect_clean, plug_file_disk, poll_queue_requirements,
    run_engine, run_gated, set_poll_queues, unplug,
)
from .driver_unplug_iopoll import describe, merge_counts, stop_jobs, unexpected

RESETS = 5
JOBS = 2
QD = 8
BS = 64 * KiB
DISK_SIZE = 32 * MiB
SEED = 0x5E7
JOB_RUNTIME_S = 120  # upper bound; the jobs are stopped with SIGINT after the resets
RESET_S = 60.0  # one reset (the drain, the device reset, new virtqueues), scaled
PAUSE_S = 0.3  # between resets, so the rings submit into a running queue too


@register
class FaultDeviceReset(Scenario):
    name = "fault-device-reset"
    description = (
        f"{RESETS} function-level resets of a disk (sysfs) while {JOBS} IOPOLL rings poll its poll queue: each "
        "reset returns, every command completes with 0, every job ends, the data reads back, no splat "
        "(the fuzzer's NULL dereference in virtblk_poll(), fixed by 2/9)."
    )

    def requires(self, ctx: ScenarioContext) -> list[str]:
        reasons = poll_queue_requirements(ctx)
        if ctx.agent.exec(cmd=HAS_RESET_PREPARE).get("rc") != 0:
            reasons.append("virtio_blk has no reset_prepare here (virtblk_reset_prepare not in /proc/kallsyms): "
                           "a device reset would go past the driver")
        return reasons

    def run(self, ctx: ScenarioContext) -> None:
        old = ctx.agent.read_file(POLL_QUEUES_PARAM).strip()
        try:
            if ctx.check("set-poll-queues-1", set_poll_queues(ctx, 1, old)).status != "pass":
                return
            st: dict = {}
            disk = plug_file_disk(ctx, "reset0", DISK_SIZE, st, num_queues=2)
            if disk is None:
                return
            steps = [("write-pattern", lambda rec: expect_clean("write", run_engine(ctx, rec, "write", eargs(
                         st["chardev"], "write", length=DISK_SIZE, bs=BS, qd=QD, seed=SEED, iopoll=True))))]
            jobs: list[int] = []
            steps.append(("poll-queue", lambda rec: poll_queue(ctx, st["name"], rec)))
            steps.append(("start-iopoll-readers", lambda rec: jobs.extend(start_readers(ctx, st["chardev"], rec))))
            steps += [(f"reset-{i}", lambda rec, i=i: reset(ctx, st["name"], jobs, i, rec)) for i in range(RESETS)]
            steps.append(("readers-all-ok", lambda rec: readers_ok(ctx, jobs, rec)))
            steps.append(("verify-pattern", lambda rec: expect_clean("verify", run_engine(ctx, rec, "verify", eargs(
                st["chardev"], "verify", length=DISK_SIZE, bs=BS, qd=QD, seed=SEED, iopoll=True)))))
            try:
                run_gated(ctx, True, steps, "")
            finally:
                for job in jobs:  # only after a failed check: readers-all-ok empties the list
                    try:
                        ctx.agent.signal_job(job, "KILL")
                        ctx.agent.wait_job(job, timeout_s=ctx.timeouts(10.0))
                    except AgentError:
                        pass
                ctx.check("unplug", unplug(ctx, disk, st))
        finally:
            ctx.check("reset-poll-queues", lambda rec: ctx.agent.write_file(POLL_QUEUES_PARAM, f"{old or 0}\n"))


def poll_queue(ctx: ScenarioContext, name: str, rec: dict) -> None:
    types = ctx.agent.exec(cmd=f"cat {DEBUGFS_BLOCK}/{name}/hctx*/type").get("stdout", "").split()
    rec["hctx_types"] = types
    if "poll" not in types:
        raise CheckFailed(f"poll_queues=1 but {name} has no poll hctx: {types}")


def start_readers(ctx: ScenarioContext, chardev: str, rec: dict) -> list[int]:
    share = DISK_SIZE // JOBS
    jobs = [ctx.agent.spawn(eargs(chardev, "read", offset=j * share, length=share, bs=BS, qd=QD,
                                  runtime=JOB_RUNTIME_S, iopoll=True)) for j in range(JOBS)]
    rec["jobs"] = jobs
    return jobs


def reset(ctx: ScenarioContext, name: str, jobs: list[int], i: int, rec: dict) -> None:
    """One function-level reset with the readers polling; it must return and leave them running."""
    time.sleep(PAUSE_S)
    started = time.monotonic()
    res = ctx.agent.exec(cmd=f"echo 1 > {pci_function(name)}/reset", timeout_s=ctx.timeouts(RESET_S))
    rec["seconds"] = round(time.monotonic() - started, 3)
    if res.get("rc") != 0:
        raise CheckFailed(f"reset {i}: writing 1 to {name}'s PCI function's reset exited {res.get('rc')}: "
                          f"{(res.get('stderr') or '').strip()}")
    if ctx.agent.exec(cmd=f"test -e /sys/block/{name}").get("rc") != 0:
        raise CheckFailed(f"{name} is gone after a function-level reset")


def readers_ok(ctx: ScenarioContext, jobs: list[int], rec: dict) -> None:
    """Stop the readers: each must end, and every command they saw must have completed with 0."""
    results = stop_jobs(ctx, list(jobs), rec)
    jobs.clear()
    counts = merge_counts(results)
    rec["res_counts"] = describe(counts)
    bad_exit = [r.get("exit_code") for r in results if r.get("exit_code") != 0]
    if bad_exit:
        raise CheckFailed(f"IOPOLL readers exited {bad_exit}: {[r.get('stderr', '').strip() for r in results]}")
    if not counts.get(0):
        raise CheckFailed(f"no command completed across {RESETS} resets: {describe(counts)}")
    wrong = unexpected(counts, (0,))
    if wrong:
        raise CheckFailed(f"completions {describe(counts)} across {RESETS} device resets; a reset must fail "
                          f"none ({describe(wrong)})")
