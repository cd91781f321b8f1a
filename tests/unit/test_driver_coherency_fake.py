"""driver-coherency against a fake guest whose block device has a page cache.

The fake models what the scenario relies on: a buffered read fills the cache and is
served from it, a buffered write dirties it, an O_DIRECT write invalidates the range,
an O_DIRECT read writes dirty pages back first, BLKDISCARD / ZERO_RANGE invalidate,
and the last close of /dev/vdX drops the cache. The passthrough path is coherent
(the v3 contract) unless ``coherent=False`` (the v2 series), which must fail exactly
the passthrough checks; a holder that does not hold must stop the scenario at the
witness.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field

from vblk_ci import events as E
from vblk_ci.errors import AgentError
from vblk_ci.machine.machine import Timeouts
from vblk_ci.scenarios import ScenarioContext
from vblk_ci.scenarios.driver_coherency import DriverCoherency, digest, pattern

PAGE = 4096
SIZE = 64 << 20


class FakeBlockGuest:
    def __init__(self, coherent: bool = True, holder_holds: bool = True):
        self.coherent, self.holder_holds = coherent, holder_holds
        self.device = bytearray(SIZE)
        self.cache: dict[int, list] = {}  # page -> [bytearray, dirty]
        self.holder: int | None = None
        self.plugged: str | None = None
        self.files: dict[str, str] = {"/proc/sys/vm/dirty_writeback_centisecs": "500\n",
                                      "/proc/sys/vm/dirty_expire_centisecs": "3000\n",
                                      "/sys/class/bdi/254:0/min_ratio": "0\n"}

    # -- the page cache ------------------------------------------------------------------
    def _page(self, p: int) -> list:
        if p not in self.cache:
            self.cache[p] = [bytearray(self.device[p * PAGE:(p + 1) * PAGE]), False]
        return self.cache[p]

    def _pages(self, off: int, n: int) -> range:
        return range(off // PAGE, (off + n + PAGE - 1) // PAGE)

    def buffered_read(self, off: int, n: int) -> bytes:
        data = b"".join(bytes(self._page(p)[0]) for p in self._pages(off, n))
        self._closed()
        return data[off % PAGE:off % PAGE + n]

    def buffered_write(self, off: int, data: bytes) -> None:
        for i, p in enumerate(self._pages(off, len(data))):
            entry = self._page(p)
            entry[0][:] = data[i * PAGE:(i + 1) * PAGE]
            entry[1] = True
        self._closed()

    def writeback(self, off: int, n: int) -> None:
        for p in self._pages(off, n):
            entry = self.cache.get(p)
            if entry and entry[1]:
                self.device[p * PAGE:(p + 1) * PAGE] = entry[0]
                entry[1] = False

    def invalidate(self, off: int, n: int) -> None:
        self.writeback(off, n)
        for p in self._pages(off, n):
            self.cache.pop(p, None)

    def _closed(self) -> None:
        """The last close of /dev/vdX writes back and drops the cache."""
        if not (self.holder and self.holder_holds):
            self.invalidate(0, SIZE)

    # -- machine side --------------------------------------------------------------------
    def hotplug(self, disk, slot, chardev=True):
        self.plugged = disk.id
        return E.DiskPlugged(disk.id, disk.serial, 0.05, "vdb", None)

    def unplug(self, disk_id, timeout=None):
        self.plugged = None
        return 0.1

    def free_slot(self):
        return None if self.plugged else 0

    def qmp(self, cmd, args=None, timeout=None):
        assert cmd == "human-monitor-command"
        m = re.match(r'qemu-io -d \S+ "write -P (0x[0-9a-f]+) (\d+) (\d+)"$', args["command-line"])
        assert m, args
        off, n = int(m.group(2)), int(m.group(3))
        self.device[off:off + n] = bytes([int(m.group(1), 16)]) * n
        return ""

    # -- agent side ----------------------------------------------------------------------
    def wait_disk(self, serial, timeout_s=10.0, chardev=True):
        return {"name": "vdb", "serial": serial, "size_bytes": SIZE, "chardev": "/dev/vdbc0",
                "blockdev": "/dev/vdb"}

    def wait_disk_gone(self, name, timeout_s=10.0):
        assert self.plugged is None
        return {"name": name}

    def read_file(self, path, max_bytes=1 << 20):
        if path == "/sys/kernel/debug/bdi/254:0/stats":
            dirty = sum(PAGE for e in self.cache.values() if e[1]) // 1024
            # A disk without a minimum dirty share and no writeout history: written back at once.
            if self.files["/sys/class/bdi/254:0/min_ratio"] == "0\n":
                self.writeback(0, SIZE)
                dirty = 0
            return f"BdiWriteback:            0 kB\nBdiReclaimable:     {dirty:8d} kB\nBdiDirtyThresh: 1 kB\n"
        if path == "/sys/block/vdb/dev":
            return "254:0\n"
        return self.files[path]

    def write_file(self, path, data):
        assert path in self.files, path
        self.files[path] = data

    def exec(self, argv=None, cmd=None, timeout_s=60.0, stdin=None):
        ok = lambda out="": {"rc": 0, "stdout": out, "stderr": ""}  # noqa: E731
        if argv:
            assert argv[:2] == ["python3", "-"] and "def pattern" in stdin
            op, path, off, n = argv[2], argv[3], int(argv[4]), int(argv[5])
            assert path == "/dev/vdb"
            if op == "write":
                data = pattern(int(argv[6]), off, n)
                self.buffered_write(off, data)
            else:
                data = self.buffered_read(off, n)
            return ok(json.dumps({"sha256": digest(data), "bytes": n, "first_word": "0x" + data[7::-1].hex()}))
        if cmd.startswith("command -v"):
            return ok("/usr/bin/python3\n/bin/sleep\n")
        if cmd.startswith("sleep 100000 < /dev/vdb"):
            self.holder = 321
            return ok("321\n")
        if cmd == "readlink /proc/321/fd/0":
            return ok("/dev/vdb\n")
        if cmd == "kill 321":
            self.holder = None
            self._closed()
            return ok()
        raise AssertionError(f"unexpected exec {cmd!r}")

    def engine(self, args, timeout_s=120.0):
        o = dict(zip(args[::2], args[1::2]))
        zero = "--zero" in args
        if zero:
            o = dict(zip([a for a in args if a != "--zero"][::2], [a for a in args if a != "--zero"][1::2]))
        path, op, off, n = o["--path"], o["--op"], int(o["--offset"]), int(o["--length"])
        seed = int(o.get("--seed", 1))
        passthru = path.endswith("c0")
        coherent = self.coherent or not passthru
        result = {"exit_code": 0, "op": op, "ios": 1, "errors": 0, "mismatches": 0, "first_mismatch": None}
        if op == "write":
            self.device[off:off + n] = pattern(seed, off, n)
            if coherent:
                self.invalidate(off, n)
            result["results"] = [0 if passthru else n]
        elif op in ("discard", "write-zeroes"):
            self.device[off:off + n] = bytes(n)
            if coherent:
                self.invalidate(off, n)
            result["results"] = [0]
        elif op == "verify":
            if coherent:
                self.writeback(off, n)
            got = bytes(self.device[off:off + n])
            want = bytes(n) if zero else pattern(seed, off, n)
            bad = [i for i in range(0, n, 8) if got[i:i + 8] != want[i:i + 8]]
            result["mismatches"] = len(bad)
            if bad:
                i = bad[0]
                result["first_mismatch"] = {"offset": off + i, "expected": "0x" + want[i:i + 8][::-1].hex(),
                                            "got": "0x" + got[i:i + 8][::-1].hex()}
            result["results"] = [0 if passthru else n]
        else:
            raise AgentError("BadParams", op)
        return result

    def dmesg(self, since_seq=0):
        return {"records": [], "next_seq": 0}


@dataclass
class Console:
    crashed: threading.Event = field(default_factory=threading.Event)

    def findings(self, mark: int = 0):
        return []


class Machine:
    def __init__(self, guest: FakeBlockGuest):
        self.agent = self.guest = guest
        self.console = Console()
        self.timeouts = Timeouts()

    def __getattr__(self, name):
        return getattr(self.guest, name)


def run(tmp_path, guest: FakeBlockGuest) -> dict:
    ctx = ScenarioContext(DriverCoherency.name, Machine(guest), tmp_path, E.Recorder(), set())
    assert DriverCoherency().requires(ctx) == []
    DriverCoherency().run(ctx)
    return {c.name: c for c in ctx.checks}


PASSTHRU = {"passthru-write-then-buffered-read", "buffered-write-then-passthru-read",
            "passthru-discard-then-buffered-read", "passthru-write-zeroes-then-buffered-read"}


def test_coherent_driver_passes_every_check(tmp_path):
    guest = FakeBlockGuest(coherent=True)
    checks = run(tmp_path, guest)
    assert {n: c.status for n, c in checks.items() if c.status != "pass"} == {}
    assert len(checks) == 13
    assert guest.files["/proc/sys/vm/dirty_writeback_centisecs"] == "500\n"  # restored
    assert guest.files["/sys/class/bdi/254:0/min_ratio"] == "0\n"
    assert guest.holder is None


def test_v2_driver_fails_exactly_the_passthrough_checks(tmp_path):
    checks = run(tmp_path, FakeBlockGuest(coherent=False))
    assert {n for n, c in checks.items() if c.status == "fail"} == PASSTHRU
    detail = checks["passthru-write-then-buffered-read"].detail
    assert "returned the old data (seed 71)" in detail and "expected the new data (seed 72)" in detail
    assert "returned the old data (the dirty pages were not written back)" in (
        checks["buffered-write-then-passthru-read"].detail)
    assert "expected zeroes" in checks["passthru-discard-then-buffered-read"].detail


def test_a_holder_that_does_not_hold_stops_at_the_witness(tmp_path):
    checks = run(tmp_path, FakeBlockGuest(coherent=False, holder_holds=False))
    assert checks["page-cache-in-use"].status == "fail"
    assert "QEMU's 0x5a bytes" in checks["page-cache-in-use"].detail
    assert {n for n, c in checks.items() if c.status == "skip"} >= PASSTHRU
