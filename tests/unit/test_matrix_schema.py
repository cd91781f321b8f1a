"""The TOML matrix loader (good and bad files), -k selection, and the CLI's handling
of bad matrix files (one line, exit 2, before anything boots)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vblk_ci import cli
from vblk_ci.errors import UsageError
from vblk_ci.matrix.schema import load_matrix, parse_matrix
from vblk_ci.matrix.select import matches

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "ci" / "matrix-default.toml"

GOOD = """
[matrix]
name = "t"
vcpus = 2

[defaults]
backend = "null"
num_queues = 2

[workload.qd1]
qd = 1
runtime_s = 0.5

[workload.qd4]
qd = 4
paths = ["passthru"]

[disk.a]
guest_poll_queues = 1

[disk.b]
backend = "file"
aio = "io_uring"
cache = "none"
logical_block_size = 4096
iothread = "per-disk"
poll_max_ns = 0
inject_errors = [{event = "read_aio", sector = 8, once = true}]

[disk.c]
vcpus = 4
num_queues = 4

[group.ab]
disks = ["a", "d"]

[disk.d]
guest_poll_queues = 1
serial = "dee"
"""


def parse(text: str, tmp_path: Path):
    return parse_matrix(text, tmp_path / "m.toml", tmp_path / "images")


def test_good_file_crosses_disks_and_groups_with_workloads(tmp_path):
    m = parse(GOOD, tmp_path)
    assert m.name == "t" and m.vcpus == 2
    assert [c.name for c in m.combinations] == [
        "a/qd1", "a/qd4", "b/qd1", "b/qd4", "c/qd1", "c/qd4", "d/qd1", "d/qd4", "ab/qd1", "ab/qd4"]
    by = {c.name: c for c in m.combinations}
    b = by["b/qd1"].disks[0]
    assert (b.backend, b.aio, b.cache, b.logical_block_size, b.num_queues) == ("file", "io_uring", "none", 4096, 2)
    assert b.path == tmp_path / "images" / "b.raw" and b.iothread_id == "iot-b" and b.poll_max_ns == 0
    assert b.inject_errors[0].sector == 8 and b.inject_errors[0].once is True
    assert by["c/qd1"].vcpus == 4 and by["a/qd1"].vcpus == 2
    assert [d.id for d in by["ab/qd4"].disks] == ["a", "d"] and by["ab/qd4"].group
    assert by["ab/qd4"].workload.paths == ("passthru",) and by["a/qd1"].workload.runtime_s == 0.5
    assert by["d/qd1"].disks[0].serial == "dee" and by["a/qd1"].disks[0].serial == "a"


def test_default_matrix_covers_what_ci_promises(tmp_path):
    m = load_matrix(DEFAULT, tmp_path)
    assert "matrix" in DEFAULT.name and len(m.combinations) >= 12
    disks = [d for c in m.combinations for d in c.disks]
    assert {d.num_queues for d in disks} >= {1, 2, 4}
    assert {d.guest_poll_queues for d in disks} >= {0, 1}
    assert {d.iothread for d in disks} >= {"none", "shared", "per-disk"}
    assert {d.aio for d in disks} >= {"threads", "io_uring"}
    assert {d.logical_block_size for d in disks} >= {512, 4096}
    assert max(len(c.disks) for c in m.combinations) >= 4


@pytest.mark.parametrize("text, where", [
    ("[matrix]\nname='x'\nbogus=1\n", r"\[matrix\] bogus: unknown key"),
    ("[matrix]\n", r"\[matrix\] name: is required"),
    ("[matrix]\nname='x'\n[extra]\n", r"\[extra\]: unknown table"),
    ("[matrix]\nname='x'\nvcpus=0\n", r"\[matrix\] vcpus: must be a positive integer"),
    ("[matrix]\nname='x'\n[disk.a]\n", r"\[workload\]: at least one"),
    ("[matrix]\nname='x'\n[workload.w]\n", r"\[disk\]: at least one"),
    ("[matrix]\nname='x'\n[workload.w]\nqd='1'\n[disk.a]\n", r"\[workload.w\] qd: must be an integer, not str"),
    ("[matrix]\nname='x'\n[workload.w]\nbs=1000\n[disk.a]\n", r"\[workload.w\] bs: must be a multiple of 512"),
    ("[matrix]\nname='x'\n[workload.w]\npaths=['nvme']\n[disk.a]\n", r"\[workload.w\] paths: "),
    ("[matrix]\nname='x'\n[workload.w]\n[disk.a]\nnum_queues=true\n", r"\[disk.a\] num_queues: must be an integer, not bool"),
    ("[matrix]\nname='x'\n[workload.w]\n[disk.a]\nqueues=2\n", r"\[disk.a\] queues: unknown key"),
    ("[matrix]\nname='x'\n[workload.w]\n[disk.a]\naio='io_uring'\n", r"\[disk.a\]: disk 'a': aio: is only valid with the file"),
    ("[matrix]\nname='x'\n[workload.w]\n[disk.a]\nguest_num_request_queues=3\n", r"\[disk.a\] guest_num_request_queues: 3 is more than the 2 vCPUs"),
    ("[matrix]\nname='x'\n[defaults]\nserial='s'\n[workload.w]\n[disk.a]\n", r"\[defaults\] serial: must be set per disk"),
    ("[matrix]\nname='x'\n[workload.w]\n[disk.a]\n[disk.b]\nserial='a'\n", r"\[disk.b\] serial: 'a' is also"),
    ("[matrix]\nname='x'\n[workload.w]\n[disk.a]\ninject_errors=[{event='read_aio', bad=1}]\n",
     r"\[disk.a.inject_errors\[0\]\] bad: unknown key"),
    ("[matrix]\nname='x'\n[workload.w]\n[disk.a]\n[group.g]\ndisks=['a']\n", r"\[group.g\] disks: must list 2"),
    ("[matrix]\nname='x'\n[workload.w]\n[disk.a]\n[group.g]\ndisks=['a','z']\n", r"\[group.g\] disks: no \[disk.z\]"),
    ("[matrix]\nname='x'\n[workload.w]\n[disk.a]\n[disk.b]\nguest_poll_queues=1\n[group.g]\ndisks=['a','b']\n",
     r"\[group.g\] disks: disks plugged together must share one guest_poll_queues"),
    ("[matrix]\nname='x'\n[workload.w]\n[disk.a]\n[disk.b]\nvcpus=4\n[group.g]\ndisks=['a','b']\n",
     r"\[group.g\] disks: disks plugged together must share one vcpus"),
    ("[matrix\nname='x'\n", r"not valid TOML"),
])
def test_bad_files_name_file_table_and_key(tmp_path, text, where):
    with pytest.raises(UsageError, match=r"m\.toml: " + where if "TOML" not in where else where):
        parse(text, tmp_path)


def test_unreadable_file(tmp_path):
    with pytest.raises(UsageError, match="cannot read matrix file"):
        load_matrix(tmp_path / "none.toml", tmp_path)


@pytest.mark.parametrize("expr, name, want", [
    ("q4", "q4-capped/qd1", True),
    ("q4", "q1/qd1", False),
    ("Q4", "q4-capped/qd1", True),
    ("poll and not 4k", "q2-poll1/qd1", True),
    ("poll and not 4k", "q4-poll1-4k/qd1", False),
    ("(q1 or q2) and qd1", "q2-iot/qd1", True),
    ("not (q1 or q2)", "q2-iot/qd1", False),
])
def test_select(expr, name, want):
    assert matches(expr, name) is want


@pytest.mark.parametrize("expr", ["", "a and", "(a", "a b", "and a", "a )"])
def test_bad_select_is_usage_error(expr):
    with pytest.raises(UsageError, match="-k"):
        matches(expr, "x")


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_cli_bad_matrix_file_exit_2(tmp_path, capsys):
    bad = tmp_path / "m.toml"
    bad.write_text("[matrix]\nname='x'\n[workload.w]\n[disk.a]\nqueues=2\n")
    assert cli.main(["run", "--matrix", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "[disk.a] queues: unknown key" in _one_line(capsys)


def test_cli_k_selecting_nothing_exit_2(tmp_path, capsys):
    assert cli.main(["run", "--matrix", str(DEFAULT), "-k", "nothing-like-this", "--out", str(tmp_path)]) == 2
    assert "selects none" in _one_line(capsys)


def test_cli_k_without_matrix_exit_2(capsys):
    assert cli.main(["run", "-k", "q4"]) == 2
    assert "needs --matrix" in _one_line(capsys)


def test_disks_from_flags(tmp_path):
    from vblk_ci.matrix.schema import matrix_from_flags

    # shell's spellings work here too: size with a unit, '-' in keys, a bare boolean.
    m = matrix_from_flags(["id=a,num_queues=4,iothread=shared,poll_max_ns=0,size=32M", "id=b,backend=file,aio=io_uring,"
                           "cache=none,logical-block-size=4096,read-only"], tmp_path, vcpus=4, group=True)
    by = {c.name: c for c in m.combinations}
    assert list(by) == ["a/qd1", "b/qd1", "all/qd1"] and by["a/qd1"].vcpus == 4
    a, b = by["a/qd1"].disks[0], by["b/qd1"].disks[0]
    assert (a.num_queues, a.iothread, a.poll_max_ns, a.size_bytes) == (4, "shared", 0, 32 << 20)
    assert (b.aio, b.cache, b.logical_block_size, b.read_only, b.path) == ("io_uring", "none", 4096, True,
                                                                            tmp_path / "b.raw")


@pytest.mark.parametrize("flag, message", [
    # The same rules as vblk-ci shell --disk (disks/flags.py), then the matrix's own checks.
    ("id=a,queues=2", r"--disk 'id=a,queues=2': unknown key 'queues'"),
    ("id=a,num_queues=two", r"num_queues is not a number: 'two'"),
    ("id=a,num_queues", r"num_queues needs a value"),
    ("id=a,aio=io_uring", r"aio: is only valid with the file backend"),
])
def test_bad_disk_flags(tmp_path, flag, message):
    from vblk_ci.matrix.schema import matrix_from_flags

    with pytest.raises(UsageError, match=message):
        matrix_from_flags([flag], tmp_path)


def test_cli_bad_disk_flag_exit_2(tmp_path, capsys):
    assert cli.main(["run", "--disk", "id=a,num_queues=0", "--out", str(tmp_path)]) == 2
    assert "num_queues" in _one_line(capsys)
