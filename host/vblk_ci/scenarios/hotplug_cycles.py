"""hotplug-cycles: plug -> passthrough I/O -> unplug with the char device held open, N times;
then nothing may have leaked. Also a plug and an unplug while the guest is paused, and a
plugged disk across ``system_reset``.

Each cycle: device_add, wait for /dev/vdX and /dev/vdXc0 (hotplug->visible), write and
verify 64 KiB through the char device, start a background read job on it (the fd stays
open), device_del until DEVICE_DELETED (unplug->deleted), then the job is stopped and must
close its fd cleanly, and the sysfs/class entries and the node must be gone. After the
cycles: the char device minor and the disk name were reused (the driver frees them), no
vd* or vblk-generic entry is left, and the console is clean (every check also fails on a
console finding). ``VBLK_CI_HOTPLUG_CYCLES`` sets N (default 50).
"""

from __future__ import annotations

import os
import statistics
import time

from ..agent.testinfra_backend import guest_host
from ..disks.spec import DiskSpec, create_sparse_file
from ..errors import AgentError, CheckFailed, InfraError, MachineTimeout, QmpError, UsageError
from ..events import DiskPlugged, DiskUnplugged
from ..machine.machine import INIT_MARKER
from .base import Scenario, ScenarioContext, register
from .driver_common import KiB, MiB, eargs, expect_clean, run_engine

ENV_CYCLES = "VBLK_CI_HOTPLUG_CYCLES"
DEFAULT_CYCLES = 50
DISK_SIZE = 16 * MiB
IO_BYTES = 64 * KiB


def cycles_from_env() -> int:
    text = os.environ.get(ENV_CYCLES, str(DEFAULT_CYCLES))
    try:
        n = int(text)
    except ValueError:
        raise UsageError(f"{ENV_CYCLES}={text!r}: not an integer") from None
    if not 1 <= n <= 10000:
        raise UsageError(f"{ENV_CYCLES}={n}: must be in 1..10000")
    return n


def median_or_none(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


@register
class HotplugCycles(Scenario):
    name = "hotplug-cycles"
    description = (
        "N plug -> passthrough I/O -> unplug cycles with the char device held open across the "
        "unplug; minors and names reused, no sysfs/class entries left; plug and unplug while "
        "paused; a plugged disk survives system_reset and is probed again."
    )

    def __init__(self, cycles: int | None = None):
        self.cycles = cycles

    def run(self, ctx: ScenarioContext) -> None:
        n = self.cycles or cycles_from_env()
        image = create_sparse_file(ctx.scratch() / "cycle.raw", DISK_SIZE)
        disk = DiskSpec(id="cyc0", serial="vblk-cycle", backend="file", path=image, size_bytes=DISK_SIZE,
                        num_queues=2).validate()
        seen: list[dict] = []
        baseline: dict = {}

        def before(rec: dict) -> None:
            baseline["vd"] = _listing(ctx, "/sys/block", "vd")
            baseline["class"] = _listing(ctx, "/sys/class/vblk-generic", "")
            rec.update(baseline)

        def one_cycle(i: int):
            def check(rec: dict) -> None:
                seen.append(_cycle(ctx, disk, rec))
            return check

        def no_leaks(rec: dict) -> None:
            minors = sorted({s["devno"] for s in seen})
            names = sorted({s["name"] for s in seen})
            rec.update(devnos=minors, names=names, cycles=len(seen))
            visible = [s["visible_s"] for s in seen]
            deleted = [s["deleted_s"] for s in seen]
            rec["median_visible_s"], rec["median_deleted_s"] = median_or_none(visible), median_or_none(deleted)
            rec["max_visible_s"], rec["max_deleted_s"] = max(visible, default=None), max(deleted, default=None)
            if len(seen) < n:
                raise CheckFailed(f"only {len(seen)} of {n} cycles completed")
            # Freed minors and disk indexes come back: one plugged disk at a time needs one of each.
            if len(minors) > 1:
                raise CheckFailed(f"char device numbers not reused over {n} cycles: {minors[:8]}...")
            if len(names) > 1:
                raise CheckFailed(f"disk names not reused over {n} cycles: {names[:8]}...")
            vd, cls = _listing(ctx, "/sys/block", "vd"), _listing(ctx, "/sys/class/vblk-generic", "")
            rec.update(after_vd=vd, after_class=cls)
            if vd != baseline["vd"] or cls != baseline["class"]:
                raise CheckFailed(f"left over after the cycles: /sys/block {vd} (before {baseline['vd']}), "
                                  f"/sys/class/vblk-generic {cls} (before {baseline['class']})")
            warnings = [r["text"] for r in ctx.agent.dmesg().get("records", []) if r["level"] <= 4
                        and ("vblk" in r["text"] or "virtio" in r["text"])]
            rec["kernel_warnings"] = warnings
            if warnings:
                raise CheckFailed(f"kernel warnings about the disks: {warnings[0]}")

        ctx.check("before", before)
        for i in range(n):
            if ctx.check(f"cycle-{i + 1:03d}", one_cycle(i)).status != "pass":
                break
        ctx.check("no-leaks", no_leaks)
        ctx.check("plug-unplug-while-paused", lambda rec: _paused(ctx, disk, rec))
        ctx.check("plugged-across-system-reset", lambda rec: _reset(ctx, disk, rec))


def _listing(ctx: ScenarioContext, directory: str, prefix: str) -> list[str]:
    host = guest_host(ctx.agent)
    if not host.file(directory).is_directory:
        return []
    return sorted(e for e in host.file(directory).listdir() if e.startswith(prefix))


def _plug_visible(ctx: ScenarioContext, disk: DiskSpec, started: float, rec: dict) -> dict:
    try:
        info = ctx.agent.wait_disk(disk.serial, timeout_s=ctx.timeouts(30.0), chardev=True)
    except AgentError as exc:
        raise CheckFailed(f"{disk.serial} did not show with its char device: {exc}") from exc
    visible = time.monotonic() - started
    rec["visible_s"] = visible
    ctx.emit(DiskPlugged(disk.id, disk.serial, visible, info["name"], info["chardev"]))
    return info


def _io(ctx: ScenarioContext, info: dict, rec: dict, seed: int) -> None:
    c = info["chardev"]
    expect_clean("write", run_engine(ctx, rec, "write", eargs(c, "write", length=IO_BYTES, seed=seed, qd=4)))
    expect_clean("verify", run_engine(ctx, rec, "verify", eargs(c, "verify", length=IO_BYTES, seed=seed, qd=4)))


def _gone(ctx: ScenarioContext, name: str, rec: dict) -> None:
    try:
        rec["gone"] = ctx.agent.wait_disk_gone(name, timeout_s=ctx.timeouts(10.0))
    except AgentError as exc:
        raise CheckFailed(f"after unplug: {exc}") from exc
    host = guest_host(ctx.agent)
    left = [p for p in (f"/sys/block/{name}", f"/sys/class/vblk-generic/{name}c0", f"/dev/{name}c0")
            if host.file(p).exists]
    if left:
        raise CheckFailed(f"after unplug still there: {', '.join(left)}")


def _cycle(ctx: ScenarioContext, disk: DiskSpec, rec: dict) -> dict:
    machine = ctx.machine
    slot = machine.free_slot()
    if slot is None:
        raise CheckFailed("no free root port")
    started = machine.plug(disk, slot)
    info = _plug_visible(ctx, disk, started, rec)
    _io(ctx, info, rec, seed=len(rec) + 7)
    # Hold the char device open across the unplug: a read job that keeps running.
    spawned = ctx.agent.call("spawn", {"args": eargs(info["chardev"], "read", length=IO_BYTES, qd=1, runtime=60)})
    job = spawned["job"]
    _wait_open(ctx, spawned["pid"], info["chardev"], job)
    try:
        deleted = machine.unplug(disk.id)
    except MachineTimeout as exc:
        ctx.agent.signal_job(job, "KILL")
        raise CheckFailed(f"unplug with the char device open: {exc}") from exc
    finally:
        ctx.agent.signal_job(job, "INT")
    rec["deleted_s"] = deleted
    ctx.emit(DiskUnplugged(disk.id, deleted))
    result = ctx.agent.wait_job(job, timeout_s=ctx.timeouts(30.0))
    rec["held_job"] = {k: result.get(k) for k in ("exit_code", "ios", "res_counts", "close_ok", "close_errno")}
    if result.get("exit_code") != 0 or result.get("close_ok") is not True:
        raise CheckFailed(f"the job holding {info['chardev']} across the unplug ended badly: {rec['held_job']}")
    _gone(ctx, info["name"], rec)
    return {"name": info["name"], "devno": info.get("chardev_devno"), "visible_s": rec["visible_s"],
            "deleted_s": deleted}


def _wait_open(ctx: ScenarioContext, pid: int, node: str, job: int) -> None:
    """Until the job's process has ``node`` open (else the unplug could win the race to open())."""
    cmd = (f"for i in $(seq 250); do ls -l /proc/{pid}/fd 2>/dev/null | grep -q ' {node}$' && exit 0; "
           "sleep 0.02; done; exit 1")
    if ctx.agent.exec(cmd=cmd, timeout_s=ctx.timeouts(20.0)).get("rc") != 0:
        ctx.agent.signal_job(job, "KILL")
        result = ctx.agent.call("wait_job", {"job": job, "timeout_s": 10.0}, 20.0)
        raise CheckFailed(f"the job never opened {node}: {result.get('stderr', '').strip()}")


def _paused(ctx: ScenarioContext, disk: DiskSpec, rec: dict) -> None:
    """device_add while stopped shows after cont; device_del while stopped completes after cont."""
    machine = ctx.machine
    slot = machine.free_slot()
    machine.qmp("stop")
    try:
        started = machine.plug(disk, slot)
    finally:
        machine.qmp("cont")
    info = _plug_visible(ctx, disk, started, rec)
    _io(ctx, info, rec, seed=31)
    def deletions() -> int:
        return sum(1 for e in machine.events()
                   if e.get("event") == "DEVICE_DELETED" and e.get("data", {}).get("device") == disk.id)

    machine.qmp("stop")
    try:
        before = deletions()
        machine.qmp("device_del", {"id": disk.id})
        time.sleep(0.5)  # a stopped guest cannot ack the removal: nothing may happen before cont
        rec["deleted_while_stopped"] = deletions() > before
    finally:
        machine.qmp("cont")
    if rec["deleted_while_stopped"]:
        raise CheckFailed("DEVICE_DELETED came while the guest was stopped (nothing acked the removal)")
    try:
        rec["deleted_after_cont_s"] = machine.complete_unplug(disk.id)
    except MachineTimeout as exc:
        raise CheckFailed(f"device_del sent while paused did not complete after cont: {exc}") from exc
    ctx.emit(DiskUnplugged(disk.id, rec["deleted_after_cont_s"]))
    _gone(ctx, info["name"], rec)


def _reset(ctx: ScenarioContext, disk: DiskSpec, rec: dict) -> None:
    """A plugged disk stays across system_reset; the rebooted guest probes it again."""
    machine = ctx.machine
    started = machine.plug(disk, machine.free_slot())
    info = _plug_visible(ctx, disk, started, rec)
    _io(ctx, info, rec, seed=41)
    mark = machine.console.mark()
    # -no-reboot turns any reset into an exit; let this one reset, then restore.
    machine.qmp("set-action", {"reboot": "reset"})
    restore_error: QmpError | None = None
    try:
        reset_at = time.monotonic()
        machine.qmp("system_reset")
        if machine.console.wait_for(INIT_MARKER, ctx.timeouts(120.0), mark, abort=lambda: not machine.is_running()) is None:
            raise CheckFailed(f"the guest did not reach init again after system_reset\n{machine.console.tail()}")
        rec["reboot_to_init_s"] = time.monotonic() - reset_at
        try:
            ctx.agent.handshake(ctx.timeouts(120.0), alive=machine.is_running)
        except AgentError as exc:
            raise CheckFailed(f"the agent did not answer after system_reset: {exc}") from exc
        rec["reboot_to_agent_s"] = time.monotonic() - reset_at
    finally:
        try:
            machine.qmp("set-action", {"reboot": "shutdown"})
        except QmpError as exc:  # kept with the check even when the reset itself failed
            restore_error = exc
            rec["restore_reboot_action_error"] = str(exc)
    if restore_error is not None:
        # Left at reboot=reset, a later guest panic would reboot instead of ending the run.
        raise InfraError(f"set-action reboot=shutdown failed after the reset test: {restore_error}") from restore_error
    try:
        again = ctx.agent.wait_disk(disk.serial, timeout_s=ctx.timeouts(30.0), chardev=True)
    except AgentError as exc:
        raise CheckFailed(f"the disk plugged before system_reset is not there after it: {exc}") from exc
    rec["after_reset"] = again
    # The data written before the reset is on the file: read it back through the new node.
    expect_clean("verify-after-reset", run_engine(ctx, rec, "verify-after-reset",
                                                  eargs(again["chardev"], "verify", length=IO_BYTES, seed=41, qd=4)))
    try:
        rec["deleted_s"] = machine.unplug(disk.id)
    except MachineTimeout as exc:
        raise CheckFailed(f"unplug after system_reset: {exc}") from exc
    ctx.emit(DiskUnplugged(disk.id, rec["deleted_s"]))
    _gone(ctx, again["name"], rec)
