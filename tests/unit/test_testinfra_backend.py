"""testinfra over the agent: the real agent (``--stdio``, on one end of a socketpair) runs
the commands testinfra's modules send, here on the test host itself."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vblk_ci.agent.client import AgentClient
from vblk_ci.agent.testinfra_backend import guest_host

AGENT = Path(__file__).resolve().parents[2] / "guest-agent" / "agent" / "vblk_agent.py"


@pytest.fixture
def host(tmp_path):
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen([sys.executable, str(AGENT), "--stdio", "--no-poweroff"], stdin=theirs, stdout=theirs,
                            stderr=subprocess.DEVNULL)
    theirs.close()
    client = AgentClient(ours, log=tmp_path / "agent.log")
    client.handshake(20.0)
    try:
        yield guest_host(client)
    finally:
        client.close()
        proc.wait(10)


def test_file_tests_run_through_the_agent(host, tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("hello\n")
    assert host.file(str(f)).exists and host.file(str(f)).is_file
    assert host.file(str(f)).content_string == "hello\n"
    assert not host.file(str(tmp_path / "missing")).exists
    assert host.file("/dev/null").is_character_device
    assert not host.file(str(f)).is_character_device
    assert not host.file("/dev/null").is_block_device
    log = (tmp_path / "agent.log").read_text()
    assert '"method":"exec"' in log  # really went through the agent


def test_run_check_output_and_exit_codes(host):
    assert host.check_output("echo %s", "a b") == "a b"
    assert host.run("exit 3").rc == 3
    result = host.run("echo err >&2; exit 1")
    assert (result.rc, result.stderr.strip()) == (1, "err")


def test_sysctl(host):
    expected = int(Path("/proc/sys/kernel/pid_max").read_text())
    assert host.sysctl("kernel.pid_max") == expected


def test_command_timeout_is_an_agent_error(host):
    from vblk_ci.errors import AgentError

    host.backend.timeout_s = 0.5
    with pytest.raises(AgentError, match="Timeout"):
        host.run("sleep 3")


def test_listdir_without_gnu_ls_options(host, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "b").write_text("")
    (d / "a").mkdir()
    assert sorted(host.file(str(d)).listdir()) == ["a", "b"]
