"""The quality-gate parsers, against output recorded from real runs."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from vblk_ci.build import BuildError
from vblk_ci.build.quality import (
    DRIVER_SOURCE, PatchCheck, QualityReport, diagnostics_for, modpost_findings, new_findings, parse_checkpatch,
    patch_check, sparse_only, sparse_program,
)
from vblk_ci.errors import MissingPrerequisite

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
    good = QualityReport(base="tarball:x", patches=[PatchCheck("p1", 0, 0, 0)], applies=True, module_linked=True)
    assert good.clean and good.checkpatch_total == {"errors": 0, "warnings": 0, "checks": 0}
    assert not QualityReport(base="x", patches=[PatchCheck("p1", 0, 0, 1)], applies=True, module_linked=True).clean
    assert not QualityReport(base="x", applies=True, module_linked=True, w1=["w"]).clean
    assert not QualityReport(base="x", applies=True, module_linked=True, sparse=["s"]).clean
    # Sparse errors (even old ones) silence its warnings: such a run proves nothing.
    blind = QualityReport(base="x", applies=True, module_linked=True, sparse_blind=["e"])
    assert blind.clean and not blind.complete  # nothing found, but sparse could not look
    assert good.complete
    assert not QualityReport(base="x", applies=False).clean


# Recorded: checkpatch.pl --strict --show-types on driver/6.12/0001 (a stable backport with
# Fixes:) in a 6.12.117 tarball tree; the last finding is made up, on a line not allowed.
CHECKPATCH_BACKPORT = """\
WARNING:UNKNOWN_COMMIT_ID: Unknown commit id 'd6211ebbdaa541af197b50b8dd8f22642ce0b87f', maybe rebased or not pulled?
#8: 
commit d6211ebbdaa541af197b50b8dd8f22642ce0b87f upstream.

WARNING:UNKNOWN_COMMIT_ID: Unknown commit id '5eff57fa9f3a', maybe rebased or not pulled?
#25: 
Fixes: 5eff57fa9f3a ("io_uring/uring_cmd: defer SQE copying until it's needed")

total: 0 errors, 2 warnings, 0 checks, 39 lines checked
"""
CHECKPATCH_UNKNOWN_ELSEWHERE = """\
WARNING:UNKNOWN_COMMIT_ID: Unknown commit id '5eff57fa9f3a', maybe rebased or not pulled?
#12: 
As commit 5eff57fa9f3a did, defer the copy.

total: 0 errors, 1 warnings, 0 checks, 39 lines checked
"""


def test_checkpatch_waives_unknown_commit_ids_only_on_fixes_and_upstream_lines():
    ok = patch_check("0001", CHECKPATCH_BACKPORT)
    assert (ok.errors, ok.warnings, ok.checks) == (0, 0, 0) and ok.output == ""
    assert [a.split(" | ")[1] for a in ok.allowed] == [
        "commit d6211ebbdaa541af197b50b8dd8f22642ce0b87f upstream.",
        "Fixes: 5eff57fa9f3a (\"io_uring/uring_cmd: defer SQE copying until it's needed\")"]
    other = patch_check("0001", CHECKPATCH_UNKNOWN_ELSEWHERE)
    assert other.warnings == 1 and other.allowed == [] and "5eff57fa9f3a" in other.output
    # Another type on a Fixes: line is not waived either.
    assert patch_check("p", CHECKPATCH_BACKPORT.replace("UNKNOWN_COMMIT_ID", "GIT_COMMIT_ID")).warnings == 2


def test_checkpatch_without_ply_is_a_missing_prerequisite_not_clean():
    out = "Traceback (most recent call last):\nModuleNotFoundError: No module named 'ply'\n" + CHECKPATCH_CLEAN
    with pytest.raises(MissingPrerequisite, match="python3-ply"):
        patch_check("p", out)


BASE_SRC = "a\nmodule_param(x, int, 0444);\nb\n"
PATCHED_SRC = "a\nnew line\nmodule_param(x, int, 0444);\nint f(void) { return 0; }\nb\n"


def test_sparse_reports_only_findings_the_unpatched_file_lacks():
    base = ["/t/drivers/block/virtio_blk.c:2:1: error: bad constant expression"]
    patched = ["/t/drivers/block/virtio_blk.c:3:1: error: bad constant expression",  # moved, same line text
               "/t/drivers/block/virtio_blk.c:4:5: warning: symbol 'f' was not declared. Should it be static?"]
    new, old = new_findings(patched, PATCHED_SRC, base, BASE_SRC)
    assert new == [patched[1]] and old == [patched[0]]
    # The same message on another line's text is new; one base finding covers one patched finding.
    twice = patched[:1] + ["/t/drivers/block/virtio_blk.c:3:7: error: bad constant expression"]
    assert new_findings(twice, PATCHED_SRC, base, BASE_SRC)[0] == twice[1:]
    assert new_findings(patched, PATCHED_SRC, [], BASE_SRC)[0] == patched


# Recorded shape: make W=1 drivers/block/virtio_blk.ko with bad-link-series (7.3.4).
MODPOST_UNDEFINED = """\
  CC [M]  drivers/block/virtio_blk.o
  MODPOST Module.symvers
ERROR: modpost: "ioprio_check_cap" [drivers/block/virtio_blk.ko] undefined!
make[3]: *** [/t/scripts/Makefile.modpost:147: Module.symvers] Error 1
"""


def test_modpost_findings_and_a_report_without_the_module_is_not_clean():
    assert modpost_findings(MODPOST_UNDEFINED) == [
        'ERROR: modpost: "ioprio_check_cap" [drivers/block/virtio_blk.ko] undefined!']
    # 7.3's modpost words it otherwise (recorded: v3 on 7.3.4).
    assert modpost_findings("ERROR: modpost: drivers/block/virtio_blk.ko: symbol '__import_iovec' undefined!\n") == [
        "ERROR: modpost: drivers/block/virtio_blk.ko: symbol '__import_iovec' undefined!"]
    assert modpost_findings("  LD [M]  drivers/block/virtio_blk.ko\n") == []
    linked = QualityReport(base="x", applies=True, module_linked=True)
    assert linked.clean
    assert not QualityReport(base="x", applies=True, module_linked=False).clean
    assert not QualityReport(base="x", applies=True, module_linked=True, link=["WARNING: modpost: x"]).clean


def test_report_round_trips_through_json():
    r = QualityReport(base="tarball:x", applies=True, patches=[PatchCheck("p", 0, 1, 0, "out", ["UNKNOWN_COMMIT_ID: a"])],
                      sparse=["s"], link=["l"], timings={"tree": 1.0}, seconds=2.0)
    back = QualityReport.from_json(json.loads(json.dumps(r.to_json())))
    assert back == r and back.clean is False


def test_sparse_program_defines_typeof_unqual_only_where_the_tree_uses_it(tmp_path):
    ct = tmp_path / "include/linux/compiler_types.h"
    ct.parent.mkdir(parents=True)
    ct.write_text("#define __unqual_scalar_typeof(x) typeof(x)\n")
    assert sparse_program(tmp_path) == ["sparse"]
    ct.write_text("#define __unqual_scalar_typeof(x) __typeof_unqual__(x)\n")
    assert sparse_program(tmp_path) == ["sparse", "-D__typeof_unqual__=__typeof__"]


def test_sparse_program_folds_builtin_strlen_where_moduleparam_uses_it(tmp_path):
    mp = tmp_path / "include/linux/moduleparam.h"
    mp.parent.mkdir(parents=True)
    mp.write_text("#define MODULE_INFO(tag, info) __MODULE_INFO(tag, tag, info)\n")  # 6.12
    assert sparse_program(tmp_path) == ["sparse"]
    mp.write_text("\tstatic_assert(sizeof(info) - 1 == __builtin_strlen(info),\n")  # 7.3
    assert sparse_program(tmp_path) == ["sparse", "-D__builtin_strlen(s)=(sizeof(s) - 1)"]


@pytest.mark.skipif(shutil.which("sparse") is None, reason="sparse is not installed (apt-get install sparse)")
def test_the_strlen_define_lets_sparse_see_past_a_static_assert(tmp_path):
    # 7.3's MODULE_INFO() in miniature: without the define, sparse 0.6.4 stops at the assert
    # ("bad constant expression") and never reports the undeclared symbol below it.
    src = tmp_path / "m.c"
    src.write_text('_Static_assert(sizeof("x") - 1 == __builtin_strlen("x"), "nul");\n'
                   "int vblk_meta_undeclared(void) { return 0; }\n")
    mp = tmp_path / "include/linux/moduleparam.h"
    mp.parent.mkdir(parents=True)
    mp.write_text("static_assert(sizeof(info) - 1 == __builtin_strlen(info));\n")
    plain = subprocess.run(["sparse", str(src)], capture_output=True, text=True).stderr
    fixed = subprocess.run([*sparse_program(tmp_path), str(src)], capture_output=True, text=True).stderr
    assert "bad constant expression" in plain and "vblk_meta_undeclared" not in plain
    assert "bad constant expression" not in fixed and "vblk_meta_undeclared' was not declared" in fixed
