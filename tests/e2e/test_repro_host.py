"""End to end on the host's QEMU: a failed run leaves a reproduction bundle, and
``vblk-ci repro`` replays it (also from a failed check without a console finding,
and up to a guest shell).

The accelerator is chosen as for any run (VBLK_CI_ACCEL=tcg skips the KVM probe).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pexpect
import pytest

from vblk_ci import cli
from vblk_ci.repro.bundle import BUNDLE_NAME, INITRAMFS, KERNEL, read_bundle
from vblk_ci.runner import Plan, run

pytestmark = pytest.mark.e2e
HOST = str(Path(__file__).resolve().parents[2] / "host")


@pytest.fixture(scope="module")
def crashed(appliance, tmp_path_factory):
    """A real failing run: the meta-crash suite panics the guest with sysrq c."""
    run_dir = tmp_path_factory.mktemp("crash")
    plan = Plan(kernel=appliance["kernel"], initramfs=appliance["initramfs"], run_dir=run_dir,
                suite="meta-crash", memory_mb=768)
    return run(plan), run_dir


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_failed_run_leaves_a_complete_bundle(crashed, appliance, tmp_path):
    result, run_dir = crashed
    assert result.status == "fail", result.reason
    assert result.findings[0].title == "kernel panic: sysrq triggered crash"
    bundle = read_bundle(run_dir / BUNDLE_NAME, tmp_path / "b")
    m = bundle.manifest
    assert sha256(bundle.member(KERNEL)) == sha256(appliance["kernel"]) == m["kernel"]["sha256"]
    assert sha256(bundle.member(INITRAMFS)) == sha256(appliance["initramfs"]) == m["initramfs"]["sha256"]
    assert m["accel"] == result.accel and m["qemu_version"] == result.qemu_version
    assert m["signature"] == {"status": "fail", "key": "kernel panic: sysrq triggered crash", "source": "finding"}
    argv = bundle.qemu["argv"]
    assert argv[0] == result.qemu and "-kernel" in argv and "pvpanic" in argv
    assert bundle.plan["suite"] == "meta-crash" and bundle.plan["memory_mb"] == 768
    assert bundle.findings[0]["title"] == "kernel panic: sysrq triggered crash"
    assert "sysrq triggered crash" in bundle.member("console.log").read_text(errors="replace")
    qmp = [json.loads(line) for line in bundle.member("qmp.jsonl").read_text().splitlines()]
    assert all("t" in entry for entry in qmp)
    assert any(entry.get("event", {}).get("event") == "GUEST_PANICKED" for entry in qmp)
    assert "greeting" in qmp[0]
    # (QMP commands are recorded in the same file: tests/e2e/test_shell_host.py checks device_del.)
    assert '"method":"exec"' in bundle.member("agent.log").read_text()


def test_repro_replays_the_crash(crashed, tmp_path, capsys):
    _, run_dir = crashed
    out = tmp_path / "repro"
    assert cli.main(["repro", str(run_dir / BUNDLE_NAME), "--repeat", "2", "--out", str(out)]) == 1
    assert "vblk-ci: reproduced 2/2 (fail: finding 'kernel panic: sysrq triggered crash')" in capsys.readouterr().err
    report = json.loads((out / "repro.json").read_text())
    assert report["reproduced"] == 2 and [r["reproduced"] for r in report["runs"]] == [True, True]
    # The replays booted the bundle's own artifacts and left no bundles of their own.
    argv = (out / "replay-1" / "qemu.argv").read_text()
    assert str(out / "bundle" / "artifacts" / "bzImage") in argv
    assert not (out / "replay-1" / BUNDLE_NAME).exists()


def test_repro_of_a_failed_check_without_a_finding(appliance, tmp_path, capsys):
    failed = run(Plan(kernel=appliance["kernel"], initramfs=appliance["initramfs"], run_dir=tmp_path / "fail",
                      suite="meta-fail", memory_mb=768))
    assert failed.status == "fail" and not failed.findings
    bundle = tmp_path / "fail" / BUNDLE_NAME
    assert cli.main(["repro", str(bundle), "--out", str(tmp_path / "repro")]) == 1
    assert ("reproduced 1/1 (fail: check 'meta-failing-check/impossible-release')"
            in capsys.readouterr().err)


def test_repro_then_shell(crashed, tmp_path):
    """--shell: after the replay, the same kernel and machine with a shell on the console."""
    _, run_dir = crashed
    child = pexpect.spawn(
        sys.executable, ["-m", "vblk_ci.cli", "repro", str(run_dir / BUNDLE_NAME), "--shell",
                         "--out", str(tmp_path / "r")],
        env={**os.environ, "PYTHONPATH": HOST}, encoding="utf-8", codec_errors="replace", timeout=180,
    )
    try:
        child.expect_exact("reproduced 1/1")
        child.expect_exact("vblk.shell given")
        child.send("\r")
        child.expect(r"[#$] ")
        child.send("cat /proc/cmdline\r")
        child.expect_exact("vblk.shell=1")
        child.send("exit\r")
        child.expect_exact("[vblk-ci] QEMU exited with code 0")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 1  # the repro verdict: reproduced
    assert (tmp_path / "r" / "shell" / "console.log").is_file()
