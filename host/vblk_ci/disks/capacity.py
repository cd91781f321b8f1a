"""The size the guest shows for a disk, and waiting for it to follow a block_resize.

QEMU's block_resize returns before the guest has handled the virtio config change,
so whoever resizes (the fault-resize scenario, the fuzzer's resize fault) waits for
/sys/block/vdX/size before judging I/O against the new capacity.
"""

from __future__ import annotations

import time


def wait_guest_sectors(agent, name: str, sectors: int, timeout_s: float, poll_s: float = 0.1) -> str | None:
    """Poll ``/sys/block/<name>/size`` (512-byte sectors) through *agent* until it reads *sectors*.
    None once it does; the last value read if *timeout_s* passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        shown = agent.read_file(f"/sys/block/{name}/size").strip()
        if shown == str(sectors):
            return None
        if time.monotonic() > deadline:
            return shown
        time.sleep(poll_s)
