"""Boot one VM, plug each backend's disk, alternate the two paths in pairs, measure.

``run_bench(plan, emit)`` never prints: it emits events and returns the record
(a JSON-able dict, see ``summarize``) that the report writers turn into
bench.json / bench.md / plots. The VM's logs go in the output folder like a run's.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .. import __version__
from .. import events as E
from ..disks.spec import DiskSpec
from ..errors import AgentError, CheckFailed, MissingPrerequisite, UsageError
from ..machine.accel import choose
from ..machine.argv import MachineSpec
from ..machine.machine import Machine, Timeouts
from ..machine.qemuinfo import DEFAULT_QEMU, probe_caps, resolve_binary
from . import kicks as K
from .job import PATHS, BenchOptions, Comparison, Job
from .summary import summarize

WARMUP_S = 0.3  # untimed run per path after plugging: TCG translates the code paths first
ICOUNT_SHIFT = 0  # one guest instruction = 1 ns of virtual time


def pair_order(pair: int) -> tuple[str, ...]:
    """ABBA over pairs (AB, BA, BA, AB, ...): with an even number of pairs each path goes
    first equally often, and a linear drift over the run cancels as well as the order effect
    (plain alternation with an odd count leaves one order over-represented)."""
    return PATHS if pair % 4 in (0, 3) else PATHS[::-1]


@dataclass(frozen=True)
class BenchPlan:
    kernel: Path
    initramfs: Path
    out: Path
    options: BenchOptions
    qemu: str = DEFAULT_QEMU
    accel: str = "auto"
    smp: int = 2
    memory_mb: int = 1024
    preset: str | None = None


def _disk(backend: str, size: int, out: Path) -> DiskSpec:
    if backend == "null":
        return DiskSpec(id="bench-null", serial="bench-null", backend="null", size_bytes=size).validate()
    path = out / "bench-disk.img"
    # Written, not sparse: reads and writes hit allocated blocks on the host.
    with open(path, "wb") as f:
        chunk = bytes(range(256)) * 4096
        for _ in range(size // len(chunk)):
            f.write(chunk)
        f.write(chunk[: size % len(chunk)])
    return DiskSpec(id="bench-file", serial="bench-file", backend="file", size_bytes=size, path=path,
                    aio="io_uring").validate()


class _Bench:
    def __init__(self, plan: BenchPlan, machine: Machine, emit: E.Emit, trace: K.TraceTail | None):
        self.plan = plan
        self.opts = plan.options
        self.machine = machine
        self.agent = machine.agent
        self.emit = emit
        self.trace = trace
        self.fio_missing: str | None = None

    def _timeout(self, job: Job) -> float:
        # The engine's own clock decides the runtime; this only catches a hung job.
        base = job.runtime_s if job.runtime_s is not None else job.ios / 1000.0
        return self.machine.timeouts(60.0 + 4 * base)

    def _trace(self, on: bool) -> None:
        for name in K.EVENTS:
            self.machine.qmp("trace-event-set-state", {"name": name, "enable": on})

    def run_engine(self, job: Job, dev: str) -> tuple[dict, K.KickCounts | None]:
        if self.trace is not None:
            self._trace(True)
            self.trace.take()
        try:
            res = self.agent.engine(job.engine_args(dev), timeout_s=self._timeout(job))
        finally:
            if self.trace is not None:
                self._trace(False)
        counts = None
        if self.trace is not None:
            time.sleep(0.2)  # the log backend writes from QEMU's threads; let the last lines land
            counts = K.count(self.trace.take())
        if res.get("exit_code") != 0:
            err = (res.get("stderr") or "").strip().splitlines()
            raise CheckFailed(f"vblk-engine {' '.join(job.engine_args(dev))} exited {res.get('exit_code')}: "
                              f"{err[-1] if err else ''}")
        if "cpu_ns_per_io" not in (res.get("bench") or {}):
            raise MissingPrerequisite("the guest's vblk-engine has no cpu_ns_per_io: the initramfs predates "
                                      "the bench engine options; rebuild it ('vblk-ci build initramfs')")
        if res.get("errors"):
            raise CheckFailed(f"{dev}: {res['errors']} I/O errors in a benchmark, first {res.get('first_error')}")
        return res, counts

    def run_fio(self, job: Job, dev: str) -> dict:
        argv = ["fio", *job.fio_args(dev)]
        try:
            res = self.agent.exec(argv=argv, timeout_s=self._timeout(job))
        except AgentError as exc:
            return {"argv": argv, "error": str(exc)}
        if res.get("rc") != 0:
            stderr = (res.get("stderr") or "").strip()
            if "shmget" in stderr:  # fio keeps its job table in SysV shared memory
                self.fio_missing = "fio needs System V shared memory (shmget): the guest kernel lacks CONFIG_SYSVIPC"
            return {"argv": argv, "error": f"fio exited {res.get('rc')}: {stderr[-300:]}"}
        try:
            data = json.loads(res["stdout"][res["stdout"].index("{"):])
            j = data["jobs"][0]
        except (ValueError, KeyError, IndexError) as exc:
            return {"argv": argv, "error": f"unreadable fio output: {exc}"}
        iops = float(j["read"]["iops"]) + float(j["write"]["iops"])
        bw = 1024.0 * (float(j["read"]["bw"]) + float(j["write"]["bw"]))
        return {"argv": argv, "iops": iops, "bw_bytes_s": bw, "fio_version": data.get("fio version")}

    def fio_available(self) -> str | None:
        try:
            res = self.agent.exec(argv=["fio", "--version"], timeout_s=self.machine.timeouts(30.0))
        except AgentError as exc:
            return f"fio --version failed in the guest: {exc}"
        if res.get("rc") != 0:
            return ("no fio in the guest initramfs (build it with 'vblk-ci build initramfs --with-fio')"
                    if res.get("rc") == 127 else f"fio --version exited {res.get('rc')}")
        return None

    def comparison(self, comp: Comparison, devs: dict[str, str]) -> dict:
        emit = self.emit
        emit(E.Note(f"bench {comp.name}: passthru [{comp.passthru.describe()}] vs block [{comp.block.describe()}]"))
        for path in PATHS:  # warm-up, not recorded
            self.run_engine(replace(comp.job(path), runtime_s=WARMUP_S, ios=None), devs[path])
        runs = []
        for pair in range(self.opts.pairs):
            order = pair_order(pair)
            for pos, path in enumerate(order):
                res, counts = self.run_engine(comp.job(path), devs[path])
                runs.append({"pair": pair, "path": path, "position": pos, "device": devs[path],
                             "engine": res, "kicks": counts.to_json() if counts else None})
                b = res["bench"]
                rpk = f", {counts.reqs_per_kick:.2f} req/kick" if counts and counts.reqs_per_kick else ""
                emit(E.Note(f"  pair {pair + 1}/{self.opts.pairs} {path:8s} {b['iops']:10.1f} IOPS, "
                            f"{b['cpu_ns_per_io']:.0f} cpu ns/IO{rpk}"))
        fio_runs = []
        if self.opts.fio and self.fio_missing is None:
            for i in range(self.opts.fio_runs):
                if self.fio_missing is not None:
                    break
                r = self.run_fio(comp.block, devs["block"])
                fio_runs.append(r)
                emit(E.Note(f"  fio {i + 1}/{self.opts.fio_runs} block "
                            + (f"{r['iops']:10.1f} IOPS" if "iops" in r else f"error: {r['error']}")))
        return {"name": comp.name, "backend": comp.backend, "style": comp.style, "fair": comp.fair,
                "note": comp.note, "jobs": {"passthru": asdict(comp.passthru), "block": asdict(comp.block)},
                "describe": {"passthru": comp.passthru.describe(), "block": comp.block.describe()},
                "runs": runs, "fio": fio_runs,
                "fio_skipped": (self.fio_missing or None) if self.opts.fio else "disabled (--no-fio)"}

    def backend(self, backend: str, comps: list[Comparison]) -> list[dict]:
        disk = _disk(backend, self.opts.disk_size, self.plan.out)
        slot = self.machine.free_slot()
        plugged = self.machine.hotplug(disk, slot, chardev=True)
        self.emit(E.DiskPlugged(disk.id, disk.serial, plugged.seconds_to_visible, plugged.guest_name,
                                plugged.chardev))
        info = self.agent.wait_disk(disk.serial, timeout_s=self.machine.timeouts(10.0), chardev=True)
        devs = {"passthru": info["chardev"], "block": info["blockdev"]}
        if not devs["passthru"] or not devs["block"]:
            raise CheckFailed(f"{disk.serial}: the guest shows no char device or block device: {info}")
        out = [self.comparison(c, devs) for c in comps]
        seconds = self.machine.unplug(disk.id)
        self.emit(E.DiskUnplugged(disk.id, seconds))
        if disk.path is not None:
            Path(disk.path).unlink(missing_ok=True)
        return out


def run_bench(plan: BenchPlan, emit: E.Emit = E.discard) -> dict:
    opts = plan.options.validate()
    for what, path in (("kernel image", plan.kernel), ("initramfs", plan.initramfs)):
        if not Path(path).is_file():
            raise MissingPrerequisite(f"{what} not found: {path}")
    out = Path(plan.out)
    out.mkdir(parents=True, exist_ok=True)
    qemu = resolve_binary(plan.qemu)
    caps = probe_caps(qemu)
    accel = choose(qemu, Path(plan.kernel), plan.accel)
    if opts.icount and accel.name != "tcg":
        raise UsageError("--icount needs TCG (pass --accel tcg)")
    if opts.icount and plan.smp != 1:
        emit(E.Note(f"icount with {plan.smp} vCPUs: instructions of every vCPU advance the one virtual clock, "
                    "so CPU time per I/O includes what the other vCPUs ran meanwhile"))
    emit(E.Note(f"accelerator {accel.name}: {accel.reason}"))
    trace_log = out / "trace.log" if opts.kicks else None
    if trace_log is not None:
        trace_log.unlink(missing_ok=True)
    spec = MachineSpec(qemu=qemu, kernel=Path(plan.kernel), initrd=Path(plan.initramfs), accel=accel.name,
                       smp=plan.smp, memory_mb=plan.memory_mb, disk_slots=2,
                       icount_shift=ICOUNT_SHIFT if opts.icount else None, trace_log=trace_log)
    started = time.monotonic()
    record: dict = {
        "tool": "vblk-ci bench", "version": __version__,
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "preset": plan.preset, "accel": accel.name, "accel_reason": accel.reason,
        "relative_only": accel.name == "tcg", "icount": ICOUNT_SHIFT if opts.icount else None,
        "qemu": qemu, "qemu_version": ".".join(map(str, caps.version)), "kernel": str(plan.kernel),
        "initramfs": str(plan.initramfs), "smp": plan.smp, "memory_mb": plan.memory_mb,
        "host_cpus": os.cpu_count(), "pairs": opts.pairs, "kicks_counted": opts.kicks,
        "comparisons": [],
    }
    machine = Machine(spec, out, Timeouts.for_accel(accel.name), caps)
    emit(E.BootStart(accel.name))
    with machine:
        record["boot_seconds"] = machine.wait_boot()
        emit(E.BootEnd(record["boot_seconds"], accel.name))
        record["agent_seconds"] = machine.wait_agent()
        emit(E.AgentReady(record["agent_seconds"]))
        tail = K.TraceTail(trace_log) if trace_log is not None else None
        bench = _Bench(plan, machine, emit, tail)
        bench.fio_missing = bench.fio_available() if opts.fio else None
        record["fio_missing"] = bench.fio_missing
        for backend in ("null", "file"):
            comps = [c for c in opts.comparisons if c.backend == backend]
            if comps:
                record["comparisons"] += bench.backend(backend, comps)
    record["seconds"] = time.monotonic() - started
    if trace_log is not None and trace_log.exists():
        record["trace_log_bytes"] = trace_log.stat().st_size
        if not opts.keep_trace:
            trace_log.unlink()  # large and fully summarised in the record
    return summarize(record)
