"""The errno table: what cqe->res one passthrough command must get (the v3 contract).

``expect(step, program, disk)`` walks the rows below in order and collects every
row that applies. No row: the command must succeed (0). One or more rows: cqe->res
must be minus one of their errnos -- which refusal wins when a command breaks two
rules is not part of the contract, so any of them is accepted. A few rows are
"lenient": the contract leaves the answer open, so 0 is accepted too.

The same table, as prose, is in guest-agent/PROTOCOL.md ("Fuzz programs: the errno
table"). Everything the table needs about the disk is in ``DiskConfig``, read from
the guest's sysfs (``DiskConfig.from_sysfs``).

Caller (``Caller.of(program)``): the executor runs as root (CAP_SYS_ADMIN) or, for a
program with a ``user`` line, as that uid without capabilities; as NVMe's
``nvme_cmd_allowed`` decides (review-v2.md #5), an administrator passes whatever the
open mode; anyone else may READ, GET_ID and FLUSH on any fd and needs FMODE_WRITE for
the commands that change the disk (OUT, DISCARD, WRITE_ZEROES), else -EACCES. A
read-only disk refuses those changes with -EROFS; FLUSH on it is left open (review #11).
32-bit callers (``abi i386``) get the same table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..kernel_features import takes_fixed_vec
from .program import (
    BUF_KINDS, CMD_IO, CMD_IO_VEC, RANGE_BYTES, STEP_BYTES, T_DISCARD, T_FLUSH, T_GET_ID, T_IN, T_OUT, T_WRITE_ZEROES,
    WRITE_TYPES, Program, Step,
)

EPERM, EFAULT, EACCES, EINVAL, ENOTTY, EROFS, ERANGE, EOPNOTSUPP, ECANCELED = 1, 14, 13, 22, 25, 30, 34, 95, 125
ERRNO_NAMES = {1: "EPERM", 5: "EIO", 9: "EBADF", 11: "EAGAIN", 12: "ENOMEM", 13: "EACCES", 14: "EFAULT",
               19: "ENODEV", 22: "EINVAL", 25: "ENOTTY", 30: "EROFS", 34: "ERANGE", 95: "EOPNOTSUPP",
               125: "ECANCELED", 62: "ETIME"}
U64 = 1 << 64
ID_BYTES = 20  # VIRTIO_BLK_ID_BYTES
KNOWN_TYPES = frozenset({T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES})
BLOCK_TYPES = frozenset({T_IN, T_OUT})
RANGE_TYPES = frozenset({T_DISCARD, T_WRITE_ZEROES})
CHANGE_TYPES = frozenset({T_OUT, T_DISCARD, T_WRITE_ZEROES})  # need FMODE_WRITE unless CAP_SYS_ADMIN
WZ_FLAG_UNMAP = 1
# virtio feature bits (negotiated features, /sys/bus/virtio/devices/*/features)
F_RO, F_FLUSH, F_DISCARD, F_WRITE_ZEROES = 5, 9, 13, 14


def errno_name(res: int) -> str:
    """``-EINVAL``, ``ok``, ``dev-status-1``: a cqe->res as an outcome class."""
    if res == 0:
        return "ok"
    if res > 0:
        return f"dev-status-{res}"
    return "-" + ERRNO_NAMES.get(-res, str(-res))


@dataclass(frozen=True)
class DiskConfig:
    """What the table and the generator need to know about one disk, from the guest's view."""

    name: str  # the DiskSpec id the program names (# disk)
    serial: str
    size_bytes: int
    lbs: int = 512
    read_only: bool = False
    flush: bool = True
    discard: bool = True
    write_zeroes: bool = True
    max_segments: int = 254
    max_discard_segments: int = 1
    # Not in sysfs: QEMU's virtio-blk offers max_write_zeroes_seg = 1.
    max_write_zeroes_segments: int = 1
    max_discard_sectors: int = 0xFFFFFFFF
    max_write_zeroes_sectors: int = 0xFFFFFFFF
    # A property of the kernel, not the disk: io_uring_cmd_import_fixed_vec() (Linux 6.15+) lets
    # the mainline series take a registered buffer with an iovec array; the 6.12 backport refuses it.
    fixed_vec: bool = True

    @property
    def capacity(self) -> int:
        """In 512-byte sectors."""
        return self.size_bytes // 512

    @property
    def lbs_sectors(self) -> int:
        return self.lbs // 512

    @classmethod
    def from_sysfs(cls, name: str, serial: str, values: dict[str, str | None],
                   kernel_release: str = "") -> "DiskConfig":
        """From the agent's ``sysfs`` answer for SYSFS_PATHS and the guest's ``uname -r``."""
        def num(key: str, default: int) -> int:
            v = values.get(key)
            return int(v) if v not in (None, "") else default

        feats = values.get("device/features") or ""
        bit = lambda b: len(feats) > b and feats[b] == "1"  # noqa: E731
        return cls(
            name=name, serial=serial, size_bytes=num("size", 0) * 512,
            lbs=num("queue/logical_block_size", 512), read_only=num("ro", 0) == 1,
            flush=bit(F_FLUSH), discard=bit(F_DISCARD), write_zeroes=bit(F_WRITE_ZEROES),
            max_segments=num("queue/max_segments", 254),
            max_discard_segments=num("queue/max_discard_segments", 1),
            max_discard_sectors=num("queue/discard_max_hw_bytes", 0xFFFFFFFF * 512) // 512,
            max_write_zeroes_sectors=num("queue/write_zeroes_max_bytes", 0xFFFFFFFF * 512) // 512,
            fixed_vec=takes_fixed_vec(kernel_release),
        )


SYSFS_PATHS = ("size", "ro", "queue/logical_block_size", "queue/max_segments", "queue/max_discard_segments",
               "queue/discard_max_hw_bytes", "queue/write_zeroes_max_bytes", "device/features")


@dataclass(frozen=True)
class Caller:
    root: bool = True  # CAP_SYS_ADMIN
    uid: int = 0

    @classmethod
    def of(cls, program: Program) -> "Caller":
        return cls() if program.user is None else cls(root=False, uid=program.user)

    @property
    def name(self) -> str:
        return "root" if self.root else f"uid {self.uid}"


@dataclass(frozen=True)
class Expect:
    """The accepted cqe->res values and the rows that gave them."""

    accepted: frozenset[int]
    rules: tuple[str, ...]  # rows that applied ("valid" when none)
    notes: tuple[str, ...] = ()  # the fd's open mode where v2 refuses by it (a permission errno is then one bug)

    @property
    def ok(self) -> bool:
        return self.accepted == frozenset({0})

    def describe(self) -> str:
        return " or ".join(errno_name(r) for r in sorted(self.accepted, reverse=True))


# -- what the command carries -------------------------------------------------------


def is_vec(step: Step) -> bool:
    return step.cmd_op == CMD_IO_VEC


def data_bytes(step: Step) -> int | None:
    """Bytes a READ/WRITE moves as the kernel would count them; None when the data
    pointer is not what the executor laid out (cmd_op 2 over a plain buffer)."""
    if is_vec(step):
        if not step.iov:
            return None
        return sum(step.iov[: step.cmd_data_len])
    return step.cmd_data_len


def ranges_sent(step: Step) -> tuple[tuple[int, int, int], ...]:
    """The ranges the kernel reads: data_len / 16 of them (from the executor's list)."""
    return step.ranges[: step.cmd_data_len // RANGE_BYTES]


def unmapped(step: Step) -> bool:
    return step.buf in ("unmapped", "null")


def fixed(step: Step) -> bool:
    return step.buf in ("fixed", "fixed-oob")


IOPRIO_CLASS_RT = 1


def ioprio_bad(ioprio: int) -> bool:
    """ioprio_check_cap(): class (bits 13-15) 4..7, or class NONE with a level."""
    cls = (ioprio >> 13) & 7
    return cls >= 4 or (cls == 0 and ioprio & 7 != 0)


# -- the rows -----------------------------------------------------------------------

Rule = tuple[str, int, Callable[[Step, Program, DiskConfig, Caller], bool]]


def _blocks(step: Step) -> bool:
    return step.type in BLOCK_TYPES


def _read_type(step: Step) -> bool:
    return step.type in (T_IN, T_GET_ID)


def _beyond(step: Step, disk: DiskConfig) -> bool:
    n = data_bytes(step)
    return n is not None and step.sector + n // 512 > disk.capacity


def _range_bad(step: Step, disk: DiskConfig) -> bool:
    wz = step.type == T_WRITE_ZEROES
    flags_ok = WZ_FLAG_UNMAP if wz else 0
    max_sectors = disk.max_write_zeroes_sectors if wz else disk.max_discard_sectors
    mask = disk.lbs_sectors - 1
    return any(f & ~flags_ok or not n or n > max_sectors or (s | n) & mask for s, n, f in ranges_sent(step))


def _range_beyond(step: Step, disk: DiskConfig) -> bool:
    return any(s + n > disk.capacity for s, n, _ in ranges_sent(step))


def _range_count(step: Step, disk: DiskConfig) -> int:
    return disk.max_write_zeroes_segments if step.type == T_WRITE_ZEROES else disk.max_discard_segments


ROWS: tuple[Rule, ...] = (
    # The ring and the command itself.
    ("64-byte SQE ring", EOPNOTSUPP, lambda s, p, d, c: p.sqe != 128),
    ("unknown cmd_op", ENOTTY, lambda s, p, d, c: s.cmd_op not in (CMD_IO, CMD_IO_VEC)),
    ("flag != 0", EINVAL, lambda s, p, d, c: s.flag != 0),
    ("unknown or disallowed type", EINVAL, lambda s, p, d, c: s.type not in KNOWN_TYPES),
    # Who may do it.
    ("no write permission (not root)", EACCES,
     lambda s, p, d, c: not c.root and s.type in CHANGE_TYPES and p.mode == "ro"),
    ("write-type on a read-only disk", EROFS, lambda s, p, d, c: s.type in CHANGE_TYPES and d.read_only),
    ("fixed buffer with an iovec array (6.12)", EINVAL,
     lambda s, p, d, c: is_vec(s) and fixed(s) and not d.fixed_vec),
    ("ioprio invalid", EINVAL, lambda s, p, d, c: ioprio_bad(s.ioprio)),
    # ioprio_check_cap(): the real-time class needs CAP_SYS_ADMIN or CAP_SYS_NICE.
    ("ioprio real-time class without CAP_SYS_NICE", EPERM,
     lambda s, p, d, c: not c.root and (s.ioprio >> 13) & 7 == IOPRIO_CLASS_RT),
    # READ / WRITE.
    ("zero length", EINVAL, lambda s, p, d, c: _blocks(s) and (s.cmd_data_len == 0 or data_bytes(s) == 0)),
    ("sector not logical-block aligned", EINVAL, lambda s, p, d, c: _blocks(s) and s.sector % d.lbs_sectors != 0),
    ("iovec count over max_segments", EINVAL,
     lambda s, p, d, c: _blocks(s) and is_vec(s) and s.cmd_data_len > d.max_segments),
    ("length not logical-block aligned", EINVAL,
     lambda s, p, d, c: _blocks(s) and (data_bytes(s) or 0) % d.lbs != 0),
    ("cmd_op 2 without an iovec array", EINVAL, lambda s, p, d, c: _blocks(s) and is_vec(s) and not s.iov),
    ("cmd_op 2 without an iovec array (garbage iovecs)", EFAULT,
     lambda s, p, d, c: _blocks(s) and is_vec(s) and not s.iov),
    ("beyond capacity", ERANGE,
     lambda s, p, d, c: _blocks(s) and _beyond(s, d) and s.sector + (data_bytes(s) or 0) // 512 < U64),
    ("sector + length wraps past 2^64", ERANGE,
     lambda s, p, d, c: _blocks(s) and s.sector + (data_bytes(s) or 0) // 512 >= U64),
    ("longer than the largest transfer (2 GiB)", EINVAL,
     lambda s, p, d, c: _blocks(s) and (data_bytes(s) or 0) >= 1 << 31),
    ("data_len past the end of the buffer", EFAULT,
     lambda s, p, d, c: _blocks(s) and not is_vec(s) and s.cmd_data_len > max(s.len, 0) + (64 << 20)),
    # FLUSH.
    ("flush with data or a sector", EINVAL, lambda s, p, d, c: s.type == T_FLUSH and (s.cmd_data_len or s.sector)),
    ("flush not negotiated", EOPNOTSUPP, lambda s, p, d, c: s.type == T_FLUSH and not d.flush),
    # GET_ID.
    ("get-id not 20 bytes at sector 0 in one buffer", EINVAL,
     lambda s, p, d, c: s.type == T_GET_ID and (is_vec(s) or s.sector != 0 or s.cmd_data_len != ID_BYTES)),
    # DISCARD / WRITE_ZEROES.
    ("range list not whole 16-byte ranges in one plain buffer", EINVAL,
     lambda s, p, d, c: s.type in RANGE_TYPES and (is_vec(s) or fixed(s) or s.cmd_data_len == 0
                                                   or s.cmd_data_len % RANGE_BYTES != 0)),
    ("discard not negotiated", EOPNOTSUPP, lambda s, p, d, c: s.type == T_DISCARD and not d.discard),
    ("write-zeroes not negotiated", EOPNOTSUPP, lambda s, p, d, c: s.type == T_WRITE_ZEROES and not d.write_zeroes),
    ("more ranges than the device takes", EINVAL,
     lambda s, p, d, c: s.type in RANGE_TYPES and s.cmd_data_len // RANGE_BYTES > _range_count(s, d)),
    ("a range with bad flags, zero, unaligned or over the limit", EINVAL,
     lambda s, p, d, c: s.type in RANGE_TYPES and _range_bad(s, d)),
    ("a range beyond capacity (or wrapping)", ERANGE, lambda s, p, d, c: s.type in RANGE_TYPES and _range_beyond(s, d)),
    # Memory.
    ("unmapped buffer", EFAULT,
     lambda s, p, d, c: unmapped(s) and (s.type in (T_IN, T_OUT, T_GET_ID) or s.type in RANGE_TYPES)),
    # (an iovec array in a registered buffer is laid out inside it, fixed-oob or not)
    ("fixed buffer range outside the registered buffer", EFAULT,
     lambda s, p, d, c: s.buf == "fixed-oob" and not is_vec(s) and s.type in (T_IN, T_OUT, T_GET_ID)),
)

# Rows whose answer the contract leaves open: 0 is accepted as well.
LENIENT: tuple[Rule, ...] = (
    ("cmd_op 2 or a fixed buffer on a type without data", EINVAL,
     lambda s, p, d, c: s.type == T_FLUSH and (is_vec(s) or fixed(s))),
    ("ioprio bits above 16", EINVAL, lambda s, p, d, c: s.ioprio >= 1 << 16),
    # Iovecs too long for the step's slot all start at its base (the executor's layout), so
    # one of them may run past the registered buffer's end, or not.
    ("iovec array in a registered buffer longer than its slot", EFAULT,
     lambda s, p, d, c: d.fixed_vec and is_vec(s) and fixed(s) and bool(s.iov) and sum(s.iov) > STEP_BYTES),
    # Stricter than fsync(2), but v2 does it and the contract leaves it open (review-v2.md #11).
    ("flush on a read-only disk", EROFS, lambda s, p, d, c: s.type == T_FLUSH and d.read_only),
)

ROW_NAMES = tuple(r[0] for r in ROWS + LENIENT)


def expect(step: Step, program: Program, disk: DiskConfig, caller: Caller | None = None) -> Expect:
    """The accepted cqe->res values for ``step`` run by ``program`` on ``disk`` (by ``caller``,
    default: who the program runs as)."""
    caller = caller or Caller.of(program)
    assert step.buf in BUF_KINDS, step.buf
    # A 64-byte SQE ring carries only 16 bytes of the command: nothing else is judged.
    if program.sqe != 128:
        return Expect(frozenset({-EOPNOTSUPP}), (ROWS[0][0],))
    fired = [(name, err) for name, err, pred in ROWS if pred(step, program, disk, caller)]
    lenient = [(name, err) for name, err, pred in LENIENT if pred(step, program, disk, caller)]
    notes = []
    # The fd's open mode where v2 refuses by it (reads on O_WRONLY, write-types on O_RDONLY): the
    # contract lets root through and answers others -EACCES only for changes on an O_RDONLY fd.
    if (_read_type(step) and program.mode == "wo") or (step.type in WRITE_TYPES and program.mode == "ro"):
        notes.append(f"{caller.name} on an O_{ {'ro': 'RDONLY', 'wo': 'WRONLY'}[program.mode]} fd")
    if not fired and not lenient:
        return Expect(frozenset({0}), ("valid",), tuple(notes))
    accepted = {-err for _, err in fired + lenient}
    if not fired:
        accepted.add(0)
    return Expect(frozenset(accepted), tuple(name for name, _ in fired + lenient), tuple(notes))


def effects(step: Step, disk: DiskConfig) -> list[tuple[str, int, int, int]]:
    """What a command that succeeded did to the disk: (kind, sector, sectors, seed) with
    kind write/zero/discard, clipped to the disk. Empty for reads and flushes."""
    out: list[tuple[str, int, int, int]] = []
    if step.type == T_OUT:
        n = data_bytes(step) or 0
        out.append(("write", step.sector, n // 512, step.seed))
    elif step.type in RANGE_TYPES:
        kind = "zero" if step.type == T_WRITE_ZEROES else "discard"
        out += [(kind, s, n, 0) for s, n, _ in ranges_sent(step)]
    clipped = []
    for kind, s, n, seed in out:
        end = min(s + n, disk.capacity)
        if s < end:
            clipped.append((kind, s, end - s, seed))
    return clipped
