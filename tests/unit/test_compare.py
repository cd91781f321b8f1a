"""vblk-ci compare: check classification, bench significance, the CLI's exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vblk_ci import cli
from vblk_ci.report.compare import (
    FIXED, MISSING, NEW, REGRESSION, STILL_FAILING, UNCHANGED, classify, compare, log_ratio_interval, render,
)

BENCH = Path(__file__).parent / "data" / "bench"


@pytest.mark.parametrize("before, after, kind", [
    ("pass", "pass", UNCHANGED), ("pass", "fail", REGRESSION), ("pass", "error", REGRESSION),
    ("pass", "skip", REGRESSION), ("pass", None, REGRESSION),
    ("fail", "pass", FIXED), ("error", "pass", FIXED), ("fail", "fail", STILL_FAILING),
    ("fail", "error", STILL_FAILING), ("fail", None, MISSING), ("skip", None, MISSING),
    (None, "pass", NEW), (None, "skip", NEW), (None, "fail", REGRESSION), ("skip", "pass", NEW),
    ("skip", "skip", UNCHANGED),
])
def test_classify(before, after, kind):
    assert classify(before, after) == kind


def _results(path: Path, checks: dict[str, str], findings=()) -> Path:
    scenarios: dict[str, list] = {}
    for full, status in checks.items():
        scenario, name = full.split("/")
        scenarios.setdefault(scenario, []).append(
            {"scenario": scenario, "name": name, "status": status, "detail": f"{name} said {status}\nmore"})
    path.mkdir()
    (path / "results.json").write_text(json.dumps({
        "status": "pass", "scenarios": [{"name": s, "checks": c} for s, c in scenarios.items()],
        "findings": [{"kind": "oops", "title": t, "excerpt": ""} for t in findings]}))
    return path


def test_compare_runs_names_each_kind_and_gates(tmp_path, capsys):
    base = _results(tmp_path / "base", {"a/one": "pass", "a/two": "fail", "a/three": "pass", "b/gone": "fail"})
    new = _results(tmp_path / "new", {"a/one": "fail", "a/two": "pass", "a/three": "pass", "b/added": "pass"},
                   findings=["BUG: KASAN: slab-use-after-free in virtblk_poll"])
    cmp = compare(str(base), str(new))
    kinds = {c.name: c.kind for c in cmp.checks}
    assert kinds == {"a/one": REGRESSION, "a/two": FIXED, "b/gone": MISSING, "b/added": NEW}
    assert cmp.regressions == ["a/one: pass -> fail", "console: BUG: KASAN: slab-use-after-free in virtblk_poll"]
    text = render(cmp)
    assert "regression (1):\n  a/one: pass -> fail: one said fail" in text and text.endswith("2 regression(s)")
    assert cli.main(["compare", str(base), str(new), "--json", str(tmp_path / "c.json")]) == 1
    assert json.loads((tmp_path / "c.json").read_text())["regressions"][0] == "a/one: pass -> fail"
    # The other way round nothing regressed: one is fixed, the other still... passes.
    capsys.readouterr()
    assert cli.main(["compare", str(_results(tmp_path / "same", {"a/one": "pass"})),
                     str(_results(tmp_path / "same2", {"a/one": "pass", "a/x": "skip"}))]) == 0
    assert capsys.readouterr().out.strip().endswith("no regression")


def test_bench_interval_is_welch_on_logs():
    ratio, low, high = log_ratio_interval([100, 110, 90, 105], [50, 55, 45, 52])
    assert 0.42 < low < ratio < high < 0.59 and abs(ratio - 0.5) < 0.01
    assert log_ratio_interval([100], [50])[1:] == (None, None)


def test_bench_same_recorded_run_is_unchanged_and_two_pairs_uninformative(tmp_path):
    cmp = compare(str(BENCH / "seed-icount-tcg-3pairs.json"), str(BENCH / "seed-icount-tcg-3pairs.json"))
    assert cmp.bench and all(b.kind == UNCHANGED and b.ratio == pytest.approx(1.0) for b in cmp.bench)
    cmp = compare(str(BENCH / "quick-tcg-2pairs.json"), str(BENCH / "quick-tcg-2pairs.json"))
    assert cmp.bench and {b.kind for b in cmp.bench} == {"uninformative"} and cmp.exit_code == 0


def test_bench_significant_slowdown_is_a_regression_and_threshold_forgives(tmp_path):
    data = json.loads((BENCH / "seed-icount-tcg-3pairs.json").read_text())
    slow = json.loads(json.dumps(data))
    for c in slow["comparisons"]:
        for s in c["summary"]["paths"].values():
            s["iops"] = [v / 10 for v in s["iops"]]  # every job ten times slower
    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / "bench.json").write_text(json.dumps(slow))
    shutil.copy(BENCH / "seed-icount-tcg-3pairs.json", tmp_path / "base.json")
    cmp = compare(str(tmp_path / "base.json"), str(tmp_path / "slow"))
    kinds = {(b.job, b.path): b.kind for b in cmp.bench}
    # The steady job (CV about 1 %) is significantly slower; a job whose three recorded pairs
    # spread over 10x (TCG on a loaded host) is not, however much its mean fell.
    assert kinds[("qd1-fair-file", "passthru")] == REGRESSION and cmp.exit_code == 1
    assert kinds[("qd1-seed-file", "passthru")] == UNCHANGED
    assert compare(str(tmp_path / "slow"), str(tmp_path / "base.json")).exit_code == 0  # faster is fine
    assert all(b.kind != REGRESSION for b in compare(str(tmp_path / "base.json"), str(tmp_path / "slow"),
                                                     threshold=0.95).bench)


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "nothing", "no such run directory or file"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "neither results.json nor bench.json"),
    (lambda d: (d / "x.json").write_text("{") and d / "x.json", "not readable JSON"),
    (lambda d: (d / "y.json").write_text("[]") and d / "y.json", "neither a run's results.json nor a bench.json"),
])
def test_unreadable_side_is_one_line_exit_2(make, message, tmp_path, capsys):
    bad = make(tmp_path)
    assert cli.main(["compare", str(BENCH / "quick-tcg-2pairs.json"), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_results_against_bench_is_refused(tmp_path, capsys):
    run = _results(tmp_path / "run", {"a/one": "pass"})
    assert cli.main(["compare", str(run), str(BENCH / "quick-tcg-2pairs.json")]) == 2
    assert "cannot compare a results file" in capsys.readouterr().err
