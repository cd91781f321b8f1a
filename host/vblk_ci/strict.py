"""Strict verdicts: a skip counts as a failure unless its reason is on the allow list.

A suite that silently skips what it was meant to check turns green by accident
(a guest without a sysfs knob, a QEMU without a feature). ``--strict`` (and CI)
fails such a run; only the skips below, each a known limit of the environment
rather than of the driver, may pass. A skip whose reason says a check was not
run because an earlier one failed ("not run: ...") already comes with that
failure, so it is allowed too: the failure is the verdict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .result import SKIP, RunResult


@dataclass(frozen=True)
class AllowedSkip:
    scenario: str  # scenario name
    check: str | None  # None: the whole scenario (requires()); else a check name
    reason: re.Pattern[str]
    why: str


ALLOWED_SKIPS: tuple[AllowedSkip, ...] = (
    AllowedSkip("fault-blkdebug-delay", None, re.compile(r"^blkdebug delay-ns needs QEMU >= 10\.0"),
                "the host's QEMU 7.2 has no blkdebug delay-ns; the image's QEMU 10 runs it"),
    AllowedSkip("fault-device-reset", None, re.compile(r"^virtio_blk has no reset_prepare here"),
                "6.12's virtio_blk has no reset_prepare: a function-level reset would go past it; 7.3 runs it"),
)

#: A check that was not run because an earlier one in its scenario failed.
_AFTER_FAILURE = re.compile(r"^not run: ")


def _allowed(scenario: str, check: str | None, reason: str) -> bool:
    return any(a.scenario == scenario and a.check == check and a.reason.search(reason) for a in ALLOWED_SKIPS)


def unallowed_skips(result: RunResult) -> list[str]:
    """``scenario[/check]: reason`` for every skip the allow list does not cover."""
    out: list[str] = []
    for s in result.scenarios:
        if s.status == SKIP and not s.checks:
            out += [f"{s.name}: {r}" for r in s.skip_reasons if not _allowed(s.name, None, r)]
            continue
        scenario_failed = any(c.status != SKIP and c.status != "pass" for c in s.checks)
        for c in s.checks:
            if c.status != SKIP:
                continue
            if scenario_failed and _AFTER_FAILURE.search(c.detail):
                continue
            if not _allowed(s.name, c.name, c.detail):
                out.append(f"{c.full_name}: {c.detail}")
    return out
