"""Pure builders of the QMP arguments the faults send (exact dicts, unit-tested).

The blkdebug graph follows ../shared/spec/qemu-notes.md "Fault injection":
virtio-blk -> format -> blkdebug -> file when armed, format -> file when not.
A blkdebug node is added on top of the disk's existing file node and the
format node's ``file`` child is re-pointed with ``blockdev-reopen``: rules of
a blkdebug node cannot be changed by a reopen, so each arming adds a fresh node.
"""

from __future__ import annotations

from ..disks.spec import DiskSpec

# blkdebug ``iotype`` names for the operations a fault may target.
IOTYPES = {"read": "read", "write": "write", "flush": "flush", "discard": "discard"}
# blkdebug events the format driver emits into its file child (``break`` points).
BREAK_EVENTS = {"read": "read_aio", "write": "write_aio"}


def _unmap(disk: DiskSpec) -> dict:
    return {"discard": "unmap"} if disk.discard else {}


def blkdebug_rule(op: str, errno: int, once: bool = False, sector: int | None = None,
                  delay_ns: int | None = None) -> dict:
    """One ``inject-error`` rule, active from the moment the node exists (``immediately``) and
    matching only ``op``'s I/O type; ``delay_ns`` (QEMU >= 10) delays instead of failing when errno is 0."""
    rule: dict = {"event": "none", "iotype": IOTYPES[op], "errno": errno, "immediately": True, "once": once}
    if sector is not None:
        rule["sector"] = sector
    if delay_ns is not None:
        rule["delay-ns"] = delay_ns
    return rule


def blkdebug_add_args(disk: DiskSpec, node_name: str, rules: list[dict]) -> dict:
    """``blockdev-add`` of a blkdebug node over the disk's file node (shared, not re-opened)."""
    args: dict = {"driver": "blkdebug", "node-name": node_name, "image": disk.file_node_name, **_unmap(disk)}
    if rules:
        args["inject-error"] = rules
    return args


def reopen_format_args(disk: DiskSpec, child: str) -> dict:
    """``blockdev-reopen`` of the format node with ``child`` as its file: every option it was
    added with is given again (a reopen resets the ones left out to their defaults)."""
    return {"options": [{
        "driver": disk.format,
        "node-name": disk.node_name,
        "read-only": disk.read_only,
        "file": child,
        **_unmap(disk),
    }]}


def backend_path(disk: DiskSpec) -> str:
    """QOM path of the virtio-blk device that owns the BlockBackend (the PCI proxy does not)."""
    return f"/machine/peripheral/{disk.id}/virtio-backend"


def throttle_args(disk: DiskSpec, iops: int = 0, bps: int = 0) -> dict:
    """``block_set_io_throttle`` for the device's BlockBackend; all zeros lifts the limits."""
    return {
        "id": backend_path(disk),
        "bps": bps, "bps_rd": 0, "bps_wr": 0,
        "iops": iops, "iops_rd": 0, "iops_wr": 0,
    }


def resize_args(disk: DiskSpec, size_bytes: int) -> dict:
    return {"node-name": disk.node_name, "size": size_bytes}


def qemu_io_args(target: str, command: str, qdev: bool = False) -> dict:
    """``human-monitor-command`` running one qemu-io command (output goes to QEMU's stdout).

    ``qdev``: ``target`` is a device id and qemu-io uses the device's own BlockBackend; else
    ``target`` is a node name and HMP wraps it in a temporary BlockBackend, whose removal
    drains the node (on QEMU 10 a ``resume`` through one never returned)."""
    if '"' in command or "\n" in command:
        raise ValueError(f"qemu-io command must not contain quotes or newlines: {command!r}")
    return {"command-line": f'qemu-io {"-d " if qdev else ""}{target} "{command}"'}


def set_action_args(reboot: str) -> dict:
    """``set-action``: ``reboot=reset`` lets system_reset reboot a VM started with -no-reboot."""
    return {"reboot": reboot}
