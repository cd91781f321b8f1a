"""The live console drain and its watcher, over a socketpair standing in for QEMU."""

from __future__ import annotations

import re
import socket
import time

from vblk_ci.console.drain import Console


def make():
    qemu, ours = socket.socketpair()
    return qemu, Console(ours)


def test_wait_for_mark_and_partial_lines():
    qemu, console = make()
    try:
        qemu.sendall(b"[    0.1] Linux version 6.12\r\n[    1.7] Run /init as ")
        assert console.wait_for(re.compile(r"Run /\S* as init process"), 0.3) is None
        qemu.sendall(b"init process\r\nvblk-ci: init started\r\n~ # ")
        m = console.wait_for(re.compile(r"Run (/\S*) as init process"), 5)
        assert m and m.group(1) == "/init"
        assert console.wait_for(re.compile(r"~ # $"), 5), "prompts without a newline are seen too"
        mark = console.mark()
        assert console.wait_for(re.compile("Linux version"), 0.2, mark=mark) is None
        qemu.sendall(b"after mark\r\n")
        assert console.wait_for(re.compile("after mark"), 5, mark=mark)
        assert console.text_since(mark).startswith("after mark")
        assert console.line_time(re.compile("init started")) is not None
        assert "vblk-ci: init started" in console.tail(3)
        assert not console.crashed.is_set()
    finally:
        console.close()
        qemu.close()


def test_watcher_flags_a_report_and_classifies_it():
    qemu, console = make()
    try:
        qemu.sendall(b"[    5.0] ------------[ cut here ]------------\r\n"
                     b"[    5.1] WARNING: CPU: 0 PID: 9 at drivers/block/virtio_blk.c:10 virtblk_probe+0x1/0x2\r\n")
        assert console.crashed.wait(5)
        assert "WARNING: CPU: 0" in console.first_hit
        qemu.sendall(b"[    5.2] ---[ end trace 0000000000000000 ]---\r\n")
        deadline = time.monotonic() + 5
        while "end trace" not in console.text() and time.monotonic() < deadline:
            time.sleep(0.01)
        (finding,) = console.findings()
        assert finding.title == "WARNING in virtblk_probe"
        assert finding.excerpt.splitlines()[-1].startswith("---[ end trace")
    finally:
        console.close()
        qemu.close()


def test_eof_ends_waits_and_close_is_idempotent():
    qemu, console = make()
    qemu.sendall(b"last words")
    qemu.close()
    started = time.monotonic()
    assert console.wait_for(re.compile("never"), 10) is None
    assert time.monotonic() - started < 5
    assert console.eof
    assert console.tail(1) == "last words", "an unterminated last line is kept at EOF"
    console.close()
    console.close()


def test_abort_callback_stops_a_wait():
    qemu, console = make()
    try:
        started = time.monotonic()
        assert console.wait_for(re.compile("never"), 30, abort=lambda: time.monotonic() - started > 0.3) is None
        assert time.monotonic() - started < 3
    finally:
        console.close()
        qemu.close()
