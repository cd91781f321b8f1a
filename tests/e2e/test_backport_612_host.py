"""End to end on the host's QEMU: the 6.12 LTS backport (driver/6.12/) runs the smoke
suite and the driver suite, strict, with the same checks as the 7.3 series.

The kernel and initramfs come out of VBLK_CI_IMAGE_612, which ./tests/run builds as
vblk-ci:test-6.12 (target ``appliance``, build argument KERNEL_BASE=6.12: Debian's
linux-source-6.12 + driver/6.12/series); skipped with the reason when it is not set.

One more smoke run goes through ``docker run`` of that image, so the backport is seen on
both QEMUs: the host's (Debian bookworm: 7.2) and the image's (trixie: 10.0).

The backport's one documented difference (driver/6.12/0000-cover-letter.patch): a
registered buffer with an iovec array is refused with -EINVAL on 6.12, where 7.3
imports it. driver-ops' fixed-buffers-iovec check expects each by the guest's kernel
release, so the check counts are the 7.3 ones, exactly.

Run: VBLK_CI_IMAGE_612=vblk-ci:test-6.12 pytest tests/e2e/test_backport_612_host.py
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import pytest
from test_driver_suite_host import CHECKS_PER_SCENARIO  # the 7.3 counts: the backport runs the same checks
from test_image import _run as docker_run  # the image as users run it, through the Docker engine

from vblk_ci import events as E
from vblk_ci.console.stalls import idle_timer_stall
from vblk_ci.runner import Plan, run
from vblk_ci.scenarios import SUITES

pytestmark = pytest.mark.e2e

SERIES_DIR = Path(__file__).resolve().parents[2] / "driver" / "6.12"
SMOKE_CHECKS = 7  # as tests/e2e/test_smoke_host.py on the 7.3 kernel


def _run(appliance_612, tmp_path_factory, suite: str):
    run_dir = tmp_path_factory.mktemp(f"612-{suite}")
    recorder = E.Recorder()
    result = run(Plan(kernel=appliance_612["kernel"], initramfs=appliance_612["initramfs"], run_dir=run_dir,
                      suite=suite, strict=True), recorder)
    return result, run_dir


def _summary(result) -> str:
    return "\n".join(f"  {c.full_name}: {c.status} {c.detail.splitlines()[0] if c.detail else ''}"
                     for c in result.checks() if c.status != "pass")


def _release(run_dir: Path) -> str:
    """The guest's ``Linux version X`` from the console: the kernel that really booted."""
    for line in (run_dir / "console.log").read_text(errors="replace").splitlines():
        if "Linux version " in line:
            return line.split("Linux version ", 1)[1].split()[0]
    return ""


@pytest.fixture(scope="module")
def manifest(appliance_612) -> dict:
    return json.loads(appliance_612["kernel_manifest"].read_text())


@pytest.fixture(scope="module")
def smoke_612(appliance_612, tmp_path_factory):
    return _run(appliance_612, tmp_path_factory, "smoke")


@pytest.fixture(scope="module")
def driver_612(appliance_612, tmp_path_factory):
    result, run_dir = _run(appliance_612, tmp_path_factory, "driver")
    if result.findings and all(idle_timer_stall(f) for f in result.findings):
        # As in test_driver_suite_host.py: the idle-CPU timer stall TCG shows on a loaded
        # host is not a verdict on the driver; one more run, named, and a second one fails.
        warnings.warn(pytest.PytestWarning(f"6.12: guest timer stall, running the driver suite once more; "
                                           f"first run: {run_dir}\n{result.findings[0].title}"))
        result, run_dir = _run(appliance_612, tmp_path_factory, "driver")
    return result, run_dir


def test_image_kernel_is_this_checkouts_backport(manifest):
    """The image's kernel is 6.12 with exactly driver/6.12/series, patch by patch."""
    assert manifest.get("kernel_base") == "6.12" and manifest["kernel_release"].startswith("6.12."), manifest
    names = (SERIES_DIR / "series").read_text().split()
    want = [{"name": n, "sha256": hashlib.sha256((SERIES_DIR / n).read_bytes()).hexdigest()} for n in names]
    assert manifest["series"] == want, "the image was built from another driver/6.12/ than this checkout's"


def test_smoke_passes_on_612(smoke_612, manifest):
    result, run_dir = smoke_612
    assert _release(run_dir) == manifest["kernel_release"], f"booted {_release(run_dir)!r} (run dir {run_dir})"
    assert result.status == "pass" and result.exit_code == 0, f"{result.reason}\n{_summary(result)}\n({run_dir})"
    assert [c.status for c in result.checks()] == ["pass"] * SMOKE_CHECKS
    assert not result.findings, [f.title for f in result.findings]


def test_driver_suite_passes_on_612_with_the_73_checks(driver_612, manifest):
    result, run_dir = driver_612
    assert _release(run_dir) == manifest["kernel_release"], f"booted {_release(run_dir)!r} (run dir {run_dir})"
    assert result.status in ("pass", "fail"), f"{result.status}: {result.reason}\n(run dir {run_dir})"
    assert [s.name for s in result.scenarios] == list(SUITES["driver"])
    assert {s.name: len(s.checks) for s in result.scenarios} == CHECKS_PER_SCENARIO, (
        [(s.name, s.skip_reasons) for s in result.scenarios if s.skip_reasons])
    assert not result.findings, [f"{f.title}\n{f.excerpt}" for f in result.findings]
    assert result.status == "pass" and result.exit_code == 0, f"run dir {run_dir}:\n{_summary(result)}"


def test_smoke_passes_in_the_612_image_on_its_qemu(appliance_612, manifest, smoke_612, tmp_path):
    """``docker run IMAGE run --suite smoke --strict``: the image's own QEMU (10.0) boots the 6.12 kernel."""
    code, logs = docker_run(os.environ["VBLK_CI_IMAGE_612"], tmp_path,
                            ["run", "--suite", "smoke", "--strict", "--out", "/out"])
    assert code == 0, logs
    results = json.loads(next(tmp_path.rglob("results.json")).read_text())
    assert results["status"] == "pass", results.get("reason")
    host_qemu = smoke_612[0].qemu_version
    assert results["qemu_version"] and results["qemu_version"] != host_qemu, (results["qemu_version"], host_qemu)
    assert [c["status"] for s in results["scenarios"] for c in s["checks"]] == ["pass"] * SMOKE_CHECKS
    assert _release(next(tmp_path.rglob("console.log")).parent) == manifest["kernel_release"]
