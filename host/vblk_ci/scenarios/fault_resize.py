"""fault-resize: block_resize grows and shrinks the disk under the guest.

Data is written just below the old end; the disk grows, the guest sees the
new capacity (virtio config change), I/O near the new end works, the data
near the old end is intact and a read past the new end is refused with
-ERANGE. Then the disk shrinks below its first size: I/O just below the new
end works, past it is -ERANGE, and the data at the start reads back intact.
"""

from __future__ import annotations

from ..disks.capacity import wait_guest_sectors
from ..faults.kinds import make_fault
from .base import Scenario, ScenarioContext, register
from .driver_common import ERANGE, CheckFailed, MiB, eargs, expect_clean, plug, run_engine, run_gated, unplug
from .fault_common import BLOCK, expect_res, file_disk, one_io, verify_baseline, write_baseline

SEED = 49
OLD = 64 * MiB
GROWN = 96 * MiB
SHRUNK = 48 * MiB


def wait_capacity(ctx: ScenarioContext, name: str, size: int, rec: dict) -> None:
    shown = wait_guest_sectors(ctx.agent, name, size // 512, ctx.timeouts(20.0), poll_s=0.2)
    if shown is not None:
        raise CheckFailed(f"the guest still sees {shown} sectors, expected {size // 512} after block_resize")
    rec["capacity_seen"] = size


@register
class FaultResize(Scenario):
    name = "fault-resize"
    description = ("block_resize grow 64->96 MiB and shrink to 48 MiB at run time: the guest sees each capacity, "
                   "I/O near the old and new end works, past the new end is -ERANGE, earlier data intact.")

    def run(self, ctx: ScenarioContext) -> None:
        disk = file_disk(ctx, "frsz0", size=OLD)
        st: dict = {}
        if not run_gated(ctx, True, [("hotplug", plug(ctx, disk, st))], ""):
            return
        ctx.check("baseline-write", write_baseline(ctx, st["chardev"], SEED))

        def near(rec: dict, key: str, end: int, seed: int, write: bool) -> None:
            c = st["chardev"]
            if write:
                expect_clean(f"{key}-write", run_engine(ctx, rec, f"{key}-write",
                                                        eargs(c, "write", offset=end - MiB, length=MiB, qd=4, seed=seed)))
            expect_clean(f"{key}-verify", run_engine(ctx, rec, f"{key}-verify",
                                                     eargs(c, "verify", offset=end - MiB, length=MiB, qd=4, seed=seed)))

        ctx.check("write-near-old-end", lambda rec: near(rec, "old-end", OLD, SEED + 1, True))

        def grow(rec: dict) -> None:
            make_fault("resize", disk, {"size_bytes": GROWN}).arm(ctx.machine)
            wait_capacity(ctx, st["name"], GROWN, rec)
            near(rec, "old-end", OLD, SEED + 1, False)
            near(rec, "new-end", GROWN, SEED + 2, True)
            expect_res("past-new-end", one_io(ctx, rec, "past-new-end", st["chardev"], "read", GROWN), -ERANGE,
                       "a read past the new end")

        def shrink(rec: dict) -> None:
            make_fault("resize", disk, {"size_bytes": SHRUNK}).arm(ctx.machine)
            wait_capacity(ctx, st["name"], SHRUNK, rec)
            expect_res("below-new-end", one_io(ctx, rec, "below-new-end", st["chardev"], "read", SHRUNK - BLOCK), 0,
                       "a read of the last block")
            expect_res("past-new-end", one_io(ctx, rec, "past-new-end", st["chardev"], "read", SHRUNK), -ERANGE,
                       "a read past the new end")
            expect_res("old-end", one_io(ctx, rec, "old-end", st["chardev"], "read", OLD - BLOCK), -ERANGE,
                       "a read at the old end, now past the end")

        ctx.check("grow", grow)
        ctx.check("shrink", shrink)
        ctx.check("data-intact", verify_baseline(ctx, st["chardev"], SEED))
        ctx.check("unplug", unplug(ctx, disk, st))
