"""driver-ops: every passthrough op's success path, its data checked across
the char device and the block device.

One file-backed disk (discard and write-zeroes offered, the file nodes set to
``discard: unmap`` so a discard really punches a hole). Each op works on its
own 1 MiB region: data written through /dev/vdXc0 is verified through /dev/vdX
(O_DIRECT) and through /dev/vdXc0, data written through /dev/vdX is verified
through /dev/vdXc0; discard and write-zeroes must read back as zeroes both ways.
"""

from __future__ import annotations

import os

from ..disks.spec import DiskSpec, create_sparse_file
from ..errors import CheckFailed
from ..kernel_features import takes_fixed_vec
from .base import Scenario, ScenarioContext, register
from .driver_common import EINVAL, MiB, eargs, expect_clean, expect_results, plug, run_engine, run_gated, unplug

DISK_SIZE = 64 * MiB
REGION = MiB
SERIAL = "vblk-ops0"
# The queue-full check runs on a second disk with a 16-entry virtqueue (16 tags, one hardware
# queue) and keeps OVERCOMMIT commands in flight per tag: the driver's non-blocking request
# allocation then fails with -EAGAIN and io_uring re-issues those commands from a worker
# thread, while the job goes on reusing its SQ ring slots for new commands.
SMALL_QUEUE = 16
OVERCOMMIT = 16
QUEUE_FULL_LEN = 16 * MiB


def region(n: int) -> int:
    """Byte offset of region ``n`` (regions are 1 MiB, starting at 1 MiB: away from the partition scan)."""
    return (n + 1) * REGION


def host_hole(image: os.PathLike, offset: int, length: int) -> bool | None:
    """True if ``[offset, offset + length)`` of the host image is a hole; None if the fs cannot say."""
    try:
        fd = os.open(image, os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as exc:  # ENXIO: no data at or after offset
        return True if exc.errno == 6 else None
    finally:
        os.close(fd)
    return data >= offset + length


@register
class DriverOps(Scenario):
    name = "driver-ops"
    description = (
        "Every passthrough op succeeds with its data checked across /dev/vdXc0 and /dev/vdX: read, "
        "write, iovec (cmd_op 2), registered buffers, registered buffers with an iovec array (-EINVAL on 6.12), flush, get-id, discard (reads back zeroes, the host "
        "file gets a hole) and write-zeroes (with and without UNMAP); and, on a disk with a 16-entry queue, "
        "writes and reads with 16x more commands in flight than it has tags."
    )

    def run(self, ctx: ScenarioContext) -> None:
        image = create_sparse_file(ctx.scratch() / "ops0.raw", DISK_SIZE)
        disk = DiskSpec(id="ops0", serial=SERIAL, backend="file", path=image, size_bytes=DISK_SIZE,
                        num_queues=2, discard=True, write_zeroes=True).validate()
        small_image = create_sparse_file(ctx.scratch() / "ops1.raw", DISK_SIZE)
        small = DiskSpec(id="ops1", serial="vblk-ops1", backend="file", path=small_image, size_bytes=DISK_SIZE,
                         num_queues=1, queue_size=SMALL_QUEUE).validate()
        st: dict = {}
        st_small: dict = {}

        def job(rec: dict, key: str, path: str, op: str, n: int, **opts) -> dict:
            opts.setdefault("length", REGION)
            opts.setdefault("qd", 4)
            return run_engine(ctx, rec, key, eargs(path, op, offset=region(n), **opts))

        def clean(rec: dict, key: str, path: str, op: str, n: int, **opts) -> dict:
            result = job(rec, key, path, op, n, **opts)
            expect_clean(key, result)
            if result.get("bytes") != result.get("length"):
                raise CheckFailed(f"{key}: {result.get('bytes')} bytes done of {result.get('length')}")
            return result

        def write_read(rec: dict) -> None:
            c, b = st["chardev"], st["blockdev"]
            clean(rec, "chardev-write", c, "write", 0, seed=21)
            clean(rec, "chardev-verify", c, "verify", 0, seed=21)
            clean(rec, "block-verify", b, "verify", 0, seed=21)
            result = clean(rec, "chardev-read", c, "read", 0, bs=REGION // 4)
            expect_results("chardev-read", result, 0)

        def block_to_chardev(rec: dict) -> None:
            c, b = st["chardev"], st["blockdev"]
            clean(rec, "block-write", b, "write", 1, seed=22)
            clean(rec, "chardev-verify", c, "verify", 1, seed=22, bs=64 * 1024)

        def iovec(rec: dict) -> None:
            c, b = st["chardev"], st["blockdev"]
            clean(rec, "chardev-write-vec", c, "write", 2, seed=23, bs=64 * 1024, vec=4)
            clean(rec, "block-verify", b, "verify", 2, seed=23)
            clean(rec, "chardev-verify-vec", c, "verify", 2, seed=23, bs=128 * 1024, vec=32)

        def fixed(rec: dict) -> None:
            c, b = st["chardev"], st["blockdev"]
            clean(rec, "chardev-write-fixed", c, "write", 3, seed=24, fixed=True)
            clean(rec, "block-verify", b, "verify", 3, seed=24)
            clean(rec, "chardev-verify-fixed", c, "verify", 3, seed=24, fixed=True)

        def fixed_iovec(rec: dict) -> None:
            # a registered buffer described by an iovec array: io_uring_cmd_import_fixed_vec() (6.15+)
            # imports it; the 6.12 backport, without that helper, refuses it with -EINVAL
            c, b = st["chardev"], st["blockdev"]
            release = ctx.agent.read_file("/proc/sys/kernel/osrelease").strip()
            rec["kernel_release"] = release
            if not takes_fixed_vec(release):
                result = job(rec, "chardev-write-fixed-vec", c, "write", 7, seed=29, fixed=True, vec=4, bs=64 * 1024)
                expect_results("chardev-write-fixed-vec", result, -EINVAL)
                return
            clean(rec, "chardev-write-fixed-vec", c, "write", 7, seed=29, fixed=True, vec=4, bs=64 * 1024)
            clean(rec, "block-verify", b, "verify", 7, seed=29)
            clean(rec, "chardev-verify-fixed-vec", c, "verify", 7, seed=29, fixed=True, vec=16, bs=128 * 1024)

        def flush(rec: dict) -> None:
            result = run_engine(ctx, rec, "flush", eargs(st["chardev"], "flush", ios=4, qd=2))
            expect_results("flush", result, 0)

        def get_id(rec: dict) -> None:
            result = run_engine(ctx, rec, "get-id", eargs(st["chardev"], "get-id"))
            expect_results("get-id", result, 0)
            if result.get("id") != SERIAL:
                raise CheckFailed(f"get-id returned {result.get('id')!r}, the disk's serial is {SERIAL!r}")

        def discard(rec: dict) -> None:
            c, b = st["chardev"], st["blockdev"]
            clean(rec, "block-write", b, "write", 4, seed=25)
            result = job(rec, "chardev-discard", c, "discard", 4, bs=256 * 1024, qd=2)
            expect_results("chardev-discard", result, 0)
            clean(rec, "block-verify-zero", b, "verify", 4, zero=True)
            clean(rec, "chardev-verify-zero", c, "verify", 4, zero=True)
            # Only a filesystem that reports a never-written region as a hole can tell.
            holes = host_hole(image, region(40), REGION)
            rec["host_hole"] = {"fs_reports_holes": holes, "discarded": host_hole(image, region(4), REGION)}
            if holes and not rec["host_hole"]["discarded"]:
                raise CheckFailed("the discard did not reach the host file: the region is still allocated "
                                  "(blockdev discard=unmap missing?)")

        def write_zeroes(rec: dict) -> None:
            c, b = st["chardev"], st["blockdev"]
            clean(rec, "block-write", b, "write", 5, seed=26)
            result = job(rec, "chardev-write-zeroes", c, "write-zeroes", 5, bs=128 * 1024, qd=2)
            expect_results("chardev-write-zeroes", result, 0)
            clean(rec, "block-verify-zero", b, "verify", 5, zero=True)
            clean(rec, "chardev-verify-zero", c, "verify", 5, zero=True)

        def write_zeroes_unmap(rec: dict) -> None:
            c, b = st["chardev"], st["blockdev"]
            clean(rec, "chardev-write", c, "write", 6, seed=27)
            result = job(rec, "chardev-write-zeroes-unmap", c, "write-zeroes", 6, bs=REGION, unmap=True)
            expect_results("chardev-write-zeroes-unmap", result, 0)
            clean(rec, "block-verify-zero", b, "verify", 6, zero=True)
            clean(rec, "chardev-verify-zero", c, "verify", 6, zero=True)

        def queue_full(rec: dict) -> None:
            c, b = st_small["chardev"], st_small["blockdev"]
            tags = ctx.agent.read_file(f"/sys/block/{st_small['name']}/mq/0/nr_tags").strip()
            qd = min(OVERCOMMIT * int(tags), 4096) if tags.isdigit() else OVERCOMMIT * SMALL_QUEUE
            rec["nr_tags"], rec["qd"] = tags, qd
            for key, path, op, depth in (("chardev-write", c, "write", qd), ("block-verify", b, "verify", 4),
                                         ("chardev-verify", c, "verify", qd)):
                result = run_engine(ctx, rec, key, eargs(path, op, offset=0, length=QUEUE_FULL_LEN, qd=depth,
                                                         seed=28))
                try:
                    expect_clean(key, result)
                except CheckFailed as exc:
                    written = rec["chardev-write"].get("res_counts")
                    raise CheckFailed(f"{exc} -- after a qd {qd} write on {tags} tags whose completions were "
                                      f"{written} (cqe->res: count)") from exc

        plugged = ctx.check("hotplug", plug(ctx, disk, st))
        run_gated(ctx, plugged.status == "pass", [
            ("write-read", write_read),
            ("block-write-chardev-read", block_to_chardev),
            ("iovec", iovec),
            ("fixed-buffers", fixed),
            ("fixed-buffers-iovec", fixed_iovec),
            ("flush", flush),
            ("get-id", get_id),
            ("discard", discard),
            ("write-zeroes", write_zeroes),
            ("write-zeroes-unmap", write_zeroes_unmap),
        ], "not run: hotplug failed")
        run_gated(ctx, "name" in st, [("unplug", unplug(ctx, disk, st))], "not run: the disk never appeared")
        small_plugged = ctx.check("hotplug-small-queue", plug(ctx, small, st_small))
        run_gated(ctx, small_plugged.status == "pass", [("more-in-flight-than-tags", queue_full)],
                  "not run: hotplug failed")
        run_gated(ctx, "name" in st_small, [("unplug-small-queue", unplug(ctx, small, st_small))],
                  "not run: the disk never appeared")
