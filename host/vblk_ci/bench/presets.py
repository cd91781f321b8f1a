"""Named sets of comparisons.

``seed`` reproduces the two configurations of the v1 cover letter's table:
QD1 (``fio`` at iodepth 1) and ``t/io_uring-vblk -b4096 -d8 -c4 -s4 -p0 -F1 -B0 -O0``
(random, depth 8, submit and complete batch 4, no polling, no fixed buffers), each

- as the seed measured it: the passthrough path sent writes (its tool only issues
  ``VIRTIO_BLK_T_OUT``) and the block path read through the page cache (``-O0``); and
- fairly: the same random O_DIRECT read on both paths,

on ``null-co`` and on a raw file opened with ``aio=io_uring``.
"""

from __future__ import annotations

from dataclasses import replace

from ..errors import UsageError
from .job import Comparison, Job, fair

SEED_CONFIGS = {
    "qd1": Job(qd=1, batch_submit=1, batch_complete=1),
    "qd8b4": Job(qd=8, batch_submit=4, batch_complete=4),
}


def seed_preset(runtime_s: float = 2.0) -> tuple[Comparison, ...]:
    out: list[Comparison] = []
    for backend in ("null", "file"):
        for cfg, base in SEED_CONFIGS.items():
            job = replace(base, runtime_s=runtime_s)
            out.append(Comparison(
                f"{cfg}-seed-{backend}", replace(job, rwmix_read=0), replace(job, buffered=True), backend, "seed",
                "as the seed measured: passthrough random writes vs buffered random reads"))
            out.append(fair(f"{cfg}-fair-{backend}", job, backend, "same random O_DIRECT read on both paths"))
    return tuple(out)


def quick_preset(runtime_s: float = 1.0) -> tuple[Comparison, ...]:
    """One fair comparison per seed configuration on null-co: the short smoke of the instrument."""
    return tuple(fair(f"{cfg}-fair-null", replace(job, runtime_s=runtime_s), "null")
                 for cfg, job in SEED_CONFIGS.items())


PRESETS = {"seed": seed_preset, "quick": quick_preset}


def preset(name: str, runtime_s: float | None = None) -> tuple[Comparison, ...]:
    try:
        make = PRESETS[name]
    except KeyError:
        raise UsageError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None
    return make() if runtime_s is None else make(runtime_s)
