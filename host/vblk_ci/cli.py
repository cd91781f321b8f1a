"""vblk-ci command line: parse once, hand a dataclass to the engine, map errors to exit codes.

Exit codes: 0 pass, 1 a check failed / the guest crashed, 2 bad usage or a missing
prerequisite, 3 infrastructure failure, 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Sequence

from . import __version__
from .errors import (
    EXIT_USAGE, AgentError, BootError, CheckFailed, GuestCrash, InfraError, MissingPrerequisite, UsageError,
    VblkCiError,
)

ENV_KERNEL = "VBLK_CI_KERNEL"
ENV_INITRAMFS = "VBLK_CI_INITRAMFS"
DEFAULT_OUT_ROOT = Path("vblk-ci-out")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (via UsageError) instead of exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vblk-ci", description="Full-system QEMU tests for virtio-blk io_uring passthrough.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    run = sub.add_parser("run", help="boot the appliance and run a suite")
    run.add_argument("--kernel", help=f"bzImage (default ${ENV_KERNEL})")
    run.add_argument("--initramfs", help=f"guest initramfs (default ${ENV_INITRAMFS})")
    run.add_argument("--out", help="run directory (default vblk-ci-out/<suite>-<time>)")
    run.add_argument("--qemu", default="qemu-system-x86_64", help="QEMU binary (default %(default)s)")
    run.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto")
    run.add_argument("--smp", type=_positive, default=2)
    run.add_argument("--memory", type=_positive, default=1024, metavar="MB")
    run.add_argument("--suite", default="smoke")
    run.add_argument("--schedule", metavar="FILE",
                     help="a fault schedule (JSON) to fire at fresh disks after the suite (scenario fault-schedule-file)")

    build = sub.add_parser("build", help="build the guest kernel or initramfs")
    what = build.add_subparsers(dest="target", metavar="TARGET", parser_class=_Parser)
    what.required = True
    k = what.add_parser("kernel", help="build (or reuse from the cache) the guest kernel")
    k.add_argument("--source-tarball")
    k.add_argument("--source-dir")
    k.add_argument("--series-dir")
    k.add_argument("--no-series", dest="apply_series", action="store_false", help="build the unpatched base")
    k.add_argument("--fragment", dest="fragments", action="append", help="config fragment (repeatable)")
    k.add_argument("--variant")
    k.add_argument("--cache-dir")
    k.add_argument("--jobs", type=_positive)
    k.add_argument("--module", dest="virtio_blk_module", action="store_true", help="CONFIG_VIRTIO_BLK=m")
    k.add_argument("--make-arg", dest="make_args", action="append", help="extra make argument (repeatable)")
    i = what.add_parser("initramfs", help="build (or reuse from the cache) the guest initramfs")
    i.add_argument("--python")
    i.add_argument("--busybox")
    i.add_argument("--agent")
    i.add_argument("--engine-dir")
    i.add_argument("--engine-binary")
    i.add_argument("--init-script")
    i.add_argument("--with-fio", action="store_true")
    i.add_argument("--compress-level", type=int)
    i.add_argument("--no-smoke-test", dest="smoke_test", action="store_false")
    i.add_argument("--cache-dir")

    sub.add_parser("version", help="print the version")
    return p


# -- run ---------------------------------------------------------------------------------


def _artifact(arg: str | None, env: str, what: str, flag: str) -> Path:
    value = arg or os.environ.get(env)
    if not value:
        raise MissingPrerequisite(f"no {what} given (set {flag} or {env})")
    path = Path(value)
    if not path.is_file():
        raise MissingPrerequisite(f"{what} not found: {value} (set {flag} or {env})")
    return path


def _schedule(arg: str | None) -> Path | None:
    """--schedule: checked here (file, JSON, kinds, parameters, disks) so a bad one is exit 2 before a boot."""
    if arg is None:
        return None
    from .scenarios.fault_schedule_file import check_schedule_file

    check_schedule_file(Path(arg))
    return Path(arg)


def cmd_run(args: argparse.Namespace) -> int:
    from .report.terminal import TerminalReporter
    from .runner import Plan, run

    from .scenarios import suite

    suite(args.suite)  # an unknown suite is a usage error before anything is created
    kernel = _artifact(args.kernel, ENV_KERNEL, "kernel image", "--kernel")
    initramfs = _artifact(args.initramfs, ENV_INITRAMFS, "initramfs", "--initramfs")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(args.out) if args.out else DEFAULT_OUT_ROOT / f"{args.suite}-{stamp}"
    schedule = _schedule(args.schedule)
    plan = Plan(
        kernel=kernel, initramfs=initramfs, run_dir=run_dir, qemu=args.qemu, accel=args.accel,
        smp=args.smp, memory_mb=args.memory, suite=args.suite, schedule=schedule,
    )
    report = TerminalReporter()
    try:
        result = run(plan, report)
    except VblkCiError as exc:
        if run_dir.is_dir():
            with open(run_dir / "run.log", "a", encoding="utf-8") as f:
                f.write("".join(traceback.format_exception(exc)))
        raise
    finally:
        report.close()
    print(f"vblk-ci: {result.status}: results in {run_dir}", file=sys.stderr)
    return result.exit_code


# -- build -------------------------------------------------------------------------------


def _options(cls, args: argparse.Namespace, skip: Sequence[str] = ("command", "target")):
    """Options dataclass from the arguments the user gave (None = keep the default)."""
    names = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in vars(args).items() if k not in skip and k in names and v is not None}
    return cls(**given)


def cmd_build(args: argparse.Namespace) -> int:
    from .events import BuildStep
    from .report.terminal import TerminalReporter

    report = TerminalReporter()

    def progress(message: str) -> None:
        report(BuildStep(args.target, message, done=True))

    try:
        if args.target == "kernel":
            from .build.kernel import KernelBuildOptions, build_kernel

            artifact = build_kernel(_options(KernelBuildOptions, args), progress=progress)
        else:
            from .build.initramfs import InitramfsBuildOptions, build_initramfs

            artifact = build_initramfs(_options(InitramfsBuildOptions, args), progress=progress)
    finally:
        report.close()
    print(json.dumps(artifact.to_json(), indent=2))
    return 0


# -- main --------------------------------------------------------------------------------


def error_kind(exc: VblkCiError) -> str:
    if isinstance(exc, (UsageError, MissingPrerequisite)):
        return "error"
    if isinstance(exc, GuestCrash):
        return "guest crash"
    if isinstance(exc, BootError):
        return "boot failure"
    if isinstance(exc, CheckFailed):
        return "check failed"
    if isinstance(exc, AgentError):
        return "agent error"
    if isinstance(exc, InfraError):
        return "infrastructure error"
    return "error"


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "version":
            print(f"vblk-ci {__version__}")
            return 0
        if args.command == "run":
            return cmd_run(args)
        return cmd_build(args)
    except VblkCiError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"vblk-ci: {error_kind(exc)}: {first}", file=sys.stderr)
        return exc.exit_code
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    except KeyboardInterrupt:
        print("vblk-ci: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
