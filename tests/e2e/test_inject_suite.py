"""End to end on the host's QEMU: the ``inject`` suite on the debug kernel, the one CI kernel
with a modular virtio_blk and page-allocation failure injection (kernel-config/debug.config),
so module unload/reload and the allocation-failure sweeps run under KASAN and lockdep.

The default kernel builds virtio_blk in and has no injection: there the suite's scenarios
skip, which a strict run counts as a failure, so it is not run there. Run:
pytest -m e2e tests/e2e/test_inject_suite.py
"""

from __future__ import annotations

import pytest

from vblk_ci.scenarios import SUITES

pytestmark = pytest.mark.e2e

# Exactly this many checks per scenario (not a floor), as on the coverage kernel, 2026-11-30.
CHECKS_PER_SCENARIO = {"alloc-failures": 7, "module-reload": 9}


@pytest.fixture(scope="module")
def inject_run(run_suite):
    return run_suite("inject", "debug")


def _summary(result) -> str:
    return "\n".join(f"  {c.full_name}: {c.status} {c.detail.splitlines()[0] if c.detail else ''}"
                     for c in result.checks() if c.status != "pass")


def test_the_debug_kernel_loads_its_module(inject_run):
    _, _, run_dir = inject_run
    console = (run_dir / "console.log").read_text(errors="replace")
    assert "vblk-ci: loaded /lib/modules/" in console, f"no module load on the console (run dir {run_dir})"


def test_every_inject_check_runs_and_passes(inject_run):
    result, _, run_dir = inject_run
    assert [s.name for s in result.scenarios] == list(SUITES["inject"])
    assert {s.name: len(s.checks) for s in result.scenarios} == CHECKS_PER_SCENARIO, _summary(result)
    assert not result.findings, [f"{f.title}\n{f.excerpt}" for f in result.findings]
    assert result.status == "pass" and result.exit_code == 0, f"run dir {run_dir}:\n{_summary(result)}"
