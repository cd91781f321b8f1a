"""driver-coherency: passthrough I/O and the block device's page cache (review-v2 #5).

The contract (v3): a passthrough command is coherent with /dev/vdX's page cache the way
an O_DIRECT request on the block device is. Before a passthrough READ the driver writes
back dirty cached pages of that range; after a passthrough WRITE, DISCARD or
WRITE_ZEROES completes it invalidates that range of the cache (as an O_DIRECT write,
BLKDISCARD and BLKZEROOUT do: ``truncate_bdev_range()`` / ``filemap_invalidate_pages()``).

How it is seen from outside. /dev/vdX is held open for the whole scenario by a
background ``sleep`` (the last close of a block device writes back and drops its page
cache, which would hide the bug). Buffered reads and writes go through a small Python
program in the guest (``os.pread``/``os.pwrite`` without O_DIRECT, no fsync); the host
knows the engine's data pattern, so every buffered read is named by its SHA-256: the
new data, the old data, zeroes, or something else. What the device really holds is
read with an O_DIRECT engine job through /dev/vdX. Each case uses its own 64 KiB range
(1 MiB apart, so readahead of one never reaches the next) that first gets a known
"old" pattern by an O_DIRECT write.

Checks, in order:
- page-cache-in-use: the witness that makes the rest mean something. A buffered read
  fills the cache, QEMU then writes the range behind the guest's back (qemu-io on the
  device's BlockBackend), and a second buffered read must still return the cached data;
- passthru-write-then-buffered-read: cached read, passthrough WRITE of new data, the
  device holds it (O_DIRECT read), a buffered read must return it;
- odirect-write-then-buffered-read: the control, an O_DIRECT write through /dev/vdX in
  the passthrough write's place (coherent on any kernel);
- buffered-write-then-passthru-read: a buffered write of new data, still dirty in the
  cache (periodic writeback off and a minimum dirty share for the disk while the
  scenario runs; the disk's ``BdiReclaimable`` in debugfs must show the 64 KiB), then a
  passthrough READ must return it;
- buffered-write-then-odirect-read: the control (an O_DIRECT read writes back first);
- passthru-discard-then-buffered-read, passthru-write-zeroes-then-buffered-read: cached
  read, then DISCARD / WRITE_ZEROES through /dev/vdXc0; the device then reads zeroes
  (the file backend punches holes, ``discard: unmap``), and so must a buffered read;
- block-discard-then-buffered-read, block-write-zeroes-then-buffered-read: the controls,
  the same through /dev/vdX (io_uring's BLOCK_URING_CMD_DISCARD; fallocate ZERO_RANGE).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import struct

from ..disks.spec import DiskSpec, create_sparse_file
from ..errors import AgentError, CheckFailed
from ..faults import qmp as Q
from .base import Scenario, ScenarioContext, register
from .driver_common import KiB, MiB, eargs, expect_clean, expect_results, plug, run_engine, run_gated, unplug

DISK_SIZE = 64 * MiB
SPAN = 64 * KiB  # one case's range
SEED_OLD = 71
SEED_NEW = 72
WITNESS_BYTE = 0x5A  # what QEMU writes behind the guest's back in page-cache-in-use
# Periodic writeback off while the scenario runs: a dirty page stays dirty until someone
# writes it back, so "the passthrough READ wrote it back" is the only way it can reach the disk.
VM_KNOBS = {"/proc/sys/vm/dirty_writeback_centisecs": "0", "/proc/sys/vm/dirty_expire_centisecs": "360000"}
# Background writeback also starts when a device's dirty pages exceed its share of the background
# threshold, and a fresh disk (no writeout history) has a share of ~0: its first dirty page is
# written back at once. A minimum share (/sys/class/bdi/MAJ:MIN/min_ratio, percent) keeps 64 KiB dirty.
BDI_MIN_RATIO = "50"


# -- the engine's data pattern (PROTOCOL.md), shared with the guest program -----------------
def splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & ((1 << 64) - 1)
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return x ^ (x >> 31)


def pattern(seed: int, offset: int, length: int) -> bytes:
    """What ``vblk-engine --op write --seed seed`` puts at ``[offset, offset + length)``."""
    return b"".join(struct.pack("<Q", splitmix64(seed ^ (o // 8))) for o in range(offset, offset + length, 8))


GUEST_MAIN = '''
import hashlib, json, os, struct, sys
op, path, offset, length = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
fd = os.open(path, os.O_RDWR if op == "write" else os.O_RDONLY)
try:
    if op == "write":
        data = pattern(int(sys.argv[5]), offset, length)
        if os.pwrite(fd, data, offset) != length:
            raise SystemExit("short write")
    else:
        data = os.pread(fd, length, offset)
finally:
    os.close(fd)
print(json.dumps({"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                  "first_word": "0x%016x" % struct.unpack_from("<Q", data)[0] if len(data) >= 8 else None}))
'''


def guest_program() -> str:
    """``python3 - read|write PATH OFFSET LENGTH [SEED]``: one buffered pread/pwrite (no O_DIRECT, no
    fsync) through the page cache; prints the SHA-256 of the data read or written."""
    return inspect.getsource(splitmix64) + inspect.getsource(pattern) + GUEST_MAIN


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def name_content(sha256: str, known: dict[str, str]) -> str:
    """Which known content (name -> SHA-256) a buffered read returned, or ``something else``."""
    return next((name for name, d in known.items() if d == sha256), "something else")


def contents(offset: int, length: int = SPAN, old: int = SEED_OLD, new: int = SEED_NEW) -> dict[str, str]:
    """Names for what a range can hold in these checks, by SHA-256."""
    return {
        f"the new data (seed {new})": digest(pattern(new, offset, length)),
        f"the old data (seed {old})": digest(pattern(old, offset, length)),
        "zeroes": digest(bytes(length)),
        f"QEMU's 0x{WITNESS_BYTE:02x} bytes": digest(bytes([WITNESS_BYTE]) * length),
    }


def bdi_reclaimable_kib(stats: str) -> int | None:
    """``BdiReclaimable`` (dirty pages of the device, kB) from debugfs ``bdi/MAJ:MIN/stats``."""
    for line in stats.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "BdiReclaimable:" and parts[1].isdigit():
            return int(parts[1])
    return None


def case_offset(n: int) -> int:
    """Case ``n``'s range: 1 MiB apart, from 1 MiB (away from the partition scan at 0)."""
    return (n + 1) * MiB


@register
class DriverCoherency(Scenario):
    name = "driver-coherency"
    description = (
        "Passthrough commands keep /dev/vdX's page cache coherent, like O_DIRECT (review-v2 #5): with /dev/vdX "
        "held open, a buffered read after a passthrough WRITE, DISCARD or WRITE_ZEROES returns what the device "
        "now holds, and a passthrough READ after a buffered (unsynced) write returns the new data; the same "
        "sequences with O_DIRECT, BLKDISCARD-style and ZERO_RANGE requests on /dev/vdX are the controls."
    )

    def requires(self, ctx: ScenarioContext) -> list[str]:
        if ctx.agent.exec(cmd="command -v python3 && command -v sleep").get("rc") != 0:
            return ["no python3 or sleep in the guest (buffered I/O and the holder of /dev/vdX)"]
        return []

    def run(self, ctx: ScenarioContext) -> None:
        image = create_sparse_file(ctx.scratch() / "coh0.raw", DISK_SIZE)
        disk = DiskSpec(id="coh0", serial="vblk-coh0", backend="file", path=image, size_bytes=DISK_SIZE,
                        num_queues=2, discard=True, write_zeroes=True).validate()
        st: dict = {}
        if not run_gated(ctx, True, [("hotplug", plug(ctx, disk, st))], ""):
            return
        c = Coherency(ctx, disk, st)
        saved: dict[str, str] = {}
        try:
            held = ctx.check("hold-block-device-open", lambda rec: c.hold(rec, saved)).status == "pass"
            ok = run_gated(ctx, held, [("page-cache-in-use", c.witness)], "not run: /dev/vdX is not held open")
            run_gated(ctx, ok, [
                ("passthru-write-then-buffered-read", lambda rec: c.write_then_buffered_read(rec, 1, passthru=True)),
                ("odirect-write-then-buffered-read", lambda rec: c.write_then_buffered_read(rec, 2, passthru=False)),
                ("buffered-write-then-passthru-read", lambda rec: c.buffered_write_then_read(rec, 3, passthru=True)),
                ("buffered-write-then-odirect-read", lambda rec: c.buffered_write_then_read(rec, 4, passthru=False)),
                ("passthru-discard-then-buffered-read", lambda rec: c.zero_then_buffered_read(rec, 5, "discard", True)),
                ("passthru-write-zeroes-then-buffered-read",
                 lambda rec: c.zero_then_buffered_read(rec, 6, "write-zeroes", True)),
                ("block-discard-then-buffered-read", lambda rec: c.zero_then_buffered_read(rec, 7, "discard", False)),
                ("block-write-zeroes-then-buffered-read",
                 lambda rec: c.zero_then_buffered_read(rec, 8, "write-zeroes", False)),
            ], "not run: the page cache is not in use, so these would prove nothing")
        finally:
            ctx.check("release-block-device", lambda rec: c.release(rec, saved))
            ctx.check("unplug", unplug(ctx, disk, st))


class Coherency:
    """The steps, on one plugged disk (``st`` from ``plug``)."""

    def __init__(self, ctx: ScenarioContext, disk: DiskSpec, st: dict):
        self.ctx, self.disk, self.st = ctx, disk, st
        self.program = guest_program()

    # -- building blocks -------------------------------------------------------------------
    def buffered(self, rec: dict, key: str, op: str, offset: int, seed: int | None = None) -> str:
        """One buffered read (or write of ``seed``'s pattern) of the case range through /dev/vdX; its SHA-256."""
        argv = ["python3", "-", op, self.st["blockdev"], str(offset), str(SPAN)]
        if seed is not None:
            argv.append(str(seed))
        out = self.ctx.agent.exec(argv=argv, stdin=self.program, timeout_s=self.ctx.timeouts(60.0))
        if out.get("rc") != 0:
            raise CheckFailed(f"{key}: buffered {op} through {self.st['blockdev']} failed (rc {out.get('rc')}): "
                              f"{(out.get('stderr') or '').strip().splitlines()[-1:]}")
        rec[key] = result = json.loads(out["stdout"])
        return result["sha256"]

    def engine(self, rec: dict, key: str, path: str, op: str, offset: int, **opts) -> dict:
        return run_engine(self.ctx, rec, key, eargs(path, op, offset=offset, length=SPAN, bs=SPAN, **opts))

    def odirect_write(self, rec: dict, key: str, offset: int, seed: int) -> None:
        expect_clean(key, self.engine(rec, key, self.st["blockdev"], "write", offset, seed=seed))

    def device_holds(self, rec: dict, key: str, offset: int, seed: int | None, what: str) -> None:
        """The device holds ``seed``'s pattern (None: zeroes): an O_DIRECT read through /dev/vdX."""
        result = self.engine(rec, key, self.st["blockdev"], "verify", offset, seed=seed or 1, zero=seed is None)
        if result.get("errors") or result.get("mismatches"):
            raise CheckFailed(f"{key}: after {what}, an O_DIRECT read through {self.st['blockdev']} does not show "
                              f"{'zeroes' if seed is None else f'seed {seed}'}: {result.get('mismatches')} "
                              f"mismatched words, first {result.get('first_mismatch')}, errors "
                              f"{result.get('errors')}: the operation itself did not work, no coherency verdict")

    def cached_read(self, rec: dict, offset: int) -> None:
        """Old data written O_DIRECT, then read buffered: the range is now in the page cache."""
        self.odirect_write(rec, "old-odirect-write", offset, SEED_OLD)
        known = contents(offset)
        got = self.buffered(rec, "buffered-read-before", "read", offset)
        if got != known[f"the old data (seed {SEED_OLD})"]:
            raise CheckFailed(f"the first buffered read returned {name_content(got, known)}, not the old data "
                              "written O_DIRECT just before")

    def expect_buffered(self, rec: dict, offset: int, want: str, after: str) -> None:
        known = contents(offset)
        got = self.buffered(rec, "buffered-read-after", "read", offset)
        rec["buffered_read_after_is"] = seen = name_content(got, known)
        if got != known[want]:
            raise CheckFailed(
                f"after {after}, a buffered read of [{offset:#x}, +{SPAN // KiB} KiB) through {self.st['blockdev']} "
                f"returned {seen} (first word {rec['buffered-read-after'].get('first_word')}), expected {want}, "
                "which the device holds: the block device's page cache is stale")

    # -- steps ------------------------------------------------------------------------------
    def hold(self, rec: dict, saved: dict[str, str]) -> None:
        """A background sleep holds /dev/vdX open; periodic writeback off and a minimum dirty share for the
        disk (old values kept in ``saved``)."""
        devno = self.ctx.agent.read_file(f"/sys/block/{self.st['name']}/dev").strip()
        self.st["bdi"] = devno
        knobs = {**VM_KNOBS, f"/sys/class/bdi/{devno}/min_ratio": BDI_MIN_RATIO}
        for path, value in knobs.items():
            saved[path] = self.ctx.agent.read_file(path).strip()
            self.ctx.agent.write_file(path, value + "\n")
        rec["knobs_were"] = dict(saved)
        out = self.ctx.agent.exec(cmd=f"sleep 100000 < {self.st['blockdev']} > /dev/null 2>&1 & echo $!")
        if out.get("rc") != 0 or not out.get("stdout", "").strip().isdigit():
            raise CheckFailed(f"could not start a process holding {self.st['blockdev']} open: {out}")
        self.st["holder"] = rec["holder_pid"] = int(out["stdout"].strip())
        fd0 = self.ctx.agent.exec(cmd=f"readlink /proc/{self.st['holder']}/fd/0").get("stdout", "").strip()
        rec["holder_fd0"] = fd0
        if fd0 != self.st["blockdev"]:
            raise CheckFailed(f"the holder's stdin is {fd0!r}, not {self.st['blockdev']}")

    def release(self, rec: dict, saved: dict[str, str]) -> None:
        pid = self.st.pop("holder", None)
        if pid is not None:
            rec["kill"] = self.ctx.agent.exec(cmd=f"kill {pid}")
        for path, value in saved.items():
            self.ctx.agent.write_file(path, value + "\n")

    def witness(self, rec: dict) -> None:
        """Data QEMU writes behind the guest's back stays invisible to buffered reads: they come from the cache."""
        offset = case_offset(0)
        self.cached_read(rec, offset)
        rec["qemu_io"] = out = self.ctx.machine.qmp("human-monitor-command", Q.qemu_io_args(
            Q.backend_path(self.disk), f"write -P {WITNESS_BYTE:#x} {offset} {SPAN}", qdev=True))
        if isinstance(out, str) and out.lstrip().startswith("Error"):
            raise CheckFailed(f"qemu-io write behind the guest's back failed: {out.strip()}")
        known = contents(offset)
        got = self.buffered(rec, "buffered-read-after", "read", offset)
        rec["buffered_read_after_is"] = seen = name_content(got, known)
        if seen != f"the old data (seed {SEED_OLD})":
            raise CheckFailed(f"after QEMU rewrote the range behind the guest's back, a buffered read returned "
                              f"{seen}, not the cached old data: buffered reads do not come from the page cache "
                              "(is /dev/vdX really held open?), so the coherency checks would prove nothing")

    def write_then_buffered_read(self, rec: dict, n: int, passthru: bool) -> None:
        offset = case_offset(n)
        self.cached_read(rec, offset)
        if passthru:
            result = self.engine(rec, "passthru-write", self.st["chardev"], "write", offset, seed=SEED_NEW)
            expect_results("passthru-write", result, 0)
            how = f"a passthrough WRITE through {self.st['chardev']}"
        else:
            self.odirect_write(rec, "odirect-write", offset, SEED_NEW)
            how = f"an O_DIRECT write through {self.st['blockdev']}"
        self.device_holds(rec, "device-holds", offset, SEED_NEW, how)
        self.expect_buffered(rec, offset, f"the new data (seed {SEED_NEW})", how)

    def buffered_write_then_read(self, rec: dict, n: int, passthru: bool) -> None:
        offset = case_offset(n)
        self.odirect_write(rec, "old-odirect-write", offset, SEED_OLD)
        self.buffered(rec, "buffered-write", "write", offset, SEED_NEW)
        rec["dirty_kib"] = dirty = self.dirty_kib()
        if dirty is not None and dirty < SPAN // KiB:
            raise CheckFailed(f"precondition: right after the buffered write only {dirty} kB of the disk are dirty, "
                              f"not {SPAN // KiB}: something wrote it back already, so the read proves nothing")
        path, how = ((self.st["chardev"], "a passthrough READ through") if passthru
                     else (self.st["blockdev"], "an O_DIRECT read through"))
        result = self.engine(rec, "read", path, "verify", offset, seed=SEED_NEW)
        if result.get("errors"):
            raise CheckFailed(f"{how} {path}: {result['errors']} errors, first {result.get('first_error')}")
        if result.get("mismatches"):
            first = result.get("first_mismatch") or {}
            got = first.get("got")
            old = f"0x{splitmix64(SEED_OLD ^ (int(first.get('offset', offset)) // 8)):016x}"
            which = "the old data (the dirty pages were not written back)" if got == old else f"first word {got}"
            raise CheckFailed(f"after a buffered write of new data (seed {SEED_NEW}, not synced) through "
                              f"{self.st['blockdev']}, {how} {path} returned {which}: "
                              f"{result['mismatches']} mismatched words, first {result.get('first_mismatch')}")

    def zero_then_buffered_read(self, rec: dict, n: int, op: str, passthru: bool) -> None:
        offset = case_offset(n)
        self.cached_read(rec, offset)
        path = self.st["chardev"] if passthru else self.st["blockdev"]
        result = self.engine(rec, op, path, op, offset)
        expect_results(op, result, 0)
        how = f"{'a passthrough' if passthru else 'a block-device'} {op.upper().replace('-', '_')} through {path}"
        self.device_holds(rec, "device-holds", offset, None, how)
        self.expect_buffered(rec, offset, "zeroes", how)

    def dirty_kib(self) -> int | None:
        """The disk's dirty pages (kB) from debugfs bdi stats; None if the guest does not show them."""
        try:
            stats = self.ctx.agent.read_file(f"/sys/kernel/debug/bdi/{self.st['bdi']}/stats")
        except AgentError:
            return None
        return bdi_reclaimable_kib(stats)


__all__ = [
    "DriverCoherency", "bdi_reclaimable_kib", "contents", "digest", "guest_program", "name_content", "pattern",
    "splitmix64",
]
