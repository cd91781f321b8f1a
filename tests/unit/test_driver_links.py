"""driver-links (review-v2 #3) against the fake machine of test_driver_scenarios.py, extended with
what this scenario looks at: ``--link``/``--scribble``/``--async`` engine results, nr_requests and
the debugfs tags. A fault switches one behaviour to v2's (a linked command read from its reused SQ
slot) or breaks a precondition, and exactly the checks that should notice it fail.
"""

from __future__ import annotations

import re

import pytest
from test_driver_scenarios import FakeGuest, failing, run_scenario, statuses

from vblk_ci.errors import AgentError, CheckFailed
from vblk_ci.scenarios import SUITES, suite
from vblk_ci.scenarios.driver_links import (
    EAGAIN_QD, LINK_BS, LINK_LEN, DriverLinks, judge_link, judge_scribble, parse_tags, usable_tags,
)

TAGS = """nr_tags=16
nr_reserved_tags=0
active_queues=0

bitmap_tags:
depth={depth}
busy=0
cleared=0
bits_per_word=4

breserved_tags:
depth=0
busy=0
"""


class LinkGuest(FakeGuest):
    """Faults: ``link_reads_slot`` (v2: a linked uring_cmd is issued from its reused slot),
    ``eagain_reads_slot`` (a kernel without 0001: the -EAGAIN retry reads the reused slot),
    ``no_eagain`` (nothing went to io-wq), ``nr_requests_stuck`` (the tags cannot be lowered)."""

    def __init__(self, faults=frozenset(), **kw):
        super().__init__(faults, **kw)
        self.nr_requests: dict[str, int] = {}

    def read_file(self, path: str, max_bytes: int = 1 << 20) -> str:
        m = re.match(r"/sys/block/(\w+)/queue/(nr_requests|scheduler)$", path)
        if m:
            name = m.group(1)
            if m.group(2) == "scheduler":
                return "[none] mq-deadline\n"
            return f"{self.nr_requests.get(name, min(256, self.disks[name].spec.queue_size))}\n"
        m = re.match(r"/sys/kernel/debug/block/(\w+)/hctx0/tags$", path)
        if m:
            name = m.group(1)
            return TAGS.format(depth=self.nr_requests.get(name, self.disks[name].spec.queue_size))
        if path.endswith("/sched_tags"):
            raise AgentError("OSError", f"[Errno 2] No such file or directory: '{path}'")
        return super().read_file(path, max_bytes)

    def write_file(self, path: str, data: str) -> None:
        m = re.match(r"/sys/block/(\w+)/queue/nr_requests$", path)
        if not m:
            return super().write_file(path, data)
        if "nr_requests_stuck" not in self.faults:
            self.nr_requests[m.group(1)] = max(4, int(data))

    def engine(self, args, timeout_s=120.0) -> dict:
        raw = list(args)
        args = list(args)
        scribble, async_ = "--scribble" in args, "--async" in args
        for flag in ("--scribble", "--async", "--defer-taskrun"):
            if flag in args:
                args.remove(flag)
        link = None
        if "--link" in args:
            i = args.index("--link")
            link = args[i + 1]
            del args[i:i + 2]
        o = dict(zip(args[::2], args[1::2]))
        passthru = o["--path"].endswith("c0")
        if link:
            self.calls.append(("engine", tuple(list(args) + (["--defer-taskrun"] if "--defer-taskrun" in raw else [])),
                               link, scribble, async_))
            return self._link(o, link, passthru and scribble and not async_)
        lose = passthru and scribble and not async_ and "eagain_reads_slot" in self.faults
        if lose:
            self.faults.add("queue_full_loses_writes")
        try:
            result = super().engine(args, timeout_s)
        finally:
            if lose:
                self.faults.discard("queue_full_loses_writes")
        result["offset"] = int(o.get("--offset", "0"), 0)
        result["scribble"] = {"sqes": result["ios"], "executed": result["ios"] if lose else 0,
                              "len": 4096} if scribble else None
        workers = 0 if "no_eagain" in self.faults else 3
        result["iowq_workers_max"] = workers if (scribble or async_) else None
        return result

    def _link(self, o: dict, kind: str, slot_read: bool) -> dict:
        """Chains of a WRITE and a FLUSH/READ; the WRITEs land on the disk model either way."""
        bs, length, off = int(o["--bs"]), int(o["--length"]), int(o["--offset"])
        chains = -(-length // bs)
        disk = next(d for d in self.disks.values() if o["--path"] in (d.chardev, f"/dev/{d.name}"))
        for s in range(off // 512, (off + length) // 512):
            disk.data[s] = int(o.get("--seed", "1"))
        bad = chains if slot_read and "link_reads_slot" in self.faults else 0
        ok_res = 0 if o["--path"].endswith("c0") else bs
        result = {"exit_code": 0, "stderr": "", "offset": off, "ios": 2 * chains, "errors": 0,
                  "mismatches": bad * bs // 8 if kind == "read" else 0,
                  "first_mismatch": {"offset": off, "expected": "0x1", "got": "0xa5a5a5a5a5a5a5a5"} if bad else None,
                  "res_counts": {str(ok_res) if kind == "read" else "0": 2 * chains} if ok_res == 0 else
                  {str(bs): chains + (chains if kind == "read" else 0), **({"0": chains} if kind == "flush" else {})},
                  "link": {"kind": kind, "chains": chains, "ok": chains - bad, "write_errors": 0,
                           "second_errors": 0, "data_mismatches": bad if kind == "read" else 0,
                           "scribbled_writes": 0, "scribbled_seconds": bad, "stray_cqes": 0,
                           "first_bad": {"chain": 0, "offset": off} if bad else None}}
        return result


def run_links(tmp_path, faults=()):
    return run_scenario(DriverLinks, tmp_path, LinkGuest(set(faults)))


CHECKS = ["hotplug", "link-write-flush", "link-write-flush-slot-reused", "link-write-read",
          "link-write-read-slot-reused", "link-write-read-slot-reused-async",
          "link-write-read-slot-reused-block-path", "unplug", "hotplug-small-queue", "fewer-tags-than-in-flight",
          "eagain-write-verify-slot-reused", "eagain-write-verify-slot-reused-async", "unplug-small-queue"]


def test_review_suite_has_driver_links():
    assert "driver-links" in SUITES["review"]
    assert DriverLinks in suite("review")


def test_all_checks_pass_on_a_correct_driver(tmp_path):
    checks, guest, _ = run_links(tmp_path)
    assert list(checks) == CHECKS
    assert set(statuses(checks).values()) == {"pass"}, {n: c.detail for n, c in checks.items()}
    assert checks["fewer-tags-than-in-flight"].data["usable_tags"] == 4
    link_jobs = [c for c in guest.calls if c[0] == "engine" and len(c) == 5]
    assert [(c[2], c[3], c[4]) for c in link_jobs] == [
        ("flush", False, False), ("flush", True, False), ("read", False, False), ("read", True, False),
        ("read", True, True), ("read", True, False)]
    assert checks["eagain-write-verify-slot-reused"].data["iowq_workers_max"] == 3
    assert all("--defer-taskrun" in c[1] for c in link_jobs)


def test_a_linked_command_read_from_its_reused_slot_fails_exactly_the_scribbled_chardev_checks(tmp_path):
    checks, _, _ = run_links(tmp_path, {"link_reads_slot"})
    assert failing(checks) == ["link-write-flush-slot-reused", "link-write-read-slot-reused"]
    flush = checks["link-write-flush-slot-reused"].detail
    assert flush.startswith(f"flush-chains: {LINK_LEN // LINK_BS} of {LINK_LEN // LINK_BS} chains bad: ")
    assert f"in place of {LINK_LEN // LINK_BS} linked FLUSHs and 0 WRITEs" in flush
    assert "every cqe->res was 0" in flush
    read = checks["link-write-read-slot-reused"].detail
    assert "READs did not return what their WRITE wrote" in read and "0xa5a5a5a5a5a5a5a5" in read


def test_an_eagain_retry_read_from_the_reused_slot_fails_the_eagain_check(tmp_path):
    checks, _, _ = run_links(tmp_path, {"eagain_reads_slot"})
    assert failing(checks) == ["eagain-write-verify-slot-reused"]
    assert "the kernel executed 1024 commands written into SQ slots" in checks[
        "eagain-write-verify-slot-reused"].detail


def test_no_eagain_retry_seen_is_a_failure_not_a_pass(tmp_path):
    checks, _, _ = run_links(tmp_path, {"no_eagain"})
    assert failing(checks) == ["eagain-write-verify-slot-reused"]
    assert "the -EAGAIN retry never ran" in checks["eagain-write-verify-slot-reused"].detail


def test_tags_that_cannot_be_lowered_skip_the_eagain_checks(tmp_path):
    checks, _, _ = run_links(tmp_path, {"nr_requests_stuck"})
    assert failing(checks) == ["fewer-tags-than-in-flight"]
    assert "nr_requests is 16 after writing 1" in checks["fewer-tags-than-in-flight"].detail
    assert statuses(checks)["eagain-write-verify-slot-reused"] == "skip"


def test_parse_tags_and_usable_tags():
    assert parse_tags(TAGS.format(depth=4)) == {"nr_tags": 16, "depth": 4}
    assert parse_tags("") == {}
    none = "[none] mq-deadline"
    assert usable_tags(4, {"nr_tags": 16, "depth": 4}, {}, none) == 4
    assert usable_tags(128, {"nr_tags": 16, "depth": 16}, {}, none) == 16
    # With an elevator every request takes a scheduler tag first.
    assert usable_tags(4, {"depth": 16}, {"depth": 4}, "[mq-deadline] none") == 4
    assert usable_tags(None, {"depth": 16}, {"depth": 8}, "[mq-deadline] none") == 8
    assert usable_tags(None, {}, {}, None) is None


def test_judge_link_passes_only_clean_chains():
    clean = {"errors": 0, "mismatches": 0, "res_counts": {"0": 8},
             "link": {"kind": "read", "chains": 4, "ok": 4}}
    judge_link("k", clean)
    with pytest.raises(CheckFailed, match="no chains"):
        judge_link("k", {"exit_code": 0})
    bad = {"offset": 4096, "errors": 1, "res_counts": {"0": 7, "-125": 1},
           "link": {"kind": "flush", "chains": 4, "ok": 3, "write_errors": 0, "second_errors": 1,
                    "first_bad": {"chain": 2}}}
    with pytest.raises(CheckFailed, match=r"k: 1 of 4 chains bad: 0 WRITEs and 1 FLUSHs failed") as exc:
        judge_link("k", bad)
    assert "every cqe->res was 0" not in str(exc.value)


def test_judge_scribble():
    judge_scribble("k", {"scribble": {"sqes": 4, "executed": 0}, "errors": 0, "mismatches": 0})
    with pytest.raises(CheckFailed, match="no SQE was scribbled"):
        judge_scribble("k", {"scribble": None})
    with pytest.raises(CheckFailed, match="executed 2 commands"):
        judge_scribble("k", {"scribble": {"sqes": 4, "executed": 2}, "offset": 0})
    with pytest.raises(CheckFailed, match="1 I/O errors"):
        judge_scribble("k", {"scribble": {"sqes": 4, "executed": 0}, "errors": 1})


def test_eagain_qd_is_far_above_the_minimum_tags():
    assert EAGAIN_QD >= 32 * 4
