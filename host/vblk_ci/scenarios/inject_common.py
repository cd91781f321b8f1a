"""What the `inject` suite's scenarios share: the kernel features they need, and fail_page_alloc's set-up.

The `inject` suite needs a modular virtio_blk and allocation-failure injection
(CONFIG_FAIL_PAGE_ALLOC with CONFIG_FAULT_INJECTION_DEBUG_FS): the debug kernel
(kernel-config/debug.config, where CI runs it strict, under KASAN and lockdep) and
the coverage kernel have both. On a kernel without them its scenarios skip, saying
which feature is missing.

Injection is per thread and per call: ``/proc/thread-self/fail-nth`` makes the
Nth page allocation of that thread fail (the engine arms it around one
submission or one module load). Only fail_page_alloc's filters apply to it, and
by default they pass over nearly everything (order 0, allocations that may
sleep, highmem/movable ones), so the scenarios open them for their duration:
``min-order`` 0, ``ignore-gfp-wait`` and ``ignore-gfp-highmem`` N, and
``verbose`` 0 (a console line and a stack per injected fault would flood a
serial console under TCG). Slab allocations are not injected (CONFIG_FAILSLAB
would recompile the whole kernel): one fails only when its slab needs a new page.
"""

from __future__ import annotations

from ..errors import CheckFailed
from .base import ScenarioContext

FAIL_PAGE_ALLOC = "/sys/kernel/debug/fail_page_alloc"
FAIL_NTH = "/proc/self/fail-nth"
MODULE_STATE = "/sys/module/virtio_blk/initstate"
MODULE_KO = "/lib/modules/$(uname -r)/kernel/drivers/block/virtio_blk.ko"
#: fail_page_alloc knobs set for the injection, and the value each gets.
FAULT_SETTINGS = {"min-order": "0", "ignore-gfp-wait": "N", "ignore-gfp-highmem": "N", "verbose": "0"}
ENOMEM = 12
EAGAIN = 11


def injection_missing(ctx: ScenarioContext) -> list[str]:
    """requires() reasons when the guest kernel cannot inject allocation failures."""
    if ctx.agent.exec(cmd=f"test -d {FAIL_PAGE_ALLOC} && test -w {FAIL_NTH}").get("rc") != 0:
        return [f"no allocation-failure injection in this kernel ({FAIL_PAGE_ALLOC} and {FAIL_NTH}: "
                "CONFIG_FAIL_PAGE_ALLOC, CONFIG_FAULT_INJECTION_DEBUG_FS): the inject suite runs on the "
                "debug and coverage kernels"]
    return []


def module_missing(ctx: ScenarioContext) -> list[str]:
    """requires() reasons when virtio_blk is not a loadable module here."""
    if ctx.agent.exec(cmd=f"test -e {MODULE_STATE} && test -f {MODULE_KO}").get("rc") != 0:
        return [f"virtio_blk is not a module here (no {MODULE_STATE} or no {MODULE_KO}): module-reload needs "
                "a modular virtio_blk (CONFIG_VIRTIO_BLK=m: the debug and coverage kernels)"]
    return []


def module_path(ctx: ScenarioContext) -> str:
    out = ctx.agent.exec(cmd=f"echo {MODULE_KO}")
    return out.get("stdout", "").strip()


class FaultKnobs:
    """Set fail_page_alloc's knobs for injection; ``restore()`` puts the old values back."""

    def __init__(self, ctx: ScenarioContext):
        self.ctx = ctx
        self.old: dict[str, str] = {}

    def arm(self, rec: dict) -> None:
        for knob, value in FAULT_SETTINGS.items():
            path = f"{FAIL_PAGE_ALLOC}/{knob}"
            self.old.setdefault(knob, self.ctx.agent.read_file(path).strip())
            self.ctx.agent.write_file(path, value + "\n")
            got = self.ctx.agent.read_file(path).strip()
            if got != value:
                raise CheckFailed(f"{path} reads {got!r} after writing {value!r}")
        rec["fail_page_alloc"] = {"set": dict(FAULT_SETTINGS), "was": dict(self.old)}

    def restore(self) -> None:
        for knob, value in self.old.items():
            self.ctx.agent.write_file(f"{FAIL_PAGE_ALLOC}/{knob}", value + "\n")
        self.old.clear()
