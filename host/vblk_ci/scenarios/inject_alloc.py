"""alloc-failures: every page allocation on a passthrough command's submission path fails once: -ENOMEM.

No device makes the kernel run out of memory, so the driver's unwinding after
a failed allocation (a range list that cannot be mapped, a bounce buffer that
cannot be allocated) never runs in the other suites. Here the engine sweeps
it: run N issues one command with the Nth page allocation of the submitting
thread failing (``/proc/thread-self/fail-nth``, CONFIG_FAIL_PAGE_ALLOC), N = 1,
2, ... until a run makes fewer allocations than N (that last run is the clean
one). The commands swept are those that allocate pages while they are
submitted: a WRITE_ZEROES range list (the kernel's copy is bounced into a page
for the request: DISCARD takes the same path, and QEMU 7.2 does not count
DISCARDs in ``query-blockstats``), and a READ and a WRITE bounced by their
iovecs (16 x 256 bytes).

Each sweep is judged on: every injected run completes with 0 (the allocation
was optional) or -ENOMEM, never another errno; the clean run succeeds; the device performed exactly as many operations as
completions said 0 and none failed (``query-blockstats``): a failed command
reached nothing and no success was invented. After all sweeps nothing is left
in flight (``/sys/block/vdX/inflight``), the disk still reads what was written,
and the unplug completes (a leaked request would hold ``del_gendisk()``). The
console must stay clean (the runner's classifier). Leaked memory is not
measured (the coverage kernel has no kmemleak).

Seen on the coverage kernel (2026-11-30): each of these submissions makes one
page allocation that fault injection sees, and its failure is absorbed (the
command succeeds); the bounce pages the driver's mapping allocates are not
among them, so the driver's -ENOMEM unwinding (virtblk_pt_map) still does not
run. CONFIG_FAILSLAB would reach it, at the price of a full kernel rebuild.
"""

from __future__ import annotations

from ..disks.spec import DiskSpec
from ..errors import CheckFailed
from ..machine import virtio_queue as VQ
from .base import Scenario, ScenarioContext, register
from .driver_bounds import counters
from .driver_common import MiB, eargs, errno_text, expect_clean, plug_file_disk, run_engine, run_gated, unplug
from .inject_common import ENOMEM, FaultKnobs, injection_missing

DISK_SIZE = 16 * MiB
BS = 4096
OFFSET = 2 * MiB
SEED = 0x5EED

# (check, op, engine options, the blockstats counter one successful command moves)
SWEEPS: tuple[tuple[str, str, dict, str], ...] = (
    ("sweep-write-zeroes-ranges", "write-zeroes", {}, "wr_operations"),
    ("sweep-read-bounced", "read", {"vec": 16}, "rd_operations"),
    ("sweep-write-bounced", "write", {"vec": 16, "seed": SEED}, "wr_operations"),
)


@register
class AllocFailures(Scenario):
    name = "alloc-failures"
    description = ("Page-allocation-failure sweeps (fail-nth, CONFIG_FAIL_PAGE_ALLOC) of the passthrough "
                   "submission path: a WRITE_ZEROES range list, a bounced READ and WRITE. Each "
                   "injected allocation failure gives 0 or -ENOMEM, the device sees exactly the successes, "
                   "nothing stays in flight, the disk still works. Coverage kernel only.")

    def requires(self, ctx: ScenarioContext) -> list[str]:
        return injection_missing(ctx)

    def run(self, ctx: ScenarioContext) -> None:
        st: dict = {}
        disk = plug_file_disk(ctx, "inj0", DISK_SIZE, st)
        if disk is None:
            return
        fs = FaultKnobs(ctx)
        try:
            armed = ctx.check("fault-injection-set-up", fs.arm).status == "pass"
            steps = [(name, lambda rec, op=op, opts=opts, counter=counter:
                      sweep(ctx, disk, st, rec, op, opts, counter)) for name, op, opts, counter in SWEEPS]
            run_gated(ctx, armed, steps, "not run: fail_page_alloc could not be set up")
        finally:
            fs.restore()
        ctx.check("nothing-in-flight-disk-works", lambda rec: after(ctx, st, rec))
        ctx.check("unplug", unplug(ctx, disk, st))


def sweep(ctx: ScenarioContext, disk: DiskSpec, st: dict, rec: dict, op: str, opts: dict, counter: str) -> None:
    before = counters(ctx, disk)
    result = run_engine(ctx, rec, op, eargs(st["chardev"], op, bs=BS, offset=OFFSET, fail_nth_sweep=True, **opts))
    delta = VQ.stats_delta(before, counters(ctx, disk))
    rec["counters-moved"] = delta
    res = result.get("fail_nth")
    if not isinstance(res, list) or len(res) < 2:
        raise CheckFailed(f"{op}: the sweep ran {len(res or [])} time(s): no allocation was injected "
                          f"(engine said {result.get('fail_nth')!r})")
    injected, clean = res[:-1], res[-1]
    rec["summary"] = {"runs": len(res), "enomem": injected.count(-ENOMEM), "ok": injected.count(0),
                      "submit_error": result.get("fail_nth_submit")}
    problems = []
    odd = sorted({r for r in injected if r not in (0, -ENOMEM)})
    if odd:
        problems.append("injected allocation failures completed with " + ", ".join(
            f"{errno_text(r)} (run {injected.index(r) + 1})" for r in odd) + f", expected 0 or {errno_text(-ENOMEM)}")
    if clean != 0:
        problems.append(f"the clean run (no fault injected) completed with {errno_text(clean)}")
    successes = res.count(0)
    bad = {k: v for k, v in delta.items() if k.startswith(("failed_", "invalid_"))}
    if delta.get(counter, 0) != successes or bad:
        problems.append(f"the device's {counter} moved by {delta.get(counter, 0)} for {successes} successful "
                        f"command(s) (all counters that moved: {delta})")
    if problems:
        raise CheckFailed(f"{op} with the Nth allocation failing, N = 1..{len(res) - 1}: " + "; ".join(problems))


def after(ctx: ScenarioContext, st: dict, rec: dict) -> None:
    inflight = ctx.agent.read_file(f"/sys/block/{st['name']}/inflight").split()
    rec["inflight"] = inflight
    if inflight != ["0", "0"]:
        raise CheckFailed(f"/sys/block/{st['name']}/inflight reads {' '.join(inflight)} after the sweeps: "
                          "a request was never completed or freed")
    w = run_engine(ctx, rec, "write", eargs(st["chardev"], "write", bs=BS, offset=OFFSET, seed=SEED + 1))
    expect_clean("write after the sweeps", w)
    r = run_engine(ctx, rec, "verify", eargs(st["chardev"], "verify", bs=BS, offset=OFFSET, seed=SEED + 1))
    expect_clean("verify after the sweeps", r)
