"""The non-interactive parts of ``vblk-ci shell``: QMP prompt lines, --disk specs, and the
prompt's answers (against a stand-in machine; tests/e2e/test_shell_host.py drives the real one)."""

from __future__ import annotations


import pytest

from vblk_ci import cli
from vblk_ci.errors import QmpError, UsageError
from vblk_ci.repro.shell import ShellSession, parse_disk, parse_qmp_line


@pytest.mark.parametrize("line, expected", [
    ("query-status", ("query-status", {})),
    ("  device_del {\"id\": \"d0\"}  ", ("device_del", {"id": "d0"})),
    ('qom-get {"path": "/machine", "property": "type"}', ("qom-get", {"path": "/machine", "property": "type"})),
])
def test_parse_qmp_line(line, expected):
    assert parse_qmp_line(line) == expected


@pytest.mark.parametrize("line, message", [
    ("device_del {id}", "arguments are not JSON"),
    ('device_del ["d0"]', "must be a JSON object"),
    ('{"execute": "quit"}', "not a QMP command name"),
    ("", "not a QMP command name"),
])
def test_parse_qmp_line_errors(line, message):
    with pytest.raises(ValueError, match=message):
        parse_qmp_line(line)


def test_parse_disk_defaults_and_sizes(tmp_path):
    d = parse_disk("size=16M", 3)
    assert (d.id, d.serial, d.backend, d.size_bytes) == ("d3", "vblk-d3", "null", 16 << 20)
    f = parse_disk(f"id=x,backend=file,path={tmp_path / 'x.raw'},size=1G,num-queues=1,read-only=on", 0)
    assert (f.id, f.path, f.size_bytes, f.num_queues, f.read_only) == ("x", tmp_path / "x.raw", 1 << 30, 1, True)
    assert (tmp_path / "x.raw").stat().st_size == 1 << 30  # created sparse


@pytest.mark.parametrize("spec, message", [
    ("colour=blue", "unknown key 'colour'"),
    ("size=lots", "size_bytes is not a number: 'lots'"),
    ("read-only=perhaps", "read_only is not a boolean: 'perhaps'"),
    ("num-queues", r"num_queues needs a value \(num_queues=...\)"),
    ("size=1M,size=2M", "'size' given twice"),
    ("id=a b", "id must use letters"),
])
def test_parse_disk_errors(spec, message):
    with pytest.raises(UsageError, match=message):
        parse_disk(spec, 0)


def test_cli_shell_bad_disk_is_one_line_exit_2(tmp_path, capsys):
    k, i = tmp_path / "k", tmp_path / "i"
    k.write_bytes(b"k")
    i.write_bytes(b"i")
    assert cli.main(["shell", "--kernel", str(k), "--initramfs", str(i), "--disk", "colour=blue"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vblk-ci: error: --disk 'colour=blue': unknown key 'colour'")


class StandInMachine:
    """Answers QMP like QEMU would for the few commands used here; keeps the calls."""

    def __init__(self):
        self.calls = []
        self._events = []

    def qmp(self, cmd, args):
        self.calls.append((cmd, args))
        if cmd == "device_del":
            self._events.append({"event": "DEVICE_DELETED", "data": {"device": args["id"]}})
            return {}
        if cmd == "query-status":
            return {"status": "running", "running": True}
        raise QmpError(cmd, "CommandNotFound", f"The command {cmd} has not been found")

    def events(self):
        return list(self._events)


def test_prompt_answers(tmp_path):
    machine = StandInMachine()
    with open(tmp_path / "in", "w+b") as fin, open(tmp_path / "out", "w+b") as fout:
        session = ShellSession(machine, fin.fileno(), fout.fileno())
        assert '"status": "running"' in session.qmp_command("query-status")
        assert session.qmp_command("nope") == "error: QMP nope: CommandNotFound: The command nope has not been found"
        assert session.qmp_command("device_del {x").startswith("error: arguments are not JSON")
        out = session.qmp_command('device_del {"id": "d0"}')
        assert '"return": {}' in out and 'event: {"event": "DEVICE_DELETED"' in out
        assert session.qmp_command("events") == "(no new events)"  # already shown
        assert "QMP prompt" in session.qmp_command("help")
    assert machine.calls == [("query-status", {}), ("nope", {}), ("device_del", {"id": "d0"})]


class StandInConsole:
    def __init__(self):
        self.sent = []
        self.eof = False

    def send(self, text):
        self.sent.append(text)

    def wait_more(self, mark, timeout):
        return ""


class RunningMachine(StandInMachine):
    exitcode = None

    def __init__(self):
        super().__init__()
        self.console = StandInConsole()

    def is_running(self):
        return True


def test_session_routes_keys_and_prompt_lines(tmp_path):
    """Keys go to the console; after Ctrl-] lines go to QMP until 'console'; input
    typed ahead in the same read is kept in order. Input from a file, not a tty."""
    typed = b"uname -r\r" + b"\x1d" + b"query-status\r\nconsole\r" + b"ls\r"
    (tmp_path / "in").write_bytes(typed)
    machine = RunningMachine()
    with open(tmp_path / "in", "rb") as fin, open(tmp_path / "out", "w+b") as fout:
        assert ShellSession(machine, fin.fileno(), fout.fileno()).run() is None  # ended by end of input
    assert machine.console.sent == ["uname -r\r", "ls\r"]
    assert machine.calls == [("query-status", {})]
    out = (tmp_path / "out").read_text()
    assert '"status": "running"' in out and "back to the guest console" in out


def test_session_exit_from_the_prompt(tmp_path):
    (tmp_path / "in").write_bytes(b"\x1dexit\nnot for the guest\r")
    machine = RunningMachine()
    with open(tmp_path / "in", "rb") as fin, open(tmp_path / "out", "w+b") as fout:
        ShellSession(machine, fin.fileno(), fout.fileno()).run()
    assert machine.console.sent == [] and machine.calls == []
