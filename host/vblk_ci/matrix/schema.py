"""The TOML matrix file: DiskSpecs crossed with workloads.

::

    [matrix]                 # required
    name = "default"
    vcpus = 2                # guest vCPUs unless a disk says otherwise
    memory_mb = 1024

    [defaults]               # DiskSpec fields every [disk.*] starts from
    backend = "null"

    [workload.qd1]           # one or more
    qd = 1
    bs = 4096
    runtime_s = 1.0          # per benchmark job (read and write, on each path)
    verify = true

    [disk.q2-poll]           # one DiskSpec per table; the table name is its id
    num_queues = 2
    guest_poll_queues = 1
    vcpus = 2                # optional: boots a VM with this many vCPUs for it

    [group.four]             # disks plugged at once, each on its own root port
    disks = ["q1", "q2-poll", "q4", "q4-4k"]

Combinations = (every disk alone, then every group) x every workload, named
``<disk or group>/<workload>``. Unknown keys and wrong types are ``UsageError``s
naming the file, the table and the key.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..disks.flags import parse_disk_flag
from ..disks.spec import DiskSpec, InjectError
from ..errors import UsageError

MAX_GROUP = 8


@dataclass(frozen=True)
class Workload:
    name: str
    qd: int = 1
    bs: int = 4096
    runtime_s: float = 1.0
    length_bytes: int = 8 << 20  # region the benchmarks cycle over
    verify: bool = True
    paths: tuple[str, ...] = ("passthru", "block")


@dataclass(frozen=True)
class Combination:
    name: str
    disks: tuple[DiskSpec, ...]
    workload: Workload
    vcpus: int
    group: bool = False  # several disks plugged at once


@dataclass(frozen=True)
class Matrix:
    name: str
    source: Path
    description: str
    vcpus: int
    memory_mb: int
    combinations: tuple[Combination, ...]


# TOML key -> (DiskSpec field, accepted Python types). ``id`` is the table name.
_DISK_KEYS: dict[str, tuple[type, ...]] = {
    "serial": (str,), "backend": (str,), "size_bytes": (int,), "num_queues": (int,), "queue_size": (int,),
    "path": (str,), "format": (str,), "read_only": (bool,), "logical_block_size": (int,),
    "physical_block_size": (int,), "discard": (bool,), "write_zeroes": (bool,), "latency_ns": (int,),
    "aio": (str,), "cache": (str,), "detect_zeroes": (str,), "iothread": (str,), "poll_max_ns": (int,),
    "poll_grow": (int,), "poll_shrink": (int,), "iothread_vq_mapping": (bool,), "guest_poll_queues": (int,),
    "guest_num_request_queues": (int,), "inject_errors": (list,),
}
_WORKLOAD_KEYS: dict[str, tuple[type, ...]] = {
    "qd": (int,), "bs": (int,), "runtime_s": (int, float), "length_bytes": (int,), "verify": (bool,),
    "paths": (list,),
}
_INJECT_KEYS: dict[str, tuple[type, ...]] = {"event": (str,), "sector": (int,), "errno": (int,), "once": (bool,)}
_TOP = {"matrix", "defaults", "workload", "disk", "group"}
WORKLOAD_PATHS = ("passthru", "block")


class _Where:
    """Names the place in the file for error messages."""

    def __init__(self, source: Path):
        self.source = source

    def error(self, table: str, key: str | None, why: str) -> UsageError:
        at = f"[{table}]" + (f" {key}" if key else "")
        return UsageError(f"{self.source}: {at}: {why}")


def _type_name(types: tuple[type, ...]) -> str:
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "a table"}
    return " or ".join(names[t] for t in types)


def _check_keys(where: _Where, table: str, data: Any, schema: dict[str, tuple[type, ...]],
                extra: dict[str, tuple[type, ...]] | None = None) -> dict:
    if not isinstance(data, dict):
        raise where.error(table, None, "must be a table")
    allowed = {**schema, **(extra or {})}
    for key, value in data.items():
        if key not in allowed:
            raise where.error(table, key, f"unknown key (known: {', '.join(sorted(allowed))})")
        types = allowed[key]
        # bool is an int in Python: only accept it where a bool is wanted.
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise where.error(table, key, f"must be {_type_name(types)}, not {type(value).__name__} {value!r}")
    return data


def disk_from_table(where: _Where, table: str, disk_id: str, data: dict, image_dir: Path) -> DiskSpec:
    """One DiskSpec from merged [defaults] + [disk.<id>] keys (already type-checked)."""
    fields: dict[str, Any] = {"id": disk_id, "serial": data.get("serial", disk_id[:20])}
    for key, value in data.items():
        if key in ("serial", "vcpus"):
            continue
        if key == "path":
            value = Path(value)
        elif key == "inject_errors":
            rules = []
            for i, rule in enumerate(value):
                _check_keys(where, f"{table}.inject_errors[{i}]", rule, _INJECT_KEYS)
                rules.append(InjectError(**rule))
            value = tuple(rules)
        fields[key] = value
    if fields.get("backend") == "file" and "path" not in fields:
        fields["path"] = Path(image_dir) / f"{disk_id}.{fields.get('format', 'raw')}"
    try:
        return DiskSpec(**fields).validate()
    except UsageError as exc:
        raise where.error(table, None, str(exc)) from None


def _workload(where: _Where, name: str, data: dict) -> Workload:
    table = f"workload.{name}"
    _check_keys(where, table, data, _WORKLOAD_KEYS)
    fields = dict(data)
    if "paths" in fields:
        paths = fields["paths"]
        if not paths or any(p not in WORKLOAD_PATHS for p in paths):
            raise where.error(table, "paths", f"must be a non-empty list of {', '.join(WORKLOAD_PATHS)}")
        fields["paths"] = tuple(paths)
    w = Workload(name=name, **fields)
    for key in ("qd", "bs", "length_bytes"):
        if getattr(w, key) < 1:
            raise where.error(table, key, "must be at least 1")
    if w.bs % 512 or w.length_bytes % w.bs:
        raise where.error(table, "bs", "must be a multiple of 512 that divides length_bytes")
    if not 0 < w.runtime_s <= 600:
        raise where.error(table, "runtime_s", "must be in (0, 600]")
    return w


def _positive(where: _Where, table: str, key: str, value: Any, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise where.error(table, key, f"must be a positive integer, not {value!r}")
    return value


def parse_matrix(text: str, source: Path, image_dir: Path) -> Matrix:
    where = _Where(Path(source))
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{source}: not valid TOML: {exc}") from None
    for key in doc:
        if key not in _TOP:
            raise where.error(key, None, f"unknown table (known: {', '.join(sorted(_TOP))})")
    head = _check_keys(where, "matrix", doc.get("matrix"), {"name": (str,), "description": (str,),
                                                             "vcpus": (int,), "memory_mb": (int,)})
    if "name" not in head:
        raise where.error("matrix", "name", "is required")
    vcpus = _positive(where, "matrix", "vcpus", head.get("vcpus"), 2)
    memory_mb = _positive(where, "matrix", "memory_mb", head.get("memory_mb"), 1024)
    defaults = _check_keys(where, "defaults", doc.get("defaults", {}), _DISK_KEYS)
    for key in ("serial", "path"):
        if key in defaults:
            raise where.error("defaults", key, "must be set per disk")

    workloads = []
    for name, data in _table_of_tables(where, doc, "workload").items():
        workloads.append(_workload(where, name, data))
    if not workloads:
        raise where.error("workload", None, "at least one [workload.<name>] table is required")

    disks: dict[str, tuple[DiskSpec, int]] = {}
    for name, data in _table_of_tables(where, doc, "disk").items():
        table = f"disk.{name}"
        _check_keys(where, table, data, _DISK_KEYS, {"vcpus": (int,)})
        disk_vcpus = _positive(where, table, "vcpus", data.get("vcpus"), vcpus)
        disk = disk_from_table(where, table, name, {**defaults, **data}, image_dir)
        if disk.guest_num_request_queues > disk_vcpus:
            raise where.error(table, "guest_num_request_queues",
                              f"{disk.guest_num_request_queues} is more than the {disk_vcpus} vCPUs "
                              "(the guest refuses values above nr_cpu_ids)")
        disks[name] = (disk, disk_vcpus)
    if not disks:
        raise where.error("disk", None, "at least one [disk.<name>] table is required")
    serials = {}
    for name, (disk, _) in disks.items():
        if disk.serial in serials:
            raise where.error(f"disk.{name}", "serial", f"{disk.serial!r} is also the serial of disk {serials[disk.serial]}")
        serials[disk.serial] = name

    units: list[tuple[str, tuple[DiskSpec, ...], int, bool]] = [(n, (d,), v, False) for n, (d, v) in disks.items()]
    for name, data in _table_of_tables(where, doc, "group").items():
        table = f"group.{name}"
        _check_keys(where, table, data, {"disks": (list,)})
        members = data.get("disks")
        if not members or not 2 <= len(members) <= MAX_GROUP:
            raise where.error(table, "disks", f"must list 2..{MAX_GROUP} disks")
        for m in members:
            if m not in disks:
                raise where.error(table, "disks", f"no [disk.{m}] table")
        if len(set(members)) != len(members):
            raise where.error(table, "disks", "lists a disk twice")
        specs = tuple(disks[m][0] for m in members)
        group_vcpus = {disks[m][1] for m in members}
        if len(group_vcpus) > 1:
            raise where.error(table, "disks", "disks plugged together must share one vcpus value")
        # The virtio_blk module parameters are global and read at probe: one value per group.
        for param in ("guest_poll_queues", "guest_num_request_queues"):
            if len({getattr(d, param) for d in specs}) > 1:
                raise where.error(table, "disks", f"disks plugged together must share one {param}")
        if name in disks:
            raise where.error(table, None, f"a disk is also named {name!r}")
        units.append((name, specs, group_vcpus.pop(), True))

    combos = tuple(Combination(f"{unit}/{w.name}", specs, w, v, group)
                   for unit, specs, v, group in units for w in workloads)
    return Matrix(head["name"], Path(source), head.get("description", ""), vcpus, memory_mb, combos)


def _table_of_tables(where: _Where, doc: dict, key: str) -> dict:
    tables = doc.get(key, {})
    if not isinstance(tables, dict):
        raise where.error(key, None, f"must be tables [{key}.<name>]")
    for name, data in tables.items():
        if not isinstance(data, dict):
            raise where.error(f"{key}.{name}", None, "must be a table")
    return tables


def load_matrix(path: Path, image_dir: Path) -> Matrix:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read matrix file {path}: {exc.strerror}") from None
    return parse_matrix(text, path, image_dir)


# -- DiskSpecs from command-line flags ------------------------------------------------------

FLAGS_SOURCE = Path("<--disk flags>")


def _toml_literal(value: object) -> str:
    """A parsed flag value as a TOML literal (the matrix parser then checks it like a file's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def matrix_from_flags(disks: list[str], image_dir: Path, vcpus: int = 2, memory_mb: int = 1024,
                      group: bool = False) -> Matrix:
    """``--disk id=a,num_queues=4,aio=io_uring`` (repeatable) -> a matrix of those disks x one
    QD1 workload; ``group`` also plugs them all at once. Same checks as a file."""
    lines = ["[matrix]", 'name = "flags"', f"vcpus = {vcpus}", f"memory_mb = {memory_mb}",
             "[workload.qd1]", "qd = 1"]
    ids = []
    for i, flag in enumerate(disks):
        fields = parse_disk_flag(flag, i, id_prefix="disk")  # the same rules as vblk-ci shell --disk
        disk_id = fields.pop("id")
        ids.append(disk_id)
        lines.append(f'[disk."{disk_id}"]')
        for key, value in fields.items():
            lines.append(f"{key} = {_toml_literal(value)}")
    if group and len(ids) > 1:
        lines += ["[group.all]", "disks = [" + ", ".join(f'"{i}"' for i in ids) + "]"]
    return parse_matrix("\n".join(lines) + "\n", FLAGS_SOURCE, image_dir)
