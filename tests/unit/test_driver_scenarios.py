"""The driver suite's scenarios against a fake machine whose fake driver follows the
documented contract (PROTOCOL.md, the series' cover letter) -- and against the same
fake with one fault injected, to prove each check catches exactly its defect.

No QEMU: ``FakeGuest`` models what the scenarios look at (disks, nodes and their
modes, the engine's results, debugfs, /proc/interrupts, QEMU's per-virtqueue used
index, background jobs across a hot-unplug).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vblk_ci import events as E
from vblk_ci.console.classify import Finding
from vblk_ci.disks.spec import DiskSpec
from vblk_ci.errors import AgentError, MachineTimeout, QmpError
from vblk_ci.machine.argv import MachineSpec
from vblk_ci.machine.machine import Machine, Timeouts
from vblk_ci.scenarios import SUITES, ScenarioContext, suite
from vblk_ci.scenarios.driver_common import eargs, errno_text, expect_results
from vblk_ci.scenarios.driver_iopoll import expected_layout, interrupts_of, parse_cpu_list
from vblk_ci.scenarios.driver_ops import DriverOps
from vblk_ci.scenarios.driver_permissions import DriverPermissions
from vblk_ci.scenarios.driver_refusals import DriverRefusals
from vblk_ci.scenarios.driver_iopoll import DriverIopoll
from vblk_ci.scenarios.driver_unplug import DriverUnplug
from vblk_ci.errors import CheckFailed

MAX_SEGMENTS = 254
TYPES = {"read": 0, "verify": 0, "write": 1, "flush": 4, "get-id": 8, "discard": 11, "write-zeroes": 13}
WRITES = {1, 4, 11, 13}
FLAGS = {"sqe64", "rdonly", "wronly", "bad-ptr", "iopoll", "fixed", "zero", "unmap", "expect-error", "bench"}


def parse(args: list[str]) -> dict:
    opts: dict = {}
    it = iter(args)
    for a in it:
        key = a[2:]
        opts[key] = True if key in FLAGS else next(it)
    for k in ("offset", "length", "bs", "qd", "seed", "ios", "vec", "uid", "gid", "type", "cmd-op", "flag",
              "ranges"):
        if k in opts:
            opts[k] = int(opts[k], 0)
    return opts


@dataclass
class FakeDisk:
    spec: DiskSpec
    name: str
    minor: int
    pq: int  # poll virtqueues
    vqs: int
    mode: int = 0o600
    uid: int = 0
    gid: int = 0
    data: dict = field(default_factory=dict)  # 512-byte sector -> seed (0 = zeroes)
    used: list = field(default_factory=list)  # QEMU's used index per virtqueue
    irqs: int = 0

    @property
    def chardev(self) -> str:
        return f"/dev/{self.name}c0"


@dataclass
class Job:
    args: dict
    disk: FakeDisk
    running: bool = True
    stopped: bool = False
    marked: bool = False
    good: int = 40
    after: int = 0
    gone: int = 0


class FakeGuest:
    """The guest and the driver under test; ``faults`` switches single behaviours to wrong ones."""

    def __init__(self, faults: set[str] | frozenset = frozenset(), cpus: int = 2, debugfs: bool = True,
                 poll_param: bool = True, x_query: bool = True, kernel_release: str = "7.3.4"):
        self.faults = set(faults)
        self.kernel_release = kernel_release
        self.cpus, self.debugfs, self.poll_param, self.x_query = cpus, debugfs, poll_param, x_query
        self.disks: dict[str, FakeDisk] = {}  # by name
        self.by_id: dict[str, FakeDisk] = {}
        self.slots: dict[str, int] = {}
        self.poll_queues = 0
        self.jobs: dict[int, Job] = {}
        self.pending_unplug: set[str] = set()
        self.held: dict[str, int] = {}  # name -> minor of unplugged disks an open file still pins
        self.calls: list[tuple] = []

    # -- machine side -------------------------------------------------------------------
    def hotplug(self, spec: DiskSpec, slot: int, chardev: bool = True) -> E.DiskPlugged:
        assert slot not in self.slots.values(), f"slot {slot} in use"
        spec.validate()
        if spec.backend == "file":
            assert spec.path.stat().st_size == spec.size_bytes
        index = next(i for i in range(26) if f"vd{chr(97 + i)}" not in {**self.disks, **self.held})
        minor = next(m for m in range(64) if m not in {d.minor for d in self.disks.values()} | set(self.held.values()))
        vqs = min(self.cpus, spec.num_queues)
        pq = min(self.poll_queues, vqs - 1)
        disk = FakeDisk(spec, f"vd{chr(97 + index)}", minor, pq, vqs, used=[0] * vqs)
        self.disks[disk.name] = self.by_id[spec.id] = disk
        self.slots[spec.id] = slot
        return E.DiskPlugged(spec.id, spec.serial, 0.05, disk.name, None)

    def unplug(self, disk_id: str, timeout: float | None = None) -> float:
        disk = self.by_id[disk_id]
        polled_job = any(j.running and j.stopped and j.disk is disk and "iopoll" in j.args and disk.pq
                         for j in self.jobs.values())
        if "polled_unplug_blocks" in self.faults and polled_job:
            self.pending_unplug.add(disk_id)
            raise MachineTimeout(f"no QMP event DEVICE_DELETED matching {{'data': {{'device': '{disk_id}'}}}}")
        if "unplug_blocks" in self.faults:
            raise MachineTimeout("no QMP event DEVICE_DELETED")
        self._remove(disk)
        return 0.1

    def complete_unplug(self, disk_id: str, timeout: float | None = None) -> float:
        disk = self.by_id[disk_id]
        if any(j.running and j.disk is disk for j in self.jobs.values()):
            raise MachineTimeout("still not deleted")
        self.pending_unplug.discard(disk_id)
        self._remove(disk)
        return 0.08

    def _remove(self, disk: FakeDisk) -> None:
        self.calls.append(("unplugged",))
        del self.disks[disk.name]
        del self.by_id[disk.spec.id]
        del self.slots[disk.spec.id]
        for job in self.jobs.values():
            if job.disk is disk:
                job.gone = 1
                if job.running and "reused_while_open" not in self.faults:
                    self.held[disk.name] = disk.minor

    def free_slot(self) -> int | None:
        return next((s for s in range(4) if s not in self.slots.values()), None)

    def qmp(self, cmd: str, args: dict | None = None):
        if cmd == "query-commands":
            names = ["query-status"] + (["x-query-virtio-queue-status"] if self.x_query else [])
            return [{"name": n} for n in names]
        if cmd == "x-query-virtio-queue-status":
            disk_id = args["path"].split("/")[3]
            return {"used-idx": self.by_id[disk_id].used[args["queue"]] % 65536, "queue-index": args["queue"]}
        raise QmpError(cmd, "CommandNotFound", cmd)

    # -- agent side ---------------------------------------------------------------------
    def disk_obj(self, disk: FakeDisk) -> dict:
        return {"name": disk.name, "serial": disk.spec.serial, "size_bytes": disk.spec.size_bytes,
                "logical_block_size": disk.spec.logical_block_size, "read_only": disk.spec.read_only,
                "nr_hw_queues": disk.vqs, "chardev": disk.chardev, "chardev_devno": f"251:{disk.minor}",
                "blockdev": f"/dev/{disk.name}"}

    def wait_disk(self, serial, timeout_s=10.0, chardev=True):
        for disk in self.disks.values():
            if disk.spec.serial == serial:
                if chardev and "no_chardev" in self.faults:
                    raise AgentError("Timeout", f"disk {disk.name} with serial {serial!r} has no usable chardev")
                return self.disk_obj(disk)
        raise AgentError("Timeout", f"no disk with serial {serial!r}")

    def disks_list(self):
        return [self.disk_obj(d) for d in self.disks.values()]

    def wait_disk_gone(self, name, timeout_s=10.0):
        if name in self.disks or "class_entry_stays" in self.faults:
            raise AgentError("Timeout", f"{name} still present: /sys/class/vblk-generic/{name}c0")
        return {"name": name}

    def read_file(self, path: str, max_bytes: int = 1 << 20) -> str:
        if path.endswith("poll_queues"):
            if not self.poll_param:
                raise AgentError("OSError", f"[Errno 2] No such file or directory: '{path}'")
            return f"{self.poll_queues}\n"
        if path == "/proc/sys/kernel/osrelease":
            return f"{self.kernel_release}\n"
        if path == "/sys/devices/system/cpu/possible":
            return f"0-{self.cpus - 1}\n"
        if path == "/proc/interrupts":
            lines = ["           CPU0       CPU1"]
            for i, d in enumerate(self.disks.values()):
                for q in range(d.vqs - d.pq):
                    lines.append(f" {30 + q}:  {d.irqs if q == 0 else 0}  0  PCI-MSIX  {q}-edge  virtio{i + 1}-req.{q}")
            return "\n".join(lines) + "\n"
        m = re.match(r"/sys/block/(\w+)/mq/0/nr_tags$", path)
        if m:
            return f"{self.disks[m.group(1)].spec.queue_size}\n"
        m = re.match(r"/sys/block/(\w+)/queue/(\w+)$", path)
        if m:
            disk = self.disks[m.group(1)]
            key = m.group(2)
            if key == "max_segments":
                return f"{MAX_SEGMENTS}\n"
            feature = disk.spec.discard if key == "discard_max_bytes" else disk.spec.write_zeroes
            if "feature_still_advertised" in self.faults:
                feature = True
            return "2147483136\n" if feature else "0\n"
        raise AgentError("OSError", f"[Errno 2] No such file or directory: '{path}'")

    def write_file(self, path: str, data: str) -> None:
        assert path.endswith("/poll_queues"), path
        if not self.poll_param:
            raise AgentError("OSError", "[Errno 2] No such file or directory")
        self.poll_queues = int(data)

    def exec(self, argv=None, cmd=None, timeout_s=30.0, stdin=None) -> dict:
        self.calls.append(("exec", cmd))
        ok = lambda out="": {"rc": 0, "stdout": out, "stderr": ""}  # noqa: E731
        if cmd.startswith("test -d /sys/kernel/debug/block"):
            return ok() if self.debugfs else {"rc": 1, "stdout": "", "stderr": ""}
        if cmd.startswith("test -w"):
            return ok() if self.poll_param else {"rc": 1, "stdout": "", "stderr": ""}
        if cmd.startswith("stat -L -c"):
            disk = self._by_node(cmd.split()[-1])
            return ok(f"{disk.mode:o} {disk.uid} {disk.gid}\n")
        m = re.match(r"chown (\d+):(\d+) (\S+)(?: && chmod (\d+) \S+)?$", cmd)
        if m:
            disk = self._by_node(m.group(3))
            disk.uid, disk.gid = int(m.group(1)), int(m.group(2))
            if m.group(4):
                disk.mode = int(m.group(4), 8)
            return ok()
        m = re.match(r"cd /sys/kernel/debug/block/(\w+) && for h in hctx\*", cmd)
        if m:
            disk = self.disks[m.group(1)]
            types = self._hctx_types(disk)
            return ok("".join(f"hctx{i} {t}\n" for i, t in enumerate(types)))
        m = re.match(r"cat /sys/kernel/debug/block/(\w+)/hctx\*/type", cmd)
        if m:
            return ok("\n".join(self._hctx_types(self.disks[m.group(1)])) + "\n")
        m = re.match(r"basename \$\(readlink -f /sys/block/(\w+)/device\)", cmd)
        if m:
            return ok(f"virtio{list(self.disks).index(m.group(1)) + 1}\n")
        if "/hctx*/busy" in cmd:
            running = any(j.running for j in self.jobs.values())
            return ok("8\n") if running and "nothing_in_flight" not in self.faults else {"rc": 1, "stdout": "",
                                                                                         "stderr": ""}
        if cmd == "ls /sys/class/vblk-generic/":
            return ok("".join(f"{n}c0\n" for n in self.disks))
        if "State:.D" in cmd:
            blocked = self.pending_unplug
            return ok("10 kworker/u8:0+kacpi_hotplug blk_mq_freeze_queue_wait\n" if blocked else "")
        raise AssertionError(f"unexpected exec: {cmd}")

    def _hctx_types(self, disk: FakeDisk) -> list[str]:
        pq = disk.pq if "wrong_layout" not in self.faults else 0
        return ["default"] * (disk.vqs - pq) + ["poll"] * pq

    def _by_node(self, node: str) -> FakeDisk:
        return next(d for d in self.disks.values() if d.chardev == node.strip("'"))

    # -- the engine, as the driver's contract says it should behave --------------------------
    def engine(self, args, timeout_s=120.0) -> dict:
        self.calls.append(("engine", tuple(args)))
        o = parse(args)
        path = o["path"]
        passthru = path.endswith("c0")
        disk = next(d for d in self.disks.values() if path in (d.chardev, f"/dev/{d.name}"))
        if passthru and "uid" in o:
            self._check_access(disk, o)
        return self._run(disk, o, passthru)

    def _check_access(self, disk: FakeDisk, o: dict) -> None:
        want = 4 if o.get("rdonly") else 6
        if "no_permission_check" in self.faults:
            return
        if o["uid"] == disk.uid:
            have = disk.mode >> 6 & 7
        elif o["gid"] == disk.gid:
            have = disk.mode >> 3 & 7
        else:
            have = disk.mode & 7
        if have & want != want:
            msg = f"vblk-engine: cannot open {o['path']} as uid {o['uid']} gid {o['gid']}: Permission denied\n"
            raise AgentError("EngineFailed", f"vblk-engine exited 3: {msg.strip()}", {"exit_code": 3, "stderr": msg})

    def _ios(self, o: dict) -> list[tuple[int, int]]:
        op, off, bs = o["op"], o.get("offset", 0), o.get("bs", 4096)
        length = o.get("length", bs)
        if op in ("flush", "get-id"):
            return [(off, 0)] * o.get("ios", 1)
        unit = bs * o.get("ranges", 1) if op in ("discard", "write-zeroes") else bs
        return [(off + i, min(unit, length - i)) for i in range(0, length, unit)]

    def _refusal(self, disk: FakeDisk, o: dict, off: int, n: int) -> int:
        spec, f = disk.spec, self.faults
        t = o.get("type", TYPES[o["op"]])
        if o.get("sqe64"):
            return -22 if "sqe64_einval" in f else -95
        if o.get("cmd-op", 1) not in (1, 2):
            return -25
        if o.get("flag", 0):
            return 0 if "flag_ignored" in f else -22
        if t not in TYPES.values():
            return -22
        # v3's nvme_cmd_allowed() rule: CAP_SYS_ADMIN (uid 0 here) passes whatever the open
        # mode; others need a writable fd for a change (FLUSH needs neither), else -EACCES.
        if o.get("rdonly") and t in WRITES - {4} and int(o.get("uid", 0)) != 0:
            return -9 if "v2_ebadf" in f else -13
        if spec.read_only and t in WRITES:
            return 0 if "ro_writable" in f else -30
        lbs = spec.logical_block_size
        if t in (0, 1):
            if o.get("vec", 0) > MAX_SEGMENTS:
                return -22
            if o.get("fixed") and o.get("vec"):
                # 6.12 has no io_uring_cmd_import_fixed_vec(): its backport refuses the combination
                on_612 = self.kernel_release.startswith("6.12")
                if "fixed_vec_refused" in f or (on_612 and "fixed_vec_accepted" not in f):
                    return -22
            if off % lbs or n % lbs:
                return -22
            if off >= spec.size_bytes or off + n > spec.size_bytes:
                return -34
            if o.get("bad-ptr"):
                return -14
        if t == 11 and not spec.discard or t == 13 and not spec.write_zeroes:
            return -95
        for rule in spec.inject_errors:  # blkdebug: the device answers VIRTIO_BLK_S_IOERR
            if t == 0 and rule.sector is not None and off // 512 <= rule.sector < (off + n) // 512:
                return 1
        return 0

    def _run(self, disk: FakeDisk, o: dict, passthru: bool) -> dict:
        spec, op = disk.spec, o["op"]
        results, mismatches = [], 0
        for off, n in self._ios(o):
            res = self._refusal(disk, o, off, n) if passthru else 0
            if res == 0:
                mismatches += self._apply(disk, o, off, n)
                if not passthru and op in ("read", "write", "verify"):
                    res = n
            self._count(disk, o)
            results.append(res)
        ok = [r for r in results if r == (0 if passthru else r)]
        errors = len(results) - len(ok) if passthru else 0
        result = {"exit_code": 0, "op": op, "ios": len(results), "length": o.get("length", o.get("bs", 4096)),
                  "errors": errors, "mismatches": mismatches, "iopoll": bool(o.get("iopoll")), "stderr": "",
                  "bytes": o.get("length", o.get("bs", 4096)) if not errors else 0,
                  "first_error": None if not errors else {"res": next(r for r in results if r)}}
        if len(results) <= 16:
            result["results"] = results
        if op == "get-id":
            result["id"] = "wrong-serial" if "wrong_id" in self.faults else spec.serial
        return result

    def _apply(self, disk: FakeDisk, o: dict, off: int, n: int) -> int:
        """Apply a successful I/O to the disk model; the number of mismatched sectors of a verify."""
        op, spec = o["op"], disk.spec
        sectors = range(off // 512, (off + n) // 512)
        if op == "write" and spec.backend == "file":
            lost = "lost_writes" in self.faults or (
                "queue_full_loses_writes" in self.faults and o.get("qd", 1) > spec.queue_size)
            seed = None if lost else o.get("seed", 1)
            for s in sectors:
                disk.data[s] = seed
        elif op == "write-zeroes" or op == "discard" and "discard_keeps_data" not in self.faults:
            for s in range(off // 512, (off + n) // 512):
                disk.data[s] = 0
        elif op == "verify":
            want = 0 if o.get("zero") else o.get("seed", 1)
            return sum(1 for s in sectors if disk.data.get(s, 0) != want)
        return 0

    def _count(self, disk: FakeDisk, o: dict) -> None:
        polled = o.get("iopoll") and disk.pq and "poll_on_default_queue" not in self.faults
        if polled:
            disk.used[disk.vqs - 1] += 1
        else:
            disk.used[0] += 1
            disk.irqs += 1

    # -- background jobs ------------------------------------------------------------------
    def spawn(self, args) -> int:
        o = parse(args)
        disk = next(d for d in self.disks.values() if d.chardev == o["path"])
        job_id = len(self.jobs) + 1
        self.jobs[job_id] = Job(o, disk)
        return job_id

    def signal_job(self, job_id: int, signal: str) -> bool:
        job = self.jobs[job_id]
        running = job.running
        if signal in ("STOP", "CONT"):
            job.stopped = signal == "STOP"
        elif signal == "USR1" and running:
            job.marked = True
            job.after = 500
        elif signal == "INT" and running and "job_hangs" not in self.faults:
            self._close(job)
        elif signal == "KILL":
            self._close(job)
        return running

    def _close(self, job: Job) -> None:
        """The job ends and closes the char device: an unplugged disk it pinned is released."""
        job.running = False
        if "minor_leak" not in self.faults and job.disk.name not in self.disks:
            self.held.pop(job.disk.name, None)

    def wait_job(self, job_id: int, timeout_s: float = 120.0) -> dict:
        job = self.jobs[job_id]
        assert not (job.stopped and job.running), "waiting for a stopped job"
        if job.running:
            raise AgentError("Timeout", f"job {job_id} still running after {timeout_s:g} s")
        later = -34 if "later_erange" in self.faults else -19
        counts = {"0": job.good}
        if job.gone:
            counts[str(later)] = job.after + 100
        after = {str(later): job.after} if job.marked else {}
        return {"exit_code": 0, "ios": sum(counts.values()), "res_counts": counts, "res_counts_other": 0,
                "res_counts_after_mark": after, "close_ok": "close_fails" not in self.faults,
                "close_errno": 5 if "close_fails" in self.faults else 0, "stderr": ""}


class FakeAgent:
    def __init__(self, guest: FakeGuest):
        self.g = guest

    def __getattr__(self, name):
        return getattr(self.g, name)

    def disks(self):
        return self.g.disks_list()


@dataclass
class FakeConsole:
    found: list = field(default_factory=list)
    crashed: threading.Event = field(default_factory=threading.Event)

    def findings(self, mark: int = 0):
        return list(self.found)


class FakeMachine:
    def __init__(self, guest: FakeGuest, console: FakeConsole | None = None):
        self.guest = guest
        self.agent = FakeAgent(guest)
        self.console = console or FakeConsole()
        self.timeouts = Timeouts()

    def hotplug(self, disk, slot, chardev=True):
        return self.guest.hotplug(disk, slot, chardev)

    def unplug(self, disk_id, timeout=None):
        return self.guest.unplug(disk_id, timeout)

    def complete_unplug(self, disk_id, timeout=None):
        return self.guest.complete_unplug(disk_id, timeout)

    def free_slot(self):
        return self.guest.free_slot()

    def qmp(self, cmd, args=None, timeout=None):
        return self.guest.qmp(cmd, args)


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    """The unplug scenario lets the job run on the dead fd for a moment: not here."""
    from vblk_ci.scenarios import driver_unplug

    monkeypatch.setattr(driver_unplug, "AFTER_MARK_S", 0.0)


def run_scenario(cls, tmp_path: Path, guest: FakeGuest | None = None, console: FakeConsole | None = None):
    guest = guest or FakeGuest()
    rec = E.Recorder()
    ctx = ScenarioContext(cls.name, FakeMachine(guest, console), tmp_path, rec, set())
    reasons = cls().requires(ctx)
    if reasons:
        return reasons, guest, rec
    cls().run(ctx)
    return {c.name: c for c in ctx.checks}, guest, rec


def statuses(checks) -> dict[str, str]:
    return {n: c.status for n, c in checks.items()}


def failing(checks) -> list[str]:
    return [n for n, c in checks.items() if c.status == "fail"]


# -- suite and helpers --------------------------------------------------------------------------


def test_driver_suite_is_registered_and_smoke_unchanged():
    assert SUITES["smoke"] == ("smoke",)
    names = [cls.name for cls in suite("driver")]
    mine = ["driver-ops", "driver-refusals", "driver-permissions", "driver-iopoll", "driver-unplug"]
    assert [n for n in names if n in mine] == mine  # in this order; other scenarios may join the suite
    for cls in suite("driver"):
        assert cls.description and cls.__module__.endswith(cls.name.replace("-", "_"))


def test_eargs_and_errno_text():
    assert eargs("/dev/vdac0", "read", offset=0, bad_ptr=True, vec=None, rdonly=False, cmd_op=3) == [
        "--path", "/dev/vdac0", "--op", "read", "--offset", "0", "--bad-ptr", "--cmd-op", "3"]
    assert errno_text(-22) == "-22 (-EINVAL)"
    assert errno_text(0) == "0 (success)"
    assert errno_text(1) == "1 (VIRTIO_BLK_S_IOERR)"
    assert errno_text(-200) == "-200 (-?)"
    with pytest.raises(CheckFailed, match=r"cqe->res = 0 \(success\), expected -9 \(-EBADF\) \(1 of 2 I/Os\)"):
        expect_results("x", {"results": [-9, 0]}, -9)
    with pytest.raises(CheckFailed, match="no per-I/O results"):
        expect_results("x", {"ios": 40}, 0)


def test_iopoll_helpers():
    assert parse_cpu_list("0-1\n") == 2 and parse_cpu_list("0,2-3") == 3 and parse_cpu_list("0") == 1
    assert expected_layout(0, 2, 4) == (2, 0)
    assert expected_layout(1, 2, 4) == (1, 1)
    assert expected_layout(2, 2, 4) == (1, 1)  # at most all queues but one poll
    assert expected_layout(2, 4, 4) == (2, 2)
    assert expected_layout(3, 1, 4) == (1, 0)
    text = (" 31:    0   17  PCI-MSIX-0000:01:00.0   1-edge      virtio1-req.0\n"
            " 32:    2    3  PCI-MSIX-0000:01:00.0   2-edge      virtio1-req.1\n"
            " 33:    9    9  PCI-MSIX-0000:02:00.0   1-edge      virtio11-req.0\n"
            " 30:    5    0  PCI-MSIX-0000:01:00.0   0-edge      virtio1-config\n")
    assert interrupts_of(text, "virtio1") == {"virtio1-req.0": 17, "virtio1-req.1": 5}


# -- driver-ops ---------------------------------------------------------------------------------


def test_ops_all_pass(tmp_path):
    checks, guest, rec = run_scenario(DriverOps, tmp_path)
    assert set(statuses(checks).values()) == {"pass"}, failing(checks)
    assert list(checks) == ["hotplug", "write-read", "block-write-chardev-read", "iovec", "fixed-buffers",
                            "fixed-buffers-iovec", "flush", "get-id", "discard", "write-zeroes",
                            "write-zeroes-unmap", "unplug", "hotplug-small-queue", "more-in-flight-than-tags",
                            "unplug-small-queue"]
    assert checks["more-in-flight-than-tags"].data["qd"] == 256
    engine = [c[1] for c in guest.calls if c[0] == "engine"]
    block_verify = [parse(list(e)) for e in engine if e[:4] == ("--path", "/dev/vda", "--op", "verify")]
    assert {"path": "/dev/vda", "op": "verify", "offset": 1 << 20, "length": 1 << 20, "qd": 4,
            "seed": 21} in block_verify
    assert any("--vec" in e and "/dev/vdac0" in e and "write" in e for e in engine)
    assert any("--fixed" in e for e in engine)
    assert len(rec.of(E.DiskPlugged)) == 2 and len(rec.of(E.DiskUnplugged)) == 2
    assert not guest.disks


@pytest.mark.parametrize("fault, check, message", [
    ("wrong_id", "get-id", "'wrong-serial'"),
    ("queue_full_loses_writes", "more-in-flight-than-tags", "after a qd 256 write on 16 tags"),
    ("discard_keeps_data", "discard", "block-verify-zero: 2048 mismatched"),
])
def test_ops_single_faults(tmp_path, fault, check, message):
    checks, _, _ = run_scenario(DriverOps, tmp_path, FakeGuest({fault}))
    assert failing(checks) == [check]
    assert message in checks[check].detail


@pytest.mark.parametrize("release, faults, message", [
    ("7.3.4", set(), None),
    ("7.3.4", {"fixed_vec_refused"}, "chardev-write-fixed-vec: 16 I/O errors, first {'res': -22}"),
    ("6.12.118", set(), None),  # the backport refuses what it cannot import
    ("6.12.118", {"fixed_vec_accepted"}, "cqe->res = 0 (success), expected -22 (-EINVAL)"),
])
def test_ops_registered_buffer_with_an_iovec_array_by_kernel(tmp_path, release, faults, message):
    checks, guest, _ = run_scenario(DriverOps, tmp_path, FakeGuest(faults, kernel_release=release))
    check = checks["fixed-buffers-iovec"]
    assert failing(checks) == ([] if message is None else ["fixed-buffers-iovec"])
    assert message is None or message in check.detail
    assert check.data["kernel_release"] == release
    engine = [c[1] for c in guest.calls if c[0] == "engine"]
    assert any("--fixed" in e and "--vec" in e and "write" in e for e in engine)


def test_ops_lost_writes_fail_every_data_check(tmp_path):
    checks, _, _ = run_scenario(DriverOps, tmp_path, FakeGuest({"lost_writes"}))
    # (discard and write-zeroes only check for zeroes, which lost writes leave intact)
    assert failing(checks) == ["write-read", "block-write-chardev-read", "iovec", "fixed-buffers",
                               "fixed-buffers-iovec", "more-in-flight-than-tags"]
    assert "chardev-verify: 2048 mismatched words" in checks["write-read"].detail


def test_ops_hotplug_without_chardev_skips_but_unplugs(tmp_path):
    checks, guest, _ = run_scenario(DriverOps, tmp_path, FakeGuest({"no_chardev"}))
    plugs, unplugs = ("hotplug", "hotplug-small-queue"), ("unplug", "unplug-small-queue")
    assert {checks[n].status for n in plugs} == {"fail"}
    assert {c.status for n, c in checks.items() if n not in plugs + unplugs} == {"skip"}
    assert {checks[n].status for n in unplugs} == {"pass"} and not guest.disks


def test_console_finding_fails_every_check(tmp_path):
    console = FakeConsole([Finding("warning", "WARNING in virtblk_uring_cmd_end_io", "WARNING: ...")])
    console.crashed.set()
    checks, _, rec = run_scenario(DriverOps, tmp_path, console=console)
    assert checks["hotplug"].status == "fail" and "console: WARNING" in checks["hotplug"].detail
    assert [e.title for e in rec.of(E.ConsoleFinding)] == ["WARNING in virtblk_uring_cmd_end_io"]


# -- driver-refusals ----------------------------------------------------------------------------


def test_refusals_all_pass(tmp_path):
    checks, guest, _ = run_scenario(DriverRefusals, tmp_path)
    assert set(statuses(checks).values()) == {"pass"}, {n: c.detail for n, c in checks.items() if c.detail}
    data = checks["iovec-count-over-limit-einval"].data
    assert data["max_segments"] == MAX_SEGMENTS
    assert data["control-vec-254"]["results"] == [0] and data["vec-255"]["results"] == [-22]
    assert "readonly-fd-ebadf" not in checks  # the access table is driver-access's (v3: root passes)
    assert checks["not-negotiated-eopnotsupp"].data["discard"]["results"] == [-95]
    # the refusals go to the 4 KiB-block disk, the not-negotiated ones to the other
    engine = [c[1] for c in guest.calls if c[0] == "engine"]
    assert all("/dev/vdbc0" in e for e in engine if "discard" in e or "write-zeroes" in e)
    assert not guest.disks


@pytest.mark.parametrize("fault, check, message", [
    ("sqe64_einval", "sqe64-ring-eopnotsupp", "cqe->res = -22 (-EINVAL), expected -95 (-EOPNOTSUPP)"),
    ("flag_ignored", "nonzero-flag-einval", "cqe->res = 0 (success), expected -22 (-EINVAL)"),
    ("feature_still_advertised", "not-negotiated-eopnotsupp", "still advertises"),
])
def test_refusals_single_faults(tmp_path, fault, check, message):
    checks, _, _ = run_scenario(DriverRefusals, tmp_path, FakeGuest({fault}))
    assert failing(checks) == [check]
    assert message in checks[check].detail


# -- driver-permissions -------------------------------------------------------------------------


def test_permissions_all_pass(tmp_path):
    checks, guest, _ = run_scenario(DriverPermissions, tmp_path)
    assert set(statuses(checks).values()) == {"pass"}, {n: c.detail for n, c in checks.items() if c.detail}
    engine = [c[1] for c in guest.calls if c[0] == "engine"]
    assert any(e[-4:] == ("--uid", "1000", "--gid", "1000") for e in engine)
    assert checks["unprivileged-group-read-only-eacces"].data["mode"] == "640 0 1000"
    err = checks["unprivileged-without-access-eacces"].data["read-as-uid-1000"]
    assert err["data"]["exit_code"] == 3


@pytest.mark.parametrize("fault, check, message", [
    ("no_permission_check", "unprivileged-without-access-eacces", "the unprivileged open succeeded"),
    ("ro_writable", "read-only-disk-erofs", "expected -30 (-EROFS)"),
    ("v2_ebadf", "unprivileged-group-read-only-eacces", "cqe->res = -9 (-EBADF), expected -13 (-EACCES)"),
])
def test_permissions_single_faults(tmp_path, fault, check, message):
    checks, _, _ = run_scenario(DriverPermissions, tmp_path, FakeGuest({fault}))
    assert check in failing(checks)
    assert message in checks[check].detail


# -- driver-iopoll ------------------------------------------------------------------------------


def test_iopoll_all_pass_and_resets_poll_queues(tmp_path):
    checks, guest, _ = run_scenario(DriverIopoll, tmp_path)
    assert set(statuses(checks).values()) == {"pass"}, {n: c.detail for n, c in checks.items() if c.detail}
    assert [n for n in checks if n.endswith("-layout")] == ["pq0-layout", "pq1-layout", "pq2-layout"]
    assert list(checks)[-1] == "reset-poll-queues" and guest.poll_queues == 0
    pq0 = checks["pq0-io-counted-per-queue"].data["completed"]
    pq1 = checks["pq1-io-counted-per-queue"].data["completed"]
    assert pq0["on_default_vqs"] == pq0["ios"] and pq0["interrupts"] > 0
    assert pq1["on_poll_vqs"] == pq1["ios"] and pq1["interrupts"] == 0
    assert checks["pq2-layout"].data["expected"] == {"default": 1, "poll": 1, "cpus": 2, "num_queues": 4}


def test_iopoll_four_cpus_get_two_poll_queues(tmp_path):
    checks, _, _ = run_scenario(DriverIopoll, tmp_path, FakeGuest(cpus=4))
    assert set(statuses(checks).values()) == {"pass"}
    assert checks["pq2-layout"].data["hctx_types"] == {"hctx0": "default", "hctx1": "default",
                                                       "hctx2": "poll", "hctx3": "poll"}


def test_iopoll_polled_io_on_a_default_queue_fails(tmp_path):
    checks, guest, _ = run_scenario(DriverIopoll, tmp_path, FakeGuest({"poll_on_default_queue"}))
    assert failing(checks) == ["pq1-io-counted-per-queue", "pq2-io-counted-per-queue"]
    assert "expected all polled, none by interrupt" in checks["pq1-io-counted-per-queue"].detail
    assert guest.poll_queues == 0


def test_iopoll_wrong_layout_skips_the_counting(tmp_path):
    checks, _, _ = run_scenario(DriverIopoll, tmp_path, FakeGuest({"wrong_layout"}))
    assert failing(checks) == ["pq1-layout", "pq2-layout"]
    assert checks["pq1-io-counted-per-queue"].status == "skip"
    assert checks["pq1-status"].status == "pass"


@pytest.mark.parametrize("guest, reason", [
    (FakeGuest(poll_param=False), "poll_queues in the guest"),
    (FakeGuest(debugfs=False), "debugfs"),
    (FakeGuest(x_query=False), "x-query-virtio-queue-status"),
])
def test_iopoll_requires(tmp_path, guest, reason):
    reasons, _, _ = run_scenario(DriverIopoll, tmp_path, guest)
    assert isinstance(reasons, list) and len(reasons) == 1 and reason in reasons[0]


# -- driver-unplug ------------------------------------------------------------------------------

UNPLUG_CHECKS = [
    "hotplug", "io-in-flight", "unplug-with-io-in-flight", "sysfs-and-node-gone-while-open",
    "name-and-minor-not-reused-while-open", "in-flight-commands-complete", "later-commands-fail-enodev",
    "close-after-unplug", "name-and-minor-reused-after-close", "unplug-disk-plugged-while-open", "unplug-new-disk", "polled-set-poll-queues", "polled-hotplug", "polled-has-poll-queue", "polled-io-in-flight",
    "polled-unplug-with-io-in-flight", "polled-sysfs-and-node-gone-while-open", "polled-in-flight-commands-complete",
    "polled-later-commands-fail-enodev", "polled-close-after-unplug", "reset-poll-queues",
]


def test_unplug_all_pass(tmp_path):
    checks, guest, rec = run_scenario(DriverUnplug, tmp_path)
    assert list(checks) == UNPLUG_CHECKS
    assert set(statuses(checks).values()) == {"pass"}, {n: c.detail for n, c in checks.items() if c.detail}
    assert checks["name-and-minor-not-reused-while-open"].data["new"] == ("vdb", "251:1")
    assert checks["name-and-minor-reused-after-close"].data["new"] == ("vda", "251:0")
    assert all(not j.running for j in guest.jobs.values()) and not guest.disks and guest.poll_queues == 0
    assert "--iopoll" in checks["polled-io-in-flight"].data["args"]
    assert len(rec.of(E.DiskUnplugged)) == 4


def test_unplug_later_erange_is_reported_against_the_cover_letter(tmp_path):
    checks, _, _ = run_scenario(DriverUnplug, tmp_path, FakeGuest({"later_erange"}))
    assert failing(checks) == ["later-commands-fail-enodev", "polled-later-commands-fail-enodev"]
    detail = checks["later-commands-fail-enodev"].detail
    assert "-34 (-ERANGE) x500" in detail and "-19 (-ENODEV)" in detail and "cover letter" in detail


def test_unplug_blocked_by_polled_commands(tmp_path):
    checks, guest, rec = run_scenario(DriverUnplug, tmp_path, FakeGuest({"polled_unplug_blocks"}))
    assert failing(checks) == ["polled-unplug-with-io-in-flight"]
    detail = checks["polled-unplug-with-io-in-flight"].detail
    assert "8 commands in flight was stopped" in detail and "blk_mq_freeze_queue_wait" in detail
    assert "only 0.08s after the job was resumed and stopped" in detail
    assert checks["polled-unplug-with-io-in-flight"].data["owner_stopped"] is True
    for name in ("polled-sysfs-and-node-gone-while-open", "polled-in-flight-commands-complete",
                 "polled-later-commands-fail-enodev", "polled-close-after-unplug"):
        assert checks[name].status == "skip"
    assert checks["reset-poll-queues"].status == "pass"
    assert not guest.disks and all(not j.running for j in guest.jobs.values())


def test_unplug_hanging_job_is_killed(tmp_path):
    checks, guest, _ = run_scenario(DriverUnplug, tmp_path, FakeGuest({"job_hangs"}))
    assert "in-flight-commands-complete" in failing(checks)
    assert "never completed" in checks["in-flight-commands-complete"].detail
    assert checks["name-and-minor-reused-after-close"].status == "skip"
    assert all(not j.running for j in guest.jobs.values())


@pytest.mark.parametrize("fault, check", [
    ("close_fails", "close-after-unplug"),
    ("minor_leak", "name-and-minor-reused-after-close"),
    ("reused_while_open", "name-and-minor-not-reused-while-open"),
    ("class_entry_stays", "sysfs-and-node-gone-while-open"),
])
def test_unplug_single_faults(tmp_path, fault, check):
    checks, _, _ = run_scenario(DriverUnplug, tmp_path, FakeGuest({fault}))
    assert check in failing(checks)


def test_unplug_never_deleted_skips_the_rest_and_never_unplugs_twice(tmp_path):
    checks, guest, _ = run_scenario(DriverUnplug, tmp_path, FakeGuest({"unplug_blocks"}))
    assert checks["unplug-with-io-in-flight"].status == "fail"
    assert checks["in-flight-commands-complete"].status == "skip"
    assert "unplug" not in checks
    assert all(not j.running for j in guest.jobs.values())


def test_unplug_without_debugfs_is_skipped(tmp_path):
    reasons, _, _ = run_scenario(DriverUnplug, tmp_path, FakeGuest(debugfs=False))
    assert reasons and "debugfs" in reasons[0]


def test_unplug_without_poll_param_skips_the_polled_part(tmp_path):
    checks, _, _ = run_scenario(DriverUnplug, tmp_path, FakeGuest(poll_param=False))
    assert checks["polled-hotplug"].status == "skip"
    assert "reset-poll-queues" not in checks
    assert {c.status for n, c in checks.items() if not n.startswith("polled")} == {"pass"}


# -- Machine: slots and a second wait for an unplug --------------------------------------------


def test_machine_free_slot_and_complete_unplug(tmp_path, monkeypatch):
    machine = Machine(MachineSpec(qemu="q", kernel=Path("/k"), disk_slots=2), tmp_path, Timeouts())
    sent: list = []
    monkeypatch.setattr(machine, "qmp", lambda cmd, args=None, timeout=None: sent.append(cmd))
    deleted = {"ready": False}

    def events_wait(name, match=None, timeout=10.0):
        if not deleted["ready"]:
            raise MachineTimeout(f"no QMP event {name} within {timeout}")
        return {"event": name}

    monkeypatch.setattr(machine, "events_wait", events_wait)
    d0, d1 = DiskSpec(id="d0", serial="s0"), DiskSpec(id="d1", serial="s1")
    assert machine.free_slot() == 0
    machine.plug(d0, 0)
    assert machine.free_slot() == 1
    machine.plug(d1, 1)
    assert machine.free_slot() is None
    with pytest.raises(MachineTimeout):
        machine.unplug("d0", timeout=0.1)
    assert sent.count("device_del") == 1 and machine.free_slot() is None
    deleted["ready"] = True
    assert machine.complete_unplug("d0") >= 0
    assert sent.count("device_del") == 1 and sent[-1] == "blockdev-del"
    assert machine.free_slot() == 0
    with pytest.raises(ValueError):
        machine.complete_unplug("d0")
