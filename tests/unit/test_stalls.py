"""Which RCU stall the e2e driver suite may run again: only the idle-CPU timer stall
(host/vblk_ci/console/stalls.py), never one that could be a driver hang."""

from __future__ import annotations

from pathlib import Path

from vblk_ci.console.classify import classify
from vblk_ci.console.stalls import idle_timer_stall

DATA = Path(__file__).parent / "data" / "console"
IDLE_TIMER = (DATA / "016-rcu-stall-idle-timer-handwritten").read_text().split("\n\n", 1)[1]
BUSY_CPU0 = """NMI backtrace for cpu 0
CPU: 0 UID: 0 PID: 97 Comm: vblk-engine Not tainted 6.12.118 #2
RIP: 0010:virtblk_poll+0x5c/0x1e0
Call Trace:
 <NMI>
 </NMI>
 <TASK>
 blk_hctx_poll+0x30/0xc0
 blk_rq_poll+0x2c/0x60
 virtblk_uring_cmd_iopoll+0x41/0x70
 io_do_iopoll+0xf6/0x3a0
 </TASK>"""


def _only(text: str):
    findings = classify(text)
    assert len(findings) == 1, [f.title for f in findings]
    return findings[0]


def test_the_idle_timer_stall_matches():
    assert idle_timer_stall(_only(IDLE_TIMER))


def test_a_stall_on_a_busy_cpu_in_the_driver_does_not():
    busy = IDLE_TIMER.replace("NMI backtrace for cpu 0 skipped: idling at default_idle+0x13/0x20", BUSY_CPU0)
    assert "virtblk_poll" in _only(busy).excerpt
    assert not idle_timer_stall(_only(busy))


def test_an_io_frame_anywhere_in_the_report_is_enough_to_refuse():
    with_io = IDLE_TIMER.replace(" rcu_gp_fqs_loop+0x1a9/0x8e0", " rcu_gp_fqs_loop+0x1a9/0x8e0\n io_uring_cmd_done+0x21/0x90")
    assert not idle_timer_stall(_only(with_io))


def test_the_timer_cpu_must_be_the_idle_one():
    other = IDLE_TIMER.replace("Possible timer handling issue on cpu=0", "Possible timer handling issue on cpu=1")
    assert not idle_timer_stall(_only(other))


def test_real_stalls_and_other_reports_do_not():
    for name in ("107-real-rcu-stall-default", "106-real-soft-lockup-default", "009-rcu-stall"):
        for finding in classify((DATA / name).read_text().split("\n\n", 1)[1]):
            assert not idle_timer_stall(finding), (name, finding.title)


REAL_73 = (DATA / "119-real-rcu-stall-idle-timer-default-7.3").read_text().split("\n\n", 1)[1]


def test_the_recorded_7_3_stall_with_a_printed_idle_backtrace_matches():
    assert idle_timer_stall(_only(REAL_73))


def test_a_printed_backtrace_of_a_busy_cpu_does_not():
    busy = REAL_73.replace("RIP: 0010:pv_native_safe_halt+0x17/0x20", "RIP: 0010:virtblk_poll+0x5c/0x1e0")
    assert not idle_timer_stall(_only(busy))
    # in the idle function but not under do_idle (a halt elsewhere): not the idle loop
    elsewhere = REAL_73.replace("do_idle+0xba/0x190", "some_wait+0xba/0x190")
    assert not idle_timer_stall(_only(elsewhere))
    # idle, but the timer was another CPU's
    other = REAL_73.replace("Possible timer handling issue on cpu=1", "Possible timer handling issue on cpu=0")
    assert not idle_timer_stall(_only(other))
