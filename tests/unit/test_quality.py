"""The quality-gate parsers, against output recorded from real runs."""

from __future__ import annotations

import pytest

from vblk_ci.build import BuildError
from vblk_ci.build.quality import (
    DRIVER_SOURCE, PatchCheck, QualityReport, diagnostics_for, parse_checkpatch, sparse_only,
)

# Recorded: checkpatch.pl --strict on tests/data/bad-series (6.12.117 tree).
CHECKPATCH_BAD = """\
ERROR: space required before the open brace '{'
#27: FILE: drivers/block/virtio_blk.c:881:
+static int vblk_meta_unused(int x){

ERROR: Missing Signed-off-by: line(s)

total: 3 errors, 0 warnings, 0 checks, 11 lines checked
"""
CHECKPATCH_CLEAN = "total: 0 errors, 0 warnings, 0 checks, 437 lines checked\n\nYour patch has no obvious style problems"
# Recorded: make C=2 drivers/block/virtio_blk.o with the bad series applied.
C2_OUTPUT = """\
  CHECK   /c/trees/quality/drivers/block/virtio_blk.c
  CC      drivers/block/virtio_blk.o
/c/trees/quality/drivers/block/virtio_blk.c:882:13: warning: unused variable \u2018y\u2019 [-Wunused-variable]
/c/trees/quality/drivers/block/virtio_blk.c:881:12: warning: \u2018vblk_meta_unused\u2019 defined but not used [-Wunused-function]
/c/trees/quality/drivers/block/blk-other.c:1:1: warning: not ours [-Wunused-function]
"""
SPARSE_LINE = "/c/trees/quality/drivers/block/virtio_blk.c:940:26: warning: incorrect type in assignment (different base types)"


def test_checkpatch_totals():
    assert parse_checkpatch(CHECKPATCH_BAD) == (3, 0, 0)
    assert parse_checkpatch(CHECKPATCH_CLEAN) == (0, 0, 0)


def test_checkpatch_without_total_is_an_error_not_clean():
    with pytest.raises(BuildError, match="no 'total:' line"):
        parse_checkpatch("perl: cannot open script\n")


def test_diagnostics_only_for_the_driver_and_sparse_split_from_gcc():
    found = diagnostics_for(C2_OUTPUT + SPARSE_LINE + "\n")
    assert len(found) == 3 and all(DRIVER_SOURCE in d for d in found)
    assert sparse_only(found) == [SPARSE_LINE]


def test_report_is_clean_only_when_every_gate_is():
    good = QualityReport(base="tarball:x", patches=[PatchCheck("p1", 0, 0, 0)], applies=True)
    assert good.clean and good.checkpatch_total == {"errors": 0, "warnings": 0, "checks": 0}
    assert not QualityReport(base="x", patches=[PatchCheck("p1", 0, 0, 1)], applies=True).clean
    assert not QualityReport(base="x", applies=True, w1=["w"]).clean
    assert not QualityReport(base="x", applies=False).clean
