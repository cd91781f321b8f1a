"""driver-iopoll: IORING_SETUP_IOPOLL rings on /dev/vdXc0 with virtio_blk.poll_queues 0, 1 and 2.

poll_queues is read when a disk is probed, so for each value it is written to
/sys/module/virtio_blk/parameters/poll_queues first and a fresh disk (4 queues
offered) is hot-plugged. The driver then uses min(CPUs, num-queues) virtqueues,
poll_queues of them (at most all but one) without interrupts as HCTX_TYPE_POLL.

Per setting:
- layout: /sys/kernel/debug/block/vdX/hctxN/type lists exactly the expected
  number of ``poll`` hctxs (none for 0);
- io: data written and verified through an IOPOLL ring (and verified again
  through /dev/vdX), with every cqe->res 0. Which queue completed it is counted
  on both sides: QEMU's used index of each virtqueue
  (``x-query-virtio-queue-status``) and the guest's interrupt count of the
  disk's vectors (/proc/interrupts). With poll queues every I/O must have gone
  through a poll virtqueue and raised no interrupt (real polling); without, they
  go through the default virtqueues and complete by interrupt;
- status: a device error (blkdebug EIO -> VIRTIO_BLK_S_IOERR 1) and a refusal
  (-ERANGE) come back with the right cqe->res on an IOPOLL ring.
poll_queues is set back to 0 at the end.
"""

from __future__ import annotations

import re

from ..disks.spec import DiskSpec, InjectError, create_sparse_file
from ..errors import AgentError, CheckFailed, QmpError
from .base import Scenario, ScenarioContext, register
from .driver_common import (
    ERANGE, POLL_QUEUES_PARAM, VIRTIO_BLK_S_IOERR, KiB, MiB, eargs, expect_clean, expect_results, plug,
    run_engine, run_gated, unplug,
)

DEBUGFS_BLOCK = "/sys/kernel/debug/block"
SETTINGS = (0, 1, 2)
DISK_SIZE = 64 * MiB
NUM_QUEUES = 4
BAD_OFFSET = 48 * MiB
DATA_OFF = 4 * MiB
DATA_LEN = 512 * KiB
BS = 16 * KiB
USED_IDX_WRAP = 1 << 16


def parse_cpu_list(text: str) -> int:
    """Number of CPUs in a list such as ``0-1`` or ``0,2-3``."""
    count = 0
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


def expected_layout(poll_queues: int, cpus: int, num_queues: int) -> tuple[int, int]:
    """(default, poll) hctx counts virtio_blk's init_vq() makes."""
    vqs = min(cpus, num_queues)
    poll = min(poll_queues, vqs - 1)
    return vqs - poll, poll


def interrupts_of(text: str, virtio_dev: str) -> dict[str, int]:
    """Per-vector interrupt totals (all CPUs) for ``virtioN-req.M`` lines of /proc/interrupts."""
    counts: dict[str, int] = {}
    pattern = re.compile(rf"\s({re.escape(virtio_dev)}-req\.\d+)\s*$")
    for line in text.splitlines():
        m = pattern.search(line)
        if not m:
            continue
        fields = line.split(":", 1)[1].split()
        counts[m.group(1)] = sum(int(f) for f in fields if f.isdigit())
    return counts


@register
class DriverIopoll(Scenario):
    name = "driver-iopoll"
    description = (
        "IOPOLL rings on /dev/vdXc0 with virtio_blk.poll_queues 0/1/2: the expected poll hctx layout, data "
        "and cqe->res statuses correct, and the I/O counted on the queue that completed it (QEMU's per-virtqueue "
        "used index, guest interrupts): poll virtqueues without interrupts when there are poll queues, "
        "interrupt completion on the default queues when there are none."
    )

    def requires(self, ctx: ScenarioContext) -> list[str]:
        reasons = []
        try:
            ctx.agent.read_file(POLL_QUEUES_PARAM)
        except AgentError as exc:
            reasons.append(f"no {POLL_QUEUES_PARAM} in the guest ({exc})")
        listing = ctx.agent.exec(cmd=f"test -d {DEBUGFS_BLOCK}")
        if listing.get("rc") != 0:
            reasons.append(f"no {DEBUGFS_BLOCK} in the guest (debugfs with CONFIG_BLK_DEBUG_FS) to see the hctx types")
        try:
            commands = {c.get("name") for c in ctx.machine.qmp("query-commands")}
        except QmpError as exc:
            commands = set()
            reasons.append(f"QMP query-commands failed: {exc}")
        if commands and "x-query-virtio-queue-status" not in commands:
            reasons.append("QEMU has no x-query-virtio-queue-status (7.0+) to count completions per virtqueue")
        return reasons

    def run(self, ctx: ScenarioContext) -> None:
        cpus = parse_cpu_list(ctx.agent.read_file("/sys/devices/system/cpu/possible"))

        def reset(rec: dict) -> None:
            ctx.agent.write_file(POLL_QUEUES_PARAM, "0\n")
            rec["poll_queues"] = ctx.agent.read_file(POLL_QUEUES_PARAM).strip()
            if rec["poll_queues"] != "0":
                raise CheckFailed(f"{POLL_QUEUES_PARAM} reads {rec['poll_queues']!r} after writing 0")

        try:
            for pq in SETTINGS:
                self.run_setting(ctx, pq, cpus)
        finally:
            ctx.check("reset-poll-queues", reset)

    def run_setting(self, ctx: ScenarioContext, pq: int, cpus: int) -> None:
        image = create_sparse_file(ctx.scratch() / f"iopoll{pq}.raw", DISK_SIZE)
        disk = DiskSpec(
            id=f"iopoll{pq}", serial=f"vblk-iopoll{pq}", backend="file", path=image, size_bytes=DISK_SIZE,
            num_queues=NUM_QUEUES, inject_errors=(InjectError(event="read_aio", sector=BAD_OFFSET // 512),),
        ).validate()
        want_default, want_poll = expected_layout(pq, cpus, NUM_QUEUES)
        st: dict = {}

        def set_param(rec: dict) -> None:
            ctx.agent.write_file(POLL_QUEUES_PARAM, f"{pq}\n")
            rec["poll_queues"] = got = ctx.agent.read_file(POLL_QUEUES_PARAM).strip()
            if got != str(pq):
                raise CheckFailed(f"wrote {pq} to {POLL_QUEUES_PARAM}, it reads back {got!r}")

        def layout(rec: dict) -> None:
            out = ctx.agent.exec(cmd=f"cd {DEBUGFS_BLOCK}/{st['name']} && for h in hctx*; do "
                                     "echo \"$h $(cat $h/type)\"; done")
            types = dict(line.split() for line in out.get("stdout", "").splitlines() if len(line.split()) == 2)
            rec["hctx_types"] = types
            order = sorted(types, key=lambda h: int(h[4:]))
            st["poll_vqs"] = [int(h[4:]) for h in order if types[h] == "poll"]
            st["default_vqs"] = [int(h[4:]) for h in order if types[h] == "default"]
            got = (len(st["default_vqs"]), len(st["poll_vqs"]))
            rec["expected"] = {"default": want_default, "poll": want_poll, "cpus": cpus, "num_queues": NUM_QUEUES}
            if got != (want_default, want_poll) or len(types) != sum(got):
                raise CheckFailed(f"poll_queues={pq}, {cpus} CPUs, {NUM_QUEUES} queues offered: hctx types "
                                  f"{types}, expected {want_default} default + {want_poll} poll")

        def used_idx(rec: dict, key: str) -> list[int]:
            path = f"/machine/peripheral/{disk.id}/virtio-backend"
            idx = []
            for q in range(len(st["default_vqs"]) + len(st["poll_vqs"])):
                status = ctx.machine.qmp("x-query-virtio-queue-status", {"path": path, "queue": q})
                idx.append(int(status["used-idx"]))
            rec.setdefault("used_idx", {})[key] = idx
            return idx

        def interrupts(rec: dict, key: str) -> dict[str, int]:
            counts = interrupts_of(ctx.agent.read_file("/proc/interrupts"), st["virtio"])
            rec.setdefault("interrupts", {})[key] = counts
            return counts

        def io(rec: dict) -> None:
            c = st["chardev"]
            dev = ctx.agent.exec(cmd=f"basename $(readlink -f /sys/block/{st['name']}/device)")
            st["virtio"] = dev.get("stdout", "").strip()
            before_q, before_irq = used_idx(rec, "before"), interrupts(rec, "before")
            ios = 0
            for op in ("write", "verify"):
                result = run_engine(ctx, rec, op, eargs(c, op, offset=DATA_OFF, length=DATA_LEN, bs=BS, qd=4,
                                                        seed=60 + pq, iopoll=True))
                expect_clean(op, result)
                if not result.get("iopoll"):
                    raise CheckFailed(f"{op}: the engine did not use an IOPOLL ring")
                ios += int(result.get("ios") or 0)
            after_q, after_irq = used_idx(rec, "after"), interrupts(rec, "after")
            delta = [(a - b) % USED_IDX_WRAP for a, b in zip(after_q, before_q)]
            irq = sum(after_irq.values()) - sum(before_irq.values())
            on_poll = sum(delta[i] for i in st["poll_vqs"])
            on_default = sum(delta[i] for i in st["default_vqs"])
            rec["completed"] = {"ios": ios, "per_vq": delta, "on_poll_vqs": on_poll,
                                "on_default_vqs": on_default, "interrupts": irq}
            if on_poll + on_default != ios:
                raise CheckFailed(f"the device completed {on_poll + on_default} requests for {ios} I/Os "
                                  f"(per virtqueue {delta})")
            if want_poll and (on_poll != ios or irq):
                raise CheckFailed(f"poll_queues={pq}: {on_poll} of {ios} IOPOLL I/Os went through the poll "
                                  f"virtqueues {st['poll_vqs']} (per virtqueue {delta}), {irq} interrupts on "
                                  f"{st['virtio']}'s request queues: expected all polled, none by interrupt")
            if not want_poll and (on_default != ios or irq <= 0):
                raise CheckFailed(f"poll_queues=0: per virtqueue {delta}, {irq} interrupts for {ios} I/Os: "
                                  "expected interrupt completion on the default queues")
            expect_clean("block-verify", run_engine(ctx, rec, "block-verify", eargs(
                st["blockdev"], "verify", offset=DATA_OFF, length=DATA_LEN, bs=BS, qd=4, seed=60 + pq)))

        def status(rec: dict) -> None:
            c = st["chardev"]
            device_error = run_engine(ctx, rec, "read-device-error",
                                      eargs(c, "read", offset=BAD_OFFSET, bs=4 * KiB, iopoll=True))
            expect_results("read-device-error", device_error, VIRTIO_BLK_S_IOERR)
            past_end = run_engine(ctx, rec, "read-past-end", eargs(c, "read", offset=DISK_SIZE, iopoll=True))
            expect_results("read-past-end", past_end, -ERANGE)
            flush = run_engine(ctx, rec, "flush", eargs(c, "flush", ios=2, iopoll=True))
            expect_results("flush", flush, 0)

        p = f"pq{pq}"
        param = ctx.check(f"{p}-set-poll-queues", set_param)
        plugged = ctx.check(f"{p}-hotplug", plug(ctx, disk, st)) if param.status == "pass" else None
        if plugged is None:
            ctx.skip(f"{p}-hotplug", "not run: poll_queues could not be set")
        ok = plugged is not None and plugged.status == "pass"
        laid_out = run_gated(ctx, ok, [(f"{p}-layout", layout)], "not run: hotplug failed")
        run_gated(ctx, laid_out, [(f"{p}-io-counted-per-queue", io)], "not run: the hctx layout is unknown")
        run_gated(ctx, ok, [(f"{p}-status", status)], "not run: hotplug failed")
        run_gated(ctx, "name" in st, [(f"{p}-unplug", unplug(ctx, disk, st))], "not run: the disk never appeared")
