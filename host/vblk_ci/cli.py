"""vblk-ci command line: parse once, hand a dataclass to the engine, map errors to exit codes.

Exit codes: 0 pass, 1 a check failed / the guest crashed, 2 bad usage or a missing
prerequisite, 125 cannot judge (infrastructure failure, unusable bundle), 4 config
mismatch (QEMU or the guest did not show the disk configuration that was asked for),
130 interrupted. 0/1/125 are git bisect run's good/bad/skip. ``repro``: 1 the failure
came back at least once, 0 never, 125 every replay errored (see repro/commands.py).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Sequence

from . import __version__
from .build.bases import BASES
from .errors import (
    EXIT_FAIL, EXIT_PASS, EXIT_USAGE, AgentError, BootError, CheckFailed, GuestCrash, InfraError, MissingPrerequisite, UsageError,
    VblkCiError,
)

from .artifacts import DEFAULT_OUT_ROOT, ENV_INITRAMFS, ENV_INITRAMFS_BENCH, ENV_KERNEL, INITRAMFS_HELP, artifact
from .artifacts import initramfs as initramfs_artifact, kernel as kernel_artifact


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
    run.add_argument("--tree", metavar="DIR",
                     help="build this kernel git tree (incrementally, the appliance's config) and run on it")
    run.add_argument("--initramfs", help=INITRAMFS_HELP)
    run.add_argument("--out", help="run directory (default vblk-ci-out/<suite>-<time>)")
    run.add_argument("--qemu", default="qemu-system-x86_64", help="QEMU binary (default %(default)s)")
    run.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto")
    run.add_argument("--smp", type=_positive, default=2)
    run.add_argument("--memory", type=_positive, default=1024, metavar="MB")
    run.add_argument("--suite", help="a suite of scenarios (default smoke)")
    run.add_argument("--scenario", dest="scenarios", action="append", metavar="NAME",
                     help="run this scenario instead of a suite (repeatable; any registered scenario)")
    run.add_argument("--check", dest="checks", action="append", metavar="GLOB",
                     help="run only the checks matching GLOB (a check name or SCENARIO/CHECK; repeatable); "
                          "the checks before the first match still run as its set-up")
    run.add_argument("--strict", action="store_true",
                     help="a skipped check or scenario fails the run unless its reason is on the allow list "
                          "(host/vblk_ci/strict.py); CI runs strict")
    run.add_argument("--matrix", metavar="FILE", help="run a device-configuration matrix (TOML) instead of a suite")
    run.add_argument("-k", dest="select", metavar="EXPR",
                     help="with --matrix: only combinations whose names match EXPR (words, and/or/not)")
    run.add_argument("--disk", dest="disks", action="append", metavar="KEY=VALUE,...",
                     help="run these DiskSpecs (TOML [disk] keys, e.g. id=a,num_queues=4,aio=io_uring,"
                          "backend=file) as a matrix with a QD1 workload; repeatable; --smp sets vCPUs")
    run.add_argument("--together", action="store_true", help="with --disk: also plug all the disks at once")
    run.add_argument("--schedule", metavar="FILE",
                     help="a fault schedule (JSON) to fire at fresh disks after the suite (scenario fault-schedule-file)")
    run.add_argument("--coverage", action="store_true",
                     help="coverage kernel: copy virtio_blk's gcov counters to <out>/coverage/ after boot and "
                          "after each scenario (then vblk-ci coverage OUT...)")

    build = sub.add_parser("build", help="build the guest kernel or initramfs")
    what = build.add_subparsers(dest="target", metavar="TARGET", parser_class=_Parser)
    what.required = True
    k = what.add_parser("kernel", help="build (or reuse from the cache) the guest kernel")
    k.add_argument("--base", help="kernel base: 7.3 or 6.12 (host/vblk_ci/build/bases.py; default its "
                                  "DEFAULT_BASE); picks the source tarball, the series and extra fragments")
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
    k.add_argument("--tree", metavar="DIR", help="build this kernel git tree in place (its commits are the series; "
                                                  "objects in the cache, incremental); see build/tree.py")
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

    from .repro.commands import add_parsers as add_repro_parsers

    add_repro_parsers(sub, _positive)
    _add_bench_parser(sub)
    _add_fuzz_parser(sub)

    bis = sub.add_parser("bisect", help="find the commit of a kernel tree that broke a suite, scenario or bundle")
    bis.add_argument("--tree", required=True, metavar="DIR", help="the kernel git tree (must be clean)")
    bis.add_argument("--good", required=True, metavar="REV", help="a commit that passes")
    bis.add_argument("--bad", required=True, metavar="REV", help="a later commit that fails")
    what = bis.add_mutually_exclusive_group(required=True)
    what.add_argument("--suite")
    what.add_argument("--scenario", dest="scenarios", action="append", metavar="NAME")
    what.add_argument("--bundle", metavar="FILE", help="a repro-bundle.tar.gz whose failure is chased")
    bis.add_argument("--check", dest="checks", action="append", metavar="GLOB", help="as for run --check")
    bis.add_argument("--initramfs", help=f"guest initramfs (default ${ENV_INITRAMFS})")
    bis.add_argument("--out", help="where each step's run goes (default vblk-ci-out/bisect-<time>)")
    bis.add_argument("--qemu", default="qemu-system-x86_64")
    bis.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto")
    bis.add_argument("--cache-dir", help="kernel object cache (default $VBLK_CI_CACHE)")
    bis.add_argument("--jobs", type=_positive)

    cmp = sub.add_parser("compare", help="per check and bench job: regression, fixed, still failing, new, missing")
    cmp.add_argument("baseline", help="run or bench directory (or its results.json / bench.json) to compare against")
    cmp.add_argument("new", help="the run or bench directory being judged")
    cmp.add_argument("--threshold", type=_fraction, default=0.0, metavar="FRACTION",
                     help="bench: a significant slowdown smaller than this is not a regression (default 0)")
    cmp.add_argument("--json", metavar="FILE", help="also write the comparison as JSON")

    cov = sub.add_parser("coverage", help="which lines the driver series adds to virtio_blk.c ran (run --coverage)")
    cov.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories of vblk-ci run --coverage")
    cov.add_argument("--out", help="report directory (default vblk-ci-out/coverage-<time>)")
    cov.add_argument("--artifacts", metavar="DIR",
                     help="the coverage kernel's virtio_blk.gcno, virtio_blk.c and series-lines.json (default: "
                          "beside the runs' kernel, else $VBLK_CI_COVERAGE_DIR)")
    cov.add_argument("--gcov", help="gcov binary of the gcc that built the kernel (default $VBLK_CI_GCOV, gcov-14, gcov)")
    cov.add_argument("--no-html", dest="html", action="store_false", help="no genhtml report")

    g = sub.add_parser("gates", help="the series gates: git am, checkpatch, sparse, W=1 =y/=m, the module links")
    g.add_argument("--base", action="append", choices=list(BASES), metavar="BASE",
                   help=f"kernel base ({', '.join(BASES)}); repeat for several (default: every base, or with "
                        "--series-dir the default base)")
    g.add_argument("--series-dir", help="series directory (default: each base's own)")
    g.add_argument("--where", choices=("auto", "host", "docker"), default="auto",
                   help="host: this machine's tarball; docker: the image's gates stage; auto (default): host "
                        "when it has the base's tarball and tools")
    g.add_argument("--json", metavar="FILE", help="also write the reports as JSON, one object per base")

    sub.add_parser("version", help="print the version")
    return p


def _fraction_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"must be in (0, 3600] seconds: {value}")
    return value


def _add_bench_parser(sub) -> None:
    b = sub.add_parser("bench", help="benchmark passthrough against the block path (A/B pairs in one VM)")
    b.add_argument("--kernel", help=f"bzImage (default ${ENV_KERNEL})")
    b.add_argument("--initramfs", help=f"guest initramfs, with fio for the reference "
                                       f"(default ${ENV_INITRAMFS_BENCH}, else ${ENV_INITRAMFS})")
    b.add_argument("--out", help="output folder (default vblk-ci-out/bench-<time>)")
    b.add_argument("--qemu", default="qemu-system-x86_64")
    b.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto")
    b.add_argument("--smp", type=_positive, help="vCPUs (default 2; 1 with --icount, so a task's CPU time "
                   "counts only its own vCPU's instructions)")
    b.add_argument("--memory", type=_positive, default=1024, metavar="MB")
    b.add_argument("--preset", help="seed | quick (default: one fair comparison from the job options)")
    b.add_argument("--pairs", type=_positive, default=6,
                   help="A/B pairs per comparison, in ABBA order (default %(default)s; even counts put each "
                        "path first equally often; fewer than 3 is reported as uninformative)")
    b.add_argument("--icount", action="store_true", help="QEMU -icount shift=0,sleep=off: instructions per I/O")
    b.add_argument("--no-fio", dest="fio", action="store_false", help="skip the fio reference runs")
    b.add_argument("--fio-runs", type=_positive, default=3)
    b.add_argument("--no-kicks", dest="kicks", action="store_false", help="do not count virtqueue kicks")
    b.add_argument("--keep-trace", action="store_true", help="keep QEMU's trace log (trace.log) in the output")
    j = b.add_argument_group("job options (t/io_uring equivalents)")
    j.add_argument("--bs", type=_positive, default=4096, help="block size (-b)")
    j.add_argument("--qd", type=_positive, default=1, help="queue depth (-d)")
    j.add_argument("--batch-submit", type=_positive, default=1, help="submit batch (-s)")
    j.add_argument("--batch-complete", type=_positive, default=1, help="complete batch (-c)")
    j.add_argument("--iopoll", action="store_true", help="polled completions (-p1)")
    j.add_argument("--fixed", action="store_true", help="registered buffers (-B1)")
    j.add_argument("--pattern", choices=("random", "sequential"), default="random", help="(-r)")
    j.add_argument("--rwmix-read", type=int, default=100, help="percent reads, 0..100 (default 100)")
    j.add_argument("--runtime", type=_fraction_seconds, help="seconds per run (default 2; presets: theirs)")
    j.add_argument("--ios", type=_positive, help="I/Os per run instead of a runtime")
    j.add_argument("--length", type=_positive, default=64 << 20, help="bytes the I/Os cover")
    j.add_argument("--backend", choices=("null", "file"), default="null")


def _add_fuzz_parser(sub) -> None:
    f = sub.add_parser("fuzz", help="structure-aware fuzzing of the passthrough uapi (seeded, replayable)")
    f.add_argument("--kernel", help=f"bzImage (default ${ENV_KERNEL})")
    f.add_argument("--initramfs", help=INITRAMFS_HELP)
    f.add_argument("--out", help="output folder (default vblk-ci-out/fuzz-<time>)")
    f.add_argument("--qemu", default="qemu-system-x86_64")
    f.add_argument("--accel", choices=("auto", "tcg", "kvm"), default="auto")
    f.add_argument("--smp", type=_positive, default=2)
    f.add_argument("--memory", type=_positive, default=1024, metavar="MB")
    f.add_argument("--seed", type=int, default=1, help="campaign seed: program N is the same for the same seed")
    f.add_argument("--budget", type=float, default=300.0, metavar="SECONDS",
                   help="wall time for the campaign, boot and shrinking included (default %(default)s)")
    f.add_argument("--max-programs", type=_positive, metavar="N",
                   help="stop after N programs (a fixed amount of work; the budget still caps the wall time)")
    f.add_argument("--max-steps", type=_positive, default=24, help="steps per program, at most")
    f.add_argument("--shrink-runs", type=_positive, default=30, help="guest runs to shrink one finding, at most")
    f.add_argument("--faults", default="", metavar="KINDS",
                   help="host faults interleaved with the programs, comma-separated: stop-cont (QMP stop, "
                        "0.3 s, cont during a fifth of the programs), blkdebug-eio (QEMU fails one request type "
                        "with EIO for a fifth of the programs on a writable disk), unplug (hot-unplug the disk "
                        "mid-program in a tenth, plugged back after), unplug-iopoll (the same in half of "
                        "the programs on IOPOLL rings), resize (block_resize grows the disk before or during a fifth "
                        "of the programs on a writable disk, or shrinks it during one; back to its size after), reset (a PCIe function-level reset "
                        "of the disk's device mid-program in about a seventh, through the guest's sysfs: "
                        "virtio_blk's reset_prepare/reset_done; kernels without them skip it), system-reset (QMP "
                        "system_reset mid-program in a twentieth: the guest reboots, the campaign goes on)")
    f.add_argument("--disable", default="", metavar="MUTATIONS",
                   help="mutations never drawn, comma-separated (e.g. huge-len: a known crash costs a reboot per hit)")
    f.add_argument("--replay", metavar="FILE", help="run one program file (a finding's shrunk.txt) and judge it; "
                   "or a finding's repro.c: built static on the host (gcc, liburing-dev) and run in the guest")


def cmd_fuzz(args: argparse.Namespace) -> int:
    from .fuzz.runner import FuzzPlan, run_campaign, run_replay, run_repro_c

    if args.budget <= 0:
        raise UsageError("--budget must be a positive number of seconds")
    replay = Path(args.replay) if args.replay else None
    from .fuzz.runner import FAULT_KINDS

    faults = tuple(k for k in args.faults.split(",") if k)
    if set(faults) - set(FAULT_KINDS):
        raise UsageError(f"--faults: unknown kind(s) {', '.join(sorted(set(faults) - set(FAULT_KINDS)))} "
                         f"(known: {', '.join(FAULT_KINDS)})")
    c_repro = replay is not None and replay.suffix == ".c"
    from .fuzz.generator import MUTATION_NAMES

    disable = tuple(k for k in args.disable.split(",") if k)
    if set(disable) - set(MUTATION_NAMES):
        raise UsageError(f"--disable: unknown mutation(s) {', '.join(sorted(set(disable) - set(MUTATION_NAMES)))} "
                         f"(known: {', '.join(MUTATION_NAMES)})")
    if replay is not None:
        from .fuzz.program import parse

        if not replay.is_file():
            raise MissingPrerequisite(f"program file not found: {replay}")
        if not c_repro:
            parse(replay.read_text(encoding="utf-8"), str(replay))  # a bad file is exit 2 before a boot
    kernel = kernel_artifact(args.kernel)
    initramfs = initramfs_artifact(args.initramfs, kernel)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else DEFAULT_OUT_ROOT / f"fuzz-{stamp}"
    plan = FuzzPlan(kernel=kernel, initramfs=initramfs, out=out, seed=args.seed, budget_s=args.budget,
                    max_programs=args.max_programs, disable=disable,
                    qemu=args.qemu, accel=args.accel, smp=args.smp, memory_mb=args.memory,
                    max_steps=args.max_steps, shrink_runs=args.shrink_runs, replay=replay, faults=faults)
    with _reporting(out) as report:
        if c_repro:
            record = run_repro_c(plan, report)
        else:
            record = run_replay(plan, report) if replay is not None else run_campaign(plan, report)
    if c_repro:
        print(record["stdout"], end="")
        for title in record["console"]:
            print(f"console: {title}")
        print(f"vblk-ci: fuzz replay of {replay}: exit {record['rc']}, console findings {len(record['console'])}: "
              f"{out / 'replay.json'}", file=sys.stderr)
        return 1 if record["rc"] == 1 or record["console"] else 0
    if replay is not None:
        for line in record["results"]:
            print(json.dumps(line))
        for f in record["findings"]:
            print(f"finding: {f['signature']}: {f['detail'].splitlines()[0]}")
        print(f"vblk-ci: fuzz replay: {len(record['findings'])} findings: {out / 'replay.json'}", file=sys.stderr)
        return 1 if record["findings"] else 0
    print(f"fuzz: seed {record['seed']}, {record['wall_s']} s wall (stopped by {record['stopped']}), "
          f"{record['programs']} programs, "
          f"{record['commands']} commands, {record['commands_per_minute']} commands/min "
          f"({record['commands_per_minute_executing']}/min while executing), {record['boots']} boots")
    print(f"fuzz: {len(record['classes'])} (op, outcome) classes reached:")
    for cls, n in record["classes"].items():
        print(f"  {cls:40s} {n}")
    print(f"fuzz: {len(record['findings'])} findings:")
    for f in record["findings"]:
        print(f"  [{f['kind']}] {f['signature']} (hit by {f['programs_hit']} programs, shrunk "
              f"{f['steps']} -> {f['shrunk_steps']} steps)\n      {f['detail'].splitlines()[0]}\n"
              f"      {f['folder']}/repro.c")
    print(f"vblk-ci: fuzz done: results in {out / 'fuzz.json'}", file=sys.stderr)
    return 1 if record["findings"] else 0


# -- run ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _reporting(run_dir: Path):
    """A terminal reporter for one run; an error that escapes the run leaves its traceback
    in the run dir's run.log (the terminal gets one line from main())."""
    from .report.terminal import TerminalReporter

    report = TerminalReporter()
    try:
        yield report
    except VblkCiError as exc:
        if run_dir.is_dir():
            with open(run_dir / "run.log", "a", encoding="utf-8") as f:
                f.write("".join(traceback.format_exception(exc)))
        raise
    finally:
        report.close()


def cmd_run_matrix(args: argparse.Namespace) -> int:
    from .matrix.run import MatrixPlan, run_matrix, selected
    from .matrix.schema import load_matrix

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    source = Path(args.matrix) if args.matrix else None
    name = source.stem if source else "disks"
    run_dir = Path(args.out) if args.out else DEFAULT_OUT_ROOT / f"matrix-{name}-{stamp}"
    # A bad file or flag is a UsageError before anything boots.
    if source is not None:
        if args.disks:
            raise UsageError("give either --matrix FILE or --disk flags, not both")
        matrix = load_matrix(source, run_dir / "images")
    else:
        from .matrix.schema import matrix_from_flags

        matrix = matrix_from_flags(args.disks, run_dir / "images", vcpus=args.smp, memory_mb=args.memory,
                                   group=args.together)
    if not selected(matrix, args.select):
        raise UsageError(f"-k {args.select!r} selects none of the {len(matrix.combinations)} combinations "
                         f"in {source or 'the --disk flags'}")
    kernel = kernel_artifact(args.kernel)
    initramfs = initramfs_artifact(args.initramfs, kernel)
    plan = MatrixPlan(kernel=kernel, initramfs=initramfs, run_dir=run_dir, matrix=matrix, select=args.select,
                      qemu=args.qemu, accel=args.accel)
    with _reporting(run_dir) as report:
        result = run_matrix(plan, report)
    print(f"vblk-ci: {result.status}: results in {run_dir} (table: {run_dir / 'report' / 'matrix.md'})",
          file=sys.stderr)
    return result.exit_code


def _schedule(arg: str | None) -> Path | None:
    """--schedule: checked here (file, JSON, kinds, parameters, disks) so a bad one is exit 2 before a boot."""
    if arg is None:
        return None
    from .scenarios.fault_schedule_file import check_schedule_file

    check_schedule_file(Path(arg))
    return Path(arg)


def cmd_run(args: argparse.Namespace) -> int:
    from .runner import Plan, run

    from .scenarios import get as get_scenario, suite

    if args.matrix or args.disks:
        if args.scenarios or args.checks or args.suite:
            raise UsageError("--matrix/--disk run a device matrix: --suite, --scenario and --check do not apply")
        return cmd_run_matrix(args)
    if args.select is not None:
        raise UsageError("-k selects matrix combinations: it needs --matrix FILE")
    if args.scenarios and args.suite:
        raise UsageError("give either --suite or --scenario, not both")
    scenarios = tuple(args.scenarios or ())
    checks = tuple(args.checks or ())
    if any(not g.strip() for g in checks):
        raise UsageError("--check needs a non-empty glob")
    for name in scenarios:
        get_scenario(name)  # an unknown scenario is a usage error before anything is created
    suite_name = args.suite or "smoke"
    suite(suite_name)  # an unknown suite is a usage error before anything is created
    if args.tree and args.kernel:
        raise UsageError("give either --kernel or --tree, not both")
    if args.tree:  # the initramfs first: a missing one should not wait for a kernel build
        initramfs = initramfs_artifact(args.initramfs)
        kernel = tree_kernel(args.tree)
    else:
        kernel = kernel_artifact(args.kernel)
        initramfs = initramfs_artifact(args.initramfs, kernel)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    label = "-".join(scenarios) if scenarios else suite_name
    run_dir = Path(args.out) if args.out else DEFAULT_OUT_ROOT / f"{label}-{stamp}"
    schedule = _schedule(args.schedule)
    plan = Plan(
        kernel=kernel, initramfs=initramfs, run_dir=run_dir, qemu=args.qemu, accel=args.accel,
        smp=args.smp, memory_mb=args.memory, suite=suite_name, schedule=schedule, strict=args.strict,
        coverage=args.coverage, scenarios=scenarios, checks=checks,
    )
    with _reporting(run_dir) as report:
        result = run(plan, report)
    _annotate(result, kernel, run_dir)
    print(f"vblk-ci: {result.status}: results in {run_dir}", file=sys.stderr)
    return result.exit_code


def tree_kernel(tree: str, **options) -> Path:
    """``--tree DIR``: build the user's tree (build/tree.py) and return its bzImage; the build's
    progress goes to the terminal, a build failure is BuildError (exit 125: bisect skips)."""
    from .build.tree import TreeBuildOptions, build_tree_kernel
    from .events import BuildStep
    from .report.terminal import TerminalReporter

    report = TerminalReporter()
    try:
        artifact = build_tree_kernel(TreeBuildOptions(tree=tree, **options),
                                     progress=lambda m: report(BuildStep("kernel", m, done=True)))
    finally:
        report.close()
    return artifact.bzimage


def _annotate(result, kernel: Path, run_dir: Path) -> None:
    """annotations.txt in the run dir; on GitHub Actions also stdout, where the runner turns
    each line into an annotation on the file and line it names."""
    from .console.decode import decoder_for
    from .report.annotations import annotations

    decoder = decoder_for(kernel)
    decoded = {f.title: decoder.decode_all(f.excerpt) for f in result.findings} if decoder else {}
    lines = annotations(result, decoded)
    if not lines:
        return
    (Path(run_dir) / "annotations.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if os.environ.get("GITHUB_ACTIONS") == "true":
        print("\n".join(lines))


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
        if args.target == "kernel" and args.tree:
            from .build.tree import TreeBuildOptions, build_tree_kernel

            clash = [f for f, v in (("--base", args.base), ("--source-tarball", args.source_tarball),
                                    ("--source-dir", args.source_dir), ("--series-dir", args.series_dir),
                                    ("--no-series", not args.apply_series)) if v]
            if clash:
                raise UsageError(f"--tree builds the tree as it is: {', '.join(clash)} do not apply")
            artifact = build_tree_kernel(TreeBuildOptions(
                tree=args.tree, variant=args.variant or "default", cache_dir=args.cache_dir, jobs=args.jobs,
                virtio_blk_module=args.virtio_blk_module, fragments=args.fragments,
                make_args=args.make_args or []), progress=progress)
        elif args.target == "kernel":
            from .build.kernel import KernelBuildOptions, build_kernel, kernel_base

            options = _options(KernelBuildOptions, args)
            kernel_base(options)  # an unknown --base: one usage line (exit 2) before anything runs
            artifact = build_kernel(options, progress=progress)
        else:
            from .build.initramfs import InitramfsBuildOptions, build_initramfs

            artifact = build_initramfs(_options(InitramfsBuildOptions, args), progress=progress)
    finally:
        report.close()
    print(json.dumps(artifact.to_json(), indent=2))
    return 0


# -- bench -------------------------------------------------------------------------------


def bench_options(args: argparse.Namespace):
    """BenchOptions from the command line; bad combinations are a UsageError."""
    from .bench.job import BenchOptions, Job, fair
    from .bench.presets import preset

    if args.preset:
        if args.ios is not None:
            raise UsageError("--ios does not go with --preset (presets run for a time; use --runtime)")
        comparisons = preset(args.preset, args.runtime)
    else:
        job = Job(bs=args.bs, qd=args.qd, batch_submit=args.batch_submit, batch_complete=args.batch_complete,
                  iopoll=args.iopoll, fixed=args.fixed, pattern=args.pattern, rwmix_read=args.rwmix_read,
                  runtime_s=None if args.ios else (args.runtime or 2.0), ios=args.ios, length=args.length)
        comparisons = (fair(f"{job.op_label}-qd{job.qd}-{args.backend}", job, args.backend),)
    return BenchOptions(comparisons=comparisons, pairs=args.pairs, icount=args.icount, fio=args.fio,
                        fio_runs=args.fio_runs, kicks=args.kicks, keep_trace=args.keep_trace).validate()


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench.report import write_all
    from .bench.runner import BenchPlan, run_bench

    options = bench_options(args)
    try:  # the plots come at the end: fail before booting, not after the measurements
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingPrerequisite("matplotlib is not installed (pip install matplotlib, or python3-matplotlib)") from None
    kernel = kernel_artifact(args.kernel)
    initramfs = artifact(args.initramfs or os.environ.get(ENV_INITRAMFS_BENCH), ENV_INITRAMFS, "initramfs",
                          "--initramfs")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else DEFAULT_OUT_ROOT / f"bench-{stamp}"
    plan = BenchPlan(kernel=kernel, initramfs=initramfs, out=out, options=options, qemu=args.qemu,
                     accel=args.accel, smp=args.smp or (1 if args.icount else 2), memory_mb=args.memory,
                     preset=args.preset)
    with _reporting(out) as report:
        record = run_bench(plan, report)
    files = write_all(record, out)
    print(files["markdown"].read_text(encoding="utf-8"))
    print(f"vblk-ci: bench done: results in {out}", file=sys.stderr)
    return 0


# -- bisect ------------------------------------------------------------------------------


def cmd_bisect(args: argparse.Namespace) -> int:
    from .bisect import BisectPlan, bisect
    from .report.terminal import TerminalReporter
    from .scenarios import get as get_scenario, suite

    if args.suite:
        suite(args.suite)
    for name in args.scenarios or ():
        get_scenario(name)
    bundle = Path(args.bundle) if args.bundle else None
    if bundle is not None and not bundle.is_file():
        raise UsageError(f"no such bundle: {bundle}")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else DEFAULT_OUT_ROOT / f"bisect-{stamp}"
    plan = BisectPlan(tree=Path(args.tree).resolve(), good=args.good, bad=args.bad, out=out.resolve(),
                      initramfs=initramfs_artifact(args.initramfs), suite=args.suite,
                      scenarios=tuple(args.scenarios or ()), checks=tuple(args.checks or ()), bundle=bundle,
                      qemu=args.qemu, accel=args.accel, cache_dir=args.cache_dir, jobs=args.jobs)
    report = TerminalReporter()
    try:
        result = bisect(plan, report)
    finally:
        report.close()
    (out / "bisect.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    for n, s in enumerate(result.steps, 1):
        print(f"{n:2d}. {s.commit[:12]} {s.verdict:4s} {s.subject[:60]}  ({s.why[:80]})")
    if result.first_bad:
        print(f"first bad commit: {result.first_bad} {result.first_bad_subject}\n"
              f"its run: {result.first_bad_run_dir}")
    else:
        print(f"no first bad commit: {result.reason}")
    print(f"vblk-ci: bisect {'found' if result.first_bad else 'inconclusive'} in {result.seconds:.0f}s "
          f"({len(result.steps)} steps); {out / 'bisect.json'}", file=sys.stderr)
    return result.exit_code


# -- compare -----------------------------------------------------------------------------


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1): {text!r}")
    return value


def cmd_compare(args: argparse.Namespace) -> int:
    from .report.compare import compare, render
    from .report.summary import append_markdown

    result = compare(args.baseline, args.new, args.threshold)
    text = render(result)
    print(text)
    append_markdown(f"### vblk-ci compare\n\n```\n{text}\n```\n")
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    return result.exit_code


# -- coverage ----------------------------------------------------------------------------


def cmd_coverage(args: argparse.Namespace) -> int:
    from .coverage.analyze import analyze, group_unexecuted, summary_line

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else DEFAULT_OUT_ROOT / f"coverage-{stamp}"
    report = analyze([Path(r) for r in args.run_dirs], out, artifacts=args.artifacts, gcov=args.gcov,
                     html=args.html)
    print(summary_line(report))
    for fn, lines in group_unexecuted(report):
        print(f"not run, in {fn}:")
        for ln in lines:
            print(f"  {report.file}:{ln.line}: {ln.text.strip()}")
    print(f"vblk-ci: coverage report in {out} (coverage.md, coverage.json, html/)", file=sys.stderr)
    return 0


# -- gates -------------------------------------------------------------------------------


def cmd_gates(args: argparse.Namespace) -> int:
    from .build.quality import summary
    from .gates import default_progress, run_gates

    from .build.bases import DEFAULT_BASE

    # A series directory is written for one base: without --base, the default one.
    bases = args.base or ([DEFAULT_BASE] if args.series_dir else list(BASES))
    reports = {}
    for base in bases:
        report, placement = run_gates(base, Path(args.series_dir) if args.series_dir else None, args.where,
                                      default_progress())
        print(f"== {base} ({placement.where}: {placement.reason})")
        print(summary(report))
        reports[base] = {"where": placement.where, **report.to_json()}
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=2) + "\n", encoding="utf-8")
    return EXIT_PASS if all(r["clean"] for r in reports.values()) else EXIT_FAIL


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
        if args.command in ("repro", "shell"):
            from .repro.commands import cmd_repro, cmd_shell

            return cmd_repro(args) if args.command == "repro" else cmd_shell(args)
        if args.command == "bench":
            return cmd_bench(args)
        if args.command == "coverage":
            return cmd_coverage(args)
        if args.command == "compare":
            return cmd_compare(args)
        if args.command == "bisect":
            return cmd_bisect(args)
        if args.command == "fuzz":
            return cmd_fuzz(args)
        if args.command == "gates":
            return cmd_gates(args)
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
