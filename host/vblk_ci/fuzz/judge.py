"""Judge one program's results: every cqe->res against the errno table, every read
against the disk model; update the model with what the commands did.

A finding is an errno outside the table, a read that does not hold what the model
says, a GET_ID that is not the disk's serial, a command that never completed (the
executor's own timeout), or (added by the runner) a console report or a hung guest.
Its ``signature`` names the class of the bug, so one defect hit by many programs is
one finding.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

from .model import GARBAGE, POISON, ZERO, DiskModel
from .program import T_GET_ID, T_IN, WRITE_TYPES, Program, Step
from .table import ECANCELED, ID_BYTES, Caller, DiskConfig, Expect, data_bytes, effects, errno_name, expect


PERMISSION_ERRNOS = (-1, -9, -13)  # -EPERM, -EBADF, -EACCES


@dataclass
class Finding:
    kind: str  # errno | data | hang | splat | executor
    signature: str
    detail: str
    step: int | None = None  # index in the program
    expected: str = ""
    got: str = ""


@dataclass
class Verdict:
    """What one program run came to."""

    outcomes: list[tuple[str, str]] = field(default_factory=list)  # (op, outcome) per step that completed
    rules: Counter = field(default_factory=Counter)  # table rows that decided the expectation
    findings: list[Finding] = field(default_factory=list)
    completed: int = 0

    def signatures(self) -> set[str]:
        return {f.signature for f in self.findings}


def _step_kind(step: Step) -> str:
    if step.iov:
        return "vec"
    return step.buf


def _mismatch_class(got: int) -> str:
    return {POISON: "no-data", GARBAGE: "garbage", ZERO: "zeroes"}.get(got, "other-seed")


def judge(program: Program, results: list[dict], disk: DiskConfig, model: DiskModel,
          caller: Caller | None = None, device_errors: frozenset[int] = frozenset(),
          unplugged: bool = False, resized: int | None = None, resized_before: bool = False) -> Verdict:
    """``results``: the executor's JSON lines (``{"i", "res", ...}``), in step order. ``caller``:
    by default who the program runs as (``Caller.of``). A finding of a 32-bit program has the
    abi at the end of its signature: a bug only 32-bit callers meet is its own finding.
    ``device_errors``: step types the host made the device fail (a blkdebug fault): a command of
    one the kernel lets through may come back with a device status; what it wrote is unknown.
    ``unplugged``: the disk was hot-unplugged during the program: any failure is accepted (which
    commands ran before it is not known), a command that failed may have written part of its
    data, and a finding's signature ends in ``|unplug`` (a read that succeeded must still hold
    the right data; a command must still complete). ``resized``: the disk grew or shrank to that
    many sectors (a resize fault): ``resized_before``, before the program and seen by the guest,
    so every command is judged against it; else during the program, so against either capacity,
    and past a shrunk end the device may fail a command (QEMU checks the range against the cut
    file before the guest has seen the new size).
    A finding's signature ends in ``|resize``."""
    caller = caller or Caller.of(program)
    v = Verdict()
    by_index = {r.get("i"): r for r in results if isinstance(r, dict)}
    chain_of = {i: n for n, chain in enumerate(program.chains()) for i in chain}
    broken: set[int] = set()  # chains in which a command failed (the rest is cancelled)
    for i, step in enumerate(program.steps):
        r = by_index.get(i)
        if r is None:
            break  # the executor stopped (hang or crash): the runner reports it
        if r.get("hang"):
            v.findings.append(Finding(
                "hang", f"hang|{step.name}|sqe{program.sqe}{'-iopoll' if program.iopoll else ''}"
                        f"{'-sqpoll' if program.sqpoll else ''}",
                f"step {i} ({step.text()}) never completed", i))
            break
        res = int(r["res"])
        v.completed += 1
        exp = expect(step, program, disk, caller)
        if resized is not None:
            other = expect(step, program, replace(disk, size_bytes=resized * 512), caller)
            change = "the disk had grown" if resized > disk.capacity else "the disk had shrunk"
            if res in other.accepted and res not in exp.accepted:
                # the command saw the resized disk (the rule counts how often that happened)
                exp = Expect(other.accepted, other.rules + (change,), other.notes)
            elif resized_before:
                exp = other
            elif res > 0 and resized < disk.capacity and other.accepted - exp.accepted:
                exp = Expect(exp.accepted | {res}, exp.rules + (change,), exp.notes)
        caller_notes = ";".join(exp.notes)
        late = _issued_late(program, i, chain_of)
        if late:
            exp = Expect(exp.accepted, exp.rules, exp.notes + (late,))
        if chain_of[i] in broken:
            exp = Expect(frozenset({-ECANCELED}), ("linked to a failed command",))
        if unplugged and res != 0 and res not in exp.accepted:
            exp = Expect(exp.accepted | {res}, exp.rules + ("the disk was unplugged",), exp.notes)
        if res > 0 and step.type in device_errors and 0 in exp.accepted:
            exp = Expect(exp.accepted | {res}, exp.rules + ("the device fails it (blkdebug)",), exp.notes)
        v.rules.update(exp.rules)
        v.outcomes.append((step.name, errno_name(res)))
        if res not in exp.accepted:
            notes = ";".join(exp.notes)
            # A permission refusal where the note says none is due (root on an fd whose mode
            # would refuse others) is one bug whatever else the command did: one signature per
            # direction. Anything else is classed by the op and the table rows.
            # A command issued after its SQ slot was overwritten that comes back -EINVAL read
            # the overwritten slot (0xa5 bytes are no valid command): one signature for that too.
            if caller_notes and res in PERMISSION_ERRNOS:
                what = f"{'write-type' if step.type in WRITE_TYPES else 'read-type'}|{caller_notes}"
            elif late and res == -22:
                what = f"issued-late|{late}"
            else:
                what = f"{step.name}|{'+'.join(exp.rules)}"
            v.findings.append(Finding(
                "errno", f"errno|{what}|{errno_name(res)}",
                f"step {i}: {step.text()}: cqe->res {errno_name(res)} ({res}), expected {exp.describe()} "
                f"({', '.join(exp.rules)}{'; ' + notes if notes else ''})",
                i, exp.describe(), errno_name(res)))
        if res < 0:
            broken.add(chain_of[i])
        if res == 0:
            _check_data(v, i, step, r, disk, model)
        for kind, sector, count, seed in effects(step, disk):
            if res == 0:
                model.apply(kind, sector, count, seed)
            elif res > 0 or unplugged:  # the device failed it, or went away: part of it may have happened
                model.forget(sector, count)
    for f in v.findings:
        f.signature = abi_signature(f.signature, program) + ("|unplug" if unplugged else "") + \
            ("|resize" if resized is not None else "")
    return v


def abi_signature(signature: str, program: Program) -> str:
    """``signature`` of a finding of ``program``: ``|i386`` appended for a 32-bit caller."""
    return signature if program.abi == "x86_64" else f"{signature}|{program.abi}"


def _issued_late(program: Program, i: int, chain_of: dict[int, int]) -> str:
    """With ``scribble`` the executor overwrites the SQ slots right after submit: a command
    issued after that (linked behind another, or IOSQE_ASYNC) must not read them again."""
    if not program.scribble:
        return ""
    if i > 0 and chain_of[i - 1] == chain_of[i]:
        return "SQ slot reused after submit (linked)"
    if program.steps[i].async_:
        return "SQ slot reused after submit (IOSQE_ASYNC)"
    return ""


def _clip(runs: list[list[int]], sectors: int | None) -> list[list[int]]:
    """The runs over the first ``sectors`` sectors: with data_len naming fewer iovecs than
    the executor laid out, the rest of the buffer was never part of the command."""
    if sectors is None:
        return runs
    out, left = [], sectors
    for count, tag in runs:
        if left <= 0:
            break
        out.append([min(count, left), tag])
        left -= count
    return out


def _check_data(v: Verdict, i: int, step: Step, r: dict, disk: DiskConfig, model: DiskModel) -> None:
    if step.type == T_IN and "sectors" in r:
        n = data_bytes(step)
        runs = _clip(r["sectors"], n // 512 if n is not None else None)
        if n is not None and sum(c for c, _ in runs) != n // 512:
            v.findings.append(Finding("data", f"data|{step.name}|length", f"step {i}: {step.text()}: read "
                                      f"{sum(c for c, _ in runs)} sectors, expected {n // 512}", i))
            return
        bad = model.check_read(step.sector, runs)
        if bad:
            v.findings.append(Finding(
                "data", f"data|{step.name}|{_step_kind(step)}|{_mismatch_class(bad[0].got)}",
                f"step {i}: {step.text()}: " + "; ".join(m.describe() for m in bad), i,
                "model", _mismatch_class(bad[0].got)))
    elif step.type == T_GET_ID and "id" in r:
        want = disk.serial[:ID_BYTES]
        if r["id"] != want:
            v.findings.append(Finding("data", "data|get-id|serial", f"step {i}: GET_ID returned {r['id']!r}, "
                                      f"the disk's serial is {want!r}", i, want, r["id"]))
