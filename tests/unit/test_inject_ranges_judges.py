"""The judges of alloc-failures (inject suite) and driver-ranges (review suite) on fake engine output.

Each scenario runs on a real guest only (the inject suite on the debug and coverage kernels); here a fake
agent returns engine JSON and a fake QMP returns query-blockstats, so what each judge accepts
and refuses is pinned down: an errno outside {0, -ENOMEM}, a sweep with no -ENOMEM, a device
that saw more (or fewer) operations than the successes, a refusal that is not -EINVAL or that
reached the device.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from vblk_ci.disks.spec import DiskSpec
from vblk_ci.errors import CheckFailed
from vblk_ci.scenarios import SUITES, get
from vblk_ci.scenarios import driver_ranges, inject_alloc

ENOMEM, EINVAL, EFAULT = 12, 22, 14


class FakeAgent:
    def __init__(self, results: list[dict]):
        self.results = list(results)
        self.calls: list[list[str]] = []

    def engine(self, args, timeout_s=120.0, engine=None):
        self.calls.append(list(args))
        return {"exit_code": 0, "stderr": "", **self.results.pop(0)}


class FakeMachine:
    """query-blockstats: each call returns the next counters snapshot."""

    def __init__(self, disk_id: str, snapshots: list[dict]):
        self.disk_id = disk_id
        self.snapshots = list(snapshots)

    def qmp(self, cmd, args=None):
        assert cmd == "query-blockstats"
        return [{"device": "", "qdev": f"/machine/peripheral/{self.disk_id}/virtio-backend",
                 "stats": self.snapshots.pop(0)}]


def ctx_for(disk: DiskSpec, results: list[dict], snapshots: list[dict]):
    return SimpleNamespace(agent=FakeAgent(results), machine=FakeMachine(disk.id, snapshots),
                           timeouts=lambda s: s)


DISK = DiskSpec(id="inj0", serial="vblk-inj0", backend="null-co", size_bytes=1 << 24)
ZERO = {"wr_operations": 0, "failed_wr_operations": 0, "invalid_wr_operations": 0}


def wr(n: int, failed: int = 0) -> dict:
    return {**ZERO, "wr_operations": n, "failed_wr_operations": failed}


def run_sweep(fail_nth, after, op="write-zeroes"):
    ctx = ctx_for(DISK, [{"fail_nth": fail_nth, "fail_nth_submit": 0}], [ZERO, after])
    rec: dict = {}
    inject_alloc.sweep(ctx, DISK, {"chardev": "/dev/vdac0"}, rec, op, {}, "wr_operations")
    return ctx, rec


def test_sweep_passes_when_failures_are_enomem_and_the_device_saw_the_successes():
    ctx, rec = run_sweep([-ENOMEM, 0, -ENOMEM, 0], wr(2))
    assert rec["summary"] == {"runs": 4, "enomem": 2, "ok": 1, "submit_error": 0}
    assert "--fail-nth-sweep" in ctx.agent.calls[0]
    # what the coverage kernel shows: the one injected page-allocation failure is absorbed
    _, rec = run_sweep([0, 0], wr(2))
    assert rec["summary"] == {"runs": 2, "enomem": 0, "ok": 1, "submit_error": 0}


@pytest.mark.parametrize("fail_nth, after, says", [
    ([-EFAULT, -ENOMEM, 0], wr(1), "-14 (-EFAULT) (run 1)"),
    ([-ENOMEM, -ENOMEM], wr(0), "the clean run (no fault injected) completed with -12 (-ENOMEM)"),
    ([-ENOMEM, 0], wr(2), "moved by 2 for 1 successful"),     # a refused command reached the device
    ([-ENOMEM, 0], wr(0), "moved by 0 for 1 successful"),     # a success the device never saw
    ([-ENOMEM, 0], wr(1, failed=1), "failed_wr_operations"),
    ([0], wr(1), "the sweep ran 1 time(s): no allocation was injected"),
])
def test_sweep_fails(fail_nth, after, says):
    with pytest.raises(CheckFailed) as exc:
        run_sweep(fail_nth, after)
    assert says in str(exc.value)


RDISK = DiskSpec(id="rng0", serial="vblk-rng0", backend="null-co", size_bytes=1 << 24, logical_block_size=4096)


def run_refused(res, after, monkeypatch, blocks=(100, 100)):
    seq = iter(blocks)
    monkeypatch.setattr(driver_ranges, "allocated", lambda disk: next(seq))
    ctx = ctx_for(RDISK, [{"results": [0]}, {"results": [res]}], [ZERO, after])
    driver_ranges.refused(ctx, RDISK, {"chardev": "/dev/vdac0"}, {}, "discard", {"range_flags": 1})
    return ctx


def test_refused_range_passes_on_einval_with_nothing_moved(monkeypatch):
    ctx = run_refused(-EINVAL, ZERO, monkeypatch)
    prefill, cmd = ctx.agent.calls
    assert prefill[prefill.index("--op") + 1] == "write"
    assert cmd[cmd.index("--range-flags") + 1] == "1" and cmd[cmd.index("--bs") + 1] == "4096"


@pytest.mark.parametrize("res, after, blocks, says", [
    (0, ZERO, (100, 96), "cqe->res = 0 (success), expected -22 (-EINVAL); the command reached the device: "
                         "moved {'allocated_bytes': -4}"),
    (-EINVAL, wr(1), (100, 100), "reached the device: moved {'wr_operations': 1}"),
    (2, {**ZERO, "invalid_wr_operations": 1}, (100, 100), "2 (VIRTIO_BLK_S_UNSUPP)"),
])
def test_refused_range_fails(res, after, blocks, says, monkeypatch):
    with pytest.raises(CheckFailed) as exc:
        run_refused(res, after, monkeypatch, blocks)
    assert says in str(exc.value)


def test_suites():
    assert SUITES["inject"] == ("alloc-failures", "module-reload")
    assert {"driver-ranges", "driver-copyout"} <= set(SUITES["review"])
    assert "inject" not in SUITES["review"] and all(get(n) for n in SUITES["inject"])
    assert len(driver_ranges.REFUSED) == 9 and len({n for n, _, _ in driver_ranges.REFUSED}) == 9
