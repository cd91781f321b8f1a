"""driver-ioprio: the command's ioprio is the one in the request header the device receives.

review-v2 finding #1: the passthrough path writes ``out_hdr.ioprio`` from the
command, then ``virtblk_setup_cmd()`` (6.12) overwrites it with the request's
own priority (0) on every dispatch. Nothing in the guest can see that, so the
header is read host-side: one passthrough write with ioprio
IOPRIO_PRIO_VALUE(BE, 3) = 0x4003 is held inside QEMU (blkdebug ``break``
on ``write_aio``), the element the device popped last is found with
``x-query-virtio-queue-status`` / ``x-query-virtio-queue-element``, and the
16-byte out header at its first descriptor is read from guest memory (HMP
``xp``) and decoded. Then the write is resumed and must complete with 0.

The same job on the block path (``/dev/vdX``, O_DIRECT, ``sqe->ioprio``) is the
control: 6.12 puts ``req_get_ioprio()`` in the header there, so the
observation itself is proven and the check can pass.
"""

from __future__ import annotations

import time

from ..disks.spec import DiskSpec, create_sparse_file
from ..errors import AgentError, CheckFailed
from ..faults.kinds import make_fault
from ..machine import virtio_queue as VQ
from .base import Scenario, ScenarioContext, register
from .driver_common import MiB, eargs, errno_text, plug, run_gated, unplug
from .fault_common import BLOCK, kill_job

SEED = 61
TARGET = 8 * MiB
PRIO = VQ.ioprio_value(VQ.IOPRIO_CLASS_BE, 3)  # 0x4003: any user may ask for best-effort
QUEUE = 0  # the disk has one virtqueue


@register
class DriverIoprio(Scenario):
    name = "driver-ioprio"
    description = (f"review-v2 #1: a passthrough write with ioprio {PRIO:#x} (BE level 3), held in QEMU by a blkdebug "
                   "break, carries that ioprio in the virtio-blk out header the device received (read host-side "
                   "from guest memory through x-query-virtio-queue-element and xp), with type OUT and its sector; "
                   "it completes with 0 once resumed. Control: the same job on the block path shows the same "
                   "header.")

    def requires(self, ctx: ScenarioContext) -> list[str]:
        if tuple(ctx.machine.caps.version) < (7, 0, 0):
            return ["x-query-virtio-queue-element needs QEMU >= 7.0"]
        return []

    def run(self, ctx: ScenarioContext) -> None:
        image = create_sparse_file(ctx.scratch() / "prio0.raw", 64 * MiB)
        disk = DiskSpec(id="prio0", serial="vblk-prio0", backend="file", path=image, size_bytes=64 * MiB,
                        num_queues=1).validate()
        st: dict = {}
        if not run_gated(ctx, True, [("hotplug", plug(ctx, disk, st))], ""):
            return
        run_gated(ctx, ctx.check("one-queue", lambda rec: one_queue(st)).status == "pass", [
            ("passthru-header-ioprio", lambda rec: held_header(ctx, disk, st["chardev"], rec, passthru=True)),
            ("block-header-ioprio", lambda rec: held_header(ctx, disk, st["blockdev"], rec, passthru=False)),
        ], "not run: the guest does not use exactly the one virtqueue QEMU is asked about")
        ctx.check("unplug", unplug(ctx, disk, st))


def one_queue(st: dict) -> None:
    """The guest uses the one virtqueue QEMU is asked about."""
    queues = st.get("info", {}).get("nr_hw_queues")
    if queues != 1:
        raise CheckFailed(f"the guest has {queues} hardware queues, expected 1: the held request could be on "
                          f"another virtqueue than {QUEUE}")


def queue_status(ctx: ScenarioContext, disk: DiskSpec) -> dict:
    return ctx.machine.qmp("x-query-virtio-queue-status", VQ.queue_status_args(VQ.virtio_path(disk.id), QUEUE))


def wait_popped(ctx: ScenarioContext, disk: DiskSpec, before: int, rec: dict) -> dict:
    """Poll the queue until the device has popped a new element that is still in use."""
    deadline = time.monotonic() + ctx.timeouts(30.0)
    while True:
        status = queue_status(ctx, disk)
        if status.get("last-avail-idx") != before and status.get("inuse", 0) >= 1:
            rec["status_held"] = status
            return status
        if time.monotonic() > deadline:
            rec["status_last"] = status
            raise CheckFailed(f"the write never reached the device's queue {QUEUE}: last-avail-idx stayed "
                              f"{before}, inuse {status.get('inuse')}")
        time.sleep(0.2)


def read_header(ctx: ScenarioContext, disk: DiskSpec, index: int, rec: dict) -> VQ.OutHeader:
    """The out header of the element at avail index ``index``."""
    reply = ctx.machine.qmp("x-query-virtio-queue-element",
                            VQ.queue_element_args(VQ.virtio_path(disk.id), QUEUE, index))
    rec["element"] = reply
    try:
        desc = VQ.header_desc(VQ.parse_element(reply))
        text = ctx.machine.qmp("human-monitor-command", VQ.xp_args(desc.addr, VQ.OUTHDR_BYTES))
        rec["xp"] = text
        header = VQ.OutHeader.decode(VQ.parse_xp_bytes(text, desc.addr, VQ.OUTHDR_BYTES))
    except ValueError as exc:
        raise CheckFailed(f"cannot read the request header: {exc}") from exc
    rec["header"] = header.to_json()
    return header


def held_header(ctx: ScenarioContext, disk: DiskSpec, path: str, rec: dict, passthru: bool) -> None:
    """Hold one write with ioprio PRIO in QEMU, read its header, resume; judge both."""
    fault = make_fault("request-break", disk, {"op": "write"})
    before = queue_status(ctx, disk)
    rec["status_before"] = before
    fault.arm(ctx.machine)
    job = None
    try:
        job = ctx.agent.spawn(eargs(path, "write", offset=TARGET, length=BLOCK, bs=BLOCK, seed=SEED, ioprio=PRIO))
        status = wait_popped(ctx, disk, before.get("last-avail-idx"), rec)
        header = read_header(ctx, disk, VQ.last_popped_index(status), rec)
    finally:
        fault.disarm(ctx.machine)
        if job is not None:
            try:
                result = ctx.agent.wait_job(job, timeout_s=ctx.timeouts(30.0))
                job = None
            except AgentError:
                kill_job(ctx, job)
                raise
    rec["job"] = result
    res = (result.get("results") or [None])[0]
    expected_res = 0 if passthru else BLOCK
    problems = []
    if header.type != VQ.VIRTIO_BLK_T_OUT or header.sector != TARGET // 512:
        problems.append(f"the held element is not this write: header type {header.type} sector {header.sector}, "
                        f"expected type {VQ.VIRTIO_BLK_T_OUT} sector {TARGET // 512}")
    elif header.ioprio != PRIO:
        problems.append(f"the device received ioprio {header.ioprio:#x}, the command gave {PRIO:#x} "
                        f"(header type {header.type}, sector {header.sector})")
    if res != expected_res:
        got = errno_text(res) if passthru else res
        problems.append(f"the resumed write: cqe->res = {got}, expected {expected_res}")
    if problems:
        raise CheckFailed("; ".join(problems))
