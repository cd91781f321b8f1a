"""Build the guest: kernel (kernel.py), initramfs (initramfs.py), shared cache (cache.py).

Stdlib only: these modules also run inside a Docker build stage that has
nothing but Debian's python3 and ``PYTHONPATH=<repo>/host``.

    from vblk_ci.build.kernel import KernelBuildOptions, build_kernel
    from vblk_ci.build.initramfs import InitramfsBuildOptions, build_initramfs

Submodules are not imported here, so ``python3 -m vblk_ci.build.kernel`` runs cleanly.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

try:  # the full package is there on the host; a Docker build stage may only carry build/
    from vblk_ci.errors import BuildError as _BuildErrorBase
    from vblk_ci.errors import UsageError
except ImportError:  # pragma: no cover - exercised only in the bare build stage
    _BuildErrorBase = RuntimeError  # type: ignore[misc,assignment]

    class UsageError(ValueError):  # type: ignore[no-redef]
        """Bad arguments: the user can fix them (exit 2)."""

        exit_code = 2


class BuildError(_BuildErrorBase):  # type: ignore[valid-type,misc]
    """A kernel or initramfs build step failed; the message carries the log tail."""

    exit_code = 3


def repo_root() -> Path:
    """The checkout this package lives in (``<repo>/host/vblk_ci/build`` -> ``<repo>``)."""
    return Path(__file__).resolve().parents[3]


def add_builder_args(p: argparse.ArgumentParser, output_files: str) -> None:
    """The options every builder's CLI has (cache, key, output dir, JSON, quiet)."""
    p.add_argument("--cache-dir", help="cache root (default $VBLK_CI_CACHE or ~/.cache/vblk-ci)")
    p.add_argument("--print-key", action="store_true", help="print the cache key and exit")
    p.add_argument("--output-dir", help=f"also copy {output_files} here")
    p.add_argument("--json", action="store_true", help="print the artifact as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def run_builder_cli(
    what: str,
    args: argparse.Namespace,
    to_options: Callable[[argparse.Namespace], Any],
    key: Callable[[Any], str],
    build: Callable[..., Any],
    publish: Callable[[Any, Path], None],
    main_file: Callable[[Any], Path],
) -> int:
    """The body of ``python3 -m vblk_ci.build.<what>`` (arguments from add_builder_args).

    Progress goes to stderr as ``[what  12.3s] ...``; the artifact's main file
    (or ``--json`` the whole artifact) to stdout.  Exit 0, 2 bad usage, 3 the build failed.
    """
    t0 = time.monotonic()

    def progress(msg: str) -> None:
        print(f"[{what} {time.monotonic() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    try:
        opts = to_options(args)
        if args.print_key:
            print(key(opts))
            return 0
        art = build(opts, None if args.quiet else progress)
        if args.output_dir:
            od = Path(args.output_dir)
            od.mkdir(parents=True, exist_ok=True)
            publish(art, od)
    except (BuildError, UsageError) as e:
        print(f"vblk-ci {what} build: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 3)
    print(json.dumps(art.to_json(), indent=2) if args.json else main_file(art))
    return 0


__all__ = ["BuildError", "UsageError", "add_builder_args", "repo_root", "run_builder_cli"]
