"""Record real console logs of each kind of kernel report, for the classifier's golden tests.

For each kind: boot the appliance (host QEMU, the given kernel), push vblk_crashtest.ko
through the agent (base64 over ``exec`` stdin), insmod it, set the sysctls that make the
detector fire quickly, trigger the kind, wait for QEMU to exit (the appliance's command line
panics on every report) and copy console.log to OUT/<kind>.log.

    PYTHONPATH=host python tests/crash-module/record.py --kernel K --initramfs I \
        --module vblk_crashtest.ko --out DIR [kind...]

``sysrq`` needs no module. Build the module against the exact kernel tree (see README.md).
"""

from __future__ import annotations

import argparse
import base64
import shutil
import sys
import time
from pathlib import Path

from vblk_ci.errors import AgentError
from vblk_ci.machine.argv import MachineSpec
from vblk_ci.machine.machine import Machine

# Writes (path, value) made before the trigger, so each detector fires in seconds, not minutes.
SETUP: dict[str, list[tuple[str, str]]] = {
    "hung-task": [("/proc/sys/kernel/hung_task_timeout_secs", "5")],
    "soft-lockup": [("/proc/sys/kernel/watchdog_thresh", "2")],
    "rcu-stall": [
        ("/proc/sys/kernel/soft_watchdog", "0"),
        ("/sys/module/rcupdate/parameters/rcu_cpu_stall_timeout", "3"),
        ("/proc/sys/kernel/panic_on_rcu_stall", "1"),
    ],
}
# After a report that does not panic (lockdep, might-sleep), give the console this long, then stop.
SETTLE_S = 5.0
KINDS = ("sysrq", "warning", "bug", "null-deref", "gpf", "kasan-uaf", "kfence-oob", "lockdep", "atomic-sleep",
         "might-sleep", "hung-task", "soft-lockup", "rcu-stall")


def push_module(vm: Machine, module: Path) -> None:
    data = base64.b64encode(module.read_bytes()).decode()
    out = vm.agent.exec(cmd="base64 -d > /tmp/crashtest.ko && insmod /tmp/crashtest.ko", stdin=data)
    if out["rc"] != 0:
        raise SystemExit(f"insmod failed: {out}")


def record(kind: str, kernel: Path, initramfs: Path, module: Path | None, out: Path, wait_s: float) -> Path:
    run_dir = out / f"run-{kind}"
    shutil.rmtree(run_dir, ignore_errors=True)
    spec = MachineSpec(qemu="qemu-system-x86_64", kernel=kernel, initrd=initramfs, accel="tcg")
    with Machine(spec, run_dir) as vm:
        vm.wait_boot()
        vm.wait_agent()
        for path, value in SETUP.get(kind, []):
            vm.agent.write_file(path, value)
        try:
            if kind == "sysrq":
                vm.agent.exec(cmd="echo c > /proc/sysrq-trigger", timeout_s=5)
            else:
                assert module is not None, "--module is needed for every kind but sysrq"
                push_module(vm, module)
                vm.agent.exec(cmd=f"echo {kind} > /sys/kernel/debug/vblk_crashtest/trigger", timeout_s=60)
        except AgentError:
            pass  # the guest died under the call: that is the point
        deadline = time.monotonic() + wait_s
        crashed_at = None
        while vm.is_running() and time.monotonic() < deadline:
            if crashed_at is None and vm.console.crashed.is_set():
                crashed_at = time.monotonic()
            if crashed_at is not None and time.monotonic() - crashed_at > SETTLE_S:
                break
            time.sleep(0.5)
    dest = out / f"{kind}.log"
    shutil.copyfile(run_dir / "console.log", dest)
    return dest


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kernel", type=Path, required=True)
    p.add_argument("--initramfs", type=Path, required=True)
    p.add_argument("--module", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--wait", type=float, default=120.0, help="seconds to wait for the guest to die")
    p.add_argument("kinds", nargs="*", default=list(KINDS))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for kind in args.kinds:
        if kind not in KINDS:
            p.error(f"unknown kind {kind!r} (known: {', '.join(KINDS)})")
        started = time.monotonic()
        dest = record(kind, args.kernel, args.initramfs, args.module, args.out, args.wait)
        print(f"{kind}: {dest} ({time.monotonic() - started:.0f}s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
