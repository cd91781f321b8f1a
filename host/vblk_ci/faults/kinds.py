"""The registry of fault kinds: name -> parameters (validated) -> arm/disarm through QMP.

A kind is a small class: ``params`` maps each parameter to (check, default),
``requires(caps)`` says why it cannot run on this QEMU (None when it can),
``arm(machine)`` injects the fault and ``disarm(machine)`` takes it back
(one-shot kinds such as ``device-del`` have nothing to take back). Bad
parameters raise ``UsageError`` with one line naming the kind and parameter.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, ClassVar

from ..disks.spec import DiskSpec
from ..errors import QmpError, UsageError
from . import qmp as Q

ERRNOS = {"EIO": 5, "ENOSPC": 28}
Check = Callable[[str, Any], Any]
_node_ids = itertools.count(1)


def _bad(kind: str, param: str, why: str) -> UsageError:
    return UsageError(f"fault {kind!r}: {param}: {why}")


def p_choice(*choices: str) -> Check:
    def check(where: str, value: Any) -> Any:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, not {value!r}")
        return value
    return check


def p_int(lo: int, hi: int) -> Check:
    def check(where: str, value: Any) -> Any:
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ValueError(f"must be an integer in {lo}..{hi}, not {value!r}")
        return value
    return check


def p_opt_int(lo: int, hi: int) -> Check:
    inner = p_int(lo, hi)
    return lambda where, value: None if value is None else inner(where, value)


def p_bool(where: str, value: Any) -> Any:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {value!r}")
    return value


def p_errno(where: str, value: Any) -> int:
    if value in ERRNOS:
        return ERRNOS[value]
    if value in ERRNOS.values() and not isinstance(value, bool):
        return value
    raise ValueError(f"must be one of {', '.join(ERRNOS)} (or {', '.join(map(str, ERRNOS.values()))}), not {value!r}")


class Fault:
    """One parameterised fault aimed at one disk (or the whole VM)."""

    kind: ClassVar[str] = ""
    description: ClassVar[str] = ""
    params: ClassVar[dict[str, tuple[Check, Any]]] = {}
    one_shot: ClassVar[bool] = False  # nothing to disarm
    needs_disk: ClassVar[bool] = True
    min_qemu: ClassVar[tuple[int, int, int]] = (0, 0, 0)
    _REQUIRED: ClassVar[object] = object()

    def __init__(self, disk: DiskSpec | None = None, **params: Any):
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise _bad(self.kind, unknown[0], f"unknown parameter (known: {', '.join(self.params) or 'none'})")
        values: dict[str, Any] = {}
        for name, (check, default) in self.params.items():
            if name not in params:
                if default is Fault._REQUIRED:
                    raise _bad(self.kind, name, "is required")
                values[name] = default
                continue
            try:
                values[name] = check(name, params[name])
            except ValueError as exc:
                raise _bad(self.kind, name, str(exc)) from None
        if self.needs_disk and disk is None:
            raise _bad(self.kind, "disk", "is required")
        self.disk = disk
        self.p = values
        self.armed = False
        self.validate()

    def validate(self) -> None:
        """Checks across parameters and against the disk."""

    def requires(self, qemu_version: tuple[int, int, int]) -> str | None:
        if tuple(qemu_version) < self.min_qemu:
            return f"fault {self.kind!r} needs QEMU >= {'.'.join(map(str, self.min_qemu))}"
        return None

    def arm(self, machine) -> None:
        raise NotImplementedError

    def disarm(self, machine) -> None:
        """Default for one-shot faults: nothing to take back."""

    def describe(self) -> dict:
        return {"kind": self.kind, "disk": self.disk.id if self.disk else None, "params": dict(self.p)}


KINDS: dict[str, type[Fault]] = {}


def register(cls: type[Fault]) -> type[Fault]:
    KINDS[cls.kind] = cls
    return cls


def make_fault(kind: str, disk: DiskSpec | None = None, params: dict | None = None) -> Fault:
    if kind not in KINDS:
        raise UsageError(f"unknown fault kind {kind!r} (known: {', '.join(sorted(KINDS))})")
    if params is not None and not isinstance(params, dict):
        raise UsageError(f"fault {kind!r}: params must be an object")
    return KINDS[kind](disk, **(params or {}))


def _hmp(machine, args: dict) -> str:
    """An HMP command through QMP; HMP reports failure as text in a successful reply."""
    out = machine.qmp("human-monitor-command", args)
    if isinstance(out, str) and out.lstrip().startswith("Error"):
        raise QmpError("human-monitor-command", "GenericError", f"{args['command-line']}: {out.strip()}")
    return out


class _BlkdebugFault(Fault):
    """Arm: a new blkdebug node over the file node, the format node re-pointed at it.
    Disarm: the format node back on the file node, the blkdebug node deleted."""

    def validate(self) -> None:
        assert self.disk is not None
        if self.disk.backend != "file":
            raise _bad(self.kind, "disk", f"{self.disk.id!r} needs the file backend (blkdebug sits over the file node)")
        if self.disk.inject_errors:
            raise _bad(self.kind, "disk", f"{self.disk.id!r} has fixed inject_errors: its blkdebug node would be "
                                          "dropped by the re-pointing; use one or the other")

    def rules(self) -> list[dict]:
        return []

    def arm(self, machine) -> None:
        assert self.disk is not None
        self.node = f"{self.disk.id}-dbg{next(_node_ids)}"
        machine.qmp("blockdev-add", Q.blkdebug_add_args(self.disk, self.node, self.rules()))
        try:
            machine.qmp("blockdev-reopen", Q.reopen_format_args(self.disk, self.node))
        except Exception:
            machine.qmp("blockdev-del", {"node-name": self.node})
            raise
        self.armed = True

    def disarm(self, machine) -> None:
        assert self.disk is not None
        if not self.armed:
            return
        machine.qmp("blockdev-reopen", Q.reopen_format_args(self.disk, self.disk.file_node_name))
        machine.qmp("blockdev-del", {"node-name": self.node})
        self.armed = False


@register
class BlkdebugError(_BlkdebugFault):
    kind = "blkdebug-error"
    description = "QEMU fails the disk's reads, writes, flushes or discards with EIO or ENOSPC"
    params = {
        "op": (p_choice(*Q.IOTYPES), Fault._REQUIRED),
        "errno": (p_errno, 5),
        "once": (p_bool, False),
        "sector": (p_opt_int(0, 1 << 53), None),
    }

    def validate(self) -> None:
        super().validate()
        # Disarming re-opens the format node, and a reopen flushes first: a flush that always
        # fails would make the fault impossible to take back.
        if self.p["op"] == "flush" and not self.p["once"]:
            raise _bad(self.kind, "once", "must be true for op flush (disarming flushes, so an always-failing "
                                          "flush could never be disarmed)")

    def rules(self) -> list[dict]:
        return [Q.blkdebug_rule(self.p["op"], self.p["errno"], self.p["once"], self.p["sector"])]


@register
class BlkdebugDelay(_BlkdebugFault):
    kind = "blkdebug-delay"
    description = "QEMU delays the disk's requests of one type by delay_ns (blkdebug delay-ns)"
    params = {
        "op": (p_choice(*Q.IOTYPES), Fault._REQUIRED),
        "delay_ns": (p_int(1, 10**10), Fault._REQUIRED),
        "sector": (p_opt_int(0, 1 << 53), None),
    }
    min_qemu = (10, 0, 0)

    def rules(self) -> list[dict]:
        return [Q.blkdebug_rule(self.p["op"], 0, False, self.p["sector"], self.p["delay_ns"])]


@register
class RequestBreak(_BlkdebugFault):
    """qemu-io ``break``: the next request of that type is suspended until ``resume``."""

    kind = "request-break"
    description = "suspend the disk's next read or write inside QEMU (qemu-io break) until disarmed (resume)"
    params = {"op": (p_choice(*Q.BREAK_EVENTS), Fault._REQUIRED)}

    def arm(self, machine) -> None:
        super().arm(machine)
        self.tag = f"{self.node}-brk"
        # Through the device's BlockBackend: qemu-io walks down from the format node to blkdebug.
        _hmp(machine, Q.qemu_io_args(Q.backend_path(self.disk), f"break {Q.BREAK_EVENTS[self.p['op']]} {self.tag}",
                                     qdev=True))

    def disarm(self, machine) -> None:
        if self.armed:
            _hmp(machine, Q.qemu_io_args(Q.backend_path(self.disk), f"resume {self.tag}", qdev=True))
        super().disarm(machine)


@register
class VmStop(Fault):
    kind = "vm-stop"
    description = "pause the whole VM (QMP stop) until disarmed (cont)"
    needs_disk = False

    def arm(self, machine) -> None:
        machine.qmp("stop")
        self.armed = True

    def disarm(self, machine) -> None:
        if self.armed:
            machine.qmp("cont")
            self.armed = False


@register
class SystemReset(Fault):
    kind = "system-reset"
    description = "reset the VM (QMP system_reset, with reboot=reset so -no-reboot does not end QEMU)"
    needs_disk = False
    one_shot = True

    def arm(self, machine) -> None:
        machine.qmp("set-action", Q.set_action_args("reset"))
        machine.qmp("system_reset")
        self.armed = True

    def disarm(self, machine) -> None:
        if self.armed:
            machine.qmp("set-action", Q.set_action_args("shutdown"))
            self.armed = False


@register
class DeviceDel(Fault):
    kind = "device-del"
    description = "surprise hot-unplug of the disk (device_del; the scenario waits for DEVICE_DELETED)"
    one_shot = True

    def arm(self, machine) -> None:
        assert self.disk is not None
        machine.qmp("device_del", {"id": self.disk.id})
        self.armed = True


@register
class Throttle(Fault):
    kind = "throttle"
    description = "limit the disk's IOPS and/or bytes per second at run time (block_set_io_throttle)"
    params = {"iops": (p_int(0, 10**7), 0), "bps": (p_int(0, 10**12), 0)}

    def validate(self) -> None:
        if not self.p["iops"] and not self.p["bps"]:
            raise _bad(self.kind, "iops", "give iops or bps (or both) above 0")

    def arm(self, machine) -> None:
        assert self.disk is not None
        machine.qmp("block_set_io_throttle", Q.throttle_args(self.disk, self.p["iops"], self.p["bps"]))
        self.armed = True

    def disarm(self, machine) -> None:
        assert self.disk is not None
        if self.armed:
            machine.qmp("block_set_io_throttle", Q.throttle_args(self.disk))
            self.armed = False


@register
class Resize(Fault):
    kind = "resize"
    description = "grow or shrink the disk at run time (block_resize); the guest sees a capacity change"
    params = {"size_bytes": (p_int(512, 1 << 50), Fault._REQUIRED)}
    one_shot = True

    def validate(self) -> None:
        assert self.disk is not None
        if self.p["size_bytes"] % self.disk.logical_block_size:
            raise _bad(self.kind, "size_bytes", f"must be a multiple of the disk's block size "
                                                f"({self.disk.logical_block_size})")

    def arm(self, machine) -> None:
        assert self.disk is not None
        machine.qmp("block_resize", Q.resize_args(self.disk, self.p["size_bytes"]))
        self.armed = True
