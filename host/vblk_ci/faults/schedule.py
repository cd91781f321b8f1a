"""Fault schedules: which fault fires when, in terms of I/O progress, as JSON.

    {"name": "eio-burst", "seed": 7, "faults": [
      {"trigger": {"disk": "f0", "completions": 1000, "jitter": 200},
       "kind": "blkdebug-error", "disk": "f0", "params": {"op": "write"}, "duration_s": 0.05},
      {"trigger": {"at_s": 2.5}, "kind": "vm-stop", "duration_s": 1}]}

A trigger is either "after ``completions`` I/O completions on ``disk``" (as
the engine job on that disk reports them; ``jitter`` adds 0..jitter more,
drawn from the schedule's ``seed``) or "``at_s`` seconds after the schedule
starts". ``duration_s`` is how long the fault stays armed (omitted: until the
scenario takes it back; one-shot kinds have none). Entries fire in order.
``load_schedule``/``Schedule.from_json`` raise ``UsageError`` with one line.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..disks.spec import DiskSpec
from ..errors import UsageError
from .kinds import KINDS, Fault, make_fault

MAX_DURATION_S = 600.0


@dataclass(frozen=True)
class Trigger:
    disk: str | None = None
    completions: int | None = None
    jitter: int = 0
    at_s: float | None = None

    def to_json(self) -> dict:
        if self.at_s is not None:
            return {"at_s": self.at_s}
        out: dict = {"disk": self.disk, "completions": self.completions}
        if self.jitter:
            out["jitter"] = self.jitter
        return out


@dataclass(frozen=True)
class ScheduledFault:
    trigger: Trigger
    kind: str
    disk: str | None = None
    params: dict = field(default_factory=dict)
    duration_s: float | None = None

    def to_json(self) -> dict:
        out: dict = {"trigger": self.trigger.to_json(), "kind": self.kind}
        if self.disk is not None:
            out["disk"] = self.disk
        if self.params:
            out["params"] = dict(self.params)
        if self.duration_s is not None:
            out["duration_s"] = self.duration_s
        return out


@dataclass(frozen=True)
class Schedule:
    name: str
    seed: int
    faults: tuple[ScheduledFault, ...]

    # -- JSON ----------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"name": self.name, "seed": self.seed, "faults": [f.to_json() for f in self.faults]}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, doc: Any, where: str = "schedule") -> "Schedule":
        def bad(msg: str) -> UsageError:
            return UsageError(f"{where}: {msg}")

        if not isinstance(doc, dict):
            raise bad("must be a JSON object")
        extra = sorted(set(doc) - {"name", "seed", "faults"})
        if extra:
            raise bad(f"unknown key {extra[0]!r} (known: name, seed, faults)")
        name = doc.get("name", "schedule")
        if not isinstance(name, str) or not name:
            raise bad("name must be a non-empty string")
        seed = doc.get("seed", 0)
        if not _is_int(seed) or seed < 0:
            raise bad("seed must be a non-negative integer")
        entries = doc.get("faults")
        if not isinstance(entries, list) or not entries:
            raise bad("faults must be a non-empty list")
        return cls(name, seed, tuple(_entry(e, f"{where}: faults[{i}]") for i, e in enumerate(entries)))

    def save(self, path: Path) -> None:
        Path(path).write_text(self.dumps(), encoding="utf-8")

    # -- use -----------------------------------------------------------------------------------
    def bind(self, disks: dict[str, DiskSpec]) -> list[Fault]:
        """The faults, made against the scenario's disks (parameters checked against each disk)."""
        out = []
        for i, entry in enumerate(self.faults):
            if entry.disk is not None and entry.disk not in disks:
                raise UsageError(f"schedule {self.name!r}: faults[{i}]: no disk {entry.disk!r} "
                                 f"(this scenario has {', '.join(sorted(disks)) or 'none'})")
            if entry.trigger.disk is not None and entry.trigger.disk not in disks:
                raise UsageError(f"schedule {self.name!r}: faults[{i}]: trigger names no disk of this scenario: "
                                 f"{entry.trigger.disk!r}")
            out.append(make_fault(entry.kind, disks.get(entry.disk) if entry.disk else None, entry.params))
        return out

    def disk_ids(self) -> list[str]:
        """Every disk the schedule names (as a fault's target or in a trigger), in first-use order."""
        ids: list[str] = []
        for entry in self.faults:
            for disk in (entry.disk, entry.trigger.disk):
                if disk is not None and disk not in ids:
                    ids.append(disk)
        return ids

    def thresholds(self) -> list[int | None]:
        """Completion counts each entry waits for, jitter drawn from the seed (same seed, same run)."""
        rng = random.Random(self.seed)
        out: list[int | None] = []
        for entry in self.faults:
            t = entry.trigger
            out.append(None if t.completions is None else t.completions + (rng.randint(0, t.jitter) if t.jitter else 0))
        return out


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _trigger(doc: Any, where: str) -> Trigger:
    if not isinstance(doc, dict):
        raise UsageError(f"{where}: trigger must be an object")
    keys = set(doc)
    if "at_s" in keys:
        if keys != {"at_s"}:
            raise UsageError(f"{where}: trigger: at_s cannot be combined with {sorted(keys - {'at_s'})[0]!r}")
        if not _is_num(doc["at_s"]) or not 0 <= doc["at_s"] <= MAX_DURATION_S:
            raise UsageError(f"{where}: trigger: at_s must be seconds in 0..{MAX_DURATION_S:g}")
        return Trigger(at_s=float(doc["at_s"]))
    extra = sorted(keys - {"disk", "completions", "jitter"})
    if extra:
        raise UsageError(f"{where}: trigger: unknown key {extra[0]!r} (known: disk, completions, jitter; or at_s)")
    if not isinstance(doc.get("disk"), str) or not doc["disk"]:
        raise UsageError(f"{where}: trigger: give disk and completions, or at_s")
    if not _is_int(doc.get("completions")) or doc["completions"] < 0:
        raise UsageError(f"{where}: trigger: completions must be a non-negative integer")
    jitter = doc.get("jitter", 0)
    if not _is_int(jitter) or jitter < 0:
        raise UsageError(f"{where}: trigger: jitter must be a non-negative integer")
    return Trigger(disk=doc["disk"], completions=doc["completions"], jitter=jitter)


def _entry(doc: Any, where: str) -> ScheduledFault:
    if not isinstance(doc, dict):
        raise UsageError(f"{where}: must be an object")
    extra = sorted(set(doc) - {"trigger", "kind", "disk", "params", "duration_s"})
    if extra:
        raise UsageError(f"{where}: unknown key {extra[0]!r} (known: trigger, kind, disk, params, duration_s)")
    kind = doc.get("kind")
    if kind not in KINDS:
        raise UsageError(f"{where}: kind must be one of {', '.join(sorted(KINDS))}, not {kind!r}")
    cls = KINDS[kind]
    disk = doc.get("disk")
    if cls.needs_disk and (not isinstance(disk, str) or not disk):
        raise UsageError(f"{where}: kind {kind!r} needs a disk id")
    if not cls.needs_disk and disk is not None:
        raise UsageError(f"{where}: kind {kind!r} acts on the whole VM: no disk")
    params = doc.get("params", {})
    if not isinstance(params, dict):
        raise UsageError(f"{where}: params must be an object")
    duration = doc.get("duration_s")
    if duration is not None:
        if cls.one_shot:
            raise UsageError(f"{where}: kind {kind!r} is one-shot: no duration_s")
        if not _is_num(duration) or not 0 <= duration <= MAX_DURATION_S:
            raise UsageError(f"{where}: duration_s must be seconds in 0..{MAX_DURATION_S:g}")
        duration = float(duration)
    # Parameter checks that need no disk run now, so a bad file fails before any VM starts.
    _check_params(cls, params, f"{where}")
    return ScheduledFault(_trigger(doc.get("trigger"), where), kind, disk, dict(params), duration)


def _check_params(cls: type[Fault], params: dict, where: str) -> None:
    unknown = sorted(set(params) - set(cls.params))
    if unknown:
        raise UsageError(f"{where}: fault {cls.kind!r}: {unknown[0]}: unknown parameter "
                         f"(known: {', '.join(cls.params) or 'none'})")
    for name, (check, default) in cls.params.items():
        if name not in params:
            if default is Fault._REQUIRED:
                raise UsageError(f"{where}: fault {cls.kind!r}: {name}: is required")
            continue
        try:
            check(name, params[name])
        except ValueError as exc:
            raise UsageError(f"{where}: fault {cls.kind!r}: {name}: {exc}") from None


def load_schedule(path: Path) -> Schedule:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the schedule: {exc.strerror}") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{path}: not JSON: {exc}") from None
    return Schedule.from_json(doc, str(path))


def record_schedule(run_dir: Path, scenario: str, schedule: Schedule, fired: list[dict]) -> Path:
    """Add one scenario's schedule and what fired when to ``<run_dir>/schedule.json``
    (the repro bundle packs that file)."""
    path = Path(run_dir) / "schedule.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        doc = {"schedules": []}
    doc["schedules"] = [s for s in doc.get("schedules", [])
                        if (s.get("scenario"), (s.get("schedule") or {}).get("name")) != (scenario, schedule.name)]
    doc["schedules"].append({"scenario": scenario, "schedule": schedule.to_json(), "fired": fired})
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
