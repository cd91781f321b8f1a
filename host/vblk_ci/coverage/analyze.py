"""``vblk-ci coverage RUN_DIR... [--out DIR]``: the series' added lines of virtio_blk.c that ran.

Inputs:
- each run dir's ``coverage/*.gcda`` (``vblk-ci run --coverage``): disjoint
  snapshots of the guest's counters, so their line counts add up;
- the coverage kernel's artifacts (``--artifacts DIR``, default: beside the
  run's kernel, else ``$VBLK_CI_COVERAGE_DIR``): ``virtio_blk.gcno``,
  ``virtio_blk.c`` as built, ``series-lines.json`` (the line numbers the
  series adds or changes, from ``git diff base..HEAD``).

gcov must be the version of the gcc that compiled the kernel (a .gcno is read
only by its own gcov): in the image that is ``gcov-14`` (``$VBLK_CI_GCOV``).
Each snapshot is run through ``gcov --json-format`` on its own and the per-line
counts are summed (the same numbers ``gcov-tool merge`` would give: line counts
are sums of arc counters).  A line gcov does not list is not executable
(comment, brace, declaration) and is not counted.

Outputs in ``--out``: ``coverage.json`` (every added line: executed / not
executed / not executable, with its count, function and text), ``coverage.md``
(the number and the list of added executable lines that did not run, grouped
by function), ``virtio_blk.info`` (lcov tracefile of the merged counts) and
``html/`` (genhtml, when lcov is installed).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..build.bases import DRIVER_SOURCE
from ..errors import InfraError, MissingPrerequisite, UsageError
from .collect import COVERAGE_SUBDIR

ENV_GCOV = "VBLK_CI_GCOV"
ENV_COVERAGE_DIR = "VBLK_CI_COVERAGE_DIR"
ARTIFACT_FILES = ("virtio_blk.gcno", "virtio_blk.c", "series-lines.json")

EXECUTED = "executed"
NOT_EXECUTED = "not-executed"
NOT_EXECUTABLE = "not-executable"


# --------------------------------------------------------------------------- gcov output


@dataclass
class LineCount:
    count: int
    function: str | None = None


def _is_target(path: str, target: str = DRIVER_SOURCE) -> bool:
    p = path.replace("\\", "/")
    return p == target or p.endswith("/" + target)


def parse_gcov_json(doc: dict, target: str = DRIVER_SOURCE) -> dict[int, LineCount]:
    """Line -> count for *target* from one ``gcov --json-format`` document.

    Only lines gcov lists are executable.  A line listed more than once (it
    belongs to several functions, e.g. code expanded from a macro into two
    functions) keeps the largest count, as gcov's own text output does, and the
    first function name.
    """
    out: dict[int, LineCount] = {}
    for f in doc.get("files", []):
        if not _is_target(str(f.get("file", "")), target):
            continue
        for ln in f.get("lines", []):
            n = int(ln["line_number"])
            c = int(ln.get("count", 0))
            fn = ln.get("function_name")
            prev = out.get(n)
            if prev is None:
                out[n] = LineCount(c, fn)
            elif c > prev.count:
                prev.count = c
    return out


def merge_counts(runs: list[dict[int, LineCount]]) -> dict[int, LineCount]:
    """Sum the counts of disjoint snapshots; a line executable in any of them is executable."""
    total: dict[int, LineCount] = {}
    for run in runs:
        for n, lc in run.items():
            t = total.get(n)
            if t is None:
                total[n] = LineCount(lc.count, lc.function)
            else:
                t.count += lc.count
                t.function = t.function or lc.function
    return total


def gcov_problem(stderr: str) -> str | None:
    """The first line of gcov's stderr that means its numbers cannot be trusted, or None."""
    for line in stderr.splitlines():
        low = line.lower()
        if "stamp mismatch" in low or "version" in low and ("prefer" in low or "mismatch" in low) \
                or "cannot open notes file" in low or "not a gcov" in low or "corrupted" in low:
            return line.strip()
    return None


def _gcov_binary(explicit: str | None) -> str:
    for cand in (explicit, os.environ.get(ENV_GCOV), "gcov-14", "gcov"):
        if cand and shutil.which(cand):
            return shutil.which(cand)  # type: ignore[return-value]
    raise MissingPrerequisite("no gcov found: the analysis needs gcov of the gcc that built the coverage kernel "
                              f"(gcov-14 in the image; set ${ENV_GCOV} or --gcov)")


def run_gcov(gcov: str, gcno: Path, gcda: Path | None) -> dict:
    """``gcov --json-format`` on *gcno* (+ *gcda*; None = no counters, all zero); the parsed document."""
    with tempfile.TemporaryDirectory(prefix="vblk-gcov-") as tmp:
        t = Path(tmp)
        shutil.copyfile(gcno, t / "virtio_blk.gcno")
        if gcda is not None:
            shutil.copyfile(gcda, t / "virtio_blk.gcda")
        proc = subprocess.run([gcov, "--json-format", "--object-directory", str(t), "virtio_blk.gcno"],
                              cwd=t, capture_output=True, text=True, errors="replace")
        problem = gcov_problem(proc.stderr)
        if problem:
            what = f"{gcda}" if gcda is not None else f"{gcno}"
            if "version" in problem.lower():
                raise MissingPrerequisite(f"{Path(gcov).name} cannot read {what}: {problem} "
                                          f"(use the gcov of the gcc that built the kernel: gcov-14 in the image)")
            raise InfraError(f"gcov on {what}: {problem}")
        if proc.returncode != 0:
            raise InfraError(f"gcov exited {proc.returncode}: {proc.stderr.strip()[:500]}")
        outs = sorted(t.glob("*.gcov.json.gz"))
        if not outs:
            raise InfraError(f"gcov wrote no .gcov.json.gz: {proc.stderr.strip()[:500]}")
        with gzip.open(outs[0], "rt", encoding="utf-8") as f:
            return json.load(f)


# --------------------------------------------------------------------------- report


@dataclass
class AddedLine:
    line: int
    status: str
    count: int | None
    function: str | None
    text: str


@dataclass
class CoverageReport:
    file: str
    runs: list[str]
    snapshots: int
    added: int
    executable: int
    executed: int
    percent: float | None
    lines: list[AddedLine] = field(default_factory=list)

    @property
    def unexecuted(self) -> list[AddedLine]:
        return [ln for ln in self.lines if ln.status == NOT_EXECUTED]

    def to_json(self) -> dict:
        d = asdict(self)
        d["unexecuted"] = [f"{self.file}:{ln.line}" for ln in self.unexecuted]
        return d


_FN_NAME_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(")


def enclosing_function(source: list[str], line: int) -> str | None:
    """The C function whose body holds *line* (1-based), by kernel coding style.

    A function body opens with ``{`` alone at column 0 and closes with ``}`` at
    column 0; the signature is the column-0 line above the ``{`` (its name is the
    identifier before the first ``(``).  gcov's own ``function_name`` is missing
    for code inlined into another function, so the source is the better guide.
    None outside any function.
    """
    i = min(line, len(source)) - 1
    while i >= 0:
        text = source[i]
        if text.startswith("}") and i != line - 1:
            return None
        if text.rstrip() == "{":
            j = i - 1
            while j >= 0 and (source[j][:1] in (" ", "\t") or not source[j].strip()):
                j -= 1
            if j < 0:
                return None
            m = _FN_NAME_RE.search(source[j])
            return m.group(1) if m else None
        i -= 1
    return None


def classify_lines(added: list[int], counts: dict[int, LineCount], source: list[str], file: str = DRIVER_SOURCE,
                   runs: list[str] | None = None, snapshots: int = 0) -> CoverageReport:
    """The report for the series' *added* lines given the merged *counts* and the source text."""
    lines: list[AddedLine] = []
    for n in sorted(set(added)):
        text = source[n - 1] if 0 < n <= len(source) else ""
        lc = counts.get(n)
        fn = enclosing_function(source, n)
        if lc is None:
            lines.append(AddedLine(n, NOT_EXECUTABLE, None, fn, text))
        else:
            lines.append(AddedLine(n, EXECUTED if lc.count > 0 else NOT_EXECUTED, lc.count, fn or lc.function, text))
    executable = sum(1 for ln in lines if ln.status != NOT_EXECUTABLE)
    executed = sum(1 for ln in lines if ln.status == EXECUTED)
    pct = round(100.0 * executed / executable, 1) if executable else None
    return CoverageReport(file, list(runs or []), snapshots, len(lines), executable, executed, pct, lines)


def group_unexecuted(report: CoverageReport) -> list[tuple[str, list[AddedLine]]]:
    """Runs of unexecuted added lines, grouped by function, in line order."""
    groups: list[tuple[str, list[AddedLine]]] = []
    for ln in report.unexecuted:
        fn = ln.function or "?"
        if groups and groups[-1][0] == fn:
            groups[-1][1].append(ln)
        else:
            groups.append((fn, [ln]))
    return groups


def summary_line(report: CoverageReport) -> str:
    pct = "n/a" if report.percent is None else f"{report.percent:.1f}%"
    return (f"series lines in {report.file}: {report.executed}/{report.executable} executable added lines ran "
            f"({pct}); {report.added} added, {report.added - report.executable} not executable; "
            f"{report.snapshots} snapshot(s) from {len(report.runs)} run(s)")


def render_markdown(report: CoverageReport) -> str:
    out = ["# Patch-line coverage", "", summary_line(report), "", f"Runs: {', '.join(report.runs)}", ""]
    groups = group_unexecuted(report)
    out.append(f"## Added executable lines that did not run ({len(report.unexecuted)})")
    out.append("")
    if not groups:
        out.append("(none)")
    for fn, lines in groups:
        out.append(f"### {fn} ({len(lines)})")
        out.append("")
        out.append("```")
        out.extend(f"{report.file}:{ln.line}: {ln.text.strip()}" for ln in lines)
        out.append("```")
        out.append("")
    out.append("## Every added line")
    out.append("")
    out.append("| line | status | count | source |")
    out.append("|---:|---|---:|---|")
    for ln in report.lines:
        count = "" if ln.count is None else str(ln.count)
        text = ln.text.strip().replace("|", "\\|").replace("`", "'")
        out.append(f"| {ln.line} | {ln.status} | {count} | `{text}` |" if text else
                   f"| {ln.line} | {ln.status} | {count} | |")
    return "\n".join(out) + "\n"


def lcov_tracefile(source_path: str, counts: dict[int, LineCount], test_name: str = "vblk_ci") -> str:
    """An lcov tracefile (``DA`` records only) for one source file."""
    lines = [f"TN:{test_name}", f"SF:{source_path}"]
    for n in sorted(counts):
        lines.append(f"DA:{n},{counts[n].count}")
    lines.append(f"LF:{len(counts)}")
    lines.append(f"LH:{sum(1 for c in counts.values() if c.count > 0)}")
    lines.append("end_of_record")
    return "\n".join(lines) + "\n"


def parse_lcov_tracefile(text: str) -> dict[str, dict[int, int]]:
    """SF -> {line: count} from an lcov tracefile (``DA`` records; a line seen twice is summed)."""
    out: dict[str, dict[int, int]] = {}
    current: dict[int, int] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("SF:"):
            current = out.setdefault(line[3:], {})
        elif line.startswith("DA:") and current is not None:
            parts = line[3:].split(",")
            n, c = int(parts[0]), int(parts[1])
            current[n] = current.get(n, 0) + c
        elif line == "end_of_record":
            current = None
    return out


# --------------------------------------------------------------------------- inputs


def snapshots_of(run_dir: Path) -> list[Path]:
    d = Path(run_dir) / COVERAGE_SUBDIR
    return sorted(d.glob("*.gcda")) if d.is_dir() else []


def _has_artifacts(d: Path) -> bool:
    return all((d / name).is_file() for name in ARTIFACT_FILES)


def find_artifacts(run_dirs: list[Path], explicit: str | None) -> Path:
    """Where virtio_blk.gcno, virtio_blk.c and series-lines.json are."""
    tried: list[str] = []
    cands: list[Path] = []
    if explicit:
        cands.append(Path(explicit))
    else:
        for rd in run_dirs:
            try:
                kernel = json.loads((Path(rd) / "results.json").read_text(encoding="utf-8")).get("kernel")
            except (OSError, ValueError):
                kernel = None
            if kernel:
                cands.append(Path(kernel).parent)
        if os.environ.get(ENV_COVERAGE_DIR):
            cands.append(Path(os.environ[ENV_COVERAGE_DIR]))
    for c in cands:
        if _has_artifacts(c):
            return c
        tried.append(str(c))
    raise MissingPrerequisite(
        f"no coverage kernel artifacts ({', '.join(ARTIFACT_FILES)}) in "
        f"{', '.join(tried) or 'any place'}: pass --artifacts DIR (the image has /opt/vblk-ci/coverage)")


def analyze(run_dirs: list[Path], out: Path, artifacts: str | None = None, gcov: str | None = None,
            html: bool = True) -> CoverageReport:
    run_dirs = [Path(r) for r in run_dirs]
    for rd in run_dirs:
        if not rd.is_dir():
            raise UsageError(f"not a run directory: {rd}")
    snaps = [s for rd in run_dirs for s in snapshots_of(rd)]
    if not snaps:
        raise UsageError(f"no coverage snapshots (coverage/*.gcda) in {', '.join(map(str, run_dirs))}: "
                         f"run the suites with vblk-ci run --coverage on the coverage kernel")
    art = find_artifacts(run_dirs, artifacts)
    meta = json.loads((art / "series-lines.json").read_text(encoding="utf-8"))
    file = meta.get("file", DRIVER_SOURCE)
    added = [int(n) for n in meta.get("added_lines", [])]
    source_text = (art / "virtio_blk.c").read_text(encoding="utf-8", errors="replace")
    binary = _gcov_binary(gcov)
    gcno = art / "virtio_blk.gcno"
    per_snapshot = [parse_gcov_json(run_gcov(binary, gcno, s), file) for s in snaps]
    counts = merge_counts([parse_gcov_json(run_gcov(binary, gcno, None), file), *per_snapshot])
    report = classify_lines(added, counts, source_text.splitlines(), file, [str(r) for r in run_dirs], len(snaps))

    out.mkdir(parents=True, exist_ok=True)
    src_copy = out / "src" / file
    src_copy.parent.mkdir(parents=True, exist_ok=True)
    src_copy.write_text(source_text, encoding="utf-8")
    (out / "coverage.json").write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    (out / "coverage.md").write_text(render_markdown(report), encoding="utf-8")
    sf = str(src_copy.resolve())
    info = out / "virtio_blk.info"
    info.write_text(lcov_tracefile(sf, counts), encoding="utf-8")
    if html:
        _genhtml(info, out / "html", out, sf, insertion_diff(sf, added, source_text.splitlines()))
    return report


def insertion_diff(path: str, added: list[int], source: list[str]) -> str:
    """A unified diff that inserts exactly the *added* lines of *source*, named *path*, for genhtml.

    genhtml's differential mode reads the series' own ``-U0`` diff a few lines off
    where a hunk both removes and adds lines (it marked changed lines as old code
    and shifted later hunks), so it is given this one instead: every run of added
    lines as a pure insertion, the old side numbered as if the added lines were
    not there, closed by the file's last line as context.  Its GNC/UNC lines are
    then exactly our added executable lines.
    """
    out = [f"diff --git {path} {path}", f"--- {path}", f"+++ {path}"]
    lines = sorted(set(n for n in added if 0 < n <= len(source)))
    i = 0
    while i < len(lines):
        j = i
        while j + 1 < len(lines) and lines[j + 1] == lines[j] + 1:
            j += 1
        start, count = lines[i], j - i + 1
        out.append(f"@@ -{start - 1 - i},0 +{start},{count} @@")
        out.extend("+" + source[n - 1] for n in lines[i:j + 1])
        i = j + 1
    last = len(source)
    if lines and lines[-1] != last:
        # genhtml takes every line after the last hunk as new: end on the file's last line, as context.
        out.append(f"@@ -{last - len(lines)},1 +{last},1 @@")
        out.append(" " + source[last - 1])
    return "\n".join(out) + "\n"


def _genhtml(info: Path, html_dir: Path, out: Path, sf: str, diff_text: str | None) -> None:
    """genhtml's report; with the series diff, differential: added lines show as GNC (ran) / UNC (did not).

    The differential mode wants a baseline: there is no run of the unpatched
    kernel, so the baseline is a stub (one line, never run) and every line the
    series did not touch shows as "included code" (GIC/UIC).  If genhtml refuses
    that, the plain report is made instead.
    """
    genhtml = shutil.which("genhtml")
    if genhtml is None:
        (out / "html.txt").write_text("genhtml not found (apt-get install lcov): no HTML report\n", encoding="utf-8")
        return
    base = [genhtml, "--quiet", "--output-directory", str(html_dir), "--title", "vblk-ci: virtio_blk.c, driver series"]
    log = []
    if diff_text:
        (out / "series.diff").write_text(diff_text, encoding="utf-8")
        (out / "baseline-stub.info").write_text(f"TN:\nSF:{sf}\nDA:1,0\nLF:1\nLH:0\nend_of_record\n",
                                                encoding="utf-8")
        cmd = [*base, "--diff-file", str(out / "series.diff"), "--baseline-file", str(out / "baseline-stub.info"),
               str(info)]
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
        log.append(f"$ {' '.join(cmd)}\n(exit {proc.returncode})\n{proc.stdout}{proc.stderr}")
        if proc.returncode == 0 and (html_dir / "index.html").is_file():
            (out / "html.txt").write_text("".join(log), encoding="utf-8")
            return
        shutil.rmtree(html_dir, ignore_errors=True)
    proc = subprocess.run([*base, str(info)], capture_output=True, text=True, errors="replace")
    log.append(f"$ {' '.join([*base, str(info)])}\n(exit {proc.returncode})\n{proc.stdout}{proc.stderr}")
    (out / "html.txt").write_text("".join(log), encoding="utf-8")
    if proc.returncode != 0:
        raise InfraError(f"genhtml failed (exit {proc.returncode}): {proc.stderr.strip()[:500]}")
