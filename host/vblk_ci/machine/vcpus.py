"""Where each vCPU is when a guest stops making progress: HMP ``info registers -a``, parsed.

A guest that hangs before init prints nothing more, so the console alone cannot say
whether it deadlocked, spun or sat idle. QEMU still knows: each CPU's RIP, whether
interrupts are on (RFLAGS.IF) and whether it is halted (HLT=1 is the idle loop). Every
CPU running with interrupts off, twice seconds apart, is CPUs waiting on each other: none
can take the IPI or the tick another waits for. The RIPs go through the kernel's
System.map or ``scripts/faddr2line``.

Pure functions over the monitor's text; ``tests/unit/test_vcpus.py`` runs them on
a recording of a real hang.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_CPU = re.compile(r"^CPU#(\d+)\s*$", re.M)
_RIP = re.compile(r"\bRIP=([0-9a-f]+) RFL=([0-9a-f]+)\b.*?\bHLT=(\d)", re.S)
_IF = 1 << 9


@dataclass(frozen=True)
class VcpuState:
    index: int
    rip: int
    rflags: int
    halted: bool

    @property
    def interrupts_on(self) -> bool:
        return bool(self.rflags & _IF)

    def describe(self) -> str:
        what = "halted (idle)" if self.halted else "running"
        irqs = "interrupts on" if self.interrupts_on else "interrupts off"
        return f"vCPU {self.index}: RIP {self.rip:#018x}, {irqs}, {what}"


def parse_registers(text: str) -> list[VcpuState]:
    """One state per ``CPU#N`` block of ``info registers -a``; blocks without RIP are left out."""
    heads = list(_CPU.finditer(text))
    states = []
    for head, nxt in zip(heads, heads[1:] + [None]):
        block = text[head.end(): nxt.start() if nxt else len(text)]
        m = _RIP.search(block)
        if m:
            states.append(VcpuState(int(head.group(1)), int(m.group(1), 16), int(m.group(2), 16), m.group(3) == "1"))
    return states


def describe(before: list[VcpuState], after: list[VcpuState]) -> str:
    """The states at two moments, one line per vCPU, saying which did not move between them."""
    was = {s.index: s for s in before}
    lines = []
    for s in after:
        old = was.get(s.index)
        still = old is not None and old.rip == s.rip and not s.halted
        lines.append(s.describe() + (" (same RIP both times)" if still else ""))
    # Interrupts off on every CPU in both samples: none can take the IPI or timer that the
    # others wait for. One CPU idle or with interrupts on is only a slow guest.
    busy = [s for s in after if not s.halted and not s.interrupts_on
            and s.index in was and not was[s.index].halted and not was[s.index].interrupts_on]
    if len(busy) == len(after) > 1:
        lines.append("every vCPU ran with interrupts off in both samples: they are waiting on each other")
    return "\n".join(lines)
