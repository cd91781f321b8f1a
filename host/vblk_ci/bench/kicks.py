"""Device notifications from QEMU's trace log: how many requests each virtqueue kick carried.

QEMU's ``log`` trace backend writes one line per enabled event to the ``-D`` file, e.g.
``virtio_queue_notify vdev 0x55d0... n 0 vq 0x55d0...`` (optionally prefixed by
``pid@secs:``). Per run the bench enables three events over QMP (``trace-event-set-state``),
reads what the run appended, and counts, for the virtio-blk device that completed
requests (the agent's virtio-serial device kicks too, so lines are split by ``vdev``):

- ``virtio_queue_notify``      guest -> device kicks (MMIO/PIO doorbell writes)
- ``virtio_blk_req_complete``  requests the device completed
- ``virtio_notify`` / ``virtio_notify_irqfd``  device -> guest interrupts (used-buffer
  notifications; virtio-blk in QEMU 7.2 signals through the irqfd path even under TCG)

requests per kick = completions / kicks; requests per interrupt = completions / interrupts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

EVENTS = ("virtio_queue_notify", "virtio_blk_req_complete", "virtio_notify", "virtio_notify_irqfd")
_LINE = re.compile(r"(?:^|[\s:])(virtio_queue_notify|virtio_blk_req_complete|virtio_notify_irqfd|virtio_notify)"
                   r" vdev (0x[0-9a-fA-F]+|\(nil\))")


@dataclass(frozen=True)
class KickCounts:
    kicks: int
    completions: int
    interrupts: int
    vdev: str | None

    @property
    def reqs_per_kick(self) -> float | None:
        return self.completions / self.kicks if self.kicks else None

    @property
    def reqs_per_interrupt(self) -> float | None:
        return self.completions / self.interrupts if self.interrupts else None

    def to_json(self) -> dict:
        return {"kicks": self.kicks, "completions": self.completions, "interrupts": self.interrupts,
                "vdev": self.vdev, "reqs_per_kick": self.reqs_per_kick,
                "reqs_per_interrupt": self.reqs_per_interrupt}


def count(text: str) -> KickCounts:
    """Counts for the device with the most completed requests in ``text``."""
    per: dict[str, list[int]] = {}
    for m in _LINE.finditer(text):
        c = per.setdefault(m.group(2), [0, 0, 0])
        c[min(EVENTS.index(m.group(1)), 2)] += 1  # both notify events are interrupts
    blk = {v: c for v, c in per.items() if c[1]}
    if not blk:
        return KickCounts(0, 0, 0, None)
    vdev = max(blk, key=lambda v: blk[v][1])
    kicks, done, irqs = blk[vdev]
    return KickCounts(kicks, done, irqs, vdev)


class TraceTail:
    """Reads what QEMU appended to its trace log since the last ``take()``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def take(self) -> str:
        if not self.path.exists():
            return ""
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        return data.decode("utf-8", "replace")
