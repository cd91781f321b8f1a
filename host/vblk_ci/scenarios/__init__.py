"""Scenarios, one per file, and the suites that group them."""

from __future__ import annotations

from ..errors import UsageError
from .base import Scenario, ScenarioContext, get, register, registered
from . import smoke  # noqa: F401  (registers itself)
from . import driver_ops, driver_refusals, driver_permissions, driver_iopoll, driver_unplug, driver_soak  # noqa: F401
from . import hotplug_cycles, meta  # noqa: F401
from . import (fault_blkdebug, fault_blkdebug_delay, fault_error_policy, fault_request_break,  # noqa: F401
               fault_device_reset, fault_resize, fault_schedule_eio, fault_schedule_file, fault_throttle,
               fault_unplug, fault_vm_stop_reset)
# The review suite: one scenario per group of review-v2 findings (issue 11).
from . import (driver_access, driver_bounds, driver_coherency, driver_compat32, driver_ioprio,  # noqa: F401
               driver_links, driver_pollq, driver_unplug_iopoll)
from . import driver_copyout, driver_ranges  # noqa: F401
# The inject suite: module unload/reload and allocation-failure sweeps (debug and coverage kernels).
from . import inject_alloc, inject_module  # noqa: F401

SUITES: dict[str, tuple[str, ...]] = {
    "smoke": ("smoke",),
    "driver": ("driver-ops", "driver-refusals", "driver-permissions", "driver-iopoll", "driver-unplug",
               "driver-soak"),
    "hotplug": ("hotplug-cycles",),
    # Runs that must fail (the harness's own tests, and vblk-ci repro's).
    "meta-crash": ("meta-sysrq-crash",),
    "meta-fail": ("meta-failing-check",),
    "faults": ("fault-blkdebug", "fault-error-policy", "fault-schedule-eio", "fault-unplug", "fault-vm-stop-reset",
               "fault-throttle", "fault-resize", "fault-request-break", "fault-device-reset", "fault-blkdebug-delay"),
    # Checks for the review-v2 findings (issue 11): they fail on the v2 series.
    "review": ("driver-ioprio", "driver-bounds", "driver-access", "driver-links", "driver-coherency",
               "driver-poll-timeout", "driver-unplug-iopoll", "driver-compat32", "driver-ranges", "driver-copyout"),
    # Paths only a modular driver and allocation-failure injection reach: the debug and coverage
    # kernels (kernel-config/debug.config, coverage.config). Elsewhere its scenarios skip, naming
    # the missing feature.
    "inject": ("alloc-failures", "module-reload"),
}


def suite(name: str) -> list[type[Scenario]]:
    if name not in SUITES:
        raise UsageError(f"unknown suite {name!r} (known: {', '.join(sorted(SUITES))})")
    return [get(n) for n in SUITES[name]]


__all__ = ["SUITES", "Scenario", "ScenarioContext", "get", "register", "registered", "suite"]
