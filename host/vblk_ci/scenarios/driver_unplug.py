"""driver-unplug: hot-unplug with /dev/vdXc0 open and commands in flight.

The disk is null-backed with a per-request latency, so the device always holds
commands. A background engine job (agent ``spawn``) reads through the char
device at queue depth 8 until told to stop, counting every cqe->res by value;
failed commands never end it. Then:

1. QEMU's device_del must complete (DEVICE_DELETED): remove is not held up
   by the open file or the commands in flight;
2. /sys/block/vdX, /sys/class/vblk-generic/vdXc0 and the node vanish while
   the file is still open;
3. the job is marked (SIGUSR1: I/Os prepared from now on are counted apart),
   keeps submitting for a moment, and is stopped (SIGINT): it must finish --
   the commands in flight at unplug time completed, never hung;
4. every command on the old fd after the unplug failed cleanly with -ENODEV
   (the cover letter: "later commands on an old fd fail with -ENODEV from the
   dying queue");
5. close() after the unplug succeeded;
6. a disk plugged while the old file is still open gets another name and
   minor (nothing an old fd points at is reused), and one plugged after the
   close gets the old name and minor back: the old disk, its index and its
   minor were released when the file closed.

The same again (1-5) with the commands on an IOPOLL ring and
virtio_blk.poll_queues=1, so they sit on a poll virtqueue where only polling
reaps them, and with the job stopped (SIGSTOP) from just before device_del
until the unplug is over: a process that does not poll (stopped, traced, busy
elsewhere) must not hold the removal. The bound (45 s) leaves room for a
request-timeout based recovery. poll_queues is set back to 0 at the end.
"""

from __future__ import annotations

import time

from ..disks.spec import DiskSpec
from ..errors import AgentError, CheckFailed, MachineTimeout
from ..events import DiskUnplugged
from .base import Scenario, ScenarioContext, register
from .driver_common import (
    ENODEV, ENXIO, POLL_QUEUES_PARAM, MiB, eargs, errno_text, plug, run_gated, unplug, wait_gone,
)

DISK_SIZE = 64 * MiB
LATENCY_NS = 10_000_000  # every request stays 10 ms in the device
QD = 8
JOB_RUNTIME_S = 120  # upper bound; the job is stopped with SIGINT long before
AFTER_MARK_S = 0.5  # how long the job keeps submitting on the dead fd
POLLED_UNPLUG_S = 45.0  # remove with polled commands in flight (owner stopped) must finish within this
# What a command on an unplugged disk's old fd may return.
GONE = (-ENODEV, -ENXIO)
# Tasks in uninterruptible sleep, with where they sleep (no /proc/PID/stack needed).
D_STATE_TASKS = ("for p in /proc/[0-9]*; do grep -q '^State:.D' $p/status 2>/dev/null && "
                 "echo \"$(basename $p) $(cat $p/comm) $(cat $p/wchan)\"; done; true")


def res_counts(result: dict, key: str = "res_counts") -> dict[int, int]:
    return {int(k): int(v) for k, v in (result.get(key) or {}).items()}


def describe(counts: dict[int, int]) -> str:
    return ", ".join(f"{errno_text(k)} x{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


class Lifetime:
    """One disk's unplug-with-commands-in-flight sequence; checks are named ``<prefix><step>``."""

    def __init__(self, ctx: ScenarioContext, disk: DiskSpec, prefix: str = "", iopoll: bool = False,
                 unplug_timeout: float | None = None, after_plug: tuple = (), stop_owner: bool = False,
                 while_open: tuple = ()):
        self.ctx, self.disk, self.prefix, self.iopoll = ctx, disk, prefix, iopoll
        self.unplug_timeout = unplug_timeout
        self.stop_owner = stop_owner  # SIGSTOP the job across the unplug
        self.after_plug = after_plug  # (name, fn) checks between hotplug and the I/O
        self.while_open = while_open  # (name, fn) checks after the unplug, the old file still open
        self.st: dict = {}

    # -- the background job ----------------------------------------------------------------
    def finish_job(self, timeout_s: float) -> str:
        """Kill the background job (if it still runs) and reap it; what became of it."""
        job = self.st.pop("job", None)
        if job is None:
            return "no job"
        try:
            self.ctx.agent.signal_job(job, "KILL")
            result = self.ctx.agent.wait_job(job, timeout_s=timeout_s)
            return f"exit {result.get('exit_code')}"
        except AgentError as exc:
            return str(exc)

    def stop_and_wait(self, rec: dict) -> dict:
        """SIGINT, then the job's result; CheckFailed if it does not finish."""
        ctx, st = self.ctx, self.st
        ctx.agent.signal_job(st["job"], "INT")
        try:
            result = ctx.agent.wait_job(st["job"], timeout_s=ctx.timeouts(30.0))
        except AgentError as exc:
            if exc.kind != "Timeout":
                st.pop("job", None)
                raise
            rec["hung"] = str(exc)
            rec["d_state_tasks"] = ctx.agent.exec(cmd=D_STATE_TASKS).get("stdout", "")
            rec["after_kill"] = self.finish_job(5.0)
            raise CheckFailed("the job did not finish 30 s after SIGINT: commands in flight at unplug "
                              f"never completed ({exc})") from exc
        st.pop("job", None)
        rec["result"] = st["result"] = result
        return result

    # -- steps -----------------------------------------------------------------------------
    def start_io(self, rec: dict) -> None:
        ctx, st = self.ctx, self.st
        args = eargs(st["chardev"], "read", length=MiB, qd=QD, runtime=JOB_RUNTIME_S, iopoll=self.iopoll)
        rec["args"] = args
        st["job"] = rec["job"] = ctx.agent.spawn(args)
        # Wait until the device holds commands (debugfs lists in-flight requests per hctx).
        cmd = (f"for i in $(seq 250); do n=$(cat /sys/kernel/debug/block/{st['name']}/hctx*/busy "
               f"2>/dev/null | wc -l); [ \"$n\" -ge {QD // 2} ] && {{ echo $n; exit 0; }}; sleep 0.02; done; "
               "exit 1")
        out = ctx.agent.exec(cmd=cmd, timeout_s=ctx.timeouts(20.0))
        rec["busy"] = out
        if out.get("rc") != 0:
            raise CheckFailed(f"fewer than {QD // 2} commands in flight on the device 5 s after the job started")
        st["in_flight_at_unplug"] = int(out["stdout"].split()[0])

    def unplug_in_flight(self, rec: dict) -> None:
        ctx, st, disk = self.ctx, self.st, self.disk
        st["unplug_attempted"] = True
        rec["in_flight_before"] = st.get("in_flight_at_unplug")
        if self.stop_owner:
            ctx.agent.signal_job(st["job"], "STOP")
            rec["owner_stopped"] = True
        try:
            seconds = ctx.machine.unplug(disk.id, timeout=self.unplug_timeout)
        except MachineTimeout as exc:
            raise CheckFailed(self.blocked(rec, exc)) from exc
        finally:
            if self.stop_owner and "job" in st:
                ctx.agent.signal_job(st["job"], "CONT")
        st["unplugged"] = True
        rec["seconds_to_deleted"] = seconds
        ctx.emit(DiskUnplugged(disk.id, seconds))

    def blocked(self, rec: dict, exc: MachineTimeout) -> str:
        """The unplug did not finish: record who sleeps where, resume and stop the job, finish the unplug."""
        ctx, st = self.ctx, self.st
        rec["d_state_tasks"] = ctx.agent.exec(cmd=D_STATE_TASKS).get("stdout", "").strip()
        owner = "was stopped" if self.stop_owner else "ran"
        message = (f"device_del did not complete while the job with {st.get('in_flight_at_unplug')} commands "
                   f"in flight {owner} ({exc}); tasks in D state: {rec['d_state_tasks'] or 'none'}")
        if self.stop_owner:
            ctx.agent.signal_job(st["job"], "CONT")
        try:
            result = self.stop_and_wait(rec)
            rec["job_after_stop"] = describe(res_counts(result))
        except CheckFailed as stuck:
            return f"{message}; {stuck}"
        try:
            seconds = ctx.machine.complete_unplug(self.disk.id, timeout=ctx.timeouts(30.0))
        except MachineTimeout as again:
            return f"{message}; still not deleted after the job ended: {again}"
        st["unplugged"] = st["released_by_job_end"] = True
        rec["seconds_to_deleted_after_job_end"] = seconds
        ctx.emit(DiskUnplugged(self.disk.id, seconds))
        return f"{message}; the removal finished only {seconds:.2f}s after the job was resumed and stopped"

    def gone_while_open(self, rec: dict) -> None:
        ctx, st = self.ctx, self.st
        wait_gone(ctx, st["name"], rec)
        listing = ctx.agent.exec(cmd="ls /sys/class/vblk-generic/")
        rec["vblk_generic"] = listing.get("stdout", "").split()
        if f"{st['name']}c0" in rec["vblk_generic"]:
            raise CheckFailed(f"/sys/class/vblk-generic/{st['name']}c0 is still there")

    def collect(self, rec: dict) -> None:
        ctx, st = self.ctx, self.st
        # Mark: from here on the job's I/Os are on a disk that is gone.
        if not ctx.agent.signal_job(st["job"], "USR1"):
            rec["early_exit"] = self.finish_job(5.0)
            raise CheckFailed(f"the engine job exited during the unplug instead of running on: {rec['early_exit']}")
        time.sleep(AFTER_MARK_S)  # the job keeps submitting on the dead fd
        result = self.stop_and_wait(rec)
        if result.get("exit_code") != 0:
            raise CheckFailed(f"the job exited {result.get('exit_code')}: {result.get('stderr', '').strip()}")
        counts = res_counts(result)
        rec["res_counts"] = describe(counts)
        if sum(counts.values()) + int(result.get("res_counts_other") or 0) != result.get("ios"):
            raise CheckFailed(f"{result.get('ios')} I/Os but {sum(counts.values())} completions counted")
        if not counts.get(0):
            raise CheckFailed(f"no read succeeded before the unplug: {describe(counts)}")

    def later_fail(self, rec: dict) -> None:
        after = res_counts(self.st["result"], "res_counts_after_mark")
        rec["after_unplug"] = describe(after)
        if not after:
            raise CheckFailed("the job submitted nothing after the unplug")
        wrong = {k: v for k, v in after.items() if k not in GONE}
        if wrong:
            raise CheckFailed(
                f"commands on the old fd after the unplug: {describe(after)}; expected only "
                f"{' or '.join(errno_text(g) for g in GONE)} (the cover letter: \"later commands on an old "
                "fd fail with -ENODEV from the dying queue\")")

    def close_safe(self, rec: dict) -> None:
        result = self.st["result"]
        rec["close"] = {"close_ok": result.get("close_ok"), "close_errno": result.get("close_errno")}
        if result.get("close_ok") is not True:
            raise CheckFailed(f"close() after the unplug failed: errno {result.get('close_errno')}")

    # -- sequence --------------------------------------------------------------------------
    def run(self, gate: bool = True, gate_reason: str = "") -> bool:
        """All steps; True if the job's result was collected (the old file is closed)."""
        ctx, st, p = self.ctx, self.st, self.prefix
        plugged = run_gated(ctx, gate, [(f"{p}hotplug", plug(ctx, self.disk, st))], gate_reason)
        plugged = run_gated(ctx, plugged, [(f"{p}{name}", fn) for name, fn in self.after_plug],
                            "not run: hotplug failed") and plugged
        started = run_gated(ctx, plugged, [(f"{p}io-in-flight", self.start_io)], "not run: the disk is not ready")
        if not started:
            self.finish_job(10.0)
        unplugged = run_gated(ctx, started, [(f"{p}unplug-with-io-in-flight", self.unplug_in_flight)],
                              "not run: no I/O in flight")
        run_gated(ctx, unplugged, [(f"{p}sysfs-and-node-gone-while-open", self.gone_while_open)],
                  "not run: the unplug failed")
        run_gated(ctx, unplugged and "job" in st, [(f"{p}{name}", fn) for name, fn in self.while_open],
                  "not run: the unplug failed")
        collected = run_gated(ctx, unplugged, [(f"{p}in-flight-commands-complete", self.collect)],
                              "not run: the unplug failed")
        run_gated(ctx, collected, [
            (f"{p}later-commands-fail-enodev", self.later_fail),
            (f"{p}close-after-unplug", self.close_safe),
        ], "not run: the job did not finish")
        if "job" in st:
            st["leftover_job"] = self.finish_job(10.0)
        if "name" in st and not st.get("unplug_attempted"):
            ctx.check(f"{p}unplug", unplug(ctx, self.disk, st))
        return collected or st.get("released_by_job_end", False)


@register
class DriverUnplug(Scenario):
    name = "driver-unplug"
    description = (
        "Hot-unplug with /dev/vdXc0 open and reads in flight (interrupt completion; then an IOPOLL ring on a "
        "poll queue whose owner is stopped): remove completes, the sysfs entries and the node vanish while the "
        "file is open, commands in flight complete, later commands on the old fd fail with -ENODEV, close() is "
        "safe, and the name and char device minor are reused only after the close."
    )

    def requires(self, ctx: ScenarioContext) -> list[str]:
        if ctx.agent.exec(cmd="test -d /sys/kernel/debug/block").get("rc") != 0:
            return ["no /sys/kernel/debug/block in the guest (debugfs, CONFIG_BLK_DEBUG_FS): the scenario "
                    "reads the requests in flight there"]
        return []

    def run(self, ctx: ScenarioContext) -> None:
        disk = DiskSpec(id="unplug0", serial="vblk-unplug0", backend="null", size_bytes=DISK_SIZE,
                        latency_ns=LATENCY_NS, num_queues=2).validate()
        again = DiskSpec(id="unplug1", serial="vblk-unplug1", backend="null", size_bytes=DISK_SIZE).validate()
        polled = DiskSpec(id="unplug2", serial="vblk-unplug2", backend="null", size_bytes=DISK_SIZE,
                          latency_ns=LATENCY_NS, num_queues=2).validate()
        meanwhile = DiskSpec(id="unplug3", serial="vblk-unplug3", backend="null", size_bytes=DISK_SIZE).validate()
        st2: dict = {}
        st3: dict = {}

        def not_reused(rec: dict) -> None:
            plug(ctx, meanwhile, st3)(rec)
            old = (first.st["name"], first.st["info"].get("chardev_devno"))
            new = (st3["name"], st3["info"].get("chardev_devno"))
            rec["old"], rec["new"] = old, new
            if new[0] == old[0] or new[1] == old[1]:
                raise CheckFailed(f"a disk plugged while the unplugged {old[0]} ({old[1]}) is still open got "
                                  f"{new[0]} ({new[1]}): a name or minor an old fd points at was reused")

        first = Lifetime(ctx, disk, while_open=(("name-and-minor-not-reused-while-open", not_reused),))
        released = first.run()

        def reuse(rec: dict) -> None:
            plug(ctx, again, st2)(rec)
            old = (first.st["name"], first.st["info"].get("chardev_devno"))
            new = (st2["name"], st2["info"].get("chardev_devno"))
            rec["old"], rec["new"] = old, new
            if new != old:
                raise CheckFailed(f"the new disk is {new[0]} with char device {new[1]}, the unplugged one was "
                                  f"{old[0]} with {old[1]}: the old disk or its minor was not released")

        run_gated(ctx, released, [("name-and-minor-reused-after-close", reuse)],
                  "not run: the old file may still be open")
        run_gated(ctx, "name" in st3, [("unplug-disk-plugged-while-open", unplug(ctx, meanwhile, st3))],
                  "not run: no such disk")
        run_gated(ctx, "name" in st2, [("unplug-new-disk", unplug(ctx, again, st2))], "not run: no new disk")

        def set_poll_queues(value: int) -> None:
            ctx.agent.write_file(POLL_QUEUES_PARAM, f"{value}\n")
            got = ctx.agent.read_file(POLL_QUEUES_PARAM).strip()
            if got != str(value):
                raise CheckFailed(f"wrote {value} to {POLL_QUEUES_PARAM}, it reads back {got!r}")

        def poll_layout(rec: dict) -> None:
            name = second.st["name"]
            out = ctx.agent.exec(cmd=f"cat /sys/kernel/debug/block/{name}/hctx*/type")
            rec["hctx_types"] = types = out.get("stdout", "").split()
            if "poll" not in types:
                raise CheckFailed(f"poll_queues=1 but {name} has no poll hctx: {types}")

        second = Lifetime(ctx, polled, prefix="polled-", iopoll=True, unplug_timeout=ctx.timeouts(POLLED_UNPLUG_S),
                          after_plug=(("has-poll-queue", poll_layout),), stop_owner=True)
        if ctx.agent.exec(cmd=f"test -w {POLL_QUEUES_PARAM}").get("rc") != 0:
            ctx.skip("polled-hotplug", f"not run: no writable {POLL_QUEUES_PARAM} in the guest")
            return
        try:
            param = ctx.check("polled-set-poll-queues", lambda rec: set_poll_queues(1))
            second.run(param.status == "pass", "not run: poll_queues could not be set")
        finally:
            ctx.check("reset-poll-queues", lambda rec: set_poll_queues(0))
