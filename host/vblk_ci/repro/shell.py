"""An interactive session on a booted appliance: the guest's serial console plus a QMP prompt.

The guest is booted with ``vblk.shell`` on its command line, so images/init starts a
busybox shell on the console instead of the agent. Keys go to the guest as typed
(the terminal is in raw mode, so Ctrl-C reaches the guest's shell). ``Ctrl-]``
switches to the QMP prompt::

    (qmp) query-status
    (qmp) device_del {"id": "d0"}
    (qmp) events            every QMP event seen since the last look
    (qmp) console           back to the guest console (also: an empty line)
    (qmp) exit              end the session (the VM is shut down)

The session also ends when QEMU exits (e.g. the guest shell exits: init powers off).
"""

from __future__ import annotations

import json
import os
import re
import select
import termios
import threading
import tty

from ..disks.flags import parse_disk_flag
from ..disks.spec import DiskSpec
from ..errors import QmpError, UsageError

ESCAPE = b"\x1d"  # Ctrl-]
SHELL_APPEND = "vblk.shell=1"
# What images/init prints before it starts the shell: the session is usable from here.
SHELL_READY = re.compile(r"vblk-ci: vblk\.shell given")
QMP_PROMPT = "(qmp) "
_EOL = re.compile(rb"\r\n|\r|\n")  # a raw terminal sends CR, a pipe LF
QMP_HELP = ("QMP prompt: '<command> [json arguments]', 'events', 'console' (or an empty line) to go back,"
            " 'exit' to end the session")


def parse_qmp_line(line: str) -> tuple[str, dict]:
    """``'device_del {"id": "d0"}'`` -> ``("device_del", {"id": "d0"})``; ValueError if malformed."""
    line = line.strip()
    cmd, _, rest = line.partition(" ")
    if not re.fullmatch(r"[A-Za-z][\w-]*", cmd):
        raise ValueError(f"not a QMP command name: {cmd!r}")
    rest = rest.strip()
    if not rest:
        return cmd, {}
    try:
        args = json.loads(rest)
    except ValueError as exc:
        raise ValueError(f"arguments are not JSON: {exc}") from None
    if not isinstance(args, dict):
        raise ValueError("arguments must be a JSON object")
    return cmd, args




def parse_disk(spec: str, index: int) -> DiskSpec:
    """``id=d0,backend=file,path=x.raw,size=64M,num-queues=2,read-only`` -> a validated DiskSpec
    (rules: disks/flags.py); serial defaults to ``vblk-<id>``. A file backend's image is
    created sparse when missing."""
    values = parse_disk_flag(spec, index)
    values.setdefault("serial", f"vblk-{values['id']}")
    disk = DiskSpec(**values)
    if disk.backend == "file" and disk.path is not None and not disk.path.exists():
        from ..disks.spec import create_sparse_file

        create_sparse_file(disk.path, disk.size_bytes)
    return disk.validate()


class ShellSession:
    """Joins a terminal (two file descriptors) to a running Machine's console and QMP."""

    def __init__(self, machine, stdin_fd: int = 0, stdout_fd: int = 1):
        self.machine = machine
        self.stdin_fd = stdin_fd
        self.stdout_fd = stdout_fd
        self.tty = os.isatty(stdin_fd)
        self._saved_tty = termios.tcgetattr(stdin_fd) if self.tty else None
        self._lock = threading.Lock()
        self._console_paused = threading.Event()
        self._done = threading.Event()
        self._shown = 0  # console text already written out
        self._events_seen = 0
        self._pending = b""  # typed after Ctrl-] in the same read: the QMP prompt's input

    # -- output --------------------------------------------------------------------------
    def _write(self, text: str) -> None:
        if self.tty and not self._console_paused.is_set():
            text = text.replace("\r\n", "\n").replace("\n", "\r\n")  # raw mode: no ONLCR
        data = text.encode("utf-8", "replace")
        with self._lock:
            while data:
                n = os.write(self.stdout_fd, data)
                data = data[n:]

    def _pump_console(self) -> None:
        console = self.machine.console
        while not self._done.is_set():
            if self._console_paused.is_set():
                self._done.wait(0.1)
                continue
            text = console.wait_more(self._shown, 0.2)
            if text and not self._console_paused.is_set():
                self._shown += len(text)
                with self._lock:
                    data = text.encode("utf-8", "replace")
                    while data:
                        data = data[os.write(self.stdout_fd, data):]
            if console.eof and not text:
                self._done.wait(0.2)

    # -- terminal modes ------------------------------------------------------------------
    def _raw(self) -> None:
        if self.tty:
            tty.setraw(self.stdin_fd)

    def _cooked(self) -> None:
        if self.tty and self._saved_tty is not None:
            termios.tcsetattr(self.stdin_fd, termios.TCSADRAIN, self._saved_tty)

    # -- QMP prompt ----------------------------------------------------------------------
    def qmp_command(self, line: str) -> str:
        """One prompt line -> the text to show. Never raises for a user's mistake."""
        words = line.strip()
        if words == "events":
            return self._new_events() or "(no new events)"
        if words in ("help", "?"):
            return QMP_HELP
        try:
            cmd, args = parse_qmp_line(words)
        except ValueError as exc:
            return f"error: {exc}"
        try:
            reply = self.machine.qmp(cmd, args)
        except QmpError as exc:
            return f"error: {exc}"
        out = json.dumps({"return": reply}, indent=2)
        events = self._new_events()
        return f"{out}\n{events}" if events else out

    def _new_events(self) -> str:
        events = self.machine.events()
        fresh = events[self._events_seen:]
        self._events_seen = len(events)
        return "\n".join(f"event: {json.dumps(e)}" for e in fresh)

    def _read_line(self) -> str | None:
        """A line from the terminal in cooked mode; None at end of input or when QEMU is gone."""
        buf, self._pending = self._pending, b""
        while not _EOL.search(buf):
            if not self.machine.is_running():
                return None
            ready, _, _ = select.select([self.stdin_fd], [], [], 0.2)
            if not ready:
                continue
            chunk = os.read(self.stdin_fd, 4096)
            if not chunk:
                return None if not buf else buf.decode(errors="replace")
            buf += chunk
        line, self._pending = _EOL.split(buf, 1)
        return line.decode(errors="replace")

    def _qmp_prompt(self, typed_ahead: bytes = b"") -> bool:
        """Run the QMP prompt until the user goes back (True) or ends the session (False)."""
        self._pending = typed_ahead
        self._console_paused.set()
        self._cooked()
        self._write(f"\n[vblk-ci] {QMP_HELP}\n")
        try:
            while True:
                self._write(QMP_PROMPT)
                line = self._read_line()
                if line is None:
                    return False
                if line.strip() in ("", "console", "c"):
                    self._write("[vblk-ci] back to the guest console (Ctrl-] for QMP)\n")
                    return True
                if line.strip() in ("exit", "quit-shell"):
                    return False
                self._write(self.qmp_command(line) + "\n")
        finally:
            self._raw()
            self._console_paused.clear()

    # -- main loop -----------------------------------------------------------------------
    def run(self) -> int | None:
        """Serve the terminal until the user ends it or QEMU exits; returns QEMU's exit code or None."""
        pump = threading.Thread(target=self._pump_console, name="shell-console", daemon=True)
        self._write("[vblk-ci] guest serial console; Ctrl-] for the QMP prompt\n")
        self._raw()
        pump.start()
        try:
            while self.machine.is_running():
                ready, _, _ = select.select([self.stdin_fd], [], [], 0.2)
                if not ready:
                    continue
                data = os.read(self.stdin_fd, 4096)
                if not data:
                    break  # end of input (a pipe): leave the VM to the caller's shutdown
                before, esc, after = data.partition(ESCAPE)
                if before:
                    self.machine.console.send(before.decode("utf-8", "replace"))
                if esc:
                    if not self._qmp_prompt(after):
                        break
                    if self._pending:  # typed after the line that went back to the console
                        self.machine.console.send(self._pending.decode("utf-8", "replace"))
                        self._pending = b""
        finally:
            self._done.set()
            pump.join(2)
            self._cooked()
        code = self.machine.exitcode
        if code is not None:
            self._write(f"\n[vblk-ci] QEMU exited with code {code}\n")
        return code
