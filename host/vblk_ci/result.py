"""What a run produced: plain dataclasses the reporters read (JSON, JUnit, Markdown)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .errors import EXIT_CONFIG_MISMATCH, EXIT_FAIL, EXIT_INFRA, EXIT_PASS
from .events import CONFIG_MISMATCH, ERROR, FAIL, PASS

# Check / scenario statuses (a verdict adds config-mismatch).
SKIP = "skip"


@dataclass
class CheckResult:
    scenario: str
    name: str
    status: str  # pass | fail | error | skip
    detail: str = ""
    seconds: float = 0.0
    data: dict = field(default_factory=dict)  # e.g. the engine JSON of each step
    source: str = ""  # "host/vblk_ci/scenarios/<file>.py:<line>" of the ctx.check call: where a failure points

    @property
    def full_name(self) -> str:
        return f"{self.scenario}/{self.name}"


@dataclass
class ScenarioResult:
    name: str
    description: str = ""
    status: str = PASS  # pass | fail | error | skip
    skip_reasons: list[str] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)


@dataclass
class FindingRecord:
    kind: str
    title: str
    excerpt: str


@dataclass
class RunResult:
    status: str  # pass | fail | error | config-mismatch
    reason: str = ""
    suite: str = ""
    run_dir: str = ""
    started_at: str = ""
    seconds: float = 0.0
    accel: str = ""
    accel_reason: str = ""
    qemu: str = ""
    qemu_version: str = ""
    kernel: str = ""
    initramfs: str = ""
    boot_seconds: float | None = None
    agent_seconds: float | None = None
    qemu_exitcode: int | None = None
    scenarios: list[ScenarioResult] = field(default_factory=list)
    findings: list[FindingRecord] = field(default_factory=list)
    timings: dict = field(default_factory=dict)  # hotplug / unplug figures
    agent_warnings: list[str] = field(default_factory=list)  # the agent's warning events (engine misbehaving)

    @property
    def exit_code(self) -> int:
        # config-mismatch: the VM did not get the configuration asked for, so nothing was
        # judged -- not a verdict on the driver; its own exit code.
        return {PASS: EXIT_PASS, FAIL: EXIT_FAIL, ERROR: EXIT_INFRA, CONFIG_MISMATCH: EXIT_CONFIG_MISMATCH}[self.status]

    def checks(self) -> list[CheckResult]:
        return [c for s in self.scenarios for c in s.checks]

    def counts(self) -> dict[str, int]:
        counts = {PASS: 0, FAIL: 0, ERROR: 0, SKIP: 0}
        for check in self.checks():
            counts[check.status] = counts.get(check.status, 0) + 1
        return counts

    def to_dict(self) -> dict:
        return {"schema": "vblk-ci/run-result/1", **asdict(self), "counts": self.counts()}
