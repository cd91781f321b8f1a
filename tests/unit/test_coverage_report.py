"""vblk-ci coverage: gcov JSON / lcov parsing, merging, the per-line verdict, against recorded output.

Recorded in data/coverage/ (see its README): gcov-14's JSON for the coverage
kernel's virtio_blk.gcno with the counters of real snapshots, lcov's own capture of
the same counters, and gcov's stderr lines for unusable inputs.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from vblk_ci.build.bases import DRIVER_SOURCE
from vblk_ci.build.kernel import parse_added_lines
from vblk_ci.cli import main
from vblk_ci.coverage import analyze as A

DATA = Path(__file__).parent / "data" / "coverage"


def _json(name: str) -> dict:
    with gzip.open(DATA / name, "rt", encoding="utf-8") as f:
        return json.load(f)


def _source() -> list[str]:
    return (DATA / "virtio_blk-series-lines.c").read_text().splitlines()


def _added() -> list[int]:
    return parse_added_lines((DATA / "virtio_blk.diff").read_text())[DRIVER_SOURCE]


# ----------------------------------------------------------------------------- gcov's stderr


@pytest.mark.parametrize("name, bad", [
    ("gcov14-stderr-stamp-mismatch.txt", "stamp mismatch"),
    ("gcov12-stderr-on-gcc14-data.txt", "prefer"),
    ("gcov14-stderr-no-gcda.txt", None),  # no counters: all zero, which is what we asked for
])
def test_gcov_problem_on_recorded_stderr(name, bad):
    problem = A.gcov_problem((DATA / name).read_text())
    assert (problem is None) if bad is None else (bad in problem)


# ----------------------------------------------------------------------------- gcov JSON


def test_parse_gcov_json_keeps_only_the_driver_source():
    doc = {"files": [
        {"file": "../include/linux/blk-mq.h", "lines": [{"line_number": 5, "count": 9}]},
        {"file": "/cache/trees/coverage/drivers/block/virtio_blk.c", "lines": [
            {"line_number": 10, "function_name": "f", "count": 3},
            {"line_number": 11, "count": 0},
            {"line_number": 10, "function_name": "g", "count": 7},  # a line in two functions: the larger count
        ]},
    ]}
    got = A.parse_gcov_json(doc)
    assert {n: c.count for n, c in got.items()} == {10: 7, 11: 0}
    assert got[10].function == "f"


def test_recorded_gcov_json_without_counters_lists_the_executable_lines():
    zero = A.parse_gcov_json(_json("gcov14-nocounters.json.gz"))
    src = _source()
    assert zero and all(c.count == 0 for c in zero.values())
    # gcov never lists comments, blank lines or lone braces as executable
    added = set(_added())
    for n in (n for n in zero if n in added):  # the data file keeps only our lines' text
        text = src[n - 1].strip()
        assert text not in ("", "{", "*") and not text.startswith(("/*", "* ", "*/", "//")), (n, text)


def test_recorded_snapshots_merge_to_what_lcov_captured():
    boot = A.parse_gcov_json(_json("gcov14-00-boot.json.gz"))
    ops = A.parse_gcov_json(_json("gcov14-01-driver-ops.json.gz"))
    merged = A.merge_counts([A.parse_gcov_json(_json("gcov14-nocounters.json.gz")), boot, ops])
    lcov = A.parse_lcov_tracefile((DATA / "lcov-00-boot+01-driver-ops.info").read_text())
    (sf,) = [k for k in lcov if k.endswith(DRIVER_SOURCE)]
    assert {n: c.count for n, c in merged.items()} == lcov[sf]
    # and the tracefile we write reads back the same
    mine = A.parse_lcov_tracefile(A.lcov_tracefile("/x/virtio_blk.c", merged))
    assert mine == {"/x/virtio_blk.c": lcov[sf]}


def test_merge_sums_disjoint_snapshots():
    a = {1: A.LineCount(2, "f"), 2: A.LineCount(0)}
    b = {2: A.LineCount(5, "g"), 3: A.LineCount(0)}
    got = A.merge_counts([a, b])
    assert {n: c.count for n, c in got.items()} == {1: 2, 2: 5, 3: 0}
    assert got[2].function == "g" and a[1].count == 2  # inputs untouched


# ----------------------------------------------------------------------------- the verdict


def test_classify_added_lines():
    src = ["int x;", "{", "\ta();", "\tb();", "}", "/* c */"]
    counts = {3: A.LineCount(4), 4: A.LineCount(0)}
    r = A.classify_lines([6, 2, 3, 4, 3], counts, src)
    assert [(ln.line, ln.status, ln.count) for ln in r.lines] == [
        (2, A.NOT_EXECUTABLE, None), (3, A.EXECUTED, 4), (4, A.NOT_EXECUTED, 0), (6, A.NOT_EXECUTABLE, None)]
    assert (r.added, r.executable, r.executed, r.percent) == (4, 2, 1, 50.0)
    assert [ln.line for ln in r.unexecuted] == [4]
    assert r.to_json()["unexecuted"] == [f"{DRIVER_SOURCE}:4"]
    assert A.classify_lines([1], {}, src).percent is None


def test_enclosing_function_on_the_recorded_source():
    src = _source()
    idx = {t: i + 1 for i, t in enumerate(src)}
    n = idx["static int virtblk_chr_uring_cmd(struct io_uring_cmd *ioucmd,"]  # a two-line signature
    assert A.enclosing_function(src, n + 3) == "virtblk_chr_uring_cmd"
    assert A.enclosing_function(src, n + 2) == "virtblk_chr_uring_cmd"  # the "{"
    assert A.enclosing_function(src, 17) is None  # an #include
    added = _added()
    named = [A.enclosing_function(src, n) for n in added]
    assert "virtblk_uring_cmd_io" in named and "virtio_blk_init" in named


def test_markdown_lists_every_unexecuted_line_grouped():
    src = ["static void f(void)", "{", "\ta();", "\tb();", "}", "static void g(void)", "{", "\tc();", "}"]
    counts = {3: A.LineCount(1), 4: A.LineCount(0), 8: A.LineCount(0)}
    r = A.classify_lines([3, 4, 8], counts, src, runs=["r1"], snapshots=2)
    assert [(fn, [ln.line for ln in lines]) for fn, lines in A.group_unexecuted(r)] == [("f", [4]), ("g", [8])]
    md = A.render_markdown(r)
    assert f"{DRIVER_SOURCE}:4: b();" in md and f"{DRIVER_SOURCE}:8: c();" in md
    assert "1/3 executable added lines ran (33.3%)" in md


def test_insertion_diff_for_genhtml_adds_exactly_the_added_lines():
    src = _source()
    added = _added()
    d = A.insertion_diff("/o/src/virtio_blk.c", added, src)
    assert parse_added_lines(d) == {"/o/src/virtio_blk.c": added}
    # old-side numbers: the file without the added lines, so each hunk starts where the last left off
    assert d.splitlines()[3] == "@@ -16,0 +17,3 @@"
    plus = [ln[1:] for ln in d.splitlines()[3:] if ln.startswith("+")]
    assert plus == [src[n - 1] for n in added]
    assert A.insertion_diff("/x", [2, 3, 5], ["a", "b", "c", "d", "e"]).splitlines()[3:] == [
        "@@ -1,0 +2,2 @@", "+b", "+c", "@@ -2,0 +5,1 @@", "+e"]
    # not ending on an added line: the last line closes the diff as context (else genhtml calls the rest new)
    assert A.insertion_diff("/x", [2], ["a", "b", "c", "d"]).splitlines()[3:] == [
        "@@ -1,0 +2,1 @@", "+b", "@@ -3,1 +4,1 @@", " d"]
    assert d.splitlines()[-2:] == [f"@@ -{len(src) - len(added)},1 +{len(src)},1 @@", " " + src[-1]]


# ----------------------------------------------------------------------------- the command


def test_cli_usage_errors(tmp_path, capsys):
    assert main(["coverage", str(tmp_path / "nope")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["coverage", str(tmp_path)]) == 2
    assert "no coverage snapshots" in capsys.readouterr().err


def test_cli_needs_the_kernel_artifacts(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "coverage").mkdir(parents=True)
    (run / "coverage" / "00-boot.gcda").write_bytes(b"x")
    assert main(["coverage", str(run), "--artifacts", str(tmp_path)]) == 2
    assert "virtio_blk.gcno" in capsys.readouterr().err
