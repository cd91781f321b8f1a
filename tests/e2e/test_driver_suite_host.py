"""End to end on the host's QEMU: the whole ``driver`` suite against the real kernel,
the default variant and the debug variant (KASAN, KFENCE, lockdep, debug objects,
slub debug), where any report on the console fails the run.

Artifacts come from VBLK_CI_KERNEL / VBLK_CI_KERNEL_DEBUG / VBLK_CI_INITRAMFS or
out of VBLK_CI_IMAGE (conftest.py); skipped with the reason otherwise.
VBLK_CI_ACCEL=tcg forces TCG. Run: pytest -m e2e tests/e2e/test_driver_suite_host.py
"""

from __future__ import annotations

import json
import warnings
import xml.etree.ElementTree as ET

import pytest

from vblk_ci import events as E
from vblk_ci.console.stalls import idle_timer_stall
from vblk_ci.scenarios import SUITES

pytestmark = pytest.mark.e2e

# Exactly this many checks per scenario (not a floor): a check that silently stops
# running changes the count. Seen on the default kernel, host QEMU 7.2, 2026-11-30.
CHECKS_PER_SCENARIO = {"driver-ops": 15, "driver-refusals": 14, "driver-permissions": 9, "driver-iopoll": 19,
                       "driver-unplug": 21, "driver-soak": 3}


@pytest.fixture(scope="module", params=["default", "debug"])
def driver_run(request, run_suite):
    result, recorder, run_dir = run_suite("driver", request.param)
    if result.findings and all(idle_timer_stall(f) for f in result.findings):
        # The one stall that is not a verdict on the driver (console/stalls.py): the kernel
        # says a timer of an idle CPU never fired, and no I/O frame is in the report. Seen
        # once under TCG on a loaded host; not hidden: a warning naming the failed run and its
        # bundle, one more run, and a second occurrence fails.
        warnings.warn(pytest.PytestWarning(
            f"{request.param}: guest timer stall, running the suite once more; first run and its "
            f"repro bundle: {run_dir}\n{result.findings[0].title}"))
        result, recorder, run_dir = run_suite("driver", request.param)
    return result, recorder, run_dir


def _summary(result) -> str:
    return "\n".join(f"  {c.full_name}: {c.status} {c.detail.splitlines()[0] if c.detail else ''}"
                     for c in result.checks() if c.status != "pass")


def test_every_scenario_ran_without_infrastructure_errors(driver_run):
    result, _, run_dir = driver_run
    assert result.status in ("pass", "fail"), f"{result.status}: {result.reason}\n(run dir {run_dir})"
    assert result.boot_seconds is not None, result.reason
    assert [s.name for s in result.scenarios] == list(SUITES["driver"])
    assert all(s.status in ("pass", "fail") for s in result.scenarios), [(s.name, s.skip_reasons)
                                                                          for s in result.scenarios]
    statuses = [c.status for c in result.checks()]
    assert "error" not in statuses, _summary(result)
    assert {s.name: len(s.checks) for s in result.scenarios} == CHECKS_PER_SCENARIO
    assert not result.findings, [f"{f.title}\n{f.excerpt}" for f in result.findings]


def test_run_dir_and_events(driver_run):
    result, recorder, run_dir = driver_run
    for name in ("console.log", "qmp.jsonl", "agent.log", "events.jsonl", "results.json", "junit.xml"):
        assert (run_dir / name).is_file(), name
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["status"] == result.status and saved["suite"] == "driver"
    ET.parse(run_dir / "junit.xml")
    plugged, unplugged = recorder.of(E.DiskPlugged), recorder.of(E.DiskUnplugged)
    assert len(plugged) >= 10 and len(unplugged) == len(plugged), (len(plugged), len(unplugged))
    agent_log = (run_dir / "agent.log").read_text()
    for method in ("spawn", "signal_job", "wait_job"):
        assert f'"method":"{method}"' in agent_log
    qmp = (run_dir / "qmp.jsonl").read_text()
    assert '"x-query-virtio-queue-status"' in qmp and '"write-zeroes": false' in qmp


def test_every_check_passes(driver_run):
    result, _, run_dir = driver_run
    assert result.status == "pass" and result.exit_code == 0, f"run dir {run_dir}:\n{_summary(result)}"
