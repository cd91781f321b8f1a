"""The reproduction bundle: one tarball with everything needed to replay a failed run.

``write_bundle(plan, result, run_dir)`` is called by the runner on any verdict but
pass and writes ``<run_dir>/repro-bundle.tar.gz``. Members (all at the top level
except the artifacts):

- ``manifest.json``  schema, creation time, the verdict and what identifies it
  (``signature``), the kernel's series hash and release, the initramfs digest,
  QEMU version and accelerator, and the sha256 and size of every other member
- ``plan.json``      the runner's Plan fields (paths as recorded), so a replay can rebuild it
- ``qemu.json``      QEMU binary, version and full argv
- ``artifacts/bzImage``, ``artifacts/kernel.config``, ``artifacts/kernel-manifest.json``,
  ``artifacts/initramfs.cpio.gz`` -- each when it could be found
- ``findings.json``  the console classifier's output
- from the run dir as they are: ``console.log``, ``qmp.jsonl`` (every QMP command,
  reply and event, timestamped from launch), ``agent.log``, ``events.jsonl``,
  ``results.json``, ``qemu.log``, ``run.log``, ``schedule.json`` (a fault schedule,
  with its seed), ``qemu.argv``
- ``schedule-input.json`` the ``--schedule FILE`` the run was given, replayed as is

``read_bundle(path, dest)`` extracts into ``dest`` after checking every member
against the manifest; a bad bundle is a ``BundleError`` (a usage error: exit 2).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import shlex
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EXIT_INFRA, UsageError

BUNDLE_NAME = "repro-bundle.tar.gz"
SCHEMA = "vblk-ci/repro-bundle/1"
# Copied from the run dir when present (console.log is QEMU's own, complete log).
RUN_FILES = ("console.log", "qmp.jsonl", "agent.log", "events.jsonl", "results.json", "qemu.log", "run.log",
             "schedule.json", "qemu.argv")
REQUIRED = ("manifest.json", "plan.json", "qemu.json", "findings.json", "results.json")
KERNEL = "artifacts/bzImage"
KERNEL_CONFIG = "artifacts/kernel.config"
KERNEL_MANIFEST = "artifacts/kernel-manifest.json"
INITRAMFS = "artifacts/initramfs.cpio.gz"
# The --schedule FILE the run was given (schedule.json is what the run made of it).
SCHEDULE_INPUT = "schedule-input.json"


class BundleError(UsageError):
    """The file is not a readable, intact reproduction bundle: nothing can be judged with it,
    so under ``git bisect run`` it skips (125) rather than marking the commit bad."""

    exit_code = EXIT_INFRA


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def series_hash(kernel_manifest: dict) -> str | None:
    """One digest of the patch series a kernel was built with (names and contents, in order)."""
    series = kernel_manifest.get("series")
    if not isinstance(series, list):
        return None
    text = "".join(f"{p.get('name')} {p.get('sha256')}\n" for p in series if isinstance(p, dict))
    return hashlib.sha256(text.encode()).hexdigest()


def kernel_companions(kernel: Path) -> tuple[Path | None, Path | None]:
    """The .config and build manifest next to a bzImage (``--output-dir`` or cache layout)."""
    d = Path(kernel).parent
    config = d / "kernel.config"
    for name in ("kernel-manifest.json", "manifest.json"):
        manifest = d / name
        if manifest.is_file():
            break
    else:
        manifest = None
    return (config if config.is_file() else None), manifest


# -- what identifies a failure ----------------------------------------------------------------


@dataclass(frozen=True)
class Signature:
    """What a replay must show again to count as reproducing the failure.

    ``status`` is the verdict; ``key`` the first console finding's title, else the
    first failed (or errored) check's name, else the first line of the reason.
    """

    status: str
    key: str
    source: str  # finding | check | reason

    def matches(self, other: "Signature") -> bool:
        return (self.status, self.source, self.key) == (other.status, other.source, other.key)

    def describe(self) -> str:
        return f"{self.status}: {self.source} {self.key!r}"


def signature_of(result: dict) -> Signature:
    """The signature of a run, from its ``results.json`` dict (``RunResult.to_dict()``)."""
    status = str(result.get("status", ""))
    findings = result.get("findings") or []
    if findings:
        return Signature(status, str(findings[0].get("title", "")), "finding")
    for wanted in ("fail", "error"):
        for scenario in result.get("scenarios") or []:
            for check in scenario.get("checks") or []:
                if check.get("status") == wanted:
                    return Signature(status, f"{check.get('scenario')}/{check.get('name')}", "check")
    reason = str(result.get("reason") or "").splitlines()
    return Signature(status, reason[0] if reason else "", "reason")


# -- plan round trip ---------------------------------------------------------------------------


def plan_to_json(plan: Any) -> dict:
    out = {}
    for f in dataclasses.fields(plan):
        value = getattr(plan, f.name)
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def plan_from_json(data: dict, plan_cls: type, **overrides: Any) -> tuple[Any, list[str]]:
    """A ``plan_cls`` from ``plan.json`` plus overrides; also the recorded fields it does not know.

    Types follow the dataclass's current defaults: tuples stay tuples, paths become ``Path``.
    """
    fields = {f.name: f for f in dataclasses.fields(plan_cls)}
    unknown = sorted(k for k in data if k not in fields)
    kwargs: dict[str, Any] = {}
    for name, value in {**data, **overrides}.items():
        if name not in fields:
            continue
        default = fields[name].default
        if isinstance(value, list) and (isinstance(default, tuple) or default is dataclasses.MISSING):
            value = tuple(value)
        if name in ("kernel", "initramfs", "run_dir", "schedule") and value is not None:
            value = Path(value)
        kwargs[name] = value
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise BundleError(f"plan.json lacks {', '.join(missing)}")
    return plan_cls(**kwargs), unknown


# -- writing -----------------------------------------------------------------------------------


class _TarWriter:
    def __init__(self, tar: tarfile.TarFile):
        self.tar = tar
        self.members: dict[str, dict] = {}

    def add_bytes(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        info.mtime = int(dt.datetime.now().timestamp())
        self.tar.addfile(info, io.BytesIO(data))
        self.members[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}

    def add_json(self, name: str, value: Any) -> None:
        self.add_bytes(name, (json.dumps(value, indent=2, default=str) + "\n").encode())

    def add_file(self, name: str, path: Path) -> None:
        info = self.tar.gettarinfo(str(path), arcname=name)
        info.mode, info.uid, info.gid, info.uname, info.gname = 0o644, 0, 0, "", ""
        with open(path, "rb") as f:
            self.tar.addfile(info, f)
        self.members[name] = {"sha256": sha256_file(path), "bytes": info.size}


def write_bundle(plan: Any, result: Any, run_dir: Path, dest: Path | None = None) -> Path:
    """Write the bundle for a finished run; returns its path."""
    run_dir = Path(run_dir)
    dest = Path(dest) if dest else run_dir / BUNDLE_NAME
    result_dict = result.to_dict()
    kernel = Path(plan.kernel)
    config, kmanifest_path = kernel_companions(kernel)
    kmanifest: dict = {}
    if kmanifest_path is not None:
        try:
            kmanifest = json.loads(kmanifest_path.read_text())
        except (OSError, ValueError):
            kmanifest = {}
    argv_file = run_dir / "qemu.argv"
    argv = shlex.split(argv_file.read_text()) if argv_file.is_file() else []
    schedule = run_dir / "schedule.json"
    seed = getattr(plan, "seed", None)
    if seed is None and schedule.is_file():
        try:
            seed = json.loads(schedule.read_text()).get("seed")
        except (OSError, ValueError, AttributeError):
            seed = None

    tmp = dest.with_name(dest.name + ".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        w = _TarWriter(tar)
        w.add_json("plan.json", plan_to_json(plan))
        w.add_json("qemu.json", {"binary": result.qemu, "version": result.qemu_version, "argv": argv})
        w.add_json("findings.json", result_dict.get("findings", []))
        for name in RUN_FILES:
            if (run_dir / name).is_file():
                w.add_file(name, run_dir / name)
        if "results.json" not in w.members:
            w.add_json("results.json", result_dict)
        if kernel.is_file():
            w.add_file(KERNEL, kernel)
        if config is not None:
            w.add_file(KERNEL_CONFIG, config)
        if kmanifest_path is not None:
            w.add_file(KERNEL_MANIFEST, kmanifest_path)
        initramfs = Path(plan.initramfs)
        if initramfs.is_file():
            w.add_file(INITRAMFS, initramfs)
        given = getattr(plan, "schedule", None)
        if given is not None and Path(given).is_file():
            w.add_file(SCHEDULE_INPUT, Path(given))
        sig = signature_of(result_dict)
        manifest = {
            "schema": SCHEMA,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "status": result.status,
            "reason": (result.reason or "").splitlines()[0] if result.reason else "",
            "signature": dataclasses.asdict(sig),
            "suite": getattr(plan, "label", plan.suite),
            "seed": seed,
            "accel": result.accel,
            "qemu_version": result.qemu_version,
            "kernel": {
                "path": str(kernel),
                "sha256": w.members.get(KERNEL, {}).get("sha256"),
                "release": kmanifest.get("kernel_release"),
                "variant": kmanifest.get("variant"),
                "series_sha256": series_hash(kmanifest),
                "head_commit": kmanifest.get("head_commit"),
            },
            "initramfs": {"path": str(initramfs), "sha256": w.members.get(INITRAMFS, {}).get("sha256")},
            "members": dict(sorted(w.members.items())),
        }
        w.add_json("manifest.json", manifest)
    tmp.replace(dest)
    return dest


# -- reading -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bundle:
    root: Path  # where it was extracted
    manifest: dict
    plan: dict
    qemu: dict
    findings: list
    result: dict

    @property
    def signature(self) -> Signature:
        return signature_of(self.result)

    def member(self, name: str) -> Path | None:
        path = self.root / name
        return path if name in self.manifest.get("members", {}) and path.is_file() else None


def _load_json(root: Path, name: str) -> Any:
    try:
        return json.loads((root / name).read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"bundle member {name} is not readable JSON: {exc}") from None


def read_bundle(path: Path, dest: Path) -> Bundle:
    """Extract and verify a bundle into ``dest`` (created)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"no such bundle: {path}")  # a wrong path, not a bundle that cannot be judged
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(path, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                if not m.isfile() or m.name.startswith("/") or ".." in Path(m.name).parts:
                    raise BundleError(f"{path}: unexpected member {m.name!r} (not a plain relative file)")
            # Members are checked above; the "data" filter (3.11.4+) also drops modes and owners.
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, filter="data")
            else:
                tar.extractall(dest)
    except (tarfile.TarError, EOFError, OSError, UnicodeError) as exc:
        raise BundleError(f"{path}: not a readable bundle: {exc}") from None
    names = {m.name for m in members}
    if "manifest.json" not in names:
        raise BundleError(f"{path}: no manifest.json (not a vblk-ci reproduction bundle)")
    manifest = _load_json(dest, "manifest.json")
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise BundleError(f"{path}: manifest schema {manifest.get('schema') if isinstance(manifest, dict) else None!r},"
                          f" expected {SCHEMA!r}")
    listed = manifest.get("members") or {}
    for name in REQUIRED:
        if name != "manifest.json" and name not in listed:
            raise BundleError(f"{path}: required member {name} is missing")
    for name, meta in listed.items():
        member = dest / name
        if not member.is_file():
            raise BundleError(f"{path}: member {name} listed in the manifest is missing")
        if sha256_file(member) != meta.get("sha256"):
            raise BundleError(f"{path}: member {name} does not match its sha256 in the manifest")
    return Bundle(
        root=dest, manifest=manifest, plan=_load_json(dest, "plan.json"), qemu=_load_json(dest, "qemu.json"),
        findings=_load_json(dest, "findings.json"), result=_load_json(dest, "results.json"),
    )
