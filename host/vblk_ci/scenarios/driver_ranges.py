"""driver-ranges: malformed DISCARD / WRITE_ZEROES range lists are refused with -EINVAL and reach nothing.

The cover letter (patch 4/5) promises that the kernel copies a range list in and
checks every range (flags, alignment, length against the queue limits, inside
the disk) so the device only sees ranges the block layer itself could send, and
that a bad list is -EINVAL. driver-bounds covers "inside the disk" (-ERANGE);
this scenario covers the rest, on a disk with 4096-byte logical blocks so the
alignment rule has something to refuse. Each refusal is judged from both sides
as in driver-bounds: cqe->res must be -EINVAL, and nothing may reach the device.
QEMU 7.2's virtio-blk does not count DISCARDs in ``query-blockstats``, so "reached"
is seen two ways: a counter moved, or the disk image's allocated blocks changed
(the range is written first; a DISCARD that reaches the file-backed node, which has
``discard: unmap``, punches a hole in it). The controls are well-formed lists
(discard, write-zeroes, write-zeroes with UNMAP) that succeed and are seen.

What each check catches: a driver that forwards the field unchecked sends the
range to QEMU, which answers with a device status (VIRTIO_BLK_S_UNSUPP for
flags, S_IOERR for a misaligned or oversized range) or performs it (a zero
length): cqe->res is then not -EINVAL and a counter moves. These pass on v2.
"""

from __future__ import annotations

import os

from ..disks.spec import DiskSpec
from ..errors import CheckFailed
from .base import Scenario, ScenarioContext, register
from .driver_bounds import one as command_effect
from .driver_common import EINVAL, MiB, eargs, errno_text, plug_file_disk, run_engine, run_gated, unplug

DISK_SIZE = 64 * MiB
LBS = 4096
LBS_SECTORS = LBS // 512
VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1
#: Over any discard/write-zeroes limit a virtio-blk device can set, and a whole number of 4 KiB blocks.
OVER_LIMIT = 0xFFFFFFF8

# (check name, op, engine options overriding every range's fields)
REFUSED: tuple[tuple[str, str, dict], ...] = (
    ("discard-range-flags-unmap", "discard", {"range_flags": VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP}),
    ("write-zeroes-range-flags-reserved", "write-zeroes", {"range_flags": 2}),
    ("write-zeroes-range-flags-high", "write-zeroes", {"range_flags": 0x80000001}),
    ("discard-range-zero-sectors", "discard", {"range_num_sectors": 0}),
    ("write-zeroes-range-zero-sectors", "write-zeroes", {"range_num_sectors": 0}),
    ("discard-range-over-limit", "discard", {"range_num_sectors": OVER_LIMIT}),
    ("write-zeroes-range-over-limit", "write-zeroes", {"range_num_sectors": OVER_LIMIT}),
    ("discard-range-sector-misaligned", "discard", {"range_sector": LBS_SECTORS + 1}),
    ("write-zeroes-range-length-misaligned", "write-zeroes", {"range_num_sectors": LBS_SECTORS + 1}),
)

CONTROLS: tuple[tuple[str, str, dict], ...] = (
    ("discard", "discard", {}),
    ("write-zeroes", "write-zeroes", {}),
    ("write-zeroes-unmap", "write-zeroes", {"unmap": True}),
)


@register
class DriverRanges(Scenario):
    name = "driver-ranges"
    description = ("Patch 4/5's range-list checks: DISCARD/WRITE_ZEROES ranges with reserved or (for DISCARD) "
                   "any flags, zero sectors, more sectors than the queue limit, or a sector/length not whole "
                   "4096-byte blocks are refused with -EINVAL and reach nothing (query-blockstats does not "
                   "move); well-formed lists succeed and move it.")

    def run(self, ctx: ScenarioContext) -> None:
        st: dict = {}
        disk = plug_file_disk(ctx, "rng0", DISK_SIZE, st, logical_block_size=LBS)
        if disk is None:
            return
        seen = ctx.check("control-ranges-reach-device", lambda rec: control(ctx, disk, st, rec)).status == "pass"
        steps = [(name, lambda rec, op=op, opts=opts: refused(ctx, disk, st, rec, op, opts))
                 for name, op, opts in REFUSED]
        run_gated(ctx, seen, steps, "not run: the well-formed range lists did not reach the device, so "
                                    "'nothing reached the device' could not be judged")
        ctx.check("unplug", unplug(ctx, disk, st))


def allocated(disk: DiskSpec) -> int:
    """Bytes the host file system holds for the disk image."""
    return os.stat(disk.path).st_blocks * 512


def one(ctx: ScenarioContext, disk: DiskSpec, st: dict, rec: dict, key: str, op: str,
        opts: dict) -> tuple[int, dict[str, int]]:
    """One range-list command of one 4 KiB range at block 1, after writing data there; its cqe->res
    and what moved on the device's side: driver-bounds' counters, plus ``allocated_bytes`` of the
    image (a punched hole moves no counter)."""
    run_engine(ctx, rec, f"{key}-prefill", eargs(st["chardev"], "write", bs=LBS, offset=LBS))
    blocks = allocated(disk)
    res, delta = command_effect(ctx, disk, rec, key, eargs(st["chardev"], op, bs=LBS, offset=LBS, **opts))
    grown = allocated(disk) - blocks
    if grown:
        delta["allocated_bytes"] = grown  # the same dict the record keeps
    return res, delta


def control(ctx: ScenarioContext, disk: DiskSpec, st: dict, rec: dict) -> None:
    """Well-formed lists succeed, and each is seen by the device (a done-operations counter or the
    image's allocation moves) and no failed/invalid counter moves."""
    for key, op, opts in CONTROLS:
        res, delta = one(ctx, disk, st, rec, key, op, opts)
        if res != 0:
            raise CheckFailed(f"{key}: cqe->res = {errno_text(res)}, expected 0 (a well-formed range)")
        bad = {k: v for k, v in delta.items() if k.startswith(("failed_", "invalid_"))}
        if not any(v for k, v in delta.items() if k not in bad) or bad:
            raise CheckFailed(f"{key}: on the device's side moved {delta}: expected a done operation (or "
                              f"a punched hole) and no failed/invalid one")


def describe(opts: dict) -> str:
    return ", ".join(f"{k.replace('range_', '')} {v:#x}" for k, v in opts.items())


def refused(ctx: ScenarioContext, disk: DiskSpec, st: dict, rec: dict, op: str, opts: dict) -> None:
    """One malformed range: -EINVAL, and no device counter moves."""
    res, delta = one(ctx, disk, st, rec, op, op, opts)
    problems = []
    if res != -EINVAL:
        problems.append(f"cqe->res = {errno_text(res)}, expected {errno_text(-EINVAL)}")
    if delta:
        problems.append(f"the command reached the device: moved {delta}")
    if problems:
        raise CheckFailed(f"{op} of one range ({describe(opts)}) on a {LBS}-byte-block disk: "
                          + "; ".join(problems))
