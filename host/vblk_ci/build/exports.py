"""A kernel build's vmlinux.o, kept so that the link gate need not build its own.

The gates' link check (quality.py) runs modpost on virtio_blk.ko against the
patched kernel's vmlinux.o, which is one whole kernel's compile: the largest
cost of a cold gates run.  The image's default kernel is the same compile when
nothing but the module differs, so its build keeps vmlinux.o with an identity
(``exports.json``), and the gates use it when their own tree has the same one:

* the same base source (tarball sha256) and compiler;
* the same .config, but for CONFIG_VIRTIO_BLK (=y in the image, =m in the
  gates; no other file of either base tests that option);
* the same content in every file the series touches, but the module's source.

Files the series does not touch are the base's in both trees.  When all three
hold, the exports modpost reads are the ones the gates' own vmlinux.o would
have; when any differs the gates build vmlinux.o as before.  Stdlib only.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .bases import DRIVER_SOURCE

IDENTITY_FILE = "exports.json"
VMLINUX_O = "vmlinux.o"
_IGNORED_CONFIG = ("CONFIG_VIRTIO_BLK=", "# CONFIG_VIRTIO_BLK is not set")


def config_digest(config_text: str) -> str:
    """sha256 of a .config without its CONFIG_VIRTIO_BLK line and comments' generated header."""
    keep = [ln for ln in config_text.splitlines()
            if ln.strip() and not ln.startswith(_IGNORED_CONFIG) and not ln.startswith("# Automatically generated")]
    return hashlib.sha256("\n".join(keep).encode()).hexdigest()


def touched_files(tree: Path, paths: list[str]) -> dict[str, str]:
    """Each of *paths* but the module's source -> its blob id at the tree's HEAD ("absent" if none).

    The module's source does not change vmlinux.o's exports."""
    wanted = sorted(p for p in set(paths) if p != DRIVER_SOURCE)
    blobs = dict.fromkeys(wanted, "absent")
    if wanted:
        out = subprocess.run(["git", "ls-tree", "-r", "HEAD", "--", *wanted], cwd=tree, capture_output=True,
                             text=True, check=True).stdout
        for line in out.splitlines():
            meta, _, path = line.partition("\t")
            if path in blobs:
                blobs[path] = meta.split()[2]
    return blobs


def identity(tree: Path, objdir: Path, base: str, compiler: str, paths: list[str]) -> dict:
    """What a vmlinux.o built in *objdir* from *tree* depends on, the module's source aside."""
    return {
        "base": base,
        "compiler": compiler,
        "config": config_digest((objdir / ".config").read_text(encoding="utf-8")),
        "files": touched_files(tree, paths),
    }


def keep(objdir: Path, ident: dict, dest: Path) -> None:
    """Copy *objdir*'s vmlinux.o and its identity to *dest* (a kernel build's artifacts)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(objdir / VMLINUX_O, dest / VMLINUX_O)
    (dest / IDENTITY_FILE).write_text(json.dumps(ident, indent=2, sort_keys=True) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class Match:
    """The outcome of looking for a kept vmlinux.o: *vmlinux_o* when it can stand in, else None; why."""

    vmlinux_o: Path | None
    reason: str


def find(exports_dir: Path | None, ident: dict) -> Match:
    """A kept vmlinux.o in *exports_dir* whose identity is *ident*, or why there is none."""
    if exports_dir is None:
        return Match(None, "no kept vmlinux.o given")
    meta = exports_dir / IDENTITY_FILE
    if not meta.is_file() or not (exports_dir / VMLINUX_O).is_file():
        return Match(None, f"{exports_dir} holds no kept vmlinux.o")
    try:
        kept = json.loads(meta.read_text(encoding="utf-8"))
    except ValueError as e:
        return Match(None, f"{meta}: not JSON ({e})")
    differ = [what for what in ident if kept.get(what) != ident[what]]
    if differ and differ[0] != "files":
        return Match(None, f"the kept vmlinux.o has another {differ[0]}")
    if differ:  # name the files, the one difference a series author can act on
        kept_files = kept.get("files") or {}
        files = sorted(p for p in set(kept_files) | set(ident["files"]) if kept_files.get(p) != ident["files"].get(p))
        return Match(None, f"the kept vmlinux.o's series differs outside the module in {', '.join(files[:3])}"
                     + (f" and {len(files) - 3} more" if len(files) > 3 else ""))
    return Match(exports_dir / VMLINUX_O, f"the kept vmlinux.o of {exports_dir} (same base, compiler, "
                 "config but CONFIG_VIRTIO_BLK, and series outside the module)")
