"""Replay a reproduction bundle N times and count how often the failure came back.

A replay counts as reproducing the bundle when its ``Signature`` matches: the
same verdict and the same first console finding title (or, without a finding,
the same first failed check, or the same first line of the reason).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .. import events as E
from ..errors import EXIT_FAIL, EXIT_INFRA, EXIT_PASS
from .bundle import (
    INITRAMFS, KERNEL, SCHEDULE_INPUT, Bundle, BundleError, Signature, plan_from_json, signature_of,
)


@dataclass(frozen=True)
class ReplayOptions:
    repeat: int = 1
    kernel: Path | None = None  # overrides of the bundle's artifacts / recorded settings
    initramfs: Path | None = None
    qemu: str | None = None
    accel: str | None = None


@dataclass
class ReplayRun:
    index: int
    run_dir: str
    signature: Signature
    reproduced: bool


@dataclass
class ReplayReport:
    expected: Signature
    runs: list[ReplayRun] = field(default_factory=list)

    @property
    def reproduced(self) -> int:
        return sum(r.reproduced for r in self.runs)

    @property
    def exit_code(self) -> int:
        """1 reproduced at least once (the bug is there), 0 never, 125 every replay was an infra error."""
        if self.reproduced:
            return EXIT_FAIL
        if self.runs and all(r.signature.status == E.ERROR for r in self.runs):
            return EXIT_INFRA
        return EXIT_PASS

    def to_dict(self) -> dict:
        return {
            "expected": self.expected.__dict__,
            "reproduced": self.reproduced,
            "repeat": len(self.runs),
            "runs": [{"index": r.index, "run_dir": r.run_dir, "reproduced": r.reproduced,
                      "signature": r.signature.__dict__} for r in self.runs],
        }


def replay_plan(bundle: Bundle, options: ReplayOptions, run_dir: Path, plan_cls: type):
    """The Plan a replay runs: the bundle's own artifacts and settings, unless overridden.

    The accelerator is the one the recorded run used (not "auto"), so a replay on
    the same host runs the way the failure did.
    """
    kernel = options.kernel or bundle.member(KERNEL)
    initramfs = options.initramfs or bundle.member(INITRAMFS)
    if kernel is None:
        raise BundleError("the bundle has no kernel image: give --kernel")
    if initramfs is None:
        raise BundleError("the bundle has no initramfs: give --initramfs")
    # A replay that fails again does not need a bundle of its own.
    overrides: dict = {"kernel": kernel, "initramfs": initramfs, "run_dir": run_dir, "repro_bundle": False}
    accel = options.accel or bundle.manifest.get("accel") or bundle.plan.get("accel")
    if accel:
        overrides["accel"] = accel
    if options.qemu:
        overrides["qemu"] = options.qemu
    if bundle.plan.get("schedule"):
        schedule = bundle.member(SCHEDULE_INPUT)
        if schedule is None:
            raise BundleError("the run had a --schedule file but the bundle does not hold it")
        overrides["schedule"] = schedule
    plan, _unknown = plan_from_json(bundle.plan, plan_cls, **overrides)
    return plan


def replay(bundle: Bundle, options: ReplayOptions, out_dir: Path, run: Callable, plan_cls: type,
           emit: E.Emit = E.discard) -> ReplayReport:
    """Run the bundle's plan ``options.repeat`` times (``run(plan, emit)`` is ``runner.run``)."""
    expected = bundle.signature
    report = ReplayReport(expected)
    _plan, unknown = plan_from_json(bundle.plan, plan_cls, kernel="-", initramfs="-", run_dir="-")
    if unknown:
        emit(E.Note(f"plan fields this version does not know, ignored: {', '.join(unknown)}"))
    emit(E.Note(f"replaying {options.repeat}x, expecting {expected.describe()}"))
    for i in range(1, options.repeat + 1):
        run_dir = Path(out_dir) / f"replay-{i}"
        plan = replay_plan(bundle, options, run_dir, plan_cls)
        result = run(plan, emit)
        got = signature_of(json.loads(json.dumps(result.to_dict(), default=str)))
        matched = got.matches(expected)
        report.runs.append(ReplayRun(i, str(run_dir), got, matched))
        emit(E.Note(f"replay {i}/{options.repeat}: {'reproduced' if matched else 'not reproduced'} "
                    f"({got.describe()})"))
    return report
