"""One benchmark job (the options of fio's t/io_uring) and how it becomes engine argv.

A ``Comparison`` is the pair of jobs one A/B measurement alternates: the same job on
``/dev/vdXc0`` (passthrough) and ``/dev/vdX`` (block path) when it is fair, or two
different jobs when it reproduces how the seed measured. ``validate()`` raises
``UsageError`` naming the field, so bad options are one line and exit 2.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import UsageError

PATHS = ("passthru", "block")
PATTERNS = ("random", "sequential")
BACKENDS = ("null", "file")
MAX_QD = 4096


@dataclass(frozen=True)
class Job:
    """What the engine does on one path for one run."""

    bs: int = 4096
    qd: int = 1
    batch_submit: int = 1
    batch_complete: int = 1
    iopoll: bool = False
    fixed: bool = False
    pattern: str = "random"
    rwmix_read: int = 100  # percent of I/Os that read (100 = all reads, 0 = all writes)
    runtime_s: float | None = 2.0  # one of runtime_s / ios
    ios: int | None = None
    length: int = 64 << 20  # region the I/Os cover, from offset 0
    buffered: bool = False  # block path without O_DIRECT (the seed's -O0)

    def validate(self, where: str = "job") -> "Job":
        def bad(name: str, why: str) -> UsageError:
            return UsageError(f"{where}: {name}: {why}")

        def is_int(v: object) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not is_int(self.bs) or self.bs < 512 or self.bs % 512 or self.bs > (1 << 20):
            raise bad("bs", f"must be a multiple of 512 in 512..1M, got {self.bs!r}")
        if not is_int(self.qd) or not 1 <= self.qd <= MAX_QD:
            raise bad("qd", f"must be 1..{MAX_QD}, got {self.qd!r}")
        for name in ("batch_submit", "batch_complete"):
            v = getattr(self, name)
            if not is_int(v) or not 1 <= v <= self.qd:
                raise bad(name, f"must be 1..qd ({self.qd}), got {v!r}")
        if self.pattern not in PATTERNS:
            raise bad("pattern", f"must be random or sequential, got {self.pattern!r}")
        if not is_int(self.rwmix_read) or not 0 <= self.rwmix_read <= 100:
            raise bad("rwmix_read", f"must be 0..100, got {self.rwmix_read!r}")
        if (self.runtime_s is None) == (self.ios is None):
            raise bad("runtime_s", "give exactly one of a runtime and an I/O count")
        if self.runtime_s is not None and not 0 < self.runtime_s <= 3600:
            raise bad("runtime_s", f"must be in (0, 3600] seconds, got {self.runtime_s!r}")
        if self.ios is not None and (not is_int(self.ios) or self.ios < 1):
            raise bad("ios", f"must be at least 1, got {self.ios!r}")
        if not is_int(self.length) or self.length < self.bs or self.length % self.bs:
            raise bad("length", f"must be a multiple of bs ({self.bs}), got {self.length!r}")
        if self.buffered and (self.fixed or self.iopoll):
            raise bad("buffered", "cannot go with fixed buffers or iopoll")
        return self

    @property
    def op_label(self) -> str:
        kind = "read" if self.rwmix_read == 100 else "write" if self.rwmix_read == 0 else f"rw{self.rwmix_read}"
        return ("rand" if self.pattern == "random" else "seq") + kind

    def describe(self) -> str:
        how = f"{self.op_label} bs={self.bs} qd={self.qd} s={self.batch_submit} c={self.batch_complete}"
        extra = [w for w, on in (("iopoll", self.iopoll), ("fixed", self.fixed), ("buffered", self.buffered)) if on]
        return " ".join([how, *extra])

    def engine_args(self, path: str, seed: int = 1) -> list[str]:
        """vblk-engine argv for this job on ``path`` (a char or block device)."""
        op = ("rand" if self.pattern == "random" else "") + ("read" if self.rwmix_read == 100 else "write")
        argv = ["--path", path, "--op", op, "--bench", "--bs", str(self.bs), "--qd", str(self.qd),
                "--length", str(self.length), "--seed", str(seed),
                "--batch-submit", str(self.batch_submit), "--batch-complete", str(self.batch_complete)]
        if 0 < self.rwmix_read < 100:
            argv += ["--rwmix-read", str(self.rwmix_read)]
        argv += ["--runtime", f"{self.runtime_s:g}"] if self.runtime_s is not None else ["--ios", str(self.ios)]
        for flag, on in (("--iopoll", self.iopoll), ("--fixed", self.fixed), ("--buffered", self.buffered)):
            if on:
                argv.append(flag)
        return argv

    def fio_args(self, path: str, name: str = "ref") -> list[str]:
        """Debian fio, io_uring engine, the same job on the block path (O_DIRECT unless buffered)."""
        if self.rwmix_read == 100:
            rw = "randread" if self.pattern == "random" else "read"
        elif self.rwmix_read == 0:
            rw = "randwrite" if self.pattern == "random" else "write"
        else:
            rw = "randrw" if self.pattern == "random" else "rw"
        argv = [f"--name={name}", f"--filename={path}", "--ioengine=io_uring", f"--rw={rw}",
                f"--bs={self.bs}", f"--iodepth={self.qd}", f"--size={self.length}",
                f"--direct={0 if self.buffered else 1}",
                f"--iodepth_batch_submit={self.batch_submit}",
                f"--iodepth_batch_complete_min={self.batch_complete}",
                f"--iodepth_batch_complete_max={self.batch_complete}",
                "--randrepeat=0", "--norandommap", "--group_reporting", "--output-format=json"]
        if 0 < self.rwmix_read < 100:
            argv.append(f"--rwmixread={self.rwmix_read}")
        if self.runtime_s is not None:
            argv += [f"--runtime={self.runtime_s:g}", "--time_based"]
        else:
            argv.append(f"--number_ios={self.ios}")
        if self.iopoll:
            argv.append("--hipri")
        if self.fixed:
            argv.append("--fixedbufs")
        return argv


@dataclass(frozen=True)
class Comparison:
    """One A/B measurement: ``passthru`` on /dev/vdXc0 against ``block`` on /dev/vdX."""

    name: str
    passthru: Job
    block: Job
    backend: str = "null"
    style: str = "fair"  # fair | seed
    note: str = ""

    @property
    def fair(self) -> bool:
        return self.passthru == replace(self.block, buffered=False) and not self.block.buffered

    def job(self, path: str) -> Job:
        return self.passthru if path == "passthru" else self.block

    def validate(self) -> "Comparison":
        if self.backend not in BACKENDS:
            raise UsageError(f"comparison {self.name!r}: backend: must be null or file, got {self.backend!r}")
        self.passthru.validate(f"comparison {self.name!r} passthru")
        self.block.validate(f"comparison {self.name!r} block")
        if self.passthru.buffered:
            raise UsageError(f"comparison {self.name!r}: passthru: buffered: the char device has no page cache")
        return self


def fair(name: str, job: Job, backend: str = "null", note: str = "") -> Comparison:
    return Comparison(name, job, job, backend, "fair", note)


@dataclass(frozen=True)
class BenchOptions:
    """Everything ``vblk-ci bench`` needs besides the artifacts."""

    comparisons: tuple[Comparison, ...] = ()
    pairs: int = 5
    icount: bool = False
    fio: bool = True
    fio_runs: int = 3
    kicks: bool = True
    keep_trace: bool = False
    disk_size: int = 64 << 20

    def validate(self) -> "BenchOptions":
        if not self.comparisons:
            raise UsageError("bench: no comparison to run")
        if not isinstance(self.pairs, int) or not 1 <= self.pairs <= 1000:
            raise UsageError(f"bench: --pairs must be 1..1000, got {self.pairs!r}")
        if not isinstance(self.fio_runs, int) or not 1 <= self.fio_runs <= 100:
            raise UsageError(f"bench: --fio-runs must be 1..100, got {self.fio_runs!r}")
        names = [c.name for c in self.comparisons]
        if len(set(names)) != len(names):
            raise UsageError(f"bench: comparison names repeat: {names}")
        for c in self.comparisons:
            c.validate()
            for job in (c.passthru, c.block):
                if job.length > self.disk_size:
                    raise UsageError(f"comparison {c.name!r}: length {job.length} exceeds the disk ({self.disk_size})")
        return self
