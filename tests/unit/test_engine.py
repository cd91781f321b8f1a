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
import time
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


def _copy_sources(dest):
    """The engine's sources (every .c/.h) and Makefile, as the image build copies them."""
    for src in ENGINE_SRC.iterdir():
        if src.suffix in (".c", ".h") or src.name == "Makefile":
            shutil.copy(src, dest / src.name)


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
    _copy_sources(build)
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


def test_wronly_open_writes_and_excludes_rdonly(engine, disk):
    disk.chmod(0o222)  # a regular file a root-run engine could open O_RDWR anyway; the echo shows the mode
    r = job(engine, "--path", disk, "--op", "write", "--wronly")
    assert (r["wronly"], r["rdonly"], r["errors"]) == (True, False, 0)
    proc = run(engine, "--path", disk, "--op", "read", "--rdonly", "--wronly", expect_rc=2)
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1
    assert "--rdonly and --wronly exclude each other" in proc.stderr


def test_make_clean_and_install(tmp_path):
    if not LIBURING_A.exists() or shutil.which("make") is None:
        pytest.skip("needs make and liburing.a")
    _copy_sources(tmp_path)
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


# --------------------------------------------------------------------------- new ops


@pytest.mark.parametrize("args", [
    ["--path", "x", "--op", "mix"],                                  # no --runtime/--ios
    ["--path", "x", "--op", "mix", "--ios", "10", "--bs", "1000"],   # bs not 512-aligned
    ["--path", "x", "--op", "mix", "--ios", "10", "--length", "6k"],  # length % bs
    ["--path", "x", "--op", "read", "--path2", "y"],
    ["--path", "x", "--op", "verify", "--runtime", "1"],
    ["--path", "x", "--op", "verify", "--ios", "3"],
    ["--path", "x", "--op", "flush", "--bench"],
    ["--path", "x", "--op", "verify", "--batch-submit", "2"],
    ["--path", "x", "--op", "read", "--ranges", "2"],
    ["--path", "x", "--op", "write", "--unmap"],
    ["--path", "x", "--op", "read", "--with-trim"],
    ["--path", "x", "--op", "read", "--init-seed", "1"],
    ["--path", "x", "--op", "read", "--zero"],
    ["--path", "x", "--op", "read", "--vec", "0"],
    ["--path", "x", "--op", "read", "--vec", "513"],                 # > bs / 8
    ["--path", "x", "--op", "read", "--type", "0x100000000"],
    ["--path", "x", "--op", "flush", "--ios", "0"],
    ["--path", "x", "--op", "mix", "--runtime", "-1"],
    ["--path", "x", "--op", "mix", "--runtime", "soon"],
    ["--path", "x", "--op", "randread", "--data-len", "8"],          # raw knobs: basic ops only
    ["--path", "x", "--op", "randread", "--length", "2k"],           # length < bs
    ["--path", "x", "--op", "discard", "--bs", "1000"],
    ["--path", "x", "--op", "randwrite", "--batch-submit", "0"],
    ["--path", "x", "--op", "mix", "--ios", "10", "--batch-complete", "2"],
    ["--path", "x", "--op", "mix", "--ios", "10", "--bench"],
])
def test_bad_usage_of_new_options_exits_2(engine, args):
    proc = run(engine, *args, expect_rc=2)
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith("vblk-engine: ")


@pytest.mark.parametrize("args", [
    ["--op", "get-id"],
    ["--op", "read", "--type", "5"],
    ["--op", "read", "--data-len", "512"],
    ["--op", "read", "--fixed", "--vec", "2"],
])
def test_passthrough_only_options_on_block_path_exit_2(engine, disk, args):
    proc = run(engine, "--path", disk, *args, expect_rc=2)
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith("vblk-engine: ")


def test_block_flush_discard_write_zeroes(engine, disk):
    job(engine, "--path", disk, "--op", "write", "--length", "64k")
    f = job(engine, "--path", disk, "--op", "flush")
    assert (f["op"], f["ios"], f["results"], f["bytes"]) == ("flush", 1, [0], 0)
    f3 = job(engine, "--path", disk, "--op", "flush", "--ios", "3", "--qd", "2")
    assert f3["results"] == [0, 0, 0]
    z = job(engine, "--path", disk, "--op", "write-zeroes", "--offset", "8k", "--length", "8k")
    assert (z["ios"], z["results"], z["unmap"], z["ranges"]) == (2, [0, 0], False, 1)
    d = job(engine, "--path", disk, "--op", "discard", "--offset", "32k", "--length", "16k",
            "--ranges", "2")
    assert (d["ios"], d["results"], d["ranges"], d["bytes"]) == (2, [0, 0], 2, 16384)
    data = disk.read_bytes()
    assert data[8192:16384] == bytes(8192)
    assert data[32768:49152] == bytes(16384)    # a punched hole in a file reads zero
    assert data[:8192] == pattern(1, 0, 8192)
    assert data[16384:32768] == pattern(1, 16384, 16384)
    v = job(engine, "--path", disk, "--op", "verify", "--zero", "--offset", "8k", "--length", "8k")
    assert (v["zero"], v["mismatches"], v["errors"]) == (True, 0, 0)


def test_block_vec_and_fixed_buffers(engine, disk):
    w = job(engine, "--path", disk, "--op", "write", "--length", "64k", "--vec", "5",
            "--seed", "8", "--qd", "4")
    assert (w["vec"], w["errors"], w["bytes"]) == (5, 0, 65536)
    assert disk.read_bytes()[:65536] == pattern(8, 0, 65536)
    v = job(engine, "--path", disk, "--op", "verify", "--length", "64k", "--fixed", "--seed", "8",
            "--qd", "4")
    assert (v["fixed"], v["mismatches"], v["errors"]) == (True, 0, 0)
    v = job(engine, "--path", disk, "--op", "verify", "--length", "64k", "--vec", "3",
            "--seed", "8")
    assert (v["mismatches"], v["errors"]) == (0, 0)


def test_bad_ptr_is_efault_not_a_crash(engine, disk):
    r = job(engine, "--path", disk, "--op", "read", "--bad-ptr", "--length", "8k")
    assert r["bad_ptr"] is True
    assert r["results"] == [-14, -14] and r["errors"] == 2


@pytest.mark.parametrize("vec", [[], ["--vec", "2"]])
def test_bad_ptr_page_stays_mapped_prot_none_while_the_io_runs(engine, disk, vec):
    """A munmap()ped page is where the next mapping lands (a ring, a large malloc, a
    thread stack): --bad-ptr must be a PROT_NONE page kept mapped until the job is done."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    proc = subprocess.run(["strace", "-qq", "-e", "trace=mmap,munmap,io_uring_enter", str(engine), "--path",
                           str(disk), "--op", "read", "--bad-ptr", "--length", "8k", *vec],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 and "PTRACE" in proc.stderr:
        pytest.skip(f"strace cannot trace here: {proc.stderr.strip()[-200:]}")
    assert json.loads(proc.stdout)["results"] == [-14, -14]
    calls = proc.stderr.splitlines()
    none = [i for i, c in enumerate(calls) if c.startswith("mmap(NULL, 4096, PROT_NONE,")]
    assert len(none) == 1, calls
    page = calls[none[0]].rsplit("= ", 1)[1]
    last_io = max(i for i, c in enumerate(calls) if c.startswith("io_uring_enter("))
    unmapped = [i for i, c in enumerate(calls) if c.startswith(f"munmap({page},")]
    assert not unmapped or unmapped[0] > last_io, calls


def test_new_passthru_ops_on_char_device_without_uring_cmd(engine):
    if not os.path.exists("/dev/zero"):
        pytest.skip("/dev/zero is missing")
    for args in (["--op", "flush"], ["--op", "get-id"], ["--op", "discard", "--ranges", "2"],
                 ["--op", "write-zeroes", "--unmap"], ["--op", "read", "--vec", "4"],
                 ["--op", "write", "--fixed"], ["--op", "read", "--type", "99", "--flag", "1",
                                                "--cmd-op", "7", "--data-len", "3"]):
        r = job(engine, "--path", "/dev/zero", *args)
        assert r["mode"] == "passthru"
        assert r["errors"] == 1 and r["results"][0] < 0, args
    r = job(engine, "--path", "/dev/zero", "--op", "get-id")
    assert r["id"] is None
    r = job(engine, "--path", "/dev/zero", "--op", "read", "--type", "99", "--data-len", "3")
    assert r["raw"] == {"type": 99, "cmd_op": None, "flag": None, "data_len": 3}


# --------------------------------------------------------------------------- mix

MIX_COUNTS = ("writes", "reads", "flushes", "discards", "write_zeroes")


def mix(engine, disk, *args):
    return job(engine, "--path", disk, "--path2", disk, "--op", "mix", "--length", "256k",
               *args)


def test_mix_same_file_twice_verifies_clean(engine, disk):
    r = mix(engine, disk, "--ios", "1500", "--seed", "5", "--qd", "8")
    assert (r["op"], r["ios"], r["errors"], r["mismatches"]) == ("mix", 1500, 0, 0)
    m = r["mix"]
    assert sum(m[k] for k in MIX_COUNTS) == 1500
    assert m["writes"] > 0 and m["reads"] > 0 and m["flushes"] > 0
    assert m["discards"] == m["write_zeroes"] == 0          # only with --with-trim
    assert m["verified_blocks"] > 0
    pp = m["per_path"]
    assert set(pp) == {"path", "path2"}
    for key in MIX_COUNTS:
        assert pp["path"][key] + pp["path2"][key] == m[key]
    assert pp["path"]["reads"] > 0 and pp["path2"]["reads"] > 0
    assert pp["path"]["mode"] == "block" and pp["path2"]["path"] == str(disk)


def test_mix_is_deterministic_for_a_seed(engine, disk):
    runs = [mix(engine, disk, "--ios", "800", "--seed", "42", "--qd", qd, "--with-trim")
            for qd in (1, 16)]
    # everything but overlap_waits (how often qd made an I/O wait) is fixed by the seed
    a, b = ({k: v for k, v in r["mix"].items() if k != "overlap_waits"} for r in runs)
    assert a == b
    assert a["discards"] > 0 and a["write_zeroes"] > 0
    assert all(r["mismatches"] == 0 and r["errors"] == 0 for r in runs)
    other = mix(engine, disk, "--ios", "800", "--seed", "43", "--with-trim")
    assert other["mix"]["per_path"] != a["per_path"]


def test_mix_with_trim_and_unmap_keeps_expectations(engine, disk):
    job(engine, "--path", disk, "--op", "write", "--length", "256k", "--seed", "3")
    r = mix(engine, disk, "--ios", "1500", "--seed", "6", "--qd", "4", "--with-trim",
            "--unmap", "--init-seed", "3")
    assert (r["errors"], r["mismatches"]) == (0, 0)
    assert r["mix"]["unmap"] is True and r["mix"]["init_seed"] == 3
    assert r["mix"]["unverified_blocks"] > 0                 # discarded blocks are unknown


def test_mix_detects_a_corrupted_block(engine, disk):
    job(engine, "--path", disk, "--op", "write", "--length", "64k", "--seed", "3")
    with open(disk, "r+b") as f:                # one bad word in each of the 16 blocks
        for blk in range(16):
            f.seek(blk * 4096 + 8 * blk)
            f.write(b"XXXXXXXX")
    r = job(engine, "--path", disk, "--op", "mix", "--length", "64k", "--ios", "300",
            "--seed", "2", "--init-seed", "3")
    assert r["errors"] == 0 and r["mismatches"] > 0
    fm = r["first_mismatch"]
    assert fm["got"] == "0x5858585858585858"
    blk = fm["offset"] // 4096
    assert fm["offset"] == blk * 4096 + 8 * blk
    assert fm["expected"] == "0x%016x" % splitmix64(3 ^ (fm["offset"] // 8))
    assert fm["target"] == "path" and fm["io"] >= 0


def test_mix_runtime_bounds_the_job(engine, disk):
    r = mix(engine, disk, "--runtime", "0.3", "--qd", "4")
    assert r["ios"] > 0 and r["errors"] == 0 and r["mismatches"] == 0
    assert r["runtime_ns"] == 300_000_000
    assert r["elapsed_ns"] >= 300_000_000


# --------------------------------------------------------------------------- bench

PCTS = ("p50", "p90", "p99", "p999")


def check_lat(lat, samples):
    assert set(PCTS) <= set(lat)
    values = [lat[p] for p in PCTS]
    assert values == sorted(values), lat
    assert lat["min"] <= lat["p50"] and lat["p999"] <= lat["max"]
    assert lat["samples"] == samples
    assert sum(count for _, count in lat["hist"]) == samples
    los = [lo for lo, _ in lat["hist"]]
    assert los == sorted(los) and len(set(los)) == len(los)


@pytest.mark.parametrize("op,extra", [
    ("randread", ["--batch-submit", "4", "--batch-complete", "2"]),
    ("randwrite", []),
    ("read", ["--bench", "--fixed"]),
    ("write", ["--ios", "300", "--vec", "2"]),
])
def test_bench_output_shape(engine, disk, op, extra):
    job(engine, "--path", disk, "--op", "write", "--length", "1m")
    args = ["--path", disk, "--op", op, "--length", "1m", "--qd", "8", *extra]
    if "--ios" not in extra:
        args += ["--ios", "500"]
    r = job(engine, *args)
    b = r["bench"]
    n = 300 if "300" in extra else 500
    assert PROTOCOL_FIELDS <= set(r)
    assert r["op"] == op and r["ios"] == b["ios"] == n and r["errors"] == 0
    assert r["bytes"] == n * 4096
    assert b["iops"] > 0 and b["bw_bytes_s"] > 0 and b["elapsed_ns"] > 0
    assert b["syscalls"] == b["submit_calls"] + b["wait_calls"] > 0
    assert b["syscalls_per_io"] == pytest.approx(b["syscalls"] / n, abs=1e-3)
    assert b["random"] is op.startswith("rand")
    check_lat(b["slat"], n)
    check_lat(b["clat"], n)
    assert "results" not in r


def test_bench_batches_cut_syscalls(engine, disk):
    common = ["--path", disk, "--op", "randread", "--length", "1m", "--ios", "512", "--qd", "16"]
    one = job(engine, *common)["bench"]
    batched = job(engine, *common, "--batch-submit", "8", "--batch-complete", "8")["bench"]
    assert (one["batch_submit"], batched["batch_submit"]) == (1, 8)
    assert one["submit_calls"] == 512                        # one SQE per submit
    assert batched["submit_calls"] < one["submit_calls"]
    assert batched["syscalls_per_io"] < one["syscalls_per_io"]


def test_bench_runtime_and_qd1_sequential(engine, disk):
    r = job(engine, "--path", disk, "--op", "read", "--length", "64k", "--runtime", "0.2")
    b = r["bench"]
    assert r["runtime_ns"] == 200_000_000 and b["ios"] > 0
    assert r["elapsed_ns"] >= 200_000_000
    assert 1.0 <= b["syscalls_per_io"] <= 2.0               # a submit, and a wait unless done
    check_lat(b["clat"], b["ios"])


def test_bench_defaults_to_one_pass(engine, disk):
    r = job(engine, "--path", disk, "--op", "randwrite", "--length", "64k", "--bs", "8k")
    assert r["ios"] == 8 and r["bench"]["ios"] == 8 and r["bytes"] == 65536
    assert r["bench"]["batch_submit"] == 1 and r["bench"]["batch_complete"] == 1


# ------------------------------------------------- result counts, close, --uid/--gid, signals

IS_ROOT = os.geteuid() == 0


def test_res_counts_and_close_in_every_result(engine, disk):
    r = job(engine, "--path", disk, "--op", "write", "--length", "64k", "--qd", "4")
    assert r["res_counts"] == {"4096": 16} and r["res_counts_other"] == 0
    assert r["close_ok"] is True and r["close_errno"] == 0
    assert r["uid"] is None and r["gid"] is None
    # failures are counted by value, next to the successes
    r = job(engine, "--path", disk, "--op", "read", "--offset", (1 << 20) - 4096, "--length", "12k",
            "--expect-error")
    assert r["res_counts"] == {"4096": 1, "0": 2}
    m = job(engine, "--path", disk, "--op", "mix", "--length", "64k", "--ios", "50", "--qd", "4")
    assert sum(m["res_counts"].values()) == m["ios"] == 50
    b = job(engine, "--path", disk, "--op", "randread", "--length", "64k", "--ios", "40")
    assert b["res_counts"] == {"4096": 40}
    assert b["stopped"] is False and b["marked"] is False and b["res_counts_after_mark"] == {}


@pytest.mark.parametrize("args", [
    ["--uid", "1000"],
    ["--gid", "1000"],
    ["--uid", "-1", "--gid", "0"],
    ["--uid", "4294967295", "--gid", "0"],
    ["--uid", "root", "--gid", "0"],
])
def test_uid_gid_usage(engine, args):
    proc = run(engine, "--path", "x", "--op", "read", *args, expect_rc=2)
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1


@pytest.mark.skipif(not IS_ROOT, reason="switching uid needs root")
def test_uid_gid_without_access_is_eacces_exit_3(engine, disk):
    disk.chmod(0o600)   # root's, like /dev/vdXc0
    proc = run(engine, "--path", disk, "--op", "read", "--uid", "65534", "--gid", "65534", expect_rc=3)
    assert proc.stdout == ""
    assert proc.stderr.strip() == (f"vblk-engine: cannot open {disk} as uid 65534 gid 65534: "
                                   "Permission denied")


@pytest.mark.skipif(not IS_ROOT, reason="switching uid needs root")
def test_uid_gid_with_access_runs_the_job(engine):
    # /dev/null is 0666: the unprivileged open works and the job runs (what the host kernel
    # answers to a uring_cmd on /dev/null depends on its version).
    r = job(engine, "--path", "/dev/null", "--op", "read", "--uid", "65534", "--gid", "65534")
    assert (r["uid"], r["gid"], r["mode"]) == (65534, 65534, "passthru")
    assert r["ios"] == 1 and len(r["results"]) == 1


@pytest.mark.skipif(IS_ROOT, reason="root may switch uid")
def test_uid_gid_unprivileged_caller_exits_3(engine, disk):
    proc = run(engine, "--path", disk, "--op", "read", "--uid", "0", "--gid", "0", expect_rc=3)
    assert "cannot" in proc.stderr


def test_bench_mark_and_stop_signals(engine, disk):
    import signal

    proc = subprocess.Popen([str(engine), "--path", str(disk), "--op", "read", "--length", "64k",
                             "--runtime", "60", "--qd", "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        time.sleep(0.3)
        proc.send_signal(signal.SIGUSR1)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    r = json.loads(out)
    assert r["stopped"] is True and r["marked"] is True
    assert r["elapsed_ns"] < 20 * 10**9
    before, after = r["res_counts"]["4096"], r["res_counts_after_mark"]["4096"]
    assert 0 < after < before == r["ios"]
    assert r["errors"] == 0 and r["close_ok"] is True


# --------------------------------------------------------------------------- bench: --buffered, --rwmix-read


def test_bench_rwmix_read_splits_reads_and_writes(engine, disk):
    r = job(engine, "--path", disk, "--op", "randread", "--length", "1m", "--ios", "400",
            "--qd", "4", "--rwmix-read", "75")
    b = r["bench"]
    assert b["rwmix_read"] == 75 and b["reads"] + b["writes"] == 400
    assert 200 < b["reads"] < 400 and b["writes"] > 0  # 75 % of 400, seeded: far from both ends
    assert r["errors"] == 0


def test_bench_rwmix_keeps_offsets_of_the_plain_job(engine, disk):
    """The read/write choice has its own generator: same seed, same I/O count as without it."""
    a = job(engine, "--path", disk, "--op", "randread", "--length", "1m", "--ios", "64")
    b = job(engine, "--path", disk, "--op", "randread", "--length", "1m", "--ios", "64", "--rwmix-read", "100")
    assert a["bench"]["reads"] == b["bench"]["reads"] == 64 and a["bench"]["writes"] == 0


def test_bench_buffered_and_cpu_time(engine, disk):
    r = job(engine, "--path", disk, "--op", "randread", "--length", "1m", "--ios", "256", "--buffered")
    b = r["bench"]
    assert b["buffered"] is True and b["rwmix_read"] is None
    assert b["cpu_ns"] > 0 and b["cpu_ns_per_io"] == pytest.approx(b["cpu_ns"] / b["ios"], rel=1e-3)


@pytest.mark.parametrize("args, message", [
    (["--op", "read", "--buffered"], "--buffered/--rwmix-read take a benchmark op"),
    (["--op", "verify", "--rwmix-read", "50"], "--buffered/--rwmix-read take a benchmark op"),
    (["--op", "randread", "--rwmix-read", "101"], "--rwmix-read must be 0..100"),
    (["--op", "randread", "--buffered", "--fixed"], "--buffered cannot go with --fixed or --iopoll"),
])
def test_bench_new_options_refused(engine, disk, args, message):
    proc = run(engine, "--path", disk, *args, expect_rc=2)
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1 and message in proc.stderr
# ---- progress lines (--progress-fd / --progress-ms) -------------------------


def test_progress_lines_count_completions_while_the_job_runs(engine, disk):
    rfd, wfd = os.pipe()
    try:
        proc = subprocess.run([str(engine), "--path", str(disk), "--op", "write", "--length", "1m",
                               "--qd", "4", "--runtime", "0.5", "--progress-fd", str(wfd), "--progress-ms", "20"],
                              capture_output=True, text=True, timeout=60, pass_fds=(wfd,))
        os.close(wfd)
        wfd = None
        with os.fdopen(rfd, "rb") as f:
            rfd = None
            lines = [json.loads(line) for line in f.read().splitlines()]
    finally:
        for fd in (rfd, wfd):
            if fd is not None:
                os.close(fd)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert len(lines) >= 5  # 0.5 s at one line per 20 ms, give or take
    assert [ln["seq"] for ln in lines] == list(range(len(lines)))
    done = [ln["completions"] for ln in lines]
    assert done == sorted(done) and done[-1] <= result["ios"]
    for ln in lines:
        assert ln["completions"] == sum(ln["res"].values()) + ln["other"]
        assert 0 <= ln["in_flight"] <= 4 and ln["prepared"] == ln["completions"] + ln["in_flight"]
        assert set(ln["res"]) <= {"4096"}
    gaps = [b["t_ns"] - a["t_ns"] for a, b in zip(lines, lines[1:])]
    assert min(gaps) >= 20_000_000


@pytest.mark.parametrize("args,msg", [
    (["--progress-fd", "1"], "--progress-fd must be an open fd 3..1023"),
    (["--progress-fd", "5", "--progress-ms", "5"], "--progress-ms must be 10..60000"),
])
def test_progress_options_are_checked(engine, disk, args, msg):
    proc = run(engine, "--path", disk, "--op", "read", *args, expect_rc=2)
    assert msg in proc.stderr


# ---- --ioprio / --sector (review-v2 #1, #2) ---------------------------------


def test_ioprio_reaches_the_block_path_sqe(engine, disk):
    """sqe->ioprio is really set: io_uring checks it (ioprio_check_cap), so an invalid class
    (7) is -EINVAL while best-effort level 3 (0x4003) goes through."""
    ok = job(engine, "--path", disk, "--op", "write", "--ioprio", "0x4003")
    assert (ok["ioprio"], ok["results"], ok["sector"]) == (0x4003, [4096], None)
    bad = job(engine, "--path", disk, "--op", "write", "--ioprio", "0xe000")
    assert bad["results"] == [-22]
    plain = job(engine, "--path", disk, "--op", "read")
    assert (plain["ioprio"], plain["sector"]) == (None, None)


def test_ioprio_and_sector_on_passthrough_are_reported(engine):
    if not os.path.exists("/dev/zero"):
        pytest.skip("/dev/zero is missing")
    r = job(engine, "--path", "/dev/zero", "--op", "write", "--ioprio", "0x4003",
            "--sector", "0xfffffffffffffff8")
    assert r["mode"] == "passthru"
    assert (r["ioprio"], r["sector"]) == (0x4003, (1 << 64) - 8)
    assert r["raw"] == {"type": None, "cmd_op": None, "flag": None, "data_len": None}
    big = job(engine, "--path", "/dev/zero", "--op", "read", "--ioprio", "0xffffffff")
    assert big["ioprio"] == 0xffffffff     # the command field is 32 bits
    d = job(engine, "--path", "/dev/zero", "--op", "discard", "--range-sector", "0xfffffffffffffff8")
    assert (d["range_sector"], d["sector"], d["ioprio"]) == ((1 << 64) - 8, None, None)


@pytest.mark.parametrize("args,msg", [
    (["--op", "write", "--sector", "0"], "--sector/--range-sector need a passthrough char device"),
    (["--op", "write", "--ioprio", "0x10000"], "--ioprio above 0xffff"),
    (["--op", "discard", "--range-sector", "8"], "--sector/--range-sector need a passthrough char device"),
])
def test_ioprio_sector_target_checks(engine, disk, args, msg):
    proc = run(engine, "--path", disk, *args, expect_rc=2)
    assert proc.stdout == "" and msg in proc.stderr and len(proc.stderr.splitlines()) == 1


@pytest.mark.parametrize("args,msg", [
    (["--op", "randread", "--sector", "8"], "--sector takes a basic op"),
    (["--op", "read", "--sector", "0x10000000000000000"], "bad 64-bit number"),
    (["--op", "read", "--sector", "-1"], "bad 64-bit number"),
    (["--op", "read", "--ioprio", "0x100000000"], "bad 32-bit number"),
    (["--op", "read", "--range-sector", "8"], "--range-sector takes --op discard or write-zeroes"),
])
def test_ioprio_sector_usage(engine, args, msg):
    proc = run(engine, "--path", "x", *args, expect_rc=2)
    assert proc.stdout == "" and msg in proc.stderr


# -- --link, --scribble, --async (review-v2 #3: a command read from its SQ slot after submit) ---------


@pytest.mark.parametrize("extra", [[], ["--scribble"], ["--async"], ["--scribble", "--async"],
                                   ["--scribble", "--defer-taskrun"]])
def test_link_read_chains_read_back_what_they_wrote(engine, disk, extra):
    r = job(engine, "--path", disk, "--op", "write", "--link", "read", "--length", "40k", "--qd", "4",
            "--seed", "9", *extra)
    link = r["link"]
    assert (link["kind"], link["chains"], link["ok"]) == ("read", 10, 10)
    assert (link["write_errors"], link["second_errors"], link["data_mismatches"]) == (0, 0, 0)
    assert (link["scribbled_writes"], link["scribbled_seconds"], link["stray_cqes"]) == (0, 0, 0)
    assert link["first_bad"] is None and link["bad_chains"] == [] and link["bad_chains_more"] is False
    assert link["chain_results"][3] == {"write_res": 4096, "second_res": 4096, "data_ok": True,
                                        "scribbled": [False, False]}
    assert (r["ios"], r["bytes"], r["errors"], r["mismatches"]) == (20, 2 * 40960, 0, 0)
    assert r["res_counts"] == {"4096": 20}
    assert r["async"] == ("--async" in extra)
    assert r["defer_taskrun"] == ("--defer-taskrun" in extra)
    if "--scribble" in extra:  # every SQE of every wave overwritten after its submit
        assert r["scribble"] == {"sqes": 20, "executed": 0, "len": 4096}
    else:
        assert r["scribble"] is None
    assert isinstance(r["iowq_workers_max"], int)
    assert disk.read_bytes()[:40960] == pattern(9, 0, 40960)


def test_link_flush_chains_and_partial_last_chain(engine, disk):
    r = job(engine, "--path", disk, "--op", "write", "--link", "flush", "--offset", "8k", "--length", "20k",
            "--bs", "8k", "--qd", "2", "--scribble", "--seed", "4")
    link = r["link"]
    assert (link["kind"], link["chains"], link["ok"]) == ("flush", 3, 3)
    assert [c["write_res"] for c in link["chain_results"]] == [8192, 8192, 4096]
    assert [c["second_res"] for c in link["chain_results"]] == [0, 0, 0]
    assert r["scribble"] == {"sqes": 6, "executed": 0, "len": 8192}
    assert disk.read_bytes()[8192:8192 + 20480] == pattern(4, 8192, 20480)


def test_link_more_chains_than_listed(engine, disk):
    r = job(engine, "--path", disk, "--op", "write", "--link", "read", "--length", "68k", "--qd", "16")
    assert (r["link"]["chains"], r["link"]["ok"]) == (17, 17)
    assert "chain_results" not in r["link"]


def test_link_passthru_failure_cancels_the_linked_command(engine):
    """/dev/zero has no ->uring_cmd: the WRITE fails and the kernel cancels what is linked to it."""
    r = job(engine, "--path", "/dev/zero", "--op", "write", "--link", "read", "--length", "8k", "--scribble")
    link = r["link"]
    assert r["mode"] == "passthru"
    assert (link["chains"], link["ok"], link["write_errors"], link["second_errors"]) == (2, 0, 2, 2)
    assert link["chain_results"][0]["second_res"] == -125  # -ECANCELED
    assert link["data_mismatches"] == 2  # nothing was read back
    assert link["first_bad"]["chain"] == 0 and link["first_bad"]["result"]["write_res"] < 0
    assert link["bad_chains"] == [[0, 1]]
    assert r["errors"] == 4 and r["first_error"]["res"] == link["chain_results"][0]["write_res"]


@pytest.mark.parametrize("op", ["write", "verify", "read"])
def test_scribble_basic_jobs_stay_clean(engine, disk, op):
    job(engine, "--path", disk, "--op", "write", "--length", "64k", "--seed", "6")
    r = job(engine, "--path", disk, "--op", op, "--length", "64k", "--qd", "8", "--seed", "6", "--scribble")
    assert (r["errors"], r["mismatches"], r["ios"]) == (0, 0, 16)
    assert r["scribble"] == {"sqes": 16, "executed": 0, "len": 4096}
    assert disk.read_bytes()[:65536] == pattern(6, 0, 65536)


def test_async_goes_through_io_wq(engine, disk):
    """IOSQE_ASYNC: every SQE is issued from an io-wq worker, which the engine counts."""
    r = job(engine, "--path", disk, "--op", "write", "--length", "64k", "--qd", "8", "--async")
    assert r["async"] is True and r["errors"] == 0
    assert r["iowq_workers_max"] >= 1
    plain = job(engine, "--path", disk, "--op", "write", "--length", "64k", "--qd", "8")
    assert (plain["async"], plain["scribble"], plain["iowq_workers_max"]) == (False, None, None)


def test_async_in_mix_and_bench(engine, disk):
    m = job(engine, "--path", disk, "--op", "mix", "--ios", "50", "--qd", "4", "--async")
    assert m["async"] is True and m["errors"] == 0 and m["mismatches"] == 0 and m["iowq_workers_max"] is None
    b = job(engine, "--path", disk, "--op", "randread", "--length", "64k", "--ios", "32", "--async")
    assert b["async"] is True and b["errors"] == 0


@pytest.mark.parametrize("args,message", [
    (["--link", "write"], "--link must be flush or read"),
    (["--op", "read", "--link", "read"], "--link takes --op write"),
    (["--op", "write", "--link", "read", "--ios", "4"], "--link takes --op write"),
    (["--op", "write", "--link", "flush", "--vec", "2"], "--link/--scribble cannot go with"),
    (["--op", "write", "--link", "read", "--fixed"], "--link/--scribble cannot go with"),
    (["--op", "write", "--link", "read", "--iopoll"], "--link/--scribble cannot go with"),
    (["--op", "flush", "--scribble"], "--scribble takes --op write, read or verify"),
    (["--op", "mix", "--ios", "4", "--scribble"], "--scribble takes --op write, read or verify"),
    (["--op", "write", "--scribble", "--bad-ptr"], "--link/--scribble cannot go with"),
    (["--op", "read", "--scribble", "--type", "0"], "--link/--scribble cannot go with"),
])
def test_link_scribble_usage_errors(engine, disk, args, message):
    if "--op" not in args:
        args = ["--op", "write", *args]
    proc = run(engine, "--path", disk, *args, expect_rc=2)
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1
    assert message in proc.stderr


def test_defer_taskrun_ring_runs_every_mode(engine, disk):
    """IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN: completions run only when the job waits for them."""
    w = job(engine, "--path", disk, "--op", "write", "--length", "64k", "--qd", "8", "--defer-taskrun")
    v = job(engine, "--path", disk, "--op", "verify", "--length", "64k", "--qd", "8", "--defer-taskrun")
    assert (w["defer_taskrun"], w["errors"], v["errors"], v["mismatches"]) == (True, 0, 0, 0)
    m = job(engine, "--path", disk, "--op", "mix", "--ios", "60", "--qd", "4", "--defer-taskrun")
    assert (m["errors"], m["mismatches"]) == (0, 0)
    b = job(engine, "--path", disk, "--op", "randread", "--length", "64k", "--ios", "40", "--qd", "8",
            "--batch-submit", "4", "--batch-complete", "4", "--defer-taskrun")
    assert (b["ios"], b["errors"]) == (40, 0)
    assert job(engine, "--path", disk, "--op", "read")["defer_taskrun"] is False


# --------------------------------------------------------------------------- --async, --sqpoll, vblk-engine32

I386_LIBURING_A = Path("/opt/i386/usr/lib/i386-linux-gnu/liburing.a")


@pytest.mark.parametrize("mode", [["--async"], ["--sqpoll"], ["--async", "--sqpoll"]])
@pytest.mark.parametrize("shape", [[], ["--vec", "4"]])
def test_async_and_sqpoll_write_and_verify(engine, disk, mode, shape):
    """io-wq (IOSQE_ASYNC) and SQPOLL rings move the same data as an inline ring."""
    w = job(engine, "--path", disk, "--op", "write", "--length", "64k", "--bs", "16k", "--qd", "2",
            "--seed", "7", *mode, *shape)
    assert (w["async"], w["sqpoll"]) == ("--async" in mode, "--sqpoll" in mode)
    assert w["ptr_bits"] == 64 and w["vec"] == (4 if shape else 0)
    assert (w["errors"], w["results"]) == (0, [16384] * 4)
    assert disk.read_bytes()[:65536] == pattern(7, 0, 65536)
    v = job(engine, "--path", disk, "--op", "verify", "--length", "64k", "--bs", "16k", *mode, *shape)
    assert v["mismatches"] == 1 << 13   # seed 1 against seed 7: every word differs
    v = job(engine, "--path", disk, "--op", "verify", "--length", "64k", "--bs", "16k", "--seed", "7",
            *mode, *shape)
    assert (v["errors"], v["mismatches"], v["bytes"]) == (0, 0, 65536)


def test_async_and_sqpoll_default_off_and_in_every_mode(engine, disk):
    r = job(engine, "--path", disk, "--op", "write", "--length", "16k")
    assert (r["async"], r["sqpoll"], r["ptr_bits"]) == (False, False, 64)
    m = job(engine, "--path", disk, "--op", "mix", "--length", "64k", "--ios", "40", "--qd", "4",
            "--async", "--sqpoll")
    assert (m["async"], m["sqpoll"], m["errors"], m["mismatches"]) == (True, True, 0, 0)
    b = job(engine, "--path", disk, "--op", "randwrite", "--length", "64k", "--ios", "40", "--sqpoll",
            "--async")
    assert b["res_counts"] == {"4096": 40} and b["sqpoll"] is True


def test_async_and_sqpoll_passthru_on_char_device_without_uring_cmd(engine):
    """/dev/zero has no ->uring_cmd: through io-wq and the SQ thread too, -errno and no crash."""
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    r = job(engine, "--path", "/dev/zero", "--op", "write", "--length", "8k", "--vec", "2", "--async",
            "--sqpoll")
    assert r["mode"] == "passthru" and (r["async"], r["sqpoll"]) == (True, True)
    assert r["errors"] == 2 and all(res < 0 for res in r["results"])


def test_makefile_builds_engine32_with_m32_and_the_i386_liburing(tmp_path):
    """`make vblk-engine32` compiles every source -m32 (warnings are errors) against LIBURING32."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    _copy_sources(tmp_path)
    out = subprocess.run(["make", "-n", "-C", str(tmp_path), "vblk-engine32", "LIBURING32=/x/liburing.a"],
                         capture_output=True, text=True, check=True).stdout
    cmd = out.replace("\\\n", " ")
    assert "-m32" in cmd and "-Werror" in cmd and "-static" in cmd and "/x/liburing.a" in cmd
    assert "-D_FILE_OFFSET_BITS=64" in cmd and "-luring" not in cmd
    assert all(src in cmd for src in ("vblk-engine.c", "prep.c", "setup.c", "bench.c"))
    clean = subprocess.run(["make", "-n", "-C", str(tmp_path), "clean"], capture_output=True, text=True).stdout
    assert "vblk-engine32" in clean


@pytest.fixture(scope="module")
def engine32(tmp_path_factory):
    """A freshly built vblk-engine32, where gcc -m32 and the i386 liburing.a exist (the image's
    initramfs stage); else skip with the reason."""
    if not I386_LIBURING_A.exists():
        pytest.skip(f"{I386_LIBURING_A} missing (the image's initramfs stage unpacks it)")
    build = tmp_path_factory.mktemp("engine32-build")
    _copy_sources(build)
    proc = subprocess.run(["make", "-C", str(build), "vblk-engine32"], capture_output=True, text=True,
                          timeout=300)
    if proc.returncode and "cannot find" in proc.stderr:
        pytest.skip(f"no 32-bit toolchain (gcc-multilib): {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, f"vblk-engine32 build failed:\n{proc.stdout}\n{proc.stderr}"
    binary = build / "vblk-engine32"
    probe = subprocess.run([str(binary), "--path", "/dev/null", "--op", "flush"], capture_output=True,
                           text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"vblk-engine32 does not run here (IA32 emulation?): {probe.returncode} {probe.stderr}")
    return binary


@pytest.mark.parametrize("mode", [[], ["--async"], ["--sqpoll"]])
def test_engine32_block_path_iovec(engine32, disk, mode):
    """The block path takes a 32-bit caller's iovec array in every mode (io_uring's own compat)."""
    w = job(engine32, "--path", disk, "--op", "write", "--length", "64k", "--bs", "16k", "--vec", "4",
            "--seed", "9", *mode)
    assert w["ptr_bits"] == 32 and w["errors"] == 0
    assert disk.read_bytes()[:65536] == pattern(9, 0, 65536)
    v = job(engine32, "--path", disk, "--op", "verify", "--length", "64k", "--bs", "16k", "--vec", "4",
            "--seed", "9", *mode)
    assert (v["errors"], v["mismatches"]) == (0, 0)


@pytest.mark.parametrize("mode", [[], ["--async"], ["--sqpoll"]])
def test_compat_ring_block_path_takes_32_bit_iovec_arrays(engine, disk, mode):
    """--compat-ring: io_uring's WRITEV/READV parse the packed 32-bit arrays (they would fault as
    64-bit ones), so the ring is a compat ring in every issue mode."""
    w = subprocess.run([str(engine), "--path", str(disk), "--op", "write", "--length", "64k", "--bs", "16k",
                        "--vec", "4", "--qd", "2", "--seed", "11", "--compat-ring", *mode], capture_output=True, text=True,
                       timeout=60)
    if w.returncode == 3 and "io_uring setup failed" in w.stderr:
        pytest.skip(f"no 32-bit io_uring_setup here (IA32 emulation?): {w.stderr.strip()}")
    assert w.returncode == 0, w.stderr
    r = json.loads(w.stdout)
    assert (r["compat_ring"], r["ptr_bits"], r["errors"]) == (True, 64, 0)
    assert disk.read_bytes()[:65536] == pattern(11, 0, 65536)
    v = job(engine, "--path", disk, "--op", "verify", "--length", "64k", "--bs", "16k", "--vec", "4",
            "--seed", "11", "--compat-ring", *mode)
    assert (v["errors"], v["mismatches"]) == (0, 0)
    assert job(engine, "--path", disk, "--op", "verify", "--length", "16k")["compat_ring"] is False


def test_compat_ring_refuses_fixed_buffers(engine, disk):
    proc = run(engine, "--path", disk, "--op", "write", "--compat-ring", "--fixed", expect_rc=2)
    assert "--compat-ring cannot go with --fixed" in proc.stderr


# -- range fields, --protect-buf, --fail-nth-sweep, --load-module (issue 11 coverage) ---------------


def test_range_field_overrides_are_reported(engine):
    if not os.path.exists("/dev/zero"):
        pytest.skip("/dev/zero is missing")
    d = job(engine, "--path", "/dev/zero", "--op", "write-zeroes", "--range-num-sectors", "0",
            "--range-flags", "0x80000001")
    assert (d["range_num_sectors"], d["range_flags"]) == (0, 0x80000001)
    plain = job(engine, "--path", "/dev/zero", "--op", "discard")
    assert (plain["range_num_sectors"], plain["range_flags"], plain["protect_buf"]) == (None, None, False)


@pytest.mark.parametrize("args,msg", [
    (["--op", "read", "--range-flags", "1"], "--range-num-sectors/--range-flags take --op discard or write-zeroes"),
    (["--op", "read", "--range-num-sectors", "0x100000000"], "bad 32-bit number"),
    (["--op", "read", "--protect-buf"], "--protect-buf takes --op read or verify with --defer-taskrun"),
    (["--op", "write", "--protect-buf", "--defer-taskrun"], "--protect-buf takes --op read or verify"),
    (["--op", "read", "--protect-buf", "--defer-taskrun", "--qd", "2"], "--protect-buf takes"),
    (["--op", "read", "--fail-nth-sweep", "--length", "8k"], "--fail-nth-sweep takes a basic op with --qd 1"),
    (["--op", "randread", "--fail-nth-sweep"], "--fail-nth-sweep takes a basic op"),
])
def test_coverage_options_usage(engine, args, msg):
    proc = run(engine, "--path", "x", *args, expect_rc=2)
    assert proc.stdout == "" and msg in proc.stderr


def test_range_fields_need_a_passthrough_device(engine, disk):
    proc = run(engine, "--path", disk, "--op", "discard", "--range-flags", "1", expect_rc=2)
    assert "--range-num-sectors/--range-flags need a passthrough char device" in proc.stderr


def test_protect_buf_runs_one_read_and_restores_the_buffer(engine, disk):
    """On a regular file the outcome depends on the filesystem (O_DIRECT pins the pages at submission:
    4096; a buffered read copies after the protection: -EFAULT); the guest's driver-copyout check is the
    real test. Here: one read, reported, and the engine carries on (the buffer is writable again)."""
    job(engine, "--path", disk, "--op", "write", "--length", "4k")
    prot = job(engine, "--path", disk, "--op", "read", "--defer-taskrun", "--protect-buf")
    assert prot["results"] in ([-14], [4096])
    assert (prot["ios"], prot["protect_buf"], prot["defer_taskrun"]) == (1, True, True)
    plain = job(engine, "--path", disk, "--op", "verify", "--defer-taskrun")
    assert (plain["results"], plain["mismatches"]) == ([4096], 0)


def test_fail_nth_sweep_without_fail_nth_is_a_runtime_error(engine, disk):
    if os.path.exists("/proc/thread-self/fail-nth"):
        pytest.skip("this host kernel has fail-nth: the sweep would really inject")
    proc = run(engine, "--path", disk, "--op", "write", "--fail-nth-sweep", expect_rc=1)
    assert proc.stdout == "" and "No such file or directory" in proc.stderr


@pytest.mark.parametrize("args", [[], ["--from", "1"], ["--from", "2", "--to", "1"], ["--to", "3"],
                                  ["--from", "1", "--to", "2", "--bogus", "x"]])
def test_load_module_usage(engine, tmp_path, args):
    proc = run(engine, "--load-module", tmp_path / "x.ko", *args, expect_rc=2)
    assert proc.stdout == "" and "vblk-engine --load-module KO --from N --to M" in proc.stderr
