"""driver-access: the expectation table (pure) and the scenario against the fake guest of
test_driver_scenarios.py, with its driver switched to the permission model v3 implements
(NVMe's nvme_cmd_allowed(), -EBUSY on a mounted disk) or to v2's (-EBADF by open mode).
"""

from __future__ import annotations

import re

import pytest

from test_driver_scenarios import TYPES, WRITES, FakeGuest, failing, run_scenario, statuses
from vblk_ci.errors import AgentError
from vblk_ci.scenarios import suite
from vblk_ci.scenarios.driver_access import (
    COMMANDS, ROOT_RDONLY, ROOT_RDWR, USER_RDONLY, USER_RDWR, DriverAccess, Opener, command_args,
    expectation_table, expected_res,
)

CHANGES = ("write", "discard", "write-zeroes")


# -- the expectation table ------------------------------------------------------------------------


def test_root_may_send_everything_whatever_the_open_mode():
    for opener in (ROOT_RDWR, ROOT_RDONLY):
        assert {op: expected_res(op, opener) for op in COMMANDS} == dict.fromkeys(COMMANDS, 0)


def test_unprivileged_changes_need_a_writable_fd_else_eacces():
    assert {op: expected_res(op, USER_RDWR) for op in COMMANDS} == dict.fromkeys(COMMANDS, 0)
    assert {op: expected_res(op, USER_RDONLY) for op in COMMANDS} == {
        "read": 0, "get-id": 0, "flush": 0, "write": -13, "discard": -13, "write-zeroes": -13}


def test_read_only_disk_and_mounted_disk():
    for opener in (ROOT_RDWR, ROOT_RDONLY, USER_RDWR):
        assert [expected_res(op, opener, read_only_disk=True) for op in CHANGES] == [-30] * 3
        assert expected_res("read", opener, read_only_disk=True) == 0
        assert expected_res("flush", opener, read_only_disk=True) is None  # the contract does not say
    for opener in (ROOT_RDWR, ROOT_RDONLY, USER_RDWR):
        assert [expected_res(op, opener, writes_blocked=True) for op in COMMANDS] == [0, 0, 0, -16, -16, -16]
    # an unprivileged O_RDONLY change on such a disk: -EACCES or the disk's refusal, left open
    assert expected_res("write", USER_RDONLY, read_only_disk=True) is None
    assert expected_res("write", USER_RDONLY, writes_blocked=True) is None
    assert expected_res("read", USER_RDONLY, writes_blocked=True) == 0
    with pytest.raises(ValueError):
        expected_res("trim", ROOT_RDWR)


def test_expectation_table_leaves_out_undecided_cells():
    table = expectation_table((ROOT_RDWR, USER_RDONLY), read_only_disk=True)
    assert ("root-rdwr", "flush") not in table and ("uid-1000-rdonly", "write") not in table
    assert table[("root-rdwr", "write")] == -30 and table[("uid-1000-rdonly", "read")] == 0


def test_opener_argv_and_command_args():
    base = ["--path", "/dev/vdbc0", "--op", "write"]
    assert ROOT_RDWR.argv(base) == base
    assert ROOT_RDONLY.argv(base) == [*base, "--rdonly"]
    assert USER_RDONLY.argv(base) == [*base, "--rdonly", "--uid", "1000", "--gid", "1000"]
    assert Opener(False, False).label == "uid-1000-rdwr"
    assert command_args("/dev/vdbc0", "flush", 4096, 3) == ["--path", "/dev/vdbc0", "--op", "flush"]
    assert command_args("/dev/vdbc0", "write", 4096, 3) == [
        "--path", "/dev/vdbc0", "--op", "write", "--offset", "4096", "--length", "65536", "--bs", "65536",
        "--seed", "3"]
    assert "--seed" not in command_args("/dev/vdbc0", "discard", 0, 3)


def test_review_suite_has_driver_access():
    assert "driver-access" in [cls.name for cls in suite("review")]


# -- the scenario against a fake guest ------------------------------------------------------------


class AccessGuest(FakeGuest):
    """FakeGuest with a filesystem to mount, and the v3 access model; ``v2`` in faults gives today's."""

    def __init__(self, faults=frozenset(), filesystems: str = "nodev\tproc\n\text4\n",
                 applets: tuple[str, ...] = ("mke2fs", "mount", "umount")):
        super().__init__(faults)
        self.filesystems, self.applets = filesystems, applets
        self.mounted: dict[str, str] = {}  # block device -> mount point

    def exec(self, argv=None, cmd=None, timeout_s=30.0, stdin=None) -> dict:
        ok = lambda out="": {"rc": 0, "stdout": out, "stderr": ""}  # noqa: E731
        if cmd == "cat /proc/filesystems":
            return ok(self.filesystems)
        if cmd.startswith("for a in mke2fs mount umount;"):
            return ok("".join(f"{a}\n" for a in ("mke2fs", "mount", "umount") if a not in self.applets))
        m = re.match(r"mke2fs -F (/dev/vd\w) (\d+)$", cmd)
        if m:
            assert m.group(1) not in self.mounted
            return ok()
        m = re.match(r"mkdir -p (\S+) && mount -t ext4 (/dev/vd\w) \1$", cmd)
        if m:
            self.mounted[m.group(2)] = m.group(1)
            return ok()
        if re.match(r"echo data > \S+/f && sync$", cmd):
            return ok()
        m = re.match(r"grep (/dev/vd\w) /proc/mounts$", cmd)
        if m:
            dev = m.group(1)
            return ok(f"{dev} {self.mounted[dev]} ext4 rw 0 0\n") if dev in self.mounted else {"rc": 1}
        m = re.match(r"umount (\S+)$", cmd)
        if m:
            dev = next(d for d, mnt in self.mounted.items() if mnt == m.group(1))
            del self.mounted[dev]
            return ok()
        return super().exec(argv=argv, cmd=cmd, timeout_s=timeout_s, stdin=stdin)

    def engine(self, args, timeout_s=120.0) -> dict:
        path = args[args.index("--path") + 1]
        blocked = path in self.mounted and "write_mounted" not in self.faults
        if blocked and "--rdonly" not in args:
            msg = f"vblk-engine: cannot open {path}: Device or resource busy\n"
            raise AgentError("EngineFailed", f"vblk-engine exited 3: {msg.strip()}", {"exit_code": 3, "stderr": msg})
        return super().engine(args, timeout_s)

    def _refusal(self, disk, o, off, n):
        t = o.get("type", TYPES[o["op"]])
        if "v2" in self.faults:  # today's series: the open mode decides, even for root, and flush needs it
            if o.get("rdonly") and t in WRITES:
                return -9
            if disk.spec.read_only and t in WRITES:
                return -30
            return 0
        changes = t in (1, 11, 13)
        # the first v3 (before the fuzzer's finding): reading needed FMODE_READ
        if "fmode_read" in self.faults and t in (0, 8) and o.get("wronly") and "uid" in o:
            return -13
        if changes and o.get("rdonly") and "uid" in o:
            return -13
        if changes and disk.spec.read_only:
            return -30
        if changes and f"/dev/{disk.name}" in self.mounted:
            return -16
        return 0


def test_access_all_pass_on_the_v3_model(tmp_path):
    guest = AccessGuest()
    checks, guest, _ = run_scenario(DriverAccess, tmp_path, guest)
    assert set(statuses(checks).values()) == {"pass"}, {n: c.detail for n, c in checks.items() if c.detail}
    assert list(checks) == [
        "hotplug", "node-given-to-user", "root-rdwr-every-command", "root-rdonly-cap-sys-admin-every-command",
        "user-rdwr-every-command", "user-rdonly-changes-eacces", "user-wronly-every-command",
        "prefill-before-mount", "mkfs-and-mount",
        "mounted-block-open-ebusy", "mounted-changes-ebusy", "mounted-refused-changes-left-data", "umount",
        "writes-after-umount", "hotplug-read-only-disk", "read-only-node-given-to-user",
        "read-only-disk-changes-erofs", "unplug", "unplug-read-only-disk"]
    got = checks["user-rdonly-changes-eacces"].data["got"]
    assert got == {"uid-1000-rdonly read": 0, "uid-1000-rdonly get-id": 0, "uid-1000-rdonly flush": 0,
                   "uid-1000-rdonly write": -13, "uid-1000-rdonly discard": -13, "uid-1000-rdonly write-zeroes": -13}
    assert set(checks["user-wronly-every-command"].data["got"].values()) == {0}
    assert checks["mounted-changes-ebusy"].data["got"]["root-rdwr write"] == -16
    refused = checks["mounted-block-open-ebusy"].data["block-write-while-mounted"]
    assert refused["data"]["exit_code"] == 3 and "Device or resource busy" in refused["data"]["stderr"]
    # root really sent its writes through an O_RDONLY fd, and the user dropped to uid 1000
    engine = [c[1] for c in guest.calls if c[0] == "engine"]
    assert any("--rdonly" in e and "write" in e and "--uid" not in e for e in engine)
    assert any(e[-4:] == ("--uid", "1000", "--gid", "1000") and "--rdonly" in e for e in engine)
    assert not guest.mounted and not guest.disks


def test_access_on_the_v2_model_fails_where_v2_differs(tmp_path):
    checks, _, _ = run_scenario(DriverAccess, tmp_path, AccessGuest({"v2"}))
    assert failing(checks) == ["root-rdonly-cap-sys-admin-every-command", "user-rdonly-changes-eacces",
                               "mounted-changes-ebusy", "mounted-refused-changes-left-data",
                               "read-only-disk-changes-erofs"]
    root = checks["root-rdonly-cap-sys-admin-every-command"].detail
    assert "root-rdonly write: cqe->res = -9 (-EBADF), expected 0 (success)" in root
    assert "root-rdonly flush: cqe->res = -9 (-EBADF), expected 0 (success)" in root
    user = checks["user-rdonly-changes-eacces"].detail
    assert "uid-1000-rdonly write: cqe->res = -9 (-EBADF), expected -13 (-EACCES)" in user
    assert "uid-1000-rdonly flush: cqe->res = -9 (-EBADF), expected 0 (success)" in user
    assert "root-rdwr write: cqe->res = 0 (success), expected -16 (-EBUSY)" in checks["mounted-changes-ebusy"].detail
    assert "the refused command's effect is wrong" in checks["mounted-refused-changes-left-data"].detail
    assert "root-rdonly write: cqe->res = -9 (-EBADF), expected -30 (-EROFS)" in \
        checks["read-only-disk-changes-erofs"].detail


def test_reads_refused_on_a_write_only_fd_fail_the_wronly_row(tmp_path):
    checks, guest, _ = run_scenario(DriverAccess, tmp_path, AccessGuest({"fmode_read"}))
    assert failing(checks) == ["user-wronly-every-command"]
    detail = checks["user-wronly-every-command"].detail
    assert "uid-1000-wronly read: cqe->res = -13 (-EACCES), expected 0 (success)" in detail
    assert "uid-1000-wronly get-id: cqe->res = -13 (-EACCES), expected 0 (success)" in detail
    engine = [c[1] for c in guest.calls if c[0] == "engine"]
    assert any("--wronly" in e and "--uid" in e for e in engine)


def test_access_control_fails_when_a_mounted_disk_stays_writable(tmp_path):
    checks, _, _ = run_scenario(DriverAccess, tmp_path, AccessGuest({"write_mounted"}))
    assert "mounted-block-open-ebusy" in failing(checks)
    assert "CONFIG_BLK_DEV_WRITE_MOUNTED=y" in checks["mounted-block-open-ebusy"].detail


@pytest.mark.parametrize("guest, reason", [
    (AccessGuest(filesystems="nodev\tproc\n"), "no ext4 in /proc/filesystems"),
    (AccessGuest(applets=("mount", "umount")), "the guest lacks mke2fs"),
])
def test_access_requires(tmp_path, guest, reason):
    reasons, _, _ = run_scenario(DriverAccess, tmp_path, guest)
    assert len(reasons) == 1 and reason in reasons[0]
