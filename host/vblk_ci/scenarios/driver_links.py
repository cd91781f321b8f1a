"""driver-links: a uring_cmd must never be read from its SQ slot once io_uring_submit() returned
(review-v2 finding #3).

An application may reuse its SQ ring slots as soon as io_uring_submit() returns. v2's 0001
makes the -EAGAIN retry read the kernel's copy of the SQE, but a linked (``IOSQE_IO_LINK``)
uring_cmd is prepped at submit and issued only when the command before it completes, and in
6.12 it then reads ``sqe->cmd`` from the ring (upstream copies the SQE at prep since 6.14:
d6211ebbdaa5, e663da62ba86).

The engine (``--link``, ``--scribble``; PROTOCOL.md) sends WRITE->FLUSH and WRITE->READ
chains, 32 in flight, and with ``--scribble`` overwrites every SQ slot right after the submit
with another valid command: a READ of the region's first block into a canary buffer of that
I/O's own. The canary is outside anything the command under test touches, so a changed canary
is the kernel executing a command the application never submitted. Each chain must come back
with both cqe->res 0, the READ with exactly the bytes the WRITE wrote, and no canary touched
(v2 fails both slot-reused checks: every chain runs the overwritten command, all with res 0). The same chains without scribbling, with ``IOSQE_ASYNC`` (6.12 copies
the SQE at prep then) and on the block path (READ/WRITE copy their SQE fields at prep) are the
controls that show the check can pass.

The ring is set up with ``IORING_SETUP_DEFER_TASKRUN`` (``--defer-taskrun``), as liburing
recommends for a single-threaded application: completions, and with them the issue of each
linked command, then run only when the application waits for CQEs, i.e. always after the
submit returned and the slots were overwritten. On a default ring a WRITE that completes while
the submit syscall is still running has its linked command issued on the way back to userspace,
from the intact slot: there, how many chains show the bug depends on timing (on the appliance a
whole wave of 32 either did or did not, 0 to 4 of 4 waves per job).

The second disk has scarce tags (queue-size 16 on QEMU < 10, and ``nr_requests`` lowered to
the block layer's minimum, 4): writes at qd 256 with the slots scribbled, with and without
``IOSQE_ASYNC``, must all complete with 0 and read back exactly through /dev/vdX. Without
``IOSQE_ASYNC`` a command reaches io-wq only through the -EAGAIN retry, so the engine's count of
io-wq workers shows that path ran. v2's 0001 makes these pass; they keep the retry honest when
0001 goes to stable as upstream's backport instead.
"""

from __future__ import annotations

import re

from ..disks.spec import DiskSpec, create_sparse_file
from ..errors import AgentError, CheckFailed
from .base import Scenario, ScenarioContext, register
from .driver_common import KiB, MiB, eargs, expect_clean, plug, run_engine, run_gated, unplug

DISK_SIZE = 64 * MiB
LINK_BS = 16 * KiB
LINK_QD = 32  # chains per wave: 64 SQEs per io_uring_submit()
LINK_LEN = 4 * LINK_QD * LINK_BS  # 4 waves, 128 chains
# Scarce tags: at most this many requests (the block layer's BLKDEV_MIN_RQ; a smaller value is raised to it).
MIN_NR_REQUESTS = 4
SMALL_QUEUE = 16  # virtqueue size asked of QEMU (QEMU 10 ignores queue-size; nr_requests still applies)
EAGAIN_QD = 256
EAGAIN_LEN = 4 * MiB  # 1024 4 KiB commands


def region(n: int) -> int:
    """Byte offset of region ``n`` (4 MiB each, from 4 MiB: away from the partition scan)."""
    return (n + 1) * 4 * MiB


def judge_link(key: str, result: dict) -> None:
    """Every chain of a ``--link`` job: both cqe->res 0, READ data equal, no scribble executed."""
    link = result.get("link")
    if not isinstance(link, dict) or not link.get("chains"):
        raise CheckFailed(f"{key}: the engine reported no chains (is --link supported?)")
    chains, ok = link["chains"], link.get("ok", 0)
    if ok == chains and not result.get("errors") and not result.get("mismatches"):
        return
    second = link.get("kind", "?").upper()
    problems = []
    counts = result.get("res_counts") or {}
    if link.get("write_errors") or link.get("second_errors"):
        problems.append(f"{link.get('write_errors', 0)} WRITEs and {link.get('second_errors', 0)} {second}s "
                        f"failed (cqe->res: count {counts})")
    if link.get("data_mismatches"):
        problems.append(f"{link['data_mismatches']} READs did not return what their WRITE wrote "
                        f"(first mismatch {result.get('first_mismatch')})")
    seconds, writes = link.get("scribbled_seconds", 0), link.get("scribbled_writes", 0)
    if seconds or writes:
        problems.append(f"the kernel executed the command written into the SQ slot after submit (a READ of "
                        f"offset {result.get('offset')} into another buffer) in place of {seconds} linked "
                        f"{second}s and {writes} WRITEs")
    if set(counts) == {"0"}:
        problems.append("every cqe->res was 0")
    raise CheckFailed(f"{key}: {chains - ok} of {chains} chains bad: {'; '.join(problems)}; "
                      f"first bad {link.get('first_bad')}")


def parse_tags(text: str) -> dict:
    """``/sys/kernel/debug/block/vdX/hctxN/{tags,sched_tags}`` -> nr_tags and the usable depth."""
    out: dict = {}
    m = re.search(r"^nr_tags=(\d+)$", text, re.M)
    if m:
        out["nr_tags"] = int(m.group(1))
    m = re.search(r"^bitmap_tags:\n(?:.*\n)*?depth=(\d+)$", text, re.M)
    if m:
        out["depth"] = int(m.group(1))
    return out


def usable_tags(nr_requests: int | None, tags: dict, sched_tags: dict, scheduler: str | None) -> int | None:
    """Requests a single-queue disk can have allocated at once: the scheduler's tags when it has an
    elevator (every request takes one then, passthrough included), else the driver tags."""
    elevator = scheduler is not None and "[none]" not in scheduler
    chosen = sched_tags if elevator and sched_tags else tags
    depths = [d for d in (chosen.get("depth"), nr_requests) if isinstance(d, int)]
    return min(depths) if depths else None


def judge_scribble(key: str, result: dict) -> None:
    """A ``--scribble`` job: no canary written, every I/O clean."""
    scribble = result.get("scribble")
    if not isinstance(scribble, dict) or not scribble.get("sqes"):
        raise CheckFailed(f"{key}: no SQE was scribbled (is --scribble supported?)")
    if scribble.get("executed"):
        raise CheckFailed(f"{key}: the kernel executed {scribble['executed']} commands written into SQ slots "
                          f"after submit (READs of offset {result.get('offset')} into other buffers)")
    expect_clean(key, result)


@register
class DriverLinks(Scenario):
    name = "driver-links"
    description = (
        "review-v2 #3: a uring_cmd is never read from its SQ slot after io_uring_submit() returned. "
        "IOSQE_IO_LINK WRITE->FLUSH and WRITE->READ chains, qd 32, the SQ slots overwritten right after "
        "submit: every cqe->res 0, the READ returns exactly the written data, the overwritten commands never "
        "run (controls: no overwrite, IOSQE_ASYNC, block path). And on a disk with 4 usable tags, qd 256 "
        "writes with the slots overwritten (-EAGAIN retry; and IOSQE_ASYNC) complete with 0 and read back "
        "exactly through /dev/vdX."
    )

    def run(self, ctx: ScenarioContext) -> None:
        image = create_sparse_file(ctx.scratch() / "lnk0.raw", DISK_SIZE)
        disk = DiskSpec(id="lnk0", serial="vblk-lnk0", backend="file", path=image, size_bytes=DISK_SIZE,
                        num_queues=2).validate()
        small_image = create_sparse_file(ctx.scratch() / "lnk1.raw", DISK_SIZE)
        small = DiskSpec(id="lnk1", serial="vblk-lnk1", backend="file", path=small_image, size_bytes=DISK_SIZE,
                         num_queues=1, queue_size=SMALL_QUEUE).validate()
        st: dict = {}
        st_small: dict = {}

        def chains(rec: dict, n: int, kind: str, scribble: bool, path: str | None = None,
                   async_: bool = False) -> None:
            seed = 40 + n
            key = f"{kind}-chains"
            result = run_engine(ctx, rec, key, eargs(path or st["chardev"], "write", link=kind, offset=region(n),
                                                     length=LINK_LEN, bs=LINK_BS, qd=LINK_QD, seed=seed,
                                                     scribble=scribble, defer_taskrun=True,
                                                     **{"async": async_}))
            judge_link(key, result)
            result = run_engine(ctx, rec, "block-verify", eargs(st["blockdev"], "verify", offset=region(n),
                                                                length=LINK_LEN, bs=LINK_BS, qd=4, seed=seed))
            expect_clean("block-verify (the WRITEs of the chains)", result)

        def scarce_tags(rec: dict) -> None:
            name = st_small["name"]
            q = f"/sys/block/{name}/queue"
            ctx.agent.write_file(f"{q}/nr_requests", "1")  # the kernel raises it to BLKDEV_MIN_RQ
            facts: dict = {"nr_requests": _read_int(ctx, f"{q}/nr_requests"),
                           "nr_tags_sysfs": _read_int(ctx, f"/sys/block/{name}/mq/0/nr_tags"),
                           "scheduler": _read(ctx, f"{q}/scheduler")}
            for f in ("tags", "sched_tags"):
                text = _read(ctx, f"/sys/kernel/debug/block/{name}/hctx0/{f}")
                facts[f] = parse_tags(text) if text else {}
            facts["usable_tags"] = usable_tags(facts["nr_requests"], facts["tags"], facts["sched_tags"],
                                               facts["scheduler"])
            rec.update(facts)
            st_small["usable_tags"] = facts["usable_tags"]
            if facts["usable_tags"] is None or facts["usable_tags"] >= EAGAIN_QD:
                raise CheckFailed(f"{name}: cannot show fewer tags than the {EAGAIN_QD} commands in flight: {facts}")
            if facts["nr_requests"] != MIN_NR_REQUESTS:
                raise CheckFailed(f"{name}: nr_requests is {facts['nr_requests']} after writing 1, expected the "
                                  f"minimum {MIN_NR_REQUESTS}")

        def eagain(rec: dict, n: int, async_: bool) -> None:
            c, b = st_small["chardev"], st_small["blockdev"]
            seed = 60 + n
            common = dict(offset=region(n), length=EAGAIN_LEN, seed=seed)
            rec["usable_tags"], rec["qd"] = st_small.get("usable_tags"), EAGAIN_QD
            result = run_engine(ctx, rec, "chardev-write", eargs(c, "write", qd=EAGAIN_QD, scribble=True,
                                                                 **{"async": async_}, **common))
            judge_scribble("chardev-write", result)
            workers = result.get("iowq_workers_max")
            rec["iowq_workers_max"] = workers
            if not async_ and not workers:
                raise CheckFailed(f"chardev-write: no command went to io-wq, so the -EAGAIN retry never ran "
                                  f"({rec['usable_tags']} tags, qd {EAGAIN_QD}): the check proved nothing")
            expect_clean("block-verify", run_engine(ctx, rec, "block-verify", eargs(b, "verify", qd=4, **common)))
            result = run_engine(ctx, rec, "chardev-verify", eargs(c, "verify", qd=EAGAIN_QD, scribble=True,
                                                                  **{"async": async_}, **common))
            judge_scribble("chardev-verify", result)

        plugged = ctx.check("hotplug", plug(ctx, disk, st))
        run_gated(ctx, plugged.status == "pass", [
            ("link-write-flush", lambda rec: chains(rec, 0, "flush", False)),
            ("link-write-flush-slot-reused", lambda rec: chains(rec, 1, "flush", True)),
            ("link-write-read", lambda rec: chains(rec, 2, "read", False)),
            ("link-write-read-slot-reused", lambda rec: chains(rec, 3, "read", True)),
            ("link-write-read-slot-reused-async", lambda rec: chains(rec, 4, "read", True, async_=True)),
            ("link-write-read-slot-reused-block-path",
             lambda rec: chains(rec, 5, "read", True, path=st["blockdev"])),
        ], "not run: hotplug failed")
        run_gated(ctx, "name" in st, [("unplug", unplug(ctx, disk, st))], "not run: the disk never appeared")
        small_plugged = ctx.check("hotplug-small-queue", plug(ctx, small, st_small))
        tags_ok = run_gated(ctx, small_plugged.status == "pass", [("fewer-tags-than-in-flight", scarce_tags)],
                            "not run: hotplug failed")
        run_gated(ctx, tags_ok, [
            ("eagain-write-verify-slot-reused", lambda rec: eagain(rec, 0, False)),
            ("eagain-write-verify-slot-reused-async", lambda rec: eagain(rec, 1, True)),
        ], "not run: the disk's tags could not be made scarce")
        run_gated(ctx, "name" in st_small, [("unplug-small-queue", unplug(ctx, small, st_small))],
                  "not run: the disk never appeared")


def _read(ctx: ScenarioContext, path: str) -> str | None:
    try:
        return ctx.agent.read_file(path).strip()
    except AgentError:
        return None


def _read_int(ctx: ScenarioContext, path: str) -> int | None:
    text = _read(ctx, path)
    return int(text) if text and text.isdigit() else None
