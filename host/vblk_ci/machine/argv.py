"""Pure functions that build QEMU argv lists and QMP argument dicts.

No I/O here: everything QEMU-version dependent comes in through ``QemuCaps``
(probed once by ``machine.qemuinfo``), every path through ``MachinePaths``.
Tested as exact lists in ``tests/unit/test_argv.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..disks.spec import CACHE_MODES, DiskSpec

AGENT_PORT_NAME = "org.vblk-ci.agent"

# Panic on anything the console classifier would call a finding, and never reboot:
# a crash ends the run at once instead of waiting for a timeout.
BASE_CMDLINE = (
    "console=ttyS0",
    "panic=-1",
    "oops=panic",
    "panic_on_warn=1",
    "softlockup_panic=1",
    "hung_task_panic=1",
    # No clocksource watchdog on the TSC. 7.3's rewritten watchdog checks another CPU's TSC
    # from the timer softirq with interrupts off, waiting for it with a timeout read off the
    # timekeeping clock. Before the switch to tsc-early that clock is jiffies, frozen while
    # interrupts are off, so when the check meets the boot's stop_machine() (the other CPU
    # already spinning with interrupts off) both wait forever. Under TCG here: 4 boots in 600
    # without this, 0 in 600 with it (docs/boot-hang.md). A test VM needs no TSC watchdog.
    "tsc=nowatchdog",
)


@dataclass(frozen=True)
class QemuCaps:
    """What the QEMU binary supports (see ``qemuinfo.probe_caps``)."""

    version: tuple[int, int, int]
    cpu_max: bool = True
    panic_exit_failure: bool = True


@dataclass(frozen=True)
class MachinePaths:
    """Where the sockets and QEMU-written logs live.

    Sockets go in a short directory (``sun_path`` holds 108 bytes), logs in the run dir.
    """

    console_pipe: Path  # QEMU writes <console_pipe>.out and reads <console_pipe>.in
    console_log: Path
    qmp_sock: Path
    agent_sock: Path

    @classmethod
    def make(cls, sock_dir: Path, run_dir: Path) -> "MachinePaths":
        sock_dir, run_dir = Path(sock_dir), Path(run_dir)
        return cls(
            console_pipe=sock_dir / "console",
            console_log=run_dir / "console.log",
            qmp_sock=sock_dir / "qmp.sock",
            agent_sock=sock_dir / "agent.sock",
        )


@dataclass(frozen=True)
class MachineSpec:
    qemu: str
    kernel: Path
    initrd: Path | None = None
    accel: str = "tcg"
    smp: int = 2
    memory_mb: int = 1024
    append: tuple[str, ...] = ()
    disk_slots: int = 4
    # Benchmarks: deterministic instruction counting (TCG only) and a file for trace events.
    icount_shift: int | None = None
    trace_log: Path | None = None


def qopt(value: object) -> str:
    """Escape a value for a QEMU ``key=value,...`` option string (',' doubles)."""
    return str(value).replace(",", ",,")


def kernel_cmdline(extra: Sequence[str] = ()) -> str:
    return " ".join((*BASE_CMDLINE, *extra))


def accel_args(accel: str) -> list[str]:
    if accel not in ("tcg", "kvm"):
        raise ValueError(f"unknown accelerator {accel!r}")
    return ["-accel", accel]


def cpu_args(accel: str, caps: QemuCaps) -> list[str]:
    if accel == "kvm":
        return ["-cpu", "host"]
    # la57=off: 4-level paging. With LA57 a KASAN kernel (6.12, and 7.3's code is the same) can
    # report a false "wild-memory-access" at boot: identify_cpu() zeroes boot_cpu_data's
    # capabilities with interrupts on, pgtable_l5_enabled() reads X86_FEATURE_LA57 from them,
    # and an interrupt in that window computes KASAN's shadow bounds for 4-level paging against
    # a 5-level direct-map address. TCG under host load widens the window: seen in 1 of 4
    # debug-kernel boots at load 18 (tests/unit/data/console/117-real-kasan-la57-identify-cpu-debug).
    return ["-cpu", "max,la57=off" if caps.cpu_max else "qemu64"]


def machine_args(smp: int, memory_mb: int) -> list[str]:
    return ["-M", "q35", "-smp", str(smp), "-m", str(memory_mb)]


def isolation_args() -> list[str]:
    """No default devices, no display, no network, no reboot loop."""
    return ["-nodefaults", "-no-reboot", "-display", "none", "-nic", "none"]


def boot_args(kernel: Path, initrd: Path | None, append: Sequence[str]) -> list[str]:
    argv = ["-kernel", str(kernel)]
    if initrd is not None:
        argv += ["-initrd", str(initrd)]
    return argv + ["-append", kernel_cmdline(append)]


def serial_args(pipe: Path, logfile: Path) -> list[str]:
    """ttyS0 on a pair of FIFOs (``pipe``.in/.out); QEMU also keeps the whole log itself.

    Not a socket: QEMU writes the serial port a byte at a time, and a Unix socket
    charges each byte a whole buffer, so a reader a few hundred bytes behind made
    QEMU see EAGAIN -- the UART then dropped bytes and the logfile doubled them. A
    FIFO holds 64 KiB of them.
    """
    return [
        "-chardev", f"pipe,id=ser0,path={qopt(pipe)},logfile={qopt(logfile)}",
        "-serial", "chardev:ser0",
    ]


def qmp_args(sock: Path) -> list[str]:
    """QMP as a socket client: we listen first, so there is no start-up race."""
    return [
        "-chardev", f"socket,id=qmp0,path={qopt(sock)}",
        "-mon", "chardev=qmp0,mode=control",
    ]


def agent_args(sock: Path) -> list[str]:
    return [
        "-chardev", f"socket,id=agent0,path={qopt(sock)}",
        "-device", "virtio-serial-pci,id=vser0",
        "-device", f"virtserialport,bus=vser0.0,chardev=agent0,name={AGENT_PORT_NAME}",
    ]


def root_port_id(slot: int) -> str:
    return f"rp{slot}"


def root_port_args(slots: int) -> list[str]:
    """One PCIe root port per hot-plug slot (q35's pcie.0 refuses hotplug)."""
    argv: list[str] = []
    for i in range(slots):
        argv += ["-device", f"pcie-root-port,id={root_port_id(i)},bus=pcie.0,chassis={i + 1},slot={i + 1}"]
    return argv


def panic_args(caps: QemuCaps) -> list[str]:
    """pvpanic makes a guest panic visible to QEMU (GUEST_PANICKED) and end it."""
    argv = ["-device", "pvpanic"]
    if caps.panic_exit_failure:
        argv += ["-action", "panic=exit-failure"]
    return argv


def icount_args(shift: int | None, accel: str) -> list[str]:
    """``-icount shift=N,sleep=off``: the virtual clock counts guest instructions
    (2^N ns each; shift=0: 1 ns per instruction) and jumps over idle time instead of
    sleeping. TCG only; it makes TCG single-threaded."""
    if shift is None:
        return []
    if accel != "tcg":
        raise ValueError("icount needs the tcg accelerator")
    if not 0 <= shift <= 10:
        raise ValueError(f"icount shift {shift} outside 0..10")
    return ["-icount", f"shift={shift},sleep=off"]


def trace_log_args(path: Path | None) -> list[str]:
    """``-D path``: where QEMU's log trace backend writes events enabled later over QMP."""
    return [] if path is None else ["-D", str(path)]


def build_argv(spec: MachineSpec, paths: MachinePaths, caps: QemuCaps) -> list[str]:
    if spec.smp < 1 or spec.memory_mb < 64 or spec.disk_slots < 0:
        raise ValueError("smp >= 1, memory_mb >= 64 and disk_slots >= 0 required")
    return [
        spec.qemu,
        *accel_args(spec.accel),
        *machine_args(spec.smp, spec.memory_mb),
        *cpu_args(spec.accel, caps),
        *isolation_args(),
        *boot_args(spec.kernel, spec.initrd, spec.append),
        *serial_args(paths.console_pipe, paths.console_log),
        *qmp_args(paths.qmp_sock),
        *agent_args(paths.agent_sock),
        *root_port_args(spec.disk_slots),
        *panic_args(caps),
        *icount_args(spec.icount_shift, spec.accel),
        *trace_log_args(spec.trace_log),
    ]


# --- QMP arguments for hotplug -------------------------------------------------------------


def blockdev_add_args(disk: DiskSpec) -> dict:
    """``blockdev-add`` arguments for the node the device attaches to."""
    if disk.backend == "null":
        node = {
            "driver": "null-co",
            "node-name": disk.node_name,
            "size": disk.size_bytes,
            "read-zeroes": True,
            "read-only": disk.read_only,
        }
        if disk.latency_ns:
            node["latency-ns"] = disk.latency_ns
        node.update(_detect_zeroes(disk))
        return node
    # A discard reaches the file (a punched hole) only if every node passes it down.
    unmap = {"discard": "unmap"} if disk.discard else {}
    if disk.backend == "file":
        child = {
            "driver": "file",
            "node-name": disk.file_node_name,
            "filename": str(disk.path),
            "read-only": disk.read_only,
            **unmap,
            **_aio_cache(disk),
        }
        if disk.inject_errors:
            child = {
                "driver": "blkdebug",
                "node-name": disk.debug_node_name,
                "inject-error": [rule.qmp() for rule in disk.inject_errors],
                "image": child,
                **unmap,
            }
        return {
            "driver": disk.format,
            "node-name": disk.node_name,
            "read-only": disk.read_only,
            "file": child,
            **unmap,
            **_detect_zeroes(disk),
            **_cache(disk),
        }
    raise ValueError(f"unknown backend {disk.backend!r}")


def _cache(disk: DiskSpec) -> dict:
    """Non-default ``cache`` options of a node (QEMU's default is writeback: neither set)."""
    direct, no_flush, _ = CACHE_MODES[disk.cache]
    return {"cache": {"direct": direct, "no-flush": no_flush}} if (direct or no_flush) else {}


def _aio_cache(disk: DiskSpec) -> dict:
    """The file node's ``aio`` (when not QEMU's default, threads) and cache options."""
    return ({"aio": disk.aio} if disk.aio != "threads" else {}) | _cache(disk)


def _detect_zeroes(disk: DiskSpec) -> dict:
    return {"detect-zeroes": disk.detect_zeroes} if disk.detect_zeroes != "off" else {}


def iothread_object_args(disk: DiskSpec) -> dict | None:
    """``object-add`` arguments for the iothread ``disk`` runs in (None without one).

    Poll settings left at None keep QEMU's defaults.
    """
    if disk.iothread_id is None:
        return None
    args: dict = {"qom-type": "iothread", "id": disk.iothread_id}
    for key, value in (("poll-max-ns", disk.poll_max_ns), ("poll-grow", disk.poll_grow),
                       ("poll-shrink", disk.poll_shrink)):
        if value is not None:
            args[key] = value
    return args


def _device_extras(disk: DiskSpec) -> dict:
    """The device properties a default DiskSpec leaves unset: iothread, write cache."""
    extras: dict = {}
    if disk.iothread_id is not None:
        if disk.iothread_vq_mapping:
            # Every virtqueue in the one iothread; the JSON list form only (QEMU >= 9.0).
            extras["iothread-vq-mapping"] = [{"iothread": disk.iothread_id}]
        else:
            extras["iothread"] = disk.iothread_id
    if not CACHE_MODES[disk.cache][2]:
        extras["write-cache"] = "off"
    return extras


def device_add_args(disk: DiskSpec, bus: str) -> dict:
    """``device_add`` arguments; numbers stay JSON numbers (QEMU >= 9.2 rejects strings)."""
    args = {
        "driver": "virtio-blk-pci",
        "id": disk.id,
        "bus": bus,
        "drive": disk.node_name,
        "serial": disk.serial,
        "num-queues": disk.num_queues,
        "queue-size": disk.queue_size,
        "logical_block_size": disk.logical_block_size,
        "physical_block_size": disk.effective_physical_block_size,
        "discard": disk.discard,
        "write-zeroes": disk.write_zeroes,
        **_device_extras(disk),
    }
    for policy in ("rerror", "werror"):
        if getattr(disk, policy) is not None:
            args[policy] = getattr(disk, policy)
    return args
