"""Upstream quality gates for the driver series, measured rather than assumed.

For one base (7.3 with driver/, 6.12 with driver/6.12/, see bases.py): every
patch applies with ``git am``; every patch is ``checkpatch.pl --strict`` clean
but for the findings CHECKPATCH_ALLOWED names (each with its reason); sparse
(``C=2``) reports nothing in drivers/block/virtio_blk.c that the unpatched file
does not; ``W=1`` reports nothing there with the driver built in (``=y``) and
as a module (``=m``); and the module links: modpost resolves every symbol
virtio_blk.ko needs against the exports of the patched kernel (its vmlinux.o),
and virtio_blk.ko is written.

Stdlib only, like the rest of build/. Runs as ``python3 -m vblk_ci.build.quality
[--base 7.3|6.12]`` on the host when the base's tarball is there, and in the
image's ``gates`` stage (Dockerfile: the kernel-toolchain stage + sparse) where
it is not; ``vblk_ci.gates`` picks one, and tests/kernel/ asserts on the report.
It uses the kernel builder's public API: a tree of its own (``source_tree``),
``configure``, ``make`` and ``compile_kernel``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from vblk_ci.build import BuildError, UsageError
from vblk_ci.build import bases as _bases
from vblk_ci.build import exports as _exports
from vblk_ci.build import kernel as K
from vblk_ci.errors import MissingPrerequisite

DRIVER_SOURCE = _bases.DRIVER_SOURCE

DRIVER_OBJECT = "drivers/block/virtio_blk.o"
DRIVER_MODULE = "drivers/block/virtio_blk.ko"
#: The tree slot the gates use (``<cache>/trees/<base>/quality``) and its two objects dirs.
SLOT = "quality"
_CHECKPATCH_TOTAL = re.compile(r"total: (\d+) errors, (\d+) warnings, (?:(\d+) checks, )?\d+ lines checked")
# checkpatch --show-types: "WARNING:TYPE: message", then "#N: FILE: ..." or "#N: " and the line itself.
_CHECKPATCH_FINDING = re.compile(r"^(ERROR|WARNING|CHECK):([A-Z0-9_]+): (.*)$")
_LEVEL_FIELD = {"ERROR": "errors", "WARNING": "warnings", "CHECK": "checks"}
# gcc and sparse both report "path:line:col: warning|error: ..."
_DIAG = re.compile(r"^(?P<file>[^\s:]+):(?P<line>\d+):\d+: (?P<kind>warning|error): (?P<msg>.*)$")
# modpost's findings: "ERROR: modpost: "sym" [drivers/block/virtio_blk.ko] undefined!"
_MODPOST = re.compile(r"^(ERROR|WARNING): modpost: ")

#: checkpatch findings the gates accept, by type, each with why, and the only lines each may
#: point at. Nothing else is waived: any other finding, or one of these elsewhere, counts.
CHECKPATCH_ALLOWED: dict[str, tuple[str, re.Pattern[str]]] = {
    "UNKNOWN_COMMIT_ID": (
        "the tree is a release tarball committed once, so no commit before it exists there: "
        "checkpatch cannot look up the commit a Fixes: tag, or a stable backport's "
        "'commit <sha1> upstream.' line, names",
        re.compile(r"^(Fixes: [0-9a-f]{12,40} \(\".*\"\)|commit [0-9a-f]{40} upstream\.)$"),
    ),
}


@dataclass
class PatchCheck:
    name: str
    errors: int
    warnings: int
    checks: int
    output: str = ""
    #: Findings CHECKPATCH_ALLOWED waived ("TYPE: message | the line"), not counted above.
    allowed: list[str] = field(default_factory=list)


@dataclass
class QualityReport:
    base: str
    patches: list[PatchCheck] = field(default_factory=list)
    applies: bool = False
    #: Sparse findings in the driver that the unpatched file does not have.
    sparse: list[str] = field(default_factory=list)
    #: Sparse findings the unpatched file has too (not counted; shown so nothing hides).
    sparse_preexisting: list[str] = field(default_factory=list)
    sparse_command: list[str] = field(default_factory=list)
    #: Sparse errors in the unpatched file: sparse prints no warning after its first error,
    #: so the gate could not see the file's warnings (7.3 with Debian's sparse 0.6.4).
    sparse_blind: list[str] = field(default_factory=list)
    w1: list[str] = field(default_factory=list)
    module_w1: list[str] = field(default_factory=list)
    #: modpost's ERROR/WARNING lines for virtio_blk.ko (W=1: modpost -W too).
    link: list[str] = field(default_factory=list)
    #: virtio_blk.ko was written by the =m build.
    module_linked: bool = False
    #: The make output's tail when the module did not link and modpost said nothing.
    link_output: str = ""
    #: Where the vmlinux.o modpost read came from: a kept one (exports.py) and why it matched,
    #: or "built here" and why no kept one could stand in.
    exports: str = ""
    #: Wall time of each phase, seconds.
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def checkpatch_total(self) -> dict[str, int]:
        return {k: sum(getattr(p, k) for p in self.patches) for k in ("errors", "warnings", "checks")}

    @property
    def clean(self) -> bool:
        """Every gate that could look found nothing (a blind sparse found nothing: see ``complete``)."""
        totals = self.checkpatch_total
        return (self.applies and not any(totals.values()) and self.module_linked
                and not (self.sparse or self.w1 or self.module_w1 or self.link))

    @property
    def complete(self) -> bool:
        """Every gate could look: False when sparse stopped at errors in the unpatched file
        (Debian's sparse 0.6.4 on 7.3's headers), so that "0 new" from it means nothing."""
        return not self.sparse_blind

    def to_json(self) -> dict:
        out = asdict(self)
        out["checkpatch_total"] = self.checkpatch_total
        out["clean"] = self.clean
        out["complete"] = self.complete
        return out

    @classmethod
    def from_json(cls, data: dict) -> "QualityReport":
        """The report ``to_json`` wrote (e.g. printed by a gates container)."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in data.items() if k in names}
        kw["patches"] = [PatchCheck(**p) for p in data.get("patches", [])]
        return cls(**kw)


def parse_checkpatch(text: str) -> tuple[int, int, int]:
    """(errors, warnings, checks) from checkpatch's closing ``total:`` line."""
    m = _CHECKPATCH_TOTAL.search(text)
    if not m:
        raise BuildError(f"checkpatch printed no 'total:' line:\n{text[-2000:]}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def allowed_findings(text: str) -> list[tuple[str, str]]:
    """(level, "TYPE: message | line") of each finding in checkpatch --show-types output that
    CHECKPATCH_ALLOWED waives: its type is listed and the patch line it points at matches."""
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        m = _CHECKPATCH_FINDING.match(line)
        if not m or m.group(2) not in CHECKPATCH_ALLOWED:
            continue
        # "#8: " (a commit-log line) is followed by the line itself; "#27: FILE: ..." by the code.
        where = lines[i + 1] if i + 1 < len(lines) else ""
        quoted = lines[i + 2].strip() if i + 2 < len(lines) and re.fullmatch(r"#\d+: ", where) else ""
        if quoted and CHECKPATCH_ALLOWED[m.group(2)][1].match(quoted):
            found.append((m.group(1), f"{m.group(2)}: {m.group(3)} | {quoted}"))
    return found


def patch_check(name: str, text: str) -> PatchCheck:
    """One patch's verdict from checkpatch --strict --show-types output: totals less the waived."""
    errors, warnings, checks = parse_checkpatch(text)
    counts = {"errors": errors, "warnings": warnings, "checks": checks}
    allowed = allowed_findings(text)
    for level, _ in allowed:
        counts[_LEVEL_FIELD[level]] -= 1
    if "No module named 'ply'" in text:
        # checkpatch runs scripts/spdxcheck.py on new files and carries on when it crashes.
        raise MissingPrerequisite("checkpatch's SPDX check needs python3-ply (apt-get install python3-ply)")
    return PatchCheck(name, **counts, output=text if any(counts.values()) else "", allowed=[a for _, a in allowed])


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


def _finding_key(diag: str, source_lines: list[str]) -> tuple[str, str, str]:
    """What a finding says and the source line it points at, without the line number
    (a patch moves the unpatched file's lines)."""
    m = _DIAG.match(diag)
    if not m:
        return ("", diag, "")
    n = int(m.group("line"))
    text = source_lines[n - 1].strip() if 0 < n <= len(source_lines) else ""
    return (m.group("kind"), m.group("msg"), text)


def new_findings(patched: list[str], patched_source: str, base: list[str], base_source: str
                 ) -> tuple[list[str], list[str]]:
    """(new, preexisting): the patched file's findings split by whether the unpatched file
    has the same finding (same message on a line with the same text), counted per key."""
    have = collections.Counter(_finding_key(d, base_source.splitlines()) for d in base)
    new, old = [], []
    for d in patched:
        k = _finding_key(d, patched_source.splitlines())
        if have[k] > 0:
            have[k] -= 1
            old.append(d)
        else:
            new.append(d)
    return new, old


def modpost_findings(output: str) -> list[str]:
    """modpost's ERROR/WARNING lines in a make output."""
    return [line.strip() for line in output.splitlines() if _MODPOST.match(line.strip())]


def sparse_program(tree: Path) -> list[str]:
    """The CHECK program: sparse, plus a define for each construct of the tree's headers that
    Debian's sparse 0.6.4 cannot read and after which it prints nothing more:
    - ``-D__typeof_unqual__=__typeof__`` where compiler_types.h uses ``__typeof_unqual__``
      (7.3 does, when the compiler has it): sparse would stop at every macro using it; it reads
      it as ``__typeof__`` (the qualifiers that keeps are not what sparse checks);
    - ``-D__builtin_strlen(s)=(sizeof(s) - 1)`` where moduleparam.h's static_assert calls
      ``__builtin_strlen`` (7.3's MODULE_INFO(), checking a string literal for embedded NULs):
      sparse cannot fold it ("bad constant expression" at every module_param and
      MODULE_PARM_DESC), and after 8 errors it reports no warning at all. For a literal
      without an embedded NUL the two are equal; gcc still checks the NULs."""
    prog = ["sparse"]
    ct = tree / "include/linux/compiler_types.h"
    if ct.is_file() and "__typeof_unqual__" in ct.read_text(encoding="utf-8", errors="replace"):
        prog.append("-D__typeof_unqual__=__typeof__")
    mp = tree / "include/linux/moduleparam.h"
    if mp.is_file() and "__builtin_strlen(" in mp.read_text(encoding="utf-8", errors="replace"):
        prog.append("-D__builtin_strlen(s)=(sizeof(s) - 1)")
    return prog


def _require_step(output: str, step: str, target: str) -> str:
    """A gate that did not run must not read as clean: kbuild prints '  STEP  target'."""
    if not re.search(rf"^\s+{re.escape(step)}\s+\S*{re.escape(target)}$", output, re.M):
        raise BuildError(f"make did not run {step} on {target}; output:\n{output[-2000:]}")
    return output


def checkpatch_path() -> str:
    """PATH for checkpatch: its SPDX check runs ``python3 scripts/spdxcheck.py``, which needs
    ply. The first ``python3`` on PATH may lack it (a pyenv or venv one) while the system's
    has it (python3-ply): put the directory of the first one that imports ply first."""
    path = os.environ.get("PATH", os.defpath)
    for cand in (shutil.which("python3", path=path), "/usr/bin/python3"):
        if cand and subprocess.run([cand, "-c", "import ply"], capture_output=True).returncode == 0:
            return os.pathsep.join([str(Path(cand).parent), path])
    raise MissingPrerequisite("checkpatch's SPDX check needs python3 with ply (apt-get install python3-ply)")


def _checkpatch(tree: Path, patch: K.Patch, path: str) -> PatchCheck:
    # checkpatch exits non-zero when it finds something: its total line is the verdict.
    cmd = ["perl", "scripts/checkpatch.pl", "--strict", "--show-types", str(patch.path.resolve())]
    try:
        proc = subprocess.run(cmd, cwd=tree, env={**os.environ, "PATH": path}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, errors="replace")
    except OSError as e:
        raise BuildError(f"checkpatch.pl: cannot run perl: {e}") from e
    return patch_check(patch.name, proc.stdout)


def _sparse_command(output: str, program: list[str]) -> list[str]:
    """The sparse argv kbuild ran (``make V=1 C=2``) on the driver source."""
    for line in output.splitlines():
        line = line.strip()
        if line.startswith(program[0] + " ") and line.endswith(DRIVER_SOURCE):
            return shlex.split(line)
    raise BuildError(f"make C=2 V=1 ran no sparse on {DRIVER_SOURCE}; output:\n{output[-2000:]}")


def _sparse(tree: Path, obj: Path, base_commit: str, report: QualityReport) -> None:
    """Sparse on the patched driver, then the same command on the unpatched file; report the new."""
    program = sparse_program(tree)
    (obj / DRIVER_OBJECT).unlink(missing_ok=True)
    # Quoted: kbuild runs $(CHECK) through the shell, and a define may hold parentheses.
    out = K.make(tree, obj, "V=1", "C=2", f"CHECK={shlex.join(program)}", DRIVER_OBJECT)
    cmd = _sparse_command(out, program)
    patched = sparse_only(diagnostics_for(out))
    patched_source = (tree / DRIVER_SOURCE).read_text(encoding="utf-8", errors="replace")
    try:
        base_source = K.run(["git", "show", f"{base_commit}:{DRIVER_SOURCE}"], cwd=tree, what="git show")
    except BuildError:  # the series does not touch the driver: the base commit does not track it
        base_source = patched_source
    # The unpatched file beside the objects, at a path that ends in the same name; sparse
    # resolves the driver's includes through -I, which the command keeps.
    copy = obj / "vblk-ci-unpatched" / DRIVER_SOURCE
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text(base_source, encoding="utf-8")
    base_cmd = [str(copy) if a.endswith(DRIVER_SOURCE) else a for a in cmd]
    base_out = K.run(base_cmd, cwd=obj, what="sparse (unpatched)", check=False)
    base = sparse_only(diagnostics_for(base_out))
    report.sparse, report.sparse_preexisting = new_findings(patched, patched_source, base, base_source)
    report.sparse_blind = [d for d in report.sparse_preexisting if ": error: " in d]
    report.sparse_command = cmd[: len(program)]


def check_series(opts: K.KernelBuildOptions | None = None, progress: K.Progress | None = None,
                 exports_dir: Path | None = None) -> QualityReport:
    """Apply the series to a clean base tree and run every gate on it.  *exports_dir*: a kernel
    build's kept vmlinux.o (exports.py), used for the link check when its identity matches."""
    opts = opts or K.KernelBuildOptions()
    for tool, pkg in (("sparse", "sparse"), ("perl", "perl"), ("gcc", "build-essential")):
        if shutil.which(tool) is None:
            raise MissingPrerequisite(f"{tool} is not installed (apt-get install {pkg})")
    t0 = time.monotonic()
    patches = K.resolve_patches(opts)
    if not patches:
        raise BuildError(f"no patches listed in {K.resolve_series_dir(opts)}/series")

    def say(msg: str) -> None:
        if progress is not None:
            progress(msg)

    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.monotonic()
        timings[name] = round(now - since, 1)
        return now

    jobs = opts.jobs or K.default_jobs()
    with K.source_tree(opts, SLOT, progress) as src:
        t = lap("tree", t0)
        tree = src.path
        report = QualityReport(base=src.base_identity, applies=True)
        say("checkpatch --strict on each patch")
        path = checkpatch_path()
        report.patches = [_checkpatch(tree, p, path) for p in patches]
        t = lap("checkpatch", t)

        fragments = K.resolve_fragments(opts)
        # =y: prepare, sparse and W=1 on the driver's object.
        obj = src.objdir("build")
        log = obj / "quality.log"
        K.configure(tree, obj, fragments, False, log, progress)
        say("prepare objects dir (virtio_blk=y)")
        K.make(tree, obj, f"-j{jobs}", "prepare")
        say(f"sparse (C=2) on {DRIVER_SOURCE}, patched and unpatched")
        _sparse(tree, obj, src.state["base_commit"], report)
        t = lap("sparse", t)
        say(f"W=1 build of {DRIVER_OBJECT} (=y)")
        # An up-to-date object would compile silently: force the compiler to run.
        (obj / DRIVER_OBJECT).unlink(missing_ok=True)
        report.w1 = diagnostics_for(_require_step(K.make(tree, obj, "W=1", DRIVER_OBJECT), "CC", DRIVER_OBJECT))
        t = lap("w1_y", t)

        # =m: the patched kernel's vmlinux.o (what modpost reads the exports from), then
        # virtio_blk.ko with W=1: compile, modpost (unresolved symbols are errors), link.
        obj = src.objdir("module")
        log = obj / "quality.log"
        K.configure(tree, obj, fragments, True, log, progress)
        ident = _exports.identity(tree, obj, src.base_identity, K.gcc_version(), K.series_paths(patches))
        kept = _exports.find(exports_dir, ident)
        # Without its .cmd file, a later `make vmlinux_o` rebuilds whatever vmlinux.o is here.
        (obj / ".vmlinux.o.cmd").unlink(missing_ok=True)
        if kept.vmlinux_o is not None:
            say(f"vmlinux.o: {kept.reason}")
            shutil.copyfile(kept.vmlinux_o, obj / _exports.VMLINUX_O)
            report.exports = kept.reason
            t = lap("vmlinux_o_kept", t)
        else:
            say(f"vmlinux.o: built here ({kept.reason})")
            report.exports = f"built here ({kept.reason})"
            # vmlinux_o: "vmlinux.o" would read as a single-object target (%.o) and make nothing.
            K.compile_kernel(tree, obj, jobs, ["vmlinux_o"], [], log, progress)
            t = lap("vmlinux_o", t)
        say(f"W=1 build and link of {DRIVER_MODULE} (=m)")
        for rel in (DRIVER_OBJECT, DRIVER_MODULE):
            (obj / rel).unlink(missing_ok=True)
        out = K.run(["make", f"O={obj}", "W=1", DRIVER_MODULE], cwd=tree, what="make virtio_blk.ko", log=log,
                    check=False)
        report.module_w1 = diagnostics_for(_require_step(out, "CC [M]", DRIVER_OBJECT))
        report.link = modpost_findings(out)
        report.module_linked = (obj / DRIVER_MODULE).is_file()
        if not report.module_linked and not report.link:
            report.link_output = "\n".join(out.splitlines()[-K.LOG_TAIL_LINES:])
        lap("module", t)
    report.timings = timings
    report.seconds = round(time.monotonic() - t0, 1)
    return report


def summary(report: QualityReport) -> str:
    """The report in a few lines, one per gate."""
    t = report.checkpatch_total
    allowed = sum(len(p.allowed) for p in report.patches)
    return "\n".join([
        f"git am: {'ok' if report.applies else 'FAILED'} ({len(report.patches)} patches)",
        f"checkpatch --strict: {t['errors']} errors, {t['warnings']} warnings, {t['checks']} checks"
        + (f" ({allowed} allowed: {', '.join(sorted(CHECKPATCH_ALLOWED))})" if allowed else ""),
        f"sparse: {len(report.sparse)} new ({len(report.sparse_preexisting)} in the unpatched file too)"
        + (f"; BLIND: {len(report.sparse_blind)} errors, after which sparse prints no warning" if report.sparse_blind
           else ""),
        f"W=1 (=y): {len(report.w1)}; W=1 (=m): {len(report.module_w1)}",
        f"module link: {'virtio_blk.ko written' if report.module_linked else 'NOT LINKED'}"
        + (f"; modpost: {len(report.link)}" if report.link else "")
        + (f"; vmlinux.o: {report.exports}" if report.exports else ""),
        f"clean: {report.clean}" + ("" if report.complete else " (sparse could not check this base)")
        + f"; {report.seconds:.0f}s "
        + "(" + ", ".join(f"{k} {v:.0f}s" for k, v in report.timings.items()) + ")",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m vblk_ci.build.quality", description=__doc__.split("\n\n")[0])
    default_base = os.environ.get("VBLK_CI_KERNEL_BASE") or _bases.DEFAULT_BASE
    p.add_argument("--base", default=default_base,
                   help=f"kernel base: {', '.join(_bases.BASES)} (default $VBLK_CI_KERNEL_BASE or %(default)s)")
    p.add_argument("--series-dir", help="directory with the quilt 'series' file (default the base's)")
    p.add_argument("--cache-dir", help="cache root (default $VBLK_CI_CACHE or ~/.cache/vblk-ci)")
    p.add_argument("--jobs", type=int, help="make -j (default: the CPUs this process may use)")
    p.add_argument("--exports-dir", default=os.environ.get("VBLK_CI_EXPORTS") or None,
                   help="a kernel build's kept vmlinux.o and exports.json, used for the link check when "
                        "its identity matches this tree's (default $VBLK_CI_EXPORTS; the gates image sets it)")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")
    a = p.parse_args(argv)
    opts = K.KernelBuildOptions(base=a.base, series_dir=a.series_dir, cache_dir=a.cache_dir, jobs=a.jobs)
    try:
        K.kernel_base(opts)
        report = check_series(opts, progress=lambda m: print(f"[quality] {m}", file=sys.stderr, flush=True),
                              exports_dir=Path(a.exports_dir) if a.exports_dir else None)
    except (BuildError, MissingPrerequisite, UsageError) as e:
        print(f"vblk-ci: quality: {e}", file=sys.stderr)
        return e.exit_code
    print(json.dumps(report.to_json(), indent=2) if a.json else summary(report))
    return 0 if report.clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
