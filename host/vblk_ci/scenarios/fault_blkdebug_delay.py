"""fault-blkdebug-delay: pure latency injected by QEMU (blkdebug ``delay-ns``, QEMU >= 10).

Reads are delayed by DELAY_MS while armed: one passthrough read takes at
least that long and succeeds; after disarming it is fast again.
"""

from __future__ import annotations

from ..faults.kinds import make_fault
from .base import Scenario, ScenarioContext, register
from .driver_common import CheckFailed, eargs, expect_clean, plug, run_engine, run_gated, unplug
from .fault_common import BLOCK, file_disk, verify_baseline, with_fault, write_baseline

SEED = 53
DELAY_MS = 500


@register
class FaultBlkdebugDelay(Scenario):
    name = "fault-blkdebug-delay"
    description = f"blkdebug delay-ns={DELAY_MS} ms on reads at run time: a read takes >= {DELAY_MS} ms and succeeds."

    def requires(self, ctx: ScenarioContext) -> list[str]:
        version = tuple(ctx.machine.caps.version)
        if version < (10, 0, 0):
            return [f"blkdebug delay-ns needs QEMU >= 10.0; this is {'.'.join(map(str, version))}"]
        return []

    def run(self, ctx: ScenarioContext) -> None:
        disk = file_disk(ctx, "fdly0")
        st: dict = {}
        if not run_gated(ctx, True, [("hotplug", plug(ctx, disk, st))], ""):
            return
        ctx.check("baseline-write", write_baseline(ctx, st["chardev"], SEED))

        def delayed(rec: dict) -> None:
            def read(key: str) -> float:
                result = run_engine(ctx, rec, key, eargs(st["chardev"], "read", offset=0, length=BLOCK, bs=BLOCK))
                expect_clean(key, result)
                return result["elapsed_ns"] / 1e6

            def armed() -> None:
                ms = read("delayed")
                rec["delayed_ms"] = round(ms, 1)
                if ms < DELAY_MS:
                    raise CheckFailed(f"a read took {ms:.0f} ms with {DELAY_MS} ms injected")
            with_fault(ctx, make_fault("blkdebug-delay", disk, {"op": "read", "delay_ns": DELAY_MS * 10**6}), rec,
                       armed)
            ms = read("after-disarm")
            rec["after_ms"] = round(ms, 1)
            if ms >= DELAY_MS:
                raise CheckFailed(f"after disarming a read still took {ms:.0f} ms")

        ctx.check("read-delay", delayed)
        ctx.check("data-intact", verify_baseline(ctx, st["chardev"], SEED))
        ctx.check("unplug", unplug(ctx, disk, st))
