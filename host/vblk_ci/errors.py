"""One exception hierarchy; the CLI maps each family to an exit code.

Exit codes: 0 pass, 1 a check failed, 2 bad usage or missing prerequisite,
125 cannot judge: an infrastructure failure (QEMU, Docker, the build) or an unusable
reproduction bundle -- never a verdict on the driver, 4 config mismatch (QEMU or the
guest did not show the disk configuration asked for).

0, 1 and 125 are what ``git bisect run`` reads as good, bad and skip, so
``git bisect run vblk-ci run ...`` or ``... vblk-ci repro BUNDLE`` needs no wrapper.
"""

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_INFRA = 125  # "cannot judge": git bisect run skips the commit
EXIT_CONFIG_MISMATCH = 4


class VblkCiError(Exception):
    """Base class. ``exit_code`` says how the CLI ends when this escapes."""

    exit_code = EXIT_INFRA


class UsageError(VblkCiError):
    """Bad CLI arguments, scenario file or request: the user can fix it."""

    exit_code = EXIT_USAGE


class MissingPrerequisite(VblkCiError):
    """A tool, file or device the run needs is not there."""

    exit_code = EXIT_USAGE


class InfraError(VblkCiError):
    """The machinery failed (QEMU, Docker, a build), not the code under test."""

    exit_code = EXIT_INFRA


class BuildError(InfraError):
    """A kernel, initramfs or engine build step failed; carries the log tail."""


class LaunchFailure(InfraError):
    """QEMU did not start or died early; carries argv, exit code and output."""

    def __init__(self, message: str, argv: list[str], exitcode: int | None, output: str):
        self.argv = list(argv)
        self.exitcode = exitcode
        self.output = output
        super().__init__(
            f"{message} (exit code {exitcode})\nargv: {' '.join(self.argv)}\noutput:\n{output}"
        )


class BootError(VblkCiError):
    """The guest kernel did not come up to a ready agent: a verdict on the kernel."""

    exit_code = EXIT_FAIL


class AgentError(VblkCiError):
    """The guest agent answered with a typed error or broke the protocol."""

    exit_code = EXIT_FAIL

    def __init__(self, kind: str, message: str, data: object = None):
        self.kind = kind
        self.data = data  # the error's optional structured "data" member
        super().__init__(f"{kind}: {message}")


class AgentBug(InfraError):
    """The agent answered InternalError: a bug in the guest agent's handler (it caught an
    exception it did not expect), not something the driver did. Ends the run as "cannot
    judge" (125) with the agent's message, instead of failing a check on the driver."""

    def __init__(self, method: str, message: str):
        self.method = method
        super().__init__(f"guest agent bug in {method}: {message} (see agent.log)")


class CheckFailed(VblkCiError):
    """A scenario check did not hold."""

    exit_code = EXIT_FAIL


class GuestCrash(VblkCiError):
    """The console showed a panic, Oops, BUG, WARNING, KASAN report or hung task."""

    exit_code = EXIT_FAIL

    def __init__(self, title: str, excerpt: str):
        self.title = title
        self.excerpt = excerpt
        super().__init__(f"{title}\n{excerpt}")


class QmpError(InfraError):
    """A QMP command failed, timed out, or the monitor connection broke.

    ``error_class`` is QEMU's error class (``GenericError``, ``DeviceNotFound``...),
    or ``Timeout`` / ``Disconnected`` for failures on this side.
    """

    def __init__(self, command: str, error_class: str, message: str):
        self.command = command
        self.error_class = error_class
        super().__init__(f"QMP {command}: {error_class}: {message}")


class MachineTimeout(InfraError):
    """Waiting for the VM (a QMP event, a console line, QEMU's exit) ran out of time."""


class UnplugTimeout(MachineTimeout):
    """device_del was sent and DEVICE_DELETED never came: the guest did not release the
    device. A verdict on the guest kernel (the driver's remove path), not on the machinery,
    for every caller: a check that meets it fails (ScenarioContext.check, runner). It stays a
    MachineTimeout so callers that wait again (``complete_unplug``) still catch it."""

    exit_code = EXIT_FAIL


class ConfigMismatch(VblkCiError):
    """QEMU or the guest shows a disk configuration other than the spec's: nothing was judged."""

    exit_code = EXIT_CONFIG_MISMATCH
