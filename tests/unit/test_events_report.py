"""Reporters from a synthetic RunResult and event stream: JSON, JUnit, Markdown, terminal."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET

import pytest

from vblk_ci import events as E
from vblk_ci.report.json_report import to_json, write_json
from vblk_ci.report.junit import to_junit_xml, write_junit
from vblk_ci.report.summary import append_step_summary, to_markdown
from vblk_ci.report.terminal import TerminalReporter
from vblk_ci.result import CheckResult, FindingRecord, RunResult, ScenarioResult


def make_result(**changes) -> RunResult:
    checks = [
        CheckResult("smoke", "hotplug", "pass", "", 0.4, {"disk": {"name": "vda", "chardev": "/dev/vdac0"}}),
        CheckResult("smoke", "passthru-write-verify", "fail", "verify: 3 mismatched words, first {...}\nmore", 1.5,
                    {"verify": {"mismatches": 3}}),
        CheckResult("smoke", "unplug", "skip", "not run: hotplug failed"),
        CheckResult("smoke", "block | pipe", "error", "QMP device_del: Timeout: no reply", 20.0),
    ]
    base = dict(
        status="fail", reason="1 check(s) failed, first smoke/passthru-write-verify: verify: 3 mismatched words",
        suite="smoke", run_dir="/runs/r1", started_at="2026-11-26T12:00:00+00:00", seconds=12.5, accel="tcg",
        accel_reason="forced", qemu="/usr/bin/qemu-system-x86_64", qemu_version="7.2.22", kernel="/k/bzImage",
        initramfs="/k/initrd", boot_seconds=3.2, agent_seconds=4.1, qemu_exitcode=0,
        scenarios=[ScenarioResult("smoke", "one disk", "fail", [], checks),
                   ScenarioResult("poll", "polled queues", "skip", ["needs 2 vCPUs"], [])],
        findings=[],
        timings={"hotplug_visible_s": [0.07], "unplug_deleted_s": []},
    )
    base.update(changes)
    return RunResult(**base)


@pytest.mark.parametrize("status, code", [("pass", 0), ("fail", 1), ("error", 125), ("config-mismatch", 4)])
def test_exit_codes(status, code):
    assert make_result(status=status).exit_code == code


def test_json_roundtrip(tmp_path):
    result = make_result()
    data = json.loads(to_json(result))
    assert data["schema"] == "vblk-ci/run-result/1"
    assert data["status"] == "fail"
    assert data["counts"] == {"pass": 1, "fail": 1, "error": 1, "skip": 1}
    assert data["scenarios"][0]["checks"][1]["data"] == {"verify": {"mismatches": 3}}
    assert data["timings"]["hotplug_visible_s"] == [0.07]
    path = write_json(result, tmp_path / "results.json")
    assert json.loads(path.read_text()) == data


def test_junit_structure(tmp_path):
    root = ET.fromstring(to_junit_xml(make_result()).split("\n", 1)[1])
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors"), root.get("skipped")) == ("7", "1", "1", "2")
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert list(suites) == ["vblk-ci", "smoke", "poll"]
    run_cases = {c.get("name"): c for c in suites["vblk-ci"].findall("testcase")}
    assert run_cases["boot"].find("failure") is None and run_cases["boot"].get("time") == "4.100"
    assert run_cases["console"].find("failure") is None
    smoke = {c.get("name"): c for c in suites["smoke"].findall("testcase")}
    failure = smoke["passthru-write-verify"].find("failure")
    assert failure.get("message") == "verify: 3 mismatched words, first {...}"
    assert '"mismatches": 3' in failure.text
    assert smoke["unplug"].find("skipped").get("message") == "not run: hotplug failed"
    assert smoke["block | pipe"].find("error") is not None
    assert suites["poll"].find("testcase/skipped").get("message") == "needs 2 vCPUs"
    assert write_junit(make_result(), tmp_path / "junit.xml").read_text().startswith("<?xml")


def test_junit_boot_failure_and_console_finding():
    result = make_result(status="fail", reason="QEMU exited (1) before the guest agent answered", scenarios=[],
                         agent_seconds=None, findings=[FindingRecord("panic", "Kernel panic: x", "Kernel panic - x")])
    root = ET.fromstring(to_junit_xml(result).split("\n", 1)[1])
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert cases["boot"].find("failure").get("message").startswith("QEMU exited (1)")
    assert cases["console"].find("failure").text == "Kernel panic: x\nKernel panic - x"


def test_junit_infra_error_before_boot_is_an_error():
    result = make_result(status="error", reason="QEMU exited during start-up", scenarios=[], agent_seconds=None)
    root = ET.fromstring(to_junit_xml(result).split("\n", 1)[1])
    assert root.find("testsuite/testcase[@name='boot']/error") is not None


def test_markdown_summary(tmp_path):
    md = to_markdown(make_result(findings=[FindingRecord("warning", "WARNING in f", "WARNING: CPU: 0 ...")]))
    assert md.startswith("## vblk-ci smoke: ❌ FAIL\n")
    assert "| `smoke/passthru-write-verify` | ❌ fail | 1.50s | verify: 3 mismatched words, first {...} |" in md
    assert "| `smoke/block \\| pipe` |" in md
    assert "Scenario `poll` skipped: needs 2 vCPUs" in md
    assert "<details><summary>Console: WARNING in f</summary>" in md
    target = tmp_path / "summary.md"
    target.write_text("earlier step\n")
    assert append_step_summary(make_result(), {"GITHUB_STEP_SUMMARY": str(target)}) == target
    assert target.read_text().startswith("earlier step\n## vblk-ci smoke")
    assert append_step_summary(make_result(), {}) is None


# -- events and the terminal reporter -------------------------------------------------------

STREAM = [
    E.RunStart("/runs/r1", "smoke"),
    E.BootStart("tcg"),
    E.BootEnd(3.21, "tcg"),
    E.AgentReady(4.5),
    E.ScenarioStart("smoke", "one disk"),
    E.CheckStart("smoke/hotplug"),
    E.DiskPlugged("smoke0", "vblk-smoke0", 0.07, "vda", "/dev/vdac0"),
    E.CheckEnd("smoke/hotplug", True, "", 0.08),
    E.CheckStart("smoke/passthru-write-verify"),
    E.CheckEnd("smoke/passthru-write-verify", False, "verify: 3 mismatched words", 1.5),
    E.ConsoleFinding("WARNING in f", "..."),
    E.DiskUnplugged("smoke0", 0.15),
    E.ScenarioSkipped("poll", ("needs 2 vCPUs",)),
    E.Verdict("fail", "1 check(s) failed\nsecond line"),
]

CI_LINES = [
    "vblk-ci smoke: run dir /runs/r1",
    "  ok   boot (tcg) 3.2s",
    "  ok   agent ready 4.5s",
    "  ok   plugged smoke0 -> vda (/dev/vdac0) 0.07s",
    "  ok   smoke/hotplug 0.08s",
    "  FAIL smoke/passthru-write-verify 1.50s: verify: 3 mismatched words",
    "  !!   console: WARNING in f",
    "  ok   unplugged smoke0 0.15s",
    "  skip poll: needs 2 vCPUs",
    "verdict: FAIL (1 check(s) failed)",
]


def test_terminal_ci_mode_one_line_per_step():
    out = io.StringIO()
    report = TerminalReporter(out, tty=False)
    for event in STREAM:
        report(event)
    assert out.getvalue().splitlines() == CI_LINES
    assert "\r" not in out.getvalue()


def test_terminal_tty_rewrites_the_step_line():
    out = io.StringIO()
    report = TerminalReporter(out, tty=True)
    for event in STREAM[:3]:
        report(event)
    assert out.getvalue() == "vblk-ci smoke: run dir /runs/r1\n  ..   boot (tcg)\r\033[K  ok   boot (tcg) 3.2s\n"


def test_tty_redraws_the_running_step_after_an_interleaved_line():
    out = io.StringIO()
    report = TerminalReporter(out, tty=True)
    for event in STREAM[5:8]:  # CheckStart, DiskPlugged, CheckEnd
        report(event)
    assert out.getvalue() == (
        "  ..   smoke/hotplug\r\033[K  ok   plugged smoke0 -> vda (/dev/vdac0) 0.07s\n"
        "  ..   smoke/hotplug\r\033[K  ok   smoke/hotplug 0.08s\n")


def test_tty_close_ends_a_dangling_step_line():
    out = io.StringIO()
    report = TerminalReporter(out, tty=True)
    report(E.BootStart("tcg"))
    report.close()
    report.close()
    assert out.getvalue() == "  ..   boot (tcg)\n"


def test_tty_final_screen_matches_ci_lines():
    out = io.StringIO()
    report = TerminalReporter(out, tty=True)
    for event in STREAM:
        report(event)
    screen = [line.split("\r\033[K")[-1] for line in out.getvalue().split("\n") if line]
    assert screen == CI_LINES


def test_events_are_typed_and_recordable():
    rec = E.Recorder()
    sink = E.fan_out(rec, E.discard)
    for event in STREAM:
        sink(event)
    assert [e.name for e in rec.of(E.CheckEnd)] == ["smoke/hotplug", "smoke/passthru-write-verify"]
    assert rec.of(E.Verdict)[0].status in E.VERDICT_STATUSES
    assert E.BootEnd(1.0, "tcg") == E.BootEnd(1.0, "tcg")  # timestamps do not affect equality
    with pytest.raises(Exception):
        STREAM[2].seconds = 9  # frozen
