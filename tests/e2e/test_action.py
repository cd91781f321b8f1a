"""The GitHub Action's scripts (ci/action/*.sh), run here as its steps run them: against the
real image, with GITHUB_OUTPUT / GITHUB_STEP_SUMMARY files standing in for the runner's."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ACTION = ROOT / "ci" / "action"


def step(script: str, tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    outputs = tmp_path / f"{script}.out"
    outputs.write_text("")
    proc = subprocess.run([str(ACTION / script)], capture_output=True, text=True, timeout=1800, cwd=tmp_path,
                          env={**os.environ, "GITHUB_OUTPUT": str(outputs),
                               "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md"), **env})
    values = dict(line.split("=", 1) for line in outputs.read_text().splitlines() if "=" in line)
    return proc, values


def test_kvm_step_opens_dev_kvm_or_warns(tmp_path):
    proc, _ = step("kvm.sh", tmp_path, VBLK_DRY_RUN="1")
    assert proc.returncode == 0, proc.stderr
    if Path("/dev/kvm").exists():
        assert "99-vblk-ci-kvm.rules" in proc.stdout and "+ sudo udevadm trigger --name-match=kvm" in proc.stdout
    else:
        assert proc.stdout.startswith("::warning title=vblk-ci::no /dev/kvm")


def test_cache_key_follows_base_config_and_tree(tmp_path):
    _, a = step("cache-key.sh", tmp_path, VBLK_BASE="7.3", VBLK_TREE="linux")
    _, b = step("cache-key.sh", tmp_path, VBLK_BASE="6.12", VBLK_TREE="linux")
    _, c = step("cache-key.sh", tmp_path, VBLK_BASE="7.3", VBLK_TREE="other")
    assert a["key"].startswith(a["restore-prefix"]) and a["restore-prefix"].startswith("vblk-ci-kernel-7.3-cfg")
    assert len({a["restore-prefix"], b["restore-prefix"], c["restore-prefix"]}) == 3


def test_build_step_takes_a_given_image_and_refuses_a_missing_one_or_series(tmp_path, image):
    proc, out = step("build-image.sh", tmp_path, VBLK_IMAGE=image)
    assert proc.returncode == 0 and out == {"image": image}
    proc, out = step("build-image.sh", tmp_path, VBLK_IMAGE="vblk-ci:no-such-tag")
    assert proc.returncode == 2 and "::error title=vblk-ci::no image vblk-ci:no-such-tag" in proc.stdout
    proc, _ = step("build-image.sh", tmp_path, VBLK_SERIES=str(tmp_path))
    assert proc.returncode == 2 and "has no series file" in proc.stdout


def test_run_step_runs_a_suite_writes_outputs_and_gates_on_a_baseline(tmp_path, image):
    proc, out = step("run-suites.sh", tmp_path, VBLK_IMAGE=image, VBLK_SUITES="smoke", VBLK_OUT="first",
                     VBLK_ARGS="--accel tcg")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert out == {"verdict": "pass", "out-dir": str(tmp_path / "first")}
    assert json.loads((tmp_path / "first" / "smoke" / "results.json").read_text())["status"] == "pass"
    assert "smoke" in (tmp_path / "summary.md").read_text()
    # Against itself as the baseline: compared, nothing regressed.
    proc, out = step("run-suites.sh", tmp_path, VBLK_IMAGE=image, VBLK_SUITES="smoke", VBLK_OUT="second",
                     VBLK_ARGS="--accel tcg", VBLK_BASELINE=str(tmp_path / "first"))
    assert proc.returncode == 0 and out["verdict"] == "pass", proc.stdout[-3000:]
    cmp = json.loads((tmp_path / "second" / "smoke" / "compare.json").read_text())
    assert cmp["regressions"] == []
    # A suite that must fail: verdict fail, exit non-zero, the step's outputs still written.
    proc, out = step("run-suites.sh", tmp_path, VBLK_IMAGE=image, VBLK_SUITES="meta-fail", VBLK_OUT="third",
                     VBLK_ARGS="--accel tcg")
    assert proc.returncode == 1 and out["verdict"] == "fail"


@pytest.fixture(scope="module")
def image():
    name = os.environ.get("VBLK_CI_IMAGE")
    if not name:
        pytest.skip("set VBLK_CI_IMAGE (tests/run does): the action's steps run the appliance image")
    return name
