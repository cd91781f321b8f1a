"""Shrink a failing program to a minimal step sequence (delta debugging over steps).

``shrink(steps, reproduces, focus, max_runs)``: ``reproduces(candidate)`` runs a
candidate step list and says whether the same finding (same signature) came back.
First the step that failed alone, then with the steps of its chain before it
(links matter), then classic ddmin: remove chunks of halving size while the
finding still comes back. Every call of ``reproduces`` is a guest run, so the
number of runs is bounded.
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

T = TypeVar("T")


def shrink(steps: Sequence[T], reproduces: Callable[[list[T]], bool], focus: int | None = None,
           max_runs: int = 40, chain_start: int | None = None) -> tuple[list[T], int]:
    """The smallest step list found that still reproduces, and the number of runs used."""
    runs = 0
    current = list(steps)

    def attempt(candidate: list[T]) -> bool:
        nonlocal runs
        if runs >= max_runs or not candidate or len(candidate) >= len(current):
            return False
        runs += 1
        return reproduces(candidate)

    if focus is not None and 0 <= focus < len(current):
        tries = [[current[focus]]]
        if chain_start is not None and chain_start < focus:
            tries.append(current[chain_start:focus + 1])
        tries.append(current[: focus + 1])
        for cand in tries:
            if attempt(cand):
                current = cand
                break
    n = 2
    while len(current) >= 2 and runs < max_runs:
        chunk = max(len(current) // n, 1)
        removed = False
        for start in range(0, len(current), chunk):
            cand = current[:start] + current[start + chunk:]
            if attempt(cand):
                current = cand
                n = max(n - 1, 2)
                removed = True
                break
        if not removed:
            if chunk == 1:
                break
            n = min(len(current), n * 2)
    return current, runs
