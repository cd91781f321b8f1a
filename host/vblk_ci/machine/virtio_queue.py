"""Looking at a virtio-blk request from the host: QMP virtqueue introspection,
guest memory and the block backend's counters (pure builders and parsers).

The device side of a request is what the driver put in guest memory: a
descriptor chain whose first buffer is the 16-byte ``struct
virtio_blk_outhdr`` (le32 type, le32 ioprio, le64 sector; virtio 1.0 is
little-endian). While QEMU holds a request (blkdebug ``break``), the
element it popped last is at avail index ``last-avail-idx - 1``:
``x-query-virtio-queue-status`` gives that index and
``x-query-virtio-queue-element`` the element's descriptors (QEMU >= 7.0);
HMP ``xp`` reads the header at the first descriptor's guest-physical address.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_OUT = 1
OUTHDR_BYTES = 16

# IOPRIO_PRIO_VALUE(class, level): class in bits 13..15 (include/uapi/linux/ioprio.h).
IOPRIO_CLASS_SHIFT = 13
IOPRIO_CLASS_BE = 2


def ioprio_value(klass: int, level: int) -> int:
    return (klass << IOPRIO_CLASS_SHIFT) | level


def virtio_path(disk_id: str) -> str:
    """QOM path of the VirtIODevice behind ``-device virtio-blk-pci,id=<disk_id>``."""
    return f"/machine/peripheral/{disk_id}/virtio-backend"


def queue_status_args(path: str, queue: int) -> dict:
    return {"path": path, "queue": queue}


def queue_element_args(path: str, queue: int, index: int) -> dict:
    """``index`` is an avail-ring index (taken modulo the ring size by QEMU)."""
    return {"path": path, "queue": queue, "index": index}


def last_popped_index(status: dict) -> int:
    """Avail index of the element the device popped last, from a queue-status reply."""
    if "last-avail-idx" not in status:
        raise ValueError(f"queue status has no last-avail-idx (vhost?): {sorted(status)}")
    return (int(status["last-avail-idx"]) - 1) & 0xFFFF


@dataclass(frozen=True)
class Desc:
    addr: int
    len: int
    flags: tuple[str, ...]


@dataclass(frozen=True)
class Element:
    head: int                 # descriptor index of the chain's head
    descs: tuple[Desc, ...]   # in chain order (an indirect table is followed by QEMU)


def parse_element(reply: dict) -> Element:
    """An ``x-query-virtio-queue-element`` reply -> its descriptor chain, in chain order.

    QEMU (7.2 and 10.0 seen) lists the chain backwards: the tail, the one
    without ``next``, comes first. Every descriptor but the tail has ``next``, so the
    order is told by where the tail is."""
    try:
        descs = tuple(Desc(int(d["addr"]), int(d["len"]), tuple(d.get("flags") or ()))
                      for d in reply["descs"])
        head = int(reply["index"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a queue element reply: {reply!r}") from exc
    if len(descs) > 1 and "next" not in descs[0].flags and "next" in descs[-1].flags:
        descs = descs[::-1]
    return Element(head, descs)


def header_desc(element: Element) -> Desc:
    """The out header's descriptor: the first one, device-readable, 16 bytes."""
    if not element.descs:
        raise ValueError("the element has no descriptors")
    first = element.descs[0]
    if "write" in first.flags or first.len != OUTHDR_BYTES:
        raise ValueError(f"the first descriptor is not a 16-byte out header: {first}")
    return first


def xp_args(addr: int, nbytes: int) -> dict:
    """HMP ``xp`` dumping ``nbytes`` bytes of guest-physical memory at ``addr``, one per item."""
    return {"command-line": f"xp /{nbytes}xb {addr:#x}"}


_XP_LINE = re.compile(r"^\s*([0-9a-fA-F]+):((?:\s+0x[0-9a-fA-F]{2})+)\s*$")


def parse_xp_bytes(text: str, addr: int, nbytes: int) -> bytes:
    """The bytes of an ``xp /Nxb`` dump; the lines must start at ``addr`` and be contiguous."""
    out = bytearray()
    for line in text.replace("\r", "").splitlines():
        if not line.strip():
            continue
        m = _XP_LINE.match(line)
        if not m:
            raise ValueError(f"unexpected xp output line: {line!r}")
        if int(m.group(1), 16) != addr + len(out):
            raise ValueError(f"xp line at {m.group(1)}, expected {addr + len(out):x}: {text!r}")
        out += bytes(int(tok, 16) for tok in m.group(2).split())
    if len(out) != nbytes:
        raise ValueError(f"xp gave {len(out)} bytes, expected {nbytes}: {text!r}")
    return bytes(out)


@dataclass(frozen=True)
class OutHeader:
    type: int
    ioprio: int
    sector: int

    @classmethod
    def decode(cls, raw: bytes) -> "OutHeader":
        if len(raw) != OUTHDR_BYTES:
            raise ValueError(f"virtio_blk_outhdr is {OUTHDR_BYTES} bytes, got {len(raw)}")
        return cls(*struct.unpack("<IIQ", raw))

    def to_json(self) -> dict:
        return {"type": self.type, "ioprio": hex(self.ioprio), "sector": self.sector}


# ---- query-blockstats ------------------------------------------------------


def device_stats(reply: list, disk_id: str) -> dict[str, int]:
    """The ``*_operations`` counters of the device ``disk_id`` in a ``query-blockstats`` reply
    (reads, writes, flushes, unmaps; done, failed and invalid)."""
    want = virtio_path(disk_id)
    for entry in reply:
        if entry.get("qdev") in (want, disk_id) or entry.get("device") == disk_id:
            stats = entry.get("stats") or {}
            return {k: int(v) for k, v in stats.items() if k.endswith("_operations")}
    raise ValueError(f"no blockstats entry for device {disk_id!r} "
                     f"(have {[e.get('qdev') or e.get('device') for e in reply]})")


def stats_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The counters that moved, with how much."""
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(before) | set(after))
            if after.get(k, 0) != before.get(k, 0)}
