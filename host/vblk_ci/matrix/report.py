"""report/matrix.md: one row per combination -- configuration, status, time, QD1 IOPS."""

from __future__ import annotations

from pathlib import Path

from ..result import RunResult

IOPS_COLUMNS = ("passthru-read", "passthru-write", "block-read", "block-write")


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _config(disk: dict) -> str:
    parts = [disk["backend"], f"q{disk['num_queues']}", f"poll{disk['poll_queues']}", f"iot:{disk['iothread']}",
             f"aio:{disk['aio']}", f"cache:{disk['cache']}", f"{disk['lbs']}/{disk['pbs']}"]
    if disk.get("vq_mapping"):
        parts.append("vq-map")
    return " ".join(parts)


def combination_rows(figures: list[dict]) -> list[list[str]]:
    """One row per (combination, disk): the cells of the Markdown table."""
    rows = []
    for fig in figures:
        iops = fig.get("iops", {})
        for i, disk in enumerate(fig["disks"]):
            per = iops.get(disk["id"], {})
            first = i == 0
            rows.append([
                fig["name"] if first else "↳", str(fig["vcpus"]) if first else "", disk["id"], _config(disk),
                fig["status"] if first else "", f"{fig['seconds']:.1f}" if first else "",
                *[f"{per[k]:.0f}" if k in per else "-" for k in IOPS_COLUMNS],
            ])
    return rows


def to_markdown(result: RunResult) -> str:
    m = result.timings.get("matrix", {})
    figures = m.get("combinations", [])
    lines = [f"### Matrix `{m.get('name', '?')}` ({m.get('file', '')}): {result.status}", "",
             f"QEMU {result.qemu_version}, accel {result.accel}; wall time {m.get('wall_s', 0):.1f}s; "
             f"{len(figures)} combination(s)" + (f", -k {m['select']!r}" if m.get("select") else ""), ""]
    for boot in m.get("boots", []):
        lines.append(f"- VM with {boot['vcpus']} vCPU(s): boot {boot['boot_s']:.1f}s, agent {boot['agent_s']:.1f}s")
    lines += ["", "| combination | vCPUs | disk | configuration | status | time s | passthru read IOPS | "
              "passthru write IOPS | block read IOPS | block write IOPS |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in combination_rows(figures)]
    skipped = [f for f in figures if f.get("skip_reasons")]
    mismatched = [f for f in figures if f.get("mismatch")]
    if skipped or mismatched:
        lines.append("")
    lines += [f"- `{f['name']}` skipped: {_cell('; '.join(f['skip_reasons']))}" for f in skipped]
    lines += [f"- `{f['name']}` CONFIG_MISMATCH: {_cell(f['mismatch'])}" for f in mismatched]
    return "\n".join(lines) + "\n"


def write_markdown(result: RunResult, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_markdown(result), encoding="utf-8")
    return path
