"""Scenario base class, registry and the context a scenario runs checks through.

A scenario declares ``name`` and ``description``, says why it cannot run in
``requires()`` (a list of human-readable reasons; empty = can run), and performs
named checks with ``ctx.check(name, fn)``. ``fn(rec)`` fills ``rec`` (a dict kept
with the check result, e.g. engine JSON) and raises ``CheckFailed`` (or lets an
``AgentError`` escape) when the check does not hold. A check also fails if the
console shows a finding. Infrastructure errors are recorded and re-raised: they
end the run with an ``error`` verdict, not a failure.
"""

from __future__ import annotations

import fnmatch
import inspect
import sys
import time
from pathlib import Path
from typing import Any, Callable, ClassVar

from ..errors import AgentError, CheckFailed, ConfigMismatch, InfraError, UnplugTimeout, UsageError
from ..events import CONFIG_MISMATCH, ERROR, FAIL, PASS, CheckEnd, CheckStart, ConsoleFinding, Emit
from ..result import SKIP, CheckResult

CheckFn = Callable[[dict], Any]


class Scenario:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def requires(self, ctx: "ScenarioContext") -> list[str]:
        """Reasons this scenario cannot run here; empty when it can."""
        return []

    def run(self, ctx: "ScenarioContext") -> None:
        raise NotImplementedError


_REGISTRY: dict[str, type[Scenario]] = {}


def register(cls: type[Scenario]) -> type[Scenario]:
    """Class decorator: make a scenario available by name; rejects malformed ones."""
    if not cls.name or not cls.name.replace("-", "").replace("_", "").isalnum():
        raise TypeError(f"{cls.__qualname__}: scenario name {cls.name!r} must be a non-empty identifier")
    if not cls.description:
        raise TypeError(f"{cls.__qualname__}: scenario {cls.name!r} needs a description")
    if cls.run is Scenario.run:
        raise TypeError(f"{cls.__qualname__}: scenario {cls.name!r} must implement run()")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise TypeError(f"scenario {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def get(name: str) -> type[Scenario]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown scenario {name!r} (known: {', '.join(sorted(_REGISTRY))})") from None


def registered() -> dict[str, type[Scenario]]:
    return dict(_REGISTRY)


PACKAGE_DIR = Path(__file__).resolve().parent.parent  # host/vblk_ci in the repository


def call_site(scenario: str) -> str:
    """``host/vblk_ci/scenarios/x.py:LINE`` of the ``ctx.check`` call in the scenario's own file
    (else the nearest caller inside the package): what a failed check's annotation points at."""
    cls = _REGISTRY.get(scenario)
    own = Path(inspect.getsourcefile(cls)).resolve() if cls is not None else None
    frame = sys._getframe(2)  # the caller of ScenarioContext.check
    fallback = None
    while frame is not None:
        path = Path(frame.f_code.co_filename).resolve()
        if own is not None and path == own:
            return _relative(path, frame.f_lineno)
        if fallback is None and PACKAGE_DIR in path.parents:
            fallback = _relative(path, frame.f_lineno)
        frame = frame.f_back
    return fallback or ""


def _relative(path: Path, line: int) -> str:
    try:
        return f"host/vblk_ci/{path.relative_to(PACKAGE_DIR).as_posix()}:{line}"
    except ValueError:
        return f"{path}:{line}"


DESELECTED = "deselected"  # a check --check left out: neither run nor recorded


class CheckSelection:
    """``run --check GLOB``: which checks of a scenario run.

    A glob matches a check's name or its ``scenario/check`` full name. The checks before the
    first match run too, as the chosen check's set-up (hotplug, module parameters, data it
    reads back); after a match, only matching checks run. So a bug being chased costs its
    scenario's prefix, not the whole suite.
    """

    def __init__(self, globs: tuple[str, ...] = ()):
        self.globs = tuple(globs)
        self.matched = False

    def matches(self, scenario: str, name: str) -> bool:
        full = f"{scenario}/{name}"
        return any(fnmatch.fnmatchcase(name, g) or fnmatch.fnmatchcase(full, g) for g in self.globs)

    def wants_scenario(self, scenario: str) -> bool:
        """False when every glob names other scenarios (``other/*``): this one need not run."""
        if not self.globs:
            return True
        return any("/" not in g or fnmatch.fnmatchcase(scenario, g.split("/", 1)[0]) for g in self.globs)

    def runs(self, scenario: str, name: str) -> bool:
        if not self.globs:
            return True
        if self.matches(scenario, name):
            self.matched = True
            return True
        return not self.matched


class ScenarioContext:
    """What a scenario sees: the machine, its agent, a scratch dir, the event sink."""

    def __init__(self, scenario: str, machine, run_dir: Path, emit: Emit, reported_findings: set[str],
                 options: dict | None = None, select: tuple[str, ...] = ()):
        self.scenario = scenario
        self.select = CheckSelection(select)
        self.options = dict(options or {})  # run-wide inputs a scenario may use, e.g. "schedule" (a Path)
        self.machine = machine
        self.run_dir = Path(run_dir)
        self.emit = emit
        self.checks: list[CheckResult] = []
        self._reported = reported_findings

    @property
    def agent(self):
        return self.machine.agent

    @property
    def timeouts(self):
        return self.machine.timeouts

    def scratch(self) -> Path:
        path = self.run_dir / "scenarios" / self.scenario
        path.mkdir(parents=True, exist_ok=True)
        return path

    def check(self, name: str, fn: CheckFn) -> CheckResult:
        full = f"{self.scenario}/{name}"
        if not self.select.runs(self.scenario, name):
            return CheckResult(self.scenario, name, DESELECTED, "not selected (--check)")
        self.emit(CheckStart(full))
        rec: dict = {}
        started = time.monotonic()
        status, detail, infra = PASS, "", None
        try:
            fn(rec)
        except (CheckFailed, AgentError, UnplugTimeout) as exc:
            status, detail = FAIL, str(exc)
        except ConfigMismatch as exc:  # the VM is not what was asked for: nothing judged (matrix)
            status, detail = CONFIG_MISMATCH, str(exc)
        except InfraError as exc:
            status, detail, infra = ERROR, str(exc), exc
        status, detail = self._judge_console(status, detail)
        result = CheckResult(self.scenario, name, status, detail, time.monotonic() - started, rec,
                             source=call_site(self.scenario))
        self.checks.append(result)
        self.emit(CheckEnd(full, status == PASS, detail.splitlines()[0] if detail else "", result.seconds))
        if infra is not None:
            raise infra
        return result

    def skip(self, name: str, reason: str) -> CheckResult:
        result = CheckResult(self.scenario, name, SKIP, reason)
        self.checks.append(result)
        return result

    def _judge_console(self, status: str, detail: str) -> tuple[str, str]:
        console = self.machine.console
        if console is None or not console.crashed.is_set():
            return status, detail
        findings = console.findings()
        for f in findings:
            if f.title not in self._reported:
                self._reported.add(f.title)
                self.emit(ConsoleFinding(f.title, f.excerpt))
        if not findings:
            return status, detail
        titles = "; ".join(f.title for f in findings)
        note = f"console: {titles}"
        return (FAIL if status == PASS else status), (f"{detail}\n{note}" if detail else note)
