"""Host side of the guest agent protocol (guest-agent/PROTOCOL.md).

JSON lines over a connected stream socket (the virtio-serial port's chardev, or a
socketpair in tests). One request at a time; each call has a host-side deadline.
Errors come back as ``AgentError(kind, message)``: the agent's own error types
(``Timeout``, ``NoSuchDisk``, ``BadParams``...) plus the host's:

- ``HostTimeout``  no reply before the host deadline
- ``Disconnected`` the stream ended
- ``Protocol``     a line that is not a JSON object
- ``NotReady``     the readiness handshake ran out of time
- ``GuestGone``    the handshake stopped because the VM is gone (circuit breaker)
- ``Restarted``    a new agent said ``ready`` while a call waited: the guest rebooted, and
                   no reply to that call can come

except ``InternalError`` (a handler of the agent's raised something it did not expect),
which is ``AgentBug``: an infrastructure error, never a verdict on the driver. The
agent's ``warning`` events (e.g. an engine progress line that is not JSON) are kept in
``warnings`` for the run to report.
"""

from __future__ import annotations

import base64
import itertools
import json
import secrets
import select
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, TextIO

from ..errors import AgentBug, AgentError

# Host deadline = guest-side timeout + this margin (the guest answers Timeout itself).
CALL_MARGIN_S = 10.0


class AgentClient:
    def __init__(self, sock: socket.socket, log: Path | TextIO | None = None):
        self._sock = sock
        self._sock.setblocking(True)
        self._buf = b""
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._own_log = isinstance(log, (str, Path))
        self._log: TextIO | None = open(log, "a", encoding="utf-8") if self._own_log else log  # type: ignore[arg-type]
        self.events: list[dict] = []  # unsolicited messages, e.g. {"event": "ready"}
        self.warnings: list[str] = []  # the agent's {"event": "warning"} messages, for the run's report
        self.progress: dict[int, dict] = {}  # job -> its latest {"event": "progress"} (kept apart: many)
        self.closed = False

    # -- transport ---------------------------------------------------------------------
    def _record(self, direction: str, line: str) -> None:
        if self._log is not None:
            self._log.write(f"{time.monotonic() - self._t0:10.3f} {direction} {line}\n")
            self._log.flush()

    def _send(self, msg: dict, timeout: float) -> None:
        line = json.dumps(msg, separators=(",", ":"))
        self._record(">", line)
        self._sock.settimeout(max(timeout, 0.01))
        try:
            self._sock.sendall(line.encode() + b"\n")
        except socket.timeout as exc:
            raise AgentError("HostTimeout", f"could not send {msg.get('method')} within {timeout:.1f}s") from exc
        except OSError as exc:
            raise AgentError("Disconnected", f"sending {msg.get('method')}: {exc}") from exc
        finally:
            self._sock.setblocking(True)

    def _read_line(self, deadline: float) -> bytes | None:
        """The next line, or ``None`` at the deadline. Raises on end of stream."""
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([self._sock], [], [], remaining)
            if not ready:
                return None
            try:
                data = self._sock.recv(65536)
            except OSError as exc:
                raise AgentError("Disconnected", str(exc)) from exc
            if not data:
                self.closed = True
                raise AgentError("Disconnected", "the agent channel closed")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def _next_message(self, deadline: float) -> dict | None:
        line = self._read_line(deadline)
        if line is None:
            return None
        text = line.decode("utf-8", "replace").strip()
        self._record("<", text)
        if not text:
            return {}
        try:
            msg = json.loads(text)
        except ValueError as exc:
            raise AgentError("Protocol", f"not JSON: {text[:200]!r}") from exc
        if not isinstance(msg, dict):
            raise AgentError("Protocol", f"not a JSON object: {text[:200]!r}")
        return msg

    def _await_reply(self, ids: set[int], deadline: float, restart_ends: bool = False) -> dict | None:
        """The first reply whose id is in ``ids``; stale replies and events are set aside.
        ``restart_ends``: a ``ready`` event (a new agent) raises ``Restarted``."""
        while True:
            msg = self._next_message(deadline)
            if msg is None:
                return None
            if "event" in msg and "id" not in msg:
                self._note_event(msg)
                if restart_ends and msg.get("event") == "ready":
                    raise AgentError("Restarted", "the agent started again (the guest rebooted) before it answered")
                continue
            if msg.get("id") in ids:
                return msg
            if msg.get("id") is None and "error" in msg:
                err = msg["error"] or {}
                raise AgentError(str(err.get("type", "BadRequest")), str(err.get("message", "")))
            # A reply to an earlier call that timed out on our side: drop it.

    def _note_event(self, msg: dict) -> None:
        if msg.get("event") == "progress" and isinstance(msg.get("job"), int):
            self.progress[msg["job"]] = msg
        elif msg.get("event") == "warning":
            self.warnings.append(str(msg.get("message", msg)))
        else:
            self.events.append(msg)

    # -- calls -------------------------------------------------------------------------
    def call(self, method: str, params: dict | None = None, timeout: float = 30.0) -> Any:
        with self._lock:
            req_id = next(self._ids)
            deadline = time.monotonic() + timeout
            self._send({"id": req_id, "method": method, "params": params or {}}, timeout)
            msg = self._await_reply({req_id}, deadline, restart_ends=True)
        if msg is None:
            raise AgentError("HostTimeout", f"{method}: no reply within {timeout:.1f}s")
        if "error" in msg:
            err = msg["error"] or {}
            if err.get("type") == "InternalError":  # the agent's own bug, not a driver outcome
                raise AgentBug(method, str(err.get("message", "")))
            raise AgentError(str(err.get("type", "Unknown")), str(err.get("message", "")), err.get("data"))
        if "result" not in msg:
            raise AgentError("Protocol", f"{method}: reply has neither result nor error: {msg!r}")
        return msg["result"]

    def handshake(
        self,
        deadline_s: float,
        alive: Callable[[], bool] = lambda: True,
        attempt_s: float = 2.0,
    ) -> float:
        """Ping with fresh random tokens until one echoes back; returns the seconds taken.

        Pings sent while the guest has not opened its port queue up; any of them
        answered with its own token proves readiness. Stops at once when ``alive()``
        turns false.
        """
        start = time.monotonic()
        deadline = start + deadline_s
        sent: dict[int, str] = {}
        with self._lock:
            while True:
                if not alive():
                    raise AgentError("GuestGone", "the VM exited before the agent answered")
                now = time.monotonic()
                if now >= deadline:
                    raise AgentError("NotReady", f"no answer to {len(sent)} pings in {deadline_s:.0f}s")
                token = secrets.token_hex(8)
                req_id = next(self._ids)
                sent[req_id] = token
                self._send({"id": req_id, "method": "ping", "params": {"token": token}}, 2.0)
                attempt_deadline = min(deadline, time.monotonic() + attempt_s)
                while True:
                    msg = self._await_reply(set(sent), min(attempt_deadline, time.monotonic() + 0.25))
                    if msg is not None:
                        result = msg.get("result") or {}
                        if isinstance(result, dict) and result.get("token") == sent[msg["id"]]:
                            return time.monotonic() - start
                        raise AgentError("Protocol", f"ping answered with {msg!r}")
                    if time.monotonic() >= attempt_deadline or not alive():
                        break

    # -- typed methods -----------------------------------------------------------------
    def ping(self, token: str | None = None, timeout: float = 10.0) -> dict:
        token = token or secrets.token_hex(8)
        result = self.call("ping", {"token": token}, timeout)
        if not isinstance(result, dict) or result.get("token") != token:
            raise AgentError("Protocol", f"ping echoed {result!r}, sent {token!r}")
        return result

    def disks(self, timeout: float = 10.0) -> list[dict]:
        return self.call("disks", {}, timeout)

    def wait_disk(self, serial: str, timeout_s: float = 10.0, chardev: bool = True) -> dict:
        params = {"serial": serial, "timeout_s": timeout_s, "chardev": chardev}
        return self.call("wait_disk", params, timeout_s + CALL_MARGIN_S)

    def wait_disk_gone(self, name: str, timeout_s: float = 10.0) -> dict:
        return self.call("wait_disk_gone", {"name": name, "timeout_s": timeout_s}, timeout_s + CALL_MARGIN_S)

    def engine(self, args: list[str], timeout_s: float = 120.0, engine: str | None = None) -> dict:
        """Run one engine job; ``engine="vblk-engine32"`` runs the 32-bit build (PROTOCOL.md)."""
        params = {"args": list(args), "timeout_s": timeout_s}
        if engine is not None:
            params["engine"] = engine
        return self.call("engine", params, timeout_s + CALL_MARGIN_S)

    def spawn(self, args: list[str], timeout: float = 10.0, engine: str | None = None) -> int:
        """Start an engine job in the background; returns its job id."""
        params = {"args": list(args)}
        if engine is not None:
            params["engine"] = engine
        return self.call("spawn", params, timeout)["job"]

    def spawn_with_progress(self, args: list[str], progress_ms: int = 100, timeout: float = 10.0,
                            engine: str | None = None) -> int:
        """``spawn`` whose engine reports progress every ``progress_ms`` (see ``wait_progress``)."""
        params = {"args": list(args), "progress_ms": progress_ms}
        if engine is not None:
            params["engine"] = engine
        return self.call("spawn", params, timeout)["job"]

    def wait_progress(self, job: int, until: Callable[[dict], bool], timeout: float) -> dict | None:
        """Read the agent's progress events for ``job`` until ``until(event)`` holds; that event,
        or ``None`` after ``timeout`` seconds (the job stalled or ended first)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                last = self.progress.get(job)
                if last is not None and until(last):
                    return last
                msg = self._next_message(deadline)
                if msg is None:
                    return None
                if "event" in msg and "id" not in msg:
                    self._note_event(msg)
                # a reply to a call that timed out on our side: drop it

    def wait_job(self, job: int, timeout_s: float = 120.0) -> dict:
        """The finished job's result, as ``engine`` returns it; ``Timeout`` if it still runs."""
        return self.call("wait_job", {"job": job, "timeout_s": timeout_s}, timeout_s + CALL_MARGIN_S)

    def signal_job(self, job: int, signal: str, timeout: float = 10.0) -> bool:
        """Send INT, TERM, USR1, KILL, STOP or CONT to a job; False if it had already exited."""
        return self.call("signal_job", {"job": job, "signal": signal}, timeout)["running"]

    def exec(
        self,
        argv: list[str] | None = None,
        cmd: str | None = None,
        timeout_s: float = 30.0,
        stdin: str | None = None,
    ) -> dict:
        if (argv is None) == (cmd is None):
            raise ValueError("give exactly one of argv or cmd")
        params: dict[str, Any] = {"timeout_s": timeout_s}
        if argv is not None:
            params["argv"] = list(argv)
        else:
            params["cmd"] = cmd
        if stdin is not None:
            params["stdin"] = stdin
        return self.call("exec", params, timeout_s + CALL_MARGIN_S)

    def read_file(self, path: str, max_bytes: int = 1 << 20, timeout: float = 10.0) -> str:
        return self.call("read_file", {"path": path, "max_bytes": max_bytes}, timeout)["data"]

    def write_file(self, path: str, data: str, timeout: float = 10.0) -> None:
        self.call("write_file", {"path": path, "data": data}, timeout)

    def dmesg(self, since_seq: int = 0, timeout: float = 10.0) -> dict:
        return self.call("dmesg", {"since_seq": since_seq}, timeout)

    def read_binary(self, path: str, max_bytes: int = 16 << 20, timeout: float = 30.0) -> bytes:
        """A guest file's bytes, exactly (the agent's ``read_binary``: base64 over the JSON line)."""
        reply = self.call("read_binary", {"path": path, "max_bytes": max_bytes}, timeout)
        data = base64.b64decode(reply["data_b64"], validate=True)
        if len(data) != reply["size"]:
            raise AgentError("BadReply", f"read_binary {path}: {len(data)} bytes decoded, agent said {reply['size']}")
        return data

    def poweroff(self, timeout: float = 5.0) -> None:
        self.call("poweroff", {}, timeout)

    def close(self) -> None:
        self.closed = True
        try:
            self._sock.close()
        finally:
            if self._own_log and self._log is not None:
                self._log.close()
                self._log = None
