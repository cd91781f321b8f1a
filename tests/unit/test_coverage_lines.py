"""The series' added lines (kernel builder's parse_added_lines) and the gcda collector's pure parts.

Recorded data in data/coverage/: virtio_blk.c as the coverage kernel built it (our lines) and the
``git diff -U0 base..HEAD -- drivers/block/virtio_blk.c`` of the driver/ series.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vblk_ci.build.bases import DRIVER_SOURCE
from vblk_ci.build.kernel import parse_added_lines
from vblk_ci.coverage.collect import GcdaCollector, find_command, pick_gcda, snapshot_name
from vblk_ci.errors import AgentError

DATA = Path(__file__).parent / "data" / "coverage"
REPO = Path(__file__).resolve().parents[2]


def test_recorded_series_diff_lines_are_the_plus_lines_of_the_built_file():
    diff = (DATA / "virtio_blk.diff").read_text()
    src = (DATA / "virtio_blk-series-lines.c").read_text().splitlines()
    added = parse_added_lines(diff)
    assert list(added) == [DRIVER_SOURCE]
    lines = added[DRIVER_SOURCE]
    plus = [ln[1:] for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++ ")]
    assert len(lines) == len(plus) == 629
    assert lines == sorted(set(lines))
    # each number points at exactly the text the diff adds there
    assert [src[n - 1] for n in lines] == plus
    assert lines[:3] == [17, 18, 19] and src[16] == "#include <linux/cdev.h>"


def test_the_series_patch_files_name_the_same_file():
    # format-patch files: the mail text before the first "diff --git" is skipped
    names = set()
    for p in sorted((REPO / "driver").glob("00[0-9][1-9]-*.patch")):
        names |= set(parse_added_lines(p.read_text()))
    assert DRIVER_SOURCE in names


def test_hunks_context_deletions_and_no_newline_marker():
    diff = "\n".join([
        "From abc Mon Sep 17 00:00:00 2001",
        "Subject: [PATCH] x",
        "+++ not a header of a diff yet",
        "---",
        "diff --git a/f.c b/f.c",
        "index 1..2 100644",
        "--- a/f.c",
        "+++ b/f.c",
        "@@ -1,4 +1,5 @@ ctx",
        " one",
        "-two",
        "+TWO",
        "+++three",     # an added line that starts with "++"
        " four",
        "",             # an empty context line (some tools strip the space)
        "@@ -10 +11,0 @@",
        "-gone",
        "@@ -20,0 +21 @@ f()",
        "+last",
        "\\ No newline at end of file",
        "diff --git a/old.c b/old.c",
        "deleted file mode 100644",
        "--- a/old.c",
        "+++ /dev/null",
        "@@ -1 +0,0 @@",
        "-x",
        "diff --git a/n.c b/n.c",
        "--- /dev/null",
        "+++ b/n.c",
        "@@ -0,0 +1,2 @@",
        "+a",
        "+b",
        "-- ",
        "2.39.5",
    ])
    assert parse_added_lines(diff) == {"f.c": [2, 3, 21], "n.c": [1, 2]}


def test_empty_diff():
    assert parse_added_lines("") == {}


def test_pick_gcda_from_find_output():
    out = ("/sys/kernel/debug/gcov/cache/trees/coverage-build/drivers/block/virtio_blk.gcno\n"
           "/sys/kernel/debug/gcov/cache/trees/coverage-build/drivers/block/virtio_blk.gcda\n")
    assert pick_gcda(out) == "/sys/kernel/debug/gcov/cache/trees/coverage-build/drivers/block/virtio_blk.gcda"
    assert pick_gcda("") is None
    assert pick_gcda("/sys/kernel/debug/gcov/x/other/virtio_blk.gcda\n") is None
    assert "virtio_blk.gcda" in find_command()


def test_snapshot_names_sort_in_order_and_are_file_safe():
    assert snapshot_name(0, "boot") == "00-boot.gcda"
    assert snapshot_name(7, "driver-ops") == "07-driver-ops.gcda"
    assert snapshot_name(12, "a/b c") == "12-a_b_c.gcda"


class _Agent:
    def __init__(self, find_out: str, data: list[bytes | Exception]):
        self.closed = False
        self.find_out = find_out
        self.data = list(data)
        self.calls: list[tuple] = []

    def exec(self, cmd=None, timeout_s=30.0, **kw):
        self.calls.append(("exec", cmd))
        return {"rc": 0, "stdout": self.find_out, "stderr": ""}

    def read_binary(self, path):
        self.calls.append(("read_binary", path))
        item = self.data.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    def write_file(self, path, data):
        self.calls.append(("write_file", path, data))


class _Machine:
    def __init__(self, agent):
        self.agent = agent


GCDA = "/sys/kernel/debug/gcov/cache/trees/coverage-build/drivers/block/virtio_blk.gcda"


def test_collector_copies_then_resets_and_keeps_going_after_an_error(tmp_path):
    agent = _Agent(GCDA + "\n", [b"\x00gcda\x01", AgentError("Timeout", "slow"), b"\xffnext"])
    notes = []
    c = GcdaCollector(tmp_path, notes.append)
    m = _Machine(agent)
    assert c.snapshot(m, "boot").read_bytes() == b"\x00gcda\x01"
    assert c.snapshot(m, "driver-ops") is None
    assert c.snapshot(m, "driver-refusals").name == "02-driver-refusals.gcda"
    assert agent.calls[:3] == [("exec", find_command()), ("read_binary", GCDA),
                               ("write_file", "/sys/kernel/debug/gcov/reset", "1")]
    assert sum(1 for call in agent.calls if call[0] == "exec") == 1  # located once
    index = json.loads((tmp_path / "coverage" / "collect.json").read_text())
    assert index["guest_path"] == GCDA
    assert [s.get("file") for s in index["snapshots"]] == ["00-boot.gcda", None, "02-driver-refusals.gcda"]
    assert index["snapshots"][1]["error"] == "slow" or "slow" in index["snapshots"][1]["error"]
    assert len(notes) == 1 and "driver-ops" in notes[0].text


def test_collector_on_a_kernel_without_gcov_says_so_once(tmp_path):
    agent = _Agent("", [])
    notes = []
    c = GcdaCollector(tmp_path, notes.append)
    assert c.snapshot(_Machine(agent), "boot") is None
    assert c.snapshot(_Machine(agent), "smoke") is None
    assert len(notes) == 1 and "not the coverage kernel" in notes[0].text
    assert json.loads((tmp_path / "coverage" / "collect.json").read_text())["disabled"]
    assert not list((tmp_path / "coverage").glob("*.gcda"))


@pytest.mark.parametrize("agent", [None])
def test_collector_without_agent(tmp_path, agent):
    c = GcdaCollector(tmp_path)
    assert c.snapshot(_Machine(agent), "boot") is None
    assert "error" in c.index[0]
