"""Upstream quality gates for the driver series, measured rather than assumed.

For the pinned base tree: every patch applies with ``git am``; every patch is
``checkpatch.pl --strict`` clean; sparse (``C=2``) and ``W=1`` report nothing in
drivers/block/virtio_blk.c; the driver compiles built in (``=y``) and as a
module (``=m``, compiled with -DMODULE in an objects dir of its own).

Stdlib only, like the rest of build/. Runs as ``python3 -m vblk_ci.build.quality``
and from ``vblk-ci check series``; the project's tests assert on its report.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vblk_ci.build import BuildError
from vblk_ci.build import cache as _cache
from vblk_ci.build import kernel as K
from vblk_ci.errors import MissingPrerequisite

DRIVER_SOURCE = "drivers/block/virtio_blk.c"
DRIVER_OBJECT = "drivers/block/virtio_blk.o"
_CHECKPATCH_TOTAL = re.compile(r"total: (\d+) errors, (\d+) warnings, (?:(\d+) checks, )?\d+ lines checked")
# gcc and sparse both report "path:line:col: warning|error: ..."
_DIAG = re.compile(r"^(?P<file>[^\s:]+):\d+:\d+: (?P<kind>warning|error): ")


@dataclass
class PatchCheck:
    name: str
    errors: int
    warnings: int
    checks: int
    output: str = ""


@dataclass
class QualityReport:
    base: str
    patches: list[PatchCheck] = field(default_factory=list)
    applies: bool = False
    sparse: list[str] = field(default_factory=list)
    w1: list[str] = field(default_factory=list)
    module_w1: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def checkpatch_total(self) -> dict[str, int]:
        return {k: sum(getattr(p, k) for p in self.patches) for k in ("errors", "warnings", "checks")}

    @property
    def clean(self) -> bool:
        totals = self.checkpatch_total
        return self.applies and not any(totals.values()) and not (self.sparse or self.w1 or self.module_w1)

    def to_json(self) -> dict:
        out = asdict(self)
        out["checkpatch_total"] = self.checkpatch_total
        out["clean"] = self.clean
        return out


def parse_checkpatch(text: str) -> tuple[int, int, int]:
    """(errors, warnings, checks) from checkpatch's closing ``total:`` line."""
    m = _CHECKPATCH_TOTAL.search(text)
    if not m:
        raise BuildError(f"checkpatch printed no 'total:' line:\n{text[-2000:]}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def diagnostics_for(text: str, source: str = DRIVER_SOURCE) -> list[str]:
    """Compiler/sparse diagnostic lines that point into *source*."""
    found = []
    for line in text.splitlines():
        m = _DIAG.match(line.strip())
        if m and m.group("file").endswith(source):
            found.append(line.strip())
    return found


def sparse_only(diagnostics: list[str]) -> list[str]:
    """C=2 compiles too: drop gcc's own diagnostics (they end in ``[-Wname]``)."""
    return [d for d in diagnostics if not re.search(r"\[-W[^\]]+\]$", d)]


def _make(tree: Path, objdir: Path, *args: str) -> str:
    """Run make, return its combined output; a failed build is a BuildError with the tail."""
    cmd = ["make", f"O={objdir}", *args]
    proc = subprocess.run(cmd, cwd=tree, env=K._env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace")
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-K.LOG_TAIL_LINES:])
        raise BuildError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def _require_step(output: str, step: str, target: str) -> str:
    """A gate that did not run must not read as clean: kbuild prints '  STEP  target'."""
    if not re.search(rf"^\s+{re.escape(step)}\s+\S*{re.escape(target)}$", output, re.M):
        raise BuildError(f"make did not run {step} on {target}; output:\n{output[-2000:]}")
    return output


def _checkpatch(tree: Path, patch: K.Patch) -> PatchCheck:
    proc = subprocess.run(["perl", "scripts/checkpatch.pl", "--strict", str(patch.path.resolve())],
                          cwd=tree, env=K._env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace")
    errors, warnings, checks = parse_checkpatch(proc.stdout)
    return PatchCheck(patch.name, errors, warnings, checks, proc.stdout if (errors or warnings or checks) else "")


def check_series(opts: K.KernelBuildOptions | None = None, progress: K.Progress | None = None) -> QualityReport:
    """Apply the series to a clean base tree and run every gate on it."""
    opts = opts or K.KernelBuildOptions()
    if not _which("sparse"):
        raise MissingPrerequisite("sparse is not installed (apt-get install sparse)")
    t0 = time.monotonic()
    cache = _cache.cache_root(opts.cache_dir)
    patches = K.parse_series(opts.series_dir)
    if not patches:
        raise BuildError(f"no patches listed in {opts.series_dir}/series")
    trees = cache / "trees"
    variant = "quality"
    tree = trees / variant
    objdir = trees / f"{variant}-build"
    modobj = trees / f"{variant}-module"
    base_identity = K._base_identity(opts, cache)
    report = QualityReport(base=base_identity)
    with K._locked(trees / f"{variant}.lock"):
        state = K._prepare_tree(opts, tree, objdir, trees / f"{variant}.json", base_identity, progress, patches)
        K._apply_series(tree, state, trees / f"{variant}.json", patches, progress)
        report.applies = True
        K._say(progress, "checkpatch --strict on each patch")
        report.patches = [_checkpatch(tree, p) for p in patches]

        fragments = K.resolve_fragments(opts)
        for module, obj in ((False, objdir), (True, modobj)):
            log = obj / "quality.log"
            obj.mkdir(parents=True, exist_ok=True)
            K._configure(tree, obj, fragments, module, log, progress)
            K._say(progress, f"prepare objects dir ({'virtio_blk=m' if module else 'virtio_blk=y'})")
            _make(tree, obj, f"-j{opts.jobs or os.cpu_count() or 1}", "prepare")
            if not module:
                K._say(progress, "sparse (C=2) on " + DRIVER_SOURCE)
                out = _make(tree, obj, "C=2", DRIVER_OBJECT)
                report.sparse = sparse_only(diagnostics_for(_require_step(out, "CHECK", DRIVER_SOURCE)))
            K._say(progress, f"W=1 build of {DRIVER_OBJECT} ({'=m' if module else '=y'})")
            # An up-to-date object would compile silently: force the compiler to run.
            (obj / DRIVER_OBJECT).unlink(missing_ok=True)
            out = _make(tree, obj, "W=1", DRIVER_OBJECT)
            found = diagnostics_for(_require_step(out, "CC [M]" if module else "CC", DRIVER_OBJECT))
            if module:
                report.module_w1 = found
            else:
                report.w1 = found
    report.seconds = round(time.monotonic() - t0, 1)
    return report


def _which(name: str) -> bool:
    return any(os.access(os.path.join(d, name), os.X_OK) for d in os.environ.get("PATH", "").split(os.pathsep))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m vblk_ci.build.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--series-dir", help="directory with the quilt 'series' file (default <repo>/driver)")
    p.add_argument("--cache-dir", help="cache root (default $VBLK_CI_CACHE or ~/.cache/vblk-ci)")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")
    a = p.parse_args(argv)
    opts = K.KernelBuildOptions(cache_dir=a.cache_dir)
    if a.series_dir:
        opts.series_dir = a.series_dir
    try:
        report = check_series(opts, progress=lambda m: print(f"[quality] {m}", file=sys.stderr, flush=True))
    except (BuildError, MissingPrerequisite) as e:
        print(f"vblk-ci: quality: {e}", file=sys.stderr)
        return e.exit_code
    if a.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        t = report.checkpatch_total
        print(f"git am: {'ok' if report.applies else 'FAILED'} ({len(report.patches)} patches)")
        print(f"checkpatch --strict: {t['errors']} errors, {t['warnings']} warnings, {t['checks']} checks")
        print(f"sparse: {len(report.sparse)}; W=1 (=y): {len(report.w1)}; W=1 (=m): {len(report.module_w1)}")
    return 0 if report.clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
