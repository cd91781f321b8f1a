"""driver-unplug-iopoll: surprise unplugs while IOPOLL rings poll a shared poll queue (review-v2 #8).

The review: in patch 5/5's ``uring_cmd_iopoll``, between ``READ_ONCE(pdu->req)``
and ``blk_rq_poll()``, the timeout handler or another ring polling the same
queue can complete and free the request; during unplug the tag set can go in
that window. This scenario makes that window as busy as it can from outside:
with ``virtio_blk.poll_queues=1`` every CPU maps to the one poll virtqueue, so
JOBS IOPOLL rings (each its own engine process holding /dev/vdXc0 open, queue
depth QD) keep reaping each other's requests, on a null-co disk whose requests
take LATENCY_NS each; then the disk is unplugged (device_del) with all of them
polling, CYCLES times (a fresh disk each cycle).

Per cycle (one check, ``cycle-N``): commands are in flight on the device
before the unplug (device_del 0-0.5 s after they are seen, varying by cycle);
DEVICE_DELETED arrives within UNPLUG_S and /sys/block/vdX and the node go;
every job finishes within 30 s of SIGINT (no hang), and every completion it
counted is 0 or a "gone" errno (-ENODEV, -ENXIO). A splat fails the check
through the console. The default kernel is unlikely to show the iopoll race as
a crash (nothing checks for use after free there); the debug kernel (KASAN) is
where a lost race would show.

What it did find on the v2 series: commands racing the unplug get -ERANGE.
del_gendisk() -> __blk_mark_disk_dead() sets the capacity to 0 before it starts
draining the queue, so a command whose request was allocated in between fails
the driver's capacity check; patch 4/5's commit message promises -ENODEV for
exactly this case ("a hot-unplugged disk has capacity 0, and commands on its old
fds must get -ENODEV from the dying queue").
"""

from __future__ import annotations

import time

from ..disks.spec import DiskSpec
from ..errors import AgentError, CheckFailed, MachineTimeout
from ..events import DiskUnplugged
from .base import Scenario, ScenarioContext, register
from .driver_common import (
    DEBUGFS_BLOCK, POLL_QUEUES_PARAM, ENODEV, ENXIO, KiB, MiB, eargs, errno_text, plug, run_gated, wait_gone,
    poll_queue_requirements, set_poll_queues,
)

CYCLES = 12
JOBS = 3
# device_del this long after the commands are seen in flight, by cycle (varies where the unplug lands)
UNPLUG_DELAYS_S = (0.0, 0.05, 0.2, 0.5)
QD = 8
# Large commands: mapping the user buffer widens the time between request allocation and the driver's checks.
BS = 256 * KiB
DISK_SIZE = 64 * MiB
LATENCY_NS = 2_000_000
JOB_RUNTIME_S = 120  # upper bound; each job is stopped with SIGINT after the unplug
UNPLUG_S = 45.0
ALLOWED = (0, -ENODEV, -ENXIO)
D_STATE_TASKS = ("for p in /proc/[0-9]*; do grep -q '^State:.D' $p/status 2>/dev/null && "
                 "echo \"$(basename $p) $(cat $p/comm) $(cat $p/wchan)\"; done; true")


def merge_counts(results: list[dict]) -> dict[int, int]:
    """All jobs' ``res_counts`` (cqe->res -> count) added up."""
    total: dict[int, int] = {}
    for result in results:
        for res, n in (result.get("res_counts") or {}).items():
            total[int(res)] = total.get(int(res), 0) + int(n)
    return total


def unexpected(counts: dict[int, int], allowed: tuple[int, ...] = ALLOWED) -> dict[int, int]:
    return {res: n for res, n in counts.items() if res not in allowed}


def describe(counts: dict[int, int]) -> str:
    return ", ".join(f"{errno_text(k)} x{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"


@register
class DriverUnplugIopoll(Scenario):
    name = "driver-unplug-iopoll"
    description = (
        f"{CYCLES} surprise unplugs (device_del), each with {JOBS} IOPOLL rings (one process each, /dev/vdXc0 "
        "open) reaping each other's commands on the one poll queue: the unplug completes, every command "
        "completes with 0 or -ENODEV/-ENXIO, every job ends, no splat (review-v2 #8, iopoll racing unplug)."
    )

    def requires(self, ctx: ScenarioContext) -> list[str]:
        return poll_queue_requirements(ctx)

    def run(self, ctx: ScenarioContext) -> None:
        old = ctx.agent.read_file(POLL_QUEUES_PARAM).strip()

        set_param = set_poll_queues(ctx, 1, old)

        try:
            ok = ctx.check("set-poll-queues-1", set_param).status == "pass"
            run_gated(ctx, ok, [(f"cycle-{i}", lambda rec, i=i: cycle(ctx, i, rec)) for i in range(CYCLES)],
                      "not run: poll_queues could not be set")
        finally:
            ctx.check("reset-poll-queues", lambda rec: ctx.agent.write_file(POLL_QUEUES_PARAM, f"{old or 0}\n"))


def stop_jobs(ctx: ScenarioContext, jobs: list[int], rec: dict) -> list[dict]:
    """SIGINT every job, then collect each; CheckFailed naming the ones that hang (those are killed)."""
    for job in jobs:
        ctx.agent.signal_job(job, "INT")
    results, hung = [], []
    for job in jobs:
        try:
            results.append(ctx.agent.wait_job(job, timeout_s=ctx.timeouts(30.0)))
        except AgentError as exc:
            if exc.kind != "Timeout":
                raise
            hung.append(job)
    if hung:
        rec["d_state_tasks"] = ctx.agent.exec(cmd=D_STATE_TASKS).get("stdout", "").strip()
        for job in hung:
            ctx.agent.signal_job(job, "KILL")
        raise CheckFailed(f"{len(hung)} of {len(jobs)} IOPOLL jobs did not finish 30 s after SIGINT: commands in "
                          f"flight at unplug never completed; tasks in D state: {rec['d_state_tasks'] or 'none'}")
    return results


def cycle(ctx: ScenarioContext, i: int, rec: dict) -> None:
    disk = DiskSpec(id=f"upoll{i}", serial=f"vblk-upoll{i}", backend="null", size_bytes=DISK_SIZE,
                    latency_ns=LATENCY_NS, num_queues=2).validate()
    st: dict = {}
    plug(ctx, disk, st)(rec)
    name = st["name"]
    types = ctx.agent.exec(cmd=f"cat {DEBUGFS_BLOCK}/{name}/hctx*/type").get("stdout", "").split()
    rec["hctx_types"] = types
    jobs: list[int] = []
    unplugged = False
    try:
        if "poll" not in types:
            raise CheckFailed(f"poll_queues=1 but {name} has no poll hctx: {types}")
        for j in range(JOBS):
            jobs.append(ctx.agent.spawn(eargs(st["chardev"], "read", offset=j * 16 * MiB, length=16 * MiB,
                                              bs=BS, qd=QD, runtime=JOB_RUNTIME_S, iopoll=True)))
        busy = ctx.agent.exec(cmd=(
            f"for i in $(seq 250); do n=$(cat {DEBUGFS_BLOCK}/{name}/hctx*/busy 2>/dev/null | wc -l); "
            f"[ \"$n\" -ge {QD} ] && {{ echo $n; exit 0; }}; sleep 0.02; done; exit 1"), timeout_s=ctx.timeouts(20.0))
        if busy.get("rc") != 0:
            raise CheckFailed(f"fewer than {QD} commands in flight 5 s after {JOBS} IOPOLL jobs started")
        rec["in_flight_seen"] = int(busy["stdout"].split()[0])
        time.sleep(UNPLUG_DELAYS_S[i % len(UNPLUG_DELAYS_S)])
        try:
            seconds = ctx.machine.unplug(disk.id, timeout=ctx.timeouts(UNPLUG_S))
        except MachineTimeout as exc:
            rec["d_state_tasks"] = ctx.agent.exec(cmd=D_STATE_TASKS).get("stdout", "").strip()
            raise CheckFailed(f"device_del did not complete within {UNPLUG_S:g} s with {JOBS} IOPOLL jobs polling "
                              f"({exc}); tasks in D state: {rec['d_state_tasks'] or 'none'}") from exc
        unplugged = True
        rec["seconds_to_deleted"] = seconds
        ctx.emit(DiskUnplugged(disk.id, seconds))
        wait_gone(ctx, name, rec)
        time.sleep(0.3)  # the jobs go on submitting on the dead fd for a moment
        results = stop_jobs(ctx, jobs, rec)
        jobs = []
        counts = merge_counts(results)
        rec["res_counts"] = describe(counts)
        bad_exit = [r.get("exit_code") for r in results if r.get("exit_code") != 0]
        if bad_exit:
            raise CheckFailed(f"IOPOLL jobs exited {bad_exit}: {[r.get('stderr', '').strip() for r in results]}")
        if not counts.get(0):
            raise CheckFailed(f"no command succeeded before the unplug: {describe(counts)}")
        wrong = unexpected(counts)
        if wrong:
            raise CheckFailed(f"cycle {i}: completions {describe(counts)}; expected only 0 or "
                              f"{' / '.join(errno_text(a) for a in ALLOWED if a)} ({describe(wrong)} are not)")
    finally:
        for job in jobs:
            try:
                ctx.agent.signal_job(job, "KILL")
                ctx.agent.wait_job(job, timeout_s=ctx.timeouts(10.0))
            except AgentError:
                pass
        if not unplugged and disk.id in ctx.machine.plugged:
            try:
                ctx.machine.unplug(disk.id, timeout=ctx.timeouts(UNPLUG_S))
            except MachineTimeout:
                pass
