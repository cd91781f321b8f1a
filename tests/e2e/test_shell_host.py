"""End to end: ``vblk-ci shell`` driven through a pseudo-terminal as a user would.

Boots the appliance with a disk, runs commands in the guest's console shell, switches
to the QMP prompt with Ctrl-], queries and unplugs the disk, returns to the console and
sees the disk gone, then exits the guest shell (init powers off, QEMU exits, session ends).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pexpect
import pytest

pytestmark = pytest.mark.e2e
HOST = str(Path(__file__).resolve().parents[2] / "host")
PROMPT = r"\(qmp\) "


def test_shell_console_and_qmp_prompt(appliance, tmp_path):
    child = pexpect.spawn(
        sys.executable,
        ["-m", "vblk_ci.cli", "shell", "--kernel", str(appliance["kernel"]), "--initramfs",
         str(appliance["initramfs"]), "--memory", "768",
         "--out", str(tmp_path / "run"), "--disk", f"id=d0,backend=file,path={tmp_path / 'd0.raw'},size=16M"],
        env={**os.environ, "PYTHONPATH": HOST}, encoding="utf-8", codec_errors="replace", timeout=120,
    )
    try:
        child.expect_exact("vblk.shell given")
        child.send("\r")
        child.expect(r"[#$] ")
        child.send("echo sum=$((6*7))\r")
        child.expect_exact("sum=42")
        child.send("cat /sys/block/vda/serial; echo\r")
        child.expect_exact("vblk-d0")

        child.sendcontrol("]")
        child.expect(PROMPT)
        child.sendline("query-status")
        child.expect_exact('"status": "running"')
        child.expect(PROMPT)
        child.sendline("device_del {bad")
        child.expect_exact("error: arguments are not JSON")
        child.expect(PROMPT)
        child.sendline("no_such_command")
        child.expect_exact("CommandNotFound")
        child.expect(PROMPT)
        child.sendline('device_del {"id": "d0"}')
        child.expect_exact('"return": {}')
        child.expect(PROMPT)
        # The guest acks the unplug a moment later: look again until the event is there.
        for _ in range(20):
            child.sendline("events")
            if child.expect_exact(['"event": "DEVICE_DELETED"', "(no new events)"]) == 0:
                break
            child.expect(PROMPT)
            time.sleep(0.5)
        else:
            pytest.fail("no DEVICE_DELETED event after device_del")
        child.expect(PROMPT)
        child.sendline("console")
        child.expect_exact("back to the guest console")

        child.send("ls /sys/block/; echo done-listing\r")
        child.expect_exact("done-listing")
        child.expect(r"[#$] ")
        assert "vda" not in child.before
        child.send("exit\r")
        child.expect_exact("[vblk-ci] QEMU exited with code 0")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    assert "sum=42" in (tmp_path / "run" / "console.log").read_text(errors="replace")
    assert '"device_del"' in (tmp_path / "run" / "qmp.jsonl").read_text()
