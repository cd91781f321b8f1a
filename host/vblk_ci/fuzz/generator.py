"""Seeded program generation: valid commands for each op, then (often) one mutation.

``generate(seed, index, disks)`` is a pure function of its arguments: program
``index`` of campaign ``seed`` is the same on every host (``random.Random`` with an
integer seed is stable across Python versions). Each step starts as a valid command
for its op on the chosen disk (sector mostly in a small hot region so reads meet
earlier writes, buffers aligned / misaligned / registered / iovecs), and with
probability MUTATE one field is broken in a way the errno table names (or, for
``ioprio-valid``, changed in a way that must not matter).
"""

from __future__ import annotations

import random
from dataclasses import replace

from .program import (
    CMD_IO, CMD_IO_VEC, STEP_BYTES, T_DISCARD, T_FLUSH, T_GET_ID, T_IN, T_OUT, T_SECURE_ERASE, T_WRITE_ZEROES,
    Program, Step,
)
from .table import ID_BYTES, DiskConfig

MUTATE = 0.35
SCRIBBLE = 0.3  # programs whose executor overwrites SQ slots right after submit
USER = 0.25  # programs run as an unprivileged user (no CAP_SYS_ADMIN)
USER_ID = 1000  # its uid and gid (the campaign hands each disk's node to it)
I386 = 0.2  # programs run by vblk-engine32: a 32-bit caller (compat syscalls)
HOT_SECTORS = 2048  # 1 MiB at the start of the disk: where most commands go
MAX_BLOCKS = 16
OPS = ((T_IN, 30), (T_OUT, 30), (T_FLUSH, 8), (T_GET_ID, 5), (T_DISCARD, 9), (T_WRITE_ZEROES, 9), (None, 4))
BAD_TYPES = (2, 3, 5, 6, 7, 9, 10, 12, T_SECURE_ERASE, 15, 16, 0x80, 0xFFFF, 0xFFFFFFFF)
BAD_CMD_OPS = (0, 3, 4, 0x80, 0xC0184E00, 0xFFFFFFFF)
U64 = 1 << 64


def program_seed(seed: int, index: int) -> int:
    """The seed of program ``index`` of a campaign: recorded in each program file."""
    return (seed * 1_000_003 + index) & ((1 << 63) - 1)


def _weighted(rng: random.Random, table):
    total = sum(w for _, w in table)
    r = rng.uniform(0, total)
    for value, w in table:
        r -= w
        if r <= 0:
            return value
    return table[-1][0]


def _sector(rng: random.Random, disk: DiskConfig, blocks: int) -> int:
    """An aligned sector where ``blocks`` logical blocks fit."""
    lbs_s = disk.lbs_sectors
    last = disk.capacity // lbs_s - blocks  # last block index that fits
    r = rng.random()
    if r < 0.7:
        hi = min(last, HOT_SECTORS // lbs_s - blocks)
    elif r < 0.85:
        return max(0, last - rng.randint(0, 4)) * lbs_s
    else:
        hi = last
    return rng.randint(0, max(hi, 0)) * lbs_s


def _split(rng: random.Random, total: int, unit: int) -> tuple[int, ...]:
    """``total`` bytes as 1..8 iovecs of whole ``unit``s (the last takes the rest)."""
    n = rng.randint(1, 8)
    units = total // unit
    if units < n:
        n = max(units, 1)
    cuts = sorted(rng.sample(range(1, units), n - 1)) if n > 1 else []
    bounds = [0, *cuts, units]
    lens = tuple((b - a) * unit for a, b in zip(bounds, bounds[1:]))
    return lens[:-1] + (lens[-1] + total - units * unit,)


def _data_step(rng: random.Random, disk: DiskConfig, typ: int) -> Step:
    blocks = rng.randint(1, min(MAX_BLOCKS, STEP_BYTES // disk.lbs))
    nbytes = blocks * disk.lbs
    step = Step(cmd_op=CMD_IO, type=typ, sector=_sector(rng, disk, blocks), len=nbytes,
                seed=rng.randint(1, 2**31 - 1) if typ == T_OUT else 0)
    kind = _weighted(rng, (("aligned", 45), ("misaligned", 20), ("fixed", 15), ("vec", 20)))
    if kind == "vec":
        unit = rng.choice((disk.lbs, 512, 8))
        return replace(step, cmd_op=CMD_IO_VEC, len=0, iov=_split(rng, nbytes, unit),
                       buf=rng.choice(("aligned", "aligned", "misaligned")))
    return replace(step, buf=kind)


def _range_step(rng: random.Random, disk: DiskConfig, typ: int) -> Step:
    blocks = rng.randint(1, 64)
    sector = _sector(rng, disk, blocks)
    flags = rng.choice((0, 1)) if typ == T_WRITE_ZEROES else 0
    return Step(type=typ, ranges=((sector, blocks * disk.lbs_sectors, flags),),
                buf=rng.choice(("aligned", "aligned", "misaligned")))


def valid_step(rng: random.Random, disk: DiskConfig, typ: int) -> Step:
    if typ in (T_IN, T_OUT):
        return _data_step(rng, disk, typ)
    if typ == T_FLUSH:
        return Step(type=T_FLUSH, len=0, buf="null")
    if typ == T_GET_ID:
        return Step(type=T_GET_ID, len=ID_BYTES, buf=rng.choice(("aligned", "misaligned", "fixed")))
    return _range_step(rng, disk, typ)


def _nbytes(step: Step) -> int:
    return sum(step.iov) if step.iov else step.len


def mutations(step: Step, disk: DiskConfig) -> list[str]:
    """The mutations that make sense for ``step`` on ``disk``."""
    out = ["cmd-op", "flag", "type", "ioprio-bad", "ioprio-valid"]
    if step.type in (T_IN, T_OUT):
        out += ["beyond", "wrap", "zero-len", "len-misaligned", "unmapped", "huge-len"]
        if disk.lbs > 512:
            out.append("sector-misaligned")
        if step.iov:
            out += ["too-many-iov", "fixed-vec", "vec-count"]
        else:
            out += ["fixed-oob", "as-vec"]
    elif step.type == T_FLUSH:
        out += ["flush-sector", "flush-len"]
    elif step.type == T_GET_ID:
        out += ["id-len", "id-sector", "unmapped"]
    else:
        out += ["ranges-many", "range-flags", "range-zero", "range-beyond", "range-wrap", "ranges-len", "unmapped",
                "ranges-fixed"]
        if disk.lbs > 512:
            out.append("range-misaligned")
    return out


MUTATION_NAMES = (
    "cmd-op", "flag", "type", "ioprio-bad", "ioprio-valid", "beyond", "wrap", "zero-len", "len-misaligned", "unmapped",
    "huge-len", "sector-misaligned", "too-many-iov", "fixed-vec", "vec-count", "fixed-oob", "as-vec", "flush-sector",
    "flush-len", "id-len", "id-sector", "ranges-many", "range-flags", "range-zero", "range-beyond", "range-wrap",
    "ranges-len", "ranges-fixed", "range-misaligned",
)


def mutate(rng: random.Random, step: Step, disk: DiskConfig, what: str) -> Step:
    lbs_s = disk.lbs_sectors
    n = _nbytes(step)
    if what == "cmd-op":
        return replace(step, cmd_op=rng.choice(BAD_CMD_OPS))
    if what == "flag":
        return replace(step, flag=rng.choice((1, 2, 0x80000000, rng.randint(1, 2**32 - 1))))
    if what == "type":
        return replace(step, type=rng.choice(BAD_TYPES))
    if what == "ioprio-bad":
        return replace(step, ioprio=rng.choice(((4 << 13), (7 << 13) | 3, 1, 7)))
    if what == "ioprio-valid":
        return replace(step, ioprio=(rng.randint(1, 3) << 13) | rng.randint(0, 7))
    if what == "beyond":
        choice = rng.randint(0, 2)
        if choice == 0:  # the last blocks, one too many
            return replace(step, sector=disk.capacity - n // 512 + lbs_s)
        if choice == 1:
            return replace(step, sector=disk.capacity)
        return replace(step, sector=rng.choice((disk.capacity * 2, 1 << 40, (1 << 63) - lbs_s * 8)))
    if what == "wrap":  # sector + length runs past 2^64 (review-v2.md #2)
        back = rng.randint(1, max(n // disk.lbs, 1)) * lbs_s
        return replace(step, sector=U64 - back)
    if what == "zero-len":
        return replace(step, data_len=0)
    if what == "len-misaligned":
        if step.iov:
            return replace(step, iov=step.iov[:-1] + (step.iov[-1] + rng.choice((8, 256, 512 if disk.lbs > 512 else 8)),))
        return replace(step, len=n + rng.choice((8, 100, 256, 512 if disk.lbs > 512 else 8)))
    if what == "unmapped":
        return replace(step, buf=rng.choice(("unmapped", "null")))
    if what == "huge-len":
        return replace(step, data_len=0xFFFFF000, iov=(), cmd_op=CMD_IO, len=step.len or n)
    if what == "sector-misaligned":
        return replace(step, sector=step.sector + rng.randint(1, lbs_s - 1))
    if what == "too-many-iov":
        unit = 512 if disk.lbs == 512 else disk.lbs
        count = disk.max_segments + rng.choice((1, 2, 30))
        if count * unit > STEP_BYTES:  # keep the data inside the executor's slot
            unit = 512
        return replace(step, iov=(unit,) * count)
    if what == "fixed-vec":
        return replace(step, buf="fixed")
    if what == "vec-count":  # data_len names fewer iovecs than the array has
        return replace(step, data_len=rng.randint(0, len(step.iov) - 1) if len(step.iov) > 1 else 0)
    if what == "fixed-oob":
        # one plain buffer (an iovec array is laid out inside the registered buffer)
        return replace(step, buf="fixed-oob", iov=(), cmd_op=CMD_IO, len=max(step.len or n, 4096))
    if what == "as-vec":  # cmd_op 2 over a plain data buffer: garbage iovecs
        return replace(step, cmd_op=CMD_IO_VEC, buf="aligned" if step.buf == "fixed" else step.buf)
    if what == "flush-sector":
        return replace(step, sector=rng.choice((lbs_s, 8, 1 << 20)))
    if what == "flush-len":
        return replace(step, len=rng.choice((512, 4096)), buf="aligned")
    if what == "id-len":
        return replace(step, len=rng.choice((0, 19, 21, 512)))
    if what == "id-sector":
        return replace(step, sector=rng.choice((lbs_s, 8)))
    (s0, n0, f0), = step.ranges[:1] or ((0, lbs_s, 0),)
    if what == "ranges-many":
        extra = tuple((s0 + (k + 1) * n0, n0, f0) for k in range(rng.randint(1, 3)))
        return replace(step, ranges=((s0, n0, f0),) + tuple(r for r in extra if r[0] + r[1] <= disk.capacity)
                       or ((0, lbs_s, 0), (lbs_s, lbs_s, 0)))
    if what == "range-flags":
        return replace(step, ranges=((s0, n0, rng.choice((2, 4, 0x80000000)) | (f0 if step.type == T_WRITE_ZEROES else 1)),))
    if what == "range-zero":
        return replace(step, ranges=((s0, 0, f0),))
    if what == "range-beyond":
        return replace(step, ranges=((disk.capacity - n0 + lbs_s, n0, f0),))
    if what == "range-wrap":
        return replace(step, ranges=((U64 - rng.randint(1, max(n0 // lbs_s, 1)) * lbs_s, n0, f0),))
    if what == "range-misaligned":
        return replace(step, ranges=((s0 + 1, n0, f0),))
    if what == "ranges-len":
        return replace(step, data_len=rng.choice((0, 8, 24)))
    if what == "ranges-fixed":
        return replace(step, buf="fixed")
    raise ValueError(f"unknown mutation {what!r}")


def generate(seed: int, index: int, disks: list[DiskConfig], max_steps: int = 24,
             disabled: frozenset[str] = frozenset(), abis: tuple[str, ...] = ("x86_64", "i386")) -> Program:
    """Program ``index`` of the campaign ``seed`` over one of ``disks``; ``disabled``
    mutations are never drawn (a campaign disables the one behind a crash it already
    recorded, so it does not spend the rest of its budget rebooting). ``abis``: the
    executors the guest can run; an i386 draw without ``vblk-engine32`` runs as x86_64
    (the steps are the same either way)."""
    pseed = program_seed(seed, index)
    rng = random.Random(pseed)
    disk = rng.choice(disks)
    sqe = 64 if rng.random() < 0.04 else 128
    iopoll = rng.random() < 0.15
    sqpoll = rng.random() < 0.10
    mode = _weighted(rng, (("rw", 80), ("ro", 10), ("wo", 10)))
    steps: list[Step] = []
    muts: list[str | None] = []
    for _ in range(rng.randint(4, max_steps)):
        typ = _weighted(rng, OPS)
        raw = typ is None
        step = valid_step(rng, disk, T_IN if raw else typ)
        what = None
        if raw:
            what = "type"
            step = replace(step, type=rng.randint(0, 20))
            if step.type == T_OUT and not step.seed:  # seed 0 would read back as "garbage"
                step = replace(step, seed=rng.randint(1, 2**31 - 1))
        elif rng.random() < MUTATE:
            allowed = [m for m in mutations(step, disk) if m not in disabled]
            what = rng.choice(allowed) if allowed else None
            if what is not None:
                step = mutate(rng, step, disk, what)
        step = replace(step, link=rng.random() < 0.2, async_=rng.random() < 0.15)
        steps.append(step)
        muts.append(what)
    # drawn last, so the rest of a program does not depend on them (nor on what came later)
    scribble = rng.random() < SCRIBBLE
    user = USER_ID if rng.random() < USER else None
    abi = "i386" if rng.random() < I386 and "i386" in abis else "x86_64"
    prog = Program(disk=disk.name, sqe=sqe, iopoll=iopoll, sqpoll=sqpoll, scribble=scribble, mode=mode,
                   seed=pseed, user=user, abi=abi).with_steps(steps)
    prog.meta["mutations"] = muts
    return prog
