"""Matrix bookkeeping without a VM: grouping by vCPUs, the config-mismatch verdict and exit
code, the Markdown table, and the hotplug-cycles parameter."""

from __future__ import annotations

from pathlib import Path

import pytest

from vblk_ci import events as E
from vblk_ci.errors import UsageError
from vblk_ci.matrix.report import to_markdown
from vblk_ci.matrix.run import _by_vcpus, _fold_mismatch, selected
from vblk_ci.matrix.schema import load_matrix
from vblk_ci.result import CheckResult, RunResult, ScenarioResult
from vblk_ci.scenarios import SUITES, get
from vblk_ci.scenarios.hotplug_cycles import ENV_CYCLES, cycles_from_env, median_or_none

DEFAULT = Path(__file__).resolve().parents[2] / "ci" / "matrix-default.toml"


def test_combinations_grouped_by_vcpus_one_boot_each(tmp_path):
    m = load_matrix(DEFAULT, tmp_path)
    groups = _by_vcpus(selected(m, None))
    assert sorted(groups) == [2, 4]
    assert [c.name for c in groups[4]] == ["q4-vcpu4-poll1/qd1"]
    assert [c.name for c in selected(m, "q4 and not vcpu4")] == ["q4-capped/qd1", "q4-poll1-4k/qd1"]


def _result(*statuses: str) -> RunResult:
    checks = [CheckResult("q1/qd1", f"c{i}", s, "disk q1: num_queues: ..." if s == E.CONFIG_MISMATCH else "")
              for i, s in enumerate(statuses)]
    return RunResult(status=E.PASS, scenarios=[ScenarioResult("q1/qd1", checks=checks)])


def test_config_mismatch_is_its_own_verdict_and_exit_code():
    r = _result(E.PASS, E.CONFIG_MISMATCH)
    _fold_mismatch(r)
    assert r.status == E.CONFIG_MISMATCH and r.exit_code == 4
    assert r.reason.startswith("CONFIG_MISMATCH in 1 combination(s), first q1/qd1: disk q1: num_queues")


def test_a_failure_outranks_a_mismatch():
    r = _result(E.CONFIG_MISMATCH)
    r.status = E.FAIL
    _fold_mismatch(r)
    assert r.status == E.FAIL


def test_markdown_table_has_one_row_per_disk_and_the_iops():
    disk = {"id": "q1", "backend": "null", "num_queues": 1, "queue_size": 256, "poll_queues": 0, "iothread": "none",
            "aio": "threads", "cache": "writeback", "lbs": 512, "pbs": 512, "vq_mapping": False}
    r = RunResult(status=E.PASS, qemu_version="7.2.22", accel="tcg")
    r.timings["matrix"] = {"name": "t", "file": "m.toml", "wall_s": 12.5, "boots": [], "combinations": [
        {"name": "q1/qd1", "vcpus": 2, "disks": [disk], "status": "pass", "seconds": 5.0,
         "iops": {"q1": {"passthru-read": 1500.4, "passthru-write": 1400.0, "block-read": 1300.0}}},
        {"name": "g/qd1", "vcpus": 2, "disks": [disk, {**disk, "id": "q2"}], "status": "config-mismatch",
         "seconds": 1.0, "mismatch": "disk q2: num_queues: spec 2"},
    ]}
    md = to_markdown(r)
    assert "wall time 12.5s; 2 combination(s)" in md
    assert "| q1/qd1 | 2 | q1 | null q1 poll0 iot:none aio:threads cache:writeback 512/512 | pass | 5.0 | 1500 | 1400 | 1300 | - |" in md
    assert "| ↳ |  | q2 |" in md
    assert "- `g/qd1` CONFIG_MISMATCH: disk q2: num_queues: spec 2" in md


def test_hotplug_cycles_parameter(monkeypatch):
    monkeypatch.delenv(ENV_CYCLES, raising=False)
    assert cycles_from_env() == 50
    monkeypatch.setenv(ENV_CYCLES, "7")
    assert cycles_from_env() == 7
    for bad in ("x", "0"):
        monkeypatch.setenv(ENV_CYCLES, bad)
        with pytest.raises(UsageError, match=ENV_CYCLES):
            cycles_from_env()
    assert median_or_none([3.0, 1.0, 2.0]) == 2.0 and median_or_none([]) is None


def test_hotplug_suite_registered():
    assert SUITES["hotplug"] == ("hotplug-cycles",)
    assert get("hotplug-cycles").description


def test_junit_reports_a_config_mismatch_as_an_error_of_its_own_type(tmp_path):
    import xml.etree.ElementTree as ET

    from vblk_ci.report.junit import write_junit

    r = _result(E.PASS, E.CONFIG_MISMATCH)
    _fold_mismatch(r)
    write_junit(r, tmp_path / "junit.xml")
    errors = ET.parse(tmp_path / "junit.xml").getroot().iter("error")
    assert [e.get("type") for e in errors if e.get("type") == "config-mismatch"] == ["config-mismatch"]
