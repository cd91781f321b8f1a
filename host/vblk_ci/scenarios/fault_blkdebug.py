"""fault-blkdebug: QEMU fails reads, writes, flushes and discards while the guest runs.

Each fault is armed at run time (a blkdebug node slid under the format node
with blockdev-reopen) and disarmed the same way; the disk keeps the default
error policy (report), so the passthrough path sees VIRTIO_BLK_S_IOERR (1) in
cqe->res and the block path -EIO, whatever errno QEMU got (ENOSPC included:
virtio-blk has one error status). After each disarm the same I/O succeeds,
and the data written before any fault reads back intact at the end.
"""

from __future__ import annotations

from ..faults.kinds import make_fault
from .base import Scenario, ScenarioContext, register
from .driver_common import EIO, VIRTIO_BLK_S_IOERR, MiB, plug, run_gated, unplug
from .fault_common import expect_res, file_disk, one_io, verify_baseline, with_fault, write_baseline

SEED = 41
TARGET = 8 * MiB  # where the failing I/Os go, away from the baseline data
ONCE_SECTOR = (12 * MiB) // 512
# (check name, fault params, engine op); reads, writes and flushes also go through the block path
CASES = (
    ("eio-read", {"op": "read"}, "read"),
    ("eio-write", {"op": "write"}, "write"),
    ("eio-flush-once", {"op": "flush", "once": True}, "flush"),
    ("eio-discard", {"op": "discard"}, "discard"),
    ("enospc-write", {"op": "write", "errno": "ENOSPC"}, "write"),
)


@register
class FaultBlkdebug(Scenario):
    name = "fault-blkdebug"
    description = ("blkdebug EIO/ENOSPC on read, write, flush and discard, armed and disarmed at run time: "
                   "passthrough cqe->res is VIRTIO_BLK_S_IOERR and the block path -EIO while armed, success "
                   "after disarm; a once-only rule by sector fails exactly one read; data written before "
                   "reads back intact.")

    def run(self, ctx: ScenarioContext) -> None:
        disk = file_disk(ctx, "fblk0", rerror="report", werror="report")
        st: dict = {}
        if not run_gated(ctx, True, [("hotplug", plug(ctx, disk, st))], ""):
            return
        ctx.check("baseline-write", write_baseline(ctx, st["chardev"], SEED))

        def case(params: dict, op: str):
            def check(rec: dict) -> None:
                where = 0 if op == "flush" else TARGET  # a passthrough FLUSH must name sector 0

                def failing(path_key: str, path: str, expected: int, why: str) -> None:
                    if op == "flush":
                        # QEMU skips a flush when nothing was written since the last one: write first.
                        one_io(ctx, rec, f"{path_key}-write-before-flush", path, "write", TARGET)
                    expect_res(path_key, one_io(ctx, rec, path_key, path, op, where), expected, why)

                # One arming per path: a flush fault fires once (see the kind), so each path gets its own.
                with_fault(ctx, make_fault("blkdebug-error", disk, params), rec,
                           lambda: failing("passthru", st["chardev"], VIRTIO_BLK_S_IOERR,
                                           "device error status while armed"))
                if op in ("read", "write", "flush"):
                    with_fault(ctx, make_fault("blkdebug-error", disk, params), rec,
                               lambda: failing("block", st["blockdev"], -EIO, "the block layer's error while armed"))
                res = one_io(ctx, rec, "after-disarm", st["chardev"], op, where)
                expect_res("after-disarm", res, 0, "the same I/O after disarming")
            return check

        for name, params, op in CASES:
            ctx.check(name, case(params, op))

        def once_by_sector(rec: dict) -> None:
            def armed() -> None:
                other = one_io(ctx, rec, "other-sector", st["chardev"], "read", TARGET)
                expect_res("other-sector", other, 0, "a read of another sector is not affected")
                first = one_io(ctx, rec, "first", st["chardev"], "read", ONCE_SECTOR * 512)
                expect_res("first", first, VIRTIO_BLK_S_IOERR, "the rule's sector, first read")
                second = one_io(ctx, rec, "second", st["chardev"], "read", ONCE_SECTOR * 512)
                expect_res("second", second, 0, "the rule fires once only")
            fault = make_fault("blkdebug-error", disk, {"op": "read", "once": True, "sector": ONCE_SECTOR})
            with_fault(ctx, fault, rec, armed)

        ctx.check("eio-read-once-by-sector", once_by_sector)
        ctx.check("data-intact", verify_baseline(ctx, st["chardev"], SEED))
        ctx.check("unplug", unplug(ctx, disk, st))
