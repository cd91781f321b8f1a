"""Source lines for a console report's frames: ``scripts/faddr2line`` against the run's vmlinux.

A report names code as ``func+0xoff/0xsize [module]`` (the ``RIP:`` line, then the call
trace). The kernel's own ``scripts/faddr2line`` turns each into ``file:line`` given the
object that holds the function: ``vmlinux`` for built-in code, ``<module>.ko`` for a
module. Both need debug info for the functions asked about; the appliance builds
``drivers/block/virtio_blk.o`` with ``-g`` and keeps ``vmlinux`` with the kernel artifacts.

Frames marked ``?`` (the unwinder's guesses) are skipped: a decoded guess would point an
annotation at the wrong line.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .classify import strip_timestamp

_FRAME = re.compile(
    r"^(?:RIP: [0-9a-f]{4}:|\s*)(?P<guess>\? )?(?P<func>[A-Za-z_][\w.]*)\+(?P<off>0x[0-9a-f]+)/(?P<size>0x[0-9a-f]+)"
    r"(?:\s+\[(?P<module>\w+)\])?\s*$")
_AT = re.compile(r" at (?P<file>\S+?):(?P<line>\d+)")


@dataclass(frozen=True)
class Frame:
    func: str
    offset: str
    size: str
    module: str | None = None
    file: str | None = None  # relative to the kernel source tree, once decoded
    line: int | None = None

    @property
    def symbol(self) -> str:
        return f"{self.func}+{self.offset}/{self.size}"


def frames(excerpt: str) -> list[Frame]:
    """The reliable frames of a report in order (RIP first), each once."""
    out: list[Frame] = []
    seen: set[tuple[str, str | None]] = set()
    for raw in excerpt.splitlines():
        m = _FRAME.match(strip_timestamp(raw))
        if m is None or m.group("guess"):
            continue
        frame = Frame(m.group("func"), m.group("off"), m.group("size"), m.group("module"))
        if (frame.symbol, frame.module) not in seen:
            seen.add((frame.symbol, frame.module))
            out.append(frame)
    return out


def parse_faddr2line(output: str) -> tuple[str, int] | None:
    """The first ``... at FILE:LINE`` of faddr2line's answer (the innermost, for inlined code)."""
    for line in output.splitlines():
        m = _AT.search(line)
        if m and not m.group("file").startswith("??"):
            return m.group("file"), int(m.group("line"))
    return None


@dataclass(frozen=True)
class Decoder:
    """``faddr2line`` (the kernel's script) over ``vmlinux`` and a folder of ``.ko`` files."""

    faddr2line: Path
    vmlinux: Path
    modules: Path | None = None
    timeout_s: float = 60.0
    #: The source tree the objects were built from: paths under it become relative to it
    #: (``drivers/block/virtio_blk.c``), as annotations on the tree's repository need.
    source_root: str | None = None

    def object_for(self, frame: Frame) -> Path | None:
        if frame.module is None:
            return self.vmlinux
        if self.modules is None:
            return None
        found = sorted(self.modules.rglob(f"{frame.module}.ko"))
        return found[0] if found else None

    def decode(self, frame: Frame) -> Frame:
        obj = self.object_for(frame)
        if obj is None or not obj.is_file():
            return frame
        try:
            proc = subprocess.run([str(self.faddr2line), str(obj), frame.symbol], capture_output=True, text=True,
                                  timeout=self.timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return frame
        where = parse_faddr2line(proc.stdout)
        if where is None:
            return frame
        path = where[0]
        if self.source_root and path.startswith(self.source_root.rstrip("/") + "/"):
            path = path[len(self.source_root.rstrip("/")) + 1:]
        return Frame(frame.func, frame.offset, frame.size, frame.module, path, where[1])

    def decode_all(self, excerpt: str) -> list[Frame]:
        return [self.decode(f) for f in frames(excerpt)]


def decoder_for(kernel: Path) -> Decoder | None:
    """The decoder for a run's kernel: ``vmlinux`` and ``faddr2line`` beside the bzImage (the
    kernel builder keeps both with its artifacts; ``modules/`` too when there are any)."""
    folder = Path(kernel).resolve().parent
    vmlinux, script = folder / "vmlinux", folder / "faddr2line"
    if not (vmlinux.is_file() and script.is_file()):
        return None
    modules = folder / "modules"
    try:  # a --tree build records its tree (build/tree.py)
        root = json.loads((folder / "manifest.json").read_text(encoding="utf-8")).get("tree")
    except (OSError, ValueError):
        root = None
    return Decoder(script, vmlinux, modules if modules.is_dir() else None, source_root=root)
