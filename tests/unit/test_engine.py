"""Unit tests for the workload engine (guest-agent/engine/vblk-engine.c).

The engine is built with its own Makefile into a temporary directory and run
on the host: the block path against a regular file opened with O_DIRECT, the
passthrough path against /dev/zero (a char device without ->uring_cmd, so
every command must come back as a negative res rather than crash the engine).
The pattern is recomputed here in Python, which pins down the PROTOCOL.md
definition the host relies on.
"""

import json
import mmap
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ENGINE_SRC = Path(__file__).resolve().parents[2] / "guest-agent" / "engine"
REPO = Path(__file__).resolve().parents[2]
LIBURING_A = Path("/usr/lib/x86_64-linux-gnu/liburing.a")
MASK64 = (1 << 64) - 1

PROTOCOL_FIELDS = {"path", "mode", "op", "offset", "length", "bs", "qd", "ios", "bytes",
                   "elapsed_ns", "errors", "first_error", "mismatches", "first_mismatch"}


def splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def pattern(seed, offset, length):
    """The bytes PROTOCOL.md says `write` puts at absolute ``offset``."""
    return b"".join(struct.pack("<Q", splitmix64(seed ^ (o // 8)))
                    for o in range(offset, offset + length, 8))


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """Path of a freshly built vblk-engine, or skip with the reason."""
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler (cc) on PATH")
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    if not LIBURING_A.exists():
        pytest.skip(f"{LIBURING_A} missing: install liburing-dev for the static build")
    build = tmp_path_factory.mktemp("engine-build")
    for name in ("vblk-engine.c", "Makefile"):
        shutil.copy(ENGINE_SRC / name, build / name)
    proc = subprocess.run(["make", "-C", str(build)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"engine build failed:\n{proc.stdout}\n{proc.stderr}"
    binary = build / "vblk-engine"
    probe = subprocess.run([str(binary), "--path", "/dev/zero", "--op", "read"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode == 3 and "io_uring setup failed" in probe.stderr:
        pytest.skip(f"io_uring unavailable here: {probe.stderr.strip()}")
    return binary


def _supports_o_direct(directory):
    """True if a 4 KiB O_DIRECT write works in ``directory`` (not on every tmpfs)."""
    probe = directory / ".odirect-probe"
    try:
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError:
        return False
    try:
        buf = mmap.mmap(-1, 4096)   # page aligned, as O_DIRECT wants
        return os.pwrite(fd, buf, 0) == 4096
    except OSError:
        return False
    finally:
        os.close(fd)
        probe.unlink()


@pytest.fixture
def direct_dir(tmp_path):
    """A directory whose filesystem takes O_DIRECT: tmp_path, else one in the repo."""
    if _supports_o_direct(tmp_path):
        yield tmp_path
        return
    fallback = REPO / ".pytest-tmp" / tmp_path.name
    fallback.mkdir(parents=True, exist_ok=True)
    try:
        if not _supports_o_direct(fallback):
            pytest.skip(f"neither {tmp_path} nor {fallback} supports O_DIRECT")
        yield fallback
    finally:
        shutil.rmtree(fallback, ignore_errors=True)


@pytest.fixture
def disk(direct_dir):
    """A 1 MiB zero-filled regular file standing in for a block device."""
    path = direct_dir / "disk.img"
    with open(path, "wb") as f:
        f.truncate(1 << 20)
    return path


def run(engine, *args, expect_rc=0):
    proc = subprocess.run([str(engine), *map(str, args)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == expect_rc, (proc.returncode, proc.stdout, proc.stderr)
    return proc


def job(engine, *args):
    """Run a job that must succeed; return its parsed single-line JSON result."""
    proc = run(engine, *args)
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    assert proc.stderr == ""
    return json.loads(lines[0])


def test_write_then_verify(engine, disk):
    w = job(engine, "--path", disk, "--op", "write", "--length", "64k")
    assert PROTOCOL_FIELDS <= set(w)
    assert w["mode"] == "block" and w["op"] == "write"
    assert (w["offset"], w["length"], w["bs"], w["qd"]) == (0, 65536, 4096, 1)
    assert (w["ios"], w["bytes"], w["errors"]) == (16, 65536, 0)
    assert w["first_error"] is None and w["first_mismatch"] is None
    assert w["results"] == [4096] * 16
    assert w["elapsed_ns"] > 0

    v = job(engine, "--path", disk, "--op", "verify", "--length", "64k")
    assert (v["mismatches"], v["errors"], v["bytes"]) == (0, 0, 65536)
    assert v["first_mismatch"] is None


def test_pattern_matches_protocol_definition(engine, disk):
    job(engine, "--path", disk, "--op", "write", "--offset", "8192", "--length", "8192",
        "--seed", "0xdeadbeef")
    data = disk.read_bytes()
    assert data[8192:16384] == pattern(0xDEADBEEF, 8192, 8192)
    assert data[:8192] == bytes(8192)   # nothing outside the range was touched
    assert data[16384:20480] == bytes(4096)


def test_verify_with_other_seed_reports_mismatch(engine, disk):
    job(engine, "--path", disk, "--op", "write", "--length", "16k", "--seed", "1")
    v = job(engine, "--path", disk, "--op", "verify", "--length", "16k", "--seed", "2")
    assert v["errors"] == 0
    assert v["mismatches"] == 16384 // 8   # counted in 8-byte words
    fm = v["first_mismatch"]
    assert fm["offset"] == 0
    assert fm["expected"] == f"0x{splitmix64(2 ^ 0):016x}"
    assert fm["got"] == f"0x{splitmix64(1 ^ 0):016x}"


def test_single_corrupt_word_is_located(engine, disk):
    job(engine, "--path", disk, "--op", "write", "--length", "64k", "--qd", "4")
    with open(disk, "r+b") as f:
        f.seek(40968)
        f.write(b"\0" * 8)
    v = job(engine, "--path", disk, "--op", "verify", "--length", "64k", "--qd", "4")
    assert v["mismatches"] == 1
    assert v["first_mismatch"]["offset"] == 40968
    assert v["first_mismatch"]["got"] == "0x0000000000000000"


def test_qd8_with_partial_last_block(engine, disk):
    length = 40 * 4096 + 512   # 41 I/Os, the last one 512 bytes
    w = job(engine, "--path", disk, "--op", "write", "--length", length, "--qd", "8")
    assert (w["qd"], w["ios"], w["bytes"], w["errors"]) == (8, 41, length, 0)
    assert "results" not in w   # only when ios <= 16
    v = job(engine, "--path", disk, "--op", "verify", "--length", length, "--qd", "8",
            "--bs", "8k")
    assert (v["ios"], v["mismatches"], v["errors"]) == (21, 0, 0)
    assert disk.read_bytes()[:length] == pattern(1, 0, length)


def test_read_past_end_is_data_not_failure(engine, disk):
    r = job(engine, "--path", disk, "--op", "read", "--offset", 1 << 20, "--length", "8k",
            "--expect-error")
    assert r["op"] == "read" and r["expect_error"] is True
    assert r["errors"] == 2 and r["bytes"] == 0
    assert r["first_error"] == {"offset": 1 << 20, "res": 0}
    assert r["results"] == [0, 0]


def test_passthru_path_on_char_device_without_uring_cmd(engine):
    """/dev/zero has no ->uring_cmd: every command must fail with -errno, no crash."""
    if not os.path.exists("/dev/zero"):
        pytest.skip("/dev/zero is missing")
    for extra in ([], ["--sqe64"]):
        r = job(engine, "--path", "/dev/zero", "--op", "write", "--length", "16k", "--qd", "2",
                *extra)
        assert r["mode"] == "passthru"
        assert r["sqe64"] is bool(extra)
        assert r["errors"] == 4 and r["bytes"] == 0
        assert all(res < 0 for res in r["results"])
        assert r["first_error"]["offset"] == 0


@pytest.mark.parametrize("args", [
    [],
    ["--op", "read"],                                   # no --path
    ["--path", "x"],                                    # no --op
    ["--path", "x", "--op", "erase"],
    ["--path", "x", "--op", "read", "--qd", "0"],
    ["--path", "x", "--op", "read", "--qd", "5000"],
    ["--path", "x", "--op", "read", "--bs", "0"],
    ["--path", "x", "--op", "read", "--bs", "4095"],
    ["--path", "x", "--op", "read", "--offset", "100"],
    ["--path", "x", "--op", "read", "--length", "12x"],
    ["--path", "x", "--op", "read", "--seed", "-1"],
    ["--path", "x", "--op", "read", "--bogus"],
    ["--path", "x", "--op", "read", "extra"],
    ["--path", "x", "--op", "read", "--qd"],
])
def test_bad_usage_exits_2_with_one_line(engine, args):
    proc = run(engine, *args, expect_rc=2)
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith("vblk-engine: ")


def test_missing_target_exits_3(engine, tmp_path):
    proc = run(engine, "--path", tmp_path / "nope", "--op", "read", expect_rc=3)
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1
    assert "No such file" in proc.stderr


def test_directory_target_exits_3(engine, tmp_path):
    proc = run(engine, "--path", tmp_path, "--op", "read", "--rdonly", expect_rc=3)
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1


def test_rdonly_open_still_reads(engine, disk):
    job(engine, "--path", disk, "--op", "write")
    disk.chmod(0o444)
    r = job(engine, "--path", disk, "--op", "verify", "--rdonly")
    assert (r["rdonly"], r["errors"], r["mismatches"]) == (True, 0, 0)


def test_make_clean_and_install(tmp_path):
    if not LIBURING_A.exists() or shutil.which("make") is None:
        pytest.skip("needs make and liburing.a")
    for name in ("vblk-engine.c", "Makefile"):
        shutil.copy(ENGINE_SRC / name, tmp_path / name)
    dest = tmp_path / "root"
    subprocess.run(["make", "-C", str(tmp_path), "install", f"DESTDIR={dest}"], check=True,
                   capture_output=True, timeout=300)
    installed = dest / "usr" / "bin" / "vblk-engine"
    assert os.access(installed, os.X_OK)
    if shutil.which("file"):
        out = subprocess.run(["file", "-L", str(installed)], capture_output=True).stdout
        assert b"statically linked" in out, out
    subprocess.run(["make", "-C", str(tmp_path), "clean"], check=True, capture_output=True)
    assert not (tmp_path / "vblk-engine").exists()


def test_agent_engine_method_runs_the_real_engine(engine, disk):
    """The agent's `engine` method around the real binary: result plus exit_code/stderr."""
    agent = REPO / "guest-agent" / "agent" / "vblk_agent.py"
    requests = [
        {"id": 1, "method": "engine", "params": {"args": ["--path", str(disk), "--op", "write",
                                                          "--length", "32k", "--qd", "4"]}},
        {"id": 2, "method": "engine", "params": {"args": ["--path", str(disk), "--op", "verify",
                                                          "--length", "32k"]}},
        {"id": 3, "method": "engine", "params": {"args": ["--path", str(disk), "--op", "nope"]}},
    ]
    proc = subprocess.run(
        [sys.executable, str(agent), "--stdio", "--no-poweroff", "--engine", str(engine)],
        input="".join(json.dumps(r) + "\n" for r in requests), capture_output=True, text=True,
        timeout=60)
    replies = [json.loads(line) for line in proc.stdout.splitlines()][1:]   # skip "ready"
    write, verify, bad = (r.get("result") or r.get("error") for r in replies)
    assert (write["op"], write["errors"], write["exit_code"], write["stderr"]) == (
        "write", 0, 0, "")
    assert (verify["mismatches"], verify["bytes"]) == (0, 32768)
    assert bad["type"] == "EngineFailed" and bad["data"]["exit_code"] == 2
