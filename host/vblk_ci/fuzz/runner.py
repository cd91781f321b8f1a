"""The fuzz campaign: boot the VM, plug the disks, run generated programs until the
budget is spent, judge each, shrink each new finding and write it out.

``run_campaign(plan, emit)`` and ``run_replay(plan, emit)`` never print: they emit
events (``Note`` lines) and return the record that is also written to
``<out>/fuzz.json`` (or ``replay.json``). The VM's logs go to ``<out>/vm-N/`` (a
new one after each crash or hang, which also reboots the guest). The disks are raw
files in ``<out>/images/``, so their contents, and the model of them, survive a
reboot.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import random
import re
import shlex
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from .. import __version__
from .. import events as E
from ..disks.capacity import wait_guest_sectors
from ..disks.spec import DiskSpec, create_sparse_file
from ..errors import AgentError, BootError, InfraError, MissingPrerequisite, QmpError
from ..faults import make_fault
from ..kernel_features import HAS_RESET_PREPARE, pci_function
from ..machine.accel import choose
from ..machine.argv import MachineSpec, kernel_cmdline
from ..machine.machine import Machine, Timeouts
from ..machine.qemuinfo import DEFAULT_QEMU, probe_caps, resolve_binary
from .generator import USER_ID, generate
from .judge import Finding, Verdict, abi_signature, judge
from .model import DiskModel
from .program import T_DISCARD, T_IN, T_OUT, Program, parse
from .repro import write_repro_c
from .shrink import shrink
from .table import SYSFS_PATHS, DiskConfig

EXECUTOR = "/usr/bin/vblk-engine"
EXECUTOR32 = "/usr/bin/vblk-engine32"  # the same executor built for i386: programs with "# abi i386"
CHAIN_TIMEOUT_MS = 20000  # the executor's own limit for one chain to complete
PROGRAM_TIMEOUT_S = 90.0  # the agent's limit for one program (TCG; scaled)
PAUSE_S = 0.3  # --faults stop-cont: how long the VM stays stopped
RESIZE_WAIT_S = 20.0  # --faults resize: how long the guest may take to see the disk's size again
RESET_WAIT_S = 30.0  # --faults reset: how long the device reset may take once the program is done
FAULT_KINDS = ("stop-cont", "blkdebug-eio", "unplug", "unplug-iopoll", "resize", "reset", "system-reset")
BLKDEBUG_OPS = {"read": frozenset({T_IN}), "write": frozenset({T_OUT}), "discard": frozenset({T_DISCARD})}
OOM = re.compile(r"\S+ invoked oom-killer: [^\n]*")


def fuzz_disks(images: Path) -> list[DiskSpec]:
    """Three configurations: 512-byte blocks with discard and write-zeroes; 4 KiB blocks
    without them; a read-only disk. Each has a poll queue (one of its two queues), so a
    program on an IOPOLL ring really polls. The same count on every disk: virtio_blk reads
    the module parameter again when a device reset rebuilds the virtqueues."""
    return [
        DiskSpec(id="fz0", serial="fuzz-d0", backend="file", path=images / "fz0.img", size_bytes=16 << 20,
                 logical_block_size=512, discard=True, write_zeroes=True, guest_poll_queues=1).validate(),
        DiskSpec(id="fz1", serial="fuzz-d1", backend="file", path=images / "fz1.img", size_bytes=8 << 20,
                 logical_block_size=4096, discard=False, write_zeroes=False, guest_poll_queues=1).validate(),
        DiskSpec(id="fz2", serial="fuzz-ro", backend="file", path=images / "fz2.img", size_bytes=4 << 20,
                 read_only=True, guest_poll_queues=1).validate(),
    ]


def guest_cmdline(disks: list[DiskSpec]) -> tuple[str, ...]:
    """virtio_blk's queue parameters for the fuzz disks, on the kernel command line, where they
    hold for every probe alike: hot-plug, device reset, and the boot-time probe after a system
    reset, which no write to /sys/module can come before. They are global, so the disks must
    agree on them."""
    values = {(d.guest_poll_queues, d.guest_num_request_queues) for d in disks}
    if len(values) != 1:
        raise ValueError(f"the fuzz disks disagree on virtio_blk's queue parameters: {sorted(values)}")
    poll, request = values.pop()
    return (f"virtio_blk.poll_queues={poll}", f"virtio_blk.num_request_queues={request}")


@dataclass(frozen=True)
class FuzzPlan:
    kernel: Path
    initramfs: Path
    out: Path
    seed: int = 1
    budget_s: float = 300.0
    max_programs: int | None = None  # stop after this many programs (CI: a fixed amount of work)
    qemu: str = DEFAULT_QEMU
    accel: str = "auto"
    smp: int = 2
    memory_mb: int = 1024
    max_steps: int = 24
    shrink_runs: int = 30
    replay: Path | None = None
    faults: tuple[str, ...] = ()  # host faults interleaved with programs: FAULT_KINDS
    disable: tuple[str, ...] = ()  # mutations never drawn (a known crash that would cost a reboot per hit)


class StopCont(threading.Thread):
    """Pause the VM ``delay`` seconds after start, for ``PAUSE_S``, over QMP."""

    def __init__(self, machine: Machine, delay: float):
        super().__init__(name="fuzz-stop-cont", daemon=True)
        self.machine = machine
        self.delay = delay
        self.error: str | None = None

    def run(self) -> None:
        time.sleep(self.delay)
        try:
            self.machine.qmp("stop")
            time.sleep(PAUSE_S)
        except (QmpError, InfraError, OSError) as exc:
            self.error = str(exc)
        finally:
            try:
                self.machine.qmp("cont")
            except (QmpError, InfraError, OSError) as exc:
                self.error = self.error or str(exc)


class BlkdebugEio:
    """--faults blkdebug-eio: for the whole program, QEMU fails the disk's requests of one
    type (read, write or discard) with EIO (blkdebug, as the faults suite's blkdebug-error):
    those commands may complete with the device's IOERR status, and what a failed write or
    discard left on the disk is unknown to the model."""

    def __init__(self, machine: Machine, disk: DiskSpec, op: str):
        self.machine = machine
        self.op = op
        self.fault = make_fault("blkdebug-error", disk, {"op": op, "errno": 5})
        self.error: str | None = None

    @property
    def device_errors(self) -> frozenset[int]:
        return BLKDEBUG_OPS[self.op]

    def start(self) -> None:
        self.fault.arm(self.machine)

    def join(self) -> None:
        try:
            self.fault.disarm(self.machine)
        except (QmpError, InfraError, OSError) as exc:
            self.error = str(exc)


class Unplug(threading.Thread):
    """--faults unplug: ``delay`` seconds into the program, hot-unplug its disk (device_del,
    DEVICE_DELETED, blockdev-del) with the executor's fd open and commands in flight; the
    campaign plugs it back after the program."""

    def __init__(self, machine: Machine, disk_id: str, delay: float):
        super().__init__(name="fuzz-unplug", daemon=True)
        self.machine = machine
        self.disk_id = disk_id
        self.delay = delay
        self.error: str | None = None
        self.seconds: float | None = None

    def run(self) -> None:
        time.sleep(self.delay)
        try:
            self.seconds = self.machine.unplug(self.disk_id)
        except (QmpError, InfraError, OSError, ValueError) as exc:
            self.error = str(exc)


class DeviceReset:
    """--faults reset: ``delay`` seconds into the program, a reset of its disk's device with
    the executor's commands in flight: a PCIe function-level reset through the guest's
    ``/sys/bus/pci/devices/<dev>/reset``, which virtio-pci hands to virtio_blk's
    reset_prepare (freeze the queue, reset the device, delete the virtqueues) and
    reset_done (new virtqueues, unquiesce). QMP has no reset for one device (MachineReset
    resets the whole VM, which the old guest's driver never sees). A reset must change no
    result: the freeze waits for every request the device holds.

    The guest's shell runs it beside the executor (the agent runs one call at a time):
    ``command()`` wraps the executor's argv; ``join()`` waits for the reset's exit status."""

    RC = "/tmp/vblk-fuzz-reset.rc"

    def __init__(self, machine: Machine, guest_name: str, delay: float, wait_s: float):
        self.machine = machine
        self.guest_name = guest_name
        self.delay = delay
        self.wait_s = wait_s
        self.error: str | None = None  # the reset did not happen (the guest refused it)
        self.stuck: str = ""  # it never returned: the driver's reset_prepare/done hung

    def start(self) -> None:
        self.machine.agent.exec(cmd=f"rm -f {self.RC}")

    def command(self, argv: list[str]) -> str:
        reset = (f"(sleep {self.delay:.3f}; echo 1 > {pci_function(self.guest_name)}/reset; echo $? > {self.RC}.new; "
                 f"mv {self.RC}.new {self.RC}) </dev/null >/dev/null 2>&1 &")
        return f"{reset} exec {shlex.join(argv)}"

    def join(self) -> None:
        tries = max(1, int(self.wait_s / 0.1))
        try:
            res = self.machine.agent.exec(
                cmd=f"for i in $(seq {tries}); do [ -f {self.RC} ] && exec cat {self.RC}; sleep 0.1; done; exit 1",
                timeout_s=self.wait_s + 10.0)
        except (AgentError, OSError) as exc:  # the guest went down: its console says why
            self.stuck = f"the guest agent did not answer after the reset of {self.guest_name}'s device: {exc}"
            return
        if res.get("rc") != 0:
            self.stuck = (f"the reset of {self.guest_name}'s device {self.delay:.2f} s into the program "
                          f"had not returned {self.wait_s:.0f} s (scaled) after it")
        elif res.get("stdout", "").strip() != "0":
            self.error = f"writing 1 to {self.guest_name}'s PCI reset exited {res.get('stdout', '').strip()}"


class MachineReset(threading.Thread):
    """--faults system-reset: ``delay`` seconds into the program, QMP ``system_reset``: the
    guest reboots with the program's commands in flight. QEMU keeps the disks and what it
    wrote to their files. The program's results go with the old agent (``Restarted``), so
    what it wrote is unknown to the model; what earlier programs wrote must still be there,
    which the next programs' reads check. ``mark``: the console before the reset."""

    def __init__(self, machine: Machine, delay: float):
        super().__init__(name="fuzz-system-reset", daemon=True)
        self.machine = machine
        self.delay = delay
        self.fault = make_fault("system-reset")
        self.mark: int | None = None  # set when the reset was sent
        self.error: str | None = None  # QEMU refused it

    def run(self) -> None:
        time.sleep(self.delay)
        self.mark = self.machine.console.mark()
        try:
            self.fault.arm(self.machine)
        except (QmpError, InfraError, OSError) as exc:
            self.error = str(exc)


class Resize(threading.Thread):
    """--faults resize: grow the program's disk by ``extra`` sectors, or shrink it (``extra`` < 0)
    (block_resize; the guest gets a config-change interrupt and sets the new capacity).
    ``delay`` None: before the program (grow only), waiting until the guest shows the new size
    (``wait_size``), so every command must see it; else ``delay`` seconds into the program,
    with commands in flight, so a command between the two ends may see either capacity. After
    the program the campaign puts the disk back to its size and waits for the guest to show
    it; what a shrink cut off reads as zeros then (QEMU truncates and extends the file)."""

    def __init__(self, machine: Machine, disk: DiskSpec, delay: float | None, extra: int,
                 wait_size: Callable[[DiskSpec, int], str]):
        super().__init__(name="fuzz-resize", daemon=True)
        assert extra > 0 or delay is not None, "a shrink happens during a program"
        self.machine = machine
        self.disk = disk
        self.delay = delay
        self.extra = extra  # sectors
        self.wait_size = wait_size
        self.error: str | None = None  # QEMU refused the resize
        self.unseen: str = ""  # the guest never showed the grown size (delay None)

    @property
    def before(self) -> bool:
        return self.delay is None

    @property
    def resized(self) -> int:
        """The capacity while resized, in 512-byte sectors."""
        return self.disk.size_bytes // 512 + self.extra

    def start(self) -> None:
        if not self.before:
            super().start()
            return
        self._resize()
        if self.error is None:
            self.unseen = self.wait_size(self.disk, self.resized)

    def join(self, timeout: float | None = None) -> None:
        if not self.before:
            super().join(timeout)

    def run(self) -> None:
        time.sleep(self.delay or 0.0)
        self._resize()

    def _resize(self) -> None:
        try:
            make_fault("resize", self.disk, {"size_bytes": self.resized * 512}).arm(self.machine)
        except (QmpError, InfraError, OSError, ValueError) as exc:
            self.error = str(exc)


@dataclass
class RunOutcome:
    """One program's run: the executor's lines, and what went wrong outside the judge."""

    results: list[dict]
    seconds: float
    status: str = "ok"  # ok | hang | splat | executor
    finding: Finding | None = None
    device_errors: frozenset[int] = frozenset()  # step types a blkdebug fault may fail (IOERR)
    unplugged: bool = False  # the disk was hot-unplugged during the program
    reset: bool = False  # the disk's device was reset during the program
    machine_reset: bool = False  # the VM was reset (system_reset) during the program
    resized: int | None = None  # the disk's capacity (sectors) after it grew or shrank (a resize fault)
    resized_before: bool = False  # it grew before the program, and the guest showed the new size


@dataclass
class Stats:
    programs: int = 0
    commands: int = 0
    exec_seconds: float = 0.0
    boots: int = 0
    shrink_runs: int = 0
    faults: int = 0
    machine_resets: int = 0  # system resets the guest came back from
    classes: Counter = field(default_factory=Counter)
    rules: Counter = field(default_factory=Counter)
    hits: Counter = field(default_factory=Counter)  # finding signature -> programs that hit it
    callers: Counter = field(default_factory=Counter)  # "root x86_64", "uid i386", ... -> programs


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:60]


class Fuzzer:
    def __init__(self, plan: FuzzPlan, emit: E.Emit):
        self.plan = plan
        self.emit = emit
        self.out = Path(plan.out)
        self.images = self.out / "images"
        self.specs = fuzz_disks(self.images)
        self.machine: Machine | None = None
        self.chardev: dict[str, str] = {}
        self.guest_name: dict[str, str] = {}  # disk id -> vdX
        self.configs: dict[str, DiskConfig] = {}
        self.kernel_release = ""  # the guest's uname -r, read at the first plug (the errno table needs it)
        self.models: dict[str, DiskModel] = {}
        self.stats = Stats()
        # mutation -> the crash finding that disabled it (or --disable)
        self.disabled: dict[str, str] = {m: "--disable" for m in plan.disable}
        self.boot_seconds: list[float] = []
        self.stopped = "budget"  # what ended the campaign: budget | max-programs
        self.engine32: str | None = None  # why vblk-engine32 cannot run (None: it can, or not probed yet)
        self.no_reset: str | None = None  # why --faults reset is not drawn here (None: it is)
        self.abis: tuple[str, ...] = ("x86_64", "i386")
        self.qemu = resolve_binary(plan.qemu)
        self.caps = probe_caps(self.qemu)
        self.accel = choose(self.qemu, Path(plan.kernel), plan.accel)
        self.timeouts = Timeouts.for_accel(self.accel.name)

    # -- the VM ------------------------------------------------------------------------
    def boot(self) -> None:
        self.stop()
        vm_dir = self.out / f"vm-{self.stats.boots}"
        vm_dir.mkdir(parents=True, exist_ok=True)
        spec = MachineSpec(qemu=self.qemu, kernel=Path(self.plan.kernel), initrd=Path(self.plan.initramfs),
                           accel=self.accel.name, smp=self.plan.smp, memory_mb=self.plan.memory_mb, disk_slots=4,
                           append=guest_cmdline(self.specs))
        self.machine = Machine(spec, vm_dir, self.timeouts, self.caps)
        self.stats.boots += 1
        self.emit(E.BootStart(self.accel.name))
        self.machine.__enter__()
        seconds = self.machine.wait_boot()
        self.emit(E.BootEnd(seconds, self.accel.name))
        self.emit(E.AgentReady(self.machine.wait_agent()))
        self.boot_seconds.append(seconds)
        for slot, disk in enumerate(self.specs):
            if not disk.path.exists():
                create_sparse_file(disk.path, disk.size_bytes)
            elif disk.path.stat().st_size != disk.size_bytes:
                # a resize fault grew it, and the guest went down before the shrink back
                os.truncate(disk.path, disk.size_bytes)
            self.plug(disk, slot)
        if self.stats.boots == 1:
            self._probe_engine32()
            if "reset" in self.plan.faults:
                self._probe_reset()

    def plug(self, disk: DiskSpec, slot: int) -> None:
        """Hot-plug ``disk`` (at boot, or again after an unplug fault): its char device, its
        configuration as the guest sees it (the same every time), its node handed to USER_ID."""
        plugged = self.machine.hotplug(disk, slot, chardev=True)
        self.emit(E.DiskPlugged(disk.id, disk.serial, plugged.seconds_to_visible, plugged.guest_name,
                                plugged.chardev))
        self._adopt(disk, plugged.guest_name, plugged.chardev)

    def _adopt(self, disk: DiskSpec, guest_name: str, chardev: str) -> None:
        """The guest shows ``disk`` as ``guest_name``/``chardev`` (plugged, or probed again at a
        reboot): check its configuration is the one it had, and hand the node to USER_ID."""
        self.chardev[disk.id] = chardev
        self.guest_name[disk.id] = guest_name
        values = self.machine.agent.call("sysfs", {"name": guest_name, "paths": list(SYSFS_PATHS)})
        if not self.kernel_release:
            self.kernel_release = self.machine.agent.read_file("/proc/sys/kernel/osrelease").strip()
        config = DiskConfig.from_sysfs(disk.id, disk.serial, values, self.kernel_release)
        if disk.id in self.configs and self.configs[disk.id] != config:
            raise InfraError(f"{disk.id}: the guest shows a different configuration after a re-plug: "
                             f"{self.configs[disk.id]} then {config}")
        self.configs[disk.id] = config
        self.models.setdefault(disk.id, DiskModel(config.capacity, initial_known=True))
        # programs with a user line run as USER_ID: the node is theirs (mode 0600), as
        # driver-access does it, so the open mode and the missing capability decide
        self._guest_sh(f"chown {USER_ID}:{USER_ID} {chardev} && chmod 0600 {chardev}")

    def _after_machine_reset(self, reset: "MachineReset") -> str:
        """The guest rebooted: wait for its new agent and its disks; why not, if it never comes back."""
        try:
            self.machine.wait_reboot(reset.mark or 0)
            reset.fault.disarm(self.machine)  # reboot=shutdown again
            for disk in self.specs:
                info = self.machine.agent.wait_disk(disk.serial, timeout_s=self.timeouts(30.0), chardev=True)
                self._adopt(disk, info["name"], info["chardev"])
        except (BootError, AgentError, QmpError) as exc:
            return f"after system_reset {reset.delay:.2f} s into the program: {exc}"
        self.stats.machine_resets += 1
        return ""

    def _guest_sh(self, cmd: str) -> str:
        res = self.machine.agent.exec(cmd=cmd, timeout_s=self.timeouts(30.0))
        if res.get("rc") != 0:
            raise InfraError(f"guest: {cmd!r} exited {res.get('rc')}: {(res.get('stderr') or '').strip()[-300:]}")
        return res.get("stdout", "")

    def _probe_engine32(self) -> None:
        """Can the guest run vblk-engine32 (in the initramfs, kernel with IA32_EMULATION)? If
        not, i386 draws run as x86_64 and fuzz.json says why."""
        try:
            res = self.machine.agent.exec(argv=[EXECUTOR32, "--program", "/dev/null", "--dev", "/dev/null"],
                                          timeout_s=self.timeouts(30.0))
            ok = res.get("rc") == 0
            why = f"exit {res.get('rc')}: {(res.get('stderr') or '').strip()[-200:]}"
        except AgentError as exc:
            ok, why = False, str(exc)
        if not ok:
            self.engine32 = f"{EXECUTOR32} does not run in the guest ({why}): i386 programs run as x86_64"
            self.abis = ("x86_64",)
            self.emit(E.Note(f"fuzz: {self.engine32}"))

    def _probe_reset(self) -> None:
        """Does this kernel's virtio_blk take part in a device reset? Without reset_prepare
        (6.12 has none) virtio-pci resets the device under a driver that goes on using its
        virtqueues: every later command would hang for a reason that is not a bug."""
        res = self.machine.agent.exec(cmd=HAS_RESET_PREPARE,
                                      timeout_s=self.timeouts(30.0))
        if res.get("rc") != 0:
            self.no_reset = ("--faults reset not drawn: this kernel's virtio_blk has no reset_prepare "
                             "(not in /proc/kallsyms), so a device reset would go past the driver")
            self.emit(E.Note(f"fuzz: {self.no_reset}"))

    def stop(self) -> None:
        if self.machine is not None:
            try:
                self.machine.__exit__(None, None, None)
            except (InfraError, OSError):
                pass
            self.machine = None

    def alive(self) -> bool:
        return self.machine is not None and self.machine.is_running()

    # -- one program -------------------------------------------------------------------
    def execute(self, program: Program) -> RunOutcome:
        """Run ``program`` in the guest; a crash or hang reboots the VM before returning."""
        if not self.alive():
            self.boot()
        m = self.machine
        mark = m.console.mark()
        started = time.monotonic()
        executor = EXECUTOR32 if program.abi == "i386" else EXECUTOR
        argv = [executor, "--program", "-", "--dev", self.chardev[program.disk],
                "--timeout-ms", str(int(CHAIN_TIMEOUT_MS * self.timeouts.scale))]
        error: str | None = None
        rc = None
        stdout = ""
        faults = self.faults_for(program)
        reset = next((f for f in faults if isinstance(f, DeviceReset)), None)
        started_faults: list = []
        try:
            for fault in faults:
                fault.start()
                started_faults.append(fault)
            run = {"cmd": reset.command(argv)} if reset is not None else {"argv": argv}
            res = m.agent.exec(**run, stdin=program.text(), timeout_s=self.timeouts(PROGRAM_TIMEOUT_S))
            rc, stdout = res.get("rc"), res.get("stdout", "")
            if rc not in (0, 4):
                error = f"executor exited {rc}: {(res.get('stderr') or '').strip()[-300:]}"
        except (AgentError, QmpError, OSError) as exc:
            if len(started_faults) < len(faults):  # QEMU refused the fault: no program ran
                raise InfraError(f"cannot arm {type(faults[len(started_faults)]).__name__} on "
                                 f"{program.disk}: {exc}") from exc
            error = f"the guest agent did not answer: {exc}"
        finally:
            for fault in started_faults:
                fault.join()
        seconds = time.monotonic() - started
        results = []
        for line in stdout.splitlines():
            try:
                results.append(json.loads(line))
            except ValueError:
                continue
        outcome = RunOutcome(results, seconds)
        unplug = None
        for fault in faults:
            if isinstance(fault, BlkdebugEio):
                outcome.device_errors |= fault.device_errors
                if fault.error:  # the disk still fails its requests: every later result would lie
                    raise InfraError(f"cannot take the blkdebug fault off {program.disk}: {fault.error}")
            if isinstance(fault, Unplug):
                unplug = fault
                outcome.unplugged = True
            if isinstance(fault, DeviceReset):
                if fault.error:
                    raise InfraError(f"cannot reset {program.disk}'s device: {fault.error}")
                outcome.reset = True
            if isinstance(fault, MachineReset):
                if fault.error:
                    raise InfraError(f"cannot reset the VM: {fault.error}")
                outcome.machine_reset = True
                lost = self._after_machine_reset(fault)
                if lost:
                    outcome.status = "hang"
                    outcome.finding = Finding("hang", "hang|system-reset|the guest did not come back", lost, 0)
                error = None  # the old agent went with the program's results: no verdict on them
            if isinstance(fault, Resize):
                if fault.error:
                    raise InfraError(f"cannot resize {program.disk}: {fault.error}")
                outcome.resized, outcome.resized_before = fault.resized, fault.before
                if fault.unseen and outcome.finding is None:
                    outcome.status = "hang"
                    outcome.finding = Finding("hang", "hang|resize|the guest never showed the grown capacity",
                                              fault.unseen, 0)
        time.sleep(0.1)  # a splat printed as the program ended
        findings = m.console.findings(mark)
        oom = OOM.search(m.console.text_since(mark))
        if oom and not findings:
            # Not a classifier pattern, but a command that makes the kernel allocate
            # until the OOM killer runs is a finding (the agent is usually its victim).
            outcome.status = "splat"
            outcome.finding = Finding("splat", "splat|out of memory: the OOM killer ran",
                                      f"console: {oom.group(0)}", None)
        elif findings:
            f = findings[0]
            outcome.status = "splat"
            outcome.finding = Finding("splat", f"splat|{f.title}", f"console: {f.title}\n{f.excerpt}",
                                      len(results) if len(results) < len(program.steps) else None)
        elif error and ("did not answer" in error or not self.alive()):
            outcome.status = "hang"
            step = len(results)
            outcome.finding = Finding("hang", f"hang|agent|sqe{program.sqe}{'-iopoll' if program.iopoll else ''}",
                                      f"{error}; {step} of {len(program.steps)} steps had completed", step)
        elif reset is not None and reset.stuck:
            # reset_prepare waits for the queue to drain, reset_done for new virtqueues:
            # a command the driver never completes, or a vq it never rebuilds, hangs it here
            outcome.status = "hang"
            outcome.finding = Finding("hang", "hang|reset|the device reset never returned", reset.stuck, len(results))
        elif error and not (unplug is not None and rc == 3):  # 3: the node was gone before the open
            outcome.status = "executor"
            outcome.finding = Finding("executor", "executor|" + error.split(":")[0], error)
        elif unplug is not None and unplug.error:
            # device_del never completed: the guest kept the device (the command that held it
            # is the bug); only a reboot gets the disk back
            outcome.status = "hang"
            outcome.finding = Finding("hang", "hang|unplug|DEVICE_DELETED never came",
                                      f"unplug of {program.disk} {unplug.delay:.2f} s into the program: {unplug.error}",
                                      len(results))
        if outcome.status == "ok" and any(r.get("hang") for r in results):
            outcome.status = "hang"  # the executor gave up on a command: judge() reports it
        if outcome.status in ("splat", "hang") or (outcome.machine_reset and rc is None):
            # what the program was writing when the guest went down is unknown now
            self._forget(program)
        if outcome.status in ("splat", "hang"):
            self.stop()
        elif unplug is not None:
            self.plug(next(d for d in self.specs if d.id == program.disk),
                      [d.id for d in self.specs].index(program.disk))
        elif outcome.resized is not None:
            stuck = self._size_back(next(d for d in self.specs if d.id == program.disk))
            if stuck and outcome.finding is None:
                kept = "grown" if outcome.resized > self.configs[program.disk].capacity else "shrunk"
                outcome.status = "hang"
                outcome.finding = Finding("hang", f"hang|resize|the guest kept the {kept} capacity", stuck,
                                          len(results))
                self.stop()
        return outcome

    def _forget_cut(self, disk_id: str, resized: int) -> None:
        """After a shrink: what was past the shrunk end is gone (zeros once the disk is back)."""
        capacity = self.configs[disk_id].capacity
        if resized < capacity:
            self.models[disk_id].forget(resized, capacity - resized)

    def _size_back(self, disk: DiskSpec) -> str:
        """After a resize fault: the disk back to its size, and the guest seeing that size
        (so that the next program's commands past the end are refused again). Returns why
        not, if the guest never shows it."""
        make_fault("resize", disk, {"size_bytes": disk.size_bytes}).arm(self.machine)
        return self._wait_size(disk, disk.size_bytes // 512)

    def _wait_size(self, disk: DiskSpec, sectors: int) -> str:
        """Wait until the guest's /sys/block/vdX/size shows ``sectors``; why not, if it never does."""
        name = self.guest_name[disk.id]
        shown = wait_guest_sectors(self.machine.agent, name, sectors, self.timeouts(RESIZE_WAIT_S))
        if shown is None:
            return ""
        return f"{name} still shows {shown} sectors {RESIZE_WAIT_S:.0f} s (scaled) after block_resize to {sectors}"

    def faults_for(self, program: Program) -> list:
        """The host faults of ``program``, drawn from its seed (so a shrunk or replayed program
        gets the same ones):
        - stop-cont: a fifth of the programs get the VM paused (QMP stop, 0.3 s, cont) at a
          random point early in their run. A pause must change no result.
        - blkdebug-eio: a fifth of the programs on a writable disk run with QEMU failing one
          type of request (read, write, or discard where negotiated) with EIO.
        - unplug: a tenth of the programs (not those under blkdebug-eio) get their disk
          hot-unplugged 0-0.2 s into their run, and plugged back after it; unplug-iopoll: half
          of the programs on IOPOLL rings (review #8: unplug racing a polled command).
        - resize: a fifth of the programs on a writable disk under neither of those get it
          resized by 1, 8, 256 or 4096 logical blocks (the generator aims commands at the end:
          just past it, across it): half of them grown before the program, once the guest
          shows the new size; the other half 0-0.1 s into it, grown or (half of those) shrunk
          by at most half the disk; put back to its size after it.
        - reset: about a seventh of the programs under neither unplug nor resize get their
          disk's device reset (PCIe FLR, see DeviceReset) 0-0.2 s into their run; only on a
          kernel whose virtio_blk has reset_prepare. A reset must change no result.
        - system-reset: a twentieth of the programs under none of the others but stop-cont get
          the VM reset (QMP system_reset) 0-0.3 s into their run; the guest must come back with
          its disks as they were, and what earlier programs wrote must still read back."""
        out: list = []
        seed = program.seed if program.seed is not None else 0
        if "stop-cont" in self.plan.faults:
            rng = random.Random(seed)
            if rng.random() < 0.2:
                out.append(StopCont(self.machine, rng.uniform(0.0, 0.3)))
        disk = next(d for d in self.specs if d.id == program.disk)
        if "blkdebug-eio" in self.plan.faults and not disk.read_only:
            rng = random.Random(seed ^ 0xB10CDEB6)
            if rng.random() < 0.2:
                ops = ["read", "write"] + (["discard"] if self.configs[disk.id].discard else [])
                out.append(BlkdebugEio(self.machine, disk, rng.choice(ops)))
        if not any(isinstance(f, BlkdebugEio) for f in out):
            # not under a blkdebug fault: the unplug deletes the nodes its disarm re-points
            rng = random.Random(seed ^ 0x0DE1DE1)
            draw = rng.random()
            if ("unplug" in self.plan.faults and draw < 0.1) or \
                    ("unplug-iopoll" in self.plan.faults and program.iopoll and draw < 0.5):
                out.append(Unplug(self.machine, program.disk, rng.uniform(0.0, 0.2)))
        if "resize" in self.plan.faults and not disk.read_only and \
                not any(isinstance(f, (BlkdebugEio, Unplug)) for f in out):
            # blkdebug re-points the node block_resize names; an unplugged disk has none
            rng = random.Random(seed ^ 0x5E5125E)
            if rng.random() < 0.2:
                lbs_s = disk.logical_block_size // 512
                extra = rng.choice((1, 8, 256, 4096)) * lbs_s
                delay = None if rng.random() < 0.5 else rng.uniform(0.0, 0.1)
                if delay is not None and rng.random() < 0.5:  # a shrink, by at most half the disk
                    extra = -min(extra, disk.size_bytes // 1024 // lbs_s * lbs_s)
                out.append(Resize(self.machine, disk, delay, extra, self._wait_size))
        if "reset" in self.plan.faults and self.no_reset is None and \
                not any(isinstance(f, (Unplug, Resize)) for f in out):
            # an unplugged disk has no PCI function to reset; a resize's config interrupt
            # would race the reset's own reading of the config
            rng = random.Random(seed ^ 0x4E5E7)
            if rng.random() < 0.15:
                out.append(DeviceReset(self.machine, self.guest_name[disk.id], rng.uniform(0.0, 0.2),
                                       self.timeouts(RESET_WAIT_S)))
        if "system-reset" in self.plan.faults and \
                not any(isinstance(f, (BlkdebugEio, Unplug, Resize, DeviceReset)) for f in out):
            # alone but for stop-cont: each of the others needs the disk it changed put back
            rng = random.Random(seed ^ 0x5157E5)
            if rng.random() < 0.05:
                out.append(MachineReset(self.machine, rng.uniform(0.0, 0.3)))
        if out:
            self.stats.faults += 1
        return out

    def _forget(self, program: Program) -> None:
        model = self.models[program.disk]
        config = self.configs[program.disk]
        from .table import effects

        for step in program.steps:
            for _, sector, count, _ in effects(step, config):
                model.forget(sector, count)

    def run_and_judge(self, program: Program, standalone: bool = False) -> tuple[RunOutcome, Verdict]:
        """Run and judge against the campaign model (which it updates); ``standalone``
        judges against a model that knows nothing from before the program (shrinking,
        replay), while still updating the campaign model."""
        outcome = self.execute(program)
        config = self.configs[program.disk]
        verdict = judge(program, outcome.results, config, self.models[program.disk],
                        device_errors=outcome.device_errors, unplugged=outcome.unplugged, resized=outcome.resized,
                        resized_before=outcome.resized_before)
        if standalone:
            verdict = judge(program, outcome.results, config, DiskModel(config.capacity, initial_known=False),
                            device_errors=outcome.device_errors, unplugged=outcome.unplugged, resized=outcome.resized,
                            resized_before=outcome.resized_before)
        if outcome.resized is not None:  # after the judge, which applied the program's writes
            self._forget_cut(program.disk, outcome.resized)
        if outcome.finding is not None:
            outcome.finding.signature = abi_signature(outcome.finding.signature, program)
            verdict.findings.insert(0, outcome.finding)
        # a finding only a reset brings out is its own (as |unplug, |resize)
        for happened, suffix in ((outcome.reset, "reset"), (outcome.machine_reset, "system-reset")):
            for f in verdict.findings if happened else ():
                if not f.signature.startswith(f"hang|{suffix}|"):
                    f.signature += f"|{suffix}"
        return outcome, verdict

    # -- findings ----------------------------------------------------------------------
    def shrink_finding(self, program: Program, finding: Finding) -> tuple[Program, int]:
        """The smallest program that still gives a finding with the same signature."""
        # a splat or hang costs a reboot per run
        budget = self.plan.shrink_runs if finding.kind in ("errno", "data", "executor") else min(self.plan.shrink_runs, 10)

        def reproduces(steps) -> bool:
            cand = program.with_steps(steps)
            _, verdict = self.run_and_judge(cand, standalone=True)
            return finding.signature in verdict.signatures()

        focus = finding.step if finding.step is not None and finding.step < len(program.steps) else None
        chain_start = None
        if focus is not None:
            for chain in program.chains():
                if focus in chain:
                    chain_start = chain[0]
        steps, runs = shrink(list(program.steps), reproduces, focus, budget, chain_start)
        self.stats.shrink_runs += runs
        return program.with_steps(steps), runs

    def disable_cause(self, program: Program, shrunk: Program, finding: Finding, rec: dict) -> None:
        """After a crash or hang shrunk to one step, stop drawing the mutation that made
        that step: every further hit would only cost a reboot."""
        if finding.kind not in ("splat", "hang") or len(shrunk.steps) != 1:
            return
        muts = program.meta.get("mutations") or []
        for step, what in zip(program.steps, muts):
            if replace(step, link=False) == replace(shrunk.steps[0], link=False) and what:
                self.disabled[what] = finding.signature
                rec["disabled_mutation"] = what
                self.emit(E.Note(f"fuzz: mutation {what!r} disabled for the rest of the campaign "
                                 f"(it made {finding.signature})"))
                return

    def write_finding(self, n: int, program: Program, shrunk: Program, finding: Finding, runs: int) -> dict:
        folder = self.out / "findings" / f"{n:02d}-{_slug(finding.signature)}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "program.txt").write_text(program.text(), encoding="utf-8")
        (folder / "shrunk.txt").write_text(shrunk.text(), encoding="utf-8")
        title = f"{finding.signature}: {finding.detail.splitlines()[0]}"
        # the host faults come from the program's seed: the same --faults draws them again
        replay = f"vblk-ci fuzz --replay {folder / 'shrunk.txt'}" + \
            (f" --faults {','.join(self.plan.faults)}" if self.plan.faults else "")
        (folder / "repro.c").write_text(write_repro_c(shrunk, self.configs[program.disk], title), encoding="utf-8")
        record = {"n": n, "kind": finding.kind, "signature": finding.signature, "detail": finding.detail,
                  "expected": finding.expected, "got": finding.got, "disk": program.disk,
                  "program_seed": program.seed, "steps": len(program.steps), "shrunk_steps": len(shrunk.steps),
                  "shrink_runs": runs, "folder": str(folder), "replay": replay}
        (folder / "finding.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
        return record

    # -- the campaign ------------------------------------------------------------------
    def campaign(self) -> dict:
        plan = self.plan
        started = time.monotonic()
        deadline = started + plan.budget_s
        self.boot()
        configs = [self.configs[d.id] for d in self.specs]
        findings: list[dict] = []
        seen: set[str] = set()
        log = open(self.out / "programs.jsonl", "w", encoding="utf-8")
        index = 0
        try:
            while time.monotonic() < deadline:
                if plan.max_programs is not None and index >= plan.max_programs:
                    self.stopped = "max-programs"
                    break
                program = generate(plan.seed, index, configs, plan.max_steps, frozenset(self.disabled), self.abis)
                outcome, verdict = self.run_and_judge(program)
                self.stats.programs += 1
                self.stats.commands += verdict.completed
                self.stats.exec_seconds += outcome.seconds
                self.stats.classes.update(f"{op} {res}" for op, res in verdict.outcomes)
                self.stats.rules.update(verdict.rules)
                self.stats.callers[f"{'root' if program.user is None else 'uid'} {program.abi}"] += 1
                sigs = sorted(verdict.signatures())
                self.stats.hits.update(sigs)
                log.write(json.dumps({"index": index, "seed": program.seed, "disabled": sorted(self.disabled),
                                      "disk": program.disk,
                                      "steps": len(program.steps), "completed": verdict.completed,
                                      "status": outcome.status, "seconds": round(outcome.seconds, 3),
                                      "findings": sigs}) + "\n")
                log.flush()
                for f in verdict.findings:
                    if f.signature in seen:
                        continue
                    seen.add(f.signature)
                    self.emit(E.Note(f"fuzz: program {index}: NEW finding {f.signature}\n  {f.detail.splitlines()[0]}"))
                    (self.out / "findings").mkdir(exist_ok=True)
                    shrunk, runs = self.shrink_finding(program, f)
                    rec = self.write_finding(len(findings) + 1, program, shrunk, f, runs)
                    findings.append(rec)
                    self.disable_cause(program, shrunk, f, rec)
                    self.emit(E.Note(f"fuzz: shrunk to {len(shrunk.steps)} of {len(program.steps)} steps in "
                                     f"{runs} runs: {rec['folder']}"))
                if index % 10 == 0:
                    self.emit(E.Note(self.progress_line(started)))
                    # a partial record, so a campaign cut short still leaves its figures
                    partial = self.record(started, findings)
                    partial["partial"] = True
                    (self.out / "fuzz.json").write_text(json.dumps(partial, indent=2), encoding="utf-8")
                index += 1
        finally:
            log.close()
            self.stop()
        return self.record(started, findings)

    def progress_line(self, started: float) -> str:
        wall = time.monotonic() - started
        return (f"fuzz: {self.stats.programs} programs, {self.stats.commands} commands in {wall:.0f} s "
                f"({60 * self.stats.commands / max(wall, 1e-9):.0f}/min), {len(self.stats.classes)} (op, outcome) "
                f"classes, {len(self.stats.hits)} finding signatures, {self.stats.boots} boots")

    def record(self, started: float, findings: list[dict]) -> dict:
        wall = time.monotonic() - started
        s = self.stats
        for rec in findings:
            rec["programs_hit"] = s.hits.get(rec["signature"], 0)
        return {
            "tool": "vblk-ci fuzz", "version": __version__,
            "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "seed": self.plan.seed, "budget_s": self.plan.budget_s, "max_programs": self.plan.max_programs,
            "stopped": self.stopped, "wall_s": round(wall, 1),
            "accel": self.accel.name, "kernel": str(self.plan.kernel), "initramfs": str(self.plan.initramfs),
            "kernel_cmdline": kernel_cmdline(guest_cmdline(self.specs)), "boots": s.boots,
            "boot_seconds": [round(b, 1) for b in self.boot_seconds],
            "programs": s.programs, "commands": s.commands,
            "commands_per_minute": round(60 * s.commands / max(wall, 1e-9), 1),
            "commands_per_minute_executing": round(60 * s.commands / max(s.exec_seconds, 1e-9), 1),
            "exec_seconds": round(s.exec_seconds, 1), "shrink_runs": s.shrink_runs,
            "faults": list(self.plan.faults), "programs_with_fault": s.faults,
            "disks": {k: vars(v) for k, v in self.configs.items()},
            "disabled_mutations": dict(self.disabled),
            "callers": dict(sorted(s.callers.items())), "user_id": USER_ID, "engine32": self.engine32 or "ok",
            "reset": self.no_reset or ("drawn" if "reset" in self.plan.faults else "not asked"),
            "system_resets": s.machine_resets,
            "classes": dict(sorted(s.classes.items())), "rules": dict(sorted(s.rules.items())),
            "findings": findings,
        }


def _check(plan: FuzzPlan) -> None:
    for what, path in (("kernel image", plan.kernel), ("initramfs", plan.initramfs)):
        if not Path(path).is_file():
            raise MissingPrerequisite(f"{what} not found: {path}")


def run_campaign(plan: FuzzPlan, emit: E.Emit = E.discard) -> dict:
    _check(plan)
    Path(plan.out).mkdir(parents=True, exist_ok=True)
    fuzzer = Fuzzer(plan, emit)
    emit(E.Note(f"accelerator {fuzzer.accel.name}: {fuzzer.accel.reason}"))
    record = fuzzer.campaign()
    (Path(plan.out) / "fuzz.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    return record


DISK_LINE = re.compile(r"^ \* # disk (\S+)$", re.M)


def build_repro(source: Path, out: Path) -> Path:
    """``gcc -static`` a repro.c on the host (the guest has no compiler); the binary path."""
    binary = out / (source.stem + ".static")
    m32 = ["-m32"] if re.search(r"^ \* # abi i386$", source.read_text(encoding="utf-8"), re.M) else []
    proc = subprocess.run(["gcc", *m32, "-O2", "-static", "-o", str(binary), str(source), "-luring"],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise MissingPrerequisite(f"cannot build {source} (gcc {' '.join(m32)} -static ... -luring; needs "
                                  f"liburing-dev{', i386' if m32 else ''}): "
                                  f"{proc.stderr.strip()[-400:]}")
    return binary


def run_repro_c(plan: FuzzPlan, emit: E.Emit = E.discard) -> dict:
    """Build a finding's repro.c, copy it into a fresh guest and run it on its disk."""
    _check(plan)
    source = Path(plan.replay)
    m = DISK_LINE.search(source.read_text(encoding="utf-8"))
    if m is None:
        raise MissingPrerequisite(f"{source}: no ' * # disk NAME' line: not a vblk-ci fuzz repro")
    Path(plan.out).mkdir(parents=True, exist_ok=True)
    binary = build_repro(source, Path(plan.out))
    fuzzer = Fuzzer(plan, emit)
    started = time.monotonic()
    try:
        fuzzer.boot()
        agent = fuzzer.machine.agent
        agent.exec(cmd="python3 -c 'import sys,base64; open(\"/tmp/repro\",\"wb\").write(base64.b64decode("
                       "sys.stdin.read())); import os; os.chmod(\"/tmp/repro\", 0o755)'",
                   stdin=base64.b64encode(binary.read_bytes()).decode(), timeout_s=fuzzer.timeouts(60.0))
        mark = fuzzer.machine.console.mark()
        try:
            res = agent.exec(argv=["/tmp/repro", fuzzer.chardev[m.group(1)]],
                             timeout_s=fuzzer.timeouts(PROGRAM_TIMEOUT_S))
        except (AgentError, QmpError, OSError) as exc:  # the guest went down (OOM killed the agent, a panic)
            res = {"rc": None, "stdout": "", "stderr": f"the guest agent did not answer: {exc}"}
        time.sleep(0.5)
        console = [f.title for f in fuzzer.machine.console.findings(mark)]
        oom = OOM.search(fuzzer.machine.console.text_since(mark))
        if oom:
            console.append(oom.group(0))
    finally:
        fuzzer.stop()
    record = {"tool": "vblk-ci fuzz --replay (C)", "program": str(source), "binary": str(binary),
              "disk": m.group(1), "wall_s": round(time.monotonic() - started, 1), "rc": res.get("rc"),
              "stdout": res.get("stdout", ""), "stderr": res.get("stderr", ""), "console": console}
    (Path(plan.out) / "replay.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    return record


def run_replay(plan: FuzzPlan, emit: E.Emit = E.discard) -> dict:
    """Run one program file once, judged on its own (the disk's earlier contents unknown)."""
    _check(plan)
    program = parse(Path(plan.replay).read_text(encoding="utf-8"), str(plan.replay))
    Path(plan.out).mkdir(parents=True, exist_ok=True)
    fuzzer = Fuzzer(plan, emit)
    if program.disk not in {d.id for d in fuzzer.specs}:
        raise MissingPrerequisite(f"{plan.replay}: disk {program.disk!r} is not one of the fuzz disks "
                                  f"({', '.join(d.id for d in fuzzer.specs)})")
    started = time.monotonic()
    try:
        fuzzer.boot()
        outcome, verdict = fuzzer.run_and_judge(program, standalone=True)
    except BootError:
        fuzzer.stop()
        raise
    finally:
        fuzzer.stop()
    record = {"tool": "vblk-ci fuzz --replay", "program": str(plan.replay), "disk": program.disk,
              "wall_s": round(time.monotonic() - started, 1), "status": outcome.status,
              "results": outcome.results, "outcomes": verdict.outcomes,
              "findings": [vars(f) for f in verdict.findings]}
    (Path(plan.out) / "replay.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    return record
