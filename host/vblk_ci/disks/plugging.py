"""Plug configured DiskSpecs: images, iothread objects and guest module parameters first.

``Machine.plug`` does blockdev-add + device_add; a DiskSpec with an iothread also needs
the iothread object to exist, a file backend its image, and a guest-side
``poll_queues``/``num_request_queues`` must be in the virtio_blk module parameters
before the device is probed. ``DiskPlugger`` does those around the Machine calls and
removes per-disk iothreads after the unplug (a shared one stays for the VM's life).
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import InfraError, MissingPrerequisite, QmpError
from ..machine import argv as A
from .spec import DiskSpec, create_sparse_file

PARAM_DIR = "/sys/module/virtio_blk/parameters"


def create_image(disk: DiskSpec) -> Path:
    """The disk's backing file (file backend): sparse raw, or qcow2 by qemu-img."""
    assert disk.path is not None
    if disk.format == "raw":
        return create_sparse_file(disk.path, disk.size_bytes)
    disk.path.parent.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["qemu-img", "create", "-q", "-f", disk.format, str(disk.path), str(disk.size_bytes)],
                       check=True, capture_output=True, text=True, timeout=60)
    except FileNotFoundError as exc:
        raise MissingPrerequisite("qemu-img not found (needed for qcow2 disks)") from exc
    except subprocess.CalledProcessError as exc:
        raise InfraError(f"qemu-img create {disk.path}: {exc.stderr.strip()}") from exc
    return disk.path


@dataclass(frozen=True)
class PlugTiming:
    disk: str
    guest_name: str
    chardev: str | None
    seconds_to_visible: float
    info: dict  # the agent's disk object


class DiskPlugger:
    def __init__(self, machine):
        self.machine = machine
        self.iothreads: set[str] = set()

    def set_guest_params(self, disk: DiskSpec) -> None:
        """virtio_blk reads these at probe time: they must be set before device_add."""
        agent = self.machine.agent
        agent.write_file(f"{PARAM_DIR}/poll_queues", str(disk.guest_poll_queues))
        agent.write_file(f"{PARAM_DIR}/num_request_queues", str(disk.guest_num_request_queues))

    def ensure_iothread(self, disk: DiskSpec) -> None:
        args = A.iothread_object_args(disk)
        if args is None or args["id"] in self.iothreads:
            return
        self.machine.qmp("object-add", args)
        self.iothreads.add(args["id"])

    def prepare(self, disk: DiskSpec) -> None:
        if disk.backend == "file":
            create_image(disk)
        self.ensure_iothread(disk)
        self.set_guest_params(disk)

    def plug(self, disk: DiskSpec, slot: int) -> float:
        """prepare + blockdev-add + device_add; the monotonic time of device_add."""
        self.prepare(disk)
        return self.machine.plug(disk, slot)

    def plug_all(self, disks: tuple[DiskSpec, ...] | list[DiskSpec], timeout_s: float) -> list[PlugTiming]:
        """device_add every disk (each into its own free root port), then wait for each to show."""
        started = {}
        for disk in disks:
            slot = self.machine.free_slot()
            if slot is None:
                raise InfraError(f"no free root port for {disk.id} ({self.machine.spec.disk_slots} slots)")
            started[disk.id] = self.plug(disk, slot)
        timings = []
        for disk in disks:
            info = self.machine.agent.wait_disk(disk.serial, timeout_s=timeout_s, chardev=True)
            timings.append(PlugTiming(disk.id, info["name"], info.get("chardev"), time.monotonic() - started[disk.id], info))
        return timings

    def release(self, disk: DiskSpec) -> None:
        """After the unplug: drop the disk's own iothread (not the shared one)."""
        if disk.iothread == "per-disk" and disk.iothread_id in self.iothreads:
            try:
                self.machine.qmp("object-del", {"id": disk.iothread_id})
            except QmpError:
                return  # still referenced: keep it, the next object-add of this id is skipped
            self.iothreads.discard(disk.iothread_id)


def probe_block_features(machine, scratch: Path) -> dict[str, str]:
    """Which optional host features work with this QEMU here: {feature: reason it does not}.

    Tries aio=io_uring and aio=native on a scratch file node, and looks for
    ``iothread-vq-mapping`` among virtio-blk-pci's properties.
    """
    reasons: dict[str, str] = {}
    image = create_sparse_file(Path(scratch) / "probe.raw", 1 << 20)
    for aio in ("io_uring", "native"):
        node = f"probe-{aio.replace('_', '')}"
        try:
            machine.qmp("blockdev-add", {"driver": "file", "node-name": node, "filename": str(image), "aio": aio,
                                         "cache": {"direct": True}})
        except QmpError as exc:
            reasons[f"aio={aio}"] = f"QEMU refused aio={aio} here: {exc}"
        else:
            machine.qmp("blockdev-del", {"node-name": node})
    props = {p.get("name") for p in machine.qmp("device-list-properties", {"typename": "virtio-blk-pci"})}
    if "iothread-vq-mapping" not in props:
        version = ".".join(map(str, machine.caps.version)) if machine.caps else "?"
        reasons["iothread-vq-mapping"] = (f"QEMU {version} has no iothread-vq-mapping property on virtio-blk-pci "
                                          "(added in 9.0)")
    return reasons


def unsupported(disk: DiskSpec, reasons: dict[str, str]) -> list[str]:
    """The reasons (from ``probe_block_features``) this disk cannot be plugged here."""
    out = []
    if disk.aio != "threads" and f"aio={disk.aio}" in reasons:
        out.append(reasons[f"aio={disk.aio}"])
    if disk.iothread_vq_mapping and "iothread-vq-mapping" in reasons:
        out.append(reasons["iothread-vq-mapping"])
    return out
