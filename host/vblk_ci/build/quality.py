"""Upstream quality gates for the driver series, measured rather than assumed.

For the pinned base tree: every patch applies with ``git am``; every patch is
``checkpatch.pl --strict`` clean; sparse (``C=2``) and ``W=1`` report nothing in
drivers/block/virtio_blk.c; the driver compiles built in (``=y``) and as a
module (``=m``, compiled with -DMODULE in an objects dir of its own).

Stdlib only, like the rest of build/. Runs as ``python3 -m vblk_ci.build.quality
[--base 7.3|6.12]`` (tests/kernel/ runs it on the series); the project's tests
assert on its report.  It uses the kernel builder's public API: a tree of its own
(``source_tree``), ``configure`` and ``make``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vblk_ci.build import BuildError, UsageError
from vblk_ci.build import bases as _bases
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


def _require_step(output: str, step: str, target: str) -> str:
    """A gate that did not run must not read as clean: kbuild prints '  STEP  target'."""
    if not re.search(rf"^\s+{re.escape(step)}\s+\S*{re.escape(target)}$", output, re.M):
        raise BuildError(f"make did not run {step} on {target}; output:\n{output[-2000:]}")
    return output


def _checkpatch(tree: Path, patch: K.Patch) -> PatchCheck:
    # checkpatch exits non-zero when it finds something: its total line is the verdict.
    out = K.run(["perl", "scripts/checkpatch.pl", "--strict", str(patch.path.resolve())], cwd=tree,
                what="checkpatch.pl", check=False)
    errors, warnings, checks = parse_checkpatch(out)
    return PatchCheck(patch.name, errors, warnings, checks, out if (errors or warnings or checks) else "")


def check_series(opts: K.KernelBuildOptions | None = None, progress: K.Progress | None = None) -> QualityReport:
    """Apply the series to a clean base tree and run every gate on it."""
    opts = opts or K.KernelBuildOptions()
    if shutil.which("sparse") is None:
        raise MissingPrerequisite("sparse is not installed (apt-get install sparse)")
    t0 = time.monotonic()
    patches = K.resolve_patches(opts)
    if not patches:
        raise BuildError(f"no patches listed in {K.resolve_series_dir(opts)}/series")

    def say(msg: str) -> None:
        if progress is not None:
            progress(msg)

    jobs = f"-j{opts.jobs or K.default_jobs()}"
    with K.source_tree(opts, "quality", progress) as src:
        tree = src.path
        report = QualityReport(base=src.base_identity, applies=True)
        say("checkpatch --strict on each patch")
        report.patches = [_checkpatch(tree, p) for p in patches]

        fragments = K.resolve_fragments(opts)
        for module, obj in ((False, src.objdir("build")), (True, src.objdir("module"))):
            log = obj / "quality.log"
            obj.mkdir(parents=True, exist_ok=True)
            K.configure(tree, obj, fragments, module, log, progress)
            say(f"prepare objects dir ({'virtio_blk=m' if module else 'virtio_blk=y'})")
            K.make(tree, obj, jobs, "prepare")
            if not module:
                say("sparse (C=2) on " + DRIVER_SOURCE)
                out = K.make(tree, obj, "C=2", DRIVER_OBJECT)
                report.sparse = sparse_only(diagnostics_for(_require_step(out, "CHECK", DRIVER_SOURCE)))
            say(f"W=1 build of {DRIVER_OBJECT} ({'=m' if module else '=y'})")
            # An up-to-date object would compile silently: force the compiler to run.
            (obj / DRIVER_OBJECT).unlink(missing_ok=True)
            out = K.make(tree, obj, "W=1", DRIVER_OBJECT)
            found = diagnostics_for(_require_step(out, "CC [M]" if module else "CC", DRIVER_OBJECT))
            if module:
                report.module_w1 = found
            else:
                report.w1 = found
    report.seconds = round(time.monotonic() - t0, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m vblk_ci.build.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default=_bases.DEFAULT_BASE,
                   help=f"kernel base: {', '.join(_bases.BASES)} (default %(default)s)")
    p.add_argument("--series-dir", help="directory with the quilt 'series' file (default the base's)")
    p.add_argument("--cache-dir", help="cache root (default $VBLK_CI_CACHE or ~/.cache/vblk-ci)")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")
    a = p.parse_args(argv)
    opts = K.KernelBuildOptions(base=a.base, series_dir=a.series_dir, cache_dir=a.cache_dir)
    try:
        K.kernel_base(opts)
        report = check_series(opts, progress=lambda m: print(f"[quality] {m}", file=sys.stderr, flush=True))
    except (BuildError, MissingPrerequisite, UsageError) as e:
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
