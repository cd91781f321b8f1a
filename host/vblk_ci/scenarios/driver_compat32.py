"""driver-compat32: /dev/vdXc0 from 32-bit (compat) io_uring callers, inline, through io-wq
and with SQPOLL, one buffer and iovec arrays.

Review-v2 finding #4 ("compat handling misses iovec arrays"): for cmd_op 2 the
driver maps the iovec array with ``blk_rq_map_user_io()`` -> ``import_iovec()``,
which decides whether the array is 32-bit from ``in_compat_syscall()``. That is
true only while a 32-bit task is inside its own ``io_uring_enter``; a command
issued from an io-wq worker (``IOSQE_ASYNC``, or any punt) or from the SQPOLL
thread sees false, and a 32-bit array (8-byte entries) is parsed as 64-bit
(16-byte entries). The ring knows it is a compat ring (``IO_URING_F_COMPAT``);
the driver does not ask it.

One file-backed disk. Every combination of
  engine {x86_64: vblk-engine, i386: vblk-engine32} x
  issue  {inline, async (IOSQE_ASYNC on every SQE), sqpoll (IORING_SETUP_SQPOLL)} x
  shape  {single (cmd_op 1, one buffer), iovec (cmd_op 2, VEC iovecs per command)}
is one check, named ``<engine>-<shape>-<issue>`` (``i386-iovec-sqpoll``), on its own
never-written region with its own seed:
  1. write the seeded pattern through /dev/vdXc0 with that engine, issue mode and shape;
  2. verify it through /dev/vdX with the 64-bit engine (O_DIRECT, the block layer's own
     path: independent of the code under test);
  3. verify it through /dev/vdXc0 with the same engine, issue mode and shape.
The check holds if every command completed with cqe->res 0 and both verifies read
the pattern back; its detail lists every step that did not (errno counts, the first
mismatch). A correct driver passes all twelve. On the v2 series the 64-bit ones and
the 32-bit inline ones pass (so the check can pass, and the 32-bit iovec arrays the
engine builds are right), and the 32-bit iovec ones through io-wq and SQPOLL fail.

Needs ``/usr/bin/vblk-engine32`` in the initramfs and CONFIG_IA32_EMULATION in the
guest kernel: ``requires()`` runs the 32-bit engine once and skips with the reason if
it does not start.
"""

from __future__ import annotations

from ..disks.spec import DiskSpec, create_sparse_file
from ..errors import AgentError, CheckFailed
from .base import Scenario, ScenarioContext, register
from .driver_common import KiB, MiB, eargs, errno_text, plug, run_gated, unplug

DISK_SIZE = 64 * MiB
REGION = 256 * KiB  # one per combination, from REGION on (away from the partition scan at 0)
LENGTH = 128 * KiB
BS = 32 * KiB  # 4 commands per job
QD = 2
VEC = 8  # iovecs per command: 4 KiB each
SEED_BASE = 3200

#: (name in the check, agent engine name, pointer bits it must report)
ENGINES = (("x86_64", "vblk-engine", 64), ("i386", "vblk-engine32", 32))
#: (name, engine options)
ISSUE_MODES = (("inline", {}), ("async", {"async": True}), ("sqpoll", {"sqpoll": True}))
SHAPES = (("single", {}), ("iovec", {"vec": VEC}))

POISON = "0xa5a5a5a5a5a5a5a5"


def combinations() -> list[tuple[str, tuple, tuple, tuple]]:
    """``(check name, engine, issue mode, shape)`` in run order: 64-bit first, so the check is seen
    passing before any 32-bit command ran."""
    return [(f"{eng[0]}-{shape[0]}-{mode[0]}", eng, mode, shape)
            for eng in ENGINES for shape in SHAPES for mode in ISSUE_MODES]


def res_summary(result: dict) -> str:
    """``-14 (-EFAULT) x4`` from an engine result's res_counts (successes left out)."""
    counts = result.get("res_counts") or {}
    parts = [f"{errno_text(int(res))} x{n}" for res, n in counts.items() if int(res) != 0 and n]
    if result.get("res_counts_other"):
        parts.append(f"{result['res_counts_other']} more of other values")
    return ", ".join(parts) or f"first {result.get('first_error')}"


def job_problems(key: str, result: dict, bits: int | None) -> list[str]:
    """What is wrong with one engine job of a combination (empty if nothing)."""
    problems = []
    if bits is not None and result.get("ptr_bits") != bits:
        problems.append(f"{key}: ran a {result.get('ptr_bits')}-bit engine, expected {bits}-bit")
    if result.get("errors"):
        problems.append(f"{key}: {result['errors']} of {result.get('ios')} commands failed: {res_summary(result)}")
    if result.get("mismatches"):
        m = result.get("first_mismatch") or {}
        got = m.get("got")
        why = (" (zeroes: the data never reached the disk)" if got == "0x0000000000000000" else
               " (the read poison: no data reached the buffer)" if got == POISON else "")
        problems.append(f"{key}: {result['mismatches']} mismatched words, first at offset {m.get('offset')}: "
                        f"expected {m.get('expected')}, got {got}{why}")
    return problems


def engine32_reason(ctx: ScenarioContext) -> str | None:
    """Why the 32-bit engine cannot run in this guest, or None if it ran (a no-I/O-needed job)."""
    try:
        result = ctx.agent.engine(["--path", "/dev/null", "--op", "flush"], timeout_s=ctx.timeouts(60.0),
                                  engine="vblk-engine32")
    except AgentError as exc:
        data = exc.data if isinstance(exc.data, dict) else {}
        if exc.kind == "NoEngine" and data.get("errno_name") == "ENOEXEC":
            return (f"vblk-engine32 does not start in the guest ({exc}): the guest kernel needs "
                    "CONFIG_IA32_EMULATION to run 32-bit programs")
        if exc.kind == "NoEngine" and data.get("errno_name") == "ENOENT":
            return (f"no vblk-engine32 in the initramfs ({exc}): it is built only where an i386 liburing.a "
                    "exists (see the initramfs manifest's \"engine32\")")
        return f"vblk-engine32 cannot be run: {exc}"
    if result.get("exit_code") != 0 or result.get("ptr_bits") != 32:
        return (f"vblk-engine32 did not run a job on /dev/null: exit {result.get('exit_code')}, "
                f"ptr_bits {result.get('ptr_bits')}, stderr {result.get('stderr', '').strip()!r}")
    return None


@register
class DriverCompat32(Scenario):
    name = "driver-compat32"
    description = (
        "32-bit (compat) and 64-bit io_uring callers write a seeded pattern through /dev/vdXc0 -- inline, "
        "through io-wq (IOSQE_ASYNC) and with SQPOLL, with one buffer and with an iovec array -- and it must "
        "read back through /dev/vdX (O_DIRECT, 64-bit) and through /dev/vdXc0, every command with cqe->res 0. "
        "Review-v2 #4: the driver parses a 32-bit iovec array as 64-bit outside the caller's own syscall."
    )

    def requires(self, ctx: ScenarioContext) -> list[str]:
        reason = engine32_reason(ctx)
        return [reason] if reason else []

    def run(self, ctx: ScenarioContext) -> None:
        image = create_sparse_file(ctx.scratch() / "compat0.raw", DISK_SIZE)
        disk = DiskSpec(id="compat0", serial="vblk-compat0", backend="file", path=image, size_bytes=DISK_SIZE,
                        num_queues=2).validate()
        st: dict = {}
        plugged = ctx.check("hotplug", plug(ctx, disk, st)).status == "pass"
        steps = [(name, self.combination(ctx, st, n, eng, mode, shape))
                 for n, (name, eng, mode, shape) in enumerate(combinations())]
        run_gated(ctx, plugged, steps, "not run: hotplug failed")
        run_gated(ctx, "name" in st, [("unplug", unplug(ctx, disk, st))], "not run: the disk never appeared")

    @staticmethod
    def combination(ctx: ScenarioContext, st: dict, n: int, eng: tuple, mode: tuple, shape: tuple):
        (_arch, engine, bits), (_m, mode_opts), (_s, shape_opts) = eng, mode, shape
        where = {"offset": (n + 1) * REGION, "length": LENGTH, "bs": BS, "qd": QD, "seed": SEED_BASE + n}

        def job(rec: dict, key: str, args: list[str], name: str) -> dict | None:
            try:
                result = ctx.agent.engine(args, timeout_s=ctx.timeouts(120.0), engine=name)
            except AgentError as exc:
                rec[key] = {"error": str(exc), "data": exc.data}
                rec["problems"].append(f"{key}: {exc}")
                return None
            rec[key] = result
            if result.get("exit_code") != 0:
                stderr = (result.get("stderr") or "").strip().splitlines()
                rec["problems"].append(f"{key}: vblk-engine exited {result.get('exit_code')}: "
                                       f"{stderr[-1] if stderr else ''}")
                return None
            return result

        def check(rec: dict) -> None:
            c, b = st["chardev"], st["blockdev"]
            rec.update(engine=engine, issue=mode[0], shape=shape[0], region=where, problems=[])
            steps = (("chardev-write", eargs(c, "write", **where, **mode_opts, **shape_opts), engine, bits),
                     ("block-verify", eargs(b, "verify", **where), "vblk-engine", 64),
                     ("chardev-verify", eargs(c, "verify", **where, **mode_opts, **shape_opts), engine, bits))
            for key, args, name, want_bits in steps:
                result = job(rec, key, args, name)
                if result is not None:
                    rec["problems"].extend(job_problems(key, result, want_bits))
            if rec["problems"]:
                raise CheckFailed("; ".join(rec["problems"]))

        return check
