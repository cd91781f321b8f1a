"""Frames from recorded console reports, faddr2line's recorded answers, GitHub annotation lines."""

from __future__ import annotations

from pathlib import Path

from vblk_ci.console.classify import classify
from vblk_ci.console.decode import Decoder, Frame, frames, parse_faddr2line
from vblk_ci.report.annotations import annotations, error_line, pick_frame
from vblk_ci.result import CheckResult, FindingRecord, RunResult, ScenarioResult

DATA = Path(__file__).parent / "data"


def _log(name: str) -> str:
    """The captured log of a golden file (after its TITLE/TYPE/NOTE header and blank line)."""
    text = (DATA / "console" / name).read_text(encoding="utf-8", errors="replace")
    return text.split("\n\n", 1)[1]


def test_frames_of_a_real_null_deref_skip_the_unwinders_guesses():
    finding = classify(_log("103-real-null-deref-default"))[0]
    got = frames(finding.excerpt)
    # The default kernel's trace is all "? " guesses: only the RIP is reliable.
    assert got == [Frame("crashtest_null_deref", "0x12", "0x20", "vblk_crashtest")]


def test_frames_of_a_real_kasan_report_keep_order_and_modules():
    finding = classify(_log("108-real-kasan-uaf-debug"))[0]
    got = frames(finding.excerpt)
    assert got[0].symbol.startswith("dump_stack_lvl+") and got[0].module is None
    assert any(f.module == "vblk_crashtest" for f in got)
    assert len({(f.symbol, f.module) for f in got}) == len(got)


def test_parse_recorded_faddr2line_answers():
    assert parse_faddr2line((DATA / "faddr2line" / "plain.txt").read_text()) == ("/tmp/f2l/t.c", 11)
    # Inlined code: the innermost source line comes first.
    assert parse_faddr2line((DATA / "faddr2line" / "inlined.txt").read_text()) == ("/tmp/f2l/u.c", 4)
    assert parse_faddr2line((DATA / "faddr2line" / "size-mismatch.txt").read_text()) is None
    assert parse_faddr2line("virtblk_poll+0x1a/0x80:\nvirtblk_poll at ??:0\n") is None


def test_decoder_runs_the_script_per_frame_and_keeps_undecodable_frames(tmp_path):
    script = tmp_path / "faddr2line"
    answer = (DATA / "faddr2line" / "inlined.txt").read_text()
    script.write_text(f"#!/bin/sh\necho \"$1\" >> {tmp_path}/objs\ncat <<'END'\n{answer}END\n")
    script.chmod(0o755)
    vmlinux = tmp_path / "vmlinux"
    vmlinux.write_bytes(b"\x7fELF")
    mods = tmp_path / "modules"
    (mods / "kernel").mkdir(parents=True)
    (mods / "kernel" / "vblk_crashtest.ko").write_bytes(b"\x7fELF")
    dec = Decoder(script, vmlinux, mods)
    a = dec.decode(Frame("crash", "0x6", "0x15", "vblk_crashtest"))
    b = dec.decode(Frame("crash", "0x6", "0x15"))
    c = Decoder(script, vmlinux, None).decode(Frame("x", "0x1", "0x2", "other_mod"))
    assert (a.file, a.line) == ("/tmp/f2l/u.c", 4) and (b.file, b.line) == ("/tmp/f2l/u.c", 4)
    assert c.file is None
    assert (tmp_path / "objs").read_text().split() == [str(mods / "kernel" / "vblk_crashtest.ko"), str(vmlinux)]


def test_error_line_escapes_per_the_workflow_command_format():
    assert error_line("a%b\nc", "t: x, y", "f.c", 3) == "::error file=f.c,line=3,title=t%3A x%2C y::a%25b%0Ac"
    assert error_line("m", "t") == "::error title=t::m"


def test_annotations_point_checks_at_scenarios_and_findings_at_the_driver():
    result = RunResult(status="fail", suite="review", run_dir="/r")
    result.scenarios.append(ScenarioResult("driver-bounds", checks=[
        CheckResult("driver-bounds", "hotplug", "pass", source="host/vblk_ci/scenarios/driver_bounds.py:60"),
        CheckResult("driver-bounds", "read-sector-wraps", "fail", "cqe->res = 1, expected -34\nmore",
                    source="host/vblk_ci/scenarios/driver_bounds.py:72"),
    ]))
    result.findings.append(FindingRecord("kasan", "KASAN: slab-use-after-free in virtblk_poll", "BUG: KASAN ..."))
    decoded = {"KASAN: slab-use-after-free in virtblk_poll": [
        Frame("kasan_report", "0x1", "0x2", None, "mm/kasan/report.c", 10),
        Frame("virtblk_poll", "0x1a", "0x80", None, "drivers/block/virtio_blk.c", 1234),
    ]}
    lines = annotations(result, decoded)
    assert lines == [
        "::error file=host/vblk_ci/scenarios/driver_bounds.py,line=72,title=driver-bounds/read-sector-wraps (fail)"
        "::cqe->res = 1, expected -34",
        "::error file=drivers/block/virtio_blk.c,line=1234,title=console%3A KASAN%3A slab-use-after-free in "
        "virtblk_poll::virtblk_poll+0x1a/0x80 at drivers/block/virtio_blk.c:1234%0ABUG: KASAN ...",
    ]
    assert pick_frame([Frame("f", "0x1", "0x2")]) is None


def test_a_real_module_crash_decodes_to_its_source_line(tmp_path):
    """Recorded: the crash module's NULL read on a --tree 7.3 kernel, and faddr2line's answer."""
    text = (DATA / "faddr2line" / "null-deref-7.3-tree.console").read_text(errors="replace")
    finding = classify(text)[0]
    assert finding.title == "BUG: kernel NULL pointer dereference in crashtest_null_deref"
    assert frames(finding.excerpt)[0] == Frame("crashtest_null_deref", "0x12", "0x19", "vblk_crashtest")
    script = tmp_path / "faddr2line"
    script.write_text("#!/bin/sh\ncat " + str(DATA / "faddr2line" / "crashtest-null-deref.txt") + "\n")
    script.chmod(0o755)
    (tmp_path / "vmlinux").write_bytes(b"\x7fELF")
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "vblk_crashtest.ko").write_bytes(b"\x7fELF")
    dec = Decoder(script, tmp_path / "vmlinux", tmp_path / "modules", source_root="/tmp/crashmod")
    top = dec.decode_all(finding.excerpt)[0]
    assert (top.file, top.line) == ("vblk_crashtest.c", 54)
