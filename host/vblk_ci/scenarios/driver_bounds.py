"""driver-bounds: commands outside the disk are refused with -ERANGE and never reach the device.

review-v2 finding #2: the READ/WRITE capacity check ``sector + (bytes >> 9) >
get_capacity()`` wraps for a sector near U64_MAX (with 512-byte blocks the
alignment check rejects nothing), so the command goes to the device. The
guest's answer alone cannot tell "refused" from "the device failed it", so
each refused job is judged from both sides: cqe->res must be -ERANGE, and the
device's counters in QMP ``query-blockstats`` (reads, writes, flushes, unmaps:
done, failed and invalid) must not move. Controls prove the counters move for a
command that does reach the device, and that the last block is still inside.

Cases: READ and WRITE of 4096 bytes at sector 2^64 - 8 (sector + 8 wraps to
0) and at 2^63 (huge, no wrap), one block past the end; the same wrap through a
DISCARD and a WRITE_ZEROES range list (the range path checks for wrap: a guard).

review-v2 finding #6 (the max_hw_sectors check is dead) is here too, as what it
does show: two oversized lengths get different answers (``data-len-one-rule``).
"""

from __future__ import annotations

from ..disks.spec import DiskSpec
from ..errors import CheckFailed
from ..machine import virtio_queue as VQ
from .base import Scenario, ScenarioContext, register
from .driver_common import ERANGE, MiB, eargs, errno_text, plug_file_disk, run_engine, run_gated, unplug

DISK_SIZE = 64 * MiB
BLOCK = 4096
SECTORS = DISK_SIZE // 512
U64 = 1 << 64
WRAP_SECTOR = U64 - BLOCK // 512  # sector + 8 == 2^64 == 0
HUGE_SECTOR = 1 << 63
# review-v2 #6: 0xfffffe00 = (UINT_MAX << 9) in 32 bits, the v2 limit; 0xffffffff is just over it.
DATA_LENS = (0xFFFFFE00, 0xFFFFFFFF)

# (check name, op, option giving the sector, sector)
REFUSED = (
    ("read-sector-wraps", "read", "sector", WRAP_SECTOR),
    ("write-sector-wraps", "write", "sector", WRAP_SECTOR),
    ("read-sector-huge", "read", "sector", HUGE_SECTOR),
    ("write-sector-huge", "write", "sector", HUGE_SECTOR),
    ("read-past-end", "read", "sector", SECTORS),
    ("discard-range-wraps", "discard", "range_sector", WRAP_SECTOR),
    ("write-zeroes-range-wraps", "write-zeroes", "range_sector", WRAP_SECTOR),
)


@register
class DriverBounds(Scenario):
    name = "driver-bounds"
    description = ("review-v2 #2: passthrough READ/WRITE at a sector where sector + length wraps past U64_MAX "
                   "(2^64 - 8), at 2^63 and one block past the end, and DISCARD/WRITE_ZEROES ranges that wrap, "
                   "are refused with -ERANGE and reach nothing: the device's query-blockstats counters do not "
                   "move (controls: an I/O at sector 0 and at the last block moves them). review-v2 #6: "
                   "data_len 0xfffffe00 and 0xffffffff over a 4 KiB buffer get the same errno.")

    def run(self, ctx: ScenarioContext) -> None:
        st: dict = {}
        disk = plug_file_disk(ctx, "bnd0", DISK_SIZE, st)
        if disk is None:
            return
        seen = ctx.check("control-counters-move", lambda rec: control(ctx, disk, st, rec)).status == "pass"
        steps = [(name, lambda rec, op=op, key=key, sector=sector: refused(ctx, disk, st, rec, op, key, sector))
                 for name, op, key, sector in REFUSED]
        steps.append(("data-len-one-rule", lambda rec: data_len_one_rule(ctx, disk, st, rec)))
        run_gated(ctx, seen, steps, "not run: the device's counters did not show the control I/Os, so "
                                    "'nothing reached the device' could not be judged")
        ctx.check("unplug", unplug(ctx, disk, st))


def counters(ctx: ScenarioContext, disk: DiskSpec) -> dict[str, int]:
    try:
        return VQ.device_stats(ctx.machine.qmp("query-blockstats"), disk.id)
    except ValueError as exc:
        raise CheckFailed(str(exc)) from exc


def one(ctx: ScenarioContext, disk: DiskSpec, rec: dict, key: str, args: list[str]) -> tuple[int, dict[str, int]]:
    """Run one single-I/O job; its cqe->res and the counters that moved across it."""
    before = counters(ctx, disk)
    result = run_engine(ctx, rec, key, args)
    delta = VQ.stats_delta(before, counters(ctx, disk))
    rec[f"{key}-counters-moved"] = delta
    res = (result.get("results") or [None])[0]
    if not isinstance(res, int):
        raise CheckFailed(f"{key}: the engine reported no result ({result.get('ios')} I/Os)")
    return res, delta


def control(ctx: ScenarioContext, disk: DiskSpec, st: dict, rec: dict) -> None:
    """Passthrough I/Os inside the disk succeed and move the read/write counters by one each."""
    for key, op, sector, counter in (("write-sector-0", "write", 0, "wr_operations"),
                                     ("read-sector-0", "read", 0, "rd_operations"),
                                     ("read-last-block", "read", SECTORS - BLOCK // 512, "rd_operations")):
        res, delta = one(ctx, disk, rec, key, eargs(st["chardev"], op, bs=BLOCK, sector=sector))
        if res != 0:
            raise CheckFailed(f"{key}: cqe->res = {errno_text(res)}, expected 0 (inside the disk)")
        if delta.get(counter) != 1:
            raise CheckFailed(f"{key}: the device's {counter} moved by {delta.get(counter, 0)}, expected 1 "
                              f"(all that moved: {delta}): the counters do not show what reaches the device")


def refused(ctx: ScenarioContext, disk: DiskSpec, st: dict, rec: dict, op: str, key: str, sector: int) -> None:
    """One command at ``sector`` (command or range sector): -ERANGE, and no device counter moves."""
    res, delta = one(ctx, disk, rec, op, eargs(st["chardev"], op, bs=BLOCK, **{key: sector}))
    where = f"{'range ' if key == 'range_sector' else ''}sector {sector:#x}"
    problems = []
    if res != -ERANGE:
        problems.append(f"cqe->res = {errno_text(res)}, expected {errno_text(-ERANGE)}")
    if delta:
        problems.append(f"the command reached the device: its counters moved {delta}")
    if problems:
        raise CheckFailed(f"{op} of {BLOCK} bytes at {where}: " + "; ".join(problems))


def data_len_one_rule(ctx: ScenarioContext, disk: DiskSpec, st: dict, rec: dict) -> None:
    """review-v2 #6: two oversized single-buffer lengths, both past the 4 KiB buffer and both under
    max_hw_sectors (virtio-blk: UINT_MAX sectors, 2 TiB), are judged by one rule.

    The cover letter promises -EINVAL over max_hw_sectors; no 32-bit data_len is over 2 TiB, so
    that rule refuses neither and both get what mapping the unmapped tail gives. v2 computes
    the limit in 32 bits (0xfffffe00), so data_len 0xfffffe00 is mapped (-EFAULT) and
    0xffffffff is refused (-EINVAL). A fix that checks in 64 bits, drops the check or picks
    another limit answers both alike. Neither may reach the device.
    """
    limits = ctx.agent.call("sysfs", {"name": st["name"], "paths": [
        "queue/max_hw_sectors_kb", "queue/max_sectors_kb", "queue/max_segments", "queue/max_segment_size"]})
    rec["sysfs"] = limits
    got = {}
    for data_len in DATA_LENS:
        res, delta = one(ctx, disk, rec, f"write-data-len-{data_len:#x}",
                         eargs(st["chardev"], "write", bs=BLOCK, data_len=data_len))
        if res >= 0 or delta:
            raise CheckFailed(f"write with data_len {data_len:#x} and a {BLOCK}-byte buffer: cqe->res = "
                              f"{errno_text(res)}, counters moved {delta}: expected a refusal that reaches nothing")
        got[data_len] = res
    if len(set(got.values())) > 1:
        said = ", ".join(f"data_len {k:#x} -> {errno_text(v)}" for k, v in got.items())
        raise CheckFailed(f"{said}: two lengths past the buffer and under max_hw_sectors_kb "
                          f"{limits.get('queue/max_hw_sectors_kb')} get different answers (the max_hw_sectors "
                          f"limit is computed in 32 bits: max_hw_sectors << 9 = 0xfffffe00)")
