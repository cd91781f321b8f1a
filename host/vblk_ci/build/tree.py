"""Build a user's own kernel git tree with the appliance's config: ``vblk-ci build kernel --tree DIR``.

The tree is used in place (its commits are the series under test; nothing is applied or
reset), objects go to ``<cache>/tree-objects/<tree id>/<variant>[-m]/`` (``make O=``), so
a second build after a one-file change recompiles that file and relinks. In the image,
mount the tree and give the cache a named volume:

    docker run -v ~/linux:/linux -v vblk-ci-cache:/cache vblk-ci run --tree /linux --suite driver

Config: tinyconfig + kvm_guest.config + kernel-config/base.config (+ the variant's fragment)
+ the fragments of the base whose version the tree's Makefile names (7.x -> the 7.3
base's), checked as for the appliance's own kernels. ``virtio_blk.o`` is compiled with
``-g`` (a make variable, the tree is not edited), so ``scripts/faddr2line`` can decode a
crash in the driver to source lines: ``vmlinux`` and ``faddr2line`` are published beside
the bzImage for ``console/decode.py``.

The published folder is ``<cache>/tree-kernels/<tree id>/<variant>[-m]/``: bzImage,
kernel.config, vmlinux, faddr2line, manifest.json (tree, HEAD commit, dirty or not, kernel
release, seconds) [, virtio_blk.ko].
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from vblk_ci.build import BuildError, UsageError, repo_root
from vblk_ci.build import bases as _bases
from vblk_ci.build import cache as _cache
from vblk_ci.build import kernel as K

#: Debug info for the driver only: cheap, and all faddr2line needs for virtio_blk frames.
DEBUG_INFO_MAKE_ARGS = ["CFLAGS_virtio_blk.o=-g"]


@dataclass
class TreeBuildOptions:
    tree: str
    variant: str = "default"
    cache_dir: str | None = None
    jobs: int | None = None
    virtio_blk_module: bool = False
    #: None = base.config (+ variant) + the base's extras, by the tree's version.
    fragments: list[str] | None = None
    make_args: list[str] = field(default_factory=list)


def tree_version(tree: Path) -> tuple[int, int]:
    """(VERSION, PATCHLEVEL) from the tree's top Makefile; UsageError if it is not a kernel tree."""
    try:
        head = (tree / "Makefile").read_text(encoding="utf-8", errors="replace").splitlines()[:10]
    except OSError:
        raise UsageError(f"--tree {tree}: no Makefile: not a kernel source tree") from None
    vals = {}
    for line in head:
        key, _, value = line.partition("=")
        if key.strip() in ("VERSION", "PATCHLEVEL") and value.strip().isdigit():
            vals[key.strip()] = int(value.strip())
    if len(vals) != 2 or not (tree / "Kconfig").is_file():
        raise UsageError(f"--tree {tree}: its Makefile names no kernel version: not a kernel source tree")
    return vals["VERSION"], vals["PATCHLEVEL"]


def base_for_version(version: tuple[int, int]) -> _bases.KernelBase:
    """The appliance base whose config fragments fit a tree of this version: the newest base
    not newer than the tree (a 7.4 tree gets 7.3's, a 6.18 tree 6.12's); older than every base
    is refused, since the fragments were never checked there."""
    def key(b: _bases.KernelBase) -> tuple[int, int]:
        major, minor = b.name.split(".")
        return int(major), int(minor)

    fitting = [b for b in _bases.BASES.values() if key(b) <= version]
    if not fitting:
        oldest = min(_bases.BASES.values(), key=key)
        raise UsageError(f"--tree: Linux {version[0]}.{version[1]} is older than every supported base "
                         f"(oldest {oldest.name})")
    return max(fitting, key=key)


def _git(tree: Path, *args: str) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(tree), *args], capture_output=True, text=True, check=True,
                              timeout=120).stdout.strip()
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None


def tree_id(tree: Path) -> str:
    """A short stable name for the tree's objects: its resolved path's digest."""
    return hashlib.sha256(str(tree.resolve()).encode()).hexdigest()[:16]


def fragments_for(opts: TreeBuildOptions, base: _bases.KernelBase) -> list[Path]:
    if opts.fragments:
        frags = [Path(f) for f in opts.fragments]
    else:
        # In the image the package is installed, not checked out: the fragments are copied
        # to /opt/vblk-ci/kernel-config and named by VBLK_CI_KERNEL_CONFIG.
        cdir = Path(os.environ.get("VBLK_CI_KERNEL_CONFIG") or repo_root() / "kernel-config")
        frags = K.variant_fragments(opts.variant, cdir) + [cdir / f for f in base.fragments]
    missing = [str(f) for f in frags if not f.is_file()]
    if missing:
        raise BuildError(f"config fragment(s) not found: {', '.join(missing)}")
    return frags


def build_tree_kernel(opts: TreeBuildOptions, progress: K.Progress | None = None) -> K.KernelArtifact:
    """Configure (when the inputs changed) and ``make`` the tree incrementally; publish the result."""
    t0 = time.monotonic()
    tree = Path(opts.tree).resolve()
    if not tree.is_dir():
        raise UsageError(f"--tree {opts.tree}: no such directory")
    version = tree_version(tree)
    if (tree / ".config").exists():
        raise UsageError(f"--tree {tree}: the tree has an in-tree .config (a build without O=); make O= refuses "
                         f"such a tree: run 'make mrproper' in it first")
    base = base_for_version(version)
    fragments = fragments_for(opts, base)
    cache = _cache.cache_root(opts.cache_dir)
    slot = opts.variant + ("-m" if opts.virtio_blk_module else "")
    tid = tree_id(tree)
    objdir = cache / "tree-objects" / tid / slot
    out = cache / "tree-kernels" / tid / slot
    objdir.mkdir(parents=True, exist_ok=True)
    make_args = [*K.VARIANT_MAKE_ARGS.get(opts.variant, []), *DEBUG_INFO_MAKE_ARGS, *opts.make_args]
    with K.locked(objdir.parent / f"{slot}.lock"):
        log = objdir / "build.log"
        log.write_text(f"vblk-ci tree build {tree} ({slot})\n", encoding="utf-8")
        # Configure only when an input changed: a rewritten .config would cost a Kconfig resync.
        inputs = json.dumps({"fragments": [_cache.sha256_file(f) for f in fragments],
                             "module": opts.virtio_blk_module, "version": version, "make_args": make_args})
        stamp = objdir / "vblk-ci-config-inputs.json"
        if not (objdir / ".config").is_file() or not stamp.is_file() or stamp.read_text() != inputs:
            K.configure(tree, objdir, fragments, opts.virtio_blk_module, log, progress)
            stamp.write_text(inputs, encoding="utf-8")
        targets = ["bzImage"] + (["modules"] if opts.virtio_blk_module else [])
        t_make = time.monotonic()
        K.compile_kernel(tree, objdir, opts.jobs or K.default_jobs(), targets, make_args, log, progress)
        make_secs = time.monotonic() - t_make
        release_file = objdir / "include" / "config" / "kernel.release"
        release = release_file.read_text().strip() if release_file.is_file() else ""

        stage = _cache.staging_dir(out.parent, out.name)
        try:
            shutil.copy2(objdir / K.BZIMAGE_REL, stage / "bzImage")
            shutil.copy2(objdir / ".config", stage / "kernel.config")
            shutil.copy2(objdir / "vmlinux", stage / "vmlinux")
            shutil.copy2(tree / "scripts" / "faddr2line", stage / "faddr2line")
            if opts.virtio_blk_module:
                ko = objdir / K.MODULE_REL
                if not ko.is_file():
                    raise BuildError(f"--module but {K.MODULE_REL} was not built")
                shutil.copy2(ko, stage / "virtio_blk.ko")
            shutil.copy2(log, stage / "build.log")
            dirty = _git(tree, "status", "--porcelain", "--untracked-files=no")
            seconds = time.monotonic() - t0
            manifest = {
                "key": f"tree:{tid}:{slot}",
                "tree": str(tree),
                "head_commit": _git(tree, "rev-parse", "HEAD"),
                "dirty": bool(dirty) if dirty is not None else None,
                "kernel_release": release,
                "variant": opts.variant,
                "kernel_base": base.name,
                "virtio_blk_module": opts.virtio_blk_module,
                "make_args": make_args,
                "compiler": K.gcc_version(),
                "fragments": [{"path": str(f), "sha256": _cache.sha256_file(f)} for f in fragments],
                "build_seconds": round(seconds, 1),
                "make_seconds": round(make_secs, 1),
                "builder_version": K.BUILDER_VERSION,
            }
            _cache.write_json_atomic(stage / "manifest.json", manifest)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        if out.exists():
            shutil.rmtree(out)
        _cache.publish_dir(stage, out)
    K.say(progress, f"kernel {release} from {tree} ({slot}) in {seconds:.0f}s (make {make_secs:.0f}s)")
    return K.artifact_from_dir(out, f"tree:{tid}:{slot}", built=True, seconds=seconds)
