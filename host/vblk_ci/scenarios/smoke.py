"""smoke: one hot-plugged disk, data through both paths, both error paths, unplug.

The disk is backed by a sparse raw file in the run dir (null-co would discard
the writes the data checks read back), behind a blkdebug node that fails reads
of one block with EIO, so the device's own error status can be seen in
cqe->res. Each step runs vblk-engine in the guest through the agent and keeps
its JSON with the check.
"""

from __future__ import annotations

from ..disks.spec import DiskSpec, InjectError, create_sparse_file
from ..errors import AgentError, CheckFailed
from ..events import DiskPlugged
from .base import Scenario, ScenarioContext, register
from .driver_common import MiB, expect_clean, run_engine, unplug

DISK_SIZE = 64 * MiB
BLOCK = 4096
VIRTIO_BLK_S_IOERR = 1
ERANGE = 34
# The block whose reads QEMU fails with EIO: mid-disk, away from the data checks
# and from anything the guest's partition scan reads.
BAD_OFFSET = 32 * MiB


def engine_args(path: str, op: str, offset: int, length: int, seed: int = 1, qd: int = 1, bs: int = BLOCK) -> list[str]:
    return [
        "--path", path, "--op", op, "--offset", str(offset), "--length", str(length),
        "--bs", str(bs), "--qd", str(qd), "--seed", str(seed),
    ]


@register
class Smoke(Scenario):
    name = "smoke"
    description = (
        "Hot-plug one file-backed disk; write/verify through /dev/vdXc0 and across the block "
        "path; a device read error comes back as VIRTIO_BLK_S_IOERR in cqe->res; a read past "
        "the end is refused with -ERANGE; unplug removes both nodes."
    )

    def __init__(self, slot: int = 0):
        self.slot = slot

    def run(self, ctx: ScenarioContext) -> None:
        image = create_sparse_file(ctx.scratch() / "smoke0.raw", DISK_SIZE)
        disk = DiskSpec(
            id="smoke0", serial="vblk-smoke0", backend="file", path=image,
            size_bytes=DISK_SIZE, num_queues=2, queue_size=256,
            inject_errors=(InjectError(event="read_aio", sector=BAD_OFFSET // 512),),
        ).validate()
        state: dict = {}

        def hotplug(rec: dict) -> None:
            plugged = ctx.machine.hotplug(disk, self.slot, chardev=False)
            rec["plugged"] = {"guest_name": plugged.guest_name, "seconds_to_visible": plugged.seconds_to_visible}
            state["name"] = plugged.guest_name
            state["blockdev"] = f"/dev/{plugged.guest_name}"
            # The block device is there; now its passthrough char device must follow.
            try:
                info = ctx.agent.wait_disk(disk.serial, timeout_s=ctx.timeouts(10.0), chardev=True)
            except AgentError as exc:
                seen = ctx.agent.disks()
                rec["disks"] = seen
                raise CheckFailed(f"/dev/{plugged.guest_name} appeared but no char device: {exc}") from exc
            rec["disk"] = info
            state["chardev"] = info["chardev"]
            if info.get("size_bytes") not in (None, DISK_SIZE):
                raise CheckFailed(f"guest sees {info['size_bytes']} bytes, expected {DISK_SIZE}")
            ctx.emit(DiskPlugged(disk.id, disk.serial, plugged.seconds_to_visible, plugged.guest_name, info["chardev"]))

        def passthru_roundtrip(rec: dict) -> None:
            c = state["chardev"]
            expect_clean("write", run_engine(ctx, rec, "write", engine_args(c, "write", 0, MiB, seed=11, qd=4)))
            expect_clean("verify", run_engine(ctx, rec, "verify", engine_args(c, "verify", 0, MiB, seed=11, qd=4)))

        def passthru_to_block(rec: dict) -> None:
            c, b = state["chardev"], state["blockdev"]
            expect_clean("write", run_engine(ctx, rec, "write", engine_args(c, "write", MiB, MiB, seed=12, qd=4)))
            expect_clean("verify", run_engine(ctx, rec, "verify", engine_args(b, "verify", MiB, MiB, seed=12, qd=4)))

        def block_to_passthru(rec: dict) -> None:
            c, b = state["chardev"], state["blockdev"]
            expect_clean("write", run_engine(ctx, rec, "write", engine_args(b, "write", 2 * MiB, MiB, seed=13, qd=4)))
            expect_clean("verify", run_engine(ctx, rec, "verify", engine_args(c, "verify", 2 * MiB, MiB, seed=13, qd=4)))

        def read_device_error(rec: dict) -> None:
            result = run_engine(ctx, rec, "read", engine_args(state["chardev"], "read", BAD_OFFSET, BLOCK))
            res = (result.get("results") or [None])[0]
            if res != VIRTIO_BLK_S_IOERR:
                raise CheckFailed(
                    f"read of the block QEMU fails: cqe->res = {res}, expected {VIRTIO_BLK_S_IOERR} "
                    "(VIRTIO_BLK_S_IOERR from the device)"
                )

        def read_past_end(rec: dict) -> None:
            result = run_engine(ctx, rec, "read", engine_args(state["chardev"], "read", DISK_SIZE, BLOCK))
            res = (result.get("results") or [None])[0]
            if res != -ERANGE:
                raise CheckFailed(
                    f"read one block past the end: cqe->res = {res}, expected {-ERANGE} (-ERANGE, refused by the driver)"
                )

        steps = [
            ("hotplug", hotplug),
            ("passthru-write-verify", passthru_roundtrip),
            ("passthru-write-block-verify", passthru_to_block),
            ("block-write-passthru-verify", block_to_passthru),
            ("passthru-read-device-error", read_device_error),
            ("passthru-read-past-end-erange", read_past_end),
            ("unplug", unplug(ctx, disk, state)),
        ]
        hotplug_result = ctx.check(*steps[0])
        if hotplug_result.status != "pass":
            for name, _ in steps[1:-1]:
                ctx.skip(name, "not run: hotplug failed")
            if "name" in state:
                ctx.check(*steps[-1])  # the block device came: still prove unplug works
            else:
                ctx.skip(steps[-1][0], "not run: hotplug failed")
            return
        for name, fn in steps[1:]:
            ctx.check(name, fn)
