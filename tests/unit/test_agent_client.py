"""AgentClient against a scripted fake agent on a socketpair."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from typing import Callable

import pytest

from vblk_ci.agent.client import AgentClient
from vblk_ci.errors import AgentError

Handler = Callable[[dict], list]


class FakeAgent:
    """Reads JSON-line requests; ``handler(request)`` returns the raw lines (str/dict) to send."""

    def __init__(self, handler: Handler):
        self.host, self.guest = socket.socketpair()
        self.handler = handler
        self.requests: list[dict] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        f = self.guest.makefile("rb")
        for raw in f:
            request = json.loads(raw)
            self.requests.append(request)
            for out in self.handler(request):
                if out == "CLOSE":
                    self.guest.close()
                    return
                line = out if isinstance(out, str) else json.dumps(out)
                self.guest.sendall(line.encode() + b"\n")

    def client(self, log=None) -> AgentClient:
        return AgentClient(self.host, log=log)


def answer(result_fn: Callable[[dict], object]) -> Handler:
    return lambda req: [{"id": req["id"], "result": result_fn(req)}]


def echo_ping(req: dict):
    return {"token": req["params"].get("token"), "uptime_s": 1.0}


def test_call_returns_result_and_logs_both_directions():
    log = io.StringIO()
    fake = FakeAgent(answer(lambda req: [{"name": "vda"}]))
    client = fake.client(log)
    assert client.disks() == [{"name": "vda"}]
    assert fake.requests == [{"id": 1, "method": "disks", "params": {}}]
    lines = log.getvalue().splitlines()
    assert " > " in lines[0] and '"method":"disks"' in lines[0]
    assert " < " in lines[1] and '"name": "vda"' in lines[1]


def test_typed_error_becomes_agent_error_kind():
    fake = FakeAgent(lambda req: [{"id": req["id"], "error": {"type": "NoSuchDisk", "message": "no disk vdz"}}])
    with pytest.raises(AgentError) as info:
        fake.client().wait_disk_gone("vdz", timeout_s=1)
    assert info.value.kind == "NoSuchDisk"
    assert "no disk vdz" in str(info.value)
    assert fake.requests[0]["params"] == {"name": "vdz", "timeout_s": 1}


def test_internal_error_is_an_agent_bug_not_a_driver_outcome():
    from vblk_ci.errors import AgentBug, InfraError

    fake = FakeAgent(lambda req: [{"event": "warning", "job": 1, "message": "job 1: engine progress line is "
                                   "not a JSON object: 'x'"},
                                  {"id": req["id"], "error": {"type": "InternalError", "message": "KeyError: 'k'"}}])
    client = fake.client()
    with pytest.raises(AgentBug) as info:
        client.disks()
    assert isinstance(info.value, InfraError) and not isinstance(info.value, AgentError)
    assert str(info.value) == "guest agent bug in disks: KeyError: 'k' (see agent.log)"
    assert client.warnings == ["job 1: engine progress line is not a JSON object: 'x'"]


def test_stale_replies_and_events_are_set_aside():
    def handler(req):
        return [{"event": "note", "boot_ns": 5}, {"id": 999, "result": "stale"}, {"id": req["id"], "result": {"ok": 1}}]
    client = FakeAgent(handler).client()
    assert client.call("x") == {"ok": 1}
    assert client.events == [{"event": "note", "boot_ns": 5}]


def test_a_new_agent_saying_ready_ends_the_call_it_cannot_answer():
    # the guest rebooted (a QMP system_reset) while the call waited: no reply will come, so
    # the call ends at once instead of at its deadline; the new agent answers the next one
    replies = iter([[{"event": "ready", "boot_ns": 7}], None])

    def handler(req):
        nxt = next(replies)
        return nxt if nxt is not None else [{"id": req["id"], "result": "new agent"}]
    client = FakeAgent(handler).client()
    started = time.monotonic()
    with pytest.raises(AgentError) as info:
        client.call("exec", timeout=30)
    assert info.value.kind == "Restarted" and time.monotonic() - started < 5
    assert client.call("again", timeout=2) == "new agent"


def test_bad_request_with_null_id_raises():
    client = FakeAgent(lambda req: [{"id": None, "error": {"type": "BadRequest", "message": "bad"}}]).client()
    with pytest.raises(AgentError) as info:
        client.call("x")
    assert info.value.kind == "BadRequest"


def test_garbage_line_is_a_protocol_error():
    client = FakeAgent(lambda req: ["this is not json"]).client()
    with pytest.raises(AgentError) as info:
        client.call("x")
    assert info.value.kind == "Protocol"


def test_reply_without_result_is_a_protocol_error():
    client = FakeAgent(lambda req: [{"id": req["id"]}]).client()
    with pytest.raises(AgentError, match="neither result nor error") as info:
        client.call("x")
    assert info.value.kind == "Protocol"


def test_silence_is_a_host_timeout_and_client_stays_usable():
    replies = iter([[], None])

    def handler(req):
        nxt = next(replies)
        return [] if nxt == [] else [{"id": req["id"], "result": "late ok"}]
    client = FakeAgent(handler).client()
    started = time.monotonic()
    with pytest.raises(AgentError) as info:
        client.call("slow", timeout=0.3)
    assert info.value.kind == "HostTimeout"
    assert 0.25 < time.monotonic() - started < 2
    assert client.call("again", timeout=2) == "late ok"


def test_closed_channel_is_disconnected():
    client = FakeAgent(lambda req: ["CLOSE"]).client()
    with pytest.raises(AgentError) as info:
        client.call("x", timeout=2)
    assert info.value.kind == "Disconnected"
    assert client.closed


def test_engine_timeout_has_host_margin():
    fake = FakeAgent(answer(lambda req: {"exit_code": 0, "errors": 0}))
    assert fake.client().engine(["--op", "read"], timeout_s=5) == {"exit_code": 0, "errors": 0}
    assert fake.requests[0] == {"id": 1, "method": "engine", "params": {"args": ["--op", "read"], "timeout_s": 5}}


def test_engine_and_spawn_name_the_engine_binary_only_when_asked():
    def handler(req):
        result = {"engine": {"exit_code": 0}, "spawn": {"job": 1, "pid": 9}}[req["method"]]
        return [{"id": req["id"], "result": result}]

    fake = FakeAgent(handler)
    client = fake.client()
    client.engine(["--op", "read"], timeout_s=5, engine="vblk-engine32")
    client.spawn(["--op", "read"], engine="vblk-engine32")
    client.spawn_with_progress(["--op", "read"], progress_ms=50, engine="vblk-engine")
    assert [r["params"] for r in fake.requests] == [
        {"args": ["--op", "read"], "timeout_s": 5, "engine": "vblk-engine32"},
        {"args": ["--op", "read"], "engine": "vblk-engine32"},
        {"args": ["--op", "read"], "progress_ms": 50, "engine": "vblk-engine"},
    ]


def test_exec_needs_exactly_one_of_argv_or_cmd():
    client = FakeAgent(answer(lambda req: {"rc": 0, "stdout": "", "stderr": ""})).client()
    with pytest.raises(ValueError):
        client.exec()
    with pytest.raises(ValueError):
        client.exec(argv=["true"], cmd="true")
    assert client.exec(cmd="true")["rc"] == 0


def test_ping_checks_the_echoed_token():
    client = FakeAgent(answer(lambda req: {"token": "wrong"})).client()
    with pytest.raises(AgentError) as info:
        client.ping("right")
    assert info.value.kind == "Protocol"


# -- readiness handshake ------------------------------------------------------------------


def test_handshake_first_try():
    fake = FakeAgent(answer(echo_ping))
    seconds = fake.client().handshake(5)
    assert seconds < 1
    assert len(fake.requests) == 1 and fake.requests[0]["method"] == "ping"
    assert len(fake.requests[0]["params"]["token"]) == 16


def test_handshake_retries_until_the_agent_listens():
    """Early pings go unanswered (port not open yet); a later one is answered."""
    def handler(req):
        return [] if req["id"] < 3 else [{"id": req["id"], "result": echo_ping(req)}]
    fake = FakeAgent(handler)
    fake.client().handshake(5, attempt_s=0.2)
    tokens = [r["params"]["token"] for r in fake.requests]
    assert len(tokens) == 3 and len(set(tokens)) == 3, "a fresh random token per attempt"


def test_handshake_accepts_a_late_answer_to_an_earlier_ping():
    """Pings queue while the guest port is closed: the answer to ping 1 may come after ping 2."""
    tokens: dict[int, str] = {}

    def handler(req):
        tokens[req["id"]] = req["params"]["token"]
        return [] if req["id"] == 1 else [{"id": 1, "result": {"token": tokens[1]}}]
    fake = FakeAgent(handler)
    fake.client().handshake(5, attempt_s=0.2)
    assert len(fake.requests) == 2


def test_handshake_rejects_a_wrong_token():
    client = FakeAgent(answer(lambda req: {"token": "not-mine"})).client()
    with pytest.raises(AgentError) as info:
        client.handshake(5)
    assert info.value.kind == "Protocol"


def test_handshake_deadline():
    client = FakeAgent(lambda req: []).client()
    started = time.monotonic()
    with pytest.raises(AgentError) as info:
        client.handshake(0.6, attempt_s=0.2)
    assert info.value.kind == "NotReady"
    assert time.monotonic() - started < 2


def test_handshake_circuit_breaker_stops_at_once():
    client = FakeAgent(lambda req: []).client()
    alive = iter([True, False, False, False])
    started = time.monotonic()
    with pytest.raises(AgentError) as info:
        client.handshake(60, alive=lambda: next(alive, False), attempt_s=5)
    assert info.value.kind == "GuestGone"
    assert time.monotonic() - started < 1.5


def test_handshake_with_dead_vm_sends_nothing():
    fake = FakeAgent(lambda req: [])
    with pytest.raises(AgentError) as info:
        fake.client().handshake(60, alive=lambda: False)
    assert info.value.kind == "GuestGone"
    time.sleep(0.05)
    assert fake.requests == []


def test_error_data_is_kept():
    data = {"exit_code": 3, "stderr": "vblk-engine: cannot open /dev/vdbc0 as uid 1000 gid 1000: Permission denied\n"}
    fake = FakeAgent(lambda req: [{"id": req["id"], "error": {"type": "EngineFailed", "message": "exited 3",
                                                              "data": data}}])
    with pytest.raises(AgentError) as info:
        fake.client().engine(["--op", "read"])
    assert info.value.kind == "EngineFailed" and info.value.data == data
    assert AgentError("X", "y").data is None


def test_background_job_methods():
    def handler(req):
        method, params = req["method"], req["params"]
        result = {"spawn": {"job": 4, "pid": 99}, "signal_job": {"job": params.get("job"), "running": True},
                  "wait_job": {"exit_code": 0, "res_counts": {"0": 5}}}[method]
        return [{"id": req["id"], "result": result}]

    fake = FakeAgent(handler)
    client = fake.client()
    assert client.spawn(["--op", "read"]) == 4
    assert client.signal_job(4, "USR1") is True
    started = time.monotonic()
    assert client.wait_job(4, timeout_s=60) == {"exit_code": 0, "res_counts": {"0": 5}}
    assert time.monotonic() - started < 5
    assert [(r["method"], r["params"]) for r in fake.requests] == [
        ("spawn", {"args": ["--op", "read"]}),
        ("signal_job", {"job": 4, "signal": "USR1"}),
        ("wait_job", {"job": 4, "timeout_s": 60}),
    ]


def test_wait_progress_reads_events_until_the_condition_holds():
    def handler(req):
        if req["method"] == "spawn":
            assert req["params"] == {"args": ["--op", "read"], "progress_ms": 50}
            return [{"id": req["id"], "result": {"job": 3, "pid": 99}},
                    *({"event": "progress", "job": 3, "seq": i, "completions": i * 100} for i in range(5)),
                    {"event": "other"}]
        return [{"id": req["id"], "result": echo_ping(req)}]

    client = FakeAgent(handler).client()
    job = client.spawn_with_progress(["--op", "read"], progress_ms=50)
    assert job == 3
    got = client.wait_progress(3, lambda ev: ev["completions"] >= 250, timeout=5.0)
    assert (got["seq"], got["completions"]) == (3, 300)
    assert client.progress[3]["seq"] == 3
    # progress events are kept apart from the other unsolicited messages
    assert client.wait_progress(3, lambda ev: ev["seq"] == 4, timeout=5.0)["completions"] == 400
    assert client.ping()["token"]
    assert client.events == [{"event": "other"}]
    # never reached: None once the time is up
    started = time.monotonic()
    assert client.wait_progress(3, lambda ev: ev["completions"] > 10_000, timeout=0.3) is None
    assert time.monotonic() - started >= 0.3


def test_read_binary_decodes_base64_and_checks_the_size():
    import base64

    blob = b"\x00\xffgcda\x01"
    fake = FakeAgent(answer(lambda req: {"data_b64": base64.b64encode(blob).decode(), "size": len(blob)}))
    assert fake.client().read_binary("/sys/kernel/debug/gcov/x.gcda") == blob
    assert fake.requests[0]["method"] == "read_binary"
    short = FakeAgent(answer(lambda req: {"data_b64": base64.b64encode(blob).decode(), "size": 99}))
    with pytest.raises(AgentError):
        short.client().read_binary("/x")
