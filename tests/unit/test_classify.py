"""Console classification against recorded and realistic console logs.

Each file in data/console/ is syzkaller-style: optional ``TITLE:``/``TYPE:`` header
pairs (one pair per expected finding, in order), a blank line, then the raw log.
A file without headers must yield no finding. ``VBLK_CI_UPDATE_GOLDEN=1`` rewrites
the headers from what the classifier finds now (review the diff!).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vblk_ci.console.classify import classify, function_name, normalise, strip_timestamp

DATA = Path(__file__).parent / "data" / "console"
UPDATE = os.environ.get("VBLK_CI_UPDATE_GOLDEN") == "1"


def parse(raw: bytes) -> tuple[list[tuple[str, str]], str]:
    text = raw.decode("utf-8", "replace")
    lines = text.split("\n")
    if not lines or not lines[0].startswith(("TITLE:", "TYPE:")):
        return [], text
    titles: list[str] = []
    types: list[str] = []
    i = 0
    while i < len(lines) and lines[i].strip():
        key, _, value = lines[i].partition(":")
        (titles if key == "TITLE" else types).append(value.strip())
        i += 1
    assert len(titles) == len(types), "every TITLE needs a TYPE"
    return list(zip(titles, types)), "\n".join(lines[i + 1:])


def render(expected: list[tuple[str, str]], log: str) -> bytes:
    if not expected:
        return log.encode()
    head = "".join(f"TITLE: {t}\nTYPE: {k}\n" for t, k in expected)
    return (head + "\n" + log).encode()


FILES = sorted(p for p in DATA.iterdir() if not p.name.startswith("."))


def test_corpus_is_there():
    assert len(FILES) >= 10
    assert any(not parse(p.read_bytes())[0] for p in FILES), "need at least one clean log"


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_golden(path: Path):
    expected, log = parse(path.read_bytes())
    found = [(f.title, f.kind) for f in classify(log)]
    if UPDATE and found != expected:
        path.write_bytes(render(found, log))
        pytest.skip(f"rewrote {path.name}")
    assert found == expected


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_golden_rewrite_keeps_the_log_byte_exact(path: Path):
    raw = path.read_bytes()
    assert render(*parse(raw)) == raw


@pytest.mark.parametrize("path", [p for p in FILES if parse(p.read_bytes())[0]], ids=lambda p: p.name)
def test_excerpt_starts_at_report_and_is_bounded(path: Path):
    _, log = parse(path.read_bytes())
    for finding in classify(log):
        lines = finding.excerpt.splitlines()
        assert 1 <= len(lines) <= 151
        assert not lines[0].startswith("["), "timestamps are stripped"


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
    assert finding.title == "Kernel panic: VFS: Unable to mount root fs on unknown-block(NUM,NUM)"


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
