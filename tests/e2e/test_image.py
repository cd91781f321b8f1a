"""The image as users run it: `docker run --rm -v out:/out vblk-ci`, through the
real Docker engine (docker SDK), QEMU 10 inside, TCG unless /dev/kvm really works.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def _run(image: str, out: Path, command: list[str] | None = None, env: dict | None = None):
    import docker

    client = docker.from_env()
    container = client.containers.run(
        image, command, detach=True, network_mode="none",
        volumes={str(out): {"bind": "/out", "mode": "rw"}}, environment=env or {},
    )
    try:
        status = container.wait(timeout=900)
        logs = container.logs(stdout=True, stderr=True).decode(errors="replace")
    finally:
        container.remove(force=True)
    return status["StatusCode"], logs


@pytest.fixture(scope="module")
def default_run(image, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    code, logs = _run(image, out, env={"GITHUB_STEP_SUMMARY": "/out/summary.md"})
    return code, logs, out


def test_default_command_runs_the_smoke_suite_and_passes(default_run):
    code, logs, out = default_run
    assert code == 0, logs
    results = json.loads(next(out.rglob("results.json")).read_text())
    assert results["status"] == "pass"
    checks = [c for s in results["scenarios"] for c in s["checks"]]
    assert len(checks) == 7 and {c["status"] for c in checks} == {"pass"}


def test_results_are_left_in_the_mounted_out_dir(default_run):
    _, logs, out = default_run
    junit = ET.parse(next(out.rglob("junit.xml"))).getroot()
    suites = [junit] if junit.tag == "testsuite" else list(junit)
    assert sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites) == 0
    assert next(out.rglob("console.log")).stat().st_size > 0
    summary = (out / "summary.md").read_text()
    assert "smoke" in summary and "pass" in summary.lower()
    # Not a TTY in CI: one line per step, no carriage-return progress.
    assert "\r" not in logs


def test_bad_usage_is_one_line_and_exit_2(image, tmp_path):
    code, logs = _run(image, tmp_path, ["run", "--suite", "no-such-suite", "--out", "/out"])
    assert code == 2, logs
    lines = [line for line in logs.splitlines() if line.strip()]
    assert len(lines) == 1 and "no-such-suite" in lines[0]
