"""Choose the accelerator: KVM only when it demonstrably runs a guest, else TCG.

Opening /dev/kvm proves little (a paravirtual nested KVM answers the API version
and then fails every real guest), so the probe boots the run's own kernel under
KVM with no initrd, and accepts KVM only if the console shows the kernel running
(``Linux version`` and then later progress, typically the no-init panic) before
a deadline. Any other outcome falls back to TCG with the reason. One probe per
(qemu, kernel) per process; ``VBLK_CI_ACCEL=tcg|kvm`` overrides.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

ENV_OVERRIDE = "VBLK_CI_ACCEL"
PROBE_DEADLINE_S = 15.0
KVM_DEV = "/dev/kvm"

# Seen only when the guest kernel really executes: early boot lines after the banner.
_BANNER = re.compile(r"Linux version \S+")
_PROGRESS = re.compile(
    r"Kernel panic - not syncing|Run /\S+ as init process|Freeing unused kernel|"
    r"clocksource: Switched to clocksource|VFS: Cannot open root device"
)
_KVM_BROKEN = re.compile(r"KVM internal error|emulation failure|failed to set MSR|kvm run failed", re.I)


@dataclass(frozen=True)
class Accel:
    name: str  # "tcg" | "kvm"
    reason: str


_cache: dict[str, Accel] = {}
_cache_lock = threading.Lock()


def kvm_device_usable(dev: str = KVM_DEV) -> str | None:
    """``None`` if /dev/kvm opens read-write, else why not."""
    try:
        fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"{dev}: {exc.strerror}"
    os.close(fd)
    return None


def probe_argv(qemu: str, kernel: Path) -> list[str]:
    return [
        qemu, "-accel", "kvm", "-M", "q35", "-cpu", "host", "-smp", "1", "-m", "256",
        "-nodefaults", "-no-reboot", "-display", "none", "-nic", "none", "-serial", "stdio",
        "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1",
    ]


def judge_probe(output: str, exitcode: int | None, timed_out: bool) -> str | None:
    """Pure: ``None`` if the probe output shows a guest running under KVM, else the reason."""
    broken = _KVM_BROKEN.search(output)
    if broken:
        return f"KVM cannot run guests here ({broken.group(0)})"
    banner = _BANNER.search(output)
    if banner and _PROGRESS.search(output, banner.end()):
        return None
    if timed_out:
        return "a probe guest under KVM made no boot progress before the deadline"
    last = output.strip().splitlines()[-1:] or ["no output"]
    return f"the KVM probe guest exited ({exitcode}) without booting: {last[0][:160]}"


def run_probe(qemu: str, kernel: Path, deadline_s: float = PROBE_DEADLINE_S) -> str | None:
    """Boot ``kernel`` under KVM; ``None`` when it ran, else the reason it did not."""
    try:
        proc = subprocess.Popen(
            probe_argv(qemu, kernel),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
    except OSError as exc:
        return f"cannot start {qemu}: {exc}"
    chunks: list[bytes] = []

    def read() -> None:
        assert proc.stdout is not None
        while data := proc.stdout.read1(4096):
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    end = time.monotonic() + deadline_s
    verdict: str | None = "probe did not finish"
    timed_out = False
    try:
        while True:
            text = b"".join(chunks).decode("utf-8", "replace")
            exitcode = proc.poll()
            timed_out = time.monotonic() >= end
            if judge_probe(text, None, False) is None or _KVM_BROKEN.search(text):
                verdict = judge_probe(text, exitcode, False)
                break
            if exitcode is not None or timed_out:
                reader.join(1.0)
                text = b"".join(chunks).decode("utf-8", "replace")
                verdict = judge_probe(text, exitcode, timed_out)
                break
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        reader.join(1.0)
        if proc.stdout:
            proc.stdout.close()
    return verdict


def choose(qemu: str, kernel: Path, requested: str = "auto") -> Accel:
    """``requested`` is auto|tcg|kvm; the environment variable wins over it."""
    env = os.environ.get(ENV_OVERRIDE, "").strip().lower()
    if env:
        if env not in ("tcg", "kvm"):
            raise UsageError(f"{ENV_OVERRIDE}={env!r}: expected tcg or kvm")
        return Accel(env, f"forced by {ENV_OVERRIDE}")
    if requested in ("tcg", "kvm"):
        return Accel(requested, "requested")
    if requested != "auto":
        raise UsageError(f"--accel {requested!r}: expected auto, tcg or kvm")
    # Whether KVM works is a property of this host and QEMU, not of the kernel
    # under test: probe once per binary per process.
    key = qemu
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        why_not = kvm_device_usable()
        if why_not is None:
            why_not = run_probe(qemu, kernel)
        accel = Accel("tcg", why_not) if why_not else Accel("kvm", "a probe guest booted under KVM")
        _cache[key] = accel
        return accel
