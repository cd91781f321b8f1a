"""Helpers the driver-* scenarios share: plugging a disk, building engine
arguments, and judging cqe->res values against the errnos the driver promises.

Not a scenario itself (nothing here registers).
"""

from __future__ import annotations

from typing import Callable, Iterable

from ..disks.spec import DiskSpec, create_sparse_file
from ..errors import AgentError, CheckFailed, MachineTimeout
from ..events import DiskPlugged, DiskUnplugged
from .base import ScenarioContext

def run_engine(ctx: ScenarioContext, rec: dict, key: str, args: list[str]) -> dict:
    """Run one engine job, keep its JSON under ``rec[key]``; fail unless the job ran."""
    result = ctx.agent.engine(args, timeout_s=ctx.timeouts(120.0))
    rec[key] = result
    if result.get("exit_code") != 0:
        stderr = (result.get("stderr") or "").strip().splitlines()
        raise CheckFailed(f"{key}: vblk-engine exited {result.get('exit_code')}: {stderr[-1] if stderr else ''}")
    return result


def expect_clean(key: str, result: dict) -> None:
    """No I/O errors and no mismatches; say where the first one was otherwise."""
    if result.get("errors"):
        raise CheckFailed(f"{key}: {result['errors']} I/O errors, first {result.get('first_error')}")
    if result.get("mismatches"):
        raise CheckFailed(f"{key}: {result['mismatches']} mismatched words, first {result.get('first_mismatch')}")


__all__ = [
    "ERRNO", "EACCES", "EBADF", "EFAULT", "EINVAL", "EIO", "ENODEV", "ENOTTY", "ENXIO", "EOPNOTSUPP",
    "ERANGE", "EROFS", "VIRTIO_BLK_S_IOERR", "MiB", "KiB", "eargs", "errno_text", "expect_clean",
    "expect_results", "guest_disk", "plug", "run_engine", "run_gated", "unplug", "wait_gone",
]

KiB = 1 << 10
MiB = 1 << 20
VIRTIO_BLK_S_IOERR = 1

# Linux (x86) errno values, as the guest kernel returns them in cqe->res.
EIO = 5
ENXIO = 6
EBADF = 9
EACCES = 13
EFAULT = 14
EBUSY = 16
ENODEV = 19
EINVAL = 22
ENOTTY = 25
EROFS = 30
ERANGE = 34
EOPNOTSUPP = 95
ERRNO = {
    EIO: "EIO", ENXIO: "ENXIO", EBADF: "EBADF", EACCES: "EACCES", EFAULT: "EFAULT", ENODEV: "ENODEV",
    EINVAL: "EINVAL", ENOTTY: "ENOTTY", EROFS: "EROFS", ERANGE: "ERANGE", EOPNOTSUPP: "EOPNOTSUPP",
    11: "EAGAIN", 12: "ENOMEM", 125: "ECANCELED",
    EBUSY: "EBUSY",
}


def errno_text(res: object) -> str:
    """``-22 (-EINVAL)``, ``1 (VIRTIO_BLK_S_IOERR)``, ``0 (success)`` for messages."""
    if not isinstance(res, int):
        return repr(res)
    if res < 0:
        return f"{res} (-{ERRNO.get(-res, '?')})"
    if res == 0:
        return "0 (success)"
    return f"{res} ({ {1: 'VIRTIO_BLK_S_IOERR', 2: 'VIRTIO_BLK_S_UNSUPP'}.get(res, 'device status') })"


def eargs(path: str, op: str, **opts: object) -> list[str]:
    """Engine argv: ``eargs(c, "read", offset=0, bad_ptr=True)`` -> ``--path c --op read --offset 0 --bad-ptr``.

    ``True`` gives a bare flag, ``None``/``False`` leave the option out, anything else is ``str()``-ed.
    """
    argv = ["--path", path, "--op", op]
    for key, value in opts.items():
        if value is None or value is False:
            continue
        argv.append("--" + key.replace("_", "-"))
        if value is not True:
            argv.append(str(value))
    return argv


def expect_results(key: str, result: dict, expected: int) -> None:
    """Every I/O of the job came back with cqe->res == ``expected``."""
    results = result.get("results")
    if not results:
        raise CheckFailed(f"{key}: the engine reported no per-I/O results ({result.get('ios')} I/Os)")
    wrong = [r for r in results if r != expected]
    if wrong:
        raise CheckFailed(f"{key}: cqe->res = {errno_text(wrong[0])}, expected {errno_text(expected)} "
                          f"({len(wrong)} of {len(results)} I/Os)")


def run_gated(ctx: ScenarioContext, gate_passed: bool, steps: Iterable[tuple[str, Callable[[dict], None]]],
              reason: str) -> bool:
    """Run ``steps`` as checks if ``gate_passed``, else record each as skipped with ``reason``.

    Returns True if every step ran and passed.
    """
    ok = gate_passed
    for name, fn in steps:
        if not gate_passed:
            ctx.skip(name, reason)
            continue
        ok = ctx.check(name, fn).status == "pass" and ok
    return ok


def guest_disk(ctx: ScenarioContext, disk: DiskSpec, state: dict, rec: dict, chardev: bool = True) -> dict:
    """Wait for the guest to show ``disk`` (and its char device); keep its disk object in ``state``."""
    try:
        info = ctx.agent.wait_disk(disk.serial, timeout_s=ctx.timeouts(10.0), chardev=chardev)
    except AgentError as exc:
        rec["disks"] = ctx.agent.disks()
        raise CheckFailed(f"{disk.serial}: the disk appeared but no char device: {exc}") from exc
    rec["disk"] = info
    state.update(info=info, chardev=info.get("chardev"), blockdev=info.get("blockdev"))
    if info.get("size_bytes") != disk.size_bytes:
        raise CheckFailed(f"guest sees {info.get('size_bytes')} bytes, expected {disk.size_bytes}")
    return info


def plug(ctx: ScenarioContext, disk: DiskSpec, state: dict) -> Callable[[dict], None]:
    """A check function: hot-plug ``disk`` into a free slot and wait for /dev/vdX and /dev/vdXc0.

    ``state`` gets ``name``, ``chardev``, ``blockdev``, ``info`` (the agent's disk object).
    """

    def check(rec: dict) -> None:
        slot = ctx.machine.free_slot()
        if slot is None:
            raise CheckFailed("no free hot-plug slot: a disk from an earlier scenario is still plugged")
        plugged = ctx.machine.hotplug(disk, slot, chardev=False)
        state["name"] = plugged.guest_name
        rec["plugged"] = {"slot": slot, "guest_name": plugged.guest_name,
                          "seconds_to_visible": plugged.seconds_to_visible}
        info = guest_disk(ctx, disk, state, rec)
        ctx.emit(DiskPlugged(disk.id, disk.serial, plugged.seconds_to_visible, plugged.guest_name, info["chardev"]))

    return check


def plug_file_disk(ctx: ScenarioContext, key: str, size: int, state: dict, **spec: object) -> DiskSpec | None:
    """The scenario's ``hotplug`` check for a disk backed by a fresh sparse file
    ``<scratch>/<key>.raw`` (id ``key``, one queue unless ``spec`` says otherwise).

    The disk's spec, or None when the check did not pass (nothing else can run).
    """
    image = create_sparse_file(ctx.scratch() / f"{key}.raw", size)
    disk = DiskSpec(id=key, serial=f"vblk-{key}", backend="file", path=image, size_bytes=size,
                    **{"num_queues": 1, **spec}).validate()
    return disk if run_gated(ctx, True, [("hotplug", plug(ctx, disk, state))], "") else None


def wait_gone(ctx: ScenarioContext, name: str, rec: dict) -> None:
    """/sys/block/<name>, /sys/class/vblk-generic/<name>c0 and /dev/<name>c0 must vanish."""
    try:
        rec["gone"] = ctx.agent.wait_disk_gone(name, timeout_s=ctx.timeouts(10.0))
    except AgentError as exc:
        raise CheckFailed(f"after unplug: {exc}") from exc


def unplug(ctx: ScenarioContext, disk: DiskSpec, state: dict) -> Callable[[dict], None]:
    """A check function: device_del until DEVICE_DELETED, then the guest's nodes must be gone."""

    def check(rec: dict) -> None:
        try:
            seconds = ctx.machine.unplug(disk.id)
        except MachineTimeout as exc:
            raise CheckFailed(f"unplug: {exc}") from exc
        rec["seconds_to_deleted"] = seconds
        ctx.emit(DiskUnplugged(disk.id, seconds))
        if state.get("name"):
            wait_gone(ctx, state["name"], rec)

    return check


POLL_QUEUES_PARAM = "/sys/module/virtio_blk/parameters/poll_queues"
DEBUGFS_BLOCK = "/sys/kernel/debug/block"


def poll_queue_requirements(ctx: ScenarioContext) -> list[str]:
    """requires() of a scenario that probes disks with poll queues and reads debugfs."""
    reasons = []
    if ctx.agent.exec(cmd=f"test -w {POLL_QUEUES_PARAM}").get("rc") != 0:
        reasons.append(f"no writable {POLL_QUEUES_PARAM} in the guest")
    if ctx.agent.exec(cmd=f"test -d {DEBUGFS_BLOCK}").get("rc") != 0:
        reasons.append(f"no {DEBUGFS_BLOCK} in the guest (debugfs): the scenario reads requests in flight there")
    return reasons


def set_poll_queues(ctx: ScenarioContext, value: int, old: str) -> Callable[[dict], None]:
    """A check function: write ``value`` to virtio_blk.poll_queues (read at the next probe)."""

    def check(rec: dict) -> None:
        ctx.agent.write_file(POLL_QUEUES_PARAM, f"{value}\n")
        rec["poll_queues_was"] = old
        if ctx.agent.read_file(POLL_QUEUES_PARAM).strip() != str(value):
            raise CheckFailed(f"{POLL_QUEUES_PARAM} does not read {value} after writing {value}")

    return check
