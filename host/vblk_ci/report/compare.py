"""``vblk-ci compare BASELINE NEW``: what changed between two runs, and whether it is a regression.

Each side is a run directory (``results.json``), a bench directory (``bench.json``), or
either file itself. Checks are matched by ``scenario/check`` name:

- regression: passed in the baseline, and now fails, errors, is skipped or is missing; or a
  check the baseline did not have now fails (a gate must not turn green with a failing check
  just because the check is new); or a console finding (oops, WARN, KASAN...) the baseline
  did not have;
- fixed: failed or errored in the baseline, passes now;
- still failing: failed (or errored) in both;
- new: not in the baseline (passing, or skipped);
- missing: in the baseline but not run now (a regression when it had passed).

Bench jobs are matched by comparison name and path. A job is a regression only when the
change is significant: the ratio new/baseline of the geometric-mean IOPS has a 95% interval
(Welch's t on the per-pair log IOPS of the two independent runs) entirely below 1, and
below ``1 - threshold``. Fewer than 3 pairs on either side is reported as uninformative and
never gates.

Exit code (cli): 1 on any regression, 0 otherwise, 2 when a side cannot be read.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..bench.stats import mean_sd, t975
from ..errors import UsageError

REGRESSION, FIXED, STILL_FAILING, NEW, MISSING, UNCHANGED = (
    "regression", "fixed", "still failing", "new", "missing", "unchanged")
BAD = ("fail", "error")
MIN_PAIRS = 3  # below this a between-run interval says nothing (t975(1) = 12.7)


@dataclass
class CheckChange:
    name: str
    kind: str
    before: str | None
    after: str | None
    detail: str = ""  # the new run's detail line for a regression or a still-failing check


@dataclass
class BenchChange:
    job: str
    path: str
    ratio: float  # new / baseline, geometric means of IOPS
    low: float | None
    high: float | None
    n_before: int
    n_after: int
    kind: str  # regression | unchanged | faster | uninformative


@dataclass
class Comparison:
    baseline: str
    new: str
    checks: list[CheckChange] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)  # console findings new in the new run
    bench: list[BenchChange] = field(default_factory=list)

    @property
    def regressions(self) -> list[str]:
        out = [f"{c.name}: {c.before or 'absent'} -> {c.after or 'absent'}" for c in self.checks
               if c.kind == REGRESSION]
        out += [f"console: {t}" for t in self.findings]
        out += [f"bench {b.job}/{b.path}: IOPS x{b.ratio:.3f} [{b.low:.3f}, {b.high:.3f}]" for b in self.bench
                if b.kind == REGRESSION]
        return out

    @property
    def exit_code(self) -> int:
        return 1 if self.regressions else 0

    def to_dict(self) -> dict:
        return {
            "baseline": self.baseline, "new": self.new, "regressions": self.regressions,
            "checks": [c.__dict__ for c in self.checks], "new_findings": self.findings,
            "bench": [b.__dict__ for b in self.bench],
        }


def _load(side: str) -> tuple[str, dict]:
    """('results' | 'bench', the JSON) for a run dir, a bench dir or either file."""
    path = Path(side)
    if path.is_dir():
        for name, kind in (("results.json", "results"), ("bench.json", "bench")):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise UsageError(f"{side}: neither results.json nor bench.json in this directory")
    if not path.is_file():
        raise UsageError(f"{side}: no such run directory or file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not readable JSON ({exc})") from None
    if isinstance(data, dict) and "scenarios" in data:
        return "results", data
    if isinstance(data, dict) and "comparisons" in data:
        return "bench", data
    raise UsageError(f"{path}: neither a run's results.json nor a bench.json")


def _statuses(results: dict) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for scenario in results.get("scenarios", []):
        for check in scenario.get("checks", []):
            out[f"{check['scenario']}/{check['name']}"] = (check["status"], (check.get("detail") or "").split("\n")[0])
    return out


def classify(before: str | None, after: str | None) -> str:
    if before is None:
        return REGRESSION if after in BAD else NEW
    if after is None:
        return REGRESSION if before == "pass" else MISSING
    if before == "pass":
        return UNCHANGED if after == "pass" else REGRESSION
    if before in BAD:
        return FIXED if after == "pass" else STILL_FAILING if after in BAD else MISSING
    return NEW if after == "pass" else UNCHANGED  # skipped before: nothing was known


def compare_checks(base: dict, new: dict, cmp: Comparison) -> None:
    a, b = _statuses(base), _statuses(new)
    for name in sorted(set(a) | set(b)):
        before = a.get(name, (None, ""))[0]
        after, detail = b.get(name, (None, ""))
        kind = classify(before, after)
        if kind != UNCHANGED:
            cmp.checks.append(CheckChange(name, kind, before, after, detail if after in BAD else ""))
    seen = {f.get("title") for f in base.get("findings", [])}
    cmp.findings = [f["title"] for f in new.get("findings", []) if f.get("title") not in seen]


def log_ratio_interval(before: list[float], after: list[float]) -> tuple[float, float | None, float | None]:
    """new/baseline ratio of geometric means with a Welch 95% interval (None bounds if too few)."""
    la, lb = [math.log(v) for v in before], [math.log(v) for v in after]
    ma, sa = mean_sd(la)
    mb, sb = mean_sd(lb)
    ratio = math.exp(mb - ma)
    if len(la) < 2 or len(lb) < 2:
        return ratio, None, None
    va, vb = sa * sa / len(la), sb * sb / len(lb)
    se = math.sqrt(va + vb)
    if se == 0:
        return ratio, ratio, ratio
    df = (va + vb) ** 2 / (va * va / (len(la) - 1) + vb * vb / (len(lb) - 1))
    half = t975(max(1, math.floor(df))) * se
    return ratio, math.exp(mb - ma - half), math.exp(mb - ma + half)


def compare_bench(base: dict, new: dict, cmp: Comparison, threshold: float) -> None:
    def series(data: dict) -> dict[tuple[str, str], list[float]]:
        out = {}
        for c in data.get("comparisons", []):
            for path, s in (c.get("summary") or {}).get("paths", {}).items():
                values = [v for v in s.get("iops", []) if v and v > 0]
                if values:
                    out[(c["name"], path)] = values
        return out

    a, b = series(base), series(new)
    for key in sorted(set(a) & set(b)):
        ratio, low, high = log_ratio_interval(a[key], b[key])
        n_a, n_b = len(a[key]), len(b[key])
        if min(n_a, n_b) < MIN_PAIRS or low is None:
            kind = "uninformative"
        elif high < 1.0 and high < 1.0 - threshold:
            kind = REGRESSION
        elif low > 1.0:
            kind = "faster"
        else:
            kind = UNCHANGED
        cmp.bench.append(BenchChange(key[0], key[1], ratio, low, high, n_a, n_b, kind))


def compare(baseline: str, new: str, threshold: float = 0.0) -> Comparison:
    kind_a, base = _load(baseline)
    kind_b, after = _load(new)
    if kind_a != kind_b:
        raise UsageError(f"cannot compare a {kind_a} file ({baseline}) with a {kind_b} file ({new})")
    cmp = Comparison(baseline, new)
    if kind_a == "results":
        compare_checks(base, after, cmp)
    else:
        compare_bench(base, after, cmp, threshold)
    return cmp


def render(cmp: Comparison) -> str:
    """The terminal / step-summary text: one section per kind, regressions first."""
    lines = [f"compare {cmp.baseline} -> {cmp.new}"]
    for kind in (REGRESSION, FIXED, STILL_FAILING, NEW, MISSING):
        rows = [c for c in cmp.checks if c.kind == kind]
        if rows:
            lines.append(f"{kind} ({len(rows)}):")
            for c in rows:
                tail = f": {c.detail}" if c.detail else ""
                lines.append(f"  {c.name}: {c.before or 'absent'} -> {c.after or 'absent'}{tail}")
    for title in cmp.findings:
        lines.append(f"regression: new console finding: {title}")
    for b in cmp.bench:
        ci = f"[{b.low:.3f}, {b.high:.3f}]" if b.low is not None else "[no interval]"
        lines.append(f"bench {b.job}/{b.path}: IOPS x{b.ratio:.3f} {ci} "
                     f"(pairs {b.n_before} -> {b.n_after}): {b.kind}")
    lines.append(f"{len(cmp.regressions)} regression(s)" if cmp.regressions else "no regression")
    return "\n".join(lines)
