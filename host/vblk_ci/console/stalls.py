"""The one RCU stall that is not a verdict on the driver: a guest timer that never fired.

Seen once (2026-11-26, debug kernel, host QEMU 7.2, TCG, a loaded 2-core host): the RCU
grace-period kthread slept on a timer of CPU 0, CPU 0 sat idle and the timer did not fire
for 26 s, so RCU reported a stall. The kernel's report says so itself
(kernel/rcu/tree_stall.h): "<flavour> kthread timer wakeup didn't happen", "Possible timer
handling issue on cpu=N", and the NMI backtrace of that CPU is skipped because it is
"idling at" the idle loop (lib/nmi_backtrace.c). A driver hang looks different: the stalled
CPU is busy, and its stack or the stall's other stacks show the driver, the block layer or
io_uring. Only a report with all three lines and none of those frames matches.

Seen again 2026-11-30 on the default 7.3 kernel (QEMU 10.0, TCG, the 2-core host running two
guests and a test suite): there the NMI backtrace of the timer's CPU is printed, not skipped,
and shows it halted in the idle loop (RIP in ``pv_native_safe_halt``, ``do_idle`` below), which
counts as idle too.
"""

from __future__ import annotations

import re

from .classify import Finding

_TIMER_WAKEUP = re.compile(r"kthread timer wakeup didn't happen for \d+ jiffies")
_TIMER_CPU = re.compile(r"Possible timer handling issue on cpu=(\d+)")
_IDLING = re.compile(r"NMI backtrace for cpu (\d+) skipped: idling at ")
# A printed NMI backtrace: the CPU's number, then its lines up to the next backtrace or report line.
_BACKTRACE = re.compile(r"NMI backtrace for cpu (\d+)\n(.*?)(?=NMI backtrace for cpu|\n\S*rcu: |\Z)", re.S)
_IDLE_RIP = re.compile(r"RIP: \w+:(pv_native_safe_halt|native_safe_halt|default_idle|acpi_safe_halt|"
                       r"acpi_idle_do_entry|intel_idle\w*|mwait_idle\w*|cpu_idle_poll)\+0x")
# Frames that would tie the stall to I/O: the driver, blk-mq (polling included), io_uring.
_IO_FRAMES = re.compile(r"\b(virtblk_\w+|virtio_blk\w*|vblk\w*|blk_mq_\w+|blk_rq_poll\w*|bio_poll|io_uring\w*|"
                        r"io_\w*(poll|issue|cmd)\w*)\+0x")


def idle_timer_stall(finding: Finding) -> bool:
    """True for an RCU stall whose cause the kernel names as a timer that did not fire on a CPU
    that was idle, with no I/O frame anywhere in the report."""
    if finding.kind != "rcu-stall" or not _TIMER_WAKEUP.search(finding.excerpt):
        return False
    timer_cpu = _TIMER_CPU.search(finding.excerpt)
    if timer_cpu is None:
        return False
    idle_cpus = {m.group(1) for m in _IDLING.finditer(finding.excerpt)}
    idle_cpus |= {m.group(1) for m in _BACKTRACE.finditer(finding.excerpt)
                  if _IDLE_RIP.search(m.group(2)) and "do_idle+0x" in m.group(2)}
    return timer_cpu.group(1) in idle_cpus and not _IO_FRAMES.search(finding.excerpt)
