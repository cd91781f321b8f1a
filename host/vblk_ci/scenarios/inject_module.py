"""module-reload: virtio_blk unloads and reloads cleanly, an open node pins it, a failed load leaves nothing.

The series adds a char device class, a char major region and per-disk nodes to
virtio_blk's module_init/module_exit and to probe/remove. A built-in driver
never runs module_exit or an unwinding module_init, so this needs virtio_blk
as a module (the coverage kernel, kernel-config/coverage.config; the image
appends the .ko to the initramfs and /init loads it). With a disk plugged:

- an open ``/dev/vdXc0`` pins the module: ``rmmod`` is refused while a process
  holds it, and works once it is closed (the cdev's owner is the module);
- unloading removes every trace: the disk, its ``vdXc0`` node and class entry,
  ``/sys/class/vblk-generic``, both majors in ``/proc/devices``;
- reloading brings the disk and its node back, with working I/O, three times;
- a second copy of the driver (the same .ko with its module name changed to
  ``virtio_bl2``) loaded beside the first runs module_init until
  ``class_register()`` fails (the class exists, which the console shows): the
  load is refused with EEXIST (EBUSY from Linux 7.x, whose module loader keeps
  EEXIST for "already loaded" and turns an init's -EEXIST into -EBUSY) and
  the unwinding gives back what it took, so /proc/devices still
  has one ``vblk-generic`` and one ``virtblk`` major, and the first copy's
  disk still works;
- with allocation-failure injection (CONFIG_FAIL_PAGE_ALLOC): the load is
  repeated with page allocation N failing, N = 1 .. every page allocation a load
  makes (module memory, per-CPU data, slabs that need a new page, the probe of
  the plugged disk: its requests): a failed load must be -ENOMEM and leave no
  class or major behind, a load that survived a failure (a failed probe, or a
  fallback that absorbed it) must leave no half-made disk, and it must unload.
  The last, clean load leaves the driver loaded and the disk working. On the
  coverage kernel every injected page-allocation failure is absorbed by a
  fallback (vmalloc's bulk allocator, blk-mq's smaller orders), so the loads all
  succeed; slab failures (CONFIG_FAILSLAB) would reach module_init's unwinding.
"""

from __future__ import annotations

import re

from ..disks.spec import DiskSpec
from ..errors import AgentError, CheckFailed
from .base import Scenario, ScenarioContext, register
from .driver_common import MiB, eargs, expect_clean, plug_file_disk, run_engine, run_gated, unplug, wait_gone
from .inject_common import FaultKnobs, injection_missing, module_missing, module_path

DISK_SIZE = 16 * MiB
BS = 4096
RELOADS = 3
CLASS_NAME = "vblk-generic"
CLASS = f"/sys/class/{CLASS_NAME}"
MAJORS = ("vblk-generic", "virtblk")
#: fail-nth larger than any module load's allocation count: loads cleanly and says how many there were.
COUNT_N = 1_000_000


@register
class ModuleReload(Scenario):
    name = "module-reload"
    description = ("virtio_blk as a module: rmmod refused while /dev/vdXc0 is open, unload removes the disk, "
                   "node, class and majors, reload brings them back with working I/O (x3), and a load with "
                   "each of its allocations failing in turn (fail-nth) is -ENOMEM with nothing left behind or "
                   "loads without a half-made disk. Coverage kernel only.")

    def requires(self, ctx: ScenarioContext) -> list[str]:
        return module_missing(ctx)

    def run(self, ctx: ScenarioContext) -> None:
        st: dict = {"ko": module_path(ctx)}
        disk = plug_file_disk(ctx, "mod0", DISK_SIZE, st)
        if disk is None:
            return
        ok = ctx.check("open-node-pins-module", lambda rec: open_node_pins(ctx, st, rec)).status == "pass"
        ok = run_gated(ctx, ok, [("unload-removes-driver", lambda rec: unload(ctx, st, rec))],
                       "not run: the module could not be unloaded") and ok
        steps = [(f"reload-{i}", lambda rec, i=i: reload(ctx, disk, st, rec, last=i == RELOADS))
                 for i in range(1, RELOADS + 1)]
        ok = run_gated(ctx, ok, steps, "not run: unloading failed") and ok
        run_gated(ctx, ok, [("second-copy-init-unwinds", lambda rec: second_copy(ctx, disk, st, rec))],
                  "not run: plain unload/reload failed")
        if injection_missing(ctx):
            ctx.skip("load-with-allocation-failures", injection_missing(ctx)[0])
        else:
            run_gated(ctx, ok, [("load-with-allocation-failures", lambda rec: load_sweep(ctx, disk, st, rec))],
                      "not run: plain unload/reload failed")
        ctx.check("unplug", unplug(ctx, disk, st))


def sh(ctx: ScenarioContext, cmd: str, timeout_s: float = 60.0) -> dict:
    return ctx.agent.exec(cmd=cmd, timeout_s=ctx.timeouts(timeout_s))


def driver_traces(ctx: ScenarioContext) -> list[str]:
    """What of the driver is registered: the class directory and the majors in /proc/devices."""
    out = []
    if sh(ctx, f"test -e {CLASS}").get("rc") == 0:
        out.append(CLASS)
    devices = ctx.agent.read_file("/proc/devices")
    out += [f"major {m}" for m in MAJORS if any(line.split()[1:] == [m] for line in devices.splitlines())]
    return out


def rmmod(ctx: ScenarioContext) -> dict:
    return sh(ctx, "rmmod virtio_blk")


def open_node_pins(ctx: ScenarioContext, st: dict, rec: dict) -> None:
    node = st["chardev"]
    pid = sh(ctx, f"sleep 600 < {node} > /dev/null 2>&1 & echo $!").get("stdout", "").strip()
    rec["holder_pid"] = pid
    try:
        refused = rmmod(ctx)
        rec["rmmod_while_open"] = refused
        if refused.get("rc") == 0:
            raise CheckFailed(f"rmmod virtio_blk succeeded while {node} was open (pid {pid})")
        if sh(ctx, "grep -qx live /sys/module/virtio_blk/initstate").get("rc") != 0:
            raise CheckFailed("rmmod was refused but virtio_blk is no longer live")
    finally:
        sh(ctx, f"kill {pid}; while kill -0 {pid} 2>/dev/null; do sleep 0.1; done")


def unload(ctx: ScenarioContext, st: dict, rec: dict) -> None:
    out = rmmod(ctx)
    rec["rmmod"] = out
    if out.get("rc") != 0:
        raise CheckFailed(f"rmmod virtio_blk with no node open: rc {out.get('rc')}: {out.get('stderr', '').strip()}")
    wait_gone(ctx, st["name"], rec)
    left = driver_traces(ctx)
    if sh(ctx, "test -e /sys/module/virtio_blk").get("rc") == 0:
        left.append("/sys/module/virtio_blk")
    if left:
        raise CheckFailed(f"after rmmod virtio_blk still registered: {', '.join(left)}")


def insmod(ctx: ScenarioContext, st: dict, rec: dict) -> None:
    out = sh(ctx, f"insmod {st['ko']}")
    rec["insmod"] = out
    if out.get("rc") != 0:
        raise CheckFailed(f"insmod {st['ko']}: rc {out.get('rc')}: {out.get('stderr', '').strip()}")


def disk_back(ctx: ScenarioContext, disk: DiskSpec, st: dict, rec: dict, seed: int) -> None:
    """The disk and its node are back; a write through the node reads back right."""
    try:
        info = ctx.agent.wait_disk(disk.serial, timeout_s=ctx.timeouts(20.0), chardev=True)
    except AgentError as exc:
        raise CheckFailed(f"after loading virtio_blk the disk did not come back with its node: {exc}") from exc
    st.update(name=info["name"], chardev=info["chardev"], blockdev=info.get("blockdev"))
    rec["disk"] = info
    missing = [t for t in (CLASS, *(f"major {m}" for m in MAJORS)) if t not in driver_traces(ctx)]
    if missing:
        raise CheckFailed(f"virtio_blk loaded but not registered: {', '.join(missing)}")
    w = run_engine(ctx, rec, "write", eargs(st["chardev"], "write", bs=BS, offset=0, seed=seed))
    expect_clean("write after reload", w)
    r = run_engine(ctx, rec, "verify", eargs(st["chardev"], "verify", bs=BS, offset=0, seed=seed))
    expect_clean("verify after reload", r)


def reload(ctx: ScenarioContext, disk: DiskSpec, st: dict, rec: dict, last: bool) -> None:
    insmod(ctx, st, rec)
    disk_back(ctx, disk, st, rec, seed=len(st.setdefault("reloads", [])) + 100)
    st["reloads"].append(st["name"])
    if not last:
        unload(ctx, st, rec)


def engine_load(ctx: ScenarioContext, st: dict, rec: dict, key: str, first: int, last: int) -> dict:
    result = ctx.agent.engine(["--load-module", st["ko"], "--from", str(first), "--to", str(last)],
                              timeout_s=ctx.timeouts(900.0))
    rec[key] = result
    if result.get("exit_code") != 0 or result.get("mode") != "load-module":
        raise CheckFailed(f"{key}: vblk-engine --load-module exited {result.get('exit_code')}: "
                          f"{(result.get('stderr') or '').strip()[-300:]}")
    return result


SECOND_NAME = "virtio_bl2"  # same length as virtio_blk: the .ko is patched in place
RENAME = (f"import sys; d = open(sys.argv[1], 'rb').read(); n = d.count(b'virtio_blk\\0'); "
          f"open(sys.argv[2], 'wb').write(d.replace(b'virtio_blk\\0', b'{SECOND_NAME}\\0')); print(n)")


CLASS_KOBJECT_EEXIST = "kobject_add_internal failed for {} with -EEXIST"


def second_copy_refusal_ok(insmod_stderr: str, console: str) -> bool:
    """The second copy's module_init failed at class_register(): insmod reports EEXIST (what
    init returned), or EBUSY where the module loader turns an init's -EEXIST into -EBUSY
    (Linux 7.x: EEXIST means "already loaded" to userspace); then the console must show
    the class's kobject refused as a duplicate, so an EBUSY from elsewhere does not pass."""
    said = insmod_stderr.lower()
    if "file exists" in said:
        return True
    return "resource busy" in said and CLASS_KOBJECT_EEXIST.format(CLASS_NAME) in console


def console_since(ctx: ScenarioContext, mark: int, expected: str) -> str:
    """The console after ``mark``, once it shows ``expected`` (or 5 s scaled): the serial
    console is read in the background and may trail the agent's answer."""
    ctx.machine.console.wait_for(re.compile(re.escape(expected)), ctx.timeouts(5.0), mark)
    return ctx.machine.console.text_since(mark)


def majors(ctx: ScenarioContext) -> dict[str, int]:
    devices = ctx.agent.read_file("/proc/devices")
    return {m: sum(line.split()[1:] == [m] for line in devices.splitlines()) for m in MAJORS}


def second_copy(ctx: ScenarioContext, disk: DiskSpec, st: dict, rec: dict) -> None:
    """A renamed copy of the loaded driver: module_init fails at class_register() and unwinds."""
    copy = f"/tmp/{SECOND_NAME}.ko"
    out = ctx.agent.exec(argv=["python3", "-S", "-c", RENAME, st["ko"], copy], timeout_s=ctx.timeouts(60.0))
    rec["rename"] = out
    if out.get("rc") != 0 or int(out.get("stdout") or 0) < 2:
        raise CheckFailed(f"could not make the renamed copy (module name and modinfo): {out}")
    before = majors(ctx)
    mark = ctx.machine.console.mark()
    load = sh(ctx, f"insmod {copy}")
    rec["insmod_copy"] = load
    after = majors(ctx)
    rec["majors"] = {"before": before, "after": after}
    problems = []
    said = (load.get("stderr") or "").strip()
    if load.get("rc") == 0:
        problems.append("the second copy loaded beside the first")
        sh(ctx, f"rmmod {SECOND_NAME}")
    elif not second_copy_refusal_ok(said, console_since(ctx, mark, CLASS_KOBJECT_EEXIST.format(CLASS_NAME))):
        problems.append(f"insmod said {said!r}, expected EEXIST (File exists), or EBUSY (Device or resource "
                        f"busy) with the console showing class_register()'s -EEXIST for {CLASS_NAME}")
    if after != before or before != {m: 1 for m in MAJORS}:
        problems.append(f"majors in /proc/devices before {before}, after {after}: the failed init did not "
                        "give back what it registered")
    if sh(ctx, f"test -e /sys/module/{SECOND_NAME}").get("rc") == 0:
        problems.append(f"/sys/module/{SECOND_NAME} exists after the failed load")
    if problems:
        raise CheckFailed("; ".join(problems))
    disk_back(ctx, disk, st, rec, seed=150)


def load_sweep(ctx: ScenarioContext, disk: DiskSpec, st: dict, rec: dict) -> None:
    unload(ctx, st, rec)
    fs = FaultKnobs(ctx)
    try:
        fs.arm(rec)
        count = engine_load(ctx, st, rec, "count", COUNT_N, COUNT_N)
        if not count.get("clean") or count.get("problem_count"):
            raise CheckFailed(f"a load with no fault injected failed: {count.get('problems')}")
        allocations = COUNT_N - int(count["left"])
        rec["allocations_per_load"] = allocations
        unload(ctx, st, rec)
        result = engine_load(ctx, st, rec, "sweep", 1, allocations + 64)
    finally:
        fs.restore()
    problems = list(result.get("problems") or [])
    if result.get("problem_count", 0) > len(problems):
        problems.append(f"... {result['problem_count'] - len(problems)} more")
    if not result.get("clean"):
        problems.append(f"the sweep ended at N = {result.get('last_n')} without a clean load")
    if problems:
        raise CheckFailed(f"loading virtio_blk with allocation N failing, N = 1..{result.get('last_n')} "
                          f"({allocations} allocations per load): " + "; ".join(problems))
    disk_back(ctx, disk, st, rec, seed=200)
