"""QEMU argv and QMP argument builders, tested as exact values (pure functions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vblk_ci.disks.spec import DiskSpec, InjectError
from vblk_ci.errors import UsageError
from vblk_ci.machine import argv as A
from vblk_ci.machine.accel import judge_probe, probe_argv
from vblk_ci.machine.qemuinfo import caps_from_help, parse_version

CAPS = A.QemuCaps(version=(7, 2, 22), cpu_max=True, panic_exit_failure=True)
PATHS = A.MachinePaths.make(Path("/tmp/s"), Path("/run/r1"))
CMDLINE = "console=ttyS0 panic=-1 oops=panic panic_on_warn=1 softlockup_panic=1 hung_task_panic=1 tsc=nowatchdog"


def test_full_argv_tcg():
    spec = A.MachineSpec(qemu="qemu-system-x86_64", kernel=Path("/k/bzImage"), initrd=Path("/k/initrd.gz"),
                         smp=2, memory_mb=1024, append=("virtio_blk.poll_queues=1",), disk_slots=2)
    assert A.build_argv(spec, PATHS, CAPS) == [
        "qemu-system-x86_64",
        "-accel", "tcg",
        "-M", "q35", "-smp", "2", "-m", "1024",
        "-cpu", "max,la57=off",
        "-nodefaults", "-no-reboot", "-display", "none", "-nic", "none",
        "-kernel", "/k/bzImage", "-initrd", "/k/initrd.gz",
        "-append", CMDLINE + " virtio_blk.poll_queues=1",
        "-chardev", "pipe,id=ser0,path=/tmp/s/console,logfile=/run/r1/console.log",
        "-serial", "chardev:ser0",
        "-chardev", "socket,id=qmp0,path=/tmp/s/qmp.sock",
        "-mon", "chardev=qmp0,mode=control",
        "-chardev", "socket,id=agent0,path=/tmp/s/agent.sock",
        "-device", "virtio-serial-pci,id=vser0",
        "-device", "virtserialport,bus=vser0.0,chardev=agent0,name=org.vblk-ci.agent",
        "-device", "pcie-root-port,id=rp0,bus=pcie.0,chassis=1,slot=1",
        "-device", "pcie-root-port,id=rp1,bus=pcie.0,chassis=2,slot=2",
        "-device", "pvpanic",
        "-action", "panic=exit-failure",
    ]


def test_kvm_uses_host_cpu_and_no_initrd_is_omitted():
    spec = A.MachineSpec(qemu="q", kernel=Path("/k"), accel="kvm", disk_slots=0)
    argv = A.build_argv(spec, PATHS, CAPS)
    assert argv[1:3] == ["-accel", "kvm"]
    assert argv[argv.index("-cpu") + 1] == "host"
    assert "-initrd" not in argv
    assert not any(a.startswith("pcie-root-port") for a in argv)


def test_old_qemu_without_cpu_max_or_exit_failure():
    old = A.QemuCaps(version=(5, 2, 0), cpu_max=False, panic_exit_failure=False)
    assert A.cpu_args("tcg", old) == ["-cpu", "qemu64"]
    assert A.panic_args(old) == ["-device", "pvpanic"]


def test_root_ports_are_distinct():
    argv = A.root_port_args(4)
    devices = argv[1::2]
    assert argv[0::2] == ["-device"] * 4
    assert len(set(devices)) == 4
    assert devices[3] == "pcie-root-port,id=rp3,bus=pcie.0,chassis=4,slot=4"


def test_commas_in_paths_are_doubled():
    assert A.serial_args(Path("/a,b/s"), Path("/l,og")) == [
        "-chardev", "pipe,id=ser0,path=/a,,b/s,logfile=/l,,og", "-serial", "chardev:ser0"]


def test_kernel_cmdline():
    assert A.kernel_cmdline() == CMDLINE
    assert A.kernel_cmdline(["a=1", "b"]) == CMDLINE + " a=1 b"


def test_bad_accel_and_bad_spec():
    with pytest.raises(ValueError):
        A.accel_args("hvf")
    with pytest.raises(ValueError):
        A.build_argv(A.MachineSpec(qemu="q", kernel=Path("/k"), smp=0), PATHS, CAPS)


# -- hotplug QMP arguments ------------------------------------------------------------------


def test_blockdev_add_null():
    disk = DiskSpec(id="d0", serial="s0", backend="null", size_bytes=64 << 20)
    assert A.blockdev_add_args(disk) == {
        "driver": "null-co", "node-name": "d0-fmt", "size": 67108864, "read-zeroes": True, "read-only": False,
    }


def test_blockdev_add_null_with_latency():
    disk = DiskSpec(id="d0", serial="s0", backend="null", latency_ns=5_000_000, discard=False)
    args = A.blockdev_add_args(disk)
    assert args["latency-ns"] == 5_000_000 and type(args["latency-ns"]) is int
    assert "discard" not in args


def test_blockdev_add_file_raw_read_only():
    disk = DiskSpec(id="d1", serial="s1", backend="file", path=Path("/r/d1.raw"), read_only=True)
    assert A.blockdev_add_args(disk) == {
        "driver": "raw", "node-name": "d1-fmt", "read-only": True, "discard": "unmap",
        "file": {"driver": "file", "node-name": "d1-file", "filename": "/r/d1.raw", "read-only": True,
                 "discard": "unmap"},
    }


def test_blockdev_add_file_without_discard_leaves_the_default():
    disk = DiskSpec(id="d1", serial="s1", backend="file", path=Path("/r/d1.raw"), discard=False)
    assert A.blockdev_add_args(disk) == {
        "driver": "raw", "node-name": "d1-fmt", "read-only": False,
        "file": {"driver": "file", "node-name": "d1-file", "filename": "/r/d1.raw", "read-only": False},
    }


def test_blockdev_add_blkdebug_sits_between_format_and_file():
    rule = InjectError(event="read_aio", sector=65536)
    disk = DiskSpec(id="d3", serial="s3", backend="file", path=Path("/r/d3.raw"), inject_errors=(rule,))
    assert A.blockdev_add_args(disk) == {
        "driver": "raw", "node-name": "d3-fmt", "read-only": False, "discard": "unmap",
        "file": {
            "driver": "blkdebug", "node-name": "d3-dbg", "discard": "unmap",
            "inject-error": [{"event": "read_aio", "errno": 5, "once": False, "sector": 65536}],
            "image": {"driver": "file", "node-name": "d3-file", "filename": "/r/d3.raw", "read-only": False,
                      "discard": "unmap"},
        },
    }


def test_blockdev_add_qcow2():
    disk = DiskSpec(id="d2", serial="s2", backend="file", path=Path("/r/d2.qcow2"), format="qcow2")
    assert A.blockdev_add_args(disk)["driver"] == "qcow2"


def test_device_add_numbers_stay_numbers():
    disk = DiskSpec(id="d0", serial="vblk0", num_queues=4, queue_size=128, logical_block_size=4096,
                    size_bytes=1 << 20)
    args = A.device_add_args(disk, "rp2")
    assert args == {
        "driver": "virtio-blk-pci", "id": "d0", "bus": "rp2", "drive": "d0-fmt", "serial": "vblk0",
        "num-queues": 4, "queue-size": 128, "logical_block_size": 4096, "physical_block_size": 4096,
        "discard": True, "write-zeroes": True,
    }
    assert all(type(args[k]) is int for k in ("num-queues", "queue-size", "logical_block_size"))


def test_device_add_feature_switches_are_json_bools():
    disk = DiskSpec(id="d0", serial="vblk0", discard=False, write_zeroes=False)
    args = A.device_add_args(disk, "rp0")
    assert args["discard"] is False and args["write-zeroes"] is False


# -- DiskSpec.validate names the field ------------------------------------------------------


@pytest.mark.parametrize("changes, field", [
    ({"id": "0bad"}, "id"),
    ({"serial": "x" * 21}, "serial"),
    ({"backend": "nbd"}, "backend"),
    ({"size_bytes": 0}, "size_bytes"),
    ({"size_bytes": 1000}, "size_bytes"),
    ({"num_queues": 0}, "num_queues"),
    ({"num_queues": True}, "num_queues"),
    ({"queue_size": 100}, "queue_size"),
    ({"logical_block_size": 513}, "logical_block_size"),
    ({"backend": "file"}, "path"),
    ({"path": Path("/x")}, "path"),
    ({"backend": "file", "path": Path("/x"), "format": "vmdk"}, "format"),
    ({"read_only": "yes"}, "read_only"),
    ({"discard": 1}, "discard"),
    ({"write_zeroes": "off"}, "write_zeroes"),
    ({"latency_ns": -1}, "latency_ns"),
    ({"latency_ns": True}, "latency_ns"),
    ({"backend": "file", "path": Path("/x"), "latency_ns": 1000}, "latency_ns"),
    ({"inject_errors": (InjectError(),)}, "inject_errors"),
    ({"backend": "file", "path": Path("/x"), "inject_errors": (InjectError(event="bogus"),)}, "inject_errors"),
    ({"backend": "file", "path": Path("/x"), "inject_errors": (InjectError(sector=-1),)}, "inject_errors"),
])
def test_disk_spec_validate(changes, field):
    disk = DiskSpec(**{"id": "d0", "serial": "s0", **changes})
    with pytest.raises(UsageError, match=rf"disk '.*': {field}: "):
        disk.validate()


def test_disk_spec_valid_returns_itself():
    disk = DiskSpec(id="d0", serial="vblk-d0")
    assert disk.validate() is disk


# -- QEMU capability probe and KVM probe judgement (pure parts) -----------------------------


def test_caps_from_help():
    help_text = "-action panic=pause|shutdown|exit-failure|none\n"
    cpu_help = "x86 qemu64  QEMU Virtual CPU version 2.5+\nx86 max  Enables all features\n"
    caps = caps_from_help("QEMU emulator version 10.0.13 (Debian 1:10.0.13+ds-1)\n", help_text, cpu_help)
    assert caps == A.QemuCaps(version=(10, 0, 13), cpu_max=True, panic_exit_failure=True)
    caps = caps_from_help("QEMU emulator version 6.0.0\n", "-action panic=pause|shutdown|none", "x86 qemu64")
    assert caps == A.QemuCaps(version=(6, 0, 0), cpu_max=False, panic_exit_failure=False)
    newer = caps_from_help("QEMU emulator version 10.0.13\n", help_text, "Available CPUs:\n  max   Enables all\n")
    assert newer.cpu_max
    assert parse_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)") == (7, 2, 22)
    with pytest.raises(ValueError):
        parse_version("bash: qemu: not found")


def test_kvm_probe_judgement():
    booted = "Linux version 6.12.117+ (root@x)\n...\nKernel panic - not syncing: VFS: Unable to mount root fs\n"
    assert judge_probe(booted, 0, False) is None
    assert "MSR" in judge_probe("qemu-system-x86_64: error: failed to set MSR 0x10a to 0x0\n", 1, False)
    assert "KVM internal error" in judge_probe("KVM internal error. Suberror: 1\nemulation failure\n", 1, False)
    assert "no boot progress" in judge_probe("", None, True)
    assert "no boot progress" in judge_probe("Linux version 6.12\n", None, True)
    assert "exited (1)" in judge_probe("some error\n", 1, False)
    argv = probe_argv("qemu", Path("/k"))
    assert argv[:5] == ["qemu", "-accel", "kvm", "-M", "q35"] and "-initrd" not in argv


# -- DiskSpec device-configuration fields ----------------------------------------------------


def test_defaults_add_nothing_new_to_device_add_or_blockdev_add():
    disk = DiskSpec(id="d0", serial="vblk0")
    assert set(A.device_add_args(disk, "rp0")) == {
        "driver", "id", "bus", "drive", "serial", "num-queues", "queue-size", "logical_block_size",
        "physical_block_size", "discard", "write-zeroes"}
    assert "detect-zeroes" not in A.blockdev_add_args(disk)
    assert A.iothread_object_args(disk) is None


def test_file_node_gets_aio_and_cache_format_node_detect_zeroes():
    disk = DiskSpec(id="d0", serial="s", backend="file", path=Path("/i/d0.raw"), aio="io_uring", cache="none",
                    detect_zeroes="unmap")
    args = A.blockdev_add_args(disk)
    assert args["file"]["aio"] == "io_uring"
    assert args["file"]["cache"] == {"direct": True, "no-flush": False}
    assert args["cache"] == {"direct": True, "no-flush": False}
    assert args["detect-zeroes"] == "unmap"


def test_writethrough_cache_turns_the_device_write_cache_off():
    disk = DiskSpec(id="d0", serial="s", backend="file", path=Path("/i"), aio="native", cache="directsync")
    assert A.device_add_args(disk, "rp0")["write-cache"] == "off"
    assert A.blockdev_add_args(disk)["file"]["aio"] == "native"


def test_physical_block_size_defaults_to_logical_and_can_differ():
    assert A.device_add_args(DiskSpec(id="d", serial="s", logical_block_size=4096), "rp0")["physical_block_size"] == 4096
    args = A.device_add_args(DiskSpec(id="d", serial="s", physical_block_size=4096), "rp0")
    assert (args["logical_block_size"], args["physical_block_size"]) == (512, 4096)


def test_iothread_shared_per_disk_and_vq_mapping():
    shared = DiskSpec(id="a", serial="s", iothread="shared", poll_max_ns=16384, poll_grow=2, poll_shrink=0)
    assert A.iothread_object_args(shared) == {"qom-type": "iothread", "id": "iot-shared", "poll-max-ns": 16384,
                                              "poll-grow": 2, "poll-shrink": 0}
    assert A.device_add_args(shared, "rp1")["iothread"] == "iot-shared"
    own = DiskSpec(id="b", serial="s", iothread="per-disk")
    assert A.iothread_object_args(own) == {"qom-type": "iothread", "id": "iot-b"}
    mapped = A.device_add_args(DiskSpec(id="c", serial="s", iothread="per-disk", iothread_vq_mapping=True), "rp0")
    assert mapped["iothread-vq-mapping"] == [{"iothread": "iot-c"}]
    assert "iothread" not in mapped


@pytest.mark.parametrize("changes, field", [
    ({"physical_block_size": 1000}, "physical_block_size"),
    ({"logical_block_size": 4096, "physical_block_size": 512}, "physical_block_size"),
    ({"aio": "posix"}, "aio"),
    ({"aio": "io_uring"}, "aio"),  # null backend has no aio
    ({"backend": "file", "path": Path("/x"), "aio": "native"}, "aio"),  # native without O_DIRECT
    ({"cache": "fast"}, "cache"),
    ({"detect_zeroes": "maybe"}, "detect_zeroes"),
    ({"detect_zeroes": "unmap", "discard": False}, "detect_zeroes"),
    ({"iothread": "two"}, "iothread"),
    ({"poll_max_ns": 100}, "poll_max_ns"),  # no iothread
    ({"iothread": "shared", "poll_grow": -1}, "poll_grow"),
    ({"iothread_vq_mapping": True}, "iothread_vq_mapping"),
    ({"guest_poll_queues": -1}, "guest_poll_queues"),
    ({"guest_num_request_queues": True}, "guest_num_request_queues"),
])
def test_disk_spec_validate_config_fields(changes, field):
    disk = DiskSpec(**{"id": "d0", "serial": "s0", **changes})
    with pytest.raises(UsageError, match=rf"disk '.*': {field}: "):
        disk.validate()
