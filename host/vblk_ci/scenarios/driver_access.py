"""driver-access: who may send which command through /dev/vdXc0, NVMe's way, and mounted disks.

review-v2 finding #5: v2's permission model is not NVMe's. This scenario encodes the
model v3 implements (``nvme_cmd_allowed()``'s), one expected cqe->res per command:

- an opener with CAP_SYS_ADMIN (root) may send every command whatever the fd's open
  mode: through an O_RDONLY fd WRITE, DISCARD, WRITE_ZEROES and FLUSH succeed (the
  seed's ``t/io_uring-vblk`` opens the node O_RDONLY and sends only writes);
- anyone else who could open the node may send READ, GET_ID and FLUSH on any fd, and
  the commands that change the disk (OUT, DISCARD, WRITE_ZEROES) only on an fd open
  for writing; a refusal is -EACCES (v2 answers -EBADF, even to root);
- a disk plugged read-only refuses the changes with -EROFS (whoever asks);
- while a filesystem is mounted from /dev/vdX (guest kernel with
  CONFIG_BLK_DEV_WRITE_MOUNTED=n, so the block device cannot be opened for writing:
  -EBUSY, checked as a control), the changes through /dev/vdXc0 are refused with
  -EBUSY for every caller including root; READ, GET_ID and FLUSH still work; after
  umount, writes work again.

The unprivileged opener is the engine's ``--uid/--gid`` (no groups, no capabilities)
on a node chowned to it (mode 0600), so it can open O_RDWR and O_RDONLY. Every
change that is allowed is checked through /dev/vdX as root (O_DIRECT): written data,
zeroes; every change that is refused must have left the region's earlier data intact.

driver-permissions checks node modes and unprivileged openers; this scenario is the access table (it fails on v2).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from ..disks.spec import DiskSpec, create_sparse_file
from ..errors import AgentError, CheckFailed
from .base import Scenario, ScenarioContext, register
from .driver_common import (
    EACCES, EBUSY, EROFS, KiB, MiB, eargs, errno_text, expect_clean, plug, run_engine, run_gated, unplug,
)

# The commands, by engine op: the first three leave the disk as it was, the rest change it.
COMMANDS = ("read", "get-id", "flush", "write", "discard", "write-zeroes")
CHANGES = frozenset({"write", "discard", "write-zeroes"})

DISK_SIZE = 64 * MiB
LEN = 64 * KiB  # one command each: bs = length = LEN
USER = (1000, 1000)  # the unprivileged opener (owns the node in this scenario)
BASE_SEED = 70  # the data a region holds before its row runs
MNT = "/mnt/vblk-access"
FS_KIB = 16 * 1024  # the filesystem covers the first 16 MiB only ...
MOUNTED_OFF = 32 * MiB  # ... so the writes tried while it is mounted can never corrupt it


@dataclass(frozen=True)
class Opener:
    """Who opens the node, and how."""

    admin: bool  # root (CAP_SYS_ADMIN) or the unprivileged USER
    rdonly: bool  # O_RDONLY fd, else O_RDWR ...
    wronly: bool = False  # ... or O_WRONLY

    @property
    def mode(self) -> str:
        return "rdonly" if self.rdonly else "wronly" if self.wronly else "rdwr"

    @property
    def label(self) -> str:
        return f"{'root' if self.admin else f'uid-{USER[0]}'}-{self.mode}"

    def argv(self, argv: list[str]) -> list[str]:
        argv = [*argv, f"--{self.mode}"] if self.mode != "rdwr" else list(argv)
        return argv if self.admin else [*argv, "--uid", str(USER[0]), "--gid", str(USER[1])]


ROOT_RDWR, ROOT_RDONLY = Opener(True, False), Opener(True, True)
USER_RDWR, USER_RDONLY = Opener(False, False), Opener(False, True)
USER_WRONLY = Opener(False, False, wronly=True)


def expected_res(op: str, opener: Opener, *, read_only_disk: bool = False, writes_blocked: bool = False) -> int | None:
    """cqe->res v3 must give ``op`` from ``opener``; None where the contract does not say.

    ``read_only_disk``: the disk was plugged read-only. ``writes_blocked``: a filesystem
    is mounted from the block device (BLK_DEV_WRITE_MOUNTED=n).
    """
    if op not in COMMANDS:
        raise ValueError(f"unknown command {op!r}")
    if op not in CHANGES:
        # FLUSH on a read-only disk: v2 says -EROFS (review #11), the v3 contract says nothing.
        return None if op == "flush" and read_only_disk else 0
    denied = not opener.admin and opener.rdonly
    if denied and (read_only_disk or writes_blocked):
        return None  # -EACCES or the disk's own refusal: which comes first is not part of the contract
    if denied:
        return -EACCES
    if read_only_disk:
        return -EROFS
    if writes_blocked:
        return -EBUSY
    return 0


def expectation_table(openers: tuple[Opener, ...], **state: bool) -> dict[tuple[str, str], int]:
    """(opener label, op) -> expected cqe->res, for the cells the contract decides."""
    table = {}
    for opener in openers:
        for op in COMMANDS:
            res = expected_res(op, opener, **state)
            if res is not None:
                table[(opener.label, op)] = res
    return table


def command_args(path: str, op: str, offset: int, seed: int) -> list[str]:
    """Engine argv for one command of ``op`` at ``offset`` (flush and get-id take no range)."""
    if op in ("flush", "get-id"):
        return eargs(path, op)
    return eargs(path, op, offset=offset, length=LEN, bs=LEN, seed=seed if op == "write" else None)


def sub_offset(base: int, op: str) -> int:
    """Each command of a row works on its own LEN-sized slot of the row's 1 MiB region."""
    return base + COMMANDS.index(op) * 128 * KiB


@register
class DriverAccess(Scenario):
    name = "driver-access"
    description = (
        "Permissions as NVMe's nvme_cmd_allowed() decides them (review-v2 #5), one cqe->res per command: root "
        "may send every command on an O_RDONLY fd; an unprivileged opener may read, get-id and flush on any fd "
        "(O_WRONLY too), "
        "write/discard/write-zeroes only on an O_RDWR fd, else -EACCES; a read-only disk refuses changes with "
        "-EROFS; with ext2 mounted from /dev/vdX (block node not writable: -EBUSY) changes through /dev/vdXc0 are "
        "-EBUSY for everyone, reads and flushes work, and writes work again after umount. Allowed changes are "
        "verified, refused ones shown to leave the data, through /dev/vdX."
    )

    def requires(self, ctx: ScenarioContext) -> list[str]:
        reasons = []
        fs = ctx.agent.exec(cmd="cat /proc/filesystems", timeout_s=ctx.timeouts(20.0))
        if "ext4" not in fs.get("stdout", "").split():
            reasons.append("the guest kernel has no ext4 in /proc/filesystems (CONFIG_EXT4_FS) to mount a filesystem")
        missing = ctx.agent.exec(cmd="for a in mke2fs mount umount; do command -v $a >/dev/null || echo $a; done",
                                 timeout_s=ctx.timeouts(20.0)).get("stdout", "").split()
        if missing:
            reasons.append(f"the guest lacks {', '.join(missing)} (busybox applets) to make and mount ext2")
        return reasons

    def run(self, ctx: ScenarioContext) -> None:
        image = create_sparse_file(ctx.scratch() / "access0.raw", DISK_SIZE)
        rw = DiskSpec(id="access0", serial="vblk-access0", backend="file", path=image, size_bytes=DISK_SIZE,
                      discard=True, write_zeroes=True).validate()
        ro = DiskSpec(id="access1", serial="vblk-access1", backend="null", size_bytes=DISK_SIZE,
                      read_only=True).validate()
        st: dict = {}
        st_ro: dict = {}

        def sh(rec: dict, key: str, cmd: str, timeout: float = 60.0) -> str:
            out = ctx.agent.exec(cmd=cmd, timeout_s=ctx.timeouts(timeout))
            rec[key] = out
            if out.get("rc") != 0:
                raise CheckFailed(f"{key}: `{cmd}` exited {out.get('rc')}: {out.get('stderr', '').strip()}")
            return out.get("stdout", "").strip()

        def give_to_user(state: dict):
            def check(rec: dict) -> None:
                node = shlex.quote(state["chardev"])
                sh(rec, "chown", f"chown {USER[0]}:{USER[1]} {node} && chmod 0600 {node}")
                rec["mode"] = sh(rec, "stat", f"stat -L -c '%a %u %g' {node}")
                if rec["mode"] != f"600 {USER[0]} {USER[1]}":
                    raise CheckFailed(f"{state['chardev']} is '{rec['mode']}' (mode uid gid) after chown")
            return check

        def block(rec: dict, key: str, op: str, offset: int, length: int = LEN, rdonly: bool = False, **opts) -> dict:
            argv = eargs(st["blockdev"], op, offset=offset, length=length, bs=LEN, rdonly=rdonly, **opts)
            return run_engine(ctx, rec, key, argv)

        def send(rec: dict, opener: Opener, path: str, op: str, offset: int, seed: int) -> object:
            """One command; its cqe->res, or the engine's failure as text."""
            key = f"{opener.label}-{op}"
            try:
                result = ctx.agent.engine(opener.argv(command_args(path, op, offset, seed)),
                                          timeout_s=ctx.timeouts(120.0))
            except AgentError as exc:
                rec[key] = {"error": str(exc), "data": exc.data}
                return f"engine failed: {exc}"
            rec[key] = result
            results = result.get("results") or []
            if result.get("exit_code") != 0 or len(results) != 1:
                return f"engine exit {result.get('exit_code')}, results {results}"
            return results[0]

        def judge(table: dict, got: dict) -> list[str]:
            wrong = []
            for (label, op), want in table.items():
                res = got.get((label, op))
                if res != want:
                    shown = errno_text(res) if isinstance(res, int) else res
                    wrong.append(f"{label} {op}: cqe->res = {shown}, expected {errno_text(want)}")
            return wrong

        def data_after(rec: dict, label: str, op: str, offset: int, allowed: bool, new_seed: int,
                       rdonly_block: bool = False) -> str | None:
            """Through /dev/vdX as root: an allowed change is there, a refused one left BASE_SEED."""
            key = f"{label}-{op}-block-verify"
            if allowed and op == "discard":
                return None  # what a discarded range reads back as is the device's business
            opts = {"seed": BASE_SEED}
            if allowed:
                opts = {"seed": new_seed} if op == "write" else {"zero": True}
            result = block(rec, key, "verify", offset, rdonly=rdonly_block, **opts)
            try:
                expect_clean(key, result)
            except CheckFailed as exc:
                what = "the allowed" if allowed else "the refused"
                return f"{label} {op}: {what} command's effect is wrong through {st['blockdev']}: {exc}"
            return None

        def row(openers: tuple[Opener, ...], base: int, seed: int, state: dict, data: bool = True, **flags: bool):
            """Each opener sends each command; every cell the contract decides must match."""
            def check(rec: dict) -> None:
                table = expectation_table(openers, **flags)
                rec["expected"] = {f"{label} {op}": res for (label, op), res in table.items()}
                got: dict = {}
                wrong: list[str] = []
                for i, opener in enumerate(openers):
                    region = base + i * MiB
                    if data:
                        expect_clean("prefill", block(rec, f"{opener.label}-prefill", "write",
                                                      sub_offset(region, "write"), seed=BASE_SEED,
                                                      length=3 * 128 * KiB))
                    for op in COMMANDS:
                        got[(opener.label, op)] = send(rec, opener, state["chardev"], op, sub_offset(region, op),
                                                       seed + i)
                    if data:
                        for op in sorted(CHANGES):
                            allowed = got[(opener.label, op)] == 0
                            problem = data_after(rec, opener.label, op, sub_offset(region, op), allowed, seed + i)
                            if problem:
                                wrong.append(problem)
                rec["got"] = {f"{label} {op}": res for (label, op), res in got.items()}
                wrong = judge(table, got) + wrong
                if wrong:
                    raise CheckFailed("; ".join(wrong))
            return check

        def block_open_refused(rec: dict) -> None:
            """Control: the mounted block device cannot be opened for writing (BLK_DEV_WRITE_MOUNTED=n)."""
            try:
                result = block(rec, "block-write-while-mounted", "write", MOUNTED_OFF, seed=BASE_SEED + 9)
            except AgentError as exc:
                data = exc.data if isinstance(exc.data, dict) else {}
                rec["block-write-while-mounted"] = {"error": str(exc), "data": exc.data}
                if data.get("exit_code") != 3 or "Device or resource busy" not in (data.get("stderr") or ""):
                    raise CheckFailed(f"opening {st['blockdev']} O_RDWR while mounted failed, but not with "
                                      f"EBUSY: {exc}") from exc
                return
            raise CheckFailed(f"{st['blockdev']} opened O_RDWR while mounted and the write ran "
                              f"(results {result.get('results')}): is CONFIG_BLK_DEV_WRITE_MOUNTED=y?")

        def mounted_row(rec: dict) -> None:
            row((ROOT_RDWR, USER_RDWR), MOUNTED_OFF, 80, st, data=False, writes_blocked=True)(rec)

        def mounted_data_intact(rec: dict) -> None:
            """The changes tried while mounted left the prefilled data (read through an O_RDONLY /dev/vdX)."""
            wrong = []
            for i, opener in enumerate((ROOT_RDWR, USER_RDWR)):
                for op in sorted(CHANGES):
                    problem = data_after(rec, opener.label, op, sub_offset(MOUNTED_OFF + i * MiB, op), False, 0,
                                         rdonly_block=True)
                    if problem:
                        wrong.append(problem)
            if wrong:
                raise CheckFailed("; ".join(wrong))

        def prefill_mounted(rec: dict) -> None:
            for i in range(2):
                expect_clean("prefill", block(rec, f"prefill-{i}", "write", sub_offset(MOUNTED_OFF + i * MiB, "write"),
                                              seed=BASE_SEED, length=3 * 128 * KiB))

        def mkfs_mount(rec: dict) -> None:
            dev = shlex.quote(st["blockdev"])
            sh(rec, "mke2fs", f"mke2fs -F {dev} {FS_KIB}", timeout=120.0)
            sh(rec, "mount", f"mkdir -p {MNT} && mount -t ext4 {dev} {MNT}")
            st["mounted"] = True
            sh(rec, "use", f"echo data > {MNT}/f && sync")
            rec["mounts"] = sh(rec, "mounts", f"grep {dev} /proc/mounts")

        def umount(rec: dict) -> None:
            sh(rec, "umount", f"umount {MNT}")
            st["mounted"] = False

        def writes_after_umount(rec: dict) -> None:
            res = send(rec, ROOT_RDWR, st["chardev"], "write", MOUNTED_OFF, 90)
            if res != 0:
                raise CheckFailed(f"root-rdwr write after umount: cqe->res = "
                                  f"{errno_text(res) if isinstance(res, int) else res}, expected 0 (success)")
            expect_clean("block-verify", block(rec, "block-verify", "verify", MOUNTED_OFF, seed=90))

        # The rw disk: the open-mode table, then the mounted filesystem.
        first = ctx.check("hotplug", plug(ctx, rw, st))
        run_gated(ctx, first.status == "pass", [
            ("node-given-to-user", give_to_user(st)),
            ("root-rdwr-every-command", row((ROOT_RDWR,), 1 * MiB, 10, st)),
            ("root-rdonly-cap-sys-admin-every-command", row((ROOT_RDONLY,), 2 * MiB, 20, st)),
            ("user-rdwr-every-command", row((USER_RDWR,), 3 * MiB, 30, st)),
            ("user-rdonly-changes-eacces", row((USER_RDONLY,), 4 * MiB, 40, st)),
            # nvme_cmd_allowed() lets any opener read: the first v3 wanted FMODE_READ (-EACCES)
            ("user-wronly-every-command", row((USER_WRONLY,), 5 * MiB, 45, st)),
            ("prefill-before-mount", prefill_mounted),
        ], "not run: hotplug failed")
        mounted = run_gated(ctx, first.status == "pass", [("mkfs-and-mount", mkfs_mount)],
                            "not run: hotplug failed")
        run_gated(ctx, mounted, [
            ("mounted-block-open-ebusy", block_open_refused),
            ("mounted-changes-ebusy", mounted_row),
            ("mounted-refused-changes-left-data", mounted_data_intact),
        ], "not run: the filesystem was not mounted")
        run_gated(ctx, bool(st.get("mounted")), [("umount", umount)], "not run: nothing mounted")
        run_gated(ctx, mounted and not st.get("mounted"), [("writes-after-umount", writes_after_umount)],
                  "not run: the filesystem was not mounted and unmounted")

        # The read-only disk.
        second = ctx.check("hotplug-read-only-disk", plug(ctx, ro, st_ro))
        run_gated(ctx, second.status == "pass", [
            ("read-only-node-given-to-user", give_to_user(st_ro)),
            ("read-only-disk-changes-erofs", row((ROOT_RDWR, ROOT_RDONLY, USER_RDWR), 1 * MiB, 50, st_ro,
                                                 data=False, read_only_disk=True)),
        ], "not run: hotplug failed")

        run_gated(ctx, "name" in st and not st.get("mounted"), [("unplug", unplug(ctx, rw, st))],
                  "not run: the disk never appeared, or is still mounted")
        run_gated(ctx, "name" in st_ro, [("unplug-read-only-disk", unplug(ctx, ro, st_ro))],
                  "not run: the disk never appeared")
