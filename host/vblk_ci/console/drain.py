"""The live serial console: a background drain with a failure watcher.

QEMU writes the complete log itself (``logfile=`` on the chardev); this side only
reads the FIFO (or socket) so QEMU never blocks, keeps the text in memory for waits, and
checks each finished line against the pattern table. A hit sets ``crashed``;
``findings()`` classifies the text once the report is complete.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Callable

import pexpect
import pexpect.fdpexpect

from .classify import Finding, classify, match_line, strip_timestamp


class Console:
    """``source``: a connected socket, or the read end of QEMU's ``.out`` FIFO; with a
    FIFO, ``write_fd`` is the ``.in`` FIFO that ``send()`` types into."""

    def __init__(self, source: socket.socket | int, on_line: Callable[[str], None] | None = None,
                 write_fd: int | None = None):
        # fdspawn owns the descriptor from here on (it closes it in close()).
        fd = source.detach() if isinstance(source, socket.socket) else source
        self._spawn = pexpect.fdpexpect.fdspawn(fd, encoding="utf-8", codec_errors="replace", timeout=None)
        self._write_fd = write_fd
        self._on_line = on_line
        self._cond = threading.Condition()
        self._chunks: list[str] = []
        self._size = 0
        self._partial = ""
        self._lines: list[tuple[float, str]] = []
        self._eof = False
        self._stop = False
        self.crashed = threading.Event()
        self.first_hit: str | None = None
        self._thread = threading.Thread(target=self._drain, name="console-drain", daemon=True)
        self._thread.start()

    # -- drain -------------------------------------------------------------------------
    def _drain(self) -> None:
        while not self._stop:
            try:
                data = self._spawn.read_nonblocking(size=65536, timeout=0.2)
            except pexpect.TIMEOUT:
                continue
            except (pexpect.EOF, OSError, ValueError):
                break
            if data:
                self._feed(data)
        with self._cond:
            if self._partial:
                self._finish_line(self._partial)
                self._partial = ""
            self._eof = True
            self._cond.notify_all()

    def _feed(self, data: str) -> None:
        with self._cond:
            self._chunks.append(data)
            self._size += len(data)
            text = self._partial + data
            *complete, self._partial = text.split("\n")
            for line in complete:
                self._finish_line(line)
            self._cond.notify_all()

    def _finish_line(self, line: str) -> None:
        line = line.rstrip("\r")
        self._lines.append((time.monotonic(), line))
        if not self.crashed.is_set() and match_line(strip_timestamp(line)):
            self.first_hit = line
            self.crashed.set()
        if self._on_line is not None:
            self._on_line(line)

    # -- queries -----------------------------------------------------------------------
    def text(self) -> str:
        with self._cond:
            if len(self._chunks) > 1:
                self._chunks[:] = ["".join(self._chunks)]
            return self._chunks[0] if self._chunks else ""

    def mark(self) -> int:
        """A position in the text; ``text_since(mark)`` and ``findings(mark)`` start there."""
        with self._cond:
            return self._size

    def text_since(self, mark: int = 0) -> str:
        return self.text()[mark:]

    def findings(self, mark: int = 0) -> list[Finding]:
        return classify(self.text_since(mark))

    def tail(self, lines: int = 40) -> str:
        with self._cond:
            return "\n".join(line for _, line in self._lines[-lines:])

    @property
    def eof(self) -> bool:
        return self._eof

    def line_time(self, regex, since: float = 0.0) -> float | None:
        """Monotonic time at which a finished line matching ``regex`` was read."""
        with self._cond:
            for at, line in self._lines:
                if at >= since and regex.search(line):
                    return at
        return None

    def wait_for(self, regex, timeout: float, mark: int = 0, abort: Callable[[], bool] | None = None):
        """Wait until ``regex`` (compiled) occurs in the text after ``mark``.

        Returns the match; ``None`` on timeout, on end of stream, or when ``abort()``
        turns true (checked every 0.2 s: e.g. QEMU has exited).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = regex.search(self.text_since_locked(mark))
                if m:
                    return m
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof or (abort is not None and abort()):
                    return None
                self._cond.wait(min(remaining, 0.2))

    def wait_more(self, mark: int, timeout: float) -> str:
        """The text after ``mark`` once there is some (or ``""`` after ``timeout`` / at the end)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._size <= mark and not self._eof:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return self.text_since_locked(mark)

    def send(self, data: str) -> None:
        """Type ``data`` on the guest's serial console (interactive shells)."""
        if self._write_fd is None:
            self._spawn.send(data)
            return
        raw = data.encode("utf-8")
        while raw:
            raw = raw[os.write(self._write_fd, raw):]

    def text_since_locked(self, mark: int) -> str:
        if len(self._chunks) > 1:
            self._chunks[:] = ["".join(self._chunks)]
        return (self._chunks[0] if self._chunks else "")[mark:]

    # -- lifetime ----------------------------------------------------------------------
    def close(self, timeout: float = 2.0) -> None:
        """Stop draining and close the socket (idempotent). The text read so far stays."""
        if self._stop:
            return
        self._stop = True
        self._thread.join(timeout)
        try:
            self._spawn.close()
        except OSError:
            pass
        if self._write_fd is not None:
            os.close(self._write_fd)
            self._write_fd = None
