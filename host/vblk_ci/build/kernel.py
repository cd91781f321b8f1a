"""Build the guest kernel: a Debian kernel source (a base of bases.py) + the driver series + config fragments.

Stdlib only (runs in a bare Docker build stage too).  Flow:

1. key = sha256(base source, patches in series order, fragments, gcc, variant,
   module flag, extra make args).  ``<cache>/kernels/<key>/bzImage`` exists ->
   return it at once.
2. One persistent source tree per base and variant, ``<cache>/trees/<base>/<variant>/``: the
   tarball extracted once into a git repository whose base commit tracks only
   the files the series touches (adding all ~87,000 files costs 100-220 s of a
   cold build; a later series that touches more files adds them to a new base
   commit first).  A series is applied with ``git reset --hard <base>; git am``
   each patch, which rewrites only files that differ, so their mtimes drive an
   incremental make.  Files no commit tracks are never touched (no ``git clean``).
3. Objects live in ``<cache>/trees/<base>/<variant>-build/`` (``make O=``): tinyconfig +
   kvm_guest.config + fragments via merge_config.sh, olddefconfig, then every
   option the fragments ask for is checked in the final .config.
4. ``make bzImage`` [``modules``]; bzImage, kernel.config, manifest.json
   [, virtio_blk.ko] and build.log are published atomically to the cache.
   A kernel built with CONFIG_GCOV_KERNEL (the ``coverage`` variant) also
   publishes what ``vblk-ci coverage`` reads: virtio_blk.gcno, virtio_blk.c as
   built, the series' diff of it and series-lines.json (its added lines).

Public API (what ``quality.py`` and the CLI use): ``KernelBuildOptions``,
``build_kernel``, ``kernel_key``, ``kernel_base`` and ``resolve_*`` (what the
options come to), ``parse_series``, ``source_tree`` (a locked tree of the base +
series), ``configure``, ``compile_kernel``, ``make``, ``run``, ``locked``, ``say``,
``artifact_from_dir`` (build/tree.py builds a user's own tree with them).

CLI: ``python3 -m vblk_ci.build.kernel --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from vblk_ci.build import BuildError, UsageError, add_builder_args, repo_root, run_builder_cli
from vblk_ci.build import bases as _bases
from vblk_ci.build import cache as _cache
from vblk_ci.build import exports as _exports

#: Bump when the build procedure changes in a way that changes its output.
BUILDER_VERSION = "2"  # 2: the default variant keeps vmlinux.o for the link gate (exports.py)
DEFAULT_TARBALL = _bases.get_base(None).tarball
KVM_GUEST_FRAGMENT = "kernel/configs/kvm_guest.config"
BZIMAGE_REL = "arch/x86/boot/bzImage"
MODULE_REL = "drivers/block/virtio_blk.ko"
LOG_TAIL_LINES = 40
#: make arguments a variant always gets (on top of --make-arg); part of the key.
#: coverage: gcov counters for the driver only (see kernel-config/coverage.config).
VARIANT_MAKE_ARGS: dict[str, list[str]] = {"coverage": ["GCOV_PROFILE_virtio_blk.o=y"]}
DRIVER_SOURCE = _bases.DRIVER_SOURCE  # the file whose series lines `vblk-ci coverage` reports
#: What a gcov kernel publishes for it.
COVERAGE_GCNO_REL = "drivers/block/virtio_blk.gcno"
#: The default variant's kept vmlinux.o and its identity, beside bzImage and in the published dir.
EXPORTS_DIR = "exports"
COVERAGE_FILES = ("virtio_blk.gcno", "virtio_blk.c", "virtio_blk.diff", "series-lines.json")
PROGRESS_INTERVAL_S = 30.0

# Fixed identity and dates: the base commit and the patch commits are then the
# same on every machine, and nothing depends on who built it or when.
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "vblk-ci",
    "GIT_AUTHOR_EMAIL": "vblk-ci@localhost",
    "GIT_COMMITTER_NAME": "vblk-ci",
    "GIT_COMMITTER_EMAIL": "vblk-ci@localhost",
    "GIT_AUTHOR_DATE": "2024-01-01T00:00:00+0000",
    "GIT_COMMITTER_DATE": "2024-01-01T00:00:00+0000",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
}
_KBUILD_ENV = {
    "KBUILD_BUILD_USER": "vblk-ci",
    "KBUILD_BUILD_HOST": "vblk-ci",
    "KBUILD_BUILD_TIMESTAMP": "2024-01-01",
    # Set but empty: setlocalversion then appends no "+" for a git tree.
    "LOCALVERSION": "",
    "LC_ALL": "C",
}

_VARIANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CONFIG_SET_RE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_CONFIG_UNSET_RE = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")

Progress = Callable[[str], None]


@dataclass
class KernelBuildOptions:
    """What to build.  Every field has a default that builds the appliance's kernel."""

    #: A name in bases.BASES ("7.3", "6.12"); it picks the tarball, the series and extra
    #: fragments that are not given explicitly, and the tree's place in the cache.
    base: str = _bases.DEFAULT_BASE
    #: None = the base's tarball (/usr/src/linux-source-<base>.tar.xz).
    source_tarball: str | None = None
    #: An already-extracted tree to use instead of the tarball (copied into the cache once).
    source_dir: str | None = None
    #: Directory with a quilt-style ``series`` file; missing/empty series = no patches.
    #: None = the base's (bases.KernelBase.series_dir).
    series_dir: str | None = None
    #: False builds the unpatched base (the Docker stage's first, cacheable build).
    apply_series: bool = True
    #: Config fragments merged after tinyconfig + kvm_guest.config; None = the variant's defaults
    #: followed by the base's own (bases.KernelBase.fragments).
    fragments: list[str] | None = None
    variant: str = "default"
    cache_dir: str | None = None
    jobs: int | None = None
    #: CONFIG_VIRTIO_BLK=m, also ``make modules`` and ship drivers/block/virtio_blk.ko.
    virtio_blk_module: bool = False
    #: Extra ``make`` arguments, e.g. ["C=1", "W=1"].
    make_args: list[str] = field(default_factory=list)


@dataclass
class KernelArtifact:
    bzimage: Path
    config: Path
    manifest: Path
    key: str
    built: bool
    seconds: float
    module: Path | None = None
    kernel_release: str = ""
    log: Path | None = None

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


@dataclass
class Patch:
    name: str
    path: Path
    sha256: str


# --------------------------------------------------------------------------- inputs


def kernel_base(opts: KernelBuildOptions) -> _bases.KernelBase:
    """The base *opts* names; an unknown name is a UsageError (one line, exit 2)."""
    try:
        return _bases.get_base(opts.base)
    except _bases.UnknownBase as e:
        raise UsageError(str(e)) from None


def resolve_series_dir(opts: KernelBuildOptions) -> str:
    """The series directory: the one given, else the base's."""
    return opts.series_dir or str(kernel_base(opts).series_dir(repo_root()))


def resolve_tarball(opts: KernelBuildOptions) -> str:
    """The source tarball: the one given, else the base's."""
    return opts.source_tarball or kernel_base(opts).tarball


def resolve_patches(opts: KernelBuildOptions) -> list[Patch]:
    """The series *opts* applies (none with ``apply_series=False``)."""
    return parse_series(resolve_series_dir(opts)) if opts.apply_series else []


def parse_series(series_dir: str | os.PathLike[str] | None) -> list[Patch]:
    """The patches a quilt-style ``series`` file lists, in order.

    Blank lines and ``#`` comments are ignored, as are quilt options after the
    file name (``foo.patch -p1``).  No directory, no file, or an empty file
    means no patches.  A listed file that does not exist is a BuildError.
    """
    if not series_dir:
        return []
    d = Path(series_dir)
    series = d / "series"
    if not series.is_file():
        return []
    patches: list[Patch] = []
    missing: list[str] = []
    for lineno, raw in enumerate(series.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name = line.split()[0]
        path = d / name
        if not path.is_file():
            missing.append(f"{name} (series line {lineno})")
            continue
        patches.append(Patch(name, path, _cache.sha256_file(path)))
    if missing:
        raise BuildError(f"{series}: patch file(s) listed but missing: {', '.join(missing)}")
    return patches


def variant_fragments(variant: str, config_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """base.config, plus <variant>.config when it exists (e.g. debug.config)."""
    cdir = Path(config_dir) if config_dir else repo_root() / "kernel-config"
    frags = [cdir / "base.config"]
    if variant != "default":
        extra = cdir / f"{variant}.config"
        if extra.is_file():
            frags.append(extra)
    return frags


def resolve_fragments(opts: KernelBuildOptions) -> list[Path]:
    """The fragments given, else the variant's followed by the base's extras (kernel-config/)."""
    if opts.fragments:
        frags = [Path(f) for f in opts.fragments]
    else:
        cdir = repo_root() / "kernel-config"
        frags = variant_fragments(opts.variant, cdir) + [cdir / f for f in kernel_base(opts).fragments]
    missing = [str(f) for f in frags if not f.is_file()]
    if missing:
        raise BuildError(f"config fragment(s) not found: {', '.join(missing)}")
    return frags


MODULE_FRAGMENT = "# vblk-ci: virtio_blk as a module\nCONFIG_VIRTIO_BLK=m\n"


def fragments_want_module(fragments: list[Path]) -> bool:
    """True when the fragments themselves ask for CONFIG_VIRTIO_BLK=m (the debug and coverage variants).

    The build then also makes ``modules`` and ships virtio_blk.ko, as with
    ``--virtio-blk-module``; otherwise the .ko would be built and thrown away.
    """
    texts = [Path(f).read_text(encoding="utf-8") for f in fragments]
    return requested_options(texts).get("CONFIG_VIRTIO_BLK") == "m"


def parse_config_lines(text: str) -> dict[str, str]:
    """CONFIG_X -> value from .config / fragment text; ``# CONFIG_X is not set`` -> "n"."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        m = _CONFIG_SET_RE.match(line)
        if m:
            out[m.group(1)] = m.group(2)
            continue
        m = _CONFIG_UNSET_RE.match(line)
        if m:
            out[m.group(1)] = "n"
    return out


def requested_options(fragment_texts: list[str]) -> dict[str, str]:
    """What the fragments ask for, later fragments overriding earlier ones."""
    req: dict[str, str] = {}
    for text in fragment_texts:
        req.update(parse_config_lines(text))
    return req


def verify_config(requested: dict[str, str], config_text: str) -> list[str]:
    """Human-readable lines for every requested option that did not land in the .config."""
    actual = parse_config_lines(config_text)
    problems: list[str] = []
    for name, want in requested.items():
        got = actual.get(name, "n" if want in ("y", "m", "n") else None)
        if want == "n":
            ok = got in (None, "n")
        else:
            ok = got == want
        if not ok:
            shown = "not set" if got in (None, "n") else got
            problems.append(f"{name}: requested {want}, got {shown}")
    return problems


_HUNK_RE = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,(\d+))? @@")


def parse_added_lines(diff_text: str) -> dict[str, list[int]]:
    """New-file path -> line numbers (in the new file) of every ``+`` line of a unified diff.

    These are the lines a series adds or changes (a changed line is a ``-`` and
    a ``+``).  Works on ``git diff`` output and on ``git format-patch`` files
    (the mail text before the first ``diff --git`` is skipped); a deleted file
    (``+++ /dev/null``) has no lines.  Line numbers are the new file's, so for a
    series of patches they are only right on the combined diff (base..HEAD).
    """
    out: dict[str, list[int]] = {}
    path: str | None = None
    new_line = 0
    left = 0  # lines of the current hunk's new side still to read
    for raw in diff_text.splitlines():
        if left > 0 or (path is not None and raw.startswith("\\")):
            if raw.startswith("\\"):  # "\ No newline at end of file"
                continue
            if raw.startswith("+"):
                out.setdefault(path, []).append(new_line)  # type: ignore[arg-type]
                new_line += 1
                left -= 1
            elif raw.startswith("-"):
                pass
            else:  # context (" " or an empty line for an empty context line)
                new_line += 1
                left -= 1
            continue
        if raw.startswith("diff --git "):
            path = None
        elif raw.startswith("+++ "):
            target = raw[4:].split("\t", 1)[0]
            path = None if target == "/dev/null" else (target[2:] if target.startswith("b/") else target)
        elif path is not None:
            m = _HUNK_RE.match(raw)
            if m:
                new_line = int(m.group(1))
                left = int(m.group(2)) if m.group(2) is not None else 1
    return out


def gcc_version() -> str:
    try:
        out = subprocess.run(["gcc", "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise BuildError(f"gcc --version failed: {e}") from e
    return out.splitlines()[0].strip() if out else "unknown"


def _base_identity(opts: KernelBuildOptions, cache: Path) -> str:
    if opts.source_dir:
        src = Path(opts.source_dir)
        if not (src / "Makefile").is_file():
            raise BuildError(f"{src} is not a kernel source tree (no Makefile)")
        return "tree:" + _cache.hash_tree_stat(src)
    tb = Path(resolve_tarball(opts))
    if not tb.is_file():
        hint = f"apt-get install {kernel_base(opts).package}" if opts.source_tarball is None else "--tarball"
        raise BuildError(f"kernel source tarball not found: {tb} ({hint})")
    return "tarball:" + _cache.sha256_file(tb, memo_dir=cache)


def compute_key(
    opts: KernelBuildOptions,
    *,
    base_identity: str,
    patches: list[Patch],
    fragments: list[Path],
    compiler: str,
) -> str:
    parts: list[tuple[str, str]] = [("builder", BUILDER_VERSION), ("base", base_identity)]
    for p in patches:
        parts.append(("patch", p.sha256))
    for f in fragments:
        parts.append(("fragment", _cache.sha256_file(f)))
    parts += [
        ("compiler", compiler),
        ("variant", opts.variant),
        ("virtio_blk_module", "1" if opts.virtio_blk_module else "0"),
        ("make_args", json.dumps(list(opts.make_args))),
    ]
    if VARIANT_MAKE_ARGS.get(opts.variant):  # only when set: the other variants' keys stay as they were
        parts.append(("variant_make_args", json.dumps(VARIANT_MAKE_ARGS[opts.variant])))
    return _cache.combine(parts)


# --------------------------------------------------------------------------- helpers


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(_KBUILD_ENV)
    env.update(_GIT_ENV)
    if extra:
        env.update(extra)
    return env


def run(cmd: list[str], cwd: Path | None = None, what: str | None = None, log: Path | None = None,
        check: bool = True) -> str:
    """Run *cmd* in the build environment (fixed git identity and kbuild stamps).

    Its combined output is returned (and appended to *log*).  A failure is a
    BuildError with the last lines of output, unless *check* is False.
    """
    try:
        proc = subprocess.run(
            cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
    except OSError as e:
        raise BuildError(f"{what or cmd[0]}: cannot run {cmd[0]}: {e}") from e
    if log is not None:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"$ {' '.join(cmd)}\n{proc.stdout}")
    if check and proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-LOG_TAIL_LINES:])
        raise BuildError(f"{what or ' '.join(cmd)} failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def make(tree: Path, objdir: Path, *args: str, log: Path | None = None) -> str:
    """``make O=<objdir> ARGS`` in *tree*; its output, or a BuildError with the tail."""
    return run(["make", f"O={objdir}", *args], cwd=tree, log=log)


def default_jobs() -> int:
    """make -j: the CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) or 1


def _git(tree: Path, *args: str, what: str | None = None) -> str:
    return run(["git", *args], cwd=tree, what=what or f"git {args[0]}")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def say(progress: Progress | None, msg: str) -> None:
    if progress is not None:
        progress(msg)


def _tree_version(tree: Path) -> str:
    vals: dict[str, str] = {}
    try:
        with open(tree / "Makefile", encoding="utf-8") as f:
            for _ in range(10):
                m = re.match(r"^(VERSION|PATCHLEVEL|SUBLEVEL|EXTRAVERSION)\s*=\s*(\S*)", f.readline())
                if m:
                    vals[m.group(1)] = m.group(2)
    except OSError:
        return "unknown"
    v = ".".join(vals.get(k, "0") for k in ("VERSION", "PATCHLEVEL", "SUBLEVEL"))
    return v + vals.get("EXTRAVERSION", "")


# --------------------------------------------------------------------------- tree

_DIFF_GIT_RE = re.compile(r"^diff --git a/(\S+) b/(\S+)$")


def series_paths(patches: list[Patch]) -> list[str]:
    """Every path a patch of the series names on a ``diff --git`` line, sorted."""
    paths: set[str] = set()
    for p in patches:
        for line in p.path.read_text(encoding="utf-8", errors="replace").splitlines():
            m = _DIFF_GIT_RE.match(line)
            if m:
                paths.update(m.groups())
    return sorted(paths)


def _track(tree: Path, paths: list[str], message: str) -> str:
    """Commit *paths* (those that exist) on top of HEAD; returns the new commit."""
    present = [p for p in paths if (tree / p).exists()]
    if present:
        # -f: Debian's top-level .gitignore ends with "/*" + "!/debian/", which would add nothing.
        _git(tree, "add", "-f", "--", *present, what="git add base files")
    _git(tree, "commit", "-q", "--no-verify", "--allow-empty", "-m", message, what="git commit base files")
    return _git(tree, "rev-parse", "HEAD").strip()



def _prepare_tree(opts: KernelBuildOptions, tree: Path, state_path: Path,
                  base_identity: str, progress: Progress | None, patches: list[Patch] | None = None) -> dict:
    """Make sure *tree* is a git repo of the base source whose base commit tracks what
    *patches* touch; returns its state dict.  A new tree also drops the objects
    dirs beside it (``<tree>-*``), which were built from the old one."""
    state = _cache.read_json(state_path)
    ok = (
        state.get("base_identity") == base_identity
        and state.get("base_commit")
        and (tree / ".git").is_dir()
        and (tree / "Makefile").is_file()
    )
    if ok:
        return state
    objdirs = [d for d in tree.parent.glob(f"{tree.name}-*") if d.is_dir()] if tree.parent.is_dir() else []
    for d in [tree, *objdirs]:
        if d.is_symlink():  # an adopted flat-layout tree (adopt_flat_layout): drop the link only
            d.unlink()
        elif d.exists():
            shutil.rmtree(d)
    tree.parent.mkdir(parents=True, exist_ok=True)
    tmp = tree.parent / f".{tree.name}.extracting"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    t0 = time.monotonic()
    if opts.source_dir:
        say(progress, f"copy source tree {opts.source_dir}")
        run(["cp", "-a", f"{opts.source_dir}/.", str(tmp)], what="copy source tree")
        shutil.rmtree(tmp / ".git", ignore_errors=True)
    else:
        tarball = resolve_tarball(opts)
        say(progress, f"extract {tarball}")
        run(["tar", "-xf", tarball, "--strip-components=1", "-C", str(tmp)],
             what="extract kernel source")
    if not (tmp / "Makefile").is_file():
        raise BuildError(f"{tmp}: no Makefile after extracting the kernel source")
    version = _tree_version(tmp)
    say(progress, f"git init base {version} ({time.monotonic() - t0:.0f}s so far)")
    _git(tmp, "init", "-q")
    for k, v in (("core.checkStat", "minimal"), ("core.trustctime", "false"), ("gc.auto", "0"),
                 ("core.autocrlf", "false"), ("user.name", "vblk-ci"), ("user.email", "vblk-ci@localhost")):
        _git(tmp, "config", k, v)
    tracked = series_paths(patches or [])
    base = _track(tmp, tracked, f"base {version}")
    os.rename(tmp, tree)
    state = {"base_identity": base_identity, "base_commit": base, "version": version, "applied": None, "head": None,
             "tracked": tracked}
    _cache.write_json_atomic(state_path, state)
    say(progress, f"base tree ready in {time.monotonic() - t0:.0f}s")
    return state


def _apply_series(tree: Path, state: dict, state_path: Path, patches: list[Patch],
                  progress: Progress | None) -> None:
    want = [p.sha256 for p in patches]
    if (tree / ".git" / "rebase-apply").exists():
        subprocess.run(["git", "am", "--abort"], cwd=tree, env=_env(), capture_output=True)
    head = _git(tree, "rev-parse", "HEAD").strip()
    if state.get("applied") == want and state.get("head") == head:
        dirty = _git(tree, "status", "--porcelain", "--untracked-files=no").strip()
        if not dirty:
            say(progress, f"series of {len(patches)} patch(es) already applied")
            return
    say(progress, f"apply series: {len(patches)} patch(es)")
    # reset + am rewrite every file the old or the new series touches; one whose content
    # ends up the same gets its old mtime back, so that a change to one patch does not
    # recompile everything that includes a header another patch touches (blkdev.h).
    before = _file_stamps(tree, set(state.get("tracked") or []) | set(series_paths(patches)))
    state["applied"] = None
    _cache.write_json_atomic(state_path, state)
    _git(tree, "reset", "-q", "--hard", state["base_commit"], what="git reset to base")
    # A tree made before "tracked" existed tracks every file.
    tracked = set(state.get("tracked", series_paths(patches)))
    missing = [p for p in series_paths(patches) if p not in tracked]
    if missing:
        say(progress, f"track {len(missing)} more file(s) of the base")
        state["base_commit"] = _track(tree, missing, f"base: {len(missing)} more file(s)")
        state["tracked"] = sorted(tracked | set(missing))
    for i, p in enumerate(patches, 1):
        proc = subprocess.run(["git", "am", "-q", "--keep-cr", str(p.path.resolve())], cwd=tree, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        if proc.returncode != 0:
            subprocess.run(["git", "am", "--abort"], cwd=tree, env=_env(), capture_output=True)
            msg = "\n".join(proc.stdout.strip().splitlines()[-LOG_TAIL_LINES:])
            raise BuildError(f"patch {i}/{len(patches)} {p.name} does not apply (git am):\n{msg}")
    kept = _restore_stamps(tree, before)
    if kept:
        say(progress, f"{kept} file(s) the series left as they were keep their mtimes")
    state["applied"] = want
    state["head"] = _git(tree, "rev-parse", "HEAD").strip()
    _cache.write_json_atomic(state_path, state)


def _file_stamps(tree: Path, paths: set[str]) -> dict[str, tuple[str, int, int]]:
    """path -> (sha256 of its content, atime_ns, mtime_ns) for the regular files among *paths*."""
    out = {}
    for rel in paths:
        f = tree / rel
        if f.is_file() and not f.is_symlink():
            st = f.stat()
            out[rel] = (hashlib.sha256(f.read_bytes()).hexdigest(), st.st_atime_ns, st.st_mtime_ns)
    return out


def _restore_stamps(tree: Path, before: dict[str, tuple[str, int, int]]) -> int:
    """Put back the times of the files whose content is what it was; how many."""
    kept = 0
    for rel, (digest, atime, mtime) in before.items():
        f = tree / rel
        if f.is_file() and hashlib.sha256(f.read_bytes()).hexdigest() == digest:
            if f.stat().st_mtime_ns != mtime:
                os.utime(f, ns=(atime, mtime))
                kept += 1
    return kept


@dataclass
class SourceTree:
    """A kernel tree at the base commit with the series applied, held under its lock (source_tree())."""

    path: Path
    slot: str
    base_identity: str
    patches: list[Patch]
    state: dict

    def objdir(self, suffix: str = "build") -> Path:
        """``<tree>-<suffix>``: an objects dir (``make O=``) beside the tree, dropped with it."""
        return self.path.parent / f"{self.slot}-{suffix}"


def _trees_dir(opts: KernelBuildOptions) -> Path:
    """``<cache>/trees/<base>/``: each base keeps its own trees, so switching does not re-extract."""
    return _cache.cache_root(opts.cache_dir) / "trees" / kernel_base(opts).name


@contextlib.contextmanager
def source_tree(opts: KernelBuildOptions, slot: str, progress: Progress | None = None) -> Iterator[SourceTree]:
    """Lock ``<cache>/trees/<base>/<slot>``, make it the base source + *opts*' series, yield it.

    The tree is extracted (or copied from ``source_dir``) only when its base
    changed; the series is re-applied only when it changed.  A patch that does
    not apply is a BuildError.  Use a slot of your own (the builder uses the
    variant's name), and ``SourceTree.objdir()`` for objects.
    """
    if not _VARIANT_RE.match(slot):
        raise BuildError(f"bad tree slot name {slot!r}")
    cache = _cache.cache_root(opts.cache_dir)
    patches = resolve_patches(opts)
    base_identity = _base_identity(opts, cache)
    trees = _trees_dir(opts)
    with locked(trees / f"{slot}.lock"):
        yield _checkout(opts, trees, slot, base_identity, patches, progress)


def adopt_flat_layout(trees: Path, slot: str, base_identity: str) -> bool:
    """A cache written before there were bases kept ``trees/<slot>`` and its objects
    ``trees/<slot>-*``. When that tree is of this base's source, link it into
    ``trees/<base>/`` instead of extracting and compiling again (a cold kernel is 10 min on
    2 idle cores, up to an hour under load): the kernel's Makefile takes ``realpath`` of the
    source and object dirs, so the objects' recorded paths stay the same and make stays
    incremental. True when adopted."""
    flat = trees.parent
    old_tree, old_state = flat / slot, flat / f"{slot}.json"
    if (trees / slot).exists() or (trees / slot).is_symlink() or not old_tree.is_dir() or not old_state.is_file():
        return False
    if _cache.read_json(old_state).get("base_identity") != base_identity:
        return False
    trees.mkdir(parents=True, exist_ok=True)
    for d in [old_tree, *sorted(p for p in flat.glob(f"{slot}-*") if p.is_dir() and not p.is_symlink())]:
        if not (trees / d.name).exists():
            (trees / d.name).symlink_to(d)
    shutil.copy2(old_state, trees / f"{slot}.json")
    return True


def _checkout(opts: KernelBuildOptions, trees: Path, slot: str, base_identity: str, patches: list[Patch],
              progress: Progress | None) -> SourceTree:
    tree, state_path = trees / slot, trees / f"{slot}.json"
    if adopt_flat_layout(trees, slot, base_identity):
        say(progress, f"adopted {trees.parent / slot} (cache layout before kernel bases) as {tree}")
    state = _prepare_tree(opts, tree, state_path, base_identity, progress, patches)
    _apply_series(tree, state, state_path, patches, progress)
    return SourceTree(tree, slot, base_identity, patches, state)


# --------------------------------------------------------------------------- configure + compile


def configure(tree: Path, objdir: Path, fragments: list[Path], module: bool, log: Path,
              progress: Progress | None = None) -> None:
    """tinyconfig + kvm_guest.config + *fragments* [+ virtio_blk=m] into *objdir*/.config, then
    check that every option the fragments ask for landed (BuildError naming those that did not)."""
    say(progress, f"configure: tinyconfig + kvm_guest.config + {', '.join(f.name for f in fragments)}"
         + (" + virtio_blk=m" if module else ""))
    objdir.mkdir(parents=True, exist_ok=True)
    cfg = objdir / ".config"
    old: tuple[bytes, int, int] | None = None
    if cfg.is_file():
        st = cfg.stat()
        old = (cfg.read_bytes(), st.st_atime_ns, st.st_mtime_ns)
    frag_paths = [f.resolve() for f in fragments]
    texts = [f.read_text(encoding="utf-8") for f in frag_paths]
    if module:
        mod = objdir / "vblk-ci-module.config"
        mod.write_text(MODULE_FRAGMENT, encoding="utf-8")
        frag_paths.append(mod)
        texts.append(MODULE_FRAGMENT)
    o = f"O={objdir}"
    run(["make", "-s", o, "tinyconfig"], cwd=tree, what="make tinyconfig", log=log)
    run(["bash", "scripts/kconfig/merge_config.sh", "-m", "-O", str(objdir), str(cfg),
          KVM_GUEST_FRAGMENT, *map(str, frag_paths)], cwd=tree, what="merge_config.sh", log=log)
    run(["make", "-s", o, "olddefconfig"], cwd=tree, what="make olddefconfig", log=log)
    new_text = cfg.read_text(encoding="utf-8")
    problems = verify_config(requested_options(texts), new_text)
    if problems:
        raise BuildError(
            "config options requested by the fragments did not land in .config "
            "(unmet dependencies or a choice resolved otherwise):\n  " + "\n  ".join(problems))
    if old is not None and old[0] == new_text.encode("utf-8"):
        # Same config as last time: keep its mtime so make does not resync Kconfig.
        os.utime(cfg, ns=(old[1], old[2]))


def compile_kernel(tree: Path, objdir: Path, jobs: int, targets: list[str], make_args: list[str], log: Path,
             progress: Progress | None) -> None:
    cmd = ["make", f"O={objdir}", f"-j{jobs}", *make_args, *targets]
    say(progress, f"compile: make -j{jobs} {' '.join([*make_args, *targets])} (log: {log})")
    t0 = time.monotonic()
    last_report = t0
    steps = 0
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    with open(log, "a", encoding="utf-8") as lf:
        lf.write(f"$ {' '.join(cmd)}\n")
        lf.flush()
        try:
            proc = subprocess.Popen(cmd, cwd=tree, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, errors="replace", bufsize=1)
        except OSError as e:
            raise BuildError(f"cannot run make: {e}") from e
        assert proc.stdout is not None
        for line in proc.stdout:
            lf.write(line)
            tail.append(line.rstrip("\n"))
            if line.startswith("  ") and not line.startswith("   "):
                steps += 1
            now = time.monotonic()
            if now - last_report >= PROGRESS_INTERVAL_S:
                last_report = now
                say(progress, f"compile: {steps} steps, {now - t0:.0f}s ({line.strip()[:60]})")
        rc = proc.wait()
    if rc != 0:
        raise BuildError(f"make {' '.join(targets)} failed (exit {rc}); last {LOG_TAIL_LINES} lines of {log}:\n"
                         + "\n".join(tail))


# --------------------------------------------------------------------------- coverage


def _publish_coverage(tree: Path, objdir: Path, state: dict, stage: Path) -> dict:
    """Copy what gcov needs for the driver into *stage*; returns the manifest's ``coverage`` entry.

    ``gcov_dir`` is where the guest's debugfs shows the counters:
    ``/sys/kernel/debug/gcov<gcov_dir>/virtio_blk.gcda`` (gcov names them by the
    object's absolute build path).
    """
    gcno = objdir / COVERAGE_GCNO_REL
    if not gcno.is_file():
        raise BuildError(f"CONFIG_GCOV_KERNEL=y but {COVERAGE_GCNO_REL} was not made "
                         f"(is GCOV_PROFILE_virtio_blk.o=y passed to make?)")
    shutil.copy2(gcno, stage / "virtio_blk.gcno")
    shutil.copy2(tree / DRIVER_SOURCE, stage / "virtio_blk.c")
    base, head = state.get("base_commit"), state.get("head") or "HEAD"
    diff = _git(tree, "diff", "-U0", "--no-color", "--no-ext-diff", str(base), str(head), "--",
                DRIVER_SOURCE, what="git diff of the series") if base else ""
    (stage / "virtio_blk.diff").write_text(diff, encoding="utf-8")
    added = parse_added_lines(diff).get(DRIVER_SOURCE, [])
    entry = {
        "file": DRIVER_SOURCE,
        "gcov_dir": str((objdir / COVERAGE_GCNO_REL).parent.resolve()),
        "base_commit": base,
        "head_commit": head,
        "added_lines": added,
    }
    _cache.write_json_atomic(stage / "series-lines.json", entry)
    return {k: v for k, v in entry.items() if k != "added_lines"} | {"added_line_count": len(added)}


# --------------------------------------------------------------------------- entry point


def artifact_from_dir(d: Path, key: str, built: bool, seconds: float) -> KernelArtifact:
    manifest = _cache.read_json(d / "manifest.json")
    mod = d / "virtio_blk.ko"
    log = d / "build.log"
    return KernelArtifact(
        bzimage=d / "bzImage", config=d / "kernel.config", manifest=d / "manifest.json", key=key, built=built,
        seconds=seconds, module=mod if mod.is_file() else None,
        kernel_release=str(manifest.get("kernel_release", "")), log=log if log.is_file() else None)


def kernel_key(opts: KernelBuildOptions) -> str:
    """The cache key *opts* would build (reads inputs, builds nothing)."""
    cache = _cache.cache_root(opts.cache_dir)
    fragments = resolve_fragments(opts)
    if not opts.virtio_blk_module and fragments_want_module(fragments):
        opts = dataclasses.replace(opts, virtio_blk_module=True)
    return compute_key(opts, base_identity=_base_identity(opts, cache), patches=resolve_patches(opts),
                       fragments=fragments, compiler=gcc_version())


def build_kernel(opts: KernelBuildOptions | None = None, progress: Progress | None = None) -> KernelArtifact:
    """Build (or fetch from the cache) the kernel *opts* describe."""
    opts = opts or KernelBuildOptions()
    t0 = time.monotonic()
    if not _VARIANT_RE.match(opts.variant):
        raise BuildError(f"bad variant name {opts.variant!r}")
    base = kernel_base(opts)
    cache = _cache.cache_root(opts.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    patches = resolve_patches(opts)
    fragments = resolve_fragments(opts)
    if not opts.virtio_blk_module and fragments_want_module(fragments):
        opts = dataclasses.replace(opts, virtio_blk_module=True)
    compiler = gcc_version()
    base_identity = _base_identity(opts, cache)
    key = compute_key(opts, base_identity=base_identity, patches=patches, fragments=fragments, compiler=compiler)
    out = cache / "kernels" / key
    if (out / "bzImage").is_file() and (out / "manifest.json").is_file():
        secs = time.monotonic() - t0
        say(progress, f"kernel {key[:12]} cached ({out})")
        return artifact_from_dir(out, key, built=False, seconds=secs)

    trees = _trees_dir(opts)
    suffix = "build"
    make_args = [*VARIANT_MAKE_ARGS.get(opts.variant, []), *opts.make_args]
    if opts.make_args:  # different flags would recompile everything: keep their objects apart
        suffix += "-" + _cache.sha256_bytes(json.dumps(list(opts.make_args)).encode())[:8]
    jobs = opts.jobs or default_jobs()

    with locked(trees / f"{opts.variant}.lock"):
        if (out / "bzImage").is_file() and (out / "manifest.json").is_file():  # built while we waited
            return artifact_from_dir(out, key, built=False, seconds=time.monotonic() - t0)
        src = _checkout(opts, trees, opts.variant, base_identity, patches, progress)
        tree, state, objdir = src.path, src.state, src.objdir(suffix)
        objdir.mkdir(parents=True, exist_ok=True)
        log = objdir / "build.log"
        log.write_text(f"vblk-ci kernel build {key}\n", encoding="utf-8")
        configure(tree, objdir, fragments, opts.virtio_blk_module, log, progress)
        targets = ["bzImage"] + (["modules"] if opts.virtio_blk_module else [])
        t_make = time.monotonic()
        compile_kernel(tree, objdir, jobs, targets, make_args, log, progress)
        make_secs = time.monotonic() - t_make
        release_file = objdir / "include" / "config" / "kernel.release"
        release = release_file.read_text().strip() if release_file.is_file() else ""

        stage = _cache.staging_dir(cache / "kernels", key)
        try:
            shutil.copy2(objdir / BZIMAGE_REL, stage / "bzImage")
            shutil.copy2(objdir / ".config", stage / "kernel.config")
            if opts.virtio_blk_module:
                ko = objdir / MODULE_REL
                if not ko.is_file():
                    raise BuildError(f"virtio_blk_module set but {MODULE_REL} was not built (is CONFIG_VIRTIO_BLK=m?)")
                shutil.copy2(ko, stage / "virtio_blk.ko")
            shutil.copy2(log, stage / "build.log")
            if opts.variant == "default" and not opts.make_args and (objdir / _exports.VMLINUX_O).is_file():
                # The gates' link check can use it instead of compiling one (exports.py).
                _exports.keep(objdir, _exports.identity(tree, objdir, base_identity, compiler, series_paths(patches)),
                              stage / EXPORTS_DIR)
            coverage = None
            if parse_config_lines((objdir / ".config").read_text(encoding="utf-8")).get("CONFIG_GCOV_KERNEL") == "y":
                coverage = _publish_coverage(tree, objdir, state, stage)
            seconds = time.monotonic() - t0
            manifest = {
                "key": key,
                "kernel_release": release,
                "variant": opts.variant,
                "kernel_base": base.name,
                "virtio_blk_module": opts.virtio_blk_module,
                "make_args": list(opts.make_args),
                "compiler": compiler,
                "base": base_identity,
                "base_tarball_sha256": base_identity.split(":", 1)[1] if base_identity.startswith("tarball:") else None,
                "base_commit": state.get("base_commit"),
                "head_commit": state.get("head"),
                "series": [{"name": p.name, "sha256": p.sha256} for p in patches],
                "fragments": [{"path": str(f), "sha256": _cache.sha256_file(f)} for f in fragments],
                "build_seconds": round(seconds, 1),
                "make_seconds": round(make_secs, 1),
                "bzimage_bytes": (stage / "bzImage").stat().st_size,
                "builder_version": BUILDER_VERSION,
            }
            if coverage is not None:
                manifest["coverage"] = coverage
            _cache.write_json_atomic(stage / "manifest.json", manifest)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        _cache.publish_dir(stage, out)
    say(progress, f"kernel {release} {key[:12]} built in {seconds:.0f}s")
    return artifact_from_dir(out, key, built=True, seconds=seconds)


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m vblk_ci.build.kernel", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default=_bases.DEFAULT_BASE,
                   help=f"kernel base: {', '.join(_bases.BASES)} (default %(default)s); picks the tarball, "
                        "the series and extra fragments not given explicitly")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--tarball", help="kernel source tarball (default the base's, /usr/src/linux-source-BASE.tar.xz)")
    src.add_argument("--source-dir", help="an already-extracted kernel tree to use instead of the tarball")
    ser = p.add_mutually_exclusive_group()
    ser.add_argument("--series-dir", help="directory with the quilt 'series' file (default the base's)")
    ser.add_argument("--no-series", action="store_true", help="build the unpatched base tree")
    p.add_argument("--fragment", action="append", dest="fragments", metavar="FILE",
                   help="config fragment (repeatable; default kernel-config/base.config [+ <variant>.config])")
    p.add_argument("--variant", default="default", help="build variant (default %(default)s)")
    p.add_argument("-j", "--jobs", type=int, help="make -j (default: number of CPUs)")
    p.add_argument("--virtio-blk-module", action="store_true", help="CONFIG_VIRTIO_BLK=m, ship virtio_blk.ko")
    p.add_argument("--make-arg", action="append", dest="make_args", default=[], metavar="ARG",
                   help="extra make argument, e.g. --make-arg C=1 (repeatable)")
    add_builder_args(p, "bzImage, kernel.config, kernel-manifest.json [virtio_blk.ko]")
    return p


def options_from_args(a: argparse.Namespace) -> KernelBuildOptions:
    opts = KernelBuildOptions(
        base=a.base,
        source_tarball=a.tarball,
        source_dir=a.source_dir,
        series_dir=a.series_dir,
        apply_series=not a.no_series,
        fragments=a.fragments,
        variant=a.variant,
        cache_dir=a.cache_dir,
        jobs=a.jobs,
        virtio_blk_module=a.virtio_blk_module,
        make_args=list(a.make_args),
    )
    kernel_base(opts)  # an unknown --base is a usage error before anything runs
    return opts


def publish(art: KernelArtifact, od: Path) -> None:
    """Copy a kernel's files to *od* (what the image's stages COPY --from)."""
    shutil.copy2(art.bzimage, od / "bzImage")
    shutil.copy2(art.config, od / "kernel.config")
    shutil.copy2(art.manifest, od / "kernel-manifest.json")
    if art.module:
        shutil.copy2(art.module, od / "virtio_blk.ko")
    if (art.bzimage.parent / EXPORTS_DIR).is_dir():  # the default variant's kept vmlinux.o
        shutil.copytree(art.bzimage.parent / EXPORTS_DIR, od / EXPORTS_DIR, dirs_exist_ok=True)
    for name in COVERAGE_FILES:  # a gcov kernel's extras
        if (art.bzimage.parent / name).is_file():
            shutil.copy2(art.bzimage.parent / name, od / name)


def main(argv: list[str] | None = None) -> int:
    return run_builder_cli("kernel", _parser().parse_args(argv), options_from_args, kernel_key, build_kernel,
                           publish, lambda art: art.bzimage)


if __name__ == "__main__":
    sys.exit(main())
