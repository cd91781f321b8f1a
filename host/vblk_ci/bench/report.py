"""Bench report writers: bench.json, bench.md (also appended to the GitHub step summary)
and PNG plots (latency CDF per path, IOPS bars with 95% CI) via matplotlib."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

from . import stats as S
from .job import PATHS
from .summary import pair_ratios

STEP_SUMMARY_ENV = "GITHUB_STEP_SUMMARY"


def write_json(record: dict, path: Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(record, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    return path


def _f(v: float | None, fmt: str = "{:.0f}") -> str:
    return "–" if v is None else fmt.format(v)


def _ratio(iv: Mapping, informative: bool = True) -> str:
    ci = iv.get("ci95")
    if not ci:
        return f"{iv['estimate']:.3f} (no CI: 1 pair)"
    text = f"{iv['estimate']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
    return text if informative else f"{text} *uninformative: {iv.get('n')} pairs*"


def _geomean_iops(p: Mapping) -> float:
    # bench.json files recorded before geometric means carry only the median
    return p["iops_geomean"]["estimate"] if "iops_geomean" in p else p["iops_median"]


def _us(ns: float | None) -> str:
    return "–" if ns is None else f"{ns / 1000:.1f}"


def header_lines(record: dict) -> list[str]:
    lines = ["## vblk-ci bench: passthrough (/dev/vdXc0) vs block (/dev/vdX)", ""]
    rel = " — **TCG: relative figures only** (absolute IOPS/latency say nothing about real hardware)" \
        if record.get("relative_only") else ""
    lines.append(f"**Accelerator: `{record['accel']}`**{rel}")
    lines.append("")
    facts = [f"QEMU {record.get('qemu_version')}", f"smp {record.get('smp')}", f"{record.get('memory_mb')} MiB",
             f"{record.get('pairs')} pairs", f"started {record.get('started_at')}"]
    if record.get("icount") is not None:
        facts.append(f"`-icount shift={record['icount']},sleep=off`: cpu ns = guest instructions")
    note = []
    if record.get("icount") is not None:
        note = ["Under icount with sleep=off the virtual clock jumps over idle time, so IOPS and latencies "
                "below are not meaningful; compare **instr/IO** (CPU time of the engine process in virtual ns).", ""]
    if record.get("preset"):
        facts.append(f"preset `{record['preset']}`")
    lines += [" · ".join(facts), "", f"Method: {record.get('method', '')}.", "", *note]
    return lines


def table_lines(record: dict) -> list[str]:
    icount = record.get("icount") is not None
    cpu_label = "instr/IO" if icount else "cpu ns/IO"
    lines = [
        f"| comparison | backend | path | job | IOPS (geo. mean) | ratio p/b [95% CI] | slat p50/p99 µs | "
        f"clat p50/p90/p99/p99.9 µs | syscalls/IO | {cpu_label} | req/kick | req/irq | fio (block) |",
        "|---|---|---|---|---:|---|---|---|---:|---:|---:|---:|---|",
    ]
    for comp in record.get("comparisons", []):
        s = comp["summary"]
        for path in PATHS:
            p = s["paths"][path]
            k = p.get("kicks") or {}
            fio = s.get("fio") or {}
            if path == "block":
                if fio.get("iops_median") is not None:
                    verdict = "agrees" if fio["agree"] else "**DISAGREES**"
                    fio_cell = f"{fio['iops_median']:.0f} ({fio['engine_vs_fio']:+.1%}, {verdict})"
                else:
                    fio_cell = "not run: " + (fio.get("reason") or "").splitlines()[0].replace("|", "/")
            else:
                fio_cell = ""
            ratio = _ratio(s["iops_ratio"], s.get("informative", True)) if path == "passthru" else ""
            lines.append(
                f"| {comp['name']} | {comp['backend']} | {path} | {comp['describe'][path]} | "
                f"{_geomean_iops(p):.0f} | {ratio} | {_us(p['slat']['p50'])}/{_us(p['slat']['p99'])} | "
                f"{_us(p['clat']['p50'])}/{_us(p['clat']['p90'])}/{_us(p['clat']['p99'])}/{_us(p['clat']['p999'])} | "
                f"{p['syscalls_per_io_median']:.3f} | {p['cpu_ns_per_io_median']:.0f} | "
                f"{_f(k.get('reqs_per_kick'), '{:.2f}')} | {_f(k.get('reqs_per_interrupt'), '{:.2f}')} | {fio_cell} |")
    lines.append("")
    return lines


def notes_lines(record: dict) -> list[str]:
    lines = []
    for comp in record.get("comparisons", []):
        s = comp["summary"]
        order = s.get("order_effect") or {}
        pf, bf = order.get("passthru_first") or {}, order.get("block_first") or {}
        order_text = ""
        if pf.get("mean_log_ratio") is not None and bf.get("mean_log_ratio") is not None:
            order_text = (f"; mean ln(p/b) {pf['mean_log_ratio']:+.2f} with passthru first ({pf['pairs']} pairs), "
                          f"{bf['mean_log_ratio']:+.2f} with block first ({bf['pairs']})")
        lines.append(f"- `{comp['name']}` ({comp['style']}): {comp.get('note', '')}; "
                     f"{'instructions' if record.get('icount') is not None else 'cpu ns'} per I/O "
                     f"passthru/block {_ratio(s['cpu_ns_per_io_ratio'], s.get('informative', True))}{order_text}")
    if not record.get("kicks_counted"):
        lines.append("- kicks not counted (--no-kicks)")
    return lines + [""]


def to_markdown(record: dict) -> str:
    return "\n".join(header_lines(record) + table_lines(record) + notes_lines(record)) + "\n"


def write_markdown(record: dict, path: Path, env: Mapping[str, str] | None = None) -> Path:
    text = to_markdown(record)
    Path(path).write_text(text, encoding="utf-8")
    target = (env if env is not None else os.environ).get(STEP_SUMMARY_ENV)
    if target:
        with open(target, "a", encoding="utf-8") as f:
            f.write(text)
    return Path(path)


# -- plots ------------------------------------------------------------------------------


def write_plots(record: dict, out_dir: Path) -> list[Path]:
    """One latency-CDF PNG per comparison and one IOPS bar chart; returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = f" [{record['accel']}{', relative only' if record.get('relative_only') else ''}]"
    files = []
    comps = record.get("comparisons", [])
    for comp in comps:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for path, style in (("passthru", "-"), ("block", "--")):
            p = comp["summary"]["paths"][path]
            xs, ys = S.hist_cdf(p["clat"]["hist"])
            ax.step([x / 1000 for x in xs], ys, style, where="post", label=f"{path} clat")
            xs, ys = S.hist_cdf(p["slat"]["hist"])
            ax.step([x / 1000 for x in xs], ys, style, where="post", alpha=0.5, label=f"{path} slat")
        ax.set_xscale("log")
        ax.set_xlabel("latency (µs, log)")
        ax.set_ylabel("fraction of I/Os")
        ax.set_title(f"{comp['name']}: latency CDF{tag}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        f = out_dir / f"latency-cdf-{comp['name']}.png"
        fig.tight_layout()
        fig.savefig(f, dpi=90)
        plt.close(fig)
        files.append(f)
    icount = record.get("icount") is not None
    if comps:
        # The paired figure: per comparison the geometric-mean ratio passthru/block with its
        # paired 95% interval, and each pair's own ratio as a dot (filled: passthru ran first).
        key = "cpu_ns_per_io" if icount else "iops"  # under icount, elapsed virtual time skips idle
        fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(comps) + 2), 4.5))
        for i, comp in enumerate(comps):
            s = comp["summary"]
            iv = s[f"{key}_ratio"]
            ci = iv["ci95"]
            err = [[iv["estimate"] - ci[0]], [ci[1] - iv["estimate"]]] if ci else None
            ax.errorbar([i], [iv["estimate"]], yerr=err, fmt="s", color="black", capsize=4,
                        label="geo. mean, 95% CI (paired)" if i == 0 else None)
            for pair, ratio, first in pair_ratios(comp["runs"], key):
                ax.plot(i + 0.15, ratio, "o", mfc="C0" if first else "white", mec="C0",
                        label=None)
            if not s.get("informative", True):
                ax.annotate("uninformative (<3 pairs)", (i, iv["estimate"]), fontsize=7, xytext=(5, 8),
                            textcoords="offset points")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_yscale("log")
        ax.set_xticks(range(len(comps)))
        ax.set_xticklabels([c["name"] for c in comps], rotation=30, ha="right", fontsize=8)
        what = "instructions per I/O" if icount else "IOPS"
        ax.set_ylabel(f"passthru / block {what} (log)")
        ax.set_title(f"{what}: paired ratio per comparison (dots: pairs, filled = passthru first){tag}", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        f = out_dir / ("instructions.png" if icount else "iops.png")
        fig.savefig(f, dpi=90)
        plt.close(fig)
        files.append(f)
    return files


def write_all(record: dict, out: Path) -> dict[str, Path | list[Path]]:
    out = Path(out)
    return {"json": write_json(record, out / "bench.json"), "markdown": write_markdown(record, out / "bench.md"),
            "plots": write_plots(record, out / "plots")}
