"""The both-side configuration check: what QEMU says and what the guest says about a
plugged disk must both agree with its DiskSpec before any workload runs.

Three pure steps and two collectors:

- ``expected_queues``: the queue layout the guest driver will pick (virtio_blk caps
  request queues at the vCPU count and takes poll queues out of the same total).
- ``qemu_view`` / ``guest_view``: read the live state (QMP ``qom-get``,
  ``query-block``, ``query-iothreads``; guest sysfs/debugfs through testinfra) into
  flat dicts, which runs record (and unit tests replay from tests/unit/data/config/).
- ``compare``: one ``FieldCheck`` per field with the spec value, what each side
  should show and what it showed; ``mismatches`` keeps the ones that disagree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .spec import CACHE_MODES, DiskSpec

# QEMU's iothread poll defaults (IOThread: poll-max-ns 32768, grow and shrink 0 = automatic).
IOTHREAD_POLL_DEFAULTS = {"poll-max-ns": 32768, "poll-grow": 0, "poll-shrink": 0}

# Not observed on that side (the field has no counterpart there).
NA = None


@dataclass(frozen=True)
class QueueLayout:
    """The hardware queues the guest driver sets up for one disk."""

    hw_queues: int  # entries in /sys/block/vdX/mq (all maps)
    poll_queues: int
    default_queues: int
    note: str  # how the clamp came about, "" when nothing was capped


def expected_queues(num_queues: int, vcpus: int, poll_queues: int = 0, num_request_queues: int = 0) -> QueueLayout:
    """virtio_blk's init_vq: ``min(min_not_zero(num_request_queues, nr_cpu_ids), num-queues)``
    request queues, of which ``min(poll_queues, total - 1)`` are poll queues."""
    cap = min(num_request_queues, vcpus) if num_request_queues else vcpus
    hw = min(cap, num_queues)
    poll = min(poll_queues, hw - 1)
    notes = []
    if hw < num_queues:
        why = f"num_request_queues={num_request_queues}" if num_request_queues and num_request_queues < vcpus \
            else f"{vcpus} vCPU{'s' if vcpus != 1 else ''}"
        notes.append(f"num-queues {num_queues} capped at {hw} by {why}")
    if poll < poll_queues:
        notes.append(f"poll_queues {poll_queues} capped at {poll} (one queue stays default)")
    return QueueLayout(hw, poll, hw - poll, "; ".join(notes))


@dataclass(frozen=True)
class FieldCheck:
    disk: str
    field: str
    spec: Any
    want_qemu: Any
    qemu: Any
    want_guest: Any
    guest: Any
    note: str = ""

    @property
    def ok(self) -> bool:
        return (self.want_qemu is NA or self.qemu == self.want_qemu) and \
            (self.want_guest is NA or self.guest == self.want_guest)

    def describe(self) -> str:
        def side(want: Any, got: Any) -> str:
            if want is NA:
                return "-"
            return repr(got) if got == want else f"{got!r} (want {want!r})"

        text = (f"disk {self.disk}: {self.field}: spec {self.spec!r}, QEMU {side(self.want_qemu, self.qemu)}, "
                f"guest {side(self.want_guest, self.guest)}")
        return f"{text} [{self.note}]" if self.note else text

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


# -- collectors ----------------------------------------------------------------------------

QOM_PROPERTIES = ("num-queues", "queue-size", "logical_block_size", "physical_block_size", "discard",
                  "write-zeroes", "serial", "iothread")


def qemu_view(machine, disk: DiskSpec) -> dict:
    """What QEMU reports for ``disk``'s device, block backend and iothread (flat dict)."""
    from ..errors import QmpError

    path = f"/machine/peripheral/{disk.id}"
    view: dict = {}
    for prop in QOM_PROPERTIES:
        try:
            view[prop] = machine.qmp("qom-get", {"path": path, "property": prop})
        except QmpError as exc:
            view[prop] = f"<{exc.error_class}>"
    if disk.iothread_vq_mapping:
        try:
            view["iothread-vq-mapping"] = machine.qmp("qom-get", {"path": path, "property": "iothread-vq-mapping"})
        except QmpError as exc:
            view["iothread-vq-mapping"] = f"<{exc.error_class}>"
    # The ring size QEMU really set up (qom-get shows the property, not the vring).
    try:
        status = machine.qmp("x-query-virtio-queue-status", {"path": f"{path}/virtio-backend", "queue": 0})
        view["virtio.vring-num"] = status.get("vring-num")
    except QmpError as exc:
        view["virtio.vring-num"] = f"<{exc.error_class}>"
    block = next((b for b in machine.qmp("query-block")
                  if b.get("qdev") in (f"{path}/virtio-backend", path) or b.get("device") == disk.id), None)
    inserted = (block or {}).get("inserted") or {}
    cache = inserted.get("cache") or {}
    view.update({
        "block.found": block is not None,
        "block.ro": inserted.get("ro"),
        "block.drv": inserted.get("drv"),
        "block.detect_zeroes": inserted.get("detect_zeroes"),
        "block.virtual-size": (inserted.get("image") or {}).get("virtual-size"),
        "block.cache.direct": cache.get("direct"),
        "block.cache.no-flush": cache.get("no-flush"),
        "block.cache.writeback": cache.get("writeback"),
    })
    if disk.iothread_id is not None:
        thread = next((t for t in machine.qmp("query-iothreads") if t.get("id") == disk.iothread_id), {})
        for key in IOTHREAD_POLL_DEFAULTS:
            view[f"iothread.{key}"] = thread.get(key)
    return view


GUEST_QUEUE_FILES = ("logical_block_size", "physical_block_size", "nr_requests", "discard_max_bytes",
                     "write_zeroes_max_bytes", "write_cache", "io_poll")


def guest_view(host, name: str) -> dict:
    """What the guest shows for block device ``name`` (``vda``), read through testinfra ``host``."""
    base = f"/sys/block/{name}"
    view: dict = {}
    for fname in GUEST_QUEUE_FILES:
        f = host.file(f"{base}/queue/{fname}")
        view[f"queue.{fname}"] = f.content_string.strip() if f.exists else None
    for fname in ("ro", "size", "serial"):
        f = host.file(f"{base}/{fname}")
        view[fname] = f.content_string.strip() if f.exists else None
    mq = host.run(f"ls {base}/mq")
    view["mq.count"] = len(mq.stdout.split()) if mq.rc == 0 else None
    # Which map each hctx belongs to; debugfs only (sysfs does not say).
    types = host.run(f"cat /sys/kernel/debug/block/{name}/hctx*/type")
    view["hctx.types"] = types.stdout.split() if types.rc == 0 and types.stdout.strip() else None
    # The tag depth is the virtqueue size the driver took (nr_requests depends on the scheduler).
    tags = host.run(f"grep -h '^depth=' /sys/kernel/debug/block/{name}/hctx0/tags")
    view["hctx0.tags.depth"] = tags.stdout.strip().split("=", 1)[1] if tags.rc == 0 and "=" in tags.stdout else None
    for param in ("poll_queues", "num_request_queues"):
        f = host.file(f"/sys/module/virtio_blk/parameters/{param}")
        view[f"param.{param}"] = f.content_string.strip() if f.exists else None
    view["class.chardev"] = host.file(f"/sys/class/vblk-generic/{name}c0").exists
    view["dev.chardev"] = host.file(f"/dev/{name}c0").is_character_device
    view["nproc"] = host.check_output("nproc")
    return view


# -- comparison ----------------------------------------------------------------------------


def _int(value: Any) -> Any:
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


def compare(disk: DiskSpec, vcpus: int, qemu: dict, guest: dict) -> list[FieldCheck]:
    """One FieldCheck per configured field; the guest half from ``guest_view`` output."""
    d = disk.id
    layout = expected_queues(disk.num_queues, vcpus, disk.guest_poll_queues, disk.guest_num_request_queues)
    types = guest.get("hctx.types")
    guest_poll = types.count("poll") if isinstance(types, list) else None
    direct, no_flush, wce = CACHE_MODES[disk.cache]
    drv = "null-co" if disk.backend == "null" else disk.format
    iothread_path = f"/objects/{disk.iothread_id}" if disk.iothread_id and not disk.iothread_vq_mapping else ""
    checks = [
        FieldCheck(d, "vcpus", vcpus, NA, NA, vcpus, _int(guest.get("nproc"))),
        FieldCheck(d, "num_queues", disk.num_queues, disk.num_queues, qemu.get("num-queues"),
                   layout.hw_queues, guest.get("mq.count"), layout.note),
        FieldCheck(d, "guest_poll_queues", disk.guest_poll_queues, NA, NA, layout.poll_queues, guest_poll,
                   layout.note if "poll" in layout.note else ""),
        FieldCheck(d, "guest_poll_queues.param", disk.guest_poll_queues, NA, NA, disk.guest_poll_queues,
                   _int(guest.get("param.poll_queues"))),
        FieldCheck(d, "guest_num_request_queues.param", disk.guest_num_request_queues, NA, NA,
                   disk.guest_num_request_queues, _int(guest.get("param.num_request_queues"))),
        FieldCheck(d, "io_poll", layout.poll_queues > 0, NA, NA, int(layout.poll_queues > 0),
                   _int(guest.get("queue.io_poll"))),
        FieldCheck(d, "queue_size", disk.queue_size, disk.queue_size, qemu.get("queue-size"),
                   disk.queue_size, _int(guest.get("hctx0.tags.depth"))),
        FieldCheck(d, "queue_size.vring", disk.queue_size, disk.queue_size, qemu.get("virtio.vring-num"), NA, NA),
        FieldCheck(d, "logical_block_size", disk.logical_block_size, disk.logical_block_size,
                   qemu.get("logical_block_size"), disk.logical_block_size,
                   _int(guest.get("queue.logical_block_size"))),
        FieldCheck(d, "physical_block_size", disk.effective_physical_block_size, disk.effective_physical_block_size,
                   qemu.get("physical_block_size"), disk.effective_physical_block_size,
                   _int(guest.get("queue.physical_block_size"))),
        FieldCheck(d, "read_only", disk.read_only, disk.read_only, qemu.get("block.ro"), int(disk.read_only),
                   _int(guest.get("ro"))),
        FieldCheck(d, "size_bytes", disk.size_bytes, disk.size_bytes, qemu.get("block.virtual-size"),
                   disk.size_bytes, (_int(guest.get("size")) or 0) * 512 if guest.get("size") is not None else None),
        FieldCheck(d, "serial", disk.serial, disk.serial, qemu.get("serial"), disk.serial, guest.get("serial")),
        FieldCheck(d, "discard", disk.discard, disk.discard, qemu.get("discard"), disk.discard,
                   _int(guest.get("queue.discard_max_bytes")) not in (0, None) if "queue.discard_max_bytes" in guest
                   else None),
        FieldCheck(d, "write_zeroes", disk.write_zeroes, disk.write_zeroes, qemu.get("write-zeroes"),
                   disk.write_zeroes,
                   _int(guest.get("queue.write_zeroes_max_bytes")) not in (0, None)
                   if "queue.write_zeroes_max_bytes" in guest else None),
        FieldCheck(d, "backend", disk.backend, drv, qemu.get("block.drv"), NA, NA),
        FieldCheck(d, "cache.direct", disk.cache, direct, qemu.get("block.cache.direct"), NA, NA),
        FieldCheck(d, "cache.no-flush", disk.cache, no_flush, qemu.get("block.cache.no-flush"), NA, NA),
        FieldCheck(d, "write_cache", disk.cache, wce, qemu.get("block.cache.writeback"),
                   "write back" if wce else "write through", guest.get("queue.write_cache")),
        FieldCheck(d, "detect_zeroes", disk.detect_zeroes, disk.detect_zeroes, qemu.get("block.detect_zeroes"),
                   NA, NA),
        FieldCheck(d, "iothread", disk.iothread, iothread_path, qemu.get("iothread") or "", NA, NA),
        FieldCheck(d, "chardev", True, NA, NA, (True, True),
                   (guest.get("class.chardev"), guest.get("dev.chardev")),
                   "/sys/class/vblk-generic/{name}c0 and /dev/{name}c0"),
    ]
    if disk.iothread_id is not None:
        for key, default in IOTHREAD_POLL_DEFAULTS.items():
            value = getattr(disk, key.replace("-", "_"))
            want = default if value is None else value
            checks.append(FieldCheck(d, key.replace("-", "_"), value, want, qemu.get(f"iothread.{key}"), NA, NA))
    if disk.iothread_vq_mapping:
        checks.append(FieldCheck(d, "iothread_vq_mapping", True, [{"iothread": disk.iothread_id}],
                                 qemu.get("iothread-vq-mapping"), NA, NA))
    return checks


def mismatches(checks: list[FieldCheck]) -> list[FieldCheck]:
    return [c for c in checks if not c.ok]
