"""Pure logic of driver-coherency, driver-poll-timeout and driver-unplug-iopoll (review-v2 #5, #7, #8)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vblk_ci.scenarios.driver_coherency import (
    SEED_NEW, SEED_OLD, SPAN, bdi_reclaimable_kib, case_offset, contents, digest, guest_program, name_content,
    pattern, splitmix64,
)
from vblk_ci.scenarios.driver_pollq import early_timeout_verdict, parse_kworkers, wakeups
from vblk_ci.scenarios.driver_unplug_iopoll import describe, merge_counts, unexpected


def test_splitmix64_is_the_reference_generator():
    # SplitMix64's first output for state 0 (Steele, Lea, Flood 2014; also Java's SplittableRandom).
    assert splitmix64(0) == 0xE220A8397B1DCDAF


def test_pattern_is_the_engines_word_layout():
    data = pattern(7, 4096, 24)
    assert len(data) == 24
    assert data[8:16] == splitmix64(7 ^ (4096 + 8) // 8).to_bytes(8, "little")


def guest(tmp_path, *argv: str) -> dict:
    out = subprocess.run([sys.executable, "-", *argv], input=guest_program(), capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


def test_guest_program_writes_and_reads_the_pattern_buffered(tmp_path):
    disk = tmp_path / "disk"
    disk.write_bytes(bytes(4 * SPAN))
    off = SPAN
    wrote = guest(tmp_path, "write", str(disk), str(off), str(SPAN), str(SEED_NEW))
    assert disk.read_bytes()[off:off + SPAN] == pattern(SEED_NEW, off, SPAN)
    read = guest(tmp_path, "read", str(disk), str(off), str(SPAN))
    assert read["sha256"] == wrote["sha256"] == digest(pattern(SEED_NEW, off, SPAN))
    assert read["first_word"] == f"0x{splitmix64(SEED_NEW ^ off // 8):016x}"
    assert name_content(guest(tmp_path, "read", str(disk), "0", str(SPAN))["sha256"], contents(0)) == "zeroes"


def test_name_content_names_each_known_content_and_the_rest():
    offset = case_offset(3)
    known = contents(offset)
    assert offset == 4 << 20
    assert name_content(digest(pattern(SEED_OLD, offset, SPAN)), known) == f"the old data (seed {SEED_OLD})"
    assert name_content(digest(pattern(SEED_NEW, offset, SPAN)), known) == f"the new data (seed {SEED_NEW})"
    assert name_content(digest(b"\x5a" * SPAN), known) == "QEMU's 0x5a bytes"
    # The right seed at the wrong offset is not the data that belongs there.
    assert name_content(digest(pattern(SEED_NEW, 0, SPAN)), known) == "something else"


BDI_STATS = """\
BdiWriteback:                0 kB
BdiReclaimable:             64 kB
BdiDirtyThresh:          12345 kB
"""


def test_bdi_reclaimable_kib():
    assert bdi_reclaimable_kib(BDI_STATS) == 64
    assert bdi_reclaimable_kib("BdiWriteback: 0 kB\n") is None


KW_BEFORE = """\
12 kworker/0:0H-kblockd 40 2
30 kworker/1:0H-events_highpri 7 0
junk line
"""
KW_AFTER = """\
12 kworker/0:0H-kblockd 43 2
30 kworker/1:0H-events_highpri 7 0
55 kworker/1:1H-kblockd 1 0
"""


def test_kworker_snapshots_and_wakeups():
    before, after = parse_kworkers(KW_BEFORE), parse_kworkers(KW_AFTER)
    assert before == {12: ("kworker/0:0H-kblockd", 42), 30: ("kworker/1:0H-events_highpri", 7)}
    assert wakeups(before, after) == {"12 kworker/0:0H-kblockd": 3, "55 kworker/1:1H-kblockd": 1}


@pytest.mark.parametrize("plain,iopoll,fails", [(0, 0, False), (0, 1, False), (1, 2, False), (0, 3, True),
                                                (2, 6, True)])
def test_early_timeout_verdict(plain, iopoll, fails):
    why = early_timeout_verdict(plain, iopoll)
    assert (why is not None) == fails
    if fails:
        assert f"switched {iopoll} times, against {plain}" in why and "review-v2 #7" in why


def test_unplug_iopoll_counts():
    counts = merge_counts([{"res_counts": {"0": 100, "-19": 7}}, {"res_counts": {"0": 50, "-5": 1}}, {}])
    assert counts == {0: 150, -19: 7, -5: 1}
    assert unexpected(counts) == {-5: 1}
    assert unexpected({0: 3, -19: 1, -6: 2}) == {}
    assert describe({0: 150, -19: 7}) == "0 (success) x150, -19 (-ENODEV) x7"
    assert describe({}) == "none"
