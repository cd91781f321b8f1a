"""Turn console text into findings, using the table in ``patterns``.

``classify(text)`` walks the lines (printk timestamps stripped). A line matching a
row of the table starts a report; the excerpt runs to the next ``---[ end trace``
line (or ``---[ end Kernel panic``, or KASAN's closing ``=====`` rule), at most the
row's ``max_lines`` (60; KASAN/KFENCE 150), and lines inside it start no further
report. A ``Kernel panic`` after an earlier finding is that finding's consequence
(``oops=panic``, ``panic_on_warn``) and is not reported again. Findings with the
same normalised title are kept once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import patterns as P


@dataclass(frozen=True)
class Finding:
    kind: str
    title: str
    excerpt: str


def strip_timestamp(line: str) -> str:
    return P.TIMESTAMP.sub("", line.rstrip("\r\n").rstrip("\r"), count=1)


def console_lines(text: str) -> list[str]:
    return [strip_timestamp(line).rstrip() for line in text.replace("\r\n", "\n").split("\n")]


def match_line(line: str) -> tuple[P.Pattern, re.Match[str]] | None:
    """The first table row whose regex occurs in one (timestamp-stripped) line."""
    for pattern in P.PATTERNS:
        m = pattern.regex.search(line)
        if m:
            return pattern, m
    return None


def classify(text: str) -> list[Finding]:
    lines = console_lines(text)
    findings: list[Finding] = []
    seen: set[str] = set()
    i = 0
    while i < len(lines):
        hit = match_line(lines[i])
        if hit is None:
            i += 1
            continue
        pattern, m = hit
        if pattern.kind == "panic" and findings:
            # The panic that oops=panic / panic_on_warn / kasan.fault=panic makes of an
            # earlier report: the consequence, not a second bug.
            i += 1
            continue
        start = i - 1 if i > 0 and P.CUT_HERE.search(lines[i - 1]) else i
        end = _excerpt_end(lines, i, pattern.max_lines)
        report = lines[i:end]
        title = _title(pattern, m, report)
        if title not in seen:
            seen.add(title)
            findings.append(Finding(pattern.kind, title, "\n".join(lines[start:end]).strip("\n")))
        i = end
    return findings


def _excerpt_end(lines: list[str], start: int, max_lines: int) -> int:
    """Index one past the excerpt of the report starting at ``start``."""
    limit = min(len(lines), start + max_lines)
    for j in range(start + 1, limit):
        if P.END_MARKERS.search(lines[j]):
            return j + 1
    return limit


def function_name(symbol: str) -> str:
    """``virtblk_done+0x1a/0x80 [virtio_blk]`` -> ``virtblk_done``; compiler suffixes dropped."""
    name = symbol.split("+", 1)[0]
    name = re.sub(r"\.(isra|constprop|part|cold|llvm|lto_priv)(\.\d+)*", "", name)
    if re.fullmatch(r"0x[0-9a-f]+|[0-9a-f]{8,}", name):
        return "0x..."
    return name


def normalise(text: str) -> str:
    """Drop what differs between two sightings of one bug: addresses, numbers, pids."""
    text = re.sub(r"\b0x[0-9a-fA-F]+\b", "ADDR", text)
    text = re.sub(r"\b[0-9a-fA-F]{8,}\b", "ADDR", text)
    text = re.sub(r"(\S+)\+ADDR/ADDR", lambda mm: function_name(mm.group(1)), text)
    text = re.sub(r"\b\d+\b", "NUM", text)
    return re.sub(r"\s+", " ", text).strip()


def _first_function(report: list[str], pattern: re.Pattern) -> str:
    """The function named by the first line matching *pattern* (group 1), or "?"."""
    for line in report:
        m = pattern.search(line)
        if m:
            return function_name(m.group(1))
    return "?"


def _frame(report: list[str]) -> str:
    """The first interesting call-trace frame.

    Reliable frames first. A kernel without a frame-pointer/ORC unwinder marks every
    frame ``? `` (a guess from the stack); then the guesses count too, except
    ``f+0x60/0x60`` ones (an address just past ``f``: really the next function).
    """
    for guesses in (False, True):
        for line in report[1:]:
            m = P.FRAME.match(line)
            if m is None or (not guesses and line.lstrip().startswith("? ")):
                continue
            offset, size = m.group(2), m.group(3)
            if guesses and offset == size:
                continue
            name = function_name(m.group(1))
            if name not in P.BORING_FRAMES:
                return name
    return _first_function(report, P.RIP)


def _access(report: list[str]) -> str:
    for line in report[1:4]:
        m = re.search(r"\b(Read|Write) of size \d+", line)
        if m:
            return m.group(1) + " "
    return ""


def _title(pattern: P.Pattern, m: re.Match[str], report: list[str]) -> str:
    groups = {str(k): v or "" for k, v in enumerate(m.groups(), start=1)}
    # Symbols in groups become bare function names; free text is normalised.
    for key, value in groups.items():
        groups[key] = function_name(value) if re.search(r"\+0x[0-9a-f]+/0x[0-9a-f]+", value) else value
    if pattern.kind in ("panic", "bug") and "1" in groups:
        groups["1"] = normalise(groups["1"])
    fields = {"rip": "", "at": "", "frame": "", "access": "", "where": ""}
    if "{rip}" in pattern.title:
        fields["rip"] = _first_function(report, P.RIP)
    if "{at}" in pattern.title:
        fields["at"] = _first_function(report, P.LOCKDEP_AT)
    if "{frame}" in pattern.title:
        fields["frame"] = _frame(report)
    if "{where}" in pattern.title:
        rip = _first_function(report, P.RIP)
        fields["where"] = rip if rip != "?" else _frame(report)
    if "{access}" in pattern.title:
        fields["access"] = _access(report)
    title = pattern.title
    for key, value in {**groups, **fields}.items():
        title = title.replace("{" + key + "}", value)
    return re.sub(r"\s+", " ", title).strip()
