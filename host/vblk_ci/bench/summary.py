"""Fold a bench record's raw runs into per-path figures, ratios and the fio check.

Pure: takes the record ``run_bench`` collected (or one loaded from bench.json) and
returns it with ``summary`` filled in for every comparison, so report writers and
unit tests work from recorded data alone.
"""

from __future__ import annotations

import math

from . import stats as S
from .job import PATHS

METHOD = ("per path the geometric mean over pairs (their quotient is the ratio); ratio = geometric mean "
          "of per-pair passthru/block ratios, 95% CI = Student-t interval on the paired log-ratios, "
          "exponentiated; path order ABBA over pairs (AB, BA, BA, AB, ...); fewer than 3 pairs is uninformative")
MIN_PAIRS = 3  # t975(1) = 12.7: two pairs give an interval that says nothing
FIO_TOLERANCE = 0.10
PCTS = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p999", 0.999))


def _median_or_none(values: list[float]) -> float | None:
    return S.median(values) if values else None


def _path_summary(runs: list[dict]) -> dict:
    benches = [r["engine"]["bench"] for r in runs]
    iops = [b["iops"] for b in benches]
    cpu = [b["cpu_ns_per_io"] for b in benches]
    vns = [b["elapsed_ns"] / b["ios"] for b in benches if b["ios"]]
    out: dict = {
        "runs": len(runs),
        "iops": iops,
        "iops_geomean": S.geomean(iops).to_json(),
        "iops_median": S.median(iops),
        "iops_mean_ci95": S.mean_ci(iops).to_json(),
        "iops_cv": S.cv(iops),
        "bw_bytes_s_median": S.median([b["bw_bytes_s"] for b in benches]),
        "syscalls_per_io_median": S.median([b["syscalls_per_io"] for b in benches]),
        "cpu_ns_per_io": cpu,
        "cpu_ns_per_io_geomean": S.geomean(cpu).estimate,
        "cpu_ns_per_io_median": S.median(cpu),
        "cpu_ns_per_io_cv": S.cv(cpu),
        "elapsed_ns_per_io_median": _median_or_none(vns),
        "ios_total": sum(b["ios"] for b in benches),
    }
    for name in ("slat", "clat"):
        hist = S.merge_hists([b[name]["hist"] for b in benches])
        out[name] = {"hist": hist, **{k: S.hist_quantile(hist, p) for k, p in PCTS}}
    counted = [r["kicks"] for r in runs if r.get("kicks") and r["kicks"].get("kicks")]
    if counted:
        kicks = sum(k["kicks"] for k in counted)
        done = sum(k["completions"] for k in counted)
        irqs = sum(k["interrupts"] for k in counted)
        out["kicks"] = {
            "kicks": kicks, "completions": done, "interrupts": irqs,
            "reqs_per_kick": done / kicks if kicks else None,
            "reqs_per_interrupt": done / irqs if irqs else None,
            "reqs_per_kick_median": S.median([k["reqs_per_kick"] for k in counted]),
            # warm-up runs are not traced, so completions should match the engine's I/Os
            "completions_vs_engine_ios": done / out["ios_total"] if out["ios_total"] else None,
        }
    else:
        out["kicks"] = None
    return out


def _fio_summary(comp: dict, block: dict) -> dict | None:
    good = [r["iops"] for r in comp.get("fio") or [] if "iops" in r]
    errors = [r["error"] for r in comp.get("fio") or [] if "error" in r]
    if not good:
        return {"iops_median": None, "agree": None,
                "reason": comp.get("fio_skipped") or (errors[0].splitlines()[0] if errors else "no fio run")}
    fio = S.median(good)
    diff = block["iops_median"] / fio - 1.0
    return {"iops_median": fio, "iops": good, "engine_block_iops_median": block["iops_median"],
            "engine_vs_fio": diff, "agree": abs(diff) <= FIO_TOLERANCE, "tolerance": FIO_TOLERANCE,
            "errors": errors}


def summarize_comparison(comp: dict) -> dict:
    by_path = {p: [r for r in comp["runs"] if r["path"] == p] for p in PATHS}
    paths = {p: _path_summary(runs) for p, runs in by_path.items()}
    pairs = sorted({r["pair"] for r in comp["runs"]})

    def paired(key: str) -> dict:
        a, b = [], []
        for i in pairs:
            ra = [r for r in by_path["passthru"] if r["pair"] == i]
            rb = [r for r in by_path["block"] if r["pair"] == i]
            if ra and rb:
                a.append(ra[0]["engine"]["bench"][key])
                b.append(rb[0]["engine"]["bench"][key])
        return S.paired_ratio(a, b).to_json()

    return {**comp, "summary": {
        "paths": paths,
        "pairs": len(pairs),
        "informative": len(pairs) >= MIN_PAIRS,
        "iops_ratio": paired("iops"),
        "cpu_ns_per_io_ratio": paired("cpu_ns_per_io"),
        "order_effect": order_effect(comp["runs"]),
        "fio": _fio_summary(comp, paths["block"]),
    }}


def pair_ratios(runs: list[dict], key: str = "iops") -> list[tuple[int, float, bool]]:
    """(pair, passthru/block of ``key``, passthru ran first) for every complete pair, in order."""
    by_pair: dict[int, dict[str, dict]] = {}
    for r in runs:
        by_pair.setdefault(r["pair"], {})[r["path"]] = r
    out = []
    for pair, both in sorted(by_pair.items()):
        if set(both) == set(PATHS):
            a, b = both["passthru"]["engine"]["bench"][key], both["block"]["engine"]["bench"][key]
            if a > 0 and b > 0:
                out.append((pair, a / b, both["passthru"]["position"] == 0))
    return out


def order_effect(runs: list[dict]) -> dict:
    """Mean ln(passthru/block IOPS) over the pairs where passthru ran first, and over those where
    block ran first: a gap between them is an order effect the ABBA order is there to cancel."""
    first: dict[str, list[float]] = {"passthru_first": [], "block_first": []}
    for _pair, ratio, passthru_first in pair_ratios(runs):
        first["passthru_first" if passthru_first else "block_first"].append(math.log(ratio))
    return {k: {"pairs": len(v), "mean_log_ratio": sum(v) / len(v) if v else None} for k, v in first.items()}


def summarize(record: dict) -> dict:
    return {**record, "method": METHOD,
            "comparisons": [summarize_comparison(c) for c in record.get("comparisons", [])]}
