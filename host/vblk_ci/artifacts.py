"""Where a command finds the guest kernel and initramfs: a flag, else an environment variable.

The initramfs has one step between: the ``initramfs.cpio.gz`` beside the kernel, when there
is one. A kernel whose virtio_blk is a module (the image's debug and coverage kernels) can
only boot the initramfs that carries that module, and the image puts it there.

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
#: A kernel's own initramfs, looked for in the kernel's folder.
BESIDE_KERNEL = "initramfs.cpio.gz"
INITRAMFS_HELP = f"guest initramfs (default: the {BESIDE_KERNEL} beside the kernel, else ${ENV_INITRAMFS})"


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


def initramfs(arg: str | None, kernel: Path | None = None) -> Path:
    """``arg``, else the kernel's own initramfs beside it, else ``$VBLK_CI_INITRAMFS``."""
    if not arg and kernel is not None and (kernel.parent / BESIDE_KERNEL).is_file():
        return kernel.parent / BESIDE_KERNEL
    return artifact(arg, ENV_INITRAMFS, "initramfs", "--initramfs")
