"""Terminal output, driven only by events.

On a TTY a step's start shows a transient line that its end rewrites in place;
elsewhere (CI logs) each step prints exactly one line, when it ends.
"""

from __future__ import annotations

import sys
from typing import TextIO

from .. import events as E

_STATUS = {True: "ok", False: "FAIL"}


# Events that finish the step whose transient line is showing.
_STEP_ENDS = (E.BootEnd, E.CheckEnd, E.BuildStep, E.AgentReady, E.ScenarioSkipped, E.Verdict)


class TerminalReporter:
    def __init__(self, stream: TextIO | None = None, tty: bool | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self._transient = False  # a transient line is on screen, cursor at its end
        self._step = ""  # the step in progress (TTY), redrawn after interleaved lines

    def __call__(self, event: E.Event) -> None:
        line = self.render(event)
        if line is None:
            return
        text, transient = line
        if transient and not self.tty:
            return
        if self.tty and self._transient:
            self.stream.write("\r\033[K")
        if transient:
            self.stream.write(text)
            self._step, self._transient = text, True
        else:
            self.stream.write(text + "\n")
            self._transient = False
            if isinstance(event, _STEP_ENDS):
                self._step = ""
            elif self.tty and self._step:  # e.g. DiskPlugged during a check: keep showing the check
                self.stream.write(self._step)
                self._transient = True
        self.stream.flush()

    def close(self) -> None:
        """End a dangling transient line (the run stopped mid-step), so later output starts clean."""
        if self._transient:
            self.stream.write("\n")
            self.stream.flush()
            self._transient = False
        self._step = ""

    @staticmethod
    def render(event: E.Event) -> tuple[str, bool] | None:
        """(text, transient) for an event, or ``None`` when it shows nothing."""
        match event:
            case E.RunStart(run_dir=run_dir, suite=suite):
                return f"vblk-ci {suite}: run dir {run_dir}", False
            case E.BuildStep(step=step, message=msg, done=False):
                return f"  ..   {step} {msg}".rstrip(), True
            case E.BuildStep(step=step, message=msg, done=True):
                return f"  ok   {step} {msg}".rstrip(), False
            case E.BootStart(accel=accel):
                return f"  ..   boot ({accel})", True
            case E.BootEnd(seconds=s, accel=accel):
                return f"  ok   boot ({accel}) {s:.1f}s", False
            case E.AgentReady(seconds=s):
                return f"  ok   agent ready {s:.1f}s", False
            case E.DiskPlugged(id=i, guest_name=g, chardev=c, seconds_to_visible=s):
                return f"  ok   plugged {i} -> {g or '?'} ({c or 'no chardev'}) {s:.2f}s", False
            case E.DiskUnplugged(id=i, seconds=s):
                return f"  ok   unplugged {i} {s:.2f}s", False
            case E.ScenarioStart(name=name):
                return f"  ..   {name}", True
            case E.ScenarioSkipped(name=name, reasons=reasons):
                return f"  skip {name}: {'; '.join(reasons)}", False
            case E.CheckStart(name=name):
                return f"  ..   {name}", True
            case E.CheckEnd(name=name, passed=passed, detail=detail, seconds=s):
                tail = f": {detail}" if detail and not passed else ""
                return f"  {_STATUS[passed]:<4} {name} {s:.2f}s{tail}", False
            case E.ConsoleFinding(title=title):
                return f"  !!   console: {title}", False
            case E.Note(text=text):
                return f"  --   {text}", False
            case E.Verdict(status=status, reason=reason):
                return f"verdict: {status.upper()}" + (f" ({reason.splitlines()[0]})" if reason else ""), False
        return None
