"""driver-poll-timeout: a polled command that fell back to an interrupt queue (review-v2 #7).

With ``virtio_blk.poll_queues=0`` when the disk is probed, a passthrough command
from an IORING_SETUP_IOPOLL ring is REQ_POLLED but lands on a default
(interrupt) queue. Patch 5/5 gives every REQ_POLLED passthrough command a 1 s
block-layer timeout so that its ``.timeout`` handler can poll a poll queue for
it; the review: that timeout is also armed on the interrupt-queue fallback, and
should be gated on ``blk_rq_is_poll()``. The contract (v3): such a command keeps
the queue's normal timeout (``io_timeout``, 30 s) and completes by interrupt.

Seen from outside: a write held inside QEMU (blkdebug ``break``, qemu-io
``resume`` after HOLD_S = 3 s) on that disk, once from a plain ring (the
control) and once from an IOPOLL ring:
- both stay pending while held and complete with cqe->res 0 and the right data
  once resumed, with nothing on the console (the command is not failed or
  given up early);
- the block layer's timeout work runs on kblockd, a WQ_HIGHPRI workqueue, i.e.
  on the ``kworker/N:MH`` threads. On an otherwise idle disk they wake about
  once a second while a command with a 1 s timeout is held (each expiry runs
  blk_mq_timeout_work, the handler re-arms the timer) and not at all while one
  with a 30 s timeout is. ``no-early-timeout-on-interrupt-queue`` counts their
  context switches during each hold and fails if the IOPOLL hold woke them
  clearly more often than the plain one did. This is a side channel (the guest
  kernel has no ftrace or kprobes to count ``.timeout`` calls directly); the
  numbers are kept in the check's record.
"""

from __future__ import annotations

import time

from ..disks.spec import DiskSpec, create_sparse_file
from ..errors import AgentError, CheckFailed
from ..faults.kinds import make_fault
from .base import Scenario, ScenarioContext, register
from .driver_common import (
    DEBUGFS_BLOCK, POLL_QUEUES_PARAM, MiB, errno_text, eargs, expect_clean, plug, run_engine, run_gated,
    unplug, poll_queue_requirements, set_poll_queues,
)

DISK_SIZE = 64 * MiB
BLOCK = 4096
SEED = 81
HOLD_S = 3.0
# The IOPOLL hold may wake kblockd's workers at most this many times more than the plain
# hold did: a 1 s timeout gives ~HOLD_S wake-ups, a 30 s one none.
WAKEUP_SLACK = 1
TARGETS = {"plain": 8 * MiB, "iopoll": 9 * MiB}
# pid, comm, voluntary and involuntary context switches of every highpri kworker.
KWORKERS_CMD = ("for p in /proc/[0-9]*; do c=$(cat $p/comm 2>/dev/null) || continue; case \"$c\" in "
                "kworker/*H*) set -- $(grep ctxt_switches $p/status 2>/dev/null); "
                "echo \"${p#/proc/} $c $2 $4\";; esac; done; true")


def parse_kworkers(text: str) -> dict[int, tuple[str, int]]:
    """``pid comm voluntary involuntary`` lines -> {pid: (comm, total context switches)}."""
    out: dict[int, tuple[str, int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 4 or not all(p.isdigit() for p in (parts[0], parts[2], parts[3])):
            continue
        out[int(parts[0])] = (parts[1], int(parts[2]) + int(parts[3]))
    return out


def wakeups(before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]]) -> dict[str, int]:
    """Context switches per kworker between two snapshots (new workers count from 0); only those that ran."""
    woke: dict[str, int] = {}
    for pid, (comm, n) in after.items():
        delta = n - before.get(pid, (comm, 0))[1]
        if delta > 0:
            woke[f"{pid} {comm}"] = delta
    return woke


def early_timeout_verdict(plain: int, iopoll: int, slack: int = WAKEUP_SLACK) -> str | None:
    """None if the IOPOLL hold woke kblockd's workers no more than the plain hold (+ slack), else why not."""
    if iopoll <= plain + slack:
        return None
    return (f"while an IOPOLL write was held {HOLD_S:g} s on an interrupt queue, the highpri kworkers that run "
            f"blk-mq's timeout work (kblockd) switched {iopoll} times, against {plain} for the same hold of a plain "
            "write: the block-layer timeout fired about every second, so the polled command's 1 s timeout "
            "(patch 5/5) is armed although the request is not on a poll queue (review-v2 #7: gate it on "
            "blk_rq_is_poll())")


@register
class DriverPollTimeout(Scenario):
    name = "driver-poll-timeout"
    description = (
        "On a disk probed with virtio_blk.poll_queues=0, a passthrough write from an IOPOLL ring (REQ_POLLED on "
        "an interrupt queue) held in QEMU for 3 s completes with cqe->res 0 and its data once resumed, and is "
        "not given the 1 s polled-command timeout (kblockd's timeout work does not run during the hold, against "
        "a plain write held the same way) (review-v2 #7)."
    )

    def requires(self, ctx: ScenarioContext) -> list[str]:
        return poll_queue_requirements(ctx)

    def run(self, ctx: ScenarioContext) -> None:
        image = create_sparse_file(ctx.scratch() / "ptmo0.raw", DISK_SIZE)
        disk = DiskSpec(id="ptmo0", serial="vblk-ptmo0", backend="file", path=image, size_bytes=DISK_SIZE,
                        num_queues=2).validate()
        st: dict = {}
        old = ctx.agent.read_file(POLL_QUEUES_PARAM).strip()

        set_param = set_poll_queues(ctx, 0, old)

        def layout(rec: dict) -> None:
            out = ctx.agent.exec(cmd=f"cat {DEBUGFS_BLOCK}/{st['name']}/hctx*/type")
            rec["hctx_types"] = types = out.get("stdout", "").split()
            if not types or "poll" in types:
                raise CheckFailed(f"poll_queues=0 at probe, yet the hctx types are {types}: expected no poll queue")

        try:
            param = ctx.check("set-poll-queues-0", set_param)
            ok = run_gated(ctx, param.status == "pass", [("hotplug", plug(ctx, disk, st))],
                           "not run: poll_queues could not be set")
            ok = run_gated(ctx, ok, [("no-poll-queues", layout)], "not run: hotplug failed") and ok
            holds: dict[str, dict] = {}
            run_gated(ctx, ok, [
                ("plain-write-held", lambda rec: held_write(ctx, disk, st, rec, holds, iopoll=False)),
                ("iopoll-write-held-on-interrupt-queue",
                 lambda rec: held_write(ctx, disk, st, rec, holds, iopoll=True)),
            ], "not run: no disk without poll queues")

            def compare(rec: dict) -> None:
                if "plain" not in holds or "iopoll" not in holds:
                    raise CheckFailed(f"a hold did not complete its measurement (have {sorted(holds)})")
                rec["plain"], rec["iopoll"] = holds["plain"], holds["iopoll"]
                why = early_timeout_verdict(holds["plain"]["kworker_switches"], holds["iopoll"]["kworker_switches"])
                if why:
                    raise CheckFailed(why)

            run_gated(ctx, ok, [("no-early-timeout-on-interrupt-queue", compare)], "not run: no disk")
            run_gated(ctx, "name" in st, [("unplug", unplug(ctx, disk, st))], "not run: the disk never appeared")
        finally:
            ctx.check("reset-poll-queues", lambda rec: ctx.agent.write_file(POLL_QUEUES_PARAM, f"{old or 0}\n"))


def busy_requests(ctx: ScenarioContext, name: str) -> list[str]:
    out = ctx.agent.exec(cmd=f"cat {DEBUGFS_BLOCK}/{name}/hctx*/busy 2>/dev/null; true")
    return [line for line in out.get("stdout", "").splitlines() if line.strip()]


def kworkers(ctx: ScenarioContext) -> dict[int, tuple[str, int]]:
    return parse_kworkers(ctx.agent.exec(cmd=KWORKERS_CMD, timeout_s=ctx.timeouts(30.0)).get("stdout", ""))


def held_write(ctx: ScenarioContext, disk: DiskSpec, st: dict, rec: dict, holds: dict, iopoll: bool) -> None:
    """One passthrough write held in QEMU for HOLD_S, then resumed: it must stay pending, then complete with
    cqe->res 0 and its data; the highpri kworkers' context switches during the hold go to ``holds``."""
    key = "iopoll" if iopoll else "plain"
    target, seed = TARGETS[key], SEED + (1 if iopoll else 0)
    seq = ctx.agent.dmesg().get("next_seq", 0)
    fault = make_fault("request-break", disk, {"op": "write"})
    fault.arm(ctx.machine)
    job = None
    try:
        job = ctx.agent.spawn(eargs(st["chardev"], "write", offset=target, length=BLOCK, bs=BLOCK, seed=seed,
                                    iopoll=iopoll))
        deadline = time.monotonic() + ctx.timeouts(10.0)
        while not (busy := busy_requests(ctx, st["name"])) and time.monotonic() < deadline:
            time.sleep(0.1)
        rec["busy_while_held"] = busy
        if not busy:
            raise CheckFailed("the write never showed up in flight on the device (debugfs hctx*/busy)")
        before, t0 = kworkers(ctx), time.monotonic()
        time.sleep(max(0.0, HOLD_S - 0.5))
        after, t1 = kworkers(ctx), time.monotonic()
        woke = wakeups(before, after)
        holds[key] = rec["hold"] = {"seconds": round(t1 - t0, 2), "kworker_switches": sum(woke.values()),
                                    "kworkers": woke}
        try:
            early = ctx.agent.wait_job(job, timeout_s=0.1)
            job = None
            rec["early"] = early
            raise CheckFailed(f"the write finished while suspended in QEMU: cqe->res "
                              f"{errno_text((early.get('results') or [None])[0])}: given up early")
        except AgentError as exc:
            if exc.kind != "Timeout":
                raise
    finally:
        fault.disarm(ctx.machine)
    try:
        result = ctx.agent.wait_job(job, timeout_s=ctx.timeouts(30.0)) if job is not None else None
        job = None
    finally:
        if job is not None:
            ctx.agent.signal_job(job, "KILL")
    rec["job"] = result
    rec["guest_log"] = [r.get("text") for r in ctx.agent.dmesg(since_seq=seq).get("records", [])][-20:]
    res = (result.get("results") or [None])[0]
    if res != 0:
        raise CheckFailed(f"the {'IOPOLL' if iopoll else 'plain'} write held {HOLD_S:g} s in QEMU completed with "
                          f"cqe->res {errno_text(res)} after the resume, expected 0 (success)")
    if iopoll and not result.get("iopoll"):
        raise CheckFailed("the engine did not use an IOPOLL ring")
    for path in (st["chardev"], st["blockdev"]):
        expect_clean(f"verify {path}", run_engine(ctx, rec, f"verify-{path}", eargs(
            path, "verify", offset=target, length=BLOCK, bs=BLOCK, seed=seed)))
