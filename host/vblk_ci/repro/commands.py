"""The ``repro`` and ``shell`` subcommands (parsers and entry points; cli.py dispatches here).

``vblk-ci repro BUNDLE [--repeat N] [--shell] [--kernel K] [--initramfs I] [--qemu Q] [--accel A] [--out DIR]``
    Replays a reproduction bundle N times with the bundle's own kernel and initramfs
    (unless overridden) and prints ``reproduced K/N``. Exit codes, chosen so that
    ``git bisect run vblk-ci repro BUNDLE`` works: 1 the failure came back at least once
    (the bug is there), 0 it never did, 125 cannot judge (an unusable bundle, or every
    replay ended in an infrastructure error: git bisect skips the commit), 2 bad usage. ``--shell`` then boots the same kernel, initramfs and
    machine with a shell on the console (see ``vblk-ci shell``).

``vblk-ci shell [--kernel K] [--initramfs I] [--qemu Q] [--accel A] [--smp N] [--memory MB] [--disk SPEC]...``
    Boots the appliance with a busybox shell on the serial console and joins the
    terminal to it; Ctrl-] opens a QMP prompt. ``--disk`` hot-plugs a virtio-blk disk
    after boot: ``id=d0,backend=file,path=d0.raw,size=64M,num-queues=2`` (DiskSpec
    field names; backend null by default). Exit code: 0 once the session ends.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from pathlib import Path
from typing import Callable

from ..artifacts import INITRAMFS_HELP
from ..errors import EXIT_PASS


def add_parsers(sub, positive: Callable[[str], int]) -> None:
    r = sub.add_parser("repro", help="replay a reproduction bundle and count how often it fails again")
    r.add_argument("bundle", help="repro-bundle.tar.gz from a failed run")
    r.add_argument("--repeat", type=positive, default=1, metavar="N", help="replays (default 1)")
    r.add_argument("--shell", action="store_true", help="afterwards, boot the same machine with a console shell")
    r.add_argument("--kernel", help="use this bzImage instead of the bundle's")
    r.add_argument("--initramfs", help="use this initramfs instead of the bundle's")
    r.add_argument("--qemu", help="QEMU binary (default: the recorded run's binary name)")
    r.add_argument("--accel", choices=("tcg", "kvm"), help="default: the accelerator the recorded run used")
    r.add_argument("--out", help="where to extract and replay (default vblk-ci-out/repro-<time>)")

    s = sub.add_parser("shell", help="boot the appliance with a shell on the serial console and a QMP prompt")
    s.add_argument("--kernel", help="bzImage (default $VBLK_CI_KERNEL)")
    s.add_argument("--initramfs", help=INITRAMFS_HELP)
    s.add_argument("--qemu", default="qemu-system-x86_64")
    s.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto")
    s.add_argument("--smp", type=positive, default=2)
    s.add_argument("--memory", type=positive, default=1024, metavar="MB")
    s.add_argument("--append", action="append", default=[], metavar="ARG", help="extra kernel argument (repeatable)")
    s.add_argument("--disk", action="append", default=[], metavar="SPEC", help="hot-plug a disk after boot (repeatable)")
    s.add_argument("--out", help="run dir for console.log, qmp.jsonl (default: a temporary dir)")


def _optional_file(value: str | None, what: str) -> Path | None:
    from ..errors import MissingPrerequisite

    if value is None:
        return None
    if not Path(value).is_file():
        raise MissingPrerequisite(f"{what} not found: {value}")
    return Path(value)


def cmd_repro(args: argparse.Namespace) -> int:
    from ..report.terminal import TerminalReporter
    from ..runner import Plan, run
    from .bundle import read_bundle
    from .replay import ReplayOptions, replay, replay_plan

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path("vblk-ci-out") / f"repro-{stamp}"
    bundle = read_bundle(Path(args.bundle), out / "bundle")
    options = ReplayOptions(
        repeat=args.repeat, kernel=_optional_file(args.kernel, "kernel image"),
        initramfs=_optional_file(args.initramfs, "initramfs"), qemu=args.qemu, accel=args.accel,
    )
    report = TerminalReporter()
    try:
        outcome = replay(bundle, options, out, run, Plan, report)
    finally:
        report.close()
    (out / "repro.json").write_text(json.dumps(outcome.to_dict(), indent=2) + "\n")
    print(f"vblk-ci: reproduced {outcome.reproduced}/{len(outcome.runs)} "
          f"({outcome.expected.describe()}); details in {out / 'repro.json'}", file=sys.stderr)
    if args.shell:
        plan = replay_plan(bundle, options, out / "shell", Plan)
        _shell(plan.kernel, plan.initramfs, plan.qemu, plan.accel, plan.smp, plan.memory_mb,
               tuple(plan.append), [], out / "shell")
    return outcome.exit_code


def cmd_shell(args: argparse.Namespace) -> int:
    from ..artifacts import initramfs as initramfs_artifact, kernel as kernel_artifact
    from .shell import parse_disk

    kernel = kernel_artifact(args.kernel)
    initramfs = initramfs_artifact(args.initramfs, kernel)
    disks = [parse_disk(spec, i) for i, spec in enumerate(args.disk)]
    run_dir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="vblk-ci-shell-"))
    _shell(kernel, initramfs, args.qemu, args.accel, args.smp, args.memory, tuple(args.append), disks, run_dir)
    return EXIT_PASS


def _shell(kernel: Path, initramfs: Path, qemu: str, accel: str, smp: int, memory_mb: int,
           append: tuple[str, ...], disks: list, run_dir: Path) -> None:
    from ..errors import BootError
    from ..machine.accel import choose
    from ..machine.argv import MachineSpec
    from ..machine.machine import Machine, Timeouts
    from ..machine.qemuinfo import probe_caps, resolve_binary
    from .shell import SHELL_APPEND, SHELL_READY, ShellSession

    qemu = resolve_binary(qemu)
    caps = probe_caps(qemu)
    chosen = choose(qemu, Path(kernel), accel)
    spec = MachineSpec(qemu=qemu, kernel=Path(kernel), initrd=Path(initramfs), accel=chosen.name, smp=smp,
                       memory_mb=memory_mb, append=(*append, SHELL_APPEND), disk_slots=max(4, len(disks)))
    print(f"vblk-ci: booting ({chosen.name}); console log and qmp.jsonl in {run_dir}", file=sys.stderr)
    with Machine(spec, run_dir, Timeouts.for_accel(chosen.name), caps) as vm:
        if vm.console.wait_for(SHELL_READY, vm.timeouts(vm.timeouts.boot), abort=lambda: not vm.is_running()) is None:
            raise BootError(f"the guest did not start its console shell\n{vm.console.tail()}")
        for slot, disk in enumerate(disks):
            vm.plug(disk, slot)
        ShellSession(vm).run()
