"""A testinfra backend whose commands run in the guest through the agent's ``exec``.

Guest state checks then read like any testinfra test::

    host = guest_host(machine.agent)
    assert host.file("/dev/vdac0").is_character_device
    assert host.sysctl("kernel.panic") == -1

Every command goes through ``/bin/sh -c`` in the guest (busybox), so the Linux
modules testinfra uses for files, sysctl, mount points and ``check_output`` work.
testinfra's File has no test for device nodes; ``GuestHost`` adds
``is_character_device`` and ``is_block_device`` (``test -c`` / ``test -b``), and a
``listdir`` busybox's ``ls`` understands.
"""

from __future__ import annotations

import weakref
from typing import Any

import testinfra.host
from testinfra.backend import base

from .client import AgentClient

# How long one guest command may run before the agent answers Timeout.
COMMAND_TIMEOUT_S = 60.0


class AgentBackend(base.BaseBackend):
    NAME = "vblk-agent"

    def __init__(self, agent: AgentClient, name: str = "guest", timeout_s: float = COMMAND_TIMEOUT_S,
                 **kwargs: Any):
        self.agent = agent
        self.timeout_s = timeout_s
        super().__init__(name, **kwargs)
        # The guest is ours: UTF-8, no need to ask a Python in it.
        self._encoding = "utf-8"

    def get_pytest_id(self) -> str:
        return f"vblk-agent://{self.hostname}"

    def run(self, command: str, *args: str, **kwargs: Any) -> base.CommandResult:
        cmd = self.get_command(command, *args)
        reply = self.agent.call("exec", {"cmd": cmd, "timeout_s": self.timeout_s}, self.timeout_s + 10.0)
        return self.result(reply["rc"], self.encode(cmd), reply["stdout"], reply["stderr"])


def _node_test(flag: str):
    return property(lambda self: self.run_test(f"test -{flag} %s", self.path).rc == 0)


def _listdir(self) -> list[str]:
    """testinfra's listdir passes ``ls -q``, which busybox does not know."""
    out = self.run_test("ls -1 -- %s", self.path)
    if out.rc != 0:
        raise AssertionError(f"cannot list {self.path}: {out.stderr.strip()}")
    return out.stdout.splitlines()


class GuestHost(testinfra.host.Host):
    """A testinfra Host whose ``file`` also knows character and block device nodes."""

    def __getattr__(self, name: str):
        module = super().__getattr__(name)
        if name == "file":
            module = type(module.__name__, (module,), {
                "is_character_device": _node_test("c"),
                "is_block_device": _node_test("b"),
                "listdir": _listdir,
            })
            setattr(self, name, module)
        return module


# One Host per agent connection: testinfra asks the guest what system it is (uname,
# os-release) once per Host, so reusing it saves those round trips.
_HOSTS: "weakref.WeakKeyDictionary[AgentClient, GuestHost]" = weakref.WeakKeyDictionary()


def guest_host(agent: AgentClient, name: str = "guest") -> GuestHost:
    """The testinfra ``Host`` for the guest behind ``agent`` (made once per agent)."""
    host = _HOSTS.get(agent)
    if host is None:
        backend = AgentBackend(agent, name)
        host = GuestHost(backend)
        backend.set_host(host)
        _HOSTS[agent] = host
    return host
