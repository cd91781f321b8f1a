"""The VM object: owns the QEMU process, its QMP monitor, console and agent channel.

Use it as a context manager::

    with Machine(spec, run_dir, timeouts) as vm:
        vm.wait_boot(); vm.wait_agent()
        plugged = vm.hotplug(disk, slot=0)
        vm.unplug(disk.id)

QEMU connects to two sockets this object listens on before launch (QMP, agent),
and opens the console FIFOs this object made, so there is no start-up race. The QMP client is asyncio-based; it
runs on an event loop in a background thread and every call goes through
``qmp()`` with a timeout. Every command, reply and event is appended to
``qmp.jsonl`` in the run dir; QEMU's own stdout/stderr go to ``qemu.log``; the
console log is written by QEMU (``console.log``); agent traffic to ``agent.log``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qemu.qmp import ExecuteError, QMPClient

from ..agent.client import AgentClient
from ..console.drain import Console
from ..disks.spec import DiskSpec
from ..errors import AgentError, BootError, LaunchFailure, MachineTimeout, QmpError, UnplugTimeout
from ..events import DiskPlugged
from . import argv as A
from .qemuinfo import probe_caps
from .vcpus import describe as describe_vcpus
from .vcpus import parse_registers

ENV_TIMEOUT_SCALE = "VBLK_CI_TIMEOUT_SCALE"
INIT_MARKER = re.compile(r"Run /\S* as init process")


@dataclass(frozen=True)
class Timeouts:
    """Every wait is a base figure (tuned for TCG on 2 slow cores) times one ``scale``."""

    scale: float = 1.0
    launch: float = 30.0  # process start -> QEMU connected to all sockets
    boot: float = 120.0  # launch -> kernel runs init
    agent: float = 120.0  # launch -> agent answers a ping
    qmp: float = 20.0  # one QMP command
    visible: float = 30.0  # device_add -> guest sees the disk
    unplug: float = 30.0  # device_del -> DEVICE_DELETED
    poweroff: float = 30.0  # agent poweroff -> QEMU exited
    quit: float = 15.0  # QMP quit -> QEMU exited

    def __call__(self, base: float) -> float:
        return base * self.scale

    @classmethod
    def for_accel(cls, accel: str) -> "Timeouts":
        scale = 1.0 if accel == "tcg" else 0.5
        env = os.environ.get(ENV_TIMEOUT_SCALE)
        if env:
            scale *= float(env)
        return cls(scale=scale)


def event_match(event: Any, match: Any) -> bool:
    """True if every key of ``match`` is in ``event`` with an equal (or matching) value."""
    if isinstance(match, dict):
        if not isinstance(event, dict):
            return False
        return all(k in event and event_match(event[k], v) for k, v in match.items())
    return event == match


class Machine:
    def __init__(
        self,
        spec: A.MachineSpec,
        run_dir: Path,
        timeouts: Timeouts | None = None,
        caps: A.QemuCaps | None = None,
    ):
        self.spec = spec
        self.run_dir = Path(run_dir)
        self.timeouts = timeouts or Timeouts.for_accel(spec.accel)
        self.caps = caps
        self.qemu_log = self.run_dir / "qemu.log"
        self.qmp_log = self.run_dir / "qmp.jsonl"
        self.agent_log = self.run_dir / "agent.log"
        self.argv: list[str] = []
        self.paths: A.MachinePaths | None = None
        self.console: Console | None = None
        self.agent: AgentClient | None = None
        self._proc: subprocess.Popen | None = None
        self._sock_dir: Path | None = None
        self._listeners: dict[str, socket.socket] = {}
        self._console_hold: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._qmp: QMPClient | None = None
        self._record_lock = threading.Lock()
        self._qmp_file = None
        self._events_cond = threading.Condition()
        self._pending_events: list[dict] = []
        self._all_events: list[dict] = []
        self._plugged: dict[str, DiskSpec] = {}
        self._slots: dict[str, int] = {}  # disk id -> root port slot
        self._launched_at = 0.0
        self._shut_down = False
        self._agent_ready = False

    # -- context manager ---------------------------------------------------------------
    def __enter__(self) -> "Machine":
        self.launch()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.shutdown()

    # -- state -------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def exitcode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def launched_at(self) -> float:
        return self._launched_at

    @property
    def panicked(self) -> bool:
        with self._events_cond:
            return any(e.get("event") == "GUEST_PANICKED" for e in self._all_events)

    def qemu_output(self) -> str:
        try:
            return self.qemu_log.read_text(errors="replace")
        except OSError:
            return ""

    # -- launch ------------------------------------------------------------------------
    def launch(self) -> None:
        if self._proc is not None:
            raise RuntimeError("Machine.launch() called twice")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.caps = self.caps or probe_caps(self.spec.qemu)
        self._sock_dir = Path(tempfile.mkdtemp(prefix="vblk-ci-"))
        self.paths = A.MachinePaths.make(self._sock_dir, self.run_dir)
        self.argv = A.build_argv(self.spec, self.paths, self.caps)
        (self.run_dir / "qemu.argv").write_text(shlex.join(self.argv) + "\n", encoding="utf-8")
        self._qmp_file = open(self.qmp_log, "a", encoding="utf-8")
        try:
            self.console = self._open_console(self.paths.console_pipe)
            self._listen("agent", self.paths.agent_sock)
            self._start_loop()
            self._run(self._qmp_start_server(str(self.paths.qmp_sock)), self.timeouts(self.timeouts.launch))
            with open(self.qemu_log, "wb") as out:
                try:
                    self._proc = subprocess.Popen(
                        self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                        start_new_session=True,  # Ctrl-C reaches us, not QEMU: we shut it down in order
                    )
                except OSError as exc:
                    raise LaunchFailure(f"cannot execute {self.argv[0]}: {exc}", self.argv, None, "") from exc
            self._launched_at = time.monotonic()
            self._connect_all()
        except BaseException:
            self.shutdown()
            raise

    def _open_console(self, base: Path) -> Console:
        """The FIFO pair QEMU's serial chardev opens (``pipe``): we read ``.out`` and
        type into ``.in``. Until QEMU has opened ``.out`` (it has by the time it
        connects to QMP), a writer of our own keeps the reader from seeing end-of-file."""
        out, into = base.with_name(base.name + ".out"), base.with_name(base.name + ".in")
        os.mkfifo(out)
        os.mkfifo(into)
        read_fd = os.open(out, os.O_RDONLY | os.O_NONBLOCK)
        self._console_hold = os.open(out, os.O_WRONLY | os.O_NONBLOCK)
        return Console(read_fd, write_fd=os.open(into, os.O_RDWR))

    def _release_console_hold(self) -> None:
        if self._console_hold is not None:
            os.close(self._console_hold)
            self._console_hold = None

    def _listen(self, name: str, path: Path) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        sock.listen(1)
        self._listeners[name] = sock

    def _accept(self, name: str, deadline: float) -> socket.socket:
        listener = self._listeners[name]
        listener.settimeout(0.1)
        while True:
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                self._launch_check(deadline, f"connect to the {name} socket")
                continue
            listener.close()
            del self._listeners[name]
            return conn

    def _launch_check(self, deadline: float, what: str) -> None:
        if not self.is_running():
            raise self._launch_failure(f"QEMU exited before it could {what}")
        if time.monotonic() > deadline:
            raise self._launch_failure(f"QEMU did not {what} within {deadline - self._launched_at:.0f}s", kill=True)

    def _launch_failure(self, message: str, kill: bool = False) -> LaunchFailure:
        """The exception for a failed start, with QEMU's full output (after it exited)."""
        if kill and self.is_running():
            assert self._proc is not None
            self._proc.kill()
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        return LaunchFailure(message, self.argv, self.exitcode, self.qemu_output())

    def _connect_all(self) -> None:
        deadline = self._launched_at + self.timeouts(self.timeouts.launch)
        # QEMU opens its chardevs in command-line order: console, QMP, agent.
        fut = asyncio.run_coroutine_threadsafe(self._qmp_accept(), self._loop)
        while not fut.done():
            try:
                self._launch_check(deadline, "connect to the QMP socket")
            except LaunchFailure:
                fut.cancel()
                raise
            time.sleep(0.05)
        try:
            fut.result()
        except Exception as exc:
            self._wait_exit(2.0)
            if not self.is_running():
                raise self._launch_failure("QEMU exited during start-up") from exc
            raise self._launch_failure(f"QMP handshake failed: {exc}") from exc
        self._release_console_hold()  # QEMU holds the console FIFO now: its exit is our EOF
        self.agent = AgentClient(self._accept("agent", deadline), log=self.agent_log)

    # -- QMP ---------------------------------------------------------------------------
    def _start_loop(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="qmp-loop", daemon=True)
        self._loop_thread.start()

    def _run(self, coro, timeout: float):
        assert self._loop is not None
        fut = asyncio.run_coroutine_threadsafe(asyncio.wait_for(coro, timeout), self._loop)
        return fut.result(timeout + 5)

    async def _qmp_start_server(self, path: str) -> None:
        self._qmp = QMPClient("vblk-ci")
        await self._qmp.start_server(path)

    async def _qmp_accept(self) -> None:
        assert self._qmp is not None
        await self._qmp.accept()
        greeting = self._qmp.greeting
        self._record({"greeting": {"version": greeting.QMP.version if greeting else None}})
        asyncio.get_running_loop().create_task(self._pump_events())

    async def _pump_events(self) -> None:
        assert self._qmp is not None
        async for msg in self._qmp.events:
            event = json.loads(bytes(msg))
            self._record({"event": event})
            with self._events_cond:
                self._pending_events.append(event)
                self._all_events.append(event)
                self._events_cond.notify_all()

    def _record(self, entry: dict) -> None:
        with self._record_lock:
            if self._qmp_file is None:
                return
            stamp = {"t": round(time.monotonic() - (self._launched_at or time.monotonic()), 6)}
            self._qmp_file.write(json.dumps({**stamp, **entry}, default=str) + "\n")
            self._qmp_file.flush()

    def qmp(self, cmd: str, args: dict | None = None, timeout: float | None = None) -> Any:
        """Run one QMP command; ``QmpError`` on an error reply, a timeout or a lost monitor."""
        if self._qmp is None or self._loop is None:
            raise QmpError(cmd, "Disconnected", "no QMP connection")
        timeout = timeout if timeout is not None else self.timeouts(self.timeouts.qmp)
        self._record({"execute": cmd, "arguments": args or {}})
        try:
            reply = self._run(self._qmp.execute(cmd, args), timeout)
        except ExecuteError as exc:
            self._record({"error": {"class": exc.error_class, "desc": exc.error.error.desc}, "execute": cmd})
            raise QmpError(cmd, exc.error_class, exc.error.error.desc) from exc
        except (asyncio.TimeoutError, TimeoutError) as exc:
            self._record({"error": {"class": "Timeout"}, "execute": cmd})
            raise QmpError(cmd, "Timeout", f"no reply within {timeout:.1f}s") from exc
        except Exception as exc:  # EOFError, ConnectError, StateError...
            self._record({"error": {"class": "Disconnected", "desc": repr(exc)}, "execute": cmd})
            raise QmpError(cmd, "Disconnected", repr(exc)) from exc
        self._record({"return": reply, "execute": cmd})
        return reply

    def events_wait(self, name: str, match: dict | None = None, timeout: float = 10.0) -> dict:
        """The first pending event ``name`` whose fields include ``match``; others stay queued."""
        deadline = time.monotonic() + timeout
        with self._events_cond:
            while True:
                for i, event in enumerate(self._pending_events):
                    if event.get("event") == name and event_match(event, match or {}):
                        return self._pending_events.pop(i)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise MachineTimeout(f"no QMP event {name} matching {match or {}} within {timeout:.1f}s")
                if not self.is_running():
                    raise MachineTimeout(f"QEMU exited ({self.exitcode}) while waiting for QMP event {name}")
                self._events_cond.wait(min(remaining, 0.2))

    def events(self) -> list[dict]:
        """Every QMP event seen so far, in order."""
        with self._events_cond:
            return list(self._all_events)

    # -- guest readiness ---------------------------------------------------------------
    def wait_boot(self, marker: re.Pattern[str] = INIT_MARKER) -> float:
        """Seconds from launch until the console shows the kernel starting init."""
        assert self.console is not None
        timeout = self.timeouts(self.timeouts.boot)
        m = self.console.wait_for(marker, timeout, abort=lambda: not self.is_running())
        if m is None:
            if self.is_running() and not self.console.eof:
                raise BootError(f"the console did not show {marker.pattern!r} within {timeout:.0f}s\n"
                                f"{self.console.tail()}{self.vcpu_report()}")
            raise BootError(f"QEMU exited ({self.exitcode}) before the kernel started init\n{self.console.tail()}")
        at = self.console.line_time(marker) or time.monotonic()
        return at - self._launched_at

    def vcpu_report(self, gap: float = 2.0) -> str:
        """Where the vCPUs of a guest that stopped progressing are: ``info registers -a`` twice,
        ``gap`` seconds apart, raw into ``vcpus.txt``; a few summary lines to append to an
        error, or "" when the monitor does not answer (QEMU gone or wedged)."""
        samples = []
        for i in range(2):
            if i:
                time.sleep(gap)
            try:
                samples.append(self.qmp("human-monitor-command", {"command-line": "info registers -a"}))
            except QmpError:
                return ""
        (self.run_dir / "vcpus.txt").write_text(
            f"info registers -a, then again {gap:.0f} s later\n\n" + f"\n{'=' * 60}\n".join(samples),
            encoding="utf-8")
        summary = describe_vcpus(parse_registers(samples[0]), parse_registers(samples[1]))
        return f"\nvCPUs (vcpus.txt in the run dir has every register):\n{summary}" if summary else ""

    def wait_agent(self) -> float:
        """Seconds from launch until the agent answered a ping (handshake with circuit breaker)."""
        assert self.agent is not None
        remaining = self._launched_at + self.timeouts(self.timeouts.agent) - time.monotonic()
        try:
            self.agent.handshake(max(remaining, 1.0), alive=self.is_running)
        except AgentError as exc:
            if exc.kind == "Disconnected":
                self._wait_exit(2.0)  # the channel dies with QEMU: say which happened
            tail = self.console.tail() if self.console else ""
            if exc.kind == "GuestGone" or not self.is_running():
                raise BootError(f"QEMU exited ({self.exitcode}) before the guest agent answered\n{tail}") from exc
            raise BootError(f"the guest agent did not answer: {exc}\n{tail}") from exc
        self._agent_ready = True
        return time.monotonic() - self._launched_at

    def wait_reboot(self, mark: int) -> float:
        """After a reset: wait for the kernel to start init again (console text after ``mark``) and
        for the new agent to answer; seconds taken. Disks stay plugged (QEMU keeps the devices)."""
        assert self.console is not None and self.agent is not None
        started = time.monotonic()
        timeout = self.timeouts(self.timeouts.boot)
        if self.console.wait_for(INIT_MARKER, timeout, mark=mark, abort=lambda: not self.is_running()) is None:
            raise BootError(f"no second boot within {timeout:.0f}s after the reset\n"
                            f"{self.console.tail()}{self.vcpu_report()}")
        try:
            self.agent.handshake(self.timeouts(self.timeouts.agent), alive=self.is_running)
        except AgentError as exc:
            raise BootError(f"the guest agent did not answer after the reset: {exc}\n{self.console.tail()}") from exc
        return time.monotonic() - started

    # -- disks -------------------------------------------------------------------------
    def plug(self, disk: DiskSpec, slot: int) -> float:
        """blockdev-add + device_add into root port ``slot``; returns the monotonic time of device_add."""
        disk.validate()
        if not 0 <= slot < self.spec.disk_slots:
            raise ValueError(f"slot {slot} outside 0..{self.spec.disk_slots - 1}")
        if disk.id in self._plugged:
            raise ValueError(f"disk {disk.id!r} is already plugged")
        self.qmp("blockdev-add", A.blockdev_add_args(disk))
        started = time.monotonic()
        try:
            self.qmp("device_add", A.device_add_args(disk, A.root_port_id(slot)))
        except QmpError:
            self._try_qmp("blockdev-del", {"node-name": disk.node_name})
            raise
        self._plugged[disk.id] = disk
        self._slots[disk.id] = slot
        return started

    @property
    def plugged(self) -> dict[str, DiskSpec]:
        """The disks plugged now (device_add done, DEVICE_DELETED not yet seen), by id."""
        return dict(self._plugged)

    def free_slot(self) -> int | None:
        """The lowest root port slot no plugged disk uses (a failed unplug keeps its slot)."""
        used = set(self._slots.values())
        return next((s for s in range(self.spec.disk_slots) if s not in used), None)

    def hotplug(self, disk: DiskSpec, slot: int, chardev: bool = True) -> DiskPlugged:
        """Plug ``disk`` and wait for the agent to see it (with its char device if ``chardev``)."""
        assert self.agent is not None
        started = self.plug(disk, slot)
        info = self.agent.wait_disk(disk.serial, timeout_s=self.timeouts(self.timeouts.visible), chardev=chardev)
        return DiskPlugged(
            id=disk.id,
            serial=disk.serial,
            seconds_to_visible=time.monotonic() - started,
            guest_name=info.get("name"),
            chardev=info.get("chardev"),
        )

    def unplug(self, disk_id: str, timeout: float | None = None) -> float:
        """device_del, wait for DEVICE_DELETED of the device itself, blockdev-del; seconds to deletion.

        ``timeout`` (default ``timeouts.unplug``) bounds the wait; on ``MachineTimeout`` the
        device_del stays pending and ``complete_unplug()`` can wait for it again.
        """
        disk = self._plugged.get(disk_id)
        if disk is None:
            raise ValueError(f"disk {disk_id!r} is not plugged")
        started = time.monotonic()
        self.qmp("device_del", {"id": disk_id})
        return self._await_deleted(disk, started, timeout)

    def complete_unplug(self, disk_id: str, timeout: float | None = None) -> float:
        """After an ``unplug()`` that timed out: wait for DEVICE_DELETED again (no second
        device_del), then blockdev-del; seconds waited."""
        disk = self._plugged.get(disk_id)
        if disk is None:
            raise ValueError(f"disk {disk_id!r} is not plugged")
        return self._await_deleted(disk, time.monotonic(), timeout)

    def _await_deleted(self, disk: DiskSpec, started: float, timeout: float | None) -> float:
        # DEVICE_DELETED comes twice: for .../virtio-backend, then with data.device == id.
        wait = timeout if timeout is not None else self.timeouts(self.timeouts.unplug)
        try:
            self.events_wait("DEVICE_DELETED", {"data": {"device": disk.id}}, wait)
        except UnplugTimeout:
            raise
        except MachineTimeout as exc:
            raise UnplugTimeout(f"unplug {disk.id}: {exc}") from exc
        seconds = time.monotonic() - started
        self.qmp("blockdev-del", {"node-name": disk.node_name})
        del self._plugged[disk.id]
        self._slots.pop(disk.id, None)
        return seconds

    # -- shutdown ----------------------------------------------------------------------
    def _try_qmp(self, cmd: str, args: dict | None = None, timeout: float | None = None) -> bool:
        try:
            self.qmp(cmd, args, timeout)
            return True
        except QmpError:
            return False

    def _wait_exit(self, timeout: float) -> bool:
        if self._proc is None:
            return True
        try:
            self._proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def shutdown(self) -> int | None:
        """Agent poweroff -> wait -> QMP quit -> wait -> kill. Idempotent; returns QEMU's exit code."""
        if self._shut_down:
            return self.exitcode
        self._shut_down = True
        try:
            if self.is_running() and self._agent_ready and self.agent is not None and not self.agent.closed:
                try:
                    self.agent.poweroff(timeout=self.timeouts(5.0))
                    powered_off = True
                except AgentError:
                    powered_off = False
                if self.console is not None:
                    self.console.close()
                if powered_off:
                    self._wait_exit(self.timeouts(self.timeouts.poweroff))
            if self.console is not None:
                self.console.close()
            if self.is_running() and self._qmp is not None:
                self._try_qmp("quit", timeout=self.timeouts(5.0))
                self._wait_exit(self.timeouts(self.timeouts.quit))
            if self.is_running():
                self._record({"note": "killing QEMU"})
                assert self._proc is not None
                try:
                    os.killpg(self._proc.pid, signal.SIGKILL)
                except OSError:
                    self._proc.kill()
                self._wait_exit(10)
        finally:
            self._post_shutdown()
        return self.exitcode

    def _post_shutdown(self) -> None:
        if self.agent is not None:
            self.agent.close()
        if self.console is not None:
            self.console.close()
        if self._loop is not None:
            if self._qmp is not None:
                try:
                    self._run(self._qmp_disconnect(), 5.0)
                except Exception:  # EOFError after quit is expected; nothing else matters here
                    pass
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._loop_thread is not None:
                self._loop_thread.join(5)
            if not self._loop.is_running():
                self._loop.close()
        self._release_console_hold()
        for sock in self._listeners.values():
            sock.close()
        self._listeners.clear()
        if self._sock_dir is not None:
            shutil.rmtree(self._sock_dir, ignore_errors=True)
        with self._record_lock:
            if self._qmp_file is not None:
                self._qmp_file.close()
                self._qmp_file = None

    async def _qmp_disconnect(self) -> None:
        assert self._qmp is not None
        try:
            await self._qmp.disconnect()
        except EOFError:
            pass
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()
