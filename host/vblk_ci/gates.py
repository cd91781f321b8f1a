"""The series gates (build/quality.py) where the base's source is.

On the host when it has the base's tarball (``/usr/src/linux-source-<base>.tar.xz``)
and the tools; otherwise in a container of the image's ``gates`` stage (the
kernel-toolchain stage, which installs the base's linux-source package, plus
sparse), built with ``KERNEL_BASE=<base>``.  The container gets the checkout
read-only on /src (so the gates and the series are the checkout's, and an edit
needs no image rebuild), the series directory on /series, and a named volume on
/cache for the trees and objects; it prints the report as JSON, which comes back
as a QualityReport.  ``vblk-ci gates`` and tests/kernel/test_series_gates.py use this.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .build import BuildError, repo_root
from .build import bases as _bases
from .build.quality import QualityReport
from .errors import InfraError, MissingPrerequisite

#: What the host needs to run the gates itself (besides the base's tarball).
HOST_TOOLS = ("sparse", "perl", "make", "gcc", "flex", "bison", "bc", "git")
Progress = Callable[[str], None]


def image_tag(base: str) -> str:
    """The gates image of *base*: ``vblk-ci-gates:<base>``."""
    return f"vblk-ci-gates:{base}"


def cache_volume(base: str) -> str:
    """The docker volume that keeps *base*'s trees and objects between runs."""
    return f"vblk-ci-gates-{base}"


def host_missing(base: str) -> list[str]:
    """What this host lacks to run *base*'s gates itself; empty when it has everything."""
    missing = [t for t in HOST_TOOLS if shutil.which(t) is None]
    tarball = _bases.get_base(base).tarball
    if not Path(tarball).is_file():
        missing.append(tarball)
    return missing


@dataclass(frozen=True)
class Placement:
    """Where the gates of one base run, and why there."""

    where: str  # "host" or "docker"
    reason: str


def place(base: str, where: str = "auto") -> Placement:
    """Host when asked, or (auto) when it has the tarball and the tools; docker otherwise."""
    missing = host_missing(base)
    if where == "host" or (where == "auto" and not missing):
        return Placement("host", "asked for" if where == "host" else "the host has the tarball and the tools")
    if where not in ("auto", "docker"):
        raise ValueError(f"where must be auto, host or docker, not {where!r}")
    return Placement("docker", "asked for" if where == "docker" else "the host lacks " + ", ".join(missing))


def docker_run_argv(base: str, series_dir: Path, repo: Path, *, image: str | None = None,
                    volume: str | None = None, jobs: int | None = None, docker: str = "docker") -> list[str]:
    """The ``docker run`` that runs *base*'s gates on *series_dir* and prints the JSON report."""
    argv = [docker, "run", "--rm", "--network", "none",
            "-v", f"{repo.resolve()}:/src:ro",
            "-v", f"{series_dir.resolve()}:/series:ro",
            "-v", f"{volume or cache_volume(base)}:/cache",
            image or image_tag(base),
            "--base", base, "--series-dir", "/series", "--json"]
    if jobs:
        argv += ["--jobs", str(jobs)]
    return argv


def image_build_argv(base: str, tag: str | None = None) -> list[str]:
    """Build the gates image of *base* the way every image here is built (BuildKit, setup-host.sh).
    The default base is passed as an empty KERNEL_BASE, as the appliance image is built, so the
    two share their stages: the gates image takes the default kernel's kept vmlinux.o (exports.py)."""
    arg = "" if base == _bases.DEFAULT_BASE else base
    return ["bash", "-c", 'source ci/setup-host.sh && vblk_docker_build "$0" gates "KERNEL_BASE=$1"',
            tag or image_tag(base), arg]


#: Gates images brought up to date by this process (a build that changes nothing takes seconds).
_built: set[str] = set()


def ensure_image(base: str, repo: Path, progress: Progress | None = None, docker: str = "docker") -> str:
    """The gates image of *base*, built (or brought up to date with the checkout) once per process:
    an image left from an older checkout would check the series with an older toolchain stage."""
    tag = image_tag(base)
    if tag in _built:
        return tag
    if progress:
        progress(f"building {tag} (Dockerfile stage gates, KERNEL_BASE={base}; seconds when up to date, "
                 "cold one kernel compile)")
    proc = subprocess.run(image_build_argv(base), cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace", stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise InfraError(f"building {tag} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
    _built.add(tag)
    return tag


def report_from_container(rc: int, stdout: str, stderr_tail: str) -> QualityReport:
    """The report a gates container printed: exit 0 (clean) or 1 (a gate failed) with JSON;
    any other exit, or no JSON, is the container's own failure (its stderr's tail says why)."""
    if rc in (0, 1):
        try:
            return QualityReport.from_json(json.loads(stdout))
        except (ValueError, TypeError) as e:
            raise InfraError(f"gates container exited {rc} without a JSON report ({e}):\n{stderr_tail}") from e
    if rc == 2:
        raise MissingPrerequisite(f"gates container: {stderr_tail.strip().splitlines()[-1] if stderr_tail.strip() else rc}")
    if rc == 3:  # a BuildError there (e.g. a patch that does not apply): the same here
        raise BuildError(f"gates container: {stderr_tail}")
    raise InfraError(f"gates container exited {rc}:\n{stderr_tail}")


def run_in_docker(base: str, series_dir: Path, repo: Path | None = None, progress: Progress | None = None,
                  jobs: int | None = None, docker: str = "docker") -> QualityReport:
    """Run *base*'s gates in its container; stderr (the gates' progress) goes to *progress*."""
    repo = repo or repo_root()
    if shutil.which(docker) is None:
        raise MissingPrerequisite(f"{docker} is not installed: the gates of {base} need its image")
    ensure_image(base, repo, progress, docker)
    argv = docker_run_argv(base, series_dir, repo, jobs=jobs, docker=docker)
    tail: deque[str] = deque(maxlen=40)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
                            stdin=subprocess.DEVNULL)
    assert proc.stderr is not None and proc.stdout is not None
    for line in proc.stderr:
        tail.append(line.rstrip("\n"))
        if progress:
            progress(line.rstrip("\n"))
    stdout = proc.stdout.read()
    return report_from_container(proc.wait(), stdout, "\n".join(tail))


def run_gates(base: str, series_dir: Path | None = None, where: str = "auto", progress: Progress | None = None,
              cache_dir: str | None = None, jobs: int | None = None) -> tuple[QualityReport, Placement]:
    """*base*'s gates on *series_dir* (default the base's series), where ``place`` says."""
    from .build import kernel as K
    from .build.quality import check_series

    repo = repo_root()
    series_dir = series_dir or _bases.get_base(base).series_dir(repo)
    placement = place(base, where)
    if progress:
        progress(f"gates {base} on {series_dir}: {placement.where} ({placement.reason})")
    if placement.where == "host":
        opts = K.KernelBuildOptions(base=base, series_dir=str(series_dir), cache_dir=cache_dir, jobs=jobs)
        return check_series(opts, progress), placement
    return run_in_docker(base, Path(series_dir), repo, progress, jobs), placement


def _stderr(msg: str) -> None:
    print(f"[gates] {msg}", file=sys.stderr, flush=True)


def default_progress() -> Progress | None:
    """Progress on stderr unless VBLK_CI_QUIET is set."""
    return None if os.environ.get("VBLK_CI_QUIET") else _stderr
