"""Unit tests for vblk-ci fuzz: generator determinism, the errno table, the disk model,
the judge, the shrinker, the C repro writer (it must compile against liburing) and
the guest executor's program format (run on the host against /dev/zero, a char device
without ->uring_cmd, so every command comes back -EOPNOTSUPP and links are cancelled).
"""

import json
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from vblk_ci.errors import UsageError
from vblk_ci.fuzz.generator import generate, mutate, mutations, valid_step
from vblk_ci.fuzz.judge import judge
from vblk_ci.fuzz.model import GARBAGE, POISON, DiskModel
from vblk_ci.fuzz.program import CMD_IO_VEC
from vblk_ci.fuzz.program import T_DISCARD, T_FLUSH, T_GET_ID, T_IN, T_OUT, T_WRITE_ZEROES, Program, Step, parse
from vblk_ci.fuzz.repro import ANY, expected_plan, write_repro_c
from vblk_ci.fuzz.shrink import shrink
from vblk_ci.fuzz.table import (
    EACCES, ECANCELED, EFAULT, EINVAL, ENOTTY, EOPNOTSUPP, EPERM, ERANGE, EROFS, ROW_NAMES, Caller, DiskConfig, expect,
)
from vblk_ci.kernel_features import takes_fixed_vec

ENGINE_SRC = Path(__file__).resolve().parents[2] / "guest-agent" / "engine"
LIBURING_A = Path("/usr/lib/x86_64-linux-gnu/liburing.a")

D512 = DiskConfig("fz0", "fuzz-d0", 16 << 20)
D4K = DiskConfig("fz1", "fuzz-d1", 8 << 20, lbs=4096, discard=False, write_zeroes=False)
D612 = DiskConfig("fz0", "fuzz-d0", 16 << 20, fixed_vec=False)  # as the 6.12 backport sees it
DRO = DiskConfig("fz2", "fuzz-ro", 4 << 20, read_only=True)
DISKS = [D512, D4K, DRO]


def prog(*steps, disk="fz0", **kw):
    return Program(disk=disk, **kw).with_steps(steps)


def acc(step, disk=D512, caller=Caller(), **kw):
    return expect(step, prog(step, disk=disk.name, **kw), disk, caller).accepted


READ = Step(type=T_IN, sector=8, len=4096)
WRITE = Step(type=T_OUT, sector=8, len=4096, seed=77)


# -- generator -------------------------------------------------------------------------


def test_generator_is_deterministic_for_a_seed():
    a = [generate(5, i, DISKS).text() for i in range(50)]
    b = [generate(5, i, DISKS).text() for i in range(50)]
    assert a == b
    assert a != [generate(6, i, DISKS).text() for i in range(50)]
    assert len(set(a)) == 50


def test_generated_programs_round_trip_through_the_text_format():
    for i in range(200):
        p = generate(11, i, DISKS)
        q = parse(p.text())
        assert q.text() == p.text()
        assert q.steps == p.steps and q.disk == p.disk and q.seed == p.seed


def test_generator_reaches_every_mutation_and_valid_steps_pass_the_table():
    import random

    rng = random.Random(3)
    seen = set()
    for disk in DISKS:
        for typ in (T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES):
            for _ in range(30):
                step = valid_step(rng, disk, typ)
                if not disk.read_only and not (typ == T_DISCARD and not disk.discard) and \
                        not (typ == T_WRITE_ZEROES and not disk.write_zeroes):
                    assert acc(step, disk) == {0}, step
                for what in mutations(step, disk):
                    seen.add(what)
                    mutate(rng, step, disk, what)  # never raises
    assert {"wrap", "beyond", "too-many-iov", "range-wrap", "sector-misaligned", "unmapped"} <= seen


def test_mutations_are_refused_by_the_table():
    import random

    rng = random.Random(9)
    for what in ("cmd-op", "flag", "type", "ioprio-bad", "beyond", "wrap", "zero-len", "unmapped", "huge-len",
                 "fixed-oob", "len-misaligned"):
        for _ in range(20):
            step = mutate(rng, valid_step(rng, D512, T_OUT), D512, what)
            assert 0 not in acc(step), (what, step)


# -- the errno table ---------------------------------------------------------------------


@pytest.mark.parametrize("step,disk,kw,expected", [
    (READ, D512, {}, {0}),
    (WRITE, D512, {"sqe": 64}, {-EOPNOTSUPP}),
    (replace(READ, cmd_op=3), D512, {}, {-ENOTTY}),
    (replace(READ, flag=1), D512, {}, {-EINVAL}),
    (replace(READ, type=14), D512, {}, {-EINVAL}),
    (replace(READ, sector=9), D4K, {}, {-EINVAL}),
    (replace(READ, len=4096 + 512), D4K, {}, {-EINVAL}),
    (replace(READ, len=0), D512, {}, {-EINVAL}),
    (replace(READ, sector=D512.capacity), D512, {}, {-ERANGE}),
    (replace(READ, sector=D512.capacity - 7), D512, {}, {-ERANGE}),
    (replace(READ, sector=(1 << 64) - 8), D512, {}, {-ERANGE}),  # sector + 8 wraps to 0
    (replace(READ, buf="unmapped"), D512, {}, {-EFAULT}),
    (replace(READ, buf="fixed-oob"), D512, {}, {-EFAULT}),
    (replace(READ, cmd_op=CMD_IO_VEC, len=0, iov=(512,) * 255), D512, {}, {-EINVAL}),
    (replace(READ, cmd_op=CMD_IO_VEC, len=0, iov=(512,) * 254), D512, {}, {0}),
    # a registered buffer with an iovec array: valid on 7.3, refused by the 6.12 backport
    (replace(READ, cmd_op=CMD_IO_VEC, len=0, iov=(4096,), buf="fixed"), D512, {}, {0}),
    (replace(READ, cmd_op=CMD_IO_VEC, len=0, iov=(4096,), buf="fixed"), D612, {}, {-EINVAL}),
    (replace(READ, cmd_op=CMD_IO_VEC, len=0, iov=(4096,), buf="fixed-oob"), D512, {}, {0}),
    (replace(READ, cmd_op=CMD_IO_VEC, len=0, iov=(128 << 10,) * 3, buf="fixed"), D512, {}, {0, -EFAULT}),
    (WRITE, DRO, {}, {-EROFS}),
    (Step(type=T_FLUSH), DRO, {}, {0, -EROFS}),  # left open (review-v2 #11)
    (Step(type=T_DISCARD, ranges=((0, 8, 0),)), D4K, {}, {-EOPNOTSUPP}),
    (Step(type=T_WRITE_ZEROES, ranges=((0, 8, 0),)), D4K, {}, {-EOPNOTSUPP}),
    (Step(type=T_WRITE_ZEROES, ranges=((0, 8, 1),)), D512, {}, {0}),
    (Step(type=T_DISCARD, ranges=((0, 8, 1),)), D512, {}, {-EINVAL}),
    (Step(type=T_DISCARD, ranges=((0, 8, 0), (8, 8, 0))), D512, {}, {-EINVAL}),
    (Step(type=T_DISCARD, ranges=((D512.capacity - 4, 8, 0),)), D512, {}, {-ERANGE}),
    (Step(type=T_DISCARD, ranges=(((1 << 64) - 8, 16, 0),)), D512, {}, {-ERANGE}),
    (Step(type=T_DISCARD, ranges=((0, 8, 0),), data_len=24), D512, {}, {-EINVAL}),
    (Step(type=T_FLUSH, sector=8), D512, {}, {-EINVAL}),
    (Step(type=T_GET_ID, len=20), D512, {}, {0}),
    (Step(type=T_GET_ID, len=21), D512, {}, {-EINVAL}),
    (replace(READ, ioprio=4 << 13), D512, {}, {-EINVAL}),
    (replace(READ, ioprio=(2 << 13) | 5), D512, {}, {0}),
    (replace(READ, flag=1, sector=D512.capacity), D512, {}, {-EINVAL, -ERANGE}),  # any refusal that applies
])
def test_errno_table(step, disk, kw, expected):
    assert acc(step, disk, **kw) == expected


def test_root_passes_whatever_the_open_mode_and_others_get_eacces_for_changes_only():
    exp = expect(WRITE, prog(WRITE, mode="ro"), D512)
    assert exp.accepted == {0} and exp.notes == ("root on an O_RDONLY fd",)
    assert acc(READ, mode="wo") == {0}
    user = Caller(root=False, uid=1000)
    flush, get_id = Step(type=T_FLUSH), Step(type=T_GET_ID, len=20)
    discard = Step(type=T_DISCARD, ranges=((0, 8, 0),))
    for change in (WRITE, discard, Step(type=T_WRITE_ZEROES, ranges=((0, 8, 0),))):
        assert acc(change, caller=user, mode="ro") == {-EACCES}
        assert acc(change, caller=user, mode="wo") == {0}
        assert acc(change, DRO, caller=user, mode="ro") == {-EACCES, -EROFS}  # either refusal
        assert acc(change, DRO, caller=user, mode="rw") == {-EROFS}
    # NVMe's rule: reading, GET_ID and FLUSH need no particular open mode
    for step in (READ, get_id, flush):
        for mode in ("ro", "wo", "rw"):
            assert acc(step, caller=user, mode=mode) == {0}, (step, mode)
    # the fd's mode is noted where v2 refuses by it: a permission errno there is one bug (#5)
    assert expect(flush, prog(flush, mode="ro"), D512, user).notes == ("uid 1000 on an O_RDONLY fd",)
    assert expect(READ, prog(READ, mode="wo"), D512, user).notes == ("uid 1000 on an O_WRONLY fd",)
    assert expect(READ, prog(READ, mode="ro"), D512, user).notes == ()
    # ioprio_check_cap(): the RT class needs CAP_SYS_NICE (seen: a uid 1000 FLUSH, ioprio 0x2005, -EPERM)
    assert acc(replace(flush, ioprio=(1 << 13) | 5), caller=user) == {-EPERM}
    assert acc(replace(flush, ioprio=(1 << 13) | 5)) == {0}
    assert acc(replace(READ, ioprio=(2 << 13) | 5), caller=user) == {0}
    # by default the caller is who the program runs as
    assert expect(WRITE, replace(prog(WRITE, mode="ro"), user=1000), D512).accepted == {-EACCES}


def test_every_row_has_a_name_and_the_protocol_documents_each():
    text = (ENGINE_SRC.parent / "PROTOCOL.md").read_text()
    assert len(set(ROW_NAMES)) == len(ROW_NAMES)
    for name in ROW_NAMES:
        assert name in text, f"PROTOCOL.md does not document the errno table row {name!r}"


def test_disk_config_from_sysfs():
    feats = ["0"] * 64
    for bit in (9, 13):
        feats[bit] = "1"
    c = DiskConfig.from_sysfs("fz0", "s", {"size": "32768", "ro": "0", "queue/logical_block_size": "4096",
                                           "queue/max_segments": "126", "queue/max_discard_segments": "1",
                                           "queue/discard_max_hw_bytes": "2147483136",
                                           "queue/write_zeroes_max_bytes": "0", "device/features": "".join(feats)})
    assert (c.capacity, c.lbs, c.max_segments, c.flush, c.discard, c.write_zeroes) == (32768, 4096, 126, True,
                                                                                       True, False)


# -- the model -----------------------------------------------------------------------------


def test_model_tracks_writes_zeroes_discards_and_unknowns():
    m = DiskModel(100)
    assert m.check_read(0, [[4, 0]]) == []
    m.write(2, 4, 9)
    assert m.check_read(0, [[2, 0], [4, 9], [2, 0]]) == []
    bad = m.check_read(0, [[2, 0], [4, POISON], [2, 0]])
    assert [b.sector for b in bad] == [2, 3, 4, 5] and "no data arrived" in bad[0].describe()
    m.discard(3, 1)
    assert m.allowed(3) == {9, 0}
    assert m.check_read(3, [[1, 0]]) == [] and m.check_read(3, [[1, 9]]) == []
    m.zero(4, 1)
    assert m.check_read(4, [[1, 9]])[0].allowed == {0}
    m.forget(5, 1)
    assert m.check_read(5, [[1, GARBAGE]]) == []
    m.write(98, 10, 3)  # clipped at the end of the disk
    assert m.allowed(99) == {3} and m.allowed(100) is None  # past the end: not modelled (readable only grown)
    u = DiskModel(10, initial_known=False)
    assert u.check_read(0, [[10, GARBAGE]]) == []


# -- the judge -----------------------------------------------------------------------------


def test_judge_applies_writes_and_flags_a_data_mismatch():
    p = prog(WRITE, READ)
    m = DiskModel(D512.capacity)
    v = judge(p, [{"i": 0, "res": 0}, {"i": 1, "res": 0, "sectors": [[8, 77]]}], D512, m)
    assert v.findings == [] and v.outcomes == [("write", "ok"), ("read", "ok")]
    v = judge(p, [{"i": 0, "res": 0}, {"i": 1, "res": 0, "sectors": [[7, 77], [1, 0]]}], D512, m)
    assert [f.signature for f in v.findings] == ["data|read|aligned|zeroes"]


def test_judge_errno_finding_has_a_stable_signature_and_model_follows_the_observed_result():
    p = prog(WRITE, READ, mode="ro")
    m = DiskModel(D512.capacity)
    v = judge(p, [{"i": 0, "res": -9}, {"i": 1, "res": 0, "sectors": [[8, 0]]}], D512, m)
    assert [f.signature for f in v.findings] == ["errno|write-type|root on an O_RDONLY fd|-EBADF"]
    assert m.allowed(8) == {0}  # the refused write changed nothing


def test_judge_expects_ecanceled_after_a_failed_link_and_device_status_is_a_finding():
    bad = replace(READ, flag=1, link=True)
    p = prog(bad, READ)
    v = judge(p, [{"i": 0, "res": -EINVAL}, {"i": 1, "res": -ECANCELED}], D512, DiskModel(D512.capacity))
    assert v.findings == [] and v.rules["linked to a failed command"] == 1
    wrap = replace(READ, sector=(1 << 64) - 8)
    v = judge(prog(wrap), [{"i": 0, "res": 1}], D512, DiskModel(D512.capacity))
    assert v.findings[0].signature == "errno|read|sector + length wraps past 2^64|dev-status-1"


def test_judge_under_a_blkdebug_fault_accepts_the_device_status_and_forgets_failed_writes():
    model = DiskModel(D512.capacity)
    judge(prog(WRITE), [{"i": 0, "res": 0}], D512, model)  # the sectors hold seed 77
    wrap = replace(WRITE, sector=(1 << 64) - 8)
    res = [{"i": 0, "res": 1}, {"i": 1, "res": 1}, {"i": 2, "res": 1}]
    v = judge(prog(replace(WRITE, seed=78), READ, wrap), res, D512, model, device_errors=frozenset({T_OUT}))
    # the write failed by the device is no finding; the read of the same type-set is (reads were not
    # failed), and a wrapping write still is #2: the kernel must refuse it before the device
    assert [f.signature for f in v.findings] == ["errno|read|valid|dev-status-1",
                                                 "errno|write|sector + length wraps past 2^64|dev-status-1"]
    assert model.allowed(8) is None  # what the failed write left is unknown
    v = judge(prog(READ), [{"i": 0, "res": 0, "sectors": [[8, 0]]}], D512, model)
    assert v.findings == []  # zeroes are as good as anything there now


def test_judge_after_an_unplug_accepts_any_failure_but_not_wrong_data():
    model = DiskModel(D512.capacity)
    judge(prog(WRITE), [{"i": 0, "res": 0}], D512, model)  # sectors 8.. hold seed 77
    res = [{"i": 0, "res": -19}, {"i": 1, "res": -5}]
    v = judge(prog(replace(WRITE, seed=78), READ), res, D512, model, unplugged=True)
    assert v.findings == [] and v.rules["the disk was unplugged"] == 2
    assert model.allowed(8) is None  # the write failed as the device went: part of it may be there
    model = DiskModel(D512.capacity)
    v = judge(prog(READ), [{"i": 0, "res": 0, "sectors": [[8, 5]]}], D512, model, unplugged=True)
    assert [f.signature for f in v.findings] == ["data|read|aligned|other-seed|unplug"]


def test_judge_while_the_disk_grew_takes_either_capacity_and_no_data_past_the_old_end():
    end = D512.capacity
    past = replace(READ, sector=end)  # the first sector past the end, 8 of them
    across = replace(WRITE, sector=end - 4, seed=79)  # 4 sectors before the end, 4 after
    ok = [{"i": 0, "res": 0, "sectors": [[8, -1]]}, {"i": 1, "res": 0}]
    # without the fault, a read past the end that succeeds is the capacity check missing
    v = judge(prog(past, across), ok, D512, DiskModel(end))
    assert [f.signature for f in v.findings] == ["errno|read|beyond capacity|ok", "errno|write|beyond capacity|ok"]
    # grown by 8 sectors: both capacities are right, and what is past the old end is not modelled
    model = DiskModel(end)
    v = judge(prog(past, across), ok, D512, model, resized=end + 8)
    assert v.findings == [] and v.rules["the disk had grown"] == 2
    assert model.allowed(end - 4) == frozenset({79}) and model.allowed(end) is None
    v = judge(prog(past, across), [{"i": 0, "res": -34}, {"i": 1, "res": -34}], D512, DiskModel(end), resized=end + 8)
    assert v.findings == []  # checked before the guest saw the new size
    # grown by less than the read: it is still past the end, and a finding says resize
    v = judge(prog(past), ok[:1], D512, DiskModel(end), resized=end + 1)
    assert [f.signature for f in v.findings] == ["errno|read|beyond capacity|ok|resize"]
    # grown before the program, and the guest showed it: -ERANGE now means a stale capacity
    v = judge(prog(past), [{"i": 0, "res": -34}], D512, DiskModel(end), resized=end + 8, resized_before=True)
    assert [f.signature for f in v.findings] == ["errno|read|valid|-ERANGE|resize"]
    v = judge(prog(past), ok[:1], D512, DiskModel(end), resized=end + 8, resized_before=True)
    assert v.findings == [] and v.rules["the disk had grown"] == 1


def test_judge_while_the_disk_shrank_takes_either_capacity_and_the_devices_refusal_past_the_new_end():
    end = D512.capacity
    last = replace(READ, sector=end - 8)  # the last 8 sectors: past an end shrunk by 8
    inside = replace(READ, sector=0)
    ok = [{"i": 0, "res": 0, "sectors": [[8, 0]]}]  # zeroes, as the model knows the disk
    # before the guest saw the shrink: it succeeds; after: -ERANGE; between the file's cut and
    # the guest's new size: QEMU fails it (IOERR, a positive cqe->res)
    for res, rule in ((0, None), (-34, "the disk had shrunk"), (10, "the disk had shrunk")):
        v = judge(prog(last), [dict(ok[0], res=res)], D512, DiskModel(end), resized=end - 8)
        assert v.findings == [], (res, v.findings)
        assert rule is None or v.rules[rule] == 1
    # without the fault, -ERANGE inside the disk is a finding; with it, a device error is one
    # too where the shrunk disk still holds the whole command
    v = judge(prog(last), [{"i": 0, "res": -34}], D512, DiskModel(end))
    assert [f.signature for f in v.findings] == ["errno|read|valid|-ERANGE"]
    v = judge(prog(inside), [{"i": 0, "res": 10}], D512, DiskModel(end), resized=end - 8)
    assert [f.signature for f in v.findings] == ["errno|read|valid|dev-status-10|resize"]


def test_judge_reports_a_hang():
    v = judge(prog(READ), [{"i": 0, "hang": True}], D512, DiskModel(D512.capacity))
    assert v.findings[0].kind == "hang"


# -- the shrinker --------------------------------------------------------------------------


def test_shrink_finds_the_minimal_pair():
    steps = list(range(20))
    runs = []

    def reproduces(c):
        runs.append(list(c))
        return 3 in c and 17 in c

    out, n = shrink(steps, reproduces, focus=17, max_runs=100)
    assert out == [3, 17] and n == len(runs)


def test_shrink_tries_the_failing_step_alone_first_and_respects_the_budget():
    out, n = shrink(list(range(10)), lambda c: 6 in c, focus=6, max_runs=100)
    assert out == [6] and n == 1
    out, n = shrink(list(range(30)), lambda c: False, focus=None, max_runs=5)
    assert n == 5 and out == list(range(30))


# -- the C repro writer ---------------------------------------------------------------------


def test_expected_plan_follows_the_contract_forward():
    p = prog(WRITE, replace(READ, link=True), Step(type=T_DISCARD, ranges=((8, 8, 0),)),
             replace(READ, sector=0, len=8192))
    plan = expected_plan(p, D512)
    assert [x.accepted for x in plan] == [(0,), (0,), (0,), (0,)]
    assert plan[1].tags == ((77, -3),) * 8
    assert plan[3].tags == ((ANY, -3),) * 8 + ((0, 77),) * 8
    p = prog(replace(READ, flag=1, link=True), READ)
    assert [x.accepted for x in expected_plan(p, D512)] == [(-EINVAL,), (-ECANCELED,)]


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
def test_repro_c_compiles(tmp_path):
    if not Path("/usr/include/liburing.h").exists():
        pytest.skip("liburing-dev not installed")
    for i in range(8):
        p = generate(21, i, DISKS)
        if i % 2:
            p = replace(p, user=1000)
        disk = {d.name: d for d in DISKS}[p.disk]
        src = tmp_path / f"repro{i}.c"
        src.write_text(write_repro_c(p, disk, "errno|write|valid|root on an O_RDONLY fd|-EBADF */ x"))
        proc = subprocess.run(["gcc", "-O2", "-static", "-Wall", "-Wextra", "-Werror", "-o", str(tmp_path / f"r{i}"), str(src),
                               "-luring"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr


# -- the guest executor, on the host ----------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    if shutil.which("make") is None or shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("needs make and a C compiler")
    if not LIBURING_A.exists():
        pytest.skip(f"{LIBURING_A} missing")
    build = tmp_path_factory.mktemp("fuzz-engine")
    for src in ENGINE_SRC.iterdir():
        if src.suffix in (".c", ".h") or src.name == "Makefile":
            shutil.copy(src, build / src.name)
    proc = subprocess.run(["make", "-C", str(build)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return build / "vblk-engine"


def _run(engine, text, dev="/dev/zero"):
    return subprocess.run([str(engine), "--program", "-", "--dev", dev], input=text, capture_output=True,
                          text=True, timeout=60)


def test_executor_runs_a_generated_program_one_line_per_step(engine):
    for i in range(5):
        p = generate(2, i, DISKS)
        proc = _run(engine, p.text())
        if proc.returncode == 3 and "io_uring setup failed" in proc.stderr:
            pytest.skip(proc.stderr.strip())
        assert proc.returncode == 0, proc.stderr
        lines = [json.loads(x) for x in proc.stdout.splitlines()]
        assert [x["i"] for x in lines] == list(range(len(p.steps)))
        # no ->uring_cmd on /dev/zero: refused, and the rest of a chain cancelled
        assert {x["res"] for x in lines} <= {-EOPNOTSUPP, -ECANCELED}


def test_executor_cancels_the_rest_of_a_chain_and_rejects_bad_lines(engine):
    text = ("ring sqe=128\nopen mode=ro\nstep op=1 type=0 sector=0 len=512 link=1\n"
            "step op=2 type=0 iov=512x2 buf=misaligned\nstep op=1 type=1 len=512 seed=3 buf=fixed async=1\n")
    proc = _run(engine, text)
    if proc.returncode == 3:
        pytest.skip(proc.stderr.strip())
    assert [json.loads(x)["res"] for x in proc.stdout.splitlines()] == [-EOPNOTSUPP, -ECANCELED, -EOPNOTSUPP]
    proc = _run(engine, "ring sqe=128\nopen mode=rw\nstep bogus=1\n")
    assert proc.returncode == 2 and "line 3: unknown step field: bogus" in proc.stderr


def test_judge_checks_only_the_iovecs_data_len_names():
    step = Step(type=T_IN, cmd_op=CMD_IO_VEC, sector=0, iov=(512, 512, 512), data_len=2)
    v = judge(prog(step), [{"i": 0, "res": 0, "sectors": [[2, 0], [1, POISON]]}], D512, DiskModel(D512.capacity))
    assert v.findings == []


def test_a_disabled_mutation_is_never_drawn_and_generation_stays_deterministic():
    progs = [generate(1, i, DISKS, disabled=frozenset({"huge-len"})) for i in range(300)]
    assert "huge-len" not in {m for p in progs for m in p.meta["mutations"]}
    assert [p.text() for p in progs[:20]] == [generate(1, i, DISKS, disabled=frozenset({"huge-len"})).text()
                                              for i in range(20)]
    assert "huge-len" in {m for i in range(300) for m in generate(1, i, DISKS).meta["mutations"]}


def test_scribble_round_trips_and_marks_commands_issued_later():
    p = prog(replace(WRITE, link=True), READ, replace(READ, async_=True), READ, scribble=True)
    assert parse(p.text()).scribble and "scribble=1" in p.text()
    v = judge(p, [{"i": 0, "res": 0}, {"i": 1, "res": -EINVAL}, {"i": 2, "res": -EINVAL}, {"i": 3, "res": 0,
                                                                                         "sectors": [[8, 77]]}],
              D512, DiskModel(D512.capacity))
    assert [f.signature for f in v.findings] == ["errno|issued-late|SQ slot reused after submit (linked)|-EINVAL",
                                                 "errno|issued-late|SQ slot reused after submit (IOSQE_ASYNC)|-EINVAL"]
    assert sum(generate(4, i, DISKS).scribble for i in range(100)) in range(15, 46)


def test_a_wrong_answer_of_a_late_command_keeps_the_signature_of_its_rows():
    wrap = replace(READ, sector=(1 << 64) - 8)
    p = prog(replace(READ, link=True), wrap, scribble=True)
    v = judge(p, [{"i": 0, "res": 0, "sectors": [[8, 0]]}, {"i": 1, "res": 1}], D512, DiskModel(D512.capacity))
    assert [f.signature for f in v.findings] == ["errno|read|sector + length wraps past 2^64|dev-status-1"]


@pytest.fixture
def world_dir():
    """A directory anyone may traverse (pytest's tmp_path sits under a 0700 one)."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="vblk-fuzz-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_executor_user_line_drops_privileges_before_the_ring_and_the_fd(engine, world_dir):
    if os.geteuid() != 0:
        pytest.skip("needs root to switch users")
    node = world_dir / "node"
    node.write_bytes(b"\0" * 4096)
    node.chmod(0o600)
    text = "user uid=65534 gid=65534\nring sqe=128\nopen mode=ro\nstep op=1 type=0 len=512\n"
    proc = _run(engine, text, dev=str(node))
    if "io_uring setup failed" in proc.stderr or "register buffers" in proc.stderr:
        pytest.skip(proc.stderr.strip())
    # root's 0600 node: the user may not open it
    assert proc.returncode == 3 and "Permission denied" in proc.stderr, proc.stderr
    os.chown(node, 65534, 65534)
    proc = _run(engine, text, dev=str(node))
    if proc.returncode == 3 and ("io_uring" in proc.stderr or "register" in proc.stderr):
        pytest.skip(proc.stderr.strip())
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(x)["res"] for x in proc.stdout.splitlines()] == [-EOPNOTSUPP]  # no ->uring_cmd
    proc = _run(engine, "ring sqe=128\nuser uid=65534 gid=65534\n", dev=str(node))
    assert proc.returncode == 2 and "before any ring or open" in proc.stderr


def test_user_and_abi_round_trip_and_decide_the_caller():
    p = replace(generate(4, 0, DISKS), user=1000, abi="i386")
    text = p.text()
    assert "# abi i386\n" in text and text.index("user uid=1000 gid=1000") < text.index("ring ")
    back = parse(text)
    assert (back.user, back.abi) == (1000, "i386") and back.steps == p.steps
    assert Caller.of(back) == Caller(root=False, uid=1000) and Caller.of(replace(back, user=None)).root
    with pytest.raises(UsageError):
        parse("# disk fz0\n# abi arm\n")
    with pytest.raises(UsageError):
        parse("# disk fz0\nuser uid=1 gid=2\n")


def test_mutation_names_list_every_mutation():
    from vblk_ci.fuzz.generator import MUTATION_NAMES

    steps = [valid_step(__import__("random").Random(1), d, t) for d in DISKS
             for t in (T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES)]
    steps.append(replace(READ, cmd_op=2, len=0, iov=(512, 512)))
    drawn = {m for d in DISKS for s in steps for m in mutations(s, d)}
    assert drawn == set(MUTATION_NAMES)


def test_the_guest_kernel_release_decides_fixed_vectored_buffers():
    assert takes_fixed_vec("7.3.4") and takes_fixed_vec("6.15.0-rc1") and takes_fixed_vec("")
    assert not takes_fixed_vec("6.12.118") and not takes_fixed_vec("6.12.117-vblk+")
    assert not DiskConfig.from_sysfs("fz0", "s", {"size": "32768"}, "6.12.118").fixed_vec
    assert DiskConfig.from_sysfs("fz0", "s", {"size": "32768"}, "7.3.4").fixed_vec
