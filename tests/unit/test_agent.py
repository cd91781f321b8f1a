"""Unit tests for the guest agent (guest-agent/agent/vblk_agent.py).

The agent runs as a real subprocess with ``--stdio`` against a fake sysfs/dev
tree in tmp_path, so these tests exercise the same framing, dispatch and
error paths the host sees through the virtio-serial port.  A few cases that
need to inject faults (a handler that raises) import the module instead.
"""

import importlib.util
import errno
import json
import os
import pty
import select
import stat
import subprocess
import sys
import threading
import time
import tty
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[2] / "guest-agent" / "agent" / "vblk_agent.py"
IS_ROOT = os.geteuid() == 0


def load_agent_module():
    """Import vblk_agent.py from its path (it is not a package)."""
    spec = importlib.util.spec_from_file_location("vblk_agent_under_test", AGENT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def make_disk(root, name, serial, sectors, lbs=512, pbs=4096, queues=2, ro=False,
              chardev_devno=None):
    """Lay out /sys/block/<name> (and its vblk-generic class entry) as the kernel does."""
    base = root / "sys" / "block" / name
    write(base / "size", f"{sectors}\n")
    write(base / "serial", f"{serial}\n")
    write(base / "ro", "1\n" if ro else "0\n")
    write(base / "queue" / "logical_block_size", f"{lbs}\n")
    write(base / "queue" / "physical_block_size", f"{pbs}\n")
    for q in range(queues):
        (base / "mq" / str(q)).mkdir(parents=True)
    if chardev_devno:
        write(root / "sys" / "class" / "vblk-generic" / f"{name}c0" / "dev", f"{chardev_devno}\n")


@pytest.fixture
def fake_root(tmp_path):
    """Two virtio disks (vdb with a chardev, vdc without) plus a non-virtio loop0."""
    root = tmp_path / "root"
    make_disk(root, "vdb", "vblk0", 131072, queues=2, chardev_devno="250:1")
    make_disk(root, "vdc", "vblk1", 2048, lbs=4096, queues=1, ro=True)
    write(root / "sys" / "block" / "loop0" / "size", "0\n")
    (root / "dev").mkdir()
    return root


class AgentProc:
    """The agent as a subprocess speaking the line protocol on a pipe."""

    def __init__(self, root, *extra):
        argv = [sys.executable, str(AGENT), "--stdio", "--no-poweroff",
                "--sysfs-root", str(root), "--dev-root", str(root), *extra]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.buf = b""
        self.next_id = 1
        self.ready = self.read_obj()

    def send_raw(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def read_obj(self, timeout=10.0):
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"no reply within {timeout} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError("agent closed stdout; stderr: "
                                     + self.proc.stderr.read().decode())
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def request(self, method, params=None, timeout=10.0):
        req_id = self.next_id
        self.next_id += 1
        req = {"id": req_id, "method": method}
        if params is not None:
            req["params"] = params
        self.send_raw(json.dumps(req).encode() + b"\n")
        reply = self.read_obj(timeout)
        assert reply["id"] == req_id
        return reply

    def call(self, method, timeout=10.0, **params):
        """Call and return the result; fail the test on an error reply."""
        reply = self.request(method, params, timeout)
        assert "error" not in reply, reply
        return reply["result"]

    def error(self, method, params=None, timeout=10.0):
        """Call and return the error object; fail the test on success."""
        reply = self.request(method, params, timeout)
        assert "error" in reply, reply
        return reply["error"]

    def close(self):
        try:
            self.proc.stdin.close()
        except BrokenPipeError:   # the agent already exited (poweroff)
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def agent(fake_root):
    a = AgentProc(fake_root)
    yield a
    a.close()


# ---- framing and dispatch ------------------------------------------------


def test_ready_event_then_ping(agent):
    assert agent.ready["event"] == "ready"
    assert isinstance(agent.ready["boot_ns"], int) and agent.ready["boot_ns"] > 0
    result = agent.call("ping", token="abc")
    assert result["token"] == "abc"
    assert isinstance(result["uptime_s"], float) and result["uptime_s"] > 0


@pytest.mark.parametrize("line", [
    b"{not json",
    b"\xff\xfe garbage",
    b"[1, 2]",
    b'{"method": "ping", "params": {"token": "x"}}',   # no id
    b'{"id": 1}',                                      # no method
    b'{"id": "7", "method": "ping"}',                  # id not an integer
    b'{"id": true, "method": "ping"}',
    b'{"id": 1, "method": 5}',
])
def test_bad_request_keeps_serving(agent, line):
    agent.send_raw(line + b"\n")
    reply = agent.read_obj()
    assert reply["id"] is None
    assert reply["error"]["type"] == "BadRequest"
    assert reply["error"]["message"]
    assert agent.call("ping", token="still-alive")["token"] == "still-alive"


def test_blank_lines_are_ignored(agent):
    agent.send_raw(b"\n\r\n   \n")
    assert agent.call("ping", token="t")["token"] == "t"


def test_partial_lines_are_reassembled(agent):
    req = json.dumps({"id": 41, "method": "ping", "params": {"token": "split"}}).encode()
    agent.send_raw(req[:10])
    time.sleep(0.05)
    agent.send_raw(req[10:] + b"\n" + b'{"id": 42, "method": "ping", "par')
    time.sleep(0.05)
    agent.send_raw(b'ams": {"token": "two"}}\n')
    first, second = agent.read_obj(), agent.read_obj()
    assert (first["id"], first["result"]["token"]) == (41, "split")
    assert (second["id"], second["result"]["token"]) == (42, "two")


def test_unknown_method(agent):
    err = agent.error("frobnicate")
    assert err["type"] == "UnknownMethod"
    assert "frobnicate" in err["message"]


@pytest.mark.parametrize("method,params", [
    ("ping", {}),                                    # missing
    ("ping", {"token": 5}),                          # wrong type
    ("ping", {"token": "x", "tokn": "y"}),           # unknown name
    ("ping", ["token"]),                             # params not an object
    ("wait_disk", {"serial": "s", "timeout_s": -1}),
    ("wait_disk", {"serial": "s", "timeout_s": True}),
    ("wait_disk", {"serial": "s", "chardev": 1}),
    ("wait_disk_gone", {"name": "../etc"}),
    ("exec", {}),                                    # neither argv nor cmd
    ("exec", {"argv": ["true"], "cmd": "true"}),     # both
    ("exec", {"argv": "true"}),
    ("exec", {"argv": []}),
    ("exec", {"argv": ["echo", "nul\u0000byte"]}),
    ("engine", {"args": ["nul\u0000byte"]}),
    ("read_file", {"path": "/x", "max_bytes": -1}),
    ("write_file", {"path": "/x"}),
    ("dmesg", {"since_seq": "3"}),
    ("sysfs", {"name": "vdb", "paths": ["../../etc/passwd"]}),
    ("sysfs", {"name": "vdb", "paths": ["/etc/passwd"]}),
    ("engine", {"args": "--op read"}),
])
def test_bad_params(agent, method, params):
    err = agent.error(method, params)
    assert err["type"] == "BadParams", err
    assert agent.call("ping", token="ok")["token"] == "ok"


def test_internal_error_keeps_agent_alive(fake_root):
    mod = load_agent_module()
    agent = mod.Agent(str(fake_root), str(fake_root))

    @mod.method("boom")
    def boom(_agent):
        raise KeyError("kaput")

    reply = agent.handle_line(b'{"id": 9, "method": "boom"}')
    assert reply == {"id": 9, "error": {"type": "InternalError", "message": "KeyError: 'kaput'"}}
    ok = agent.handle_line(b'{"id": 10, "method": "ping", "params": {"token": "x"}}')
    assert ok["result"]["token"] == "x"


def test_unencodable_result_becomes_internal_error(fake_root):
    mod = load_agent_module()
    sent = []

    class FakeChan:
        def send(self, obj):
            sent.append(json.dumps(obj))

    mod._send_reply(FakeChan(), {"id": 3, "result": {"bad": object()}})
    assert json.loads(sent[0])["error"]["type"] == "InternalError"


# ---- disks -----------------------------------------------------------------


def test_disks_from_fake_sysfs(agent, fake_root):
    disks = agent.call("disks")
    assert [d["name"] for d in disks] == ["vdb", "vdc"]
    vdb, vdc = disks
    assert vdb["serial"] == "vblk0"
    assert vdb["size_bytes"] == 131072 * 512
    assert vdb["logical_block_size"] == 512
    assert vdb["physical_block_size"] == 4096
    assert vdb["read_only"] is False
    assert vdb["nr_hw_queues"] == 2
    assert vdb["chardev_devno"] == "250:1"
    assert vdb["blockdev"] == str(fake_root / "dev" / "vdb")
    if IS_ROOT:
        node = fake_root / "dev" / "vdbc0"
        assert vdb["chardev"] == str(node)
        st = node.lstat()
        assert stat.S_ISCHR(st.st_mode)
        assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (250, 1)
        assert stat.S_IMODE(st.st_mode) == 0o600
    else:
        assert vdb["chardev"] is None  # mknod needs CAP_MKNOD

    assert vdc["serial"] == "vblk1"
    assert vdc["size_bytes"] == 2048 * 512
    assert vdc["logical_block_size"] == 4096
    assert vdc["read_only"] is True
    assert vdc["nr_hw_queues"] == 1
    assert vdc["chardev"] is None and vdc["chardev_devno"] is None
    assert set(vdb) == {"name", "serial", "size_bytes", "logical_block_size",
                        "physical_block_size", "read_only", "nr_hw_queues", "chardev",
                        "chardev_devno", "blockdev"}


@pytest.mark.skipif(not IS_ROOT, reason="mknod of a char device needs root")
def test_stale_chardev_node_is_replaced(agent, fake_root):
    node = fake_root / "dev" / "vdbc0"
    os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(250, 7))   # left from an old plug
    vdb = agent.call("disks")[0]
    assert vdb["chardev"] == str(node)
    assert os.minor(node.stat().st_rdev) == 1


def test_disks_empty_tree(tmp_path):
    a = AgentProc(tmp_path)
    try:
        assert a.call("disks") == []
    finally:
        a.close()


@pytest.mark.skipif(not IS_ROOT, reason="wait_disk with chardev needs mknod (root)")
def test_wait_disk_present(agent, fake_root):
    disk = agent.call("wait_disk", serial="vblk0", timeout_s=2)
    assert disk["name"] == "vdb"
    assert disk["chardev"] == str(fake_root / "dev" / "vdbc0")


def test_wait_disk_without_chardev(agent):
    disk = agent.call("wait_disk", serial="vblk1", timeout_s=2, chardev=False)
    assert disk["name"] == "vdc"


def test_wait_disk_timeout(agent):
    start = time.monotonic()
    err = agent.error("wait_disk", {"serial": "nope", "timeout_s": 0.2})
    elapsed = time.monotonic() - start
    assert err["type"] == "Timeout"
    assert "nope" in err["message"]
    assert 0.2 <= elapsed < 5
    # the fake sysfs has no virtio_blk driver: the usual cause, a modular one never loaded
    assert "this guest has no virtio_blk driver" in err["message"]


def test_wait_disk_timeout_with_the_driver_bound_says_nothing_of_it(fake_root):
    (fake_root / "sys" / "bus" / "virtio" / "drivers" / "virtio_blk").mkdir(parents=True)
    a = AgentProc(fake_root)
    try:
        err = a.error("wait_disk", {"serial": "nope", "timeout_s": 0.1})
    finally:
        a.close()
    assert err["message"] == "no disk with serial 'nope' after 0.1 s"


def test_wait_disk_timeout_names_missing_chardev(agent):
    err = agent.error("wait_disk", {"serial": "vblk1", "timeout_s": 0.1})
    assert err["type"] == "Timeout"
    assert "vdcc0" in err["message"]


def test_wait_disk_sees_late_hotplug(agent, fake_root):
    timer = threading.Timer(0.3, make_disk, (fake_root, "vdd", "late", 8))
    timer.start()
    try:
        disk = agent.call("wait_disk", serial="late", timeout_s=5, chardev=False)
    finally:
        timer.join()
    assert disk["name"] == "vdd" and disk["size_bytes"] == 8 * 512


def test_wait_disk_gone(agent, fake_root):
    agent.call("disks")   # may mknod /dev/vdbc0, which the agent then owns
    import shutil

    def unplug():
        shutil.rmtree(fake_root / "sys" / "block" / "vdb")
        shutil.rmtree(fake_root / "sys" / "class" / "vblk-generic" / "vdbc0")

    timer = threading.Timer(0.2, unplug)
    timer.start()
    try:
        assert agent.call("wait_disk_gone", name="vdb", timeout_s=5) == {"name": "vdb"}
    finally:
        timer.join()
    assert not (fake_root / "dev" / "vdbc0").exists()


def test_wait_disk_gone_timeout(agent):
    err = agent.error("wait_disk_gone", {"name": "vdc", "timeout_s": 0.1})
    assert err["type"] == "Timeout"
    assert "vdc" in err["message"]


def test_sysfs_method(agent):
    result = agent.call("sysfs", name="vdb", paths=["size", "queue/logical_block_size", "nope"])
    assert result == {"size": "131072", "queue/logical_block_size": "512", "nope": None}
    assert agent.error("sysfs", {"name": "vdz", "paths": ["size"]})["type"] == "NoSuchDisk"


# ---- exec, files, engine, dmesg, poweroff ------------------------------------


def test_exec_argv_and_cmd(agent):
    assert agent.call("exec", argv=["sh", "-c", "echo out; echo err >&2; exit 3"]) == {
        "rc": 3, "stdout": "out\n", "stderr": "err\n"}
    assert agent.call("exec", cmd="printf '%s' \"$((6 * 7))\"")["stdout"] == "42"
    assert agent.call("exec", argv=["cat"], stdin="fed in")["stdout"] == "fed in"


def test_exec_missing_program_and_timeout(agent):
    assert agent.call("exec", argv=["/nonexistent/prog"])["rc"] == 127
    err = agent.error("exec", {"argv": ["sleep", "5"], "timeout_s": 0.2})
    assert err["type"] == "Timeout"


def test_read_write_file(agent, tmp_path):
    path = tmp_path / "f.txt"
    assert agent.call("write_file", path=str(path), data="héllo\n") == {}
    assert path.read_text() == "héllo\n"
    assert agent.call("read_file", path=str(path))["data"] == "héllo\n"
    assert agent.call("read_file", path=str(path), max_bytes=2)["data"] == "h\ufffd"
    path.write_bytes(b"\xffok")
    assert agent.call("read_file", path=str(path))["data"] == "\ufffdok"


def test_file_errors_carry_errno(agent, tmp_path):
    err = agent.error("read_file", {"path": str(tmp_path / "missing")})
    assert err["type"] == "OSError"
    assert err["data"]["errno_name"] == "ENOENT"
    err = agent.error("write_file", {"path": str(tmp_path / "no" / "dir"), "data": "x"})
    assert err["type"] == "OSError"
    assert agent.call("ping", token="x")["token"] == "x"


def fake_engine(tmp_path, body):
    script = tmp_path / "fake-engine"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return script


def test_engine_result(fake_root, tmp_path):
    engine = fake_engine(tmp_path, 'echo "{\\"op\\": \\"$2\\", \\"errors\\": 0}"; echo note >&2\n')
    a = AgentProc(fake_root, "--engine", str(engine))
    try:
        result = a.call("engine", args=["--op", "verify"])
        assert result == {"op": "verify", "errors": 0, "exit_code": 0, "stderr": "note\n"}
    finally:
        a.close()


@pytest.mark.parametrize("body,etype", [
    ("echo 'vblk-engine: --qd must be 1..4096' >&2; exit 2\n", "EngineFailed"),
    ("echo not json; exit 0\n", "EngineOutput"),
    ("kill -SEGV $$\n", "EngineFailed"),
])
def test_engine_failures(fake_root, tmp_path, body, etype):
    a = AgentProc(fake_root, "--engine", str(fake_engine(tmp_path, body)))
    try:
        err = a.error("engine", {"args": []})
        assert err["type"] == etype, err
        assert "exit_code" in err["data"]
    finally:
        a.close()


def test_engine_missing_and_timeout(fake_root, tmp_path):
    a = AgentProc(fake_root, "--engine", str(tmp_path / "nope"))
    try:
        assert a.error("engine", {"args": []})["type"] == "NoEngine"
    finally:
        a.close()
    a = AgentProc(fake_root, "--engine", str(fake_engine(tmp_path, "sleep 5\n")))
    try:
        assert a.error("engine", {"args": [], "timeout_s": 0.2})["type"] == "Timeout"
    finally:
        a.close()


def test_engine_param_chooses_the_32_bit_binary_beside_the_engine(fake_root, tmp_path):
    engine = fake_engine(tmp_path, 'echo "{\\"bin\\": \\"$(basename $0)\\", \\"op\\": \\"$2\\"}"\n')
    engine32 = tmp_path / "vblk-engine32"
    engine32.write_text(engine.read_text())
    engine32.chmod(0o755)
    a = AgentProc(fake_root, "--engine", str(engine))
    try:
        assert a.call("engine", args=["--op", "read"])["bin"] == "fake-engine"
        assert a.call("engine", args=["--op", "read"], engine="vblk-engine")["bin"] == "fake-engine"
        assert a.call("engine", args=["--op", "write"], engine="vblk-engine32")["bin"] == "vblk-engine32"
        job = a.call("spawn", args=["--op", "verify"], engine="vblk-engine32")["job"]
        assert a.call("wait_job", job=job, timeout_s=10)["bin"] == "vblk-engine32"
        for method in ("engine", "spawn"):
            for bad in ("vblk-engine64", "/bin/sh", "../fake-engine", 32, None):
                err = a.error(method, {"args": [], "engine": bad})
                assert err["type"] == "BadParams" and "vblk-engine, vblk-engine32" in err["message"], err
    finally:
        a.close()


def test_engine32_that_cannot_execute_is_no_engine_with_the_errno(fake_root, tmp_path):
    """A binary the kernel cannot load (an i386 ELF without IA32 emulation: ENOEXEC) or a
    missing one is NoEngine naming the path and the OS error, for engine and spawn."""
    engine = fake_engine(tmp_path, 'echo "{}"\n')
    a = AgentProc(fake_root, "--engine", str(engine))
    try:
        for method in ("engine", "spawn"):
            err = a.error(method, {"args": [], "engine": "vblk-engine32"})
            assert err["type"] == "NoEngine" and str(tmp_path / "vblk-engine32") in err["message"], err
            assert err["data"]["errno_name"] == "ENOENT"
        engine32 = tmp_path / "vblk-engine32"
        engine32.write_bytes(b"\x7fELF\x01\x01\x01" + bytes(64))  # no loader takes this
        engine32.chmod(0o755)
        for method in ("engine", "spawn"):
            err = a.error(method, {"args": [], "engine": "vblk-engine32"})
            assert err["type"] == "NoEngine" and "Exec format error" in err["message"], err
            assert err["data"] == {"path": str(engine32), "errno": errno.ENOEXEC, "errno_name": "ENOEXEC"}
        assert a.call("engine", args=[]) == {"exit_code": 0, "stderr": ""}  # the default still runs
    finally:
        a.close()


# ---- background jobs: spawn / wait_job / signal_job --------------------------


def test_spawn_then_wait_job_returns_the_engine_result(fake_root, tmp_path):
    # The job runs until the test releases it: spawn and ping answering at all show the
    # agent does not wait for it (no timing bound, which a loaded machine would break).
    release = tmp_path / "release"
    engine = fake_engine(tmp_path, f'i=0; while [ ! -e {release} ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done\n'
                                   'echo "{\\"op\\": \\"$2\\"}"; echo note >&2\n')
    a = AgentProc(fake_root, "--engine", str(engine))
    try:
        spawned = a.call("spawn", args=["--op", "read"])
        assert set(spawned) == {"job", "pid"}
        # the agent keeps serving while the job runs
        assert a.call("ping", token="t")["token"] == "t"
        assert a.error("wait_job", {"job": spawned["job"], "timeout_s": 0.1})["type"] == "Timeout"
        release.touch()
        result = a.call("wait_job", job=spawned["job"], timeout_s=10)
        assert result == {"op": "read", "exit_code": 0, "stderr": "note\n"}
        # a waited job is forgotten
        assert a.error("wait_job", {"job": spawned["job"]})["type"] == "NoSuchJob"
    finally:
        a.close()


def test_wait_job_timeout_keeps_the_job(fake_root, tmp_path):
    a = AgentProc(fake_root, "--engine", str(fake_engine(tmp_path, 'sleep 0.6; echo "{}"\n')))
    try:
        job = a.call("spawn", args=[])["job"]
        err = a.error("wait_job", {"job": job, "timeout_s": 0.1})
        assert err["type"] == "Timeout" and f"job {job}" in err["message"]
        assert a.call("wait_job", job=job, timeout_s=10)["exit_code"] == 0
    finally:
        a.close()


def test_signal_job_stops_a_job_that_handles_it(fake_root, tmp_path):
    # Like the engine: SIGINT ends the job early and it still prints its result. The handler is
    # installed with sigaction (Python's signal.signal), as the C engine does: a shell's trap
    # cannot catch a signal ignored on entry, which it is under a test run started in the
    # background (seen: the job ran its full 10 s). The marker file says the handler is in.
    ready = tmp_path / "handler-installed"
    body = ('exec python3 -c \'import pathlib, signal, sys, time\n'
            'def stop(*_):\n'
            '    print("{\\"stopped\\": true}", flush=True)\n'
            '    sys.exit(0)\n'
            'signal.signal(signal.SIGINT, stop)\n'
            'pathlib.Path(sys.argv[1]).touch()\n'
            'time.sleep(10)\n'
            'print("{}")\n'
            f'\' {ready}\n')
    a = AgentProc(fake_root, "--engine", str(fake_engine(tmp_path, body)))
    try:
        job = a.call("spawn", args=[])["job"]
        deadline = time.monotonic() + 10
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert a.call("signal_job", job=job, signal="INT") == {"job": job, "running": True}
        assert a.call("wait_job", job=job, timeout_s=10)["stopped"] is True
    finally:
        a.close()


def test_signal_job_kill_and_after_exit(fake_root, tmp_path):
    a = AgentProc(fake_root, "--engine", str(fake_engine(tmp_path, "sleep 30\n")))
    try:
        job = a.call("spawn", args=[])["job"]
        assert a.call("signal_job", job=job, signal="KILL")["running"] is True
        err = a.error("wait_job", {"job": job, "timeout_s": 10})
        assert err["type"] == "EngineFailed" and err["data"]["exit_code"] == -9
        assert a.error("signal_job", {"job": job, "signal": "INT"})["type"] == "NoSuchJob"
        job = a.call("spawn", args=[])["job"]
        a.call("signal_job", job=job, signal="KILL")
        time.sleep(0.3)
        assert a.call("signal_job", job=job, signal="TERM")["running"] is False
    finally:
        a.close()


def test_signal_job_stop_and_cont(fake_root, tmp_path):
    a = AgentProc(fake_root, "--engine", str(fake_engine(tmp_path, 'sleep 0.3; echo "{}"\n')))
    try:
        job = a.call("spawn", args=[])["job"]
        assert a.call("signal_job", job=job, signal="STOP")["running"] is True
        time.sleep(0.6)
        assert a.error("wait_job", {"job": job, "timeout_s": 0.1})["type"] == "Timeout"  # stopped, not done
        assert a.call("signal_job", job=job, signal="CONT")["running"] is True
        assert a.call("wait_job", job=job, timeout_s=10)["exit_code"] == 0
    finally:
        a.close()


@pytest.mark.parametrize("method,params", [
    ("spawn", {}),
    ("spawn", {"args": "--op read"}),
    ("wait_job", {}),
    ("wait_job", {"job": -1}),
    ("wait_job", {"job": 1, "timeout": 1}),
    ("signal_job", {"job": 1}),
    ("signal_job", {"job": 1, "signal": "HUP"}),
    ("signal_job", {"job": 1, "signal": 2}),
])
def test_job_bad_params(agent, method, params):
    assert agent.error(method, params)["type"] == "BadParams"


def test_spawn_missing_engine(fake_root, tmp_path):
    a = AgentProc(fake_root, "--engine", str(tmp_path / "nope"))
    try:
        assert a.error("spawn", {"args": []})["type"] == "NoEngine"
        assert a.error("wait_job", {"job": 1})["type"] == "NoSuchJob"
    finally:
        a.close()


def test_dmesg_reads_records_incrementally(agent, fake_root):
    kmsg = fake_root / "dev" / "kmsg"
    kmsg.write_bytes(b"6,0,100,-;first line\n"
                     b" SUBSYSTEM=virtio\n"
                     b"4,1,200,-;second\n"
                     b"11,2,300,c;third from facility 1\n")
    first = agent.call("dmesg")
    assert first["records"] == [
        {"seq": 0, "level": 6, "ts_us": 100, "text": "first line"},
        {"seq": 1, "level": 4, "ts_us": 200, "text": "second"},
        {"seq": 2, "level": 3, "ts_us": 300, "text": "third from facility 1"},
    ]
    assert first["next_seq"] == 3
    with kmsg.open("ab") as f:
        f.write(b"3,3,400,-;virtio_blk: new\n")
    later = agent.call("dmesg", since_seq=3)
    assert [r["text"] for r in later["records"]] == ["virtio_blk: new"]
    assert later["next_seq"] == 4
    assert agent.call("dmesg", since_seq=4) == {"records": [], "next_seq": 4}
    again = agent.call("dmesg", since_seq=1)   # rewinds
    assert [r["seq"] for r in again["records"]] == [1, 2, 3]


def test_dmesg_without_kmsg_is_typed_error(agent):
    assert agent.error("dmesg")["type"] == "OSError"


def test_poweroff_replies_then_stops(agent):
    assert agent.call("poweroff") == {}
    assert agent.proc.wait(timeout=5) == 0


def test_stdio_eof_exits_cleanly(agent):
    agent.proc.stdin.close()
    assert agent.proc.wait(timeout=5) == 0


# ---- start-up: options and port discovery --------------------------------------


def test_bad_option_exits_2():
    proc = subprocess.run([sys.executable, str(AGENT), "--bogus"], capture_output=True,
                          timeout=10)
    assert proc.returncode == 2
    assert b"--bogus" in proc.stderr


def test_no_port_found_exits_1(tmp_path):
    proc = subprocess.run([sys.executable, str(AGENT), "--sysfs-root", str(tmp_path),
                           "--dev-root", str(tmp_path), "--discover-timeout", "0.05"],
                          capture_output=True, timeout=10)
    assert proc.returncode == 1
    assert b"org.vblk-ci.agent" in proc.stderr


def test_find_port_by_sysfs_name(tmp_path):
    mod = load_agent_module()
    ports = tmp_path / "sys" / "class" / "virtio-ports"
    write(ports / "vport0p1" / "name", "org.qemu.guest_agent.0\n")
    write(ports / "vport0p2" / "name", "org.vblk-ci.agent\n")
    write(ports / "vport0p2" / "dev", "245:2\n")
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "vport0p2").touch()   # as if devtmpfs had made it
    assert mod.find_port(str(tmp_path), str(tmp_path), 1.0) == str(tmp_path / "dev" / "vport0p2")


def test_serves_on_a_char_device_port(fake_root):
    """--port on a tty: a real char device, read+write on one fd, partial lines."""
    master, slave = pty.openpty()
    tty.setraw(slave)   # no echo, no newline translation: a byte pipe like the port
    slave_path = os.ttyname(slave)
    proc = subprocess.Popen([sys.executable, str(AGENT), "--port", slave_path, "--no-poweroff",
                             "--sysfs-root", str(fake_root), "--dev-root", str(fake_root)],
                            stderr=subprocess.PIPE)
    try:
        buf = b""

        def read_line():
            nonlocal buf
            deadline = time.monotonic() + 10
            while b"\n" not in buf:
                assert select.select([master], [], [], max(0, deadline - time.monotonic()))[0]
                buf += os.read(master, 4096)
            line, buf = buf.split(b"\n", 1)
            return json.loads(line)

        assert read_line()["event"] == "ready"
        os.write(master, b'{"id": 1, "method": "pi')
        time.sleep(0.05)
        os.write(master, b'ng", "params": {"token": "tty"}}\n')
        assert read_line()["result"]["token"] == "tty"
        os.write(master, b'{"id": 2, "method": "poweroff"}\n')
        assert read_line() == {"id": 2, "result": {}}
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
        os.close(slave)
        os.close(master)


def test_spawn_with_progress_forwards_the_engines_lines_as_events(fake_root, tmp_path):
    # Like the engine: JSON lines on the fd named by --progress-fd, then the result on stdout.
    body = ('while [ "$1" != "--progress-fd" ]; do shift; done; fd=$2\n'
            'for i in 0 1 2; do eval "echo \'{\\"seq\\": $i, \\"completions\\": $((i * 10))}\' >&$fd"; '
            'sleep 0.05; done\n'
            'eval "echo \'not json\' >&$fd"\n'
            'echo "{\\"done\\": true}"\n')
    a = AgentProc(fake_root, "--engine", str(fake_engine(tmp_path, body)))
    try:
        a.send_raw(json.dumps({"id": 1, "method": "spawn", "params": {"args": ["--op", "read"],
                                                                       "progress_ms": 50}}).encode() + b"\n")
        job, events = None, []
        while len(events) < 3 or job is None:
            msg = a.read_obj()
            if msg.get("event") == "progress":
                events.append(msg)
            else:
                assert msg["id"] == 1, msg
                job = msg["result"]["job"]
        assert [(e["job"], e["seq"], e["completions"]) for e in events] == [(job, 0, 0), (job, 1, 10), (job, 2, 20)]
        # The line that is not JSON is not dropped silently: it comes as a warning event.
        warning = a.read_obj()
        assert warning["event"] == "warning" and warning["job"] == job and "'not json'" in warning["message"]
        assert a.call("wait_job", job=job, timeout_s=10)["done"] is True
        assert a.error("spawn", {"args": [], "progress_ms": 5})["type"] == "BadParams"
    finally:
        a.close()


def test_read_binary_is_byte_exact_and_reads_to_eof(agent, tmp_path):
    import base64

    path = tmp_path / "counters.gcda"
    blob = bytes(range(256)) * 300 + b"\x00\xff"  # more than one 64 KiB chunk, not UTF-8
    path.write_bytes(blob)
    got = agent.call("read_binary", path=str(path))
    assert got["size"] == len(blob) and base64.b64decode(got["data_b64"]) == blob
    got = agent.call("read_binary", path=str(path), max_bytes=70000)
    assert got["size"] == 70000 and base64.b64decode(got["data_b64"]) == blob[:70000]
    # st_size 0 (as debugfs reports for gcov counters): still read to EOF
    with open("/proc/version", "rb") as f:
        version = f.read()
    assert base64.b64decode(agent.call("read_binary", path="/proc/version")["data_b64"]) == version
    err = agent.error("read_binary", {"path": str(tmp_path / "missing")})
    assert err["type"] == "OSError" and err["data"]["errno_name"] == "ENOENT"
