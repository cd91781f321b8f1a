"""Meta scenarios: runs that must fail, proving the harness catches and records each failure.

``meta-sysrq-crash`` crashes the guest kernel on purpose (sysrq ``c``): the run must end
``fail`` with the console finding "kernel panic: sysrq triggered crash" and leave a
reproduction bundle. ``meta-failing-check`` runs one check that cannot hold (the guest's
kernel release compared with a name no kernel has): ``fail`` without any console finding.
Both are what ``vblk-ci repro`` is tested with.
"""

from __future__ import annotations

from ..errors import AgentError, CheckFailed
from .base import Scenario, ScenarioContext, register

IMPOSSIBLE_RELEASE = "0.0.0-vblk-ci-meta"


@register
class SysrqCrash(Scenario):
    name = "meta-sysrq-crash"
    description = "Crash the guest kernel with sysrq c; the run must fail with the panic as its finding."

    def run(self, ctx: ScenarioContext) -> None:
        def crash(rec: dict) -> None:
            try:
                ctx.agent.exec(cmd="echo c > /proc/sysrq-trigger", timeout_s=5)
            except AgentError as exc:  # the guest died under the call, as it should
                rec["agent"] = str(exc)
                raise CheckFailed(f"the guest kernel crashed on purpose ({exc.kind})") from exc
            raise CheckFailed("the guest survived sysrq c")

        ctx.check("sysrq-crash", crash)


@register
class FailingCheck(Scenario):
    name = "meta-failing-check"
    description = "One check that cannot hold (no console finding): the run must fail with that check."

    def run(self, ctx: ScenarioContext) -> None:
        def release(rec: dict) -> None:
            out = ctx.agent.exec(argv=["uname", "-r"])
            rec["uname"] = out
            got = out["stdout"].strip()
            if got != IMPOSSIBLE_RELEASE:
                raise CheckFailed(f"kernel release is {got!r}, this check wants {IMPOSSIBLE_RELEASE!r}")

        ctx.check("impossible-release", release)
