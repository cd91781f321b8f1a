"""DiskSpec: what one hot-plugged virtio-blk disk looks like, on both sides.

Host side: backend, block layer (aio, cache, detect-zeroes), the virtio-blk device
properties and its iothread. Guest side: the virtio_blk module parameters the driver
reads at probe time (set by the agent before the hotplug). ``disks/toml_spec.py``
loads it from a scenario file; ``validate()`` raises ``UsageError`` naming the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

BACKENDS = ("null", "file")
FORMATS = ("raw", "qcow2")

_ID_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,30}$")
# virtio-blk serials are at most 20 bytes (VIRTIO_BLK_ID_BYTES); keep them printable.
_SERIAL_RE = re.compile(r"^[A-Za-z0-9_.-]{1,20}$")


# blkdebug events a rule may name (QEMU's BlkdebugEvent subset the suites use).
INJECT_EVENTS = ("read_aio", "write_aio", "flush_to_disk", "pwritev", "preadv")
# QEMU's BlockdevOnError values for virtio-blk (rerror has no enospc).
RERROR_POLICIES = ("report", "ignore", "stop", "auto")
WERROR_POLICIES = ("report", "ignore", "enospc", "stop", "auto")

IOTHREAD_MODES = ("none", "shared", "per-disk")
AIO_MODES = ("threads", "native", "io_uring")
DETECT_ZEROES = ("off", "on", "unmap")
# QEMU's -drive cache= shorthands as (cache.direct, cache.no-flush, device write-cache).
CACHE_MODES: dict[str, tuple[bool, bool, bool]] = {
    "writeback": (False, False, True),
    "none": (True, False, True),
    "writethrough": (False, False, False),
    "directsync": (True, False, False),
    "unsafe": (False, True, True),
}
# The iothread every ``iothread = "shared"`` disk uses.
SHARED_IOTHREAD_ID = "iot-shared"


@dataclass(frozen=True)
class InjectError:
    """One blkdebug ``inject-error`` rule, fixed when the disk is plugged.

    The disk graph becomes format -> blkdebug -> file: blkdebug must be the
    format node's direct child for ``read_aio``/``write_aio`` to reach it.
    """

    event: str = "read_aio"
    sector: int | None = None
    errno: int = 5  # EIO: QEMU's virtio-blk answers VIRTIO_BLK_S_IOERR
    once: bool = False

    def qmp(self) -> dict:
        rule: dict = {"event": self.event, "errno": self.errno, "once": self.once}
        if self.sector is not None:
            rule["sector"] = self.sector
        return rule


@dataclass(frozen=True)
class DiskSpec:
    id: str
    serial: str
    backend: str = "null"
    size_bytes: int = 64 << 20
    num_queues: int = 2
    queue_size: int = 256
    path: Path | None = None
    format: str = "raw"
    read_only: bool = False
    logical_block_size: int = 512
    inject_errors: tuple[InjectError, ...] = ()
    # Offer VIRTIO_BLK_F_DISCARD / F_WRITE_ZEROES (device_add ``discard``/``write-zeroes``);
    # with discard on, the file backend's nodes get ``discard: unmap`` so a discard punches.
    discard: bool = True
    write_zeroes: bool = True
    # null backend only: how long each request takes (null-co ``latency-ns``), to keep
    # commands in flight in the device.
    latency_ns: int = 0
    # physical_block_size 0 = same as logical_block_size.
    physical_block_size: int = 0
    # Block layer: file backend only for aio/cache (null-co has neither).
    aio: str = "threads"
    cache: str = "writeback"
    detect_zeroes: str = "off"
    # iothread: none, one shared by every disk of the VM, or one per disk; the poll
    # settings are the iothread object's (None = QEMU's default).
    iothread: str = "none"
    poll_max_ns: int | None = None
    poll_grow: int | None = None
    poll_shrink: int | None = None
    # Map every virtqueue to the iothread with iothread-vq-mapping (QEMU >= 9.0).
    iothread_vq_mapping: bool = False
    # Guest side: virtio_blk.poll_queues and num_request_queues (0 = no cap) at probe.
    guest_poll_queues: int = 0
    guest_num_request_queues: int = 0

    @property
    def effective_physical_block_size(self) -> int:
        return self.physical_block_size or self.logical_block_size

    @property
    def iothread_id(self) -> str | None:
        """The iothread object this disk's device runs in, or None."""
        if self.iothread == "shared":
            return SHARED_IOTHREAD_ID
        if self.iothread == "per-disk":
            return f"iot-{self.id}"
        return None
    # virtio-blk error policies (device_add ``rerror``/``werror``); None leaves QEMU's default.
    rerror: str | None = None
    werror: str | None = None

    @property
    def node_name(self) -> str:
        """The blockdev node the device is attached to."""
        return f"{self.id}-fmt"

    @property
    def file_node_name(self) -> str:
        """The protocol node under the format node (file backend only)."""
        return f"{self.id}-file"

    @property
    def debug_node_name(self) -> str:
        """The blkdebug node between format and file, when errors are injected."""
        return f"{self.id}-dbg"

    def validate(self) -> "DiskSpec":
        def bad(field: str, why: str) -> UsageError:
            return UsageError(f"disk {self.id!r}: {field}: {why}")

        if not isinstance(self.id, str) or not _ID_RE.match(self.id):
            raise bad("id", "must start with a letter and use letters, digits, '_', '.', '-' (max 31)")
        if not isinstance(self.serial, str) or not _SERIAL_RE.match(self.serial):
            raise bad("serial", "must be 1-20 characters of letters, digits, '_', '.', '-'")
        if self.backend not in BACKENDS:
            raise bad("backend", f"must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if not _is_int(self.logical_block_size) or self.logical_block_size not in (512, 1024, 2048, 4096):
            raise bad("logical_block_size", "must be 512, 1024, 2048 or 4096")
        if not _is_int(self.size_bytes) or self.size_bytes <= 0:
            raise bad("size_bytes", "must be a positive integer")
        if self.size_bytes % self.logical_block_size:
            raise bad("size_bytes", f"must be a multiple of logical_block_size ({self.logical_block_size})")
        if not _is_int(self.num_queues) or not 1 <= self.num_queues <= 1024:
            raise bad("num_queues", "must be an integer in 1..1024")
        if not _is_int(self.queue_size) or not 2 <= self.queue_size <= 1024 or self.queue_size & (self.queue_size - 1):
            raise bad("queue_size", "must be a power of two in 2..1024")
        for flag in ("read_only", "discard", "write_zeroes"):
            if not isinstance(getattr(self, flag), bool):
                raise bad(flag, "must be true or false")
        if not _is_int(self.latency_ns) or not 0 <= self.latency_ns <= 10**10:
            raise bad("latency_ns", "must be an integer in 0..10^10 (10 s)")
        if self.latency_ns and self.backend != "null":
            raise bad("latency_ns", "is only valid with the null backend")
        if not _is_int(self.physical_block_size) or self.physical_block_size not in (0, 512, 1024, 2048, 4096):
            raise bad("physical_block_size", "must be 512, 1024, 2048 or 4096 (or 0: same as logical)")
        if self.effective_physical_block_size < self.logical_block_size:
            raise bad("physical_block_size", "must not be smaller than logical_block_size")
        if self.aio not in AIO_MODES:
            raise bad("aio", f"must be one of {', '.join(AIO_MODES)}, not {self.aio!r}")
        if self.cache not in CACHE_MODES:
            raise bad("cache", f"must be one of {', '.join(CACHE_MODES)}, not {self.cache!r}")
        if self.detect_zeroes not in DETECT_ZEROES:
            raise bad("detect_zeroes", f"must be one of {', '.join(DETECT_ZEROES)}, not {self.detect_zeroes!r}")
        if self.detect_zeroes == "unmap" and not self.discard:
            raise bad("detect_zeroes", "'unmap' needs discard = true")
        if self.backend != "file" and (self.aio != "threads" or self.cache != "writeback"):
            raise bad("aio" if self.aio != "threads" else "cache", "is only valid with the file backend")
        if self.aio == "native" and not CACHE_MODES[self.cache][0]:
            raise bad("aio", "'native' needs O_DIRECT: cache = \"none\" or \"directsync\"")
        if self.iothread not in IOTHREAD_MODES:
            raise bad("iothread", f"must be one of {', '.join(IOTHREAD_MODES)}, not {self.iothread!r}")
        for knob in ("poll_max_ns", "poll_grow", "poll_shrink"):
            value = getattr(self, knob)
            if value is None:
                continue
            if not _is_int(value) or value < 0:
                raise bad(knob, "must be a non-negative integer")
            if self.iothread == "none":
                raise bad(knob, "needs an iothread (iothread = \"shared\" or \"per-disk\")")
        if not isinstance(self.iothread_vq_mapping, bool):
            raise bad("iothread_vq_mapping", "must be true or false")
        if self.iothread_vq_mapping and self.iothread == "none":
            raise bad("iothread_vq_mapping", "needs an iothread (iothread = \"shared\" or \"per-disk\")")
        if not _is_int(self.guest_poll_queues) or not 0 <= self.guest_poll_queues <= 1024:
            raise bad("guest_poll_queues", "must be an integer in 0..1024")
        if not _is_int(self.guest_num_request_queues) or not 0 <= self.guest_num_request_queues <= 1024:
            raise bad("guest_num_request_queues", "must be an integer in 0..1024 (0: no cap)")
        if self.backend == "file":
            if self.path is None:
                raise bad("path", "is required for the file backend")
            if self.format not in FORMATS:
                raise bad("format", f"must be one of {', '.join(FORMATS)}, not {self.format!r}")
        elif self.path is not None:
            raise bad("path", "is only valid with the file backend")
        if self.inject_errors and self.backend != "file":
            raise bad("inject_errors", "needs the file backend (blkdebug sits above the file node)")
        for rule in self.inject_errors:
            if not isinstance(rule, InjectError) or rule.event not in INJECT_EVENTS:
                raise bad("inject_errors", f"event must be one of {', '.join(INJECT_EVENTS)}")
            if rule.sector is not None and (not _is_int(rule.sector) or rule.sector < 0):
                raise bad("inject_errors", "sector must be a non-negative integer")
            if not _is_int(rule.errno) or rule.errno <= 0:
                raise bad("inject_errors", "errno must be a positive integer")
        if self.rerror is not None and self.rerror not in RERROR_POLICIES:
            raise bad("rerror", f"must be one of {', '.join(RERROR_POLICIES)}, not {self.rerror!r}")
        if self.werror is not None and self.werror not in WERROR_POLICIES:
            raise bad("werror", f"must be one of {', '.join(WERROR_POLICIES)}, not {self.werror!r}")
        return self


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def create_sparse_file(path: Path, size_bytes: int) -> Path:
    """Create (or truncate) a sparse raw image of ``size_bytes``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size_bytes)
    return path
