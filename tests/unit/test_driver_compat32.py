"""driver-compat32 against the fake machine of test_driver_scenarios, with a fake engine that
knows which binary (64- or 32-bit) it is and how a driver without compat iovec handling fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_driver_scenarios import FakeGuest, failing, parse, run_scenario, statuses

from vblk_ci.errors import AgentError
from vblk_ci.scenarios import SUITES
from vblk_ci.scenarios.driver_compat32 import DriverCompat32, block_controls, combinations, job_problems

EFAULT = -14


class Compat32Guest(FakeGuest):
    """``engine32``: "ok", "missing" (no /usr/bin/vblk-engine32) or "enoexec" (no IA32 emulation).
    Faults: ``compat_iovec_bug`` (v2 as seen: the iovec layout follows the issuing thread, which is
    compat only in a 32-bit task and its io threads, so a compat ring driven by 64-bit syscalls gets its
    32-bit arrays parsed as 64-bit: -EFAULT, nothing transferred), ``review_model`` (what review-v2 #4
    predicted: a 32-bit task's arrays misparsed from io-wq and SQPOLL), ``wrong_binary`` (the agent
    runs the 64-bit engine whatever is asked), ``no_compat_ring`` (the engine ignores --compat-ring)."""

    def __init__(self, faults=frozenset(), engine32: str = "ok"):
        super().__init__(faults)
        self.engine32 = engine32
        self.runs: list[tuple[str, tuple]] = []

    def engine(self, args, timeout_s=120.0, engine="vblk-engine"):
        assert engine in ("vblk-engine", "vblk-engine32")
        bits = 32 if engine == "vblk-engine32" and "wrong_binary" not in self.faults else 64
        if engine == "vblk-engine32" and self.engine32 != "ok":
            name, err = {"missing": ("ENOENT", "No such file or directory"),
                         "enoexec": ("ENOEXEC", "Exec format error")}[self.engine32]
            raise AgentError("NoEngine", f"cannot run /usr/bin/vblk-engine32: [Errno 8] {err}",
                             {"path": "/usr/bin/vblk-engine32", "errno": 8, "errno_name": name})
        self.runs.append((engine, tuple(args)))
        modes = {a for a in args if a in ("--async", "--sqpoll")}
        compat_ring = "--compat-ring" in args and "no_compat_ring" not in self.faults
        base = [a for a in args if a not in modes and a != "--compat-ring"]
        o = parse(base)
        if o["path"] == "/dev/null":
            return {"exit_code": 0, "ptr_bits": bits, "compat_ring": compat_ring, "results": [0], "errors": 0,
                    "stderr": ""}
        misparsed = (("compat_iovec_bug" in self.faults and compat_ring) or
                     ("review_model" in self.faults and bits == 32 and modes))
        if misparsed and "vec" in o and o["path"].endswith("c0"):
            n = len(self._ios(o))
            return {"exit_code": 0, "ptr_bits": bits, "ios": n, "errors": n, "results": [EFAULT] * n,
                    "res_counts": {str(EFAULT): n}, "res_counts_other": 0, "mismatches": 0,
                    "first_error": {"offset": o["offset"], "res": EFAULT}, "stderr": ""}
        result = super().engine(base, timeout_s)
        result["ptr_bits"] = bits
        result["compat_ring"] = compat_ring
        if result["mismatches"]:
            result["first_mismatch"] = {"offset": o["offset"], "expected": "0x1", "got": "0x0000000000000000"}
        return result


def run(tmp_path: Path, guest: Compat32Guest):
    return run_scenario(DriverCompat32, tmp_path, guest)


def test_registered_in_the_review_suite():
    assert "driver-compat32" in SUITES["review"]


def test_combination_names_and_order():
    names = [c[0] for c in combinations()]
    assert len(names) == len(set(names)) == 18
    assert names[0] == "x86_64-single-inline" and names[-1] == "compat-ring-iovec-sqpoll"
    assert names.index("x86_64-iovec-sqpoll") < names.index("i386-single-inline")  # 64-bit first
    assert {"i386-iovec-async", "i386-iovec-sqpoll", "compat-ring-iovec-inline", "x86_64-iovec-async"} <= set(names)
    assert [n for n, _ in block_controls()] == [f"compat-ring-block-iovec-{m}" for m in ("inline", "async", "sqpoll")]


def test_all_pass_on_a_driver_with_compat_iovecs(tmp_path):
    checks, guest, _ = run(tmp_path, Compat32Guest())
    assert failing(checks) == []
    assert list(checks) == ["hotplug", *(c[0] for c in combinations()), *(n for n, _ in block_controls()),
                            "unplug"]
    # each combination: write + verify through the char device with its engine, block verify with the 64-bit one
    i386 = [args for engine, args in guest.runs if engine == "vblk-engine32" and "/dev/null" not in args]
    assert len(i386) == 12 and all(args[1].endswith("c0") for args in i386)
    verifies = [(engine, args) for engine, args in guest.runs if args[1] == "/dev/vda" and args[3] == "verify"]
    assert len(verifies) == 21 and {e for e, _ in verifies} == {"vblk-engine"}
    assert all(not {"--async", "--sqpoll", "--vec", "--compat-ring"} & set(a) for _, a in verifies)
    assert checks["i386-iovec-sqpoll"].data["chardev-write"]["ptr_bits"] == 32
    ring = checks["compat-ring-iovec-async"].data["chardev-write"]
    assert ring["ptr_bits"] == 64 and ring["compat_ring"] is True
    block = [args for _, args in guest.runs if args[1] == "/dev/vda" and args[3] == "write"]
    assert len(block) == 3 and all("--compat-ring" in a and "--vec" in a for a in block)
    # every check has its own region and seed
    regions = {c.data["region"]["offset"] for n, c in checks.items() if "-" in n}
    seeds = {c.data["region"]["seed"] for n, c in checks.items() if "-" in n}
    assert len(regions) == len(seeds) == 21


def test_v2_compat_bug_fails_exactly_the_compat_ring_iovec_checks(tmp_path):
    checks, _, _ = run(tmp_path, Compat32Guest({"compat_iovec_bug"}))
    assert failing(checks) == ["compat-ring-iovec-inline", "compat-ring-iovec-async", "compat-ring-iovec-sqpoll"]
    detail = checks["compat-ring-iovec-sqpoll"].detail
    assert "chardev-write: 4 of 4 commands failed: -14 (-EFAULT) x4" in detail
    assert "block-verify:" in detail and "zeroes: the data never reached the disk" in detail
    assert "chardev-verify: 4 of 4 commands failed" in detail
    assert statuses(checks)["compat-ring-block-iovec-sqpoll"] == "pass"


def test_the_reviews_model_would_fail_the_32_bit_iovec_async_and_sqpoll(tmp_path):
    checks, _, _ = run(tmp_path, Compat32Guest({"review_model"}))
    assert failing(checks) == ["i386-iovec-async", "i386-iovec-sqpoll"]


def test_an_engine_ignoring_compat_ring_fails_requires_or_the_checks(tmp_path):
    reasons, _, _ = run(tmp_path, Compat32Guest({"no_compat_ring"}))
    assert len(reasons) == 1 and "--compat-ring did not run" in reasons[0], reasons


def test_a_64_bit_engine_answering_for_the_32_bit_one_is_not_taken_for_it(tmp_path):
    reasons, _, _ = run(tmp_path, Compat32Guest({"wrong_binary"}))
    assert len(reasons) == 1 and "ptr_bits 64" in reasons[0], reasons


@pytest.mark.parametrize("engine32,reason", [
    ("missing", "no vblk-engine32 in the initramfs"),
    ("enoexec", "CONFIG_IA32_EMULATION"),
])
def test_skipped_with_the_reason_when_the_32_bit_engine_cannot_run(tmp_path, engine32, reason):
    reasons, guest, _ = run(tmp_path, Compat32Guest(engine32=engine32))
    assert len(reasons) == 1 and reason in reasons[0], reasons
    assert guest.disks == {}  # nothing plugged
    # the compat-ring probe (int $0x80: a general protection fault without IA32 emulation) never ran
    assert not any("--compat-ring" in args for _, args in guest.runs)


def test_job_problems():
    ok = {"errors": 0, "mismatches": 0, "ptr_bits": 32}
    assert job_problems("w", ok, 32) == []
    assert job_problems("w", ok, 64) == ["w: ran a 32-bit engine, expected 64-bit"]
    bad = {"errors": 2, "ios": 4, "res_counts": {"0": 2, "-22": 1, "-14": 1}, "res_counts_other": 0,
           "mismatches": 3, "first_mismatch": {"offset": 4096, "expected": "0x1", "got": "0xa5a5a5a5a5a5a5a5"}}
    assert job_problems("v", bad, None) == [
        "v: 2 of 4 commands failed: -22 (-EINVAL) x1, -14 (-EFAULT) x1",
        "v: 3 mismatched words, first at offset 4096: expected 0x1, got 0xa5a5a5a5a5a5a5a5 "
        "(the read poison: no data reached the buffer)",
    ]
