"""The console failure-pattern table.

Each row: a kind, the regex that starts a report (searched in one console line
with its printk timestamp already stripped), and how to title it. Titles are
normalised (no addresses, offsets, pids or task numbers) so that the same bug
seen twice gives the same title. Order matters: the first matching row wins, so
specific rows come before the generic ``BUG: `` row.

Titles follow syzkaller's wording ("WARNING in f", "KASAN: slab-use-after-free Read
in f", "INFO: task hung in f", "kernel panic: ..."). They may contain ``{rip}`` (the
function in the report's ``RIP:`` line), ``{at}`` (the first ``at: func`` of a lockdep
report), ``{frame}`` (the first interesting call-trace frame), ``{where}`` (``{rip}``
when the report has a RIP line, else ``{frame}``) or ``{1}``, ``{2}``… (regex groups);
``classify`` fills them in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


EXCERPT_LINES = 60


@dataclass(frozen=True)
class Pattern:
    kind: str
    regex: re.Pattern[str]
    title: str
    max_lines: int = EXCERPT_LINES  # excerpt cap when no end marker comes first


def _p(kind: str, regex: str, title: str, max_lines: int = EXCERPT_LINES) -> Pattern:
    return Pattern(kind, re.compile(regex), title, max_lines)


PATTERNS: tuple[Pattern, ...] = (
    # KASAN/KFENCE reports (alloc + free stacks, shadow dump) end with a "=====" rule.
    _p("kasan", r"BUG: KASAN: ([\w-]+) in (\S+)", "KASAN: {1} {access}in {2}", max_lines=150),
    _p("kfence", r"BUG: KFENCE: ([\w -]+?) in (\S+)", "KFENCE: {1} in {2}", max_lines=150),
    _p("null-deref", r"BUG: kernel NULL pointer dereference", "BUG: kernel NULL pointer dereference in {rip}"),
    _p("page-fault", r"BUG: unable to handle (page fault|kernel paging request)", "BUG: unable to handle page fault in {rip}"),
    _p("gpf", r"general protection fault", "general protection fault in {rip}"),
    _p("lockup", r"BUG: (soft|hard)?\s*lockup", "BUG: {1} lockup in {rip}"),
    _p("lockup", r"[Ww]atchdog detected hard LOCKUP on cpu", "BUG: hard lockup in {rip}"),
    _p("hung-task", r"INFO: task \S+ blocked for more than \d+ seconds", "INFO: task hung in {frame}"),
    _p("rcu-stall", r"rcu: INFO: rcu_\w+ (detected stalls?|self-detected stall)", "INFO: rcu detected stall in {where}"),
    _p("lockdep", r"WARNING: possible (recursive locking|circular locking dependency) detected", "possible deadlock in {at}"),
    _p("lockdep", r"WARNING: (inconsistent lock state|possible irq lock inversion dependency detected|suspicious RCU usage)", "WARNING: {1} in {frame}"),
    _p("ubsan", r"UBSAN: ([\w-]+) in (\S+?)(?::\d+)*$", "UBSAN: {1} in {2}"),
    _p("warning", r"WARNING: CPU: \d+ PID: \d+ at \S+ (\S+)", "WARNING in {1}"),
    _p("warning", r"WARNING: CPU: \d+ PID: \d+ at ", "WARNING in {rip}"),
    _p("bug", r"kernel BUG at (\S+?):\d+", "kernel BUG in {rip}"),
    _p("oops", r"Oops: ", "Oops in {rip}"),
    _p("panic", r"Kernel panic - not syncing: (.*)", "kernel panic: {1}"),
    _p("bug", r"BUG: (sleeping function called from invalid context|scheduling while atomic)",
       "BUG: {1} in {frame}"),
    # lockdep's other reports: "[ BUG: Invalid wait context ]", "[ BUG: bad unlock balance detected! ]"...
    _p("lockdep", r"\[ BUG: (.+?)!? \]$", "BUG: {1} in {at}"),
    _p("bug", r"BUG: (.+)", "BUG: {1}"),
)

# A report's excerpt ends at (and includes) one of these lines, or after max_lines lines.
END_MARKERS = re.compile(r"---\[ end (trace|Kernel panic)|^={20,}$")
# A line that belongs just before a report's first line.
CUT_HERE = re.compile(r"-+\[ cut here \]-+")

# printk prefix: "[    1.234567] " and, with CONFIG_PRINTK_CALLER, "[    T1] ".
TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\](?:\[\s*[TC]\d+\])?\s?")

RIP = re.compile(r"RIP: [0-9a-f]{4}:(\S+)")
LOCKDEP_AT = re.compile(r", at: (\S+)")
FRAME = re.compile(r"^\s*(?:\? )?([A-Za-z_][\w.]*)\+(0x[0-9a-f]+)/(0x[0-9a-f]+)")

# Call-trace frames that say nothing about where a task hung or stalled.
BORING_FRAMES = frozenset(
    """
    __schedule schedule schedule_timeout schedule_preempt_disabled io_schedule io_schedule_timeout
    __wait_for_common wait_for_common wait_for_completion wait_for_completion_io
    wait_for_completion_timeout wait_for_completion_io_timeout wait_for_completion_killable
    __mutex_lock mutex_lock __mutex_lock_slowpath mutex_lock_nested rwsem_down_read_slowpath
    rwsem_down_write_slowpath down_read down_write __down_common __down
    dump_stack dump_stack_lvl show_stack sched_show_task rcu_dump_cpu_stacks print_cpu_stall
    __might_resched ___might_resched __might_sleep __might_fault msleep usleep_range_state __cant_sleep
    schedule_timeout_uninterruptible schedule_timeout_interruptible __schedule_bug
    panic vpanic check_panic_on_warn
    check_cpu_stall rcu_sched_clock_irq update_process_times tick_sched_handle tick_nohz_handler
    tick_sched_timer __hrtimer_run_queues hrtimer_interrupt __sysvec_apic_timer_interrupt
    sysvec_apic_timer_interrupt asm_sysvec_apic_timer_interrupt
    ret_from_fork ret_from_fork_asm kthread worker_thread process_one_work
    """.split()
)
