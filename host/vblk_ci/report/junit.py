"""junit.xml: one testsuite for the run itself (boot, console), one per scenario."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from ..events import CONFIG_MISMATCH, ERROR, FAIL, PASS
from ..result import SKIP, CheckResult, RunResult

RUN_SUITE = "vblk-ci"


def _case(suite: ET.Element, classname: str, name: str, status: str, seconds: float,
          message: str = "", body: str = "") -> None:
    case = ET.SubElement(suite, "testcase", classname=classname, name=name, time=f"{seconds:.3f}")
    first = message.splitlines()[0] if message else ""
    if status == FAIL:
        ET.SubElement(case, "failure", message=first, type="failure").text = body or message
    elif status == ERROR:
        ET.SubElement(case, "error", message=first, type="error").text = body or message
    elif status == SKIP:
        ET.SubElement(case, "skipped", message=first)
    elif status == CONFIG_MISMATCH:  # not a driver failure, but not a pass either
        ET.SubElement(case, "error", message=first, type="config-mismatch").text = body or message


def _check_body(check: CheckResult) -> str:
    parts = [check.detail] if check.detail else []
    if check.data:
        parts.append(json.dumps(check.data, indent=2, default=str))
    return "\n\n".join(parts)


def _finish(suite: ET.Element) -> None:
    cases = suite.findall("testcase")
    suite.set("tests", str(len(cases)))
    for tag, attr in (("failure", "failures"), ("error", "errors"), ("skipped", "skipped")):
        suite.set(attr, str(sum(1 for c in cases if c.find(tag) is not None)))
    suite.set("time", f"{sum(float(c.get('time', 0)) for c in cases):.3f}")


def to_junit(result: RunResult) -> ET.Element:
    root = ET.Element("testsuites", name="vblk-ci")
    run = ET.SubElement(root, "testsuite", name=RUN_SUITE)
    booted = result.agent_seconds is not None
    _case(run, RUN_SUITE, "boot", PASS if booted else (result.status if result.status in (FAIL, ERROR) else ERROR),
          result.agent_seconds or 0.0, "" if booted else result.reason)
    if result.findings:
        body = "\n\n".join(f"{f.title}\n{f.excerpt}" for f in result.findings)
        _case(run, RUN_SUITE, "console", FAIL, 0.0, "; ".join(f.title for f in result.findings), body)
    elif booted:
        _case(run, RUN_SUITE, "console", PASS, 0.0)
    _finish(run)
    for scenario in result.scenarios:
        suite = ET.SubElement(root, "testsuite", name=scenario.name)
        if scenario.status == SKIP and not scenario.checks:
            _case(suite, scenario.name, scenario.name, SKIP, 0.0, "; ".join(scenario.skip_reasons))
        for check in scenario.checks:
            _case(suite, scenario.name, check.name, check.status, check.seconds, check.detail, _check_body(check))
        _finish(suite)
    _finish_root(root)
    return root


def _finish_root(root: ET.Element) -> None:
    suites = root.findall("testsuite")
    for attr in ("tests", "failures", "errors", "skipped"):
        root.set(attr, str(sum(int(s.get(attr, 0)) for s in suites)))
    root.set("time", f"{sum(float(s.get('time', 0)) for s in suites):.3f}")


def to_junit_xml(result: RunResult) -> str:
    root = to_junit(result)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(result: RunResult, path: Path) -> Path:
    path = Path(path)
    path.write_text(to_junit_xml(result), encoding="utf-8")
    return path
