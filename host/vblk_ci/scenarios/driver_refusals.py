"""driver-refusals: every command the driver must refuse comes back with its errno.

Two null-backed disks: ``ref0`` with 4 KiB logical blocks (so a 512-byte-aligned
but block-misaligned sector or length reaches the driver's checks) and
discard/write-zeroes offered; ``ref1`` with discard=off and write-zeroes=off, for
the ops whose feature was not negotiated. Each refusal is one engine job whose
every cqe->res must be the expected -errno; where a refusal depends on a limit,
a control job just inside the limit must succeed.
"""

from __future__ import annotations

from ..disks.spec import DiskSpec
from ..errors import CheckFailed
from .base import Scenario, ScenarioContext, register
from .driver_common import (
    EFAULT, EINVAL, ENOTTY, EOPNOTSUPP, ERANGE, KiB, MiB, eargs, expect_results, plug, run_engine,
    run_gated, unplug,
)

DISK_SIZE = 64 * MiB
LBS = 4096
OFF = 4 * MiB  # where the refused I/Os point (inside the disk unless said otherwise)
VIRTIO_BLK_SEG_MAX_DEFAULT = 254  # QEMU's seg_max for queue-size 256; read from sysfs when possible

# VIRTIO_BLK_T_SECURE_ERASE: a real virtio-blk type the driver keeps out on purpose.
T_SECURE_ERASE = 14


@register
class DriverRefusals(Scenario):
    name = "driver-refusals"
    description = (
        "Refusals with their errno: bad type -EINVAL, bad cmd_op -ENOTTY, non-zero flag -EINVAL, "
        "64-byte SQE ring -EOPNOTSUPP, misaligned length/sector -EINVAL, beyond capacity -ERANGE, unmapped "
        "user pointer -EFAULT, iovec count over the queue's max segments -EINVAL, discard/write-zeroes on a disk "
        "that did not negotiate them -EOPNOTSUPP. Refusals by open mode and capability are driver-access's."
    )

    def run(self, ctx: ScenarioContext) -> None:
        main = DiskSpec(id="ref0", serial="vblk-ref0", backend="null", size_bytes=DISK_SIZE,
                        logical_block_size=LBS, num_queues=2).validate()
        nofeat = DiskSpec(id="ref1", serial="vblk-ref1", backend="null", size_bytes=DISK_SIZE,
                          discard=False, write_zeroes=False).validate()
        st: dict = {}
        st_nofeat: dict = {}

        def refused(rec: dict, key: str, expected: int, op: str = "read", path: str | None = None, **opts) -> None:
            opts.setdefault("offset", OFF)
            result = run_engine(ctx, rec, key, eargs(path or st["chardev"], op, **opts))
            expect_results(key, result, expected)

        def accepted(rec: dict, key: str, op: str = "read", path: str | None = None, **opts) -> None:
            refused(rec, key, 0, op, path, **opts)

        def bad_type(rec: dict) -> None:
            for t in (2, T_SECURE_ERASE, 99, 0xFFFFFFFF):
                refused(rec, f"type-{t}", -EINVAL, type=t)

        def bad_cmd_op(rec: dict) -> None:
            for op in (0, 3, 0xFFFFFFFF):
                refused(rec, f"cmd-op-{op}", -ENOTTY, cmd_op=op)

        def nonzero_flag(rec: dict) -> None:
            for flag in (1, 0x80000000):
                refused(rec, f"flag-{flag:#x}", -EINVAL, flag=flag)

        def sqe64(rec: dict) -> None:
            refused(rec, "read-sqe64", -EOPNOTSUPP, sqe64=True)
            refused(rec, "write-sqe64", -EOPNOTSUPP, "write", sqe64=True)

        def misaligned_length(rec: dict) -> None:
            accepted(rec, "control-one-block", bs=LBS)
            refused(rec, "half-block", -EINVAL, bs=LBS // 2)
            refused(rec, "block-plus-8", -EINVAL, bs=LBS + 8)
            refused(rec, "write-block-plus-512", -EINVAL, "write", bs=LBS + 512)

        def misaligned_sector(rec: dict) -> None:
            refused(rec, "sector-1", -EINVAL, offset=OFF + 512)
            refused(rec, "write-sector-7", -EINVAL, "write", offset=OFF + 7 * 512)

        def beyond_capacity(rec: dict) -> None:
            accepted(rec, "control-last-block", offset=DISK_SIZE - LBS)
            refused(rec, "read-at-end", -ERANGE, offset=DISK_SIZE)
            refused(rec, "write-at-end", -ERANGE, "write", offset=DISK_SIZE)
            refused(rec, "read-straddling-end", -ERANGE, offset=DISK_SIZE - LBS, bs=2 * LBS)
            refused(rec, "read-far-beyond", -ERANGE, offset=1 << 40)

        def unmapped_pointer(rec: dict) -> None:
            refused(rec, "read-bad-buffer", -EFAULT, bad_ptr=True)
            refused(rec, "write-bad-buffer", -EFAULT, "write", bad_ptr=True)
            refused(rec, "read-bad-iovec-array", -EFAULT, bad_ptr=True, vec=4, bs=4 * LBS)

        def iovec_over_limit(rec: dict) -> None:
            info = ctx.agent.read_file(f"/sys/block/{st['name']}/queue/max_segments").strip()
            limit = int(info) if info.isdigit() else VIRTIO_BLK_SEG_MAX_DEFAULT
            rec["max_segments"] = limit
            bs = 128 * KiB  # >= 512 * (limit + 1): every iovec stays whole sectors
            if bs < 512 * (limit + 1):
                bs = -(-512 * (limit + 1) // LBS) * LBS
            accepted(rec, f"control-vec-{limit}", bs=bs, vec=limit)
            refused(rec, f"vec-{limit + 1}", -EINVAL, bs=bs, vec=limit + 1)
            refused(rec, "write-vec-4096", -EINVAL, "write", bs=4096 * 8, vec=4096)

        def not_negotiated(rec: dict) -> None:
            name = st_nofeat["name"]
            limits = {k: ctx.agent.read_file(f"/sys/block/{name}/queue/{k}").strip()
                      for k in ("discard_max_bytes", "write_zeroes_max_bytes")}
            rec["queue_limits"] = limits
            if limits != {"discard_max_bytes": "0", "write_zeroes_max_bytes": "0"}:
                raise CheckFailed(f"{name} was plugged with discard=off,write-zeroes=off but the guest "
                                  f"queue still advertises them: {limits}")
            c = st_nofeat["chardev"]
            accepted(rec, "control-read", path=c)
            accepted(rec, "control-flush", "flush", path=c, offset=None)
            refused(rec, "discard", -EOPNOTSUPP, "discard", path=c, bs=64 * KiB)
            refused(rec, "write-zeroes", -EOPNOTSUPP, "write-zeroes", path=c, bs=64 * KiB)
            refused(rec, "write-zeroes-unmap", -EOPNOTSUPP, "write-zeroes", path=c, bs=64 * KiB, unmap=True)

        first = ctx.check("hotplug-4k-disk", plug(ctx, main, st))
        run_gated(ctx, first.status == "pass", [
            ("bad-type-einval", bad_type),
            ("bad-cmd-op-enotty", bad_cmd_op),
            ("nonzero-flag-einval", nonzero_flag),
            ("sqe64-ring-eopnotsupp", sqe64),
            ("misaligned-length-einval", misaligned_length),
            ("misaligned-sector-einval", misaligned_sector),
            ("beyond-capacity-erange", beyond_capacity),
            ("unmapped-pointer-efault", unmapped_pointer),
            ("iovec-count-over-limit-einval", iovec_over_limit),
        ], "not run: hotplug failed")
        second = ctx.check("hotplug-no-discard-disk", plug(ctx, nofeat, st_nofeat))
        run_gated(ctx, second.status == "pass", [("not-negotiated-eopnotsupp", not_negotiated)],
                  "not run: hotplug failed")
        run_gated(ctx, "name" in st, [("unplug-4k-disk", unplug(ctx, main, st))], "not run: the disk never appeared")
        run_gated(ctx, "name" in st_nofeat, [("unplug-no-discard-disk", unplug(ctx, nofeat, st_nofeat))],
                  "not run: the disk never appeared")
