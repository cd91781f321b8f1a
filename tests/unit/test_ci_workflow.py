"""The GitHub workflow's suite steps are real vblk-ci command lines: each parses with the
CLI's own parser, names a known suite, and points at files the image ships."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from vblk_ci.cli import build_parser
from vblk_ci.scenarios import SUITES

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / "ci" / "github" / "vblk-ci.yml"
DOCKERFILE = (ROOT / "Dockerfile").read_text()
STEPS = re.findall(r"run: ci/github/run-in-image (.+)", WORKFLOW.read_text())


def test_workflow_runs_every_ci_suite():
    names = [shlex.split(s)[0] for s in STEPS]
    assert len(names) == len(set(names)), "each step needs its own out/ folder"
    suites = {a.split()[a.split().index("--suite") + 1] for a in STEPS if "--suite" in a}
    assert {"smoke", "driver", "hotplug", "faults", "inject"} <= suites
    assert any("--matrix" in s for s in STEPS) and any(shlex.split(s)[1] == "bench" for s in STEPS)


@pytest.mark.parametrize("step", STEPS)
def test_step_parses_and_its_files_are_in_the_image(step):
    name, *argv = shlex.split(step)
    args = build_parser().parse_args([*argv, "--out", f"/out/{name}"])
    if getattr(args, "suite", None) and not getattr(args, "matrix", None) and args.command == "run":
        assert args.suite in SUITES
    for path in [a for a in argv if a.startswith("/opt/vblk-ci/")]:
        rel = path.removeprefix("/opt/vblk-ci/")
        shipped = {"debug/bzImage": "COPY --from=kernel-debug /artifacts/ /opt/vblk-ci/debug/",
                   "ci/matrix-default.toml": "ci/matrix-default.toml"}
        assert rel in shipped and shipped[rel] in DOCKERFILE, path
        if rel == "debug/bzImage" and "--initramfs" not in argv:
            # Its virtio_blk is a module: the run boots the initramfs beside it, which must exist.
            assert "> /opt/vblk-ci/debug/initramfs.cpio.gz" in DOCKERFILE


def test_the_build_step_makes_the_target_that_ships_the_debug_kernel():
    # The default target has no debug kernel (the first verdict must not wait for it).
    build = re.search(r"vblk_docker_build ([\w.:-]+) ([\w-]+)", WORKFLOW.read_text())
    assert build, "the workflow builds through ci/setup-host.sh's vblk_docker_build"
    uses_debug = any("/opt/vblk-ci/debug/" in s for s in STEPS)
    assert not uses_debug or build.group(2) == "appliance-debug"
    assert re.search(r"^FROM runtime AS appliance-debug$", DOCKERFILE, re.M)
    # A plain `docker build .` makes the last stage: the smoke-ready image without the debug kernel.
    assert DOCKERFILE.rstrip().splitlines()[-1] == "FROM runtime AS appliance"


def test_suite_steps_run_strict():
    suites = [s for s in STEPS if "--suite" in s]
    assert suites and all("--strict" in s for s in suites), suites


def test_series_gates_run_on_every_base_in_their_own_job():
    import yaml

    from vblk_ci.build.bases import BASES

    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    gate_jobs = [j for j in jobs.values() if any("vblk_ci.cli gates" in s.get("run", "") for s in j["steps"])]
    assert len(gate_jobs) == 1, "one job runs the series gates"
    job = gate_jobs[0]
    assert sorted(job["strategy"]["matrix"]["base"]) == sorted(BASES)
    assert job["strategy"].get("fail-fast") is False, "one base failing must not hide the other's verdict"
    step = next(s for s in job["steps"] if "vblk_ci.cli gates" in s.get("run", ""))
    line = next(ln for ln in step["run"].splitlines() if "vblk_ci.cli gates" in ln)
    argv = shlex.split(line.replace("${{ matrix.base }}", "7.3"))
    args = build_parser().parse_args(argv[argv.index("gates"):])
    assert args.command == "gates" and args.base == ["7.3"] and args.where == "docker"
    assert re.search(r"^FROM kernel-toolchain AS gates$", DOCKERFILE, re.M)
