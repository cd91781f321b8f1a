"""A Markdown summary, appended to $GITHUB_STEP_SUMMARY when it is set."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from ..result import RunResult

ENV = "GITHUB_STEP_SUMMARY"
_ICON = {"pass": "✅", "fail": "❌", "error": "⚠️", "skip": "⏭️", "config-mismatch": "⚠️"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()


def to_markdown(result: RunResult) -> str:
    icon = _ICON.get(result.status, "")
    lines = [f"## vblk-ci {result.suite}: {icon} {result.status.upper()}", ""]
    if result.reason:
        lines += [f"**Reason:** {_cell(result.reason.splitlines()[0])}", ""]
    facts = [f"accel `{result.accel}`", f"QEMU {result.qemu_version}" if result.qemu_version else "",
             f"boot {result.boot_seconds:.1f}s" if result.boot_seconds is not None else "",
             f"agent ready {result.agent_seconds:.1f}s" if result.agent_seconds is not None else "",
             f"total {result.seconds:.1f}s"]
    lines += [" · ".join(f for f in facts if f), ""]
    checks = result.checks()
    if checks:
        lines += ["| check | result | time | detail |", "|---|---|---|---|"]
        for c in checks:
            detail = _cell(c.detail.splitlines()[0]) if c.detail else ""
            lines.append(f"| `{_cell(c.full_name)}` | {_ICON.get(c.status, '')} {c.status} | {c.seconds:.2f}s | {detail} |")
        lines.append("")
    for s in result.scenarios:
        if s.skip_reasons:
            lines += [f"Scenario `{s.name}` skipped: {_cell('; '.join(s.skip_reasons))}", ""]
    for f in result.findings:
        lines += [f"<details><summary>Console: {_cell(f.title)}</summary>", "", "```", f.excerpt, "```", "", "</details>", ""]
    return "\n".join(lines) + "\n"


def append_step_summary(result: RunResult, env: Mapping[str, str] | None = None) -> Path | None:
    """Append the summary to the file GitHub Actions names; ``None`` outside Actions."""
    return append_markdown(to_markdown(result), env)


def append_markdown(text: str, env: Mapping[str, str] | None = None) -> Path | None:
    """Append Markdown to the job summary (GITHUB_STEP_SUMMARY); ``None`` outside Actions."""
    target = (env if env is not None else os.environ).get(ENV)
    if not target:
        return None
    path = Path(target)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
    return path
