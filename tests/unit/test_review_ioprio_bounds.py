"""driver-ioprio and driver-bounds (review-v2 #1, #2) against the fake machine of
test_driver_scenarios.py, extended with what these two look at: QEMU's virtqueue
introspection, guest memory (xp), blkdebug break/resume and query-blockstats.

The fake follows the documented contract; with one fault it has the v2 series'
defect (``ioprio_lost``: the header carries 0; ``capacity_wraps``: the capacity
check is done in 64 bits and wraps), and exactly the matching checks must fail.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest

from test_driver_scenarios import FakeGuest, FakeMachine, parse, statuses
from vblk_ci import events as E
from vblk_ci.errors import AgentError
from vblk_ci.scenarios import SUITES, ScenarioContext
from vblk_ci.scenarios import driver_ioprio
from vblk_ci.scenarios.driver_bounds import DriverBounds
from vblk_ci.scenarios.driver_ioprio import DriverIoprio

U64 = (1 << 64) - 1
HDR_ADDR = 0x2A1C000
INTS = ("sector", "range-sector", "ioprio", "data-len", "offset", "bs")


class ReviewGuest(FakeGuest):
    """FakeGuest plus a virtqueue, guest memory, a blkdebug break and blockstats."""

    def __init__(self, faults=frozenset()):
        super().__init__(faults)
        self.stats: dict[str, dict[str, int]] = {}
        self.armed_break = False
        self.last_avail = 0
        self.held: dict = {}
        self.memory = bytes(16)
        self.bg: dict[int, dict] = {}

    def hotplug(self, spec, slot, chardev=True):
        self.stats[spec.id] = {
            "rd_operations": 0, "wr_operations": 0, "invalid_rd_operations": 0, "invalid_wr_operations": 0,
            "unmap_operations": 0, "invalid_unmap_operations": 0, "failed_wr_operations": 0}
        return super().hotplug(spec, slot, chardev)

    # -- QMP ----------------------------------------------------------------------------
    def qmp(self, cmd, args=None):
        args = args or {}
        if cmd == "query-blockstats":
            return [{"device": "", "qdev": f"/machine/peripheral/{i}/virtio-backend", "stats": dict(c)}
                    for i, c in self.stats.items()]
        if cmd in ("blockdev-add", "blockdev-reopen", "blockdev-del"):
            return {}
        if cmd == "human-monitor-command":
            line = args["command-line"]
            if "break write_aio " in line:
                self.armed_break = True
            elif "resume " in line:
                self.armed_break = False
                for job in self.bg.values():
                    job["running"] = False
            elif line.startswith("xp /16xb "):
                addr = int(line.split()[-1], 16)
                assert addr == HDR_ADDR
                return "".join(f"{addr + i:016x}:" + "".join(f" 0x{b:02x}" for b in self.memory[i:i + 8]) + "\r\n"
                               for i in (0, 8))
            return ""
        if cmd == "x-query-virtio-queue-status":
            return {"last-avail-idx": self.last_avail, "inuse": sum(j["running"] for j in self.bg.values()),
                    "used-idx": self.last_avail - sum(j["running"] for j in self.bg.values())}
        if cmd == "x-query-virtio-queue-element":
            assert args["index"] == (self.last_avail - 1) & 0xFFFF
            return {"index": 5, "name": "virtio-blk", "descs": [  # QEMU 7.2 order: tail first
                {"addr": 0x3001000, "len": 1, "flags": ["write"]},
                {"addr": 0x3000000, "len": 4096, "flags": ["next"]},
                {"addr": HDR_ADDR, "len": 16, "flags": ["next"]}]}
        return super().qmp(cmd, args)

    def call(self, method, params=None, timeout=30.0):
        assert method == "sysfs"
        return {p: {"queue/max_hw_sectors_kb": "2147483647"}.get(p, "1") for p in params["paths"]}

    # -- the engine ---------------------------------------------------------------------
    @staticmethod
    def _opts(args) -> dict:
        o = parse(args)
        for k in INTS:
            if isinstance(o.get(k), str):
                o[k] = int(o[k], 0)
        return o

    def _disk(self, path):
        return next(d for d in self.disks.values() if path in (d.chardev, f"/dev/{d.name}"))

    def spawn(self, args) -> int:
        o = self._opts(args)
        disk = self._disk(o["path"])
        passthru = o["path"].endswith("c0")
        prio = o.get("ioprio", 0)
        if passthru and "ioprio_lost" in self.faults:
            prio = 0
        self.memory = struct.pack("<IIQ", 1, prio, o["offset"] // 512)
        self.last_avail += 1
        job_id = 100 + len(self.bg)
        self.bg[job_id] = {"running": self.armed_break, "res": 0 if passthru else o["bs"], "disk": disk}
        return job_id

    def wait_job(self, job_id, timeout_s=120.0):
        if job_id not in self.bg:
            return super().wait_job(job_id, timeout_s)
        job = self.bg[job_id]
        if job["running"]:
            raise AgentError("Timeout", "still running")
        return {"exit_code": 0, "ios": 1, "results": [job["res"]], "stderr": ""}

    def engine(self, args, timeout_s=120.0) -> dict:
        o = self._opts(args)
        disk = self._disk(o["path"])
        counters = self.stats[disk.spec.id]
        op, bs = o["op"], o.get("bs", 4096)
        if "data-len" in o:  # past the 4 KiB buffer: -EFAULT, or v2's 32-bit limit
            res = -22 if "data_len_32bit" in self.faults and o["data-len"] > 0xFFFFFE00 else -14
            return {"exit_code": 0, "ios": 1, "results": [res], "stderr": ""}
        ranges = op in ("discard", "write-zeroes")
        sector = o.get("range-sector" if ranges else "sector", o.get("offset", 0) // 512)
        end = sector + bs // 512
        cap = disk.spec.size_bytes // 512
        checked_end = end & U64 if "capacity_wraps" in self.faults and not ranges else end
        kind = {"read": "rd", "write": "wr"}.get(op, "unmap")
        if checked_end > cap:
            res = -34
        elif end > cap:  # QEMU: out of range, VIRTIO_BLK_S_IOERR, counted as invalid
            counters[f"invalid_{kind}_operations"] += 1
            res = 1
        else:
            counters[f"{kind}_operations"] += 1
            res = 0
        return {"exit_code": 0, "ios": 1, "results": [res], "stderr": ""}


def failing(checks) -> list[str]:
    return [f"{n}: {c.detail}" for n, c in checks.items() if c.status == "fail"]


def run_review(cls, tmp_path: Path, guest: ReviewGuest, version=(7, 2, 0)):
    machine = FakeMachine(guest)
    machine.caps = SimpleNamespace(version=version)
    ctx = ScenarioContext(cls.name, machine, tmp_path, E.Recorder(), set())
    reasons = cls().requires(ctx)
    if reasons:
        return reasons
    cls().run(ctx)
    return {c.name: c for c in ctx.checks}


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    monkeypatch.setattr(driver_ioprio.time, "sleep", lambda s: None)


def test_review_suite_lists_both():
    assert {"driver-ioprio", "driver-bounds"} <= set(SUITES["review"])


def test_ioprio_passes_on_the_contract(tmp_path):
    checks = run_review(DriverIoprio, tmp_path, ReviewGuest())
    assert set(statuses(checks).values()) == {"pass"}, failing(checks)
    rec = checks["passthru-header-ioprio"].data
    assert rec["header"] == {"type": 1, "ioprio": "0x4003", "sector": 16384}


def test_ioprio_lost_fails_only_the_passthrough_check(tmp_path):
    checks = run_review(DriverIoprio, tmp_path, ReviewGuest({"ioprio_lost"}))
    assert failing(checks) == ["passthru-header-ioprio: the device received ioprio 0x0, the command gave 0x4003 "
                               "(header type 1, sector 16384)"]


def test_ioprio_needs_qemu_7(tmp_path):
    assert run_review(DriverIoprio, tmp_path, ReviewGuest(), version=(6, 2, 0)) == [
        "x-query-virtio-queue-element needs QEMU >= 7.0"]


def test_bounds_pass_on_the_contract(tmp_path):
    checks = run_review(DriverBounds, tmp_path, ReviewGuest())
    assert set(statuses(checks).values()) == {"pass"}, failing(checks)


def test_bounds_wrapping_capacity_check_fails_the_wrap_checks(tmp_path):
    checks = run_review(DriverBounds, tmp_path, ReviewGuest({"capacity_wraps"}))
    bad = failing(checks)
    assert [b.split(":")[0] for b in bad] == ["read-sector-wraps", "write-sector-wraps"]
    assert re.search(r"cqe->res = 1 \(VIRTIO_BLK_S_IOERR\), expected -34 \(-ERANGE\); the command reached the "
                     r"device: its counters moved \{'invalid_wr_operations': 1\}", bad[1])


def test_bounds_32bit_data_len_limit_fails_the_one_rule_check(tmp_path):
    checks = run_review(DriverBounds, tmp_path, ReviewGuest({"data_len_32bit"}))
    assert failing(checks) == [
        "data-len-one-rule: data_len 0xfffffe00 -> -14 (-EFAULT), data_len 0xffffffff -> -22 (-EINVAL): two "
        "lengths past the buffer and under max_hw_sectors_kb 2147483647 get different answers (the "
        "max_hw_sectors limit is computed in 32 bits: max_hw_sectors << 9 = 0xfffffe00)"]


def test_bounds_without_visible_counters_skips_the_refusals(tmp_path):
    guest = ReviewGuest()
    guest.qmp = lambda cmd, args=None: ([] if cmd == "query-blockstats" else ReviewGuest.qmp(guest, cmd, args))
    checks = run_review(DriverBounds, tmp_path, guest)
    st = statuses(checks)
    assert (st["control-counters-move"], st["write-sector-wraps"], st["data-len-one-rule"], st["unplug"]) == (
        "fail", "skip", "skip", "pass")
