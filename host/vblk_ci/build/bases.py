"""The kernel bases the appliance builds on: name -> Debian package, tarball, series, fragments.

Stdlib only and imports nothing else of vblk_ci, so the image's kernel stage can
copy this file alone, ask it which package to install, and keep that layer
cached while kernel.py changes:

    python3 -m vblk_ci.build.bases package [NAME]   # prints e.g. linux-source-7.3

A base's tarball is what Debian's ``linux-source-<version>`` installs; its series
is the first of ``series_dirs`` (relative to the repository) that holds a
``series`` file, so the 6.12 backport moves to ``driver/6.12/`` without an edit
here; ``fragments`` are config fragments (in ``kernel-config/``) merged after the
variant's own, for options a base names differently.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

#: The driver's one source file, the same path in every base: the file the series is about
#: (gates' sparse, the coverage kernel's gcov, a splat's preferred frame) and the module's.
DRIVER_SOURCE = "drivers/block/virtio_blk.c"


@dataclass(frozen=True)
class KernelBase:
    name: str
    #: Debian package that installs the source tarball, and the suite it comes from.
    package: str
    suite: str
    #: Candidate series directories, relative to the repository; the first with a ``series`` file wins.
    series_dirs: tuple[str, ...]
    #: Extra config fragments (file names in kernel-config/) for this base, after the variant's.
    fragments: tuple[str, ...] = ()

    @property
    def tarball(self) -> str:
        return f"/usr/src/{self.package}.tar.xz"

    def series_dir(self, root: Path) -> Path:
        """The series directory this base uses in the checkout at *root*.

        None of the candidates having a ``series`` file yields the last one
        (the kernel builder then applies no patches and says so in its manifest).
        """
        for rel in self.series_dirs:
            if (root / rel / "series").is_file():
                return root / rel
        return root / self.series_dirs[-1]


#: 7.3 is the posting base (issue 12): driver/ holds its series.
#: 6.12 is the LTS backport: driver/6.12/ holds its own series.
BASES: dict[str, KernelBase] = {
    b.name: b
    for b in (
        KernelBase("7.3", "linux-source-7.3", "trixie-backports", ("driver",), ("linux-7.3.config",)),
        KernelBase("6.12", "linux-source-6.12", "trixie", ("driver/6.12",)),
    )
}

#: What `vblk-ci build kernel` and the image (Dockerfile ARG KERNEL_BASE, empty by default) build.
#: 7.3 since v3 landed (issue 12).
DEFAULT_BASE = "7.3"


class UnknownBase(ValueError):
    """A base name that is not in BASES; the message is one line naming the known ones."""


def get_base(name: str | None) -> KernelBase:
    """The base called *name* (None or "" = DEFAULT_BASE); UnknownBase otherwise."""
    name = name or DEFAULT_BASE
    try:
        return BASES[name]
    except KeyError:
        raise UnknownBase(f"unknown kernel base {name!r} (known: {', '.join(BASES)})") from None


def main(argv: list[str] | None = None) -> int:
    """``package|tarball|suite [NAME]``: one field of a base, for shell (the Dockerfile)."""
    args = sys.argv[1:] if argv is None else argv
    fields = ("package", "tarball", "suite", "name")
    if not args or args[0] not in fields or len(args) > 2:
        print(f"usage: python3 -m vblk_ci.build.bases {'|'.join(fields)} [NAME]", file=sys.stderr)
        return 2
    try:
        base = get_base(args[1] if len(args) > 1 else None)
    except UnknownBase as e:
        print(f"vblk-ci: {e}", file=sys.stderr)
        return 2
    print(getattr(base, args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
