"""Run a matrix: one VM per vCPU count, each combination plugged, both-side checked,
exercised at QD1 on both paths, verified and unplugged.

Each combination becomes a ScenarioResult named after it, with checks ``plug``,
``config``, ``iops-<disk>``, ``verify-<disk>`` and ``unplug``. A ``config`` check
that finds QEMU or the guest disagreeing with the spec gets the status
``config-mismatch``: the combination's workloads are not run, and the run's verdict
is ``config-mismatch`` (exit 4) unless something failed outright. Per-combination
figures go into ``results.json`` (``timings.matrix``), ``report/matrix.md`` and the
GitHub step summary.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path

from .. import events as E
from ..agent.testinfra_backend import guest_host
from ..disks.configcheck import compare, guest_view, mismatches, qemu_view
from ..disks.plugging import DiskPlugger, probe_block_features, unsupported
from ..disks.spec import DiskSpec
from ..errors import AgentError, BootError, CheckFailed, ConfigMismatch, InfraError, MachineTimeout
from ..machine.accel import choose
from ..machine.argv import MachineSpec
from ..machine.machine import Machine, Timeouts
from ..machine.qemuinfo import DEFAULT_QEMU, probe_caps, resolve_binary
from ..report.json_report import write_json
from ..report.junit import write_junit
from ..report.summary import append_step_summary
from ..result import SKIP, CheckResult, RunResult, ScenarioResult
from ..runner import EventLog, check_artifacts, judge, record_abort
from ..scenarios.base import ScenarioContext
from ..scenarios.driver_common import expect_clean, run_engine
from .report import write_markdown
from .schema import Combination, Matrix
from .select import matches

MiB = 1 << 20
VERIFY_BYTES = MiB


@dataclass(frozen=True)
class MatrixPlan:
    kernel: Path
    initramfs: Path
    run_dir: Path
    matrix: Matrix
    select: str | None = None
    qemu: str = DEFAULT_QEMU
    accel: str = "auto"


def selected(matrix: Matrix, expr: str | None) -> list[Combination]:
    return [c for c in matrix.combinations if matches(expr, c.name)]


def _by_vcpus(combos: list[Combination]) -> dict[int, list[Combination]]:
    groups: dict[int, list[Combination]] = {}
    for c in combos:
        groups.setdefault(c.vcpus, []).append(c)
    return groups


def run_matrix(plan: MatrixPlan, emit: E.Emit = E.discard) -> RunResult:
    started = time.monotonic()
    run_dir = Path(plan.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = EventLog(run_dir / "events.jsonl", emit)
    emit = log
    suite_name = f"matrix:{plan.matrix.name}"
    emit(E.RunStart(str(run_dir), suite_name))
    check_artifacts(plan)  # type: ignore[arg-type]  (same kernel/initramfs fields)
    qemu = resolve_binary(plan.qemu)
    caps = probe_caps(qemu)
    accel = choose(qemu, Path(plan.kernel), plan.accel)
    emit(E.Note(f"accelerator {accel.name}: {accel.reason}"))
    combos = selected(plan.matrix, plan.select)
    result = RunResult(
        status=E.PASS, suite=suite_name, run_dir=str(run_dir),
        started_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        accel=accel.name, accel_reason=accel.reason, qemu=qemu,
        qemu_version=".".join(map(str, caps.version)), kernel=str(plan.kernel), initramfs=str(plan.initramfs),
    )
    figures: list[dict] = []
    boots: list[dict] = []
    reported: set[str] = set()
    machines: list[Machine] = []
    if not combos:
        result.status, result.reason = E.ERROR, f"-k {plan.select!r} selects none of {len(plan.matrix.combinations)} combinations"
    for vcpus, group in _by_vcpus(combos).items():
        slots = max(4, max(len(c.disks) for c in group))
        vm_dir = run_dir / f"vm-{vcpus}cpu"
        spec = MachineSpec(qemu=qemu, kernel=Path(plan.kernel), initrd=Path(plan.initramfs), accel=accel.name,
                           smp=vcpus, memory_mb=plan.matrix.memory_mb, disk_slots=slots)
        machine = Machine(spec, vm_dir, Timeouts.for_accel(accel.name), caps)
        machines.append(machine)
        emit(E.Note(f"booting a {vcpus}-vCPU VM for {len(group)} combination(s)"))
        try:
            emit(E.BootStart(accel.name))
            with machine:
                boot_s = machine.wait_boot()
                emit(E.BootEnd(boot_s, accel.name))
                agent_s = machine.wait_agent()
                emit(E.AgentReady(agent_s))
                boots.append({"vcpus": vcpus, "boot_s": boot_s, "agent_s": agent_s, "run_dir": str(vm_dir)})
                if result.boot_seconds is None:
                    result.boot_seconds, result.agent_seconds = boot_s, agent_s
                reasons = probe_block_features(machine, vm_dir)
                plugger = DiskPlugger(machine)
                for combo in group:
                    figures.append(_run_combination(combo, machine, plugger, reasons, run_dir, emit, result, reported))
        except (BootError, InfraError, CheckFailed, AgentError) as exc:
            record_abort(result, run_dir, exc)
        finally:
            result.qemu_exitcode = machine.exitcode
        if result.status != E.PASS:
            break
    for machine in machines:
        judge(result, machine, emit, reported, log.events)
    _fold_mismatch(result)
    result.seconds = time.monotonic() - started
    result.timings["matrix"] = {"file": str(plan.matrix.source), "name": plan.matrix.name, "select": plan.select,
                                "wall_s": result.seconds, "boots": boots, "combinations": figures}
    write_json(result, run_dir / "results.json")
    write_junit(result, run_dir / "junit.xml")
    md = write_markdown(result, run_dir / "report" / "matrix.md")
    append_step_summary(result)
    _append_matrix_summary(md)
    emit(E.Verdict(result.status, result.reason))
    return result


def _append_matrix_summary(md: Path) -> None:
    import os

    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if target:
        with open(target, "a", encoding="utf-8") as f:
            f.write(md.read_text(encoding="utf-8"))


def _fold_mismatch(result: RunResult) -> None:
    """A config mismatch is the verdict unless a check failed or errored (those say more)."""
    bad = [c for c in result.checks() if c.status == E.CONFIG_MISMATCH]
    if bad and result.status == E.PASS:
        result.status = E.CONFIG_MISMATCH
        result.reason = f"CONFIG_MISMATCH in {len(bad)} combination(s), first {bad[0].scenario}: {bad[0].detail}"


def _config_check(ctx: ScenarioContext, combo: Combination, names: dict[str, str]) -> CheckResult:
    """Both sides against the spec; a disagreement is a ``config-mismatch`` check (ConfigMismatch),
    not a failure. An ordinary ``ctx.check``: console judging and bookkeeping are the context's."""

    def config(rec: dict) -> None:
        host = guest_host(ctx.agent)
        rec["disks"] = {}
        bad = []
        for disk in combo.disks:
            qv = qemu_view(ctx.machine, disk)
            gv = guest_view(host, names[disk.id])
            checks = compare(disk, combo.vcpus, qv, gv)
            rec["disks"][disk.id] = {"guest_name": names[disk.id], "qemu": qv, "guest": gv,
                                     "fields": [c.to_dict() for c in checks]}
            bad += mismatches(checks)
        if bad:
            raise ConfigMismatch("; ".join(m.describe() for m in bad))

    return ctx.check("config", config)


def _bench(path: str, op: str, w, seconds: float) -> list[str]:
    return ["--path", path, "--op", op, "--bench", "--qd", str(w.qd), "--bs", str(w.bs),
            "--length", str(w.length_bytes), "--runtime", str(seconds)]


def _iops_check(ctx: ScenarioContext, combo: Combination, disk: DiskSpec, info: dict, figure: dict):
    w = combo.workload

    def check(rec: dict) -> None:
        out = {}
        for path_kind in w.paths:
            path = info["chardev"] if path_kind == "passthru" else info["blockdev"]
            for op in ("read", "write"):
                if op == "write" and disk.read_only:
                    continue
                key = f"{path_kind}-{op}"
                res = run_engine(ctx, rec, key, _bench(path, op, w, w.runtime_s))
                if res.get("errors"):
                    raise CheckFailed(f"{key}: {res['errors']} I/O errors, first {res.get('first_error')}")
                out[key] = round(res["bench"]["iops"], 1)
        rec["iops"] = out
        figure.setdefault("iops", {})[disk.id] = out

    return check


def _verify_check(ctx: ScenarioContext, disk: DiskSpec, info: dict):
    """File backend: data written on one path reads back on the other; null-co: reads are zeroes."""

    def check(rec: dict) -> None:
        c, b = info["chardev"], info["blockdev"]
        common = ["--length", str(VERIFY_BYTES), "--bs", "4096", "--qd", "4"]
        if disk.backend == "null":
            for key, path in (("passthru-zero", c), ("block-zero", b)):
                expect_clean(key, run_engine(ctx, rec, key, ["--path", path, "--op", "verify", "--zero", *common]))
            return
        if disk.read_only:
            raise CheckFailed("read-only file disk: nothing to verify against (use the null backend)")
        steps = (("passthru-write", c, "write", 0, 21), ("block-verify", b, "verify", 0, 21),
                 ("block-write", b, "write", VERIFY_BYTES, 22), ("passthru-verify", c, "verify", VERIFY_BYTES, 22))
        for key, path, op, offset, seed in steps:
            args = ["--path", path, "--op", op, "--offset", str(offset), "--seed", str(seed), *common]
            expect_clean(key, run_engine(ctx, rec, key, args))

    return check


def _run_combination(combo: Combination, machine: Machine, plugger: DiskPlugger, reasons: dict[str, str],
                     run_dir: Path, emit: E.Emit, result: RunResult, reported: set[str]) -> dict:
    ctx = ScenarioContext(combo.name, machine, run_dir, emit, reported)
    desc = f"{len(combo.disks)} disk(s) x workload {combo.workload.name}, {combo.vcpus} vCPUs"
    record = ScenarioResult(combo.name, desc)
    result.scenarios.append(record)
    figure: dict = {"name": combo.name, "vcpus": combo.vcpus, "disks": [_disk_summary(d) for d in combo.disks],
                    "group": combo.group}
    skip = [r for d in combo.disks for r in unsupported(d, reasons)]
    if skip:
        record.status, record.skip_reasons = SKIP, sorted(set(skip))
        emit(E.ScenarioSkipped(combo.name, tuple(record.skip_reasons)))
        figure.update(status=SKIP, seconds=0.0, skip_reasons=record.skip_reasons)
        return figure
    emit(E.ScenarioStart(combo.name, desc))
    started = time.monotonic()
    infos: dict[str, dict] = {}

    def plug(rec: dict) -> None:
        timings = plugger.plug_all(combo.disks, ctx.timeouts(60.0))
        for t in timings:
            infos[t.disk] = t.info
            emit(E.DiskPlugged(t.disk, infos[t.disk]["serial"], t.seconds_to_visible, t.guest_name, t.chardev))
        rec["plugged"] = {t.disk: {"guest_name": t.guest_name, "seconds_to_visible": t.seconds_to_visible}
                          for t in timings}
        figure["seconds_to_visible"] = {t.disk: round(t.seconds_to_visible, 3) for t in timings}

    def unplug(rec: dict) -> None:
        for disk in combo.disks:
            if disk.id not in machine.plugged:
                continue
            try:
                seconds = machine.unplug(disk.id)
            except MachineTimeout as exc:
                raise CheckFailed(f"unplug {disk.id}: {exc}") from exc
            emit(E.DiskUnplugged(disk.id, seconds))
            rec.setdefault("seconds_to_deleted", {})[disk.id] = seconds
            plugger.release(disk)
            name = (infos.get(disk.id) or {}).get("name")
            if name:
                try:
                    ctx.agent.wait_disk_gone(name, timeout_s=ctx.timeouts(10.0))
                except AgentError as exc:
                    raise CheckFailed(f"after unplug of {disk.id}: {exc}") from exc

    try:
        plugged = ctx.check("plug", plug).status == E.PASS
        ok = plugged and _config_check(ctx, combo, {d: i["name"] for d, i in infos.items()}).status == E.PASS
        for disk in combo.disks:
            for name, fn in ((f"iops-{disk.id}", _iops_check(ctx, combo, disk, infos.get(disk.id, {}), figure)),
                             (f"verify-{disk.id}", _verify_check(ctx, disk, infos.get(disk.id, {})))):
                if ok:
                    ctx.check(name, fn)
                else:
                    ctx.skip(name, "not run: " + ("config-mismatch" if plugged else "plug failed"))
        if machine.plugged:
            ctx.check("unplug", unplug)
    finally:
        record.checks = ctx.checks
        statuses = {c.status for c in ctx.checks}
        record.status = next((s for s in (E.ERROR, E.FAIL, E.CONFIG_MISMATCH) if s in statuses), E.PASS)
    figure.update(status=record.status, seconds=round(time.monotonic() - started, 3))
    config = next((c for c in ctx.checks if c.name == "config"), None)
    if config is not None and config.status == E.CONFIG_MISMATCH:
        figure["mismatch"] = config.detail
    return figure


def _disk_summary(disk: DiskSpec) -> dict:
    return {"id": disk.id, "backend": disk.backend, "num_queues": disk.num_queues, "queue_size": disk.queue_size,
            "poll_queues": disk.guest_poll_queues, "iothread": disk.iothread, "aio": disk.aio, "cache": disk.cache,
            "lbs": disk.logical_block_size, "pbs": disk.effective_physical_block_size,
            "vq_mapping": disk.iothread_vq_mapping}
