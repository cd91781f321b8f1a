"""Copy the guest's gcov counters for virtio_blk into the run dir (``vblk-ci run --coverage``).

The coverage kernel (``kernel-config/coverage.config``) profiles only
``drivers/block/virtio_blk.c``; its counters are at
``/sys/kernel/debug/gcov/<build dir>/drivers/block/virtio_blk.gcda``.  The
runner takes a snapshot once after boot and after every scenario that ran:
read the file (agent ``read_binary``), store it as
``coverage/NN-<label>.gcda``, then write ``/sys/kernel/debug/gcov/reset`` so the
next snapshot holds only what ran since.  The snapshots of one run (and of
several runs) are therefore disjoint and their counts add up.  A scenario that
resets the guest (``system_reset``) loses what ran before the reset in that
scenario: the kernel's counters start again at zero on the new boot.

Collection never changes a verdict: a failure is a Note event and a line in
``coverage/collect.json``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .. import events as E
from ..errors import AgentError

GCOV_ROOT = "/sys/kernel/debug/gcov"
GCDA_NAME = "virtio_blk.gcda"
RESET_PATH = f"{GCOV_ROOT}/reset"
COVERAGE_SUBDIR = "coverage"
INDEX_NAME = "collect.json"

_LABEL_RE = re.compile(r"[^A-Za-z0-9_.-]+")


def find_command() -> str:
    """Shell command run in the guest that prints the path of virtio_blk's counters."""
    return f"find {GCOV_ROOT} -name {GCDA_NAME} -path '*/drivers/block/*'"


def pick_gcda(find_output: str) -> str | None:
    """The counters' path from ``find`` output (the first matching line), or None."""
    for line in find_output.splitlines():
        line = line.strip()
        if line.endswith("/drivers/block/" + GCDA_NAME):
            return line
    return None


def snapshot_name(index: int, label: str) -> str:
    return f"{index:02d}-{_LABEL_RE.sub('_', label) or 'x'}.gcda"


class GcdaCollector:
    """Snapshots of virtio_blk's gcov counters, one per call, into ``<run_dir>/coverage/``."""

    def __init__(self, run_dir: Path, emit: E.Emit = E.discard):
        self.dir = Path(run_dir) / COVERAGE_SUBDIR
        self.emit = emit
        self.index: list[dict] = []
        self.guest_path: str | None = None
        self.disabled: str | None = None

    def _write_index(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        doc = {"guest_path": self.guest_path, "disabled": self.disabled, "snapshots": self.index}
        (self.dir / INDEX_NAME).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")

    def _locate(self, agent) -> str | None:
        out = agent.exec(cmd=find_command(), timeout_s=30.0)
        return pick_gcda(out.get("stdout", ""))

    def snapshot(self, machine, label: str) -> Path | None:
        """Copy the counters out and zero them; the file written, or None (reason in collect.json)."""
        if self.disabled:
            return None
        entry: dict = {"label": label}
        agent = getattr(machine, "agent", None)
        try:
            if agent is None or getattr(agent, "closed", False):
                raise AgentError("Disconnected", "no agent connection")
            if self.guest_path is None:
                self.guest_path = self._locate(agent)
                if self.guest_path is None:
                    self.disabled = (f"no {GCDA_NAME} under {GCOV_ROOT} in the guest: not the coverage kernel "
                                     f"(CONFIG_GCOV_KERNEL + GCOV_PROFILE_virtio_blk.o), or debugfs not mounted")
                    self.emit(E.Note(f"coverage: {self.disabled}"))
                    self._write_index()
                    return None
            data = agent.read_binary(self.guest_path)
            agent.write_file(RESET_PATH, "1")
        except (AgentError, OSError) as exc:
            entry["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.index.append(entry)
            self._write_index()
            self.emit(E.Note(f"coverage: no counters after {label}: {entry['error']}"))
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / snapshot_name(len(self.index), label)
        path.write_bytes(data)
        entry.update(file=path.name, bytes=len(data))
        self.index.append(entry)
        self._write_index()
        return path
