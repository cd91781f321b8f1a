"""``--disk KEY=VALUE,...``: one parser and one set of rules for every command that takes it
(``vblk-ci shell``, ``vblk-ci run --disk``).

- Items are separated by ``,``; each is ``KEY=VALUE``, or a bare ``KEY`` for a boolean
  (``read-only`` = ``read_only=true``).
- Keys are DiskSpec's field names, with ``-`` or ``_``; ``size`` means ``size_bytes``.
- Integers take a K/M/G suffix (``size=64M``); booleans take 1/0, on/off, yes/no, true/false.
- ``id`` (letters, digits, ``_ . -``) defaults to the caller's ``<prefix><index>``.

A wrong key, value or syntax is a ``UsageError`` naming the flag, before anything boots.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .spec import DiskSpec

_SIZE = re.compile(r"(\d+)([KMG]?)i?B?", re.IGNORECASE)
_ID = re.compile(r"[A-Za-z0-9_.-]+")
_ALIASES = {"size": "size_bytes"}


def _fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(DiskSpec) if f.name != "inject_errors"}


def _kind(field: dataclasses.Field) -> str:
    """bool, int, path or str, from DiskSpec's annotation (``int | None`` is an int)."""
    ann = str(field.type)
    for kind in ("bool", "int", "Path"):
        if re.search(rf"\b{kind}\b", ann):
            return kind
    return "str"


def _convert(flag: str, name: str, text: str | None, kind: str) -> Any:
    if kind == "bool":
        if text is None or text.lower() in ("1", "on", "yes", "true"):
            return True
        if text.lower() in ("0", "off", "no", "false"):
            return False
        raise UsageError(f"--disk {flag!r}: {name} is not a boolean: {text!r}")
    if text is None:
        raise UsageError(f"--disk {flag!r}: {name} needs a value ({name}=...)")
    if kind == "int":
        m = _SIZE.fullmatch(text)
        if not m:
            raise UsageError(f"--disk {flag!r}: {name} is not a number: {text!r}")
        return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2).lower()]
    if kind == "Path":
        return Path(text)
    return text


def parse_disk_flag(flag: str, index: int, id_prefix: str = "d") -> dict[str, Any]:
    """``flag`` -> DiskSpec keyword arguments (typed), with ``id`` always set."""
    fields = _fields()
    values: dict[str, Any] = {}
    for item in filter(None, (i.strip() for i in flag.split(","))):
        key, eq, value = item.partition("=")
        name = key.strip().replace("-", "_")
        name = _ALIASES.get(name, name)
        if name not in fields:
            raise UsageError(f"--disk {flag!r}: unknown key {key!r} (known: size, {', '.join(sorted(fields))})")
        if name in values:
            raise UsageError(f"--disk {flag!r}: {key!r} given twice")
        values[name] = _convert(flag, name, value if eq else None, _kind(fields[name]))
    values.setdefault("id", f"{id_prefix}{index}")
    if not _ID.fullmatch(values["id"]):
        raise UsageError(f"--disk {flag!r}: id must use letters, digits, '_', '.', '-'")
    return values
