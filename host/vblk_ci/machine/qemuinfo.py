"""Probe what a QEMU binary supports, once per binary per process."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess

from ..errors import MissingPrerequisite
from .argv import QemuCaps

DEFAULT_QEMU = "qemu-system-x86_64"

_VERSION_RE = re.compile(r"QEMU emulator version (\d+)\.(\d+)(?:\.(\d+))?")


def parse_version(text: str) -> tuple[int, int, int]:
    m = _VERSION_RE.search(text)
    if not m:
        raise ValueError(f"no QEMU version in {text[:200]!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def caps_from_help(version_text: str, help_text: str, cpu_help: str) -> QemuCaps:
    """Pure: decide capabilities from ``--version``, ``-h`` and ``-cpu help`` output."""
    version = parse_version(version_text)
    return QemuCaps(
        version=version,
        # 7.2 lists "x86 max ..."; later releases drop the "x86" prefix.
        cpu_max=re.search(r"^\s*(?:x86\s+)?max\s", cpu_help, re.M) is not None,
        panic_exit_failure="exit-failure" in help_text,
    )


def resolve_binary(qemu: str) -> str:
    path = shutil.which(qemu)
    if path is None:
        raise MissingPrerequisite(f"QEMU binary not found: {qemu} (install qemu-system-x86 or set --qemu)")
    return path


@functools.lru_cache(maxsize=None)
def probe_caps(qemu: str) -> QemuCaps:
    qemu = resolve_binary(qemu)

    def run(*args: str) -> str:
        try:
            proc = subprocess.run(
                [qemu, *args], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise MissingPrerequisite(f"cannot run {qemu} {' '.join(args)}: {exc}") from exc
        return proc.stdout + proc.stderr

    version_text = run("--version")
    try:
        return caps_from_help(version_text, run("-h"), run("-cpu", "help"))
    except ValueError as exc:
        raise MissingPrerequisite(f"{qemu} does not look like QEMU: {exc}") from exc
