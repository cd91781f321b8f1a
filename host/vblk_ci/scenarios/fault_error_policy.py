"""fault-error-policy: virtio-blk's rerror/werror policies under a failing backend.

- ``ignore``: QEMU drops the error and the guest sees success (cqe->res 0);
- ``stop``: the failing write pauses the VM (BLOCK_IO_ERROR with action stop,
  then STOP, status io-error); the scenario disarms the fault and sends
  ``cont``; QEMU retries the request, which completes with success and its
  data reads back. ``report`` is covered by fault-blkdebug.
"""

from __future__ import annotations

import threading

from ..errors import AgentError, CheckFailed, MachineTimeout
from ..faults.kinds import make_fault
from .base import Scenario, ScenarioContext, register
from .driver_common import MiB, eargs, expect_clean, plug, run_engine, run_gated, unplug
from .fault_common import BLOCK, expect_res, file_disk, one_io, verify_baseline, with_fault, write_baseline

SEED = 45
TARGET = 8 * MiB


@register
class FaultErrorPolicy(Scenario):
    name = "fault-error-policy"
    description = ("werror/rerror=ignore: a failing write and read succeed for the guest; werror=stop: the VM "
                   "pauses with BLOCK_IO_ERROR, and after disarm + cont the write completes with success and "
                   "its data reads back.")

    def run(self, ctx: ScenarioContext) -> None:
        ign = file_disk(ctx, "fign0", rerror="ignore", werror="ignore")
        stp = file_disk(ctx, "fstp0", rerror="stop", werror="stop")
        si: dict = {}
        ss: dict = {}

        def ignore(rec: dict) -> None:
            def armed() -> None:
                expect_res("write", one_io(ctx, rec, "write", si["chardev"], "write", TARGET), 0,
                           "werror=ignore hides the error")
                expect_res("read", one_io(ctx, rec, "read", si["chardev"], "read", TARGET), 0,
                           "rerror=ignore hides the error")
            with_fault(ctx, make_fault("blkdebug-error", ign, {"op": "write"}), rec, armed)
            with_fault(ctx, make_fault("blkdebug-error", ign, {"op": "read"}), rec, armed)

        if run_gated(ctx, True, [("ignore-hotplug", plug(ctx, ign, si))], ""):
            ctx.check("ignore-baseline-write", write_baseline(ctx, si["chardev"], SEED))
            ctx.check("werror-rerror-ignore", ignore)
            ctx.check("ignore-data-intact", verify_baseline(ctx, si["chardev"], SEED))
            ctx.check("ignore-unplug", unplug(ctx, ign, si))

        def stop_then_cont(rec: dict) -> None:
            # The engine call runs in a thread: its reply can only come after cont, while this
            # thread watches QMP, disarms and continues the VM.
            box: dict = {}

            def write() -> None:
                try:
                    box["result"] = ctx.agent.engine(eargs(ss["chardev"], "write", offset=TARGET, length=BLOCK,
                                                           bs=BLOCK, seed=SEED + 1), timeout_s=ctx.timeouts(60.0))
                except AgentError as exc:
                    box["error"] = exc

            fault = make_fault("blkdebug-error", stp, {"op": "write"})
            fault.arm(ctx.machine)
            writer = threading.Thread(target=write, name="stop-writer", daemon=True)
            writer.start()
            try:
                try:
                    ev = ctx.machine.events_wait("BLOCK_IO_ERROR", {"data": {"action": "stop"}}, ctx.timeouts(30.0))
                    ctx.machine.events_wait("STOP", None, ctx.timeouts(10.0))
                except MachineTimeout as exc:
                    raise CheckFailed(f"werror=stop: the VM did not pause on the failing write: {exc}") from exc
                rec["block_io_error"] = ev.get("data")
                status = ctx.machine.qmp("query-status")
                rec["status_stopped"] = status
                if status.get("status") != "io-error":
                    raise CheckFailed(f"query-status says {status.get('status')!r}, expected 'io-error'")
                if box:
                    raise CheckFailed(f"the write returned while the VM was paused: {box}")
            finally:
                fault.disarm(ctx.machine)
                if ctx.machine.qmp("query-status").get("status") != "running":
                    ctx.machine.qmp("cont")
                writer.join(ctx.timeouts(60.0) + 15)
            if "error" in box or "result" not in box:
                raise CheckFailed(f"after disarm + cont the write did not complete: {box.get('error', 'no reply')}")
            result = rec["job"] = box["result"]
            expect_res("write", (result.get("results") or [None])[0], 0, "QEMU retried the write after cont")
            verify = run_engine(ctx, rec, "verify", eargs(ss["chardev"], "verify", offset=TARGET, length=BLOCK,
                                                          bs=BLOCK, seed=SEED + 1))
            expect_clean("verify", verify)

        if run_gated(ctx, True, [("stop-hotplug", plug(ctx, stp, ss))], ""):
            ctx.check("stop-baseline-write", write_baseline(ctx, ss["chardev"], SEED))
            ctx.check("werror-stop-disarm-cont", stop_then_cont)
            ctx.check("stop-data-intact", verify_baseline(ctx, ss["chardev"], SEED))
            ctx.check("stop-unplug", unplug(ctx, stp, ss))
