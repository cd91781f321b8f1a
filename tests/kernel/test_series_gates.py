"""The driver series on each base (7.3 with driver/, 6.12 with driver/6.12/): git am,
checkpatch --strict, sparse, W=1 with virtio_blk built in and as a module, and the
module links (modpost, virtio_blk.ko written). Meta series, each stacked on the base's
series, prove each gate fails.

Each base runs in the image's ``gates`` stage built for it when docker can (its trees and
objects in a volume), else on the host when it has the base's tarball and the tools
(vblk_ci.gates); skipped with the reason when neither can, or when VBLK_CI_GATES_BASES
(space-separated, default every base) leaves the base out. In docker the link check reads
the image's kept vmlinux.o (build/exports.py): the meta series touch only the module's
source, so no run here compiles a whole kernel. Cold, per base: extract the tree, prepare
two objects dirs, compile the driver a few times.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vblk_ci.build import BuildError
from vblk_ci.build.bases import BASES
from vblk_ci.gates import host_missing, place, run_gates

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.kernel


def _docker_usable() -> str:
    """Empty when docker can run the gates image, else why not."""
    if shutil.which("docker") is None:
        return "no docker CLI"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "docker daemon not reachable"
    return ""


@pytest.fixture(scope="module", params=sorted(BASES), ids=lambda b: f"base-{b}")
def base(request) -> str:
    b = request.param
    wanted = os.environ.get("VBLK_CI_GATES_BASES", " ".join(BASES)).split()
    if b not in wanted:
        pytest.skip(f"{b}: not in VBLK_CI_GATES_BASES={' '.join(wanted)}")
    if place(b).where == "docker":
        why = _docker_usable()
        if why:
            pytest.skip(f"{b}: the host lacks {', '.join(host_missing(b))} and {why}")
    return b


def _where() -> str:
    # docker first: there the image's kept vmlinux.o spares a kernel compile per base.
    return "docker" if not _docker_usable() else "auto"


def _gates(base: str, series_dir: Path):
    report, _ = run_gates(base, series_dir, where=_where(), cache_dir=os.environ.get("VBLK_CI_CACHE"))
    return report


def _stacked(base: str, meta: Path, dest: Path) -> Path:
    """A series dir: *base*'s driver series, then the meta series in *meta*."""
    dest.mkdir()
    names = []
    for d in (BASES[base].series_dir(REPO), meta):
        for name in (d / "series").read_text().split():
            shutil.copy2(d / name, dest / name)
            names.append(name)
    (dest / "series").write_text("\n".join(names) + "\n")
    return dest


@pytest.fixture(scope="module")
def series_report(base):
    return _gates(base, BASES[base].series_dir(REPO))


def _skip_if_sparse_is_blind(report, what: str) -> None:
    # Sparse that stops at errors in the unpatched virtio_blk.c prints no warning after them
    # (Debian's 0.6.4 on 7.3's MODULE_INFO() did, before quality.sparse_program's
    # __builtin_strlen define): then it checks nothing on that base; say so instead of calling
    # "0 new" a pass.
    if report.sparse_blind:
        pytest.skip(f"{what}: sparse cannot check this base: {len(report.sparse_blind)} error(s) in the "
                    f"unpatched file silence it (first: {report.sparse_blind[0]})")


def test_series_passes_every_gate(base, series_report):
    report = series_report
    series = BASES[base].series_dir(REPO)
    assert report.applies
    assert len(report.patches) == len([ln for ln in (series / "series").read_text().split() if ln])
    assert report.checkpatch_total == {"errors": 0, "warnings": 0, "checks": 0}, [
        p.output for p in report.patches if p.output]
    # Waived: only what CHECKPATCH_ALLOWED names (the commits a Fixes: tag or a backport names).
    assert all(a.startswith("UNKNOWN_COMMIT_ID: ") for p in report.patches for a in p.allowed)
    assert report.sparse == [], report.sparse
    assert report.w1 == [] and report.module_w1 == []
    assert report.link == [] and report.module_linked, report.link_output
    assert report.clean  # a blind sparse (not complete) is test_sparse_sees_the_series' skip
    if _where() == "docker":  # the image's kept vmlinux.o matched: no kernel compiled for the link
        assert report.exports.startswith("the kept vmlinux.o"), report.exports


def test_sparse_sees_the_series(base, series_report):
    _skip_if_sparse_is_blind(series_report, "the driver series")
    assert series_report.sparse == [] and series_report.complete


@pytest.fixture(scope="module")
def bad_report(base, series_report, tmp_path_factory):
    return _gates(base, _stacked(base, REPO / "tests/data/bad-series", tmp_path_factory.mktemp("bad") / "series"))


def test_gates_catch_a_bad_patch(bad_report):
    report = bad_report
    assert report.checkpatch_total["errors"] >= 2
    assert any("vblk_meta_unused" in w for w in report.w1)
    assert any("vblk_meta_unused" in w for w in report.module_w1)
    assert not report.clean


def test_sparse_catches_a_bad_patch(bad_report):
    _skip_if_sparse_is_blind(bad_report, "the meta series")
    assert any("vblk_meta_undeclared" in s and "not declared" in s for s in bad_report.sparse), bad_report.sparse


def test_link_gate_catches_an_unexported_symbol(base, series_report, tmp_path):
    # Clean to every other gate: only the link can fail it (as v3's draft did before "block:
    # export ioprio_check_cap()").
    report = _gates(base, _stacked(base, REPO / "tests/data/bad-link-series", tmp_path / "series"))
    assert report.checkpatch_total == {"errors": 0, "warnings": 0, "checks": 0}
    assert report.sparse == [] and report.w1 == [] and report.module_w1 == []
    # 6.12: ERROR: modpost: "bdev_statx" [drivers/block/virtio_blk.ko] undefined!
    # 7.3:  ERROR: modpost: drivers/block/virtio_blk.ko: symbol 'bdev_statx' undefined!
    assert any(re.search(r"""["']bdev_statx["'].* undefined!$""", e) for e in report.link), report.link
    assert not report.module_linked
    if _where() == "docker":
        assert report.exports.startswith("the kept vmlinux.o"), report.exports
    assert not report.clean


def test_a_patch_that_does_not_apply_fails_git_am(base, series_report, tmp_path):
    patch = (REPO / "tests/data/bad-series/0001-meta-a-patch-that-quality-gates-must-reject.patch").read_text()
    stale = patch.replace(' MODULE_LICENSE("GPL");', ' MODULE_LICENSE("vblk_meta_not_there");')
    assert stale != patch
    (tmp_path / "0001-stale.patch").write_text(stale)
    (tmp_path / "series").write_text("0001-stale.patch\n")
    with pytest.raises(BuildError, match="does not apply"):
        _gates(base, tmp_path)
