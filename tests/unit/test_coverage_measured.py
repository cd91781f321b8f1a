"""The measured patch-line coverage of the series, and the documented reason for every line that did not run.

CI does not build the coverage kernel (a full build is ~40 min of make on 2 cores, on top of
tests/run's default and debug kernels), so the figure is measured by hand, running the suites
CI runs (docs/coverage.md has the commands), and recorded in data/coverage/measured-v3.json.
The inject suite is one of them since CI runs it on the debug kernel. This test keeps the record and
the documentation honest: the recorded figure meets the issue's 95 % goal, and docs/coverage.md
explains exactly the lines the record says did not run (a re-measurement that leaves a new line
unexecuted, or runs a documented one, fails here until the table is updated).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RECORD = Path(__file__).parent / "data" / "coverage" / "measured-v3.json"
DOC = REPO / "docs" / "coverage.md"
ROW = re.compile(r"^\| (\d+) \| (\w+) \| (.+) \|$")


def _record() -> dict:
    return json.loads(RECORD.read_text())


def _documented() -> dict[int, tuple[str, str]]:
    rows = {}
    for line in DOC.read_text().splitlines():
        m = ROW.match(line)
        if m:
            rows[int(m.group(1))] = (m.group(2), m.group(3))
    return rows


def test_recorded_coverage_of_the_ci_suites_meets_the_goal():
    rec = _record()
    ci = rec["ci_suites"]
    assert ci["runs"] == ["smoke", "driver", "review", "hotplug", "faults", "inject"]
    assert ci["executed"] / ci["executable"] >= 0.95
    assert ci["executable"] - ci["executed"] == len(ci["unexecuted"])
    five = rec["without_inject"]
    assert five["executable"] == ci["executable"] and five["executed"] <= ci["executed"]
    assert {u["line"] for u in ci["unexecuted"]} <= {u["line"] for u in five["unexecuted"]}


def test_ci_runs_every_suite_the_record_counts():
    # the figure is only the CI's if CI runs each of those suites, strict
    from vblk_ci.scenarios import SUITES

    workflow = (REPO / "ci" / "github" / "vblk-ci.yml").read_text()
    for suite in _record()["ci_suites"]["runs"]:
        assert suite in SUITES and re.search(rf"run --suite {suite} --strict", workflow), suite


def test_every_unexecuted_line_is_explained_and_nothing_else():
    full = _record()["ci_suites"]
    rows = _documented()
    assert set(rows) == {u["line"] for u in full["unexecuted"]}
    for u in full["unexecuted"]:
        function, why = rows[u["line"]]
        assert function == u["function"], u
        assert len(why) >= 5, u


def test_the_documented_figures_are_the_recorded_ones():
    rec = _record()
    text = DOC.read_text()
    for key in ("ci_suites", "without_inject"):
        r = rec[key]
        assert f"{r['executed']} / {r['executable']} = {100 * r['executed'] / r['executable']:.1f} %" in text
