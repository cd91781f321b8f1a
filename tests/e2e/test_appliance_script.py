"""The README's first command, `sudo ./appliance`, run as a user runs it (against the
image tests/run built, so it does not build again): its default is the smoke suite with
results in --out; a bad option or a missing image is one line and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def _appliance(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([str(ROOT / "appliance"), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def root():
    if os.geteuid() != 0:
        pytest.skip("./appliance needs root (apt-get, dockerd, docker run)")


def test_default_run_is_the_smoke_suite_with_results_in_out(root, image, tmp_path):
    proc = _appliance("--no-build", "--image", image, "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(next(tmp_path.rglob("results.json")).read_text())
    assert results["suite"] == "smoke" and results["status"] == "pass"
    # Progress a person can follow: each set-up step is one tagged line with elapsed seconds.
    assert "[appliance" in proc.stdout and "appliance exited 0" in proc.stdout


def test_a_relative_out_dir_works(root, image, tmp_path):
    # docker -v takes a relative path for a volume name: the script makes it absolute.
    out = tmp_path.relative_to(ROOT) if tmp_path.is_relative_to(ROOT) else Path("out/e2e-relative")
    proc = _appliance("--no-build", "--image", image, "--out", str(out), "--", "version")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_bad_option_is_one_line_and_exit_2(root):
    proc = _appliance("--no-such-option")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["appliance: unknown option --no-such-option (see --help)"]


def test_no_build_without_the_image_is_exit_2(root, image):
    proc = _appliance("--no-build", "--image", "vblk-ci:no-such-tag")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "appliance: --no-build, but there is no image vblk-ci:no-such-tag"
