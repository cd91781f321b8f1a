"""disks/capacity.py: waiting for the guest's /sys/block/vdX/size to follow a block_resize."""

from __future__ import annotations

from vblk_ci.disks.capacity import wait_guest_sectors


class Agent:
    """Reads the size from a script of values, the last one forever."""

    def __init__(self, values: list[str]):
        self.values, self.paths = list(values), []

    def read_file(self, path: str) -> str:
        self.paths.append(path)
        return self.values.pop(0) if len(self.values) > 1 else self.values[0]


def test_returns_none_once_the_guest_shows_the_size():
    agent = Agent(["131072\n", "131072\n", "196608\n"])
    assert wait_guest_sectors(agent, "vda", 196608, timeout_s=5, poll_s=0) is None
    assert agent.paths == ["/sys/block/vda/size"] * 3


def test_returns_the_last_size_read_when_it_never_changes():
    agent = Agent(["131072\n"])
    assert wait_guest_sectors(agent, "vdb", 196608, timeout_s=0.05, poll_s=0.01) == "131072"
    assert len(agent.paths) >= 2
