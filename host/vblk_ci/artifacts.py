"""Where a command finds the guest kernel and initramfs: a flag, else an environment variable.

Shared by every subcommand that boots a guest (run, bench, fuzz, shell, repro overrides),
so the rule and its one-line error are the same everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import MissingPrerequisite

ENV_KERNEL = "VBLK_CI_KERNEL"
ENV_INITRAMFS = "VBLK_CI_INITRAMFS"
# The bench's initramfs: the suites' one plus fio (the image builds both).
ENV_INITRAMFS_BENCH = "VBLK_CI_INITRAMFS_BENCH"
DEFAULT_OUT_ROOT = Path("vblk-ci-out")


def artifact(arg: str | None, env: str, what: str, flag: str) -> Path:
    """``arg``, else ``$env``: an existing file, or MissingPrerequisite naming both."""
    value = arg or os.environ.get(env)
    if not value:
        raise MissingPrerequisite(f"no {what} given (set {flag} or {env})")
    path = Path(value)
    if not path.is_file():
        raise MissingPrerequisite(f"{what} not found: {value} (set {flag} or {env})")
    return path


def kernel(arg: str | None) -> Path:
    return artifact(arg, ENV_KERNEL, "kernel image", "--kernel")


def initramfs(arg: str | None) -> Path:
    return artifact(arg, ENV_INITRAMFS, "initramfs", "--initramfs")
