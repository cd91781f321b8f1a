"""Reproduction bundles: write/read round trip, damaged bundles, the plan round trip,
signature matching and the replay count (replays through a fake ``run``; the real
thing is tests/e2e/test_repro_host.py)."""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from pathlib import Path

import pytest

from vblk_ci import cli
from vblk_ci.repro.bundle import (
    BUNDLE_NAME, INITRAMFS, KERNEL, KERNEL_CONFIG, KERNEL_MANIFEST, BundleError, Signature, plan_from_json,
    plan_to_json, read_bundle, series_hash, signature_of, write_bundle,
)
from vblk_ci.repro.replay import ReplayOptions, replay, replay_plan
from vblk_ci.result import CheckResult, FindingRecord, RunResult, ScenarioResult
from vblk_ci.runner import Plan

KMANIFEST = {"kernel_release": "6.12.118", "variant": "default", "head_commit": "d32d7bf",
             "series": [{"name": "0001-a.patch", "sha256": "aa"}, {"name": "0002-b.patch", "sha256": "bb"}]}


def failing_result(run_dir: Path, finding: str | None = "kernel panic: sysrq triggered crash") -> RunResult:
    result = RunResult(status="fail", reason="console: x", suite="meta-crash", run_dir=str(run_dir), accel="tcg",
                       qemu="/usr/bin/qemu-system-x86_64", qemu_version="7.2.22")
    result.scenarios.append(ScenarioResult("meta-sysrq-crash", checks=[
        CheckResult("meta-sysrq-crash", "sysrq-crash", "fail", "crashed")]))
    if finding:
        result.findings.append(FindingRecord("panic", finding, "Kernel panic - not syncing: sysrq triggered crash"))
    return result


@pytest.fixture
def run(tmp_path):
    """A finished run's directory and plan, with artifacts laid out as build --output-dir does."""
    art = tmp_path / "artifacts"
    art.mkdir()
    (art / "bzImage").write_bytes(b"\x00kernel" * 100)
    (art / "kernel.config").write_text("CONFIG_MODULES=y\n")
    (art / "kernel-manifest.json").write_text(json.dumps(KMANIFEST))
    (art / "initramfs.cpio.gz").write_bytes(b"\x1f\x8binitramfs")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "console.log").write_text("[ 1.0] Kernel panic - not syncing: sysrq triggered crash\n")
    (run_dir / "qmp.jsonl").write_text('{"t": 0.1, "execute": "query-status", "arguments": {}}\n'
                                       '{"t": 2.5, "event": {"event": "GUEST_PANICKED"}}\n')
    (run_dir / "agent.log").write_text("     0.100 > {}\n")
    (run_dir / "qemu.argv").write_text("qemu-system-x86_64 -accel tcg -append 'console=ttyS0 panic=-1'\n")
    (run_dir / "schedule.json").write_text(json.dumps({"seed": 1234, "faults": []}))
    plan = Plan(kernel=art / "bzImage", initramfs=art / "initramfs.cpio.gz", run_dir=run_dir, accel="auto",
                suite="meta-crash", smp=2, memory_mb=768, append=("vblk.x=1",))
    result = failing_result(run_dir)
    (run_dir / "results.json").write_text(json.dumps(result.to_dict()))
    return plan, result, run_dir


def test_round_trip(run, tmp_path):
    plan, result, run_dir = run
    path = write_bundle(plan, result, run_dir)
    assert path == run_dir / BUNDLE_NAME
    bundle = read_bundle(path, tmp_path / "x")
    members = set(bundle.manifest["members"])
    assert {KERNEL, KERNEL_CONFIG, KERNEL_MANIFEST, INITRAMFS, "plan.json", "qemu.json", "findings.json",
            "console.log", "qmp.jsonl", "agent.log", "results.json", "schedule.json", "qemu.argv"} <= members
    assert bundle.member(KERNEL).read_bytes() == plan.kernel.read_bytes()
    assert bundle.qemu == {"binary": "/usr/bin/qemu-system-x86_64", "version": "7.2.22",
                           "argv": ["qemu-system-x86_64", "-accel", "tcg", "-append", "console=ttyS0 panic=-1"]}
    assert bundle.findings[0]["title"] == "kernel panic: sysrq triggered crash"
    m = bundle.manifest
    assert (m["accel"], m["seed"], m["status"], m["suite"]) == ("tcg", 1234, "fail", "meta-crash")
    assert m["kernel"]["series_sha256"] == series_hash(KMANIFEST) and m["kernel"]["release"] == "6.12.118"
    assert m["initramfs"]["sha256"] == m["members"][INITRAMFS]["sha256"]
    assert bundle.signature == Signature("fail", "kernel panic: sysrq triggered crash", "finding")
    assert not (run_dir / (BUNDLE_NAME + ".tmp")).exists()


def test_series_hash_depends_on_names_contents_and_order():
    a = series_hash(KMANIFEST)
    assert a and len(a) == 64
    assert series_hash({"series": list(reversed(KMANIFEST["series"]))}) != a
    assert series_hash({"series": [{"name": "0001-a.patch", "sha256": "ab"}, KMANIFEST["series"][1]]}) != a
    assert series_hash({}) is None


def test_missing_artifacts_are_left_out_not_fatal(run, tmp_path):
    plan, result, run_dir = run
    plan = dataclasses.replace(plan, kernel=tmp_path / "gone" / "bzImage")
    bundle = read_bundle(write_bundle(plan, result, run_dir), tmp_path / "x")
    assert bundle.member(KERNEL) is None and bundle.member(KERNEL_CONFIG) is None
    with pytest.raises(BundleError, match="no kernel image: give --kernel"):
        replay_plan(bundle, ReplayOptions(), tmp_path / "r", Plan)


def test_a_schedule_file_travels_with_the_bundle_and_the_replay_uses_it(run, tmp_path):
    plan, result, run_dir = run
    given = tmp_path / "eio.json"
    given.write_text('{"seed": 7, "faults": []}')
    bundle = read_bundle(write_bundle(dataclasses.replace(plan, schedule=given), result, run_dir), tmp_path / "x")
    replayed = replay_plan(bundle, ReplayOptions(), tmp_path / "r", Plan)
    assert replayed.schedule == bundle.member("schedule-input.json")
    assert replayed.schedule.read_text() == given.read_text() and replayed.schedule != given
    # A run without --schedule replays without one.
    plain = read_bundle(write_bundle(plan, result, run_dir, tmp_path / "plain.tar.gz"), tmp_path / "y")
    assert replay_plan(plain, ReplayOptions(), tmp_path / "r2", Plan).schedule is None


def _rewrite(src: Path, dest: Path, change) -> Path:
    """Copy a bundle, letting ``change(name, data)`` return new bytes (or None to drop the member)."""
    with tarfile.open(src) as tin, tarfile.open(dest, "w:gz") as tout:
        for m in tin.getmembers():
            data = change(m.name, tin.extractfile(m).read())
            if data is None:
                continue
            info = tarfile.TarInfo(m.name)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))
    return dest


@pytest.mark.parametrize("damage, message", [
    (lambda n, d: d + b"x" if n == "console.log" else d, "member console.log does not match its sha256"),
    (lambda n, d: None if n == "plan.json" else d, "member plan.json listed in the manifest is missing"),
    (lambda n, d: None if n == "manifest.json" else d, "no manifest.json"),
    (lambda n, d: d.replace(b"repro-bundle/1", b"repro-bundle/9") if n == "manifest.json" else d,
     "manifest schema 'vblk-ci/repro-bundle/9'"),
])
def test_damaged_bundle_is_refused(run, tmp_path, damage, message):
    plan, result, run_dir = run
    bad = _rewrite(write_bundle(plan, result, run_dir), tmp_path / "bad.tar.gz", damage)
    with pytest.raises(BundleError, match=message):
        read_bundle(bad, tmp_path / "x")


def test_member_outside_the_bundle_dir_is_refused(tmp_path):
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("../escape")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(BundleError, match="unexpected member '../escape'"):
        read_bundle(path, tmp_path / "x")
    assert not (tmp_path / "escape").exists()


@pytest.mark.parametrize("content", [b"", b"not a tarball at all", b"\x1f\x8b\x08\x00garbage"])
def test_cli_bad_bundle_is_one_line_and_cannot_judge(tmp_path, capsys, content):
    # 125: git bisect run skips a commit it cannot judge instead of calling it bad.
    path = tmp_path / "b.tar.gz"
    path.write_bytes(content)
    assert cli.main(["repro", str(path), "--out", str(tmp_path / "o")]) == 125
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vblk-ci: error: ") and str(path) in err


def test_cli_missing_bundle_and_bad_repeat(tmp_path, capsys):
    assert cli.main(["repro", str(tmp_path / "none.tar.gz"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == f"vblk-ci: error: no such bundle: {tmp_path / 'none.tar.gz'}\n"
    assert cli.main(["repro", "x", "--repeat", "0"]) == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_plan_round_trip(run):
    plan, _, _ = run
    data = json.loads(json.dumps(plan_to_json(plan)))
    back, unknown = plan_from_json(data, Plan)
    assert back == plan and unknown == []
    assert isinstance(back.append, tuple) and isinstance(back.kernel, Path)


def test_plan_from_json_overrides_and_unknown_fields(run, tmp_path):
    plan, _, _ = run
    data = {**plan_to_json(plan), "schedule": "x.json", "faults_seed": 7}
    back, unknown = plan_from_json(data, Plan, kernel=tmp_path / "k", accel="tcg")
    assert back.kernel == tmp_path / "k" and back.accel == "tcg" and back.memory_mb == 768
    assert back.schedule == Path("x.json")
    assert unknown == ["faults_seed"]
    with pytest.raises(BundleError, match="plan.json lacks kernel"):
        plan_from_json({"initramfs": "i", "run_dir": "r"}, Plan)


@pytest.mark.parametrize("result, expected", [
    ({"status": "fail", "findings": [{"title": "WARNING in f"}, {"title": "BUG: x"}]},
     Signature("fail", "WARNING in f", "finding")),
    ({"status": "fail", "scenarios": [{"checks": [
        {"scenario": "s", "name": "a", "status": "pass"}, {"scenario": "s", "name": "b", "status": "error"},
        {"scenario": "s", "name": "c", "status": "fail"}]}]},
     Signature("fail", "s/c", "check")),
    ({"status": "error", "reason": "QMP quit: Timeout: no reply\nmore"},
     Signature("error", "QMP quit: Timeout: no reply", "reason")),
    ({"status": "pass"}, Signature("pass", "", "reason")),
])
def test_signature_of(result, expected):
    assert signature_of(result) == expected


def test_signature_matching():
    s = Signature("fail", "WARNING in f", "finding")
    assert s.matches(Signature("fail", "WARNING in f", "finding"))
    assert not s.matches(Signature("fail", "WARNING in g", "finding"))
    assert not s.matches(Signature("error", "WARNING in f", "finding"))


class FakeRuns:
    """Stands in for runner.run: returns prepared results in turn and keeps the plans."""

    def __init__(self, results):
        self.results = list(results)
        self.plans = []

    def __call__(self, plan, emit):
        self.plans.append(plan)
        return self.results.pop(0)


def test_replay_counts_reproductions_and_uses_bundle_artifacts(run, tmp_path):
    plan, result, run_dir = run
    bundle = read_bundle(write_bundle(plan, result, run_dir), tmp_path / "b")
    passed = RunResult(status="pass")
    other = failing_result(run_dir, finding="WARNING in f")
    runs = FakeRuns([failing_result(run_dir), passed, other, failing_result(run_dir)])
    report = replay(bundle, ReplayOptions(repeat=4), tmp_path / "out", runs, Plan)
    assert report.reproduced == 2 and [r.reproduced for r in report.runs] == [True, False, False, True]
    assert report.exit_code == 1
    first = runs.plans[0]
    assert first.kernel == bundle.member(KERNEL) and first.initramfs == bundle.member(INITRAMFS)
    assert first.accel == "tcg"  # the accelerator the failure ran with, not "auto"
    assert (first.memory_mb, first.append, first.suite) == (768, ("vblk.x=1",), "meta-crash")
    assert first.repro_bundle is False
    assert [p.run_dir for p in runs.plans] == [tmp_path / "out" / f"replay-{i}" for i in range(1, 5)]
    assert json.loads(json.dumps(report.to_dict()))["reproduced"] == 2


def test_replay_exit_codes(run, tmp_path):
    plan, result, run_dir = run
    bundle = read_bundle(write_bundle(plan, result, run_dir), tmp_path / "b")
    never = replay(bundle, ReplayOptions(repeat=2), tmp_path / "o1", FakeRuns([RunResult(status="pass")] * 2), Plan)
    assert (never.reproduced, never.exit_code) == (0, 0)
    infra = replay(bundle, ReplayOptions(repeat=2), tmp_path / "o2",
                   FakeRuns([RunResult(status="error", reason="QEMU died")] * 2), Plan)
    assert (infra.reproduced, infra.exit_code) == (0, 125)


def test_replay_overrides(run, tmp_path):
    plan, result, run_dir = run
    bundle = read_bundle(write_bundle(plan, result, run_dir), tmp_path / "b")
    k = tmp_path / "otherkernel"
    runs = FakeRuns([failing_result(run_dir)])
    replay(bundle, ReplayOptions(kernel=k, qemu="/opt/qemu", accel="kvm"), tmp_path / "o", runs, Plan)
    assert (runs.plans[0].kernel, runs.plans[0].qemu, runs.plans[0].accel) == (k, "/opt/qemu", "kvm")


def test_finding_titles_must_match_exactly():
    # The console is a FIFO now: nothing doubles or drops characters, so neither may a match.
    assert Signature("fail", "WARNING in f", "finding").matches(Signature("fail", "WARNING in f", "finding"))
    assert not Signature("fail", "kernel panic: No working init found.", "finding").matches(
        Signature("fail", "kernel panic: Noo working init found.", "finding"))
    assert not Signature("fail", "WARNING in f", "finding").matches(Signature("pass", "WARNING in f", "finding"))


def test_check_names_must_match_exactly():
    assert not Signature("fail", "s/checkk", "check").matches(Signature("fail", "s/check", "check"))
    assert not Signature("fail", "x", "finding").matches(Signature("fail", "x", "check"))


def test_replay_counts_a_changed_title_as_not_reproduced(run, tmp_path):
    plan, result, run_dir = run
    bundle = read_bundle(write_bundle(plan, result, run_dir), tmp_path / "b")
    other = failing_result(run_dir, finding="kernel panic: sysrq triggered crassh")
    report = replay(bundle, ReplayOptions(repeat=2), tmp_path / "o", FakeRuns([failing_result(run_dir), other]), Plan)
    assert [r.reproduced for r in report.runs] == [True, False]
    assert [r["reproduced"] for r in report.to_dict()["runs"]] == [True, False]
