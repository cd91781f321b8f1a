"""vblk-ci bench: statistics on known inputs, job/preset validation, engine and fio argv,
kick counting from trace text, and the report writers on a recorded real bench
(tests/unit/data/bench/*.json, captured from `vblk-ci bench` runs under TCG)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from vblk_ci import cli
from vblk_ci.bench import kicks as K
from vblk_ci.bench import report as R
from vblk_ci.bench import stats as S
from vblk_ci.bench.job import BenchOptions, Comparison, Job, fair
from vblk_ci.bench.presets import preset, seed_preset
from vblk_ci.bench.summary import summarize
from vblk_ci.errors import UsageError

DATA = Path(__file__).parent / "data" / "bench"
RECORDINGS = sorted(DATA.glob("*.json"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- statistics ----------------------------------------------------------------------------


def test_median_odd_even():
    assert S.median([3, 1, 2]) == 2
    assert S.median([4, 1, 3, 2]) == 2.5
    with pytest.raises(ValueError):
        S.median([])


def test_t_quantiles():
    assert S.t975(1) == 12.706
    assert S.t975(4) == 2.776
    assert S.t975(35) == S.t975(30)  # between table entries: the next lower df (wider)
    assert S.t975(1000) == 1.960


def test_mean_ci_known_values():
    # mean 3, sd sqrt(2.5), se sqrt(0.5), t(4) = 2.776
    iv = S.mean_ci([1, 2, 3, 4, 5])
    assert iv.estimate == 3
    assert iv.low == pytest.approx(3 - 2.776 * math.sqrt(0.5))
    assert iv.high == pytest.approx(3 + 2.776 * math.sqrt(0.5))


def test_paired_ratio_known_values():
    iv = S.paired_ratio([110, 120, 130], [100, 100, 100])
    assert iv.estimate == pytest.approx(1.197216, rel=1e-6)  # geometric mean of 1.1, 1.2, 1.3
    assert iv.low == pytest.approx(0.972806, rel=1e-5)
    assert iv.high == pytest.approx(1.473394, rel=1e-5)
    assert iv.n == 3


def test_paired_ratio_constant_ratio_has_zero_width():
    iv = S.paired_ratio([2, 4, 8], [1, 2, 4])
    assert (iv.estimate, iv.low, iv.high) == pytest.approx((2, 2, 2))


def test_paired_ratio_one_pair_has_no_interval():
    iv = S.paired_ratio([5], [4])
    assert iv.estimate == pytest.approx(1.25) and iv.low is None and iv.to_json()["ci95"] is None


def test_paired_ratio_refuses_bad_input():
    with pytest.raises(ValueError):
        S.paired_ratio([1, 2], [1])
    with pytest.raises(ValueError):
        S.paired_ratio([0], [1])


def test_histogram_merge_quantile_cdf():
    h = S.merge_hists([[[8, 2], [16, 1]], [[16, 3], [32, 4]]])
    assert h == [[8, 2], [16, 4], [32, 4]]
    assert S.hist_quantile(h, 0.5) == 16  # 5th of 10
    assert S.hist_quantile(h, 0.2) == 8
    assert S.hist_quantile(h, 0.999) == 32
    xs, ys = S.hist_cdf(h)
    assert xs == [8, 16, 32] and ys == pytest.approx([0.2, 0.6, 1.0])


# -- jobs, presets, options ----------------------------------------------------------------


def test_engine_args_exact():
    job = Job(qd=8, batch_submit=4, batch_complete=4, runtime_s=2.5, fixed=True)
    assert job.engine_args("/dev/vdac0") == [
        "--path", "/dev/vdac0", "--op", "randread", "--bench", "--bs", "4096", "--qd", "8",
        "--length", str(64 << 20), "--seed", "1", "--batch-submit", "4", "--batch-complete", "4",
        "--runtime", "2.5", "--fixed"]
    seq = Job(pattern="sequential", rwmix_read=30, runtime_s=None, ios=1000, buffered=True)
    assert seq.engine_args("/dev/vda")[3] == "write"
    assert seq.engine_args("/dev/vda")[-5:] == ["--rwmix-read", "30", "--ios", "1000", "--buffered"]


def test_fio_args_same_job():
    job = Job(qd=8, batch_submit=4, batch_complete=4, runtime_s=2.0)
    argv = job.fio_args("/dev/vda")
    for want in ("--ioengine=io_uring", "--rw=randread", "--bs=4096", "--iodepth=8", "--direct=1",
                 "--iodepth_batch_submit=4", "--iodepth_batch_complete_min=4",
                 "--iodepth_batch_complete_max=4", "--runtime=2", "--time_based", "--output-format=json"):
        assert want in argv
    assert "--direct=0" in replace(job, buffered=True).fio_args("/dev/vda")
    assert "--hipri" in replace(job, iopoll=True).fio_args("/dev/vda")


@pytest.mark.parametrize("job, field", [
    (Job(qd=0), "qd"),
    (Job(qd=4, batch_submit=8), "batch_submit"),
    (Job(batch_complete=2), "batch_complete"),
    (Job(bs=1000), "bs"),
    (Job(rwmix_read=101), "rwmix_read"),
    (Job(pattern="zigzag"), "pattern"),
    (Job(runtime_s=None, ios=None), "runtime_s"),
    (Job(runtime_s=1.0, ios=10), "runtime_s"),
    (Job(length=6000), "length"),
    (Job(buffered=True, fixed=True), "buffered"),
])
def test_job_validation_names_the_field(job, field):
    with pytest.raises(UsageError, match=f"job: {field}:"):
        job.validate()


def test_seed_preset_shape():
    comps = seed_preset(runtime_s=2.0)
    assert len(comps) == 8
    assert {c.backend for c in comps} == {"null", "file"}
    for c in comps:
        c.validate()
        assert c.passthru.runtime_s == 2.0
        if c.style == "seed":
            assert not c.fair
            assert c.passthru.rwmix_read == 0 and not c.passthru.buffered  # passthrough writes
            assert c.block.rwmix_read == 100 and c.block.buffered  # buffered reads (-O0)
        else:
            assert c.fair and c.passthru == c.block and not c.block.buffered
    qd8 = [c for c in comps if c.name.startswith("qd8b4")]
    assert all((c.passthru.qd, c.passthru.batch_submit, c.passthru.batch_complete) == (8, 4, 4) for c in qd8)


def test_unknown_preset():
    with pytest.raises(UsageError, match="unknown preset 'nope'"):
        preset("nope")


def test_options_validation():
    comp = fair("a", Job())
    with pytest.raises(UsageError, match="--pairs"):
        BenchOptions(comparisons=(comp,), pairs=0).validate()
    with pytest.raises(UsageError, match="repeat"):
        BenchOptions(comparisons=(comp, comp)).validate()
    with pytest.raises(UsageError, match="exceeds the disk"):
        BenchOptions(comparisons=(fair("b", Job(length=128 << 20)),)).validate()
    with pytest.raises(UsageError, match="no page cache"):
        Comparison("c", Job(buffered=True), Job()).validate()


@pytest.mark.parametrize("argv, message", [
    (["bench", "--qd", "4", "--batch-submit", "8"], "batch_submit: must be 1..qd (4)"),
    (["bench", "--rwmix-read", "150"], "rwmix_read: must be 0..100"),
    (["bench", "--preset", "nope"], "unknown preset 'nope'"),
    (["bench", "--preset", "seed", "--ios", "10"], "--ios does not go with --preset"),
    (["bench", "--runtime", "0"], "must be in (0, 3600] seconds"),
    (["bench", "--pairs", "0"], "must be at least 1"),
])
def test_cli_bad_job_options_are_one_line_exit_2(argv, message, capsys, tmp_path):
    rc = cli.main([*argv, "--kernel", str(tmp_path / "none"), "--initramfs", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and message in err


def test_cli_missing_kernel_is_exit_2(capsys, tmp_path):
    rc = cli.main(["bench", "--kernel", str(tmp_path / "nokernel"), "--initramfs", str(tmp_path / "x")])
    assert rc == 2 and "kernel image not found" in capsys.readouterr().err


# -- kicks ------------------------------------------------------------------------------------


TRACE = """\
virtio_queue_notify vdev 0x5600aa n 0 vq 0x1
virtio_blk_req_complete vdev 0x5600aa req 0x9 status 0
virtio_blk_req_complete vdev 0x5600aa req 0xa status 0
virtio_notify_irqfd vdev 0x5600aa vq 0x1
1234@1700000000.000001:virtio_queue_notify vdev 0x5600aa n 1 vq 0x2
virtio_blk_req_complete vdev 0x5600aa req 0xb status 0
virtio_blk_req_complete vdev 0x5600aa req 0xc status 0
virtio_notify vdev 0x5600aa vq 0x2
virtio_queue_notify vdev 0x5600bb n 2 vq 0x3
virtio_notify vdev 0x5600bb vq 0x3
"""


def test_kick_counts_pick_the_block_device():
    c = K.count(TRACE)
    assert (c.kicks, c.completions, c.interrupts, c.vdev) == (2, 4, 2, "0x5600aa")
    assert c.reqs_per_kick == 2.0 and c.reqs_per_interrupt == 2.0


def test_kick_counts_empty():
    c = K.count("virtio_queue_notify vdev 0x1 n 0 vq 0x2\n")
    assert c.vdev is None and c.reqs_per_kick is None


def test_trace_tail_reads_only_new_lines(tmp_path):
    log = tmp_path / "trace.log"
    log.write_text("old\n")
    tail = K.TraceTail(log)
    with open(log, "a") as f:
        f.write("new\n")
    assert tail.take() == "new\n" and tail.take() == ""


# -- report writers on recorded real runs -------------------------------------------------------


@pytest.fixture(params=RECORDINGS, ids=lambda p: p.stem)
def recorded(request) -> dict:
    return json.loads(request.param.read_text())


def test_recordings_exist():
    assert RECORDINGS, f"no recorded bench JSON in {DATA}"


def test_summary_is_reproducible_from_raw_runs(recorded):
    again = summarize({k: v for k, v in recorded.items() if k != "method"})
    for old, new in zip(recorded["comparisons"], again["comparisons"]):
        new_ratio, old_ratio = new["summary"]["iops_ratio"], old["summary"]["iops_ratio"]
        assert new_ratio["estimate"] == pytest.approx(old_ratio["estimate"])
        assert new_ratio["ci95"] == (pytest.approx(old_ratio["ci95"]) if old_ratio["ci95"] else None)
        for path in ("passthru", "block"):
            assert new["summary"]["paths"][path]["iops_median"] == old["summary"]["paths"][path]["iops_median"]


def test_recorded_run_is_consistent(recorded):
    assert recorded["accel"] and recorded["relative_only"] == (recorded["accel"] == "tcg")
    for comp in recorded["comparisons"]:
        s = comp["summary"]
        assert {r["path"] for r in comp["runs"]} == {"passthru", "block"}
        assert len(comp["runs"]) == 2 * recorded["pairs"]
        for path in ("passthru", "block"):
            p = s["paths"][path]
            assert p["iops_median"] > 0 and p["clat"]["p50"] <= p["clat"]["p99"] <= p["clat"]["p999"]
            if recorded["kicks_counted"]:
                assert p["kicks"]["kicks"] > 0 and p["kicks"]["reqs_per_kick"] >= 1.0
        ratio = s["iops_ratio"]
        if recorded["pairs"] >= 2:
            lo, hi = ratio["ci95"]
            assert lo <= ratio["estimate"] <= hi


def test_markdown_table(recorded, tmp_path):
    summary = tmp_path / "step-summary.md"
    path = R.write_markdown(recorded, tmp_path / "bench.md", env={R.STEP_SUMMARY_ENV: str(summary)})
    text = path.read_text()
    assert f"**Accelerator: `{recorded['accel']}`**" in text
    if recorded["relative_only"]:
        assert "relative figures only" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 2 * len(recorded["comparisons"])
    for comp in recorded["comparisons"]:
        assert any(f"| {comp['name']} |" in r and "| passthru |" in r for r in rows)
        assert any(f"| {comp['name']} |" in r and "| block |" in r for r in rows)
    assert summary.read_text() == text  # the GitHub step summary gets the same table


def test_json_round_trip(recorded, tmp_path):
    path = R.write_json(recorded, tmp_path / "bench.json")
    assert json.loads(path.read_text()) == recorded


def test_plots_are_pngs(recorded, tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is a runtime dependency of the bench plots")
    files = R.write_plots(recorded, tmp_path / "plots")
    assert len(files) == len(recorded["comparisons"]) + 1
    for f in files:
        assert f.read_bytes()[:8] == PNG_MAGIC and f.stat().st_size > 1000


# -- machine/disk additions the bench uses ----------------------------------------------------


def test_icount_and_trace_log_argv():
    from vblk_ci.machine import argv as A

    assert A.icount_args(None, "tcg") == []
    assert A.icount_args(0, "tcg") == ["-icount", "shift=0,sleep=off"]
    with pytest.raises(ValueError):
        A.icount_args(0, "kvm")
    assert A.trace_log_args(None) == []
    assert A.trace_log_args(Path("/o/trace.log")) == ["-D", "/o/trace.log"]
    spec = A.MachineSpec(qemu="q", kernel=Path("/k"), icount_shift=0, trace_log=Path("/o/t.log"))
    argv = A.build_argv(spec, A.MachinePaths.make(Path("/s"), Path("/r")), A.QemuCaps(version=(7, 2, 0)))
    assert argv[-4:] == ["-icount", "shift=0,sleep=off", "-D", "/o/t.log"]


def test_file_disk_aio():
    from vblk_ci.disks.spec import DiskSpec
    from vblk_ci.machine import argv as A

    disk = DiskSpec(id="f", serial="f", backend="file", path=Path("/x.img"), aio="io_uring").validate()
    assert A.blockdev_add_args(disk)["file"]["aio"] == "io_uring"
    assert "aio" not in A.blockdev_add_args(replace(disk, aio="threads"))["file"]  # QEMU's default
    with pytest.raises(UsageError, match="aio"):
        DiskSpec(id="n", serial="n", aio="io_uring").validate()
    with pytest.raises(UsageError, match="aio"):
        replace(disk, aio="posix").validate()


def test_fio_verdicts_in_the_table():
    """The recorded fio run has one comparison within 10% of the engine and one outside."""
    rec = json.loads((DATA / "seed-fio-tcg-subset.json").read_text())
    verdicts = {c["name"]: c["summary"]["fio"]["agree"] for c in rec["comparisons"]}
    assert verdicts == {"qd1-seed-null": True, "qd8b4-fair-null": False}
    text = R.to_markdown(rec)
    assert "agrees)" in text and "**DISAGREES**" in text
    fair_fio = [c for c in rec["comparisons"] if c["name"] == "qd8b4-fair-null"][0]["fio"][0]
    assert "--ioengine=io_uring" in fair_fio["argv"] and "--direct=1" in fair_fio["argv"]


def test_pair_order_is_abba_and_balanced_for_even_counts():
    from vblk_ci.bench.runner import pair_order

    firsts = [pair_order(i)[0] for i in range(8)]
    assert firsts == ["passthru", "block", "block", "passthru"] * 2
    for pairs in (2, 4, 6):
        assert [pair_order(i)[0] for i in range(pairs)].count("passthru") == pairs // 2


def test_path_geomeans_divide_to_the_paired_ratio(recorded):
    # The table prints per-path geometric means beside the ratio: they must agree, which the
    # medians did not (11,268 / 8,914 beside a ratio of 1.000 in one recorded run).
    again = summarize({k: v for k, v in recorded.items() if k != "method"})
    for comp in again["comparisons"]:
        s = comp["summary"]
        quotient = s["paths"]["passthru"]["iops_geomean"]["estimate"] / s["paths"]["block"]["iops_geomean"]["estimate"]
        assert quotient == pytest.approx(s["iops_ratio"]["estimate"], rel=1e-9)
        assert s["informative"] == (s["pairs"] >= 3)
        order = s["order_effect"]
        assert order["passthru_first"]["pairs"] + order["block_first"]["pairs"] == s["pairs"]


def test_fewer_than_three_pairs_is_marked_uninformative(tmp_path):
    two = json.loads((DATA / "quick-tcg-2pairs.json").read_text())
    text = R.to_markdown(summarize({k: v for k, v in two.items() if k != "method"}))
    assert "*uninformative: 2 pairs*" in text and "IOPS (geo. mean)" in text
    three = json.loads((DATA / "seed-icount-tcg-3pairs.json").read_text())
    assert "*uninformative" not in R.to_markdown(summarize({k: v for k, v in three.items() if k != "method"}))
