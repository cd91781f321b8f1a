"""``vblk-ci bisect``: find the commit of a kernel tree that broke a suite, scenario or bundle.

Drives ``git bisect`` over the user's tree itself (not ``git bisect run``), so each step's
build and run directory are kept and reported:

1. the tree must be clean (bisect checks commits out); ``git bisect start BAD GOOD``;
2. for each commit git offers: build it with ``build/tree.py`` (incremental: only what the
   commits between steps touched recompiles); a build failure is ``skip``;
3. judge it: ``runner.run`` of the suite or scenarios (strict), or a replay of a repro
   bundle with this kernel: pass -> ``good``, fail -> ``bad``, cannot judge (infrastructure
   error, every replay errored) -> ``skip``;
4. stop at git's "first bad commit" (or when only skipped commits are left), then
   ``git bisect reset`` puts the tree back where it was.

The same 0/1/125 contract is what ``vblk-ci run`` and ``vblk-ci repro`` exit with, so a
plain ``git bisect run`` works as well; this command adds the build, the bookkeeping and
the report.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import events as E
from .errors import EXIT_FAIL, EXIT_INFRA, EXIT_PASS, BuildError, InfraError, UsageError

GOOD, BAD, SKIP = "good", "bad", "skip"


@dataclass(frozen=True)
class BisectPlan:
    tree: Path
    good: str
    bad: str
    out: Path
    initramfs: Path
    suite: str | None = None
    scenarios: tuple[str, ...] = ()
    checks: tuple[str, ...] = ()
    bundle: Path | None = None
    qemu: str = "qemu-system-x86_64"
    accel: str = "auto"
    cache_dir: str | None = None
    jobs: int | None = None
    max_steps: int = 30  # log2 of any real range is far below; a loop guard


@dataclass
class BisectStep:
    commit: str
    subject: str
    verdict: str  # good | bad | skip
    why: str
    run_dir: str | None
    build_seconds: float | None
    run_seconds: float | None


@dataclass
class BisectResult:
    first_bad: str | None = None
    first_bad_subject: str = ""
    first_bad_run_dir: str | None = None
    reason: str = ""
    steps: list[BisectStep] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_PASS if self.first_bad else EXIT_INFRA

    def to_dict(self) -> dict:
        return {"first_bad": self.first_bad, "first_bad_subject": self.first_bad_subject,
                "first_bad_run_dir": self.first_bad_run_dir, "reason": self.reason,
                "seconds": round(self.seconds, 1), "steps": [s.__dict__ for s in self.steps]}


def git(tree: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        last = ((proc.stderr or proc.stdout).strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise UsageError(f"git {' '.join(args)} in {tree}: {last}")
    return proc.stdout.strip()


def _check_plan(plan: BisectPlan) -> None:
    given = [x for x in (plan.suite, plan.scenarios, plan.bundle) if x]
    if len(given) != 1:
        raise UsageError("bisect needs exactly one of --suite, --scenario, --bundle")
    if git(plan.tree, "status", "--porcelain", "--untracked-files=no"):
        raise UsageError(f"{plan.tree} has uncommitted changes: bisect checks commits out; commit or stash them")
    for rev in (plan.good, plan.bad):
        git(plan.tree, "rev-parse", "--verify", f"{rev}^{{commit}}")
    if subprocess.run(["git", "-C", str(plan.tree), "merge-base", "--is-ancestor", plan.good, plan.bad],
                      capture_output=True).returncode:
        raise UsageError(f"--good {plan.good} is not an ancestor of --bad {plan.bad}")


Judge = Callable[[BisectPlan, str, Path, E.Emit], tuple[str, str, str | None, float | None, float | None]]


def judge_commit(plan: BisectPlan, commit: str, run_dir: Path, emit: E.Emit):
    """(verdict, why, run dir, build seconds, run seconds) for the commit checked out now."""
    from .build.tree import TreeBuildOptions, build_tree_kernel

    t0 = time.monotonic()
    try:
        art = build_tree_kernel(TreeBuildOptions(tree=str(plan.tree), cache_dir=plan.cache_dir, jobs=plan.jobs),
                                progress=lambda m: emit(E.BuildStep("kernel", m, done=False)))
    except (BuildError, UsageError) as exc:
        return SKIP, f"does not build: {str(exc).splitlines()[0]}", None, time.monotonic() - t0, None
    build_s = time.monotonic() - t0
    t1 = time.monotonic()
    if plan.bundle is not None:
        from .repro.bundle import read_bundle
        from .repro.replay import ReplayOptions, replay
        from .runner import Plan, run

        bundle = read_bundle(plan.bundle, run_dir / "bundle")
        report = replay(bundle, ReplayOptions(kernel=art.bzimage, initramfs=plan.initramfs, qemu=plan.qemu,
                                              accel=None if plan.accel == "auto" else plan.accel),
                        run_dir, run, Plan, emit)
        code, why = report.exit_code, f"reproduced {report.reproduced}/{len(report.runs)}"
        where = report.runs[0].run_dir if report.runs else str(run_dir)
    else:
        from .runner import Plan, run

        result = run(Plan(kernel=art.bzimage, initramfs=plan.initramfs, run_dir=run_dir, qemu=plan.qemu,
                          accel=plan.accel, suite=plan.suite or "smoke", scenarios=plan.scenarios,
                          checks=plan.checks, strict=True, repro_bundle=False), emit)
        reason = (result.reason or "").splitlines()
        code, why, where = result.exit_code, f"{result.status}: {reason[0][:200] if reason else 'all checks passed'}", \
            str(run_dir)
    verdict = {EXIT_PASS: GOOD, EXIT_FAIL: BAD}.get(code, SKIP)
    return verdict, why, where, build_s, time.monotonic() - t1


def _found(plan: BisectPlan, result: BisectResult, first: str, n: int, emit: E.Emit, judge: Judge) -> None:
    result.first_bad = git(plan.tree, "rev-parse", first)
    result.first_bad_subject = git(plan.tree, "log", "-1", "--format=%s", result.first_bad)
    bad_runs = [s.run_dir for s in result.steps if s.commit == result.first_bad and s.verdict == BAD]
    if not bad_runs:  # git inferred it (e.g. the --bad end itself): run it for its evidence
        git(plan.tree, "checkout", "-q", result.first_bad)
        verdict, why, run_dir, build_s, run_s = judge(plan, result.first_bad,
                                                      plan.out / f"{n:02d}-{result.first_bad[:12]}", emit)
        result.steps.append(BisectStep(result.first_bad, result.first_bad_subject, verdict, why, run_dir,
                                       build_s, run_s))
        bad_runs = [run_dir] if verdict == BAD else []
    result.first_bad_run_dir = bad_runs[0] if bad_runs else None
    result.reason = "found" if bad_runs else "found, but the first bad commit did not fail when run again"


def bisect(plan: BisectPlan, emit: E.Emit = E.discard, judge: Judge = judge_commit) -> BisectResult:
    _check_plan(plan)
    started = time.monotonic()
    result = BisectResult()
    plan.out.mkdir(parents=True, exist_ok=True)
    answer = git(plan.tree, "bisect", "start", plan.bad, plan.good)
    try:
        for n in range(1, plan.max_steps + 1):
            if "is the first bad commit" in answer:
                _found(plan, result, answer.split()[0], n, emit, judge)
                break
            if "only 'skip'ped commits left" in answer:
                result.reason = "only skipped commits left: " + " ".join(answer.split("\n")[1:]).strip()[:500]
                break
            commit = git(plan.tree, "rev-parse", "HEAD")
            subject = git(plan.tree, "log", "-1", "--format=%s", commit)
            emit(E.Note(f"bisect step {n}: {commit[:12]} {subject}"))
            try:
                verdict, why, run_dir, build_s, run_s = judge(plan, commit, plan.out / f"{n:02d}-{commit[:12]}", emit)
            except InfraError as exc:
                verdict, why, run_dir, build_s, run_s = SKIP, f"cannot judge: {str(exc).splitlines()[0]}", None, \
                    None, None
            result.steps.append(BisectStep(commit, subject, verdict, why, run_dir, build_s, run_s))
            emit(E.Note(f"bisect step {n}: {commit[:12]} is {verdict} ({why})"))
            answer = git(plan.tree, "bisect", verdict, check=False)
        else:
            result.reason = f"no answer after {plan.max_steps} steps"
    finally:
        git(plan.tree, "bisect", "reset", check=False)
        result.seconds = time.monotonic() - started
    return result
