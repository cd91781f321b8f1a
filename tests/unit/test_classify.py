"""Console classification against recorded and realistic console logs.

Each file in data/console/ is syzkaller-style: optional ``TITLE:``/``TYPE:`` header
pairs (one pair per expected finding, in order), optional ``NOTE:`` lines (where the
log comes from: a real recording or hand-written; see data/console/README.md), a
blank line, then the raw log. A file without TITLE headers must yield no finding.
``VBLK_CI_UPDATE_GOLDEN=1`` rewrites the headers from what the classifier finds now
(review the diff!).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vblk_ci.console.classify import classify, function_name, normalise, strip_timestamp

DATA = Path(__file__).parent / "data" / "console"
UPDATE = os.environ.get("VBLK_CI_UPDATE_GOLDEN") == "1"


HEADERS = ("TITLE:", "TYPE:", "NOTE:")


def parse_all(raw: bytes) -> tuple[list[tuple[str, str]], list[str], str]:
    """(expected (title, type) pairs, NOTE lines, the raw log)."""
    text = raw.decode("utf-8", "replace")
    lines = text.split("\n")
    if not lines or not lines[0].startswith(HEADERS):
        return [], [], text
    titles: list[str] = []
    types: list[str] = []
    notes: list[str] = []
    i = 0
    while i < len(lines) and lines[i].strip():
        key, _, value = lines[i].partition(":")
        assert key + ":" in HEADERS, f"unknown header line {lines[i]!r}"
        {"TITLE": titles, "TYPE": types, "NOTE": notes}[key].append(value.strip())
        i += 1
    assert len(titles) == len(types), "every TITLE needs a TYPE"
    return list(zip(titles, types)), notes, "\n".join(lines[i + 1:])


def parse(raw: bytes) -> tuple[list[tuple[str, str]], str]:
    expected, _, log = parse_all(raw)
    return expected, log


def render(expected: list[tuple[str, str]], log: str, notes: list[str] = ()) -> bytes:
    if not expected and not notes:
        return log.encode()
    head = "".join(f"TITLE: {t}\nTYPE: {k}\n" for t, k in expected) + "".join(f"NOTE: {n}\n" for n in notes)
    return (head + "\n" + log).encode()


FILES = sorted(p for p in DATA.iterdir() if not p.name.startswith(".") and p.suffix != ".md")
REAL = [p for p in FILES if any(n.startswith("real:") for n in parse_all(p.read_bytes())[1])]


def test_corpus_is_there():
    assert len(FILES) >= 10
    assert any(not parse(p.read_bytes())[0] for p in FILES), "need at least one clean log"


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_golden(path: Path):
    expected, notes, log = parse_all(path.read_bytes())
    found = [(f.title, f.kind) for f in classify(log)]
    if UPDATE and found != expected:
        path.write_bytes(render(found, log, notes))
        pytest.skip(f"rewrote {path.name}")
    assert found == expected


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_golden_rewrite_keeps_the_log_byte_exact(path: Path):
    raw = path.read_bytes()
    expected, notes, log = parse_all(raw)
    assert render(expected, log, notes) == raw


@pytest.mark.parametrize("path", [p for p in FILES if parse(p.read_bytes())[0]], ids=lambda p: p.name)
def test_excerpt_starts_at_report_and_is_bounded(path: Path):
    _, log = parse(path.read_bytes())
    for finding in classify(log):
        lines = finding.excerpt.splitlines()
        assert 1 <= len(lines) <= 151
        assert strip_timestamp(lines[0]) == lines[0], "timestamps are stripped"


def test_warning_excerpt_runs_from_cut_here_to_end_trace():
    _, log = parse((DATA / "014-two-warnings-one-repeated").read_bytes())
    first = classify(log)[0]
    lines = first.excerpt.splitlines()
    assert lines[0] == "------------[ cut here ]------------"
    assert lines[-1].startswith("---[ end trace")
    assert len(lines) == 9


def test_kasan_excerpt_ends_at_closing_rule():
    _, log = parse((DATA / "002-kasan-uaf-end-io").read_bytes())
    (finding,) = classify(log)
    assert finding.excerpt.splitlines()[-1].startswith("=====")
    assert "Freed by task" in finding.excerpt


def test_excerpt_capped_without_end_marker():
    log = "WARNING: CPU: 0 PID: 1 at x.c:1 f+0x1/0x2\n" + "".join(f"line {i}\n" for i in range(200))
    (finding,) = classify(log)
    assert len(finding.excerpt.splitlines()) == 60


def test_panic_alone_is_a_finding():
    (finding,) = classify("[    2.1] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\n")
    assert finding.kind == "panic"
    assert finding.title == "kernel panic: VFS: Unable to mount root fs on unknown-block(NUM,NUM)"


def test_empty_and_partial_text():
    assert classify("") == []
    assert classify("\r\n\r\n") == []
    # The last line may lack its newline (a log cut short by the VM's death).
    assert [f.kind for f in classify("[    1.0] BUG: KASAN: use-after-free in f+0x1/0x2")] == ["kasan"]


def test_strip_timestamp():
    assert strip_timestamp("[    1.234567] hello\r\n") == "hello"
    assert strip_timestamp("[   25.100001][  T160] x") == "x"
    assert strip_timestamp("[ 1234.5] x") == "x"
    assert strip_timestamp("no stamp [1.0] here") == "no stamp [1.0] here"


def test_function_name_and_normalise():
    assert function_name("virtblk_done+0x1a/0x80") == "virtblk_done"
    assert function_name("virtblk_chr_uring_cmd.isra.0+0x4d/0x1f0") == "virtblk_chr_uring_cmd"
    assert function_name("virtblk_uring_cmd_io.cold+0x1a/0x3a") == "virtblk_uring_cmd_io"
    assert function_name("0x0") == "0x..."
    assert normalise("exitcode=0x00000100 pid 42 at ffff888004a1c0b8") == "exitcode=ADDR pid NUM at ADDR"


# Kinds with a real recording (tests/crash-module). UBSAN is off in both kernels and the
# hard-lockup detector is not built, so those have hand-written logs only.
RECORDED = {"panic", "bug", "null-deref", "gpf", "warning", "kasan", "kfence", "lockdep", "hung-task", "lockup",
            "rcu-stall"}


def _types(paths) -> set[str]:
    return {k for p in paths for _, k in parse(p.read_bytes())[0]}


def test_real_recordings_cover_the_recordable_kinds():
    assert len(REAL) >= 16
    assert RECORDED <= _types(REAL)
    for p in REAL:
        expected, notes, _ = parse_all(p.read_bytes())
        triggered = any("trigger:" in n for n in notes)
        assert bool(expected) == triggered, f"{p.name}: a trigger must give a finding, a clean run none"
    assert any(not parse(p.read_bytes())[0] for p in REAL), "need a real clean log"


def test_every_title_is_one_syzkaller_style_line():
    for p in FILES:
        for title, kind in parse(p.read_bytes())[0]:
            assert "\n" not in title and "0x" not in title and "+" not in title, (p.name, title)
            assert not title.endswith((" in ?", " in ")), (p.name, title)


def test_guessed_frames_count_when_no_frame_is_reliable():
    # A kernel without a frame-pointer/ORC unwinder marks every frame "? "; an address at
    # f+size/size is really the next function and says nothing.
    log = (
        "INFO: task kworker:5 blocked for more than 5 seconds.\n"
        "Call Trace:\n"
        " ? __schedule+0x436/0x470\n"
        " ? usleep_range_state+0x60/0x60\n"
        " ? my_helper+0x20/0x20 [m]\n"
        " ? my_waiter+0x10/0x20 [m]\n"
        " ? kthread+0xbd/0xd0\n"
    )
    assert [f.title for f in classify(log)] == ["INFO: task hung in my_waiter"]


def test_reliable_frames_win_over_guesses():
    log = (
        "INFO: task t:5 blocked for more than 5 seconds.\n"
        "Call Trace:\n"
        " ? noise_fn+0x1/0x20\n"
        " schedule+0x27/0x40\n"
        " real_waiter+0x10/0x20\n"
    )
    assert [f.title for f in classify(log)] == ["INFO: task hung in real_waiter"]


def test_rcu_stall_names_where_the_cpu_is_stuck():
    log = (
        "rcu: INFO: rcu_sched self-detected stall on CPU\n"
        "RIP: 0010:spin_here+0x29/0x30 [m]\n"
        "Call Trace:\n"
        " ? caller_fn+0x9/0x10 [m]\n"
    )
    assert [f.title for f in classify(log)] == ["INFO: rcu detected stall in spin_here"]
    no_rip = log.replace("RIP: 0010:spin_here+0x29/0x30 [m]\n", "")
    assert [f.title for f in classify(no_rip)] == ["INFO: rcu detected stall in caller_fn"]
