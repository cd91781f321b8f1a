"""The both-side configuration check: the clamp computation, and the comparison replayed
on QEMU and guest views recorded from a real matrix run (tests/unit/data/config/, from
ci/matrix-default.toml as it was then -- kept as matrix-recorded.toml -- on QEMU 7.2 / TCG)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from vblk_ci.disks.configcheck import compare, expected_queues, mismatches
from vblk_ci.matrix.schema import load_matrix

DATA = Path(__file__).parent / "data" / "config"
RECORDED = sorted(p.stem for p in DATA.glob("*.json"))


@pytest.mark.parametrize("num_queues, vcpus, poll, nrq, hw, polled", [
    (1, 2, 0, 0, 1, 0),
    (2, 2, 1, 0, 2, 1),
    (4, 2, 0, 0, 2, 0),   # capped at the vCPU count
    (4, 2, 1, 0, 2, 1),   # poll queues come out of the capped total
    (4, 4, 1, 0, 4, 1),
    (1, 2, 1, 0, 1, 0),   # one queue: it stays a default queue
    (4, 4, 8, 0, 4, 3),
    (4, 4, 0, 2, 2, 0),   # num_request_queues caps below the vCPUs
    (2, 4, 0, 3, 2, 0),
])
def test_expected_queues(num_queues, vcpus, poll, nrq, hw, polled):
    layout = expected_queues(num_queues, vcpus, poll, nrq)
    assert (layout.hw_queues, layout.poll_queues, layout.default_queues) == (hw, polled, hw - polled)
    assert bool(layout.note) == (hw < num_queues or polled < poll)


def test_clamp_note_names_the_cause():
    assert expected_queues(4, 2).note == "num-queues 4 capped at 2 by 2 vCPUs"
    assert expected_queues(4, 4, 0, 2).note == "num-queues 4 capped at 2 by num_request_queues=2"
    assert "poll_queues 1 capped at 0" in expected_queues(1, 2, 1).note


def _spec(name: str):
    matrix = load_matrix(DATA / "matrix-recorded.toml", Path("/images"))
    return next(d for c in matrix.combinations for d in c.disks if d.id == name)


def _recorded(name: str):
    return _spec(name), json.loads((DATA / f"{name}.json").read_text())


def test_recordings_exist():
    assert len(RECORDED) >= 8


@pytest.mark.parametrize("name", RECORDED)
def test_recorded_views_agree_with_their_spec(name):
    disk, rec = _recorded(name)
    checks = compare(disk, rec["vcpus"], rec["qemu"], rec["guest"])
    assert mismatches(checks) == []
    fields = {c.field for c in checks}
    assert {"num_queues", "guest_poll_queues", "queue_size", "logical_block_size", "physical_block_size",
            "read_only", "discard", "write_zeroes", "write_cache", "iothread", "chardev"} <= fields


def test_capped_queues_are_computed_not_ignored():
    disk, rec = _recorded("q4-capped")
    assert rec["guest"]["mq.count"] == 2 and rec["qemu"]["num-queues"] == 4
    row = next(c for c in compare(disk, 2, rec["qemu"], rec["guest"]) if c.field == "num_queues")
    assert (row.want_qemu, row.want_guest, row.note) == (4, 2, "num-queues 4 capped at 2 by 2 vCPUs")
    # Claiming 4 vCPUs for the same observation: the guest's 2 queues no longer fit.
    bad = mismatches(compare(disk, 4, rec["qemu"], rec["guest"]))
    assert {m.field for m in bad} == {"vcpus", "num_queues"}


@pytest.mark.parametrize("name, change, field, spec, qemu, guest", [
    ("q2-poll1", {"guest_poll_queues": 0}, "guest_poll_queues", 0, "-", "1 (want 0)"),
    ("q2-poll1", {"num_queues": 1}, "num_queues", 1, "2 (want 1)", "2 (want 1)"),
    ("pbs4k", {"physical_block_size": 0}, "physical_block_size", 512, "4096 (want 512)", "4096 (want 512)"),
    ("ro-nodiscard", {"read_only": False}, "read_only", False, "True (want False)", "1 (want 0)"),
    ("q2-iot-shared", {"poll_max_ns": 32768}, "poll_max_ns", 32768, "16384 (want 32768)", "-"),
    ("file-uring-4k", {"cache": "writeback"}, "cache.direct", "writeback", "True (want False)", "-"),
    ("file-native-sync", {"cache": "none"}, "write_cache", "none", "False (want True)",
     "'write through' (want 'write back')"),
    ("qcow2-uring", {"detect_zeroes": "on"}, "detect_zeroes", "on", "'unmap' (want 'on')", "-"),
])
def test_a_spec_other_than_what_ran_is_a_mismatch_naming_field_and_both_values(name, change, field, spec, qemu, guest):
    disk, rec = _recorded(name)
    changed = dataclasses.replace(disk, **change)
    bad = [m for m in mismatches(compare(changed, rec["vcpus"], rec["qemu"], rec["guest"])) if m.field == field]
    assert len(bad) == 1
    text = bad[0].describe()
    assert text.startswith(f"disk {name}: {field}: spec {spec!r}, QEMU {qemu}, guest {guest}")


def test_missing_chardev_is_a_mismatch():
    disk, rec = _recorded("q2-poll1")
    guest = {**rec["guest"], "dev.chardev": False}
    bad = mismatches(compare(disk, 2, rec["qemu"], guest))
    assert [m.field for m in bad] == ["chardev"]


# -- QEMU 10.0.13 (the image): recorded from the same matrix ---------------------------------

QEMU10 = DATA / "qemu10"


def _recorded10(name: str):
    return _spec(name), json.loads((QEMU10 / f"{name}.json").read_text())


@pytest.mark.parametrize("name", ["q2-poll1", "q4-capped"])
def test_qemu10_rings_of_1024_whatever_queue_size_is_a_mismatch(name):
    disk, rec = _recorded10(name)
    bad = mismatches(compare(disk, rec["vcpus"], rec["qemu"], rec["guest"]))
    assert [m.field for m in bad] == ["queue_size", "queue_size.vring"]
    assert bad[0].describe() == (f"disk {name}: queue_size: spec {disk.queue_size}, QEMU {disk.queue_size}, "
                                 f"guest 1024 (want {disk.queue_size})")
    assert bad[1].describe() == (f"disk {name}: queue_size.vring: spec {disk.queue_size}, "
                                 f"QEMU 1024 (want {disk.queue_size}), guest -")


def test_qemu10_vq_mapping_agrees():
    disk, rec = _recorded10("vq-mapping")
    checks = compare(disk, rec["vcpus"], rec["qemu"], rec["guest"])
    assert mismatches(checks) == []
    row = next(c for c in checks if c.field == "iothread_vq_mapping")
    assert row.qemu == [{"iothread": "iot-vq-mapping"}]
