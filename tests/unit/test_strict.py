"""Strict verdicts: which skips fail a run (host/vblk_ci/strict.py, runner.judge)."""

from __future__ import annotations

from types import SimpleNamespace

from vblk_ci import events as E
from vblk_ci.result import CheckResult, RunResult, ScenarioResult
from vblk_ci.runner import judge
from vblk_ci.strict import unallowed_skips


def _result(tmp_path, *scenarios: ScenarioResult) -> RunResult:
    (tmp_path / "console.log").write_text("[    0.000000] Linux version 6.12\n")
    return RunResult(status=E.PASS, run_dir=str(tmp_path), scenarios=list(scenarios))


def _judge(result: RunResult, strict: bool) -> RunResult:
    machine = SimpleNamespace(paths=None, panicked=False)
    judge(result, machine, E.discard, set(), [], strict=strict)
    return result


def test_a_skipped_check_fails_a_strict_run_and_only_a_strict_one(tmp_path):
    def make():
        return _result(tmp_path, ScenarioResult("driver-ops", checks=[
            CheckResult("driver-ops", "read", "pass"),
            CheckResult("driver-ops", "polled-hotplug", "skip", "no writable poll_queues in the guest")]))

    assert _judge(make(), strict=False).status == E.PASS
    strict = _judge(make(), strict=True)
    assert strict.status == E.FAIL and strict.exit_code == 1
    assert strict.reason == ("strict: 1 skip(s) without an allowed reason, first "
                             "driver-ops/polled-hotplug: no writable poll_queues in the guest")


def test_the_allowed_scenario_skip_passes_and_a_lookalike_does_not(tmp_path):
    allowed = ScenarioResult("fault-blkdebug-delay", status="skip",
                             skip_reasons=["blkdebug delay-ns needs QEMU >= 10.0; this is 7.2.22"])
    other_reason = ScenarioResult("fault-blkdebug-delay", status="skip", skip_reasons=["no blkdebug in this QEMU"])
    other_scenario = ScenarioResult("fault-throttle", status="skip",
                                    skip_reasons=["blkdebug delay-ns needs QEMU >= 10.0; this is 7.2.22"])
    ran = ScenarioResult("smoke", checks=[CheckResult("smoke", "boot", "pass")])
    assert unallowed_skips(_result(tmp_path, allowed, ran)) == []
    assert unallowed_skips(_result(tmp_path, other_reason, other_scenario, ran)) == [
        "fault-blkdebug-delay: no blkdebug in this QEMU",
        "fault-throttle: blkdebug delay-ns needs QEMU >= 10.0; this is 7.2.22"]


def test_not_run_after_a_failure_is_the_failure_not_a_skip(tmp_path):
    after_failure = ScenarioResult("smoke", checks=[
        CheckResult("smoke", "hotplug", "fail", "no disk"),
        CheckResult("smoke", "write", "skip", "not run: hotplug failed")])
    assert unallowed_skips(_result(tmp_path, after_failure)) == []
    # The same words with nothing failed are a silent skip.
    silent = ScenarioResult("smoke", checks=[
        CheckResult("smoke", "hotplug", "pass"),
        CheckResult("smoke", "write", "skip", "not run: hotplug failed")])
    assert unallowed_skips(_result(tmp_path, silent)) == ["smoke/write: not run: hotplug failed"]


def test_a_kernel_without_reset_prepare_may_skip_the_device_reset_and_nothing_else_may(tmp_path):
    # 6.12's virtio_blk has no reset_prepare: fault-device-reset skips there, by design
    no_reset = ScenarioResult("fault-device-reset", status="skip", skip_reasons=[
        "virtio_blk has no reset_prepare here (virtblk_reset_prepare not in /proc/kallsyms): a device reset "
        "would go past the driver"])
    no_debugfs = ScenarioResult("fault-device-reset", status="skip", skip_reasons=[
        "no /sys/kernel/debug/block in the guest (debugfs): the scenario reads requests in flight there"])
    assert unallowed_skips(_result(tmp_path, no_reset)) == []
    assert unallowed_skips(_result(tmp_path, no_debugfs)) == [
        "fault-device-reset: no /sys/kernel/debug/block in the guest (debugfs): the scenario reads requests in "
        "flight there"]
