"""driver-permissions: who may use /dev/vdXc0, and what a read-only disk allows.

The driver asks for no capability: access follows the node's mode and the
file's open mode, as NVMe's generic char device does. The engine drops to an
unprivileged uid/gid (``--uid/--gid``: no supplementary groups, no capabilities)
before it opens the node:

- the node is created 0600 root:root, so an unprivileged open fails (EACCES);
- owned by the user, the user reads and writes (data checked through /dev/vdX
  as root);
- 0640 with the user's group: O_RDWR is refused at open, an O_RDONLY fd reads
  but its writes are -EACCES (v3, as nvme_cmd_allowed(); v2 answered -EBADF);
  a user outside the group cannot open it at all;
- a disk plugged read-only: writes, discards and write-zeroes are -EROFS,
  reads work.
"""

from __future__ import annotations

import shlex

from ..disks.spec import DiskSpec, create_sparse_file
from ..errors import AgentError, CheckFailed
from .base import Scenario, ScenarioContext, register
from .driver_common import (
    EACCES, EROFS, KiB, MiB, eargs, expect_clean, expect_results, plug, run_engine, run_gated, unplug,
)

DISK_SIZE = 64 * MiB
OFF = 8 * MiB
LEN = 256 * KiB
USER = (1000, 1000)  # owner in the "with access" checks
GROUP_MEMBER = (1001, 1000)  # in the node's group only
STRANGER = (1002, 1002)  # neither owner nor group


def as_user(ids: tuple[int, int], argv: list[str]) -> list[str]:
    return [*argv, "--uid", str(ids[0]), "--gid", str(ids[1])]


@register
class DriverPermissions(Scenario):
    name = "driver-permissions"
    description = (
        "An unprivileged user without access to /dev/vdXc0 (0600 root) cannot open it (EACCES, engine exit 3); "
        "with access (owner, or group read-only) it works without any capability, reads through an O_RDONLY fd "
        "but writes there are -EACCES; a read-only disk refuses writes, discards and write-zeroes with -EROFS."
    )

    def run(self, ctx: ScenarioContext) -> None:
        image = create_sparse_file(ctx.scratch() / "perm0.raw", DISK_SIZE)
        rw = DiskSpec(id="perm0", serial="vblk-perm0", backend="file", path=image, size_bytes=DISK_SIZE).validate()
        ro = DiskSpec(id="perm1", serial="vblk-perm1", backend="null", size_bytes=DISK_SIZE,
                      read_only=True).validate()
        st: dict = {}
        st_ro: dict = {}

        def sh(rec: dict, key: str, cmd: str) -> str:
            out = ctx.agent.exec(cmd=cmd, timeout_s=ctx.timeouts(20.0))
            rec[key] = out
            if out.get("rc") != 0:
                raise CheckFailed(f"{key}: `{cmd}` exited {out.get('rc')}: {out.get('stderr', '').strip()}")
            return out.get("stdout", "").strip()

        def node_mode(rec: dict, key: str) -> str:
            return sh(rec, key, f"stat -L -c '%a %u %g' {shlex.quote(st['chardev'])}")

        def open_refused(rec: dict, key: str, argv: list[str]) -> None:
            try:
                result = ctx.agent.engine(argv, timeout_s=ctx.timeouts(60.0))
            except AgentError as exc:
                rec[key] = {"error": str(exc), "data": exc.data}
                data = exc.data if isinstance(exc.data, dict) else {}
                if exc.kind != "EngineFailed" or data.get("exit_code") != 3:
                    raise CheckFailed(f"{key}: expected the engine to exit 3, got {exc}") from exc
                if "Permission denied" not in (data.get("stderr") or ""):
                    raise CheckFailed(f"{key}: the open failed, but not with EACCES: {data.get('stderr')!r}") from exc
                return
            rec[key] = result
            raise CheckFailed(f"{key}: the unprivileged open succeeded (the job ran: {result.get('ios')} I/Os, "
                              f"results {result.get('results')})")

        def job(rec: dict, key: str, argv: list[str]) -> dict:
            return run_engine(ctx, rec, key, argv)

        def c_args(op: str, **opts) -> list[str]:
            return eargs(st["chardev"], op, offset=OFF, length=LEN, bs=64 * KiB, qd=2, **opts)

        def default_mode(rec: dict) -> None:
            mode = node_mode(rec, "stat")
            if mode != "600 0 0":
                raise CheckFailed(f"{st['chardev']} is '{mode}' (mode uid gid), expected '600 0 0'")

        def no_access(rec: dict) -> None:
            open_refused(rec, "read-as-uid-1000", as_user(USER, c_args("read")))
            open_refused(rec, "read-rdonly-as-uid-1000", as_user(USER, c_args("read", rdonly=True)))

        def owner_access(rec: dict) -> None:
            sh(rec, "chown", f"chown {USER[0]}:{USER[1]} {shlex.quote(st['chardev'])}")
            expect_clean("write", job(rec, "write", as_user(USER, c_args("write", seed=41))))
            expect_clean("verify", job(rec, "verify", as_user(USER, c_args("verify", seed=41))))
            block = eargs(st["blockdev"], "verify", offset=OFF, length=LEN, seed=41)
            expect_clean("block-verify-as-root", job(rec, "block-verify-as-root", block))
            expect_results("flush", job(rec, "flush", as_user(USER, eargs(st["chardev"], "flush"))), 0)

        def group_read_only(rec: dict) -> None:
            node = shlex.quote(st["chardev"])
            sh(rec, "chmod", f"chown 0:{GROUP_MEMBER[1]} {node} && chmod 0640 {node}")
            rec["mode"] = node_mode(rec, "stat")
            open_refused(rec, "open-rdwr-as-group-member", as_user(GROUP_MEMBER, c_args("read")))
            expect_clean("verify-rdonly", job(rec, "verify-rdonly",
                                              as_user(GROUP_MEMBER, c_args("verify", seed=41, rdonly=True))))
            result = job(rec, "write-rdonly", as_user(GROUP_MEMBER, c_args("write", rdonly=True)))
            expect_results("write-rdonly", result, -EACCES)
            open_refused(rec, "open-rdonly-as-stranger", as_user(STRANGER, c_args("read", rdonly=True)))

        def read_only_disk(rec: dict) -> None:
            c = st_ro["chardev"]
            if not st_ro["info"].get("read_only"):
                raise CheckFailed(f"{st_ro['name']} was plugged read-only but /sys/block/.../ro is not 1")
            ro_args = {"offset": OFF, "length": LEN, "bs": 64 * KiB}
            expect_results("read", job(rec, "read", eargs(c, "read", **ro_args)), 0)
            for op in ("write", "discard", "write-zeroes"):
                expect_results(op, job(rec, op, eargs(c, op, **ro_args)), -EROFS)

        first = ctx.check("hotplug", plug(ctx, rw, st))
        run_gated(ctx, first.status == "pass", [
            ("node-is-0600-root", default_mode),
            ("unprivileged-without-access-eacces", no_access),
            ("unprivileged-owner-reads-and-writes", owner_access),
            ("unprivileged-group-read-only-eacces", group_read_only),
        ], "not run: hotplug failed")
        second = ctx.check("hotplug-read-only-disk", plug(ctx, ro, st_ro))
        run_gated(ctx, second.status == "pass", [("read-only-disk-erofs", read_only_disk)],
                  "not run: hotplug failed")
        run_gated(ctx, "name" in st, [("unplug", unplug(ctx, rw, st))], "not run: the disk never appeared")
        run_gated(ctx, "name" in st_ro, [("unplug-read-only-disk", unplug(ctx, ro, st_ro))],
                  "not run: the disk never appeared")
