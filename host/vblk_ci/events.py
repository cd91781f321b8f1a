"""Typed stage events.

The engine (runner, machine, scenarios) emits these; reporters consume them.
Nothing in the core prints: a reporter decides what a terminal, a CI log or a
file shows. Every event is an immutable dataclass; ``Emit`` is the callable type
the runner receives.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Event:
    """Base class; ``at`` is a monotonic timestamp taken when the event is made."""

    at: float = field(default_factory=time.monotonic, kw_only=True, compare=False)


@dataclass(frozen=True)
class RunStart(Event):
    run_dir: str
    suite: str


@dataclass(frozen=True)
class BuildStep(Event):
    """One step of a build, or of checking the artifacts a run needs."""

    step: str
    message: str = ""
    done: bool = False


@dataclass(frozen=True)
class BootStart(Event):
    accel: str
    argv: tuple[str, ...] = ()


@dataclass(frozen=True)
class BootEnd(Event):
    """The kernel reached user space (the console showed it running init)."""

    seconds: float
    accel: str


@dataclass(frozen=True)
class AgentReady(Event):
    """The guest agent answered a ping; ``seconds`` counts from launch."""

    seconds: float


@dataclass(frozen=True)
class DiskPlugged(Event):
    id: str
    serial: str
    seconds_to_visible: float
    guest_name: str | None = None
    chardev: str | None = None


@dataclass(frozen=True)
class DiskUnplugged(Event):
    id: str
    seconds: float


@dataclass(frozen=True)
class ScenarioStart(Event):
    name: str
    description: str = ""


@dataclass(frozen=True)
class ScenarioSkipped(Event):
    name: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class CheckStart(Event):
    name: str


@dataclass(frozen=True)
class CheckEnd(Event):
    name: str
    passed: bool
    detail: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class ConsoleFinding(Event):
    title: str
    excerpt: str


@dataclass(frozen=True)
class Verdict(Event):
    """Terminal event. ``status`` is one of ``VERDICT_STATUSES``."""

    status: str
    reason: str = ""


@dataclass(frozen=True)
class Note(Event):
    text: str


PASS = "pass"
FAIL = "fail"
ERROR = "error"
CONFIG_MISMATCH = "config-mismatch"
VERDICT_STATUSES = (PASS, FAIL, ERROR, CONFIG_MISMATCH)

Emit = Callable[[Event], Any]


def discard(_event: Event) -> None:
    """An ``Emit`` that drops everything (library use, tests)."""


class Recorder:
    """An ``Emit`` that keeps every event in order (tests, post-run reports)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, cls: type) -> list:
        return [e for e in self.events if isinstance(e, cls)]


def fan_out(*sinks: Emit) -> Emit:
    """One ``Emit`` that forwards each event to every sink, in order."""

    def emit(event: Event) -> None:
        for sink in sinks:
            sink(event)

    return emit
