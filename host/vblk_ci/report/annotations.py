"""GitHub Actions annotations for a run: ``::error file=F,line=N,title=T::message`` lines.

- A failed or errored check points at its ``ctx.check`` call in the scenario file
  (``CheckResult.source``), so the pull request shows the check beside its code.
- A console finding (oops, WARN, KASAN, ...) points at the first decoded frame in the
  driver's source (``drivers/block/virtio_blk.c`` by default), else at the first decoded
  frame at all, else carries no file: ``console/decode.py`` resolves frames with
  ``scripts/faddr2line`` against the run's ``vmlinux``.

The CLI prints these to stdout when ``GITHUB_ACTIONS`` is set (the runner turns them into
annotations) and writes them to ``<run>/annotations.txt``; the Markdown summary gets the
decoded frames.
"""

from __future__ import annotations

from ..build.bases import DRIVER_SOURCE
from ..console.decode import Frame
from ..result import RunResult



def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def error_line(message: str, title: str, file: str | None = None, line: int | None = None) -> str:
    props = []
    if file:
        props.append(f"file={_escape_property(file)}")
        if line:
            props.append(f"line={line}")
    props.append(f"title={_escape_property(title)}")
    return f"::error {','.join(props)}::{_escape_data(message)}"


def pick_frame(decoded: list[Frame], prefer: str = DRIVER_SOURCE) -> Frame | None:
    located = [f for f in decoded if f.file]
    for f in located:
        if f.file.endswith(prefer):
            return f
    return located[0] if located else None


def annotations(result: RunResult, decoded: dict[str, list[Frame]] | None = None) -> list[str]:
    """One line per failed check and per console finding; ``decoded`` maps a finding title to
    its decoded frames."""
    decoded = decoded or {}
    out = []
    for check in result.checks():
        if check.status not in ("fail", "error"):
            continue
        file, line = None, None
        if check.source and ":" in check.source:
            path, _, num = check.source.rpartition(":")
            file, line = path, int(num) if num.isdigit() else None
        first = (check.detail or check.status).splitlines()[0]
        out.append(error_line(first, f"{check.full_name} ({check.status})", file, line))
    for finding in result.findings:
        frame = pick_frame(decoded.get(finding.title, []))
        body = finding.excerpt.strip() or finding.title
        if frame is not None:
            body = f"{frame.symbol} at {frame.file}:{frame.line}\n{body}"
        out.append(error_line(body, f"console: {finding.title}", frame.file if frame else None,
                              frame.line if frame else None))
    return out
