"""results.json: the whole RunResult, machine-readable."""

from __future__ import annotations

import json
from pathlib import Path

from ..result import RunResult


def to_json(result: RunResult) -> str:
    return json.dumps(result.to_dict(), indent=2, sort_keys=False, default=str) + "\n"


def write_json(result: RunResult, path: Path) -> Path:
    path = Path(path)
    path.write_text(to_json(result), encoding="utf-8")
    return path
