"""End to end: the shipped default matrix (ci/matrix-default.toml) on the host's QEMU and
inside the image (QEMU 10, where iothread-vq-mapping exists), the both-side check
catching a real disagreement, and hotplug cycles.

Artifacts as in conftest.py; the image run needs VBLK_CI_IMAGE. It mounts this checkout's
host/ code and matrix file into the image, so the code under test is the checkout and the
image supplies QEMU 10, the kernel and the initramfs.
Run: pytest -m e2e tests/e2e/test_matrix.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vblk_ci import events as E
from vblk_ci.agent.testinfra_backend import guest_host
from vblk_ci.disks.configcheck import compare, guest_view, mismatches, qemu_view
from vblk_ci.disks.plugging import DiskPlugger
from vblk_ci.disks.spec import DiskSpec
from vblk_ci.machine.argv import MachineSpec
from vblk_ci.machine.machine import Machine
from vblk_ci.matrix.run import MatrixPlan, run_matrix
from vblk_ci.matrix.schema import load_matrix
from vblk_ci.runner import Plan, run

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "ci" / "matrix-default.toml"
IOPS_KEYS = {"passthru-read", "passthru-write", "block-read", "block-write"}


def _check_matrix_results(results: dict, vq_mapping: bool) -> None:
    assert results["status"] == "pass", results["reason"]
    figures = results["timings"]["matrix"]["combinations"]
    ran = [f for f in figures if f["status"] != "skip"]
    assert len(figures) >= 15 and len(ran) >= 14
    skipped = {f["name"]: f["skip_reasons"] for f in figures if f["status"] == "skip"}
    if vq_mapping:
        assert skipped == {}
    else:
        assert list(skipped) == ["vq-mapping/qd1"] and "iothread-vq-mapping" in skipped["vq-mapping/qd1"][0]
    for f in ran:
        assert f["status"] == "pass", f
        for disk in f["disks"]:
            iops = f["iops"][disk["id"]]
            want = IOPS_KEYS if disk["id"] != "ro-nodiscard" else {"passthru-read", "block-read"}
            assert set(iops) == want and all(v > 0 for v in iops.values()), (f["name"], iops)
    configs = [c for s in results["scenarios"] for c in s["checks"] if c["name"] == "config"]
    assert len(configs) == len(ran) and {c["status"] for c in configs} == {"pass"}
    # The clamp was computed: 4 queues asked for on 2 vCPUs, 2 seen by the guest.
    capped = next(c for c in configs if c["scenario"] == "q4-capped/qd1")["data"]["disks"]["q4-capped"]
    assert capped["qemu"]["num-queues"] == 4 and capped["guest"]["mq.count"] == 2
    assert max(len(f["disks"]) for f in ran) >= 4


def test_default_matrix_on_host_qemu(appliance, tmp_path):
    matrix = load_matrix(DEFAULT, tmp_path / "images")
    result = run_matrix(MatrixPlan(kernel=appliance["kernel"], initramfs=appliance["initramfs"], run_dir=tmp_path,
                                   matrix=matrix, accel="tcg"))
    results = json.loads((tmp_path / "results.json").read_text())
    _check_matrix_results(results, vq_mapping=False)
    assert result.exit_code == 0
    table = (tmp_path / "report" / "matrix.md").read_text()
    assert "| q4-capped/qd1 | 2 | q4-capped |" in table and "five-at-once/qd1" in table


# Seen on QEMU 10.0.13 (the image): qom-get queue-size says 256 but x-query-virtio-queue-status
# says vring-num 1024 and the guest's tag depth is 1024, whatever queue-size asks for. The
# default matrix therefore uses 1024-entry rings; a smaller one must be a CONFIG_MISMATCH there.
QEMU10_RING = 1024


def _image_run(image, out: Path, args: list[str]) -> tuple[int, str, dict]:
    import docker

    client = docker.from_env()
    container = client.containers.run(
        image, ["run", *args, "--accel", "tcg", "--out", "/out/m"],
        detach=True, network_mode="none", environment={"PYTHONPATH": "/checkout/host"},
        volumes={str(out): {"bind": "/out", "mode": "rw"}, str(ROOT): {"bind": "/checkout", "mode": "ro"}},
    )
    try:
        status = container.wait(timeout=900)
        logs = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    return status["StatusCode"], logs, json.loads((out / "m" / "results.json").read_text())


@pytest.fixture(scope="module")
def image_matrix(image, tmp_path_factory):
    return _image_run(image, tmp_path_factory.mktemp("image-matrix"),
                      ["--matrix", "/checkout/ci/matrix-default.toml"])


def test_image_qemu10_runs_the_default_matrix_with_vq_mapping(image_matrix):
    code, logs, results = image_matrix
    assert results["qemu_version"].startswith("10."), logs
    _check_matrix_results(results, vq_mapping=True)
    assert code == 0, logs
    config = next(c for s in results["scenarios"] for c in s["checks"]
                  if c["scenario"] == "vq-mapping/qd1" and c["name"] == "config")
    rows = {r["field"]: r for r in config["data"]["disks"]["vq-mapping"]["fields"]}
    assert rows["iothread_vq_mapping"]["ok"], rows["iothread_vq_mapping"]


def test_image_qemu10_ignores_queue_size_and_the_check_says_so(image, tmp_path):
    code, logs, results = _image_run(image, tmp_path, ["--disk", "id=q256,queue_size=256"])
    assert (results["status"], code) == ("config-mismatch", 4), logs
    check = next(c for s in results["scenarios"] for c in s["checks"] if c["name"] == "config")
    rec = check["data"]["disks"]["q256"]
    bad = {r["field"]: r for r in rec["fields"] if not r["ok"]}
    assert set(bad) == {"queue_size", "queue_size.vring"}, bad
    assert rec["qemu"]["queue-size"] == 256 and rec["qemu"]["virtio.vring-num"] == QEMU10_RING
    assert int(rec["guest"]["hctx0.tags.depth"]) == QEMU10_RING
    assert "disk q256: queue_size: spec 256, QEMU " in check["detail"]


def test_both_side_check_catches_a_real_disagreement(appliance, tmp_path):
    """virtio_blk.poll_queues changed after the probe: the guest's parameter no longer matches
    the spec, while the device (probed with the old value) still does."""
    spec = MachineSpec(qemu="qemu-system-x86_64", kernel=appliance["kernel"], initrd=appliance["initramfs"])
    disk = DiskSpec(id="mm0", serial="vblk-mm0", num_queues=2, guest_poll_queues=1).validate()
    with Machine(spec, tmp_path) as vm:
        vm.wait_boot()
        vm.wait_agent()
        [plugged] = DiskPlugger(vm).plug_all([disk], 60.0)
        host = guest_host(vm.agent)
        assert host.file(plugged.chardev).is_character_device
        assert mismatches(compare(disk, 2, qemu_view(vm, disk), guest_view(host, plugged.guest_name))) == []
        vm.agent.write_file("/sys/module/virtio_blk/parameters/poll_queues", "0")
        bad = mismatches(compare(disk, 2, qemu_view(vm, disk), guest_view(host, plugged.guest_name)))
        assert [m.field for m in bad] == ["guest_poll_queues.param"]
        assert bad[0].describe() == ("disk mm0: guest_poll_queues.param: spec 1, QEMU -, guest 0 (want 1)")
        vm.unplug(disk.id)


def test_hotplug_cycles(appliance, tmp_path, monkeypatch):
    monkeypatch.setenv("VBLK_CI_HOTPLUG_CYCLES", "10")
    recorder = E.Recorder()
    result = run(Plan(kernel=appliance["kernel"], initramfs=appliance["initramfs"], run_dir=tmp_path,
                      suite="hotplug", accel="tcg"), recorder)
    assert result.status == "pass", result.reason
    checks = {c.name: c for c in result.checks()}
    assert len([n for n in checks if n.startswith("cycle-")]) == 10
    leaks = checks["no-leaks"].data
    assert leaks["cycles"] == 10 and len(leaks["devnos"]) == 1 and leaks["after_class"] == []
    assert checks["plug-unplug-while-paused"].data["deleted_while_stopped"] is False
    assert checks["plugged-across-system-reset"].data["after_reset"]["chardev"]
    assert len(recorder.of(E.DiskUnplugged)) == 12
