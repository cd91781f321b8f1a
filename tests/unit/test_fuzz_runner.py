"""vblk-ci fuzz's campaign loop against a fake machine: a fake guest whose "driver" follows
the errno table except for one planted bug (v2's capacity wrap: the command reaches the
device, which answers VIRTIO_BLK_S_IOERR), and keeps the disks' data so reads are judged.
The campaign must find the bug, shrink it to one step, write program, shrunk program and
repro.c, and the figures must add up; a replay of the shrunk program must find it again.
"""

import json
import os
import re
import shlex
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from vblk_ci.fuzz import runner as R
from vblk_ci.machine.accel import Accel
from vblk_ci.machine.argv import BASE_CMDLINE
from vblk_ci.fuzz.program import T_DISCARD, T_GET_ID, T_IN, T_OUT, parse
from vblk_ci.fuzz.table import U64, DiskConfig, data_bytes, effects, expect


class FakeConsole:
    def mark(self):
        return 0

    def findings(self, mark=0):
        return []

    def text_since(self, mark=0):
        return ""


CONFIGS = {"fz0": DiskConfig("fz0", "fuzz-d0", 16 << 20), "fz1": DiskConfig("fz1", "fuzz-d1", 8 << 20, lbs=4096,
                                                                             discard=False, write_zeroes=False),
           "fz2": DiskConfig("fz2", "fuzz-ro", 4 << 20, read_only=True)}
DEVS = {"/dev/vdac0": "fz0", "/dev/vdbc0": "fz1", "/dev/vdcc0": "fz2"}
QMP_CALLS: list[str] = []
GUEST_SH: list[str] = []
EXECUTED: list[tuple[str, object]] = []  # (executor, program) per run
ENGINE32_RUNS = True
UNPLUGGED: set[str] = set()  # disks device_del took away (until plugged again)
ARMED: dict[str, str] = {}  # disk id -> the blkdebug iotype its requests fail with (EIO)
DATA: dict[str, dict[int, int]] = {}  # disk -> sector -> tag, kept across boots like the image files
SIZES: dict[str, int] = {}  # disk -> bytes, where block_resize changed it
RESIZES: list[tuple[str, int]] = []  # (disk, bytes) per block_resize
STALE_CAPACITY = False  # a planted bug: the driver checks against the size it had at probe
RESET_RC = "0"  # what the guest's reset left in its status file ("" : it never returned)
RESET_PREPARE = True  # the guest's virtio_blk has reset_prepare (in /proc/kallsyms)
RESETS: list[str] = []  # the wrapped command line of each program run beside a device reset
PARAMS: list[tuple[str, str]] = []  # (virtio_blk module parameter, value) written, in order
REBOOTING: list[bool] = []  # a system_reset was sent and the guest has not come back yet
COMES_BACK = True  # the guest boots again after a system_reset


def fake_driver(text: str, dev: str) -> str:
    prog = parse(text)
    disk = CONFIGS[DEVS[dev]]
    if not STALE_CAPACITY:  # the driver reads the capacity per command
        disk = replace(disk, size_bytes=SIZES.get(disk.name, disk.size_bytes))
    data = DATA.setdefault(disk.name, {})
    out, broken = [], set()
    chain_of = {i: n for n, c in enumerate(prog.chains()) for i in c}
    for i, step in enumerate(prog.steps):
        exp = expect(step, prog, disk)  # as the program's caller
        res = -125 if chain_of[i] in broken else (0 if 0 in exp.accepted else max(exp.accepted))
        if "sector + length wraps past 2^64" in exp.rules and chain_of[i] not in broken:
            res = 1  # the planted bug: the wrap is not caught, the device refuses
        if disk.name in UNPLUGGED and i >= len(prog.steps) // 2 and chain_of[i] not in broken:
            res = -19  # the device went away half-way through: -ENODEV from then on
        if res == 0 and {"read": T_IN, "write": T_OUT, "discard": T_DISCARD}.get(ARMED.get(disk.name)) == step.type:
            res = 1  # blkdebug: the device fails it (VIRTIO_BLK_S_IOERR)
        line = {"i": i, "res": res}
        if res == 0 and step.type == T_IN and data_bytes(step):
            n = data_bytes(step) // 512
            line["sectors"] = [[1, data.get(step.sector + k, 0)] for k in range(n)]
        if res == 0 and step.type == T_GET_ID:
            line["id"] = disk.serial
        if res == 0:
            for kind, s, n, seed in effects(step, disk):
                for k in range(s, s + n):
                    data[k] = seed if kind == "write" else 0
        if res < 0:
            broken.add(chain_of[i])
        out.append(json.dumps(line))
    return "\n".join(out) + "\n"


class FakeAgent:
    def __init__(self):
        self.runs = 0

    def call(self, method, params, timeout=10.0):
        assert method == "sysfs"
        d = CONFIGS[{"vda": "fz0", "vdb": "fz1", "vdc": "fz2"}[params["name"]]]
        feats = ["0"] * 64
        for bit, on in ((9, d.flush), (13, d.discard), (14, d.write_zeroes)):
            feats[bit] = "1" if on else "0"
        return {"size": str(d.capacity), "ro": str(int(d.read_only)), "queue/logical_block_size": str(d.lbs),
                "queue/max_segments": "254", "queue/max_discard_segments": "1",
                "queue/discard_max_hw_bytes": str(0xFFFFFFFF * 512), "queue/write_zeroes_max_bytes": str(0xFFFFFFFF * 512),
                "device/features": "".join(feats)}

    def write_file(self, path, data, timeout=10.0):
        assert path.startswith("/sys/module/virtio_blk/parameters/"), path
        PARAMS.append((path.rsplit("/", 1)[1], data))

    def read_file(self, path, max_bytes=1 << 20, timeout=10.0):
        if path.startswith("/sys/block/"):  # the campaign waits for the size after a shrink
            d = CONFIGS[{"vda": "fz0", "vdb": "fz1", "vdc": "fz2"}[path.split("/")[3]]]
            return f"{SIZES.get(d.name, d.size_bytes) // 512}\n"
        assert path == "/proc/sys/kernel/osrelease"
        return "7.3.4\n"

    def wait_disk(self, serial, timeout_s=10.0, chardev=True):
        name = {"fuzz-d0": "vda", "fuzz-d1": "vdb", "fuzz-ro": "vdc"}[serial]
        return {"name": name, "chardev": f"/dev/{name}c0"}

    def exec(self, argv=None, cmd=None, stdin=None, timeout_s=30.0):
        if REBOOTING and stdin is not None:  # the agent that ran the program went with the guest
            from vblk_ci.errors import AgentError
            raise AgentError("Restarted", "the agent started again (the guest rebooted) before it answered")
        if cmd is not None and " exec /usr/bin/vblk-engine" in cmd:  # a program beside a device reset
            RESETS.append(cmd)
            argv = shlex.split(cmd.split(" exec ", 1)[1])
        elif cmd is not None and "virtblk_reset_prepare" in cmd:
            return {"rc": 0 if RESET_PREPARE else 1, "stdout": "", "stderr": ""}
        elif cmd is not None and "vblk-fuzz-reset.rc" in cmd and cmd.startswith("for "):
            return {"rc": 0 if RESET_RC else 1, "stdout": RESET_RC + "\n", "stderr": ""}
        elif cmd is not None:  # the campaign hands the nodes to the user
            GUEST_SH.append(cmd)
            return {"rc": 0, "stdout": "", "stderr": ""}
        if argv[2] == "/dev/null":  # the vblk-engine32 probe
            assert argv[0] == R.EXECUTOR32
            return {"rc": 0 if ENGINE32_RUNS else 126, "stdout": "", "stderr": "" if ENGINE32_RUNS else "exec format"}
        self.runs += 1
        assert argv[:3] == [R.EXECUTOR32 if "# abi i386" in stdin else R.EXECUTOR, "--program", "-"]
        EXECUTED.append((argv[0], parse(stdin)))
        return {"rc": 0, "stdout": fake_driver(stdin, argv[4]), "stderr": ""}


@dataclass
class Plugged:
    guest_name: str
    chardev: str
    seconds_to_visible: float = 0.01


class FakeMachine:
    def __init__(self, spec, run_dir, timeouts=None, caps=None):
        self.spec = spec
        self.timeouts = timeouts
        self.console = FakeConsole()
        self.agent = FakeAgent()
        self.running = False

    def __enter__(self):
        self.running = True
        return self

    def __exit__(self, *exc):
        self.running = False

    def wait_boot(self):
        return 1.0

    def wait_agent(self):
        return 1.5

    def is_running(self):
        return self.running

    def wait_reboot(self, mark):
        if not COMES_BACK:
            from vblk_ci.errors import BootError
            raise BootError("no second boot within 120s after the reset")
        REBOOTING.clear()
        return 2.0

    def qmp(self, cmd, args=None, timeout=None):
        QMP_CALLS.append(cmd)
        if cmd == "system_reset":
            REBOOTING.append(True)
        if cmd == "blockdev-add" and args.get("driver") == "blkdebug":
            ARMED[args["image"].split("-")[0]] = args["inject-error"][0]["iotype"]
        if cmd == "blockdev-del":
            ARMED.clear()
        if cmd == "block_resize":
            disk = args["node-name"].split("-")[0]
            SIZES[disk] = args["size"]
            RESIZES.append((disk, args["size"]))

    def unplug(self, disk_id, timeout=None):
        UNPLUGGED.add(disk_id)
        QMP_CALLS.append("device_del")
        return 0.5

    def hotplug(self, disk, slot, chardev=True):
        if disk.id in UNPLUGGED:
            UNPLUGGED.discard(disk.id)
            QMP_CALLS.append("device_add")
        name = "vd" + "abc"[slot]
        return Plugged(name, f"/dev/{name}c0")


@pytest.fixture
def fake(monkeypatch, tmp_path):
    DATA.clear()
    GUEST_SH.clear()
    EXECUTED.clear()
    ARMED.clear()
    UNPLUGGED.clear()
    SIZES.clear()
    RESIZES.clear()
    RESETS.clear()
    PARAMS.clear()
    REBOOTING.clear()
    monkeypatch.setattr(R, "Machine", FakeMachine)
    monkeypatch.setattr(R, "resolve_binary", lambda q: "/usr/bin/qemu-system-x86_64")
    monkeypatch.setattr(R, "probe_caps", lambda q: None)
    monkeypatch.setattr(R, "choose", lambda q, k, a: Accel("tcg", "fake"))
    kernel, initrd = tmp_path / "bzImage", tmp_path / "initrd"
    kernel.write_text("k")
    initrd.write_text("i")
    return kernel, initrd


def test_campaign_finds_the_planted_wrap_bug_and_writes_it_out(fake, tmp_path, monkeypatch):
    kernel, initrd = fake
    ticks = iter(range(0, 10**6))
    monkeypatch.setattr(R.time, "monotonic", lambda: next(ticks) * 0.01)  # ~100 programs of budget
    monkeypatch.setattr(R.time, "sleep", lambda s: None)
    out = tmp_path / "out"
    rec = R.run_campaign(R.FuzzPlan(kernel=kernel, initramfs=initrd, out=out, seed=3, budget_s=20.0))
    sigs = {f["signature"] for f in rec["findings"]}
    assert sigs and all("wraps past 2^64" in s and s.removesuffix("|i386").endswith("dev-status-1")
                       for s in sigs), sigs
    assert rec["programs"] > 5 and rec["commands"] > rec["programs"]
    assert sum(rec["classes"].values()) == rec["commands"]
    assert rec["boots"] == 1 and "partial" not in json.loads((out / "fuzz.json").read_text())
    f = rec["findings"][0]
    folder = Path(f["folder"])
    shrunk = parse((folder / "shrunk.txt").read_text())
    assert len(shrunk.steps) == 1 and shrunk.steps[0].sector + data_bytes(shrunk.steps[0]) // 512 >= U64
    assert "REPRODUCED" in (folder / "repro.c").read_text()
    assert len((out / "programs.jsonl").read_text().splitlines()) == rec["programs"]
    # the replay finds it again, judged on its own
    rep = R.run_replay(R.FuzzPlan(kernel=kernel, initramfs=initrd, out=tmp_path / "replay",
                                  replay=folder / "shrunk.txt"))
    assert [x["signature"] for x in rep["findings"]] == [f["signature"]]


def test_stop_cont_faults_pause_a_fifth_of_the_programs(fake, tmp_path, monkeypatch):
    kernel, initrd = fake
    QMP_CALLS.clear()
    ticks = iter(range(0, 10**6))
    monkeypatch.setattr(R.time, "monotonic", lambda: next(ticks) * 0.01)
    monkeypatch.setattr(R.time, "sleep", lambda s: None)
    rec = R.run_campaign(R.FuzzPlan(kernel=kernel, initramfs=initrd, out=tmp_path / "o", seed=3, budget_s=20.0,
                                    faults=("stop-cont",)))
    assert rec["programs_with_fault"] > 0 and rec["faults"] == ["stop-cont"]
    # every stop is followed by its cont (shrink runs may pause too)
    assert len(QMP_CALLS) >= 2 * rec["programs_with_fault"]
    assert QMP_CALLS == ["stop", "cont"] * (len(QMP_CALLS) // 2)
    assert 0.1 < rec["programs_with_fault"] / rec["programs"] < 0.35


def test_max_programs_stops_the_campaign_at_a_fixed_amount_of_work(fake, tmp_path, monkeypatch):
    kernel, initrd = fake
    ticks = iter(range(0, 10**6))
    monkeypatch.setattr(R.time, "monotonic", lambda: next(ticks) * 0.01)
    monkeypatch.setattr(R.time, "sleep", lambda s: None)
    runs = []
    for n in (1, 2):
        DATA.clear()  # a new --out: new, empty disk images
        rec = R.run_campaign(R.FuzzPlan(kernel=kernel, initramfs=initrd, out=tmp_path / f"o{n}", seed=3,
                                        budget_s=1e6, max_programs=12))
        runs.append(rec)
        assert rec["programs"] == 12 and rec["stopped"] == "max-programs" and rec["max_programs"] == 12
    # the same programs: the same figures and findings, whatever the wall time
    assert runs[0]["commands"] == runs[1]["commands"] and runs[0]["classes"] == runs[1]["classes"]
    assert [f["signature"] for f in runs[0]["findings"]] == [f["signature"] for f in runs[1]["findings"]]
    short = R.run_campaign(R.FuzzPlan(kernel=kernel, initramfs=initrd, out=tmp_path / "o3", seed=3, budget_s=0.5,
                                      max_programs=10**6))
    assert short["stopped"] == "budget" and short["programs"] < 10**6


@pytest.mark.parametrize("engine32", [True, False])
def test_user_and_i386_programs_run_as_drawn_or_as_x86_64_without_engine32(fake, tmp_path, monkeypatch, engine32):
    kernel, initrd = fake
    monkeypatch.setattr(R.time, "sleep", lambda s: None)
    monkeypatch.setattr(sys.modules[__name__], "ENGINE32_RUNS", engine32)
    rec = R.run_campaign(R.FuzzPlan(kernel=kernel, initramfs=initrd, out=tmp_path / "o", seed=3, budget_s=1e6,
                                    max_programs=60))
    assert GUEST_SH == [f"chown 1000:1000 /dev/vd{x}c0 && chmod 0600 /dev/vd{x}c0" for x in "abc"]
    abis = {prog.abi for exe, prog in EXECUTED}
    assert all((exe == R.EXECUTOR32) == (prog.abi == "i386") for exe, prog in EXECUTED)
    assert abis == ({"x86_64", "i386"} if engine32 else {"x86_64"})
    assert (rec["engine32"] == "ok") == engine32
    assert sum(rec["callers"].values()) == 60 and rec["callers"].get("uid x86_64", 0) > 0
    users = [prog for _, prog in EXECUTED if prog.user is not None]
    assert users and all(prog.user == 1000 for prog in users)
    # the planted bug found from a 32-bit caller is its own signature
    sigs = {f["signature"] for f in rec["findings"]}
    assert any(s.endswith("|i386") for s in sigs) == engine32, sigs


def test_blkdebug_eio_fails_one_request_type_around_a_fifth_of_the_programs(fake, tmp_path, monkeypatch):
    kernel, initrd = fake
    QMP_CALLS.clear()
    monkeypatch.setattr(R.time, "sleep", lambda s: None)
    rec = R.run_campaign(R.FuzzPlan(kernel=kernel, initramfs=initrd, out=tmp_path / "o", seed=3, budget_s=1e6,
                                    max_programs=150, faults=("blkdebug-eio",)))
    # each armed program: blkdebug node added, format re-pointed, ... re-pointed back, node deleted
    assert QMP_CALLS == ["blockdev-add", "blockdev-reopen", "blockdev-reopen", "blockdev-del"] * (len(QMP_CALLS) // 4)
    armed = len(QMP_CALLS) // 4
    assert rec["programs_with_fault"] == armed and 0.1 < armed / 150 < 0.3
    # the device's IOERR under the fault is no finding: only the planted wrap bug is
    sigs = {f["signature"] for f in rec["findings"]}
    assert sigs and all("wraps past 2^64" in s for s in sigs), sigs
    assert rec["rules"]["the device fails it (blkdebug)"] > 0


def test_unplug_takes_the_disk_away_mid_program_and_plugs_it_back(fake, tmp_path, monkeypatch):
    kernel, initrd = fake
    QMP_CALLS.clear()
    monkeypatch.setattr(R.time, "sleep", lambda s: None)
    monkeypatch.setattr(R.Unplug, "start", lambda self: self.run())  # gone before the fake executor runs
    monkeypatch.setattr(R.Unplug, "join", lambda self, timeout=None: None)
    rec = R.run_campaign(R.FuzzPlan(kernel=kernel, initramfs=initrd, out=tmp_path / "o", seed=3, budget_s=1e6,
                                    max_programs=150, faults=("unplug",)))
    assert QMP_CALLS == ["device_del", "device_add"] * (len(QMP_CALLS) // 2) and QMP_CALLS
    assert rec["programs_with_fault"] == len(QMP_CALLS) // 2 and 0.03 < rec["programs_with_fault"] / 150 < 0.2
    assert not UNPLUGGED and rec["boots"] == 1
    # -ENODEV after the unplug is no finding; the node is handed to the user again on each plug
    assert rec["rules"]["the disk was unplugged"] > 0 and rec["classes"].get("read -ENODEV", 0) > 0
    sigs = {f["signature"] for f in rec["findings"]}
    assert all("wraps past 2^64" in s and not s.endswith("|unplug") for s in sigs), sigs
    assert len(GUEST_SH) == 3 + rec["programs_with_fault"]


def test_a_program_is_never_both_under_blkdebug_and_unplugged(fake, tmp_path, monkeypatch):
    kernel, initrd = fake
    monkeypatch.setattr(R.time, "sleep", lambda s: None)
    fuzzer = R.Fuzzer(R.FuzzPlan(kernel=kernel, initramfs=initrd, out=tmp_path / "o", seed=3,
                                 faults=("blkdebug-eio", "unplug", "stop-cont")), lambda e: None)
    fuzzer.boot()
    kinds = [{type(f).__name__ for f in fuzzer.faults_for(R.generate(3, i, list(fuzzer.configs.values())))}
             for i in range(400)]
    assert not any({"BlkdebugEio", "Unplug"} <= k for k in kinds)
    assert all(any(n in k for k in kinds) for n in ("BlkdebugEio", "Unplug", "StopCont"))


def test_unplug_iopoll_unplugs_only_polled_programs_about_half(fake, tmp_path):
    kernel, initrd = fake
    fuzzer = R.Fuzzer(R.FuzzPlan(kernel=kernel, initramfs=initrd, out=tmp_path / "o", seed=3,
                                 faults=("unplug-iopoll",)), lambda e: None)
    fuzzer.boot()
    progs = [R.generate(3, i, list(fuzzer.configs.values())) for i in range(400)]
    hit = [p for p in progs if fuzzer.faults_for(p)]
    assert hit and all(p.iopoll for p in hit)
    assert 0.35 < len(hit) / sum(p.iopoll for p in progs) < 0.65


def _grow_in_line(monkeypatch):
    """A grow during the program lands before its first command here (in the guest, anywhere)."""
    start, join = R.Resize.start, R.Resize.join
    monkeypatch.setattr(R.Resize, "start", lambda self: start(self) if self.before else self.run())
    monkeypatch.setattr(R.Resize, "join", lambda self, timeout=None: join(self) if self.before else None)


def test_resize_grows_writable_disks_and_shrinks_them_back(fake, tmp_path, monkeypatch):
    kernel, initrd = fake
    monkeypatch.setattr(R.time, "sleep", lambda s: None)
    _grow_in_line(monkeypatch)
    fuzzer = R.Fuzzer(R.FuzzPlan(kernel=kernel, initramfs=initrd, out=tmp_path / "f", seed=3, faults=("resize",)),
                      lambda e: None)
    fuzzer.boot()
    grows = [f for i in range(400) for f in fuzzer.faults_for(R.generate(3, i, list(fuzzer.configs.values())))]
    assert all(isinstance(g, R.Resize) for g in grows) and 0.3 < sum(g.before for g in grows) / len(grows) < 0.7
    # a quarter shrink the disk, by at most half of it, and only during a program
    shrinks = [g for g in grows if g.extra < 0]
    assert 0.1 < len(shrinks) / len(grows) < 0.4 and not any(g.before for g in shrinks)
    assert all(g.resized >= g.disk.size_bytes // 1024 for g in shrinks)
    rec = R.run_campaign(R.FuzzPlan(kernel=kernel, initramfs=initrd, out=tmp_path / "o", seed=3, max_programs=150,
                                    faults=("resize",)))
    assert rec["faults"] == ["resize"] and 0.1 < rec["programs_with_fault"] / 150 < 0.3
    # each resize is followed by one back to the disk's own size; the read-only disk is never resized
    resizes, backs = RESIZES[0::2], RESIZES[1::2]
    assert len(resizes) == len(backs) and len(resizes) >= rec["programs_with_fault"]
    assert all(d == d2 and n != n2 == CONFIGS[d].size_bytes for (d, n), (d2, n2) in zip(resizes, backs)), RESIZES
    assert {d for d, _ in resizes} <= {"fz0", "fz1"} and all(n % CONFIGS[d].lbs == 0 for d, n in resizes)
    assert {n > CONFIGS[d].size_bytes for d, n in resizes} == {True, False}
    # commands aimed past the old end succeed on the grown disk, those near the end are refused
    # on the shrunk one, and neither is a finding
    assert rec["rules"]["the disk had grown"] > 0 and rec["rules"]["the disk had shrunk"] > 0
    sigs = {f["signature"] for f in rec["findings"]}
    assert all("wraps past 2^64" in s for s in sigs), sigs
    assert rec["boots"] == 1


def test_a_guest_that_keeps_the_grown_size_is_a_finding(fake, tmp_path, monkeypatch):
    kernel, initrd = fake
    monkeypatch.setattr(R.time, "sleep", lambda s: None)
    ticks = iter(range(0, 10**6))
    monkeypatch.setattr(R.time, "monotonic", lambda: next(ticks) * 1.0)
    _grow_in_line(monkeypatch)
    real_qmp = FakeMachine.qmp

    def no_shrink(self, cmd, args=None, timeout=None):  # a guest that misses the second config change
        if cmd == "block_resize" and args["size"] == CONFIGS[args["node-name"].split("-")[0]].size_bytes:
            QMP_CALLS.append(cmd)
            return None
        return real_qmp(self, cmd, args, timeout)

    monkeypatch.setattr(FakeMachine, "qmp", no_shrink)
    fuzzer = R.Fuzzer(R.FuzzPlan(kernel=kernel, initramfs=initrd, out=tmp_path / "o", seed=3,
                                 faults=("resize",)), lambda e: None)
    fuzzer.boot()
    for kept, grew in (("grown", True), ("shrunk", False)):
        program = next(p for p in (R.generate(3, i, list(fuzzer.configs.values())) for i in range(400))
                       if fuzzer.faults_for(p) and not fuzzer.faults_for(p)[0].before
                       and (fuzzer.faults_for(p)[0].extra > 0) == grew)
        if not fuzzer.alive():
            fuzzer.boot()
        outcome = fuzzer.execute(program)
        assert outcome.status == "hang" and outcome.finding.signature == f"hang|resize|the guest kept the {kept} capacity"
        assert "still shows" in outcome.finding.detail


def test_a_driver_that_keeps_the_old_capacity_is_found_when_the_disk_grew_first(fake, tmp_path, monkeypatch):
    kernel, initrd = fake
    monkeypatch.setattr(R.time, "sleep", lambda s: None)
    _grow_in_line(monkeypatch)
    monkeypatch.setattr(sys.modules[__name__], "STALE_CAPACITY", True)
    rec = R.run_campaign(R.FuzzPlan(kernel=kernel, initramfs=initrd, out=tmp_path / "o", seed=3, max_programs=150,
                                    faults=("resize",)))
    sigs = {f["signature"] for f in rec["findings"]}
    stale = {s for s in sigs if s.endswith("|resize") and "-ERANGE" in s}
    assert stale and sigs - stale <= {s for s in sigs if "wraps past 2^64" in s}, sigs


def test_a_disk_file_a_grow_left_behind_is_cut_back_at_boot(fake, tmp_path):
    kernel, initrd = fake
    fuzzer = R.Fuzzer(R.FuzzPlan(kernel=kernel, initramfs=initrd, out=tmp_path / "o", seed=3), lambda e: None)
    fuzzer.boot()
    fuzzer.stop()
    img = fuzzer.specs[0].path
    os.truncate(img, fuzzer.specs[0].size_bytes + (1 << 20))  # grown, and the VM went down before the shrink
    fuzzer.boot()
    assert img.stat().st_size == fuzzer.specs[0].size_bytes


def test_reset_resets_the_device_mid_program_and_changes_no_result(fake, tmp_path, monkeypatch):
    kernel, initrd = fake
    monkeypatch.setattr(R.time, "sleep", lambda s: None)
    rec = R.run_campaign(R.FuzzPlan(kernel=kernel, initramfs=initrd, out=tmp_path / "o", seed=3, budget_s=1e6,
                                    max_programs=150, faults=("reset",)))
    assert rec["reset"] == "drawn" and rec["faults"] == ["reset"] and rec["boots"] == 1
    assert 0.05 < rec["programs_with_fault"] / 150 < 0.3 and len(RESETS) >= rec["programs_with_fault"]
    # the reset runs in the background of the program's own shell, on the disk's PCI function
    for cmd in RESETS:
        assert re.match(r"\(sleep 0\.\d{3}; echo 1 > \$\(readlink -f /sys/block/vd[abc]/device/\.\.\)/reset; ", cmd), cmd
    sigs = {f["signature"] for f in rec["findings"]}
    assert all("wraps past 2^64" in s.removesuffix("|reset") for s in sigs), sigs


def test_a_device_reset_that_never_returns_is_a_hang_finding(fake, tmp_path, monkeypatch):
    kernel, initrd = fake
    monkeypatch.setattr(R.time, "sleep", lambda s: None)
    monkeypatch.setattr(sys.modules[__name__], "RESET_RC", "")
    fuzzer = R.Fuzzer(R.FuzzPlan(kernel=kernel, initramfs=initrd, out=tmp_path / "o", seed=3, faults=("reset",)),
                      lambda e: None)
    fuzzer.boot()
    program = next(p for p in (R.generate(3, i, list(fuzzer.configs.values())) for i in range(400))
                   if fuzzer.faults_for(p))
    outcome = fuzzer.execute(program)
    assert outcome.status == "hang" and outcome.finding.signature == "hang|reset|the device reset never returned"
    assert "had not returned" in outcome.finding.detail and not fuzzer.alive()  # rebooted before the next program


def test_findings_of_a_program_run_beside_a_reset_end_in_reset(fake, tmp_path, monkeypatch):
    # the planted wrap bug, found in programs that had a reset too: those are their own signature
    kernel, initrd = fake
    monkeypatch.setattr(R.time, "sleep", lambda s: None)
    rec = R.run_campaign(R.FuzzPlan(kernel=kernel, initramfs=initrd, out=tmp_path / "o", seed=3, budget_s=1e6,
                                    max_programs=150, faults=("reset",)))
    sigs = {f["signature"] for f in rec["findings"]}
    assert any(s.endswith("|reset") for s in sigs) and any(not s.endswith("|reset") for s in sigs), sigs
    # the replay line draws the same faults from the program's seed
    assert all(f["replay"].endswith(" --faults reset") for f in rec["findings"]), rec["findings"][0]["replay"]


def test_reset_is_not_drawn_where_virtio_blk_has_no_reset_prepare(fake, tmp_path, monkeypatch):
    kernel, initrd = fake
    monkeypatch.setattr(R.time, "sleep", lambda s: None)
    monkeypatch.setattr(sys.modules[__name__], "RESET_PREPARE", False)
    rec = R.run_campaign(R.FuzzPlan(kernel=kernel, initramfs=initrd, out=tmp_path / "o", seed=3, budget_s=1e6,
                                    max_programs=60, faults=("reset",)))
    assert rec["reset"].startswith("--faults reset not drawn: this kernel's virtio_blk has no reset_prepare")
    assert not RESETS and rec["programs_with_fault"] == 0


def test_every_disk_has_one_poll_queue_from_the_kernel_command_line(fake, tmp_path):
    # IOPOLL programs poll for real only on a poll queue; virtio_blk reads the parameter at
    # every probe (hot-plug, device reset, the boot after a system reset): the command line
    # covers them all, derived from the disks, with no write to /sys/module besides
    kernel, initrd = fake
    fuzzer = R.Fuzzer(R.FuzzPlan(kernel=kernel, initramfs=initrd, out=tmp_path / "o", seed=3), lambda e: None)
    fuzzer.boot()
    assert {d.guest_poll_queues for d in fuzzer.specs} == {1}
    assert fuzzer.machine.spec.append == ("virtio_blk.poll_queues=1", "virtio_blk.num_request_queues=0")
    assert PARAMS == []


def test_the_record_names_the_command_line_the_guest_booted(fake, tmp_path):
    kernel, initrd = fake
    rec = R.run_campaign(R.FuzzPlan(kernel=kernel, initramfs=initrd, out=tmp_path / "o", seed=3, budget_s=1e6,
                                    max_programs=2))
    assert rec["kernel_cmdline"] == " ".join((*BASE_CMDLINE, "virtio_blk.poll_queues=1",
                                              "virtio_blk.num_request_queues=0"))


def test_disks_that_disagree_on_the_global_queue_parameters_are_refused(tmp_path):
    disks = R.fuzz_disks(tmp_path)
    disks[1] = replace(disks[1], guest_poll_queues=2)
    with pytest.raises(ValueError, match="disagree on virtio_blk's queue parameters"):
        R.guest_cmdline(disks)


def _reset_in_line(monkeypatch):
    """The system_reset lands before the program's first command (in the guest, anywhere)."""
    monkeypatch.setattr(R.MachineReset, "start", lambda self: self.run())
    monkeypatch.setattr(R.MachineReset, "join", lambda self, timeout=None: None)


def test_system_reset_reboots_the_guest_mid_program_and_the_campaign_goes_on(fake, tmp_path, monkeypatch):
    kernel, initrd = fake
    QMP_CALLS.clear()
    monkeypatch.setattr(R.time, "sleep", lambda s: None)
    _reset_in_line(monkeypatch)
    rec = R.run_campaign(R.FuzzPlan(kernel=kernel, initramfs=initrd, out=tmp_path / "o", seed=3, budget_s=1e6,
                                    max_programs=200, faults=("system-reset",)))
    # a twentieth of the programs; each one a reset the guest came back from, in the same QEMU
    assert 3 <= rec["system_resets"] == rec["programs_with_fault"] <= 25 and rec["boots"] == 1
    assert QMP_CALLS.count("system_reset") == rec["system_resets"] and not REBOOTING
    # reboot=reset for the reset, reboot=shutdown again after it
    assert QMP_CALLS.count("set-action") == 2 * rec["system_resets"]
    # lost results are no finding; what the programs wrote before is still judged
    sigs = {f["signature"] for f in rec["findings"]}
    assert all("wraps past 2^64" in s.removesuffix("|system-reset") for s in sigs), sigs


def test_a_guest_that_does_not_come_back_from_a_system_reset_is_a_finding(fake, tmp_path, monkeypatch):
    kernel, initrd = fake
    monkeypatch.setattr(R.time, "sleep", lambda s: None)
    monkeypatch.setattr(sys.modules[__name__], "COMES_BACK", False)
    _reset_in_line(monkeypatch)
    fuzzer = R.Fuzzer(R.FuzzPlan(kernel=kernel, initramfs=initrd, out=tmp_path / "o", seed=3,
                                 faults=("system-reset",)), lambda e: None)
    fuzzer.boot()
    program = next(p for p in (R.generate(3, i, list(fuzzer.configs.values())) for i in range(400))
                   if fuzzer.faults_for(p))
    outcome = fuzzer.execute(program)
    assert outcome.status == "hang" and outcome.finding.signature == "hang|system-reset|the guest did not come back"
    assert "no second boot" in outcome.finding.detail and not fuzzer.alive()
