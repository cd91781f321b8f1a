"""driver-copyout: a bounced passthrough READ whose copy to the user's buffer fails reports -EFAULT.

The cover letter (patch 3/5): "a bounced read (unaligned or short buffer) whose
copy to user memory fails at completion reports that error, not 0". A READ
whose iovecs are not 512-byte aligned is bounced: the device fills kernel
pages and the data is copied to the user's buffer only in the completion's
task work (``blk_rq_unmap_user()``). The engine submits such a read (16 iovecs
of 256 bytes) on a ``DEFER_TASKRUN`` ring, where that task work runs only when
the task waits, makes the buffer read-only in between, then waits: the copy
must fail and cqe->res must be -EFAULT. A driver that dropped
``blk_rq_unmap_user()``'s error would report 0 for a read whose data never
arrived. Controls: the same bounced read without the protection returns the
data written before (verified word by word), and the disk still works after.
Passes on v2.
"""

from __future__ import annotations

from ..errors import CheckFailed
from .base import Scenario, ScenarioContext, register
from .driver_common import EFAULT, MiB, eargs, errno_text, expect_clean, plug_file_disk, run_engine, run_gated, unplug

DISK_SIZE = 16 * MiB
BS = 4096
VEC = 16  # 16 x 256 bytes: not 512-byte aligned, so the read is bounced
OFFSET = 1 * MiB
SEED = 0xC0FFEE


@register
class DriverCopyout(Scenario):
    name = "driver-copyout"
    description = ("Patch 3/5: a bounced passthrough READ (16 iovecs of 256 bytes) whose buffer is made "
                   "read-only between submit and completion (DEFER_TASKRUN ring) completes with -EFAULT, not "
                   "0; the same read unprotected returns the written data.")

    def run(self, ctx: ScenarioContext) -> None:
        st: dict = {}
        disk = plug_file_disk(ctx, "cpo0", DISK_SIZE, st)
        if disk is None:
            return
        ok = ctx.check("bounced-read-returns-data", lambda rec: bounced_read(ctx, st, rec)).status == "pass"
        run_gated(ctx, ok, [("bounced-read-copyout-fault-efault", lambda rec: protected_read(ctx, st, rec)),
                            ("disk-works-after", lambda rec: bounced_read(ctx, st, rec))],
                  "not run: the bounced read itself did not work")
        ctx.check("unplug", unplug(ctx, disk, st))


def bounced_read(ctx: ScenarioContext, st: dict, rec: dict) -> None:
    """Write a pattern through the char device, read it back bounced (vec 16), every word right."""
    w = run_engine(ctx, rec, "write", eargs(st["chardev"], "write", bs=BS, offset=OFFSET, seed=SEED))
    expect_clean("write", w)
    r = run_engine(ctx, rec, "verify", eargs(st["chardev"], "verify", bs=BS, offset=OFFSET, seed=SEED, vec=VEC,
                                              defer_taskrun=True))
    expect_clean("bounced verify", r)


def protected_read(ctx: ScenarioContext, st: dict, rec: dict) -> None:
    r = run_engine(ctx, rec, "protected-read", eargs(st["chardev"], "read", bs=BS, offset=OFFSET, vec=VEC,
                                                      defer_taskrun=True, protect_buf=True))
    res = (r.get("results") or [None])[0]
    if res != -EFAULT:
        raise CheckFailed(f"bounced read of {BS} bytes into a buffer made read-only before its completion: "
                          f"cqe->res = {errno_text(res)}, expected {errno_text(-EFAULT)}"
                          + (" (the copy-out failed but success was reported)" if res == 0 else ""))
