"""driver-soak: a random mix of every op, across chardev and block device, on 2 disks.

Each disk runs one engine `--op mix --with-trim` job alternating /dev/vdXc0 and
/dev/vdX under a shadow map, so every read is verified; both jobs run at once.
Pass: zero I/O errors, zero mismatched words, no console report. The duration is
VBLK_CI_SOAK_SECONDS (default 20 s, so the suite stays short; the figure for the
cover letter comes from a 600 s run).
"""

from __future__ import annotations

import os

from ..disks.spec import DiskSpec, create_sparse_file
from ..errors import CheckFailed, UsageError
from .base import Scenario, ScenarioContext, register
from .driver_common import MiB

DISK_SIZE = 64 * MiB
DISKS = 2
DEFAULT_SECONDS = 20.0


def soak_seconds() -> float:
    raw = os.environ.get("VBLK_CI_SOAK_SECONDS", str(DEFAULT_SECONDS))
    try:
        seconds = float(raw)
    except ValueError:
        raise UsageError(f"VBLK_CI_SOAK_SECONDS={raw!r} is not a number of seconds") from None
    if not 1 <= seconds <= 24 * 3600:
        raise UsageError(f"VBLK_CI_SOAK_SECONDS={raw!r} must be between 1 and 86400")
    return seconds


def mix_args(chardev: str, blockdev: str, seconds: float, seed: int) -> list[str]:
    return ["--path", chardev, "--path2", blockdev, "--op", "mix", "--with-trim",
            "--offset", "0", "--length", str(DISK_SIZE), "--bs", "4096", "--qd", "8",
            "--runtime", f"{seconds:g}", "--seed", str(seed)]


@register
class DriverSoak(Scenario):
    name = "driver-soak"
    description = (
        "Random mix of read/write/flush/discard/write-zeroes across /dev/vdXc0 and /dev/vdX "
        "on 2 disks at once, every read verified against a shadow map; zero mismatches, zero errors."
    )

    def run(self, ctx: ScenarioContext) -> None:
        seconds = soak_seconds()
        disks = [
            DiskSpec(id=f"soak{i}", serial=f"vblk-soak{i}", backend="file",
                     path=create_sparse_file(ctx.scratch() / f"soak{i}.raw", DISK_SIZE),
                     size_bytes=DISK_SIZE, num_queues=2).validate()
            for i in range(DISKS)
        ]
        nodes: list[dict] = []

        def plug(rec: dict) -> None:
            for disk in disks:
                slot = ctx.machine.free_slot()
                if slot is None:
                    raise CheckFailed("no free hot-plug slot: a disk from an earlier scenario is still plugged")
                ctx.machine.hotplug(disk, slot)
                nodes.append(ctx.agent.wait_disk(disk.serial, timeout_s=ctx.timeouts(10.0), chardev=True))
            rec["disks"] = nodes

        def soak(rec: dict) -> None:
            jobs = [ctx.agent.spawn(mix_args(n["chardev"], n["blockdev"], seconds, seed=100 + i))
                    for i, n in enumerate(nodes)]
            results = [ctx.agent.wait_job(job, timeout_s=ctx.timeouts(seconds + 120.0)) for job in jobs]
            rec["jobs"] = results
            rec["seconds"] = seconds
            rec["ios"] = sum(r.get("ios", 0) for r in results)
            for node, result in zip(nodes, results):
                where = node["chardev"]
                if result.get("exit_code") != 0:
                    raise CheckFailed(f"{where}: mix exited {result.get('exit_code')}: {result.get('stderr', '').strip()}")
                if result.get("errors"):
                    raise CheckFailed(f"{where}: {result['errors']} I/O errors, first {result.get('first_error')}")
                if result.get("mismatches"):
                    raise CheckFailed(f"{where}: {result['mismatches']} mismatched words, first {result.get('first_mismatch')}")
                if not result.get("ios"):
                    raise CheckFailed(f"{where}: the mix issued no I/O in {seconds:g}s")

        def unplug(rec: dict) -> None:
            rec["seconds_to_deleted"] = [ctx.machine.unplug(d.id) for d in disks]

        if ctx.check("plug-2-disks", plug).status != "pass":
            ctx.skip("mix", "not run: hotplug failed")
        else:
            ctx.check(f"mix-{seconds:g}s", soak)
        ctx.check("unplug", unplug)
