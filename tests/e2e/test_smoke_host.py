"""End to end on the host's QEMU: the real smoke suite, plus meta runs proving the
harness reports a launch failure and a guest panic.

The artifacts come from VBLK_CI_KERNEL/VBLK_CI_INITRAMFS or out of VBLK_CI_IMAGE
(see conftest.py); skipped with the reason otherwise. Run: pytest -m e2e tests/e2e
"""

from __future__ import annotations

import gzip
import io
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from vblk_ci import events as E
from vblk_ci.build.initramfs import CpioWriter
from vblk_ci.errors import BootError, LaunchFailure
from vblk_ci.machine.argv import MachineSpec
from vblk_ci.machine.machine import Machine, Timeouts
from vblk_ci.runner import Plan, run

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def kernel(appliance) -> Path:
    return appliance["kernel"]


@pytest.fixture(scope="module")
def initramfs(appliance) -> Path:
    return appliance["initramfs"]


@pytest.fixture(scope="module")
def smoke(kernel, initramfs, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("smoke")
    recorder = E.Recorder()
    result = run(Plan(kernel=kernel, initramfs=initramfs, run_dir=run_dir), recorder)
    return result, recorder, run_dir


def test_smoke_passes(smoke):
    result, _, run_dir = smoke
    assert result.status == "pass", f"{result.reason}\n(run dir {run_dir})"
    assert result.exit_code == 0
    assert [c.status for c in result.checks()] == ["pass"] * 7


def test_smoke_events_in_order(smoke):
    _, recorder, _ = smoke
    kinds = [type(e).__name__ for e in recorder.events]
    for earlier, later in [("RunStart", "BootStart"), ("BootStart", "BootEnd"), ("BootEnd", "AgentReady"),
                           ("AgentReady", "DiskPlugged"), ("DiskPlugged", "DiskUnplugged"),
                           ("DiskUnplugged", "Verdict")]:
        assert kinds.index(earlier) < kinds.index(later)
    assert kinds[-1] == "Verdict"


def test_smoke_run_dir(smoke):
    result, _, run_dir = smoke
    for name in ("console.log", "qemu.log", "qemu.argv", "qmp.jsonl", "agent.log", "events.jsonl",
                 "results.json", "junit.xml"):
        assert (run_dir / name).is_file(), name
    assert "Run /init as init process" in (run_dir / "console.log").read_text(errors="replace")
    qmp = [json.loads(line) for line in (run_dir / "qmp.jsonl").read_text().splitlines()]
    deleted = [e["event"]["data"] for e in qmp if e.get("event", {}).get("event") == "DEVICE_DELETED"]
    assert {"device": "smoke0", "path": "/machine/peripheral/smoke0"} in deleted
    assert any(e.get("execute") == "device_add" for e in qmp)
    assert '"method":"ping"' in (run_dir / "agent.log").read_text()
    assert json.loads((run_dir / "results.json").read_text())["status"] == result.status
    ET.parse(run_dir / "junit.xml")
    assert result.boot_seconds is not None and result.agent_seconds >= result.boot_seconds
    assert len(result.timings["hotplug_visible_s"]) == 1 and len(result.timings["unplug_deleted_s"]) == 1


def test_launch_failure_explains_itself(tmp_path):
    spec = MachineSpec(qemu="qemu-system-x86_64", kernel=tmp_path / "missing-bzImage", accel="tcg")
    with pytest.raises(LaunchFailure) as info:
        with Machine(spec, tmp_path / "run"):
            pass
    failure = info.value
    assert failure.exitcode not in (None, 0)
    assert str(tmp_path / "missing-bzImage") in failure.output
    assert failure.argv[0] == "qemu-system-x86_64" and "-kernel" in failure.argv


def test_a_boot_that_stops_progressing_says_where_each_vcpu_is(kernel, initramfs, tmp_path):
    """A boot timeout carries each vCPU's RIP, interrupt flag and halt state, and vcpus.txt
    every register, twice: how the 7.3 clocksource-watchdog deadlock was read
    (docs/boot-hang.md). Here the awaited line never comes but the guest is fine, busy or
    idle, so the report must not say they wait on each other."""
    spec = MachineSpec(qemu="qemu-system-x86_64", kernel=kernel, initrd=initramfs, accel="tcg")
    with pytest.raises(BootError) as info:
        with Machine(spec, tmp_path / "run", Timeouts(boot=15.0)) as vm:
            vm.wait_boot(re.compile("a line no kernel prints"))
    text = str(info.value)
    for cpu in (0, 1):
        assert re.search(rf"^vCPU {cpu}: RIP 0x[0-9a-f]{{16}}, interrupts o(n|ff), (running|halted \(idle\))",
                         text, re.M), text
    assert "waiting on each other" not in text
    registers = (tmp_path / "run" / "vcpus.txt").read_text()
    assert registers.count("CPU#0") == 2 and registers.count("CPU#1") == 2


def _cpio_newc(files: dict[str, tuple[int, bytes]]) -> bytes:
    """A minimal newc archive, name -> (perm, data), by the initramfs builder's own writer."""
    buf = io.BytesIO()
    writer = CpioWriter(buf)
    for name, (perm, data) in files.items():
        writer.add_file(name, data, perm)
    writer.close()
    return buf.getvalue()


def test_guest_panic_fails_the_run_with_the_excerpt(kernel, tmp_path):
    """An /init that cannot execute: the kernel panics ("No working init found")."""
    initrd = tmp_path / "broken-init.cpio.gz"
    initrd.write_bytes(gzip.compress(_cpio_newc({"init": (0o755, b"not an executable\n")})))
    result = run(Plan(kernel=kernel, initramfs=initrd, run_dir=tmp_path / "run"))
    assert result.status == "fail"
    assert result.findings and result.findings[0].kind == "panic"
    assert "No working init found" in result.findings[0].title
    assert result.reason.startswith("console: kernel panic")
    assert result.qemu_exitcode == 1  # pvpanic + -action panic=exit-failure
