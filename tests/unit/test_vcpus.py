"""vCPU states out of ``info registers -a`` (host/vblk_ci/machine/vcpus.py), on a real hang's recording."""

from __future__ import annotations

from pathlib import Path

from vblk_ci.machine.vcpus import VcpuState, describe, parse_registers

DATA = Path(__file__).parent / "data" / "vcpus"


def _samples(name: str = "boot-hang-watchdog-skew-7.3.txt") -> tuple[str, str]:
    text = (DATA / name).read_text()
    first, second = text.split("=" * 60)
    return first, second


def test_each_cpu_block_gives_rip_interrupt_flag_and_halt():
    first, _ = _samples()
    assert parse_registers(first) == [
        VcpuState(0, 0xffffffff810c08ad, 0x93, False),
        VcpuState(1, 0xffffffff810d2056, 0x46, False),
    ]
    assert not any(s.interrupts_on for s in parse_registers(first))


def test_the_recorded_hang_reads_as_a_deadlock():
    first, second = _samples()
    text = describe(parse_registers(first), parse_registers(second))
    assert text.splitlines() == [
        "vCPU 0: RIP 0xffffffff810c08ad, interrupts off, running (same RIP both times)",
        "vCPU 1: RIP 0xffffffff810d2056, interrupts off, running (same RIP both times)",
        "every vCPU ran with interrupts off in both samples: they are waiting on each other",
    ]


def test_the_second_recorded_hang_too_though_one_rip_moved():
    # CPU 1 loops in multi_cpu_stop(): sampled at two places of the loop.
    first, second = _samples("boot-hang-watchdog-skew-7.3-second.txt")
    lines = describe(parse_registers(first), parse_registers(second)).splitlines()
    assert lines[0].endswith("interrupts off, running (same RIP both times)")
    assert lines[1] == "vCPU 1: RIP 0xffffffff810b0640, interrupts off, running"
    assert lines[2].endswith("they are waiting on each other")


def test_an_idle_guest_is_not_called_a_deadlock():
    halted = "CPU#0\nRIP=ffffffff81001000 RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1\n" \
             "CPU#1\nRIP=ffffffff81001000 RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1\n"
    states = parse_registers(halted)
    assert [s.halted and s.interrupts_on for s in states] == [True, True]
    text = describe(states, states)
    assert "waiting on each other" not in text and "same RIP" not in text
    assert text.splitlines()[0] == "vCPU 0: RIP 0xffffffff81001000, interrupts on, halted (idle)"


def test_one_cpu_with_interrupts_on_is_not_called_stuck():
    first, _ = _samples()
    before = parse_registers(first)
    after = [before[0], VcpuState(1, before[1].rip, before[1].rflags | 0x200, False)]
    assert "waiting on each other" not in describe(before, after)


def test_text_without_registers_gives_nothing():
    assert parse_registers("") == []
    assert parse_registers("CPU#0\n(no registers)\n") == []
    assert describe([], []) == ""
