"""Parsers of the host-side view of a virtio-blk request (vblk_ci.machine.virtio_queue),
on QMP/HMP replies recorded from real runs on QEMU 7.2 and 10.0 (tests/unit/data/qmp/) and on edge cases."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from vblk_ci.machine import virtio_queue as VQ

DATA = Path(__file__).parent / "data" / "qmp"


def test_ioprio_value_and_paths():
    assert VQ.ioprio_value(VQ.IOPRIO_CLASS_BE, 3) == 0x4003
    assert VQ.virtio_path("prio0") == "/machine/peripheral/prio0/virtio-backend"
    assert VQ.queue_element_args("/p", 0, 7) == {"path": "/p", "queue": 0, "index": 7}
    assert VQ.queue_status_args("/p", 1) == {"path": "/p", "queue": 1}
    assert VQ.xp_args(0x12345000, 16) == {"command-line": "xp /16xb 0x12345000"}


def test_last_popped_index_wraps_at_16_bits():
    assert VQ.last_popped_index({"last-avail-idx": 5}) == 4
    assert VQ.last_popped_index({"last-avail-idx": 0}) == 0xFFFF
    with pytest.raises(ValueError, match="last-avail-idx"):
        VQ.last_popped_index({"used-idx": 3})


def test_out_header_decodes_little_endian():
    raw = struct.pack("<IIQ", 1, 0x4003, 16384)
    assert VQ.OutHeader.decode(raw) == VQ.OutHeader(type=1, ioprio=0x4003, sector=16384)
    assert VQ.OutHeader.decode(raw).to_json() == {"type": 1, "ioprio": "0x4003", "sector": 16384}
    with pytest.raises(ValueError, match="16 bytes"):
        VQ.OutHeader.decode(raw[:15])


def test_xp_bytes_parsed_and_checked():
    text = ("0000000002a1c000: 0x01 0x00 0x00 0x00 0x03 0x40 0x00 0x00\r\n"
            "0000000002a1c008: 0x00 0x40 0x00 0x00 0x00 0x00 0x00 0x00\r\n")
    raw = VQ.parse_xp_bytes(text, 0x2a1c000, 16)
    assert VQ.OutHeader.decode(raw) == VQ.OutHeader(1, 0x4003, 0x4000)
    with pytest.raises(ValueError, match="expected 2a1c010"):
        VQ.parse_xp_bytes(text, 0x2a1c010, 16)
    with pytest.raises(ValueError, match="gave 16 bytes, expected 32"):
        VQ.parse_xp_bytes(text, 0x2a1c000, 32)
    with pytest.raises(ValueError, match="unexpected xp output"):
        VQ.parse_xp_bytes("Error: cannot access memory\r\n", 0, 16)


def test_element_and_header_descriptor():
    reply = {"index": 3, "name": "virtio-blk", "descs": [
        {"addr": 4096, "len": 16, "flags": ["next"]},
        {"addr": 8192, "len": 4096, "flags": ["next"]},
        {"addr": 12288, "len": 1, "flags": ["write"]}]}
    el = VQ.parse_element(reply)
    assert el.head == 3 and [d.len for d in el.descs] == [16, 4096, 1]
    assert VQ.header_desc(el) == VQ.Desc(4096, 16, ("next",))
    with pytest.raises(ValueError, match="not a 16-byte out header"):
        VQ.header_desc(VQ.Element(0, (VQ.Desc(0, 1, ("write",)),)))
    with pytest.raises(ValueError, match="no descriptors"):
        VQ.header_desc(VQ.Element(0, ()))
    with pytest.raises(ValueError, match="not a queue element"):
        VQ.parse_element({"index": 1})


def test_blockstats_counters_and_delta():
    reply = [{"device": "", "qdev": "/machine/peripheral/other/virtio-backend", "stats": {"rd_operations": 9}},
             {"device": "", "qdev": "/machine/peripheral/bnd0/virtio-backend", "node-name": "bnd0-fmt",
              "stats": {"rd_operations": 2, "wr_operations": 1, "invalid_wr_operations": 0, "rd_bytes": 8192}}]
    before = VQ.device_stats(reply, "bnd0")
    assert before == {"rd_operations": 2, "wr_operations": 1, "invalid_wr_operations": 0}
    after = dict(before, invalid_wr_operations=1)
    assert VQ.stats_delta(before, after) == {"invalid_wr_operations": 1}
    assert VQ.stats_delta(before, before) == {}
    with pytest.raises(ValueError, match="no blockstats entry for device 'nope'"):
        VQ.device_stats(reply, "nope")


# ---- recorded replies (real driver-ioprio / driver-bounds runs) ---------------------------------


def _recorded(name: str) -> dict:
    return json.loads((DATA / name).read_text())


@pytest.mark.parametrize("name", ["element-passthru-write.json", "element-block-write.json",
                                  "element-passthru-write-qemu10.json"])
def test_recorded_element_to_header(name):
    """status -> index -> element -> header descriptor -> xp -> decoded header, as the scenario does it."""
    rec = _recorded(name)
    assert VQ.last_popped_index(rec["status"]["return"]) == rec["element"]["arguments"]["index"]
    el = VQ.parse_element(rec["element"]["return"])
    # QEMU 7.2 and 10.0 list the chain tail first; parse_element gives chain order:
    # 16-byte out header, the 4 KiB data (device-readable for a write), the 1-byte status.
    assert [(d.len, "write" in d.flags) for d in el.descs] == [(16, False), (4096, False), (1, True)]
    desc = VQ.header_desc(el)
    assert VQ.xp_args(desc.addr, 16) == rec["xp"]["arguments"]
    header = VQ.OutHeader.decode(VQ.parse_xp_bytes(rec["xp"]["return"], desc.addr, 16))
    assert header == VQ.OutHeader(**rec["header"])


def test_recorded_element_order_kept_when_already_in_chain_order():
    rec = _recorded("element-passthru-write.json")["element"]["return"]
    forward = dict(rec, descs=rec["descs"][::-1])
    assert VQ.parse_element(forward) == VQ.parse_element(rec)


def test_recorded_blockstats_of_a_wrapping_write():
    """v2 sent the wrapping write to QEMU, which counted it as an invalid write."""
    rec = _recorded("blockstats-wrap-write.json")
    before = VQ.device_stats(rec["before"], rec["disk"])
    after = VQ.device_stats(rec["after"], rec["disk"])
    assert {"rd_operations", "wr_operations", "invalid_wr_operations", "failed_wr_operations",
            "flush_operations", "unmap_operations"} <= set(before)
    assert VQ.stats_delta(before, after) == rec["delta"] == {"invalid_wr_operations": 1}
