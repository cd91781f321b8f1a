"""The host's model of a disk's contents, per 512-byte sector.

Each sector holds one of: zeroes (tag 0), the write pattern of a seed (tag = the
seed; the executor decodes the seed back from the data), or "unknown" (anything
is accepted: after a device error, a crash, or before the first write when the
start is not known). A discard leaves "the old contents or zeroes". The guest
executor reports every read as runs of tags (``[[count, tag], ...]``: 0 zeroes,
-1 neither zeroes nor any pattern, -2 the read buffer's poison, i.e. the data
never arrived), and ``check_read`` compares them with the model.
"""

from __future__ import annotations

from dataclasses import dataclass

ZERO = 0
GARBAGE = -1
POISON = -2
UNKNOWN = None  # any tag accepted


@dataclass(frozen=True)
class Mismatch:
    sector: int  # absolute, 512-byte units
    got: int
    allowed: frozenset[int]

    def describe(self) -> str:
        what = {GARBAGE: "neither zeroes nor any pattern", POISON: "the read buffer untouched (no data arrived)",
                ZERO: "zeroes"}.get(self.got, f"pattern of seed {self.got}")
        want = " or ".join("zeroes" if t == ZERO else f"seed {t}" for t in sorted(self.allowed))
        return f"sector {self.sector}: {what}, expected {want}"


class DiskModel:
    """Sparse: sectors never touched hold ``initial`` (zeroes for a fresh image, or unknown)."""

    def __init__(self, capacity: int, initial_known: bool = True):
        self.capacity = capacity
        self._initial: frozenset[int] | None = frozenset({ZERO}) if initial_known else UNKNOWN
        self._state: dict[int, frozenset[int] | None] = {}

    def allowed(self, sector: int) -> frozenset[int] | None:
        if sector >= self.capacity:
            # only readable while the disk has grown (a resize fault): what is there is not modelled
            return UNKNOWN
        return self._state.get(sector, self._initial)

    def _set(self, sector: int, count: int, value) -> None:
        for s in range(max(sector, 0), min(sector + count, self.capacity)):
            self._state[s] = value(s) if callable(value) else value

    def write(self, sector: int, count: int, seed: int) -> None:
        self._set(sector, count, frozenset({seed}))

    def zero(self, sector: int, count: int) -> None:
        self._set(sector, count, frozenset({ZERO}))

    def discard(self, sector: int, count: int) -> None:
        def after(s: int):
            old = self.allowed(s)
            return None if old is None else old | {ZERO}

        self._set(sector, count, after)

    def forget(self, sector: int, count: int) -> None:
        self._set(sector, count, UNKNOWN)

    def apply(self, kind: str, sector: int, count: int, seed: int = 0) -> None:
        {"write": lambda: self.write(sector, count, seed), "zero": lambda: self.zero(sector, count),
         "discard": lambda: self.discard(sector, count), "forget": lambda: self.forget(sector, count)}[kind]()

    def check_read(self, sector: int, runs: list[list[int]], max_report: int = 4) -> list[Mismatch]:
        """Mismatches (at most ``max_report``) between a read's tag runs and the model."""
        out: list[Mismatch] = []
        s = sector
        for count, tag in runs:
            for k in range(count):
                allowed = self.allowed(s + k)
                if allowed is not None and tag not in allowed:
                    out.append(Mismatch(s + k, tag, allowed))
                    if len(out) >= max_report:
                        return out
            s += count
        return out

    def expected_runs(self, sector: int, count: int) -> list[tuple[int, frozenset[int] | None]]:
        """The model over ``count`` sectors as runs of (count, allowed), for repro programs."""
        runs: list[tuple[int, frozenset[int] | None]] = []
        for s in range(sector, sector + count):
            a = self.allowed(s)
            if runs and runs[-1][1] == a:
                runs[-1] = (runs[-1][0] + 1, a)
            else:
                runs.append((1, a))
        return runs
