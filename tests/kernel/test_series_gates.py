"""The driver series against the pinned base: git am, checkpatch --strict, sparse,
W=1 with virtio_blk built in and as a module. A meta series proves the gates fail.

Needs Debian's linux-source-6.12 tarball, perl, sparse and a kernel toolchain;
skipped with the reason otherwise. About 2 minutes cold, 40 s warm.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from vblk_ci.build.kernel import DEFAULT_TARBALL, KernelBuildOptions
from vblk_ci.build.quality import check_series

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def cache_dir() -> str:
    missing = [t for t in ("sparse", "perl", "make", "gcc", "flex", "bison", "bc") if not shutil.which(t)]
    if not Path(DEFAULT_TARBALL).is_file():
        missing.append(DEFAULT_TARBALL)
    if missing:
        pytest.skip("kernel toolchain incomplete: missing " + ", ".join(missing))
    return os.environ.get("VBLK_CI_CACHE") or str(Path.home() / ".cache" / "vblk-ci")


def test_series_passes_every_gate(cache_dir):
    report = check_series(KernelBuildOptions(cache_dir=cache_dir, series_dir=str(REPO / "driver")))
    assert report.applies
    assert len(report.patches) == len((REPO / "driver" / "series").read_text().split())
    assert report.checkpatch_total == {"errors": 0, "warnings": 0, "checks": 0}, [
        p.output for p in report.patches if p.output]
    assert report.sparse == []
    assert report.w1 == []
    assert report.module_w1 == []


def test_gates_catch_a_bad_patch(cache_dir):
    report = check_series(KernelBuildOptions(cache_dir=cache_dir, series_dir=str(REPO / "tests/data/bad-series")))
    assert report.checkpatch_total["errors"] >= 2
    assert any("vblk_meta_unused" in w for w in report.w1)
    assert any("vblk_meta_unused" in w for w in report.module_w1)
    assert not report.clean
