"""Build the guest: kernel (kernel.py), initramfs (initramfs.py), shared cache (cache.py).

Stdlib only: these modules also run inside a Docker build stage that has
nothing but Debian's python3 and ``PYTHONPATH=<repo>/host``.

    from vblk_ci.build.kernel import KernelBuildOptions, build_kernel
    from vblk_ci.build.initramfs import InitramfsBuildOptions, build_initramfs

Submodules are not imported here, so ``python3 -m vblk_ci.build.kernel`` runs cleanly.
"""

from __future__ import annotations

from pathlib import Path

try:  # the full package is there on the host; a Docker build stage may only carry build/
    from vblk_ci.errors import BuildError as _BuildErrorBase
except ImportError:  # pragma: no cover - exercised only in the bare build stage
    _BuildErrorBase = RuntimeError  # type: ignore[misc,assignment]


class BuildError(_BuildErrorBase):  # type: ignore[valid-type,misc]
    """A kernel or initramfs build step failed; the message carries the log tail."""


def repo_root() -> Path:
    """The checkout this package lives in (``<repo>/host/vblk_ci/build`` -> ``<repo>``)."""
    return Path(__file__).resolve().parents[3]


__all__ = ["BuildError", "repo_root"]
