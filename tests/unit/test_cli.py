"""The command line: exit codes and one-line errors (no real QEMU)."""

from __future__ import annotations

import json

import pytest

from vblk_ci import cli
from vblk_ci.errors import InfraError, LaunchFailure
from vblk_ci.result import RunResult


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv("VBLK_CI_KERNEL", raising=False)
    monkeypatch.delenv("VBLK_CI_INITRAMFS", raising=False)


@pytest.fixture
def artifacts(tmp_path):
    kernel, initrd = tmp_path / "bzImage", tmp_path / "initrd.gz"
    kernel.write_bytes(b"k")
    initrd.write_bytes(b"i")
    return kernel, initrd


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.rstrip("\n")


@pytest.mark.parametrize("argv", [
    [], ["bogus"], ["run", "--smp", "zero"], ["run", "--smp", "0"], ["run", "--accel", "hvf"],
    ["run", "--no-such-flag"], ["build"], ["build", "rootfs"], ["build", "kernel", "--jobs", "x"],
    ["build", "kernel", "--base", "7.4"],
])
def test_bad_arguments_exit_2_with_one_line(argv, capsys):
    assert cli.main(argv) == 2
    assert one_line(capsys).startswith("vblk-ci: error: ")


def test_missing_kernel_file(capsys, tmp_path):
    assert cli.main(["run", "--kernel", str(tmp_path / "nope")]) == 2
    assert one_line(capsys) == (
        f"vblk-ci: error: kernel image not found: {tmp_path / 'nope'} (set --kernel or VBLK_CI_KERNEL)")


def test_kernel_from_environment_missing(capsys, monkeypatch):
    monkeypatch.setenv("VBLK_CI_KERNEL", "/does/not/exist")
    assert cli.main(["run"]) == 2
    assert one_line(capsys) == "vblk-ci: error: kernel image not found: /does/not/exist (set --kernel or VBLK_CI_KERNEL)"


def test_no_kernel_at_all(capsys):
    assert cli.main(["run"]) == 2
    assert one_line(capsys) == "vblk-ci: error: no kernel image given (set --kernel or VBLK_CI_KERNEL)"


def test_missing_initramfs(capsys, artifacts, tmp_path):
    kernel, _ = artifacts
    assert cli.main(["run", "--kernel", str(kernel), "--initramfs", str(tmp_path / "none")]) == 2
    assert "initramfs not found" in one_line(capsys)


def test_version(capsys):
    assert cli.main(["version"]) == 0
    assert capsys.readouterr().out.startswith("vblk-ci 0.1.0")


def test_help_exits_0(capsys):
    assert cli.main(["run", "--help"]) == 0
    assert "--kernel" in capsys.readouterr().out


def _fake_run(status: str = "pass", exc: BaseException | None = None, seen: list | None = None):
    def run(plan, emit):
        if seen is not None:
            seen.append(plan)
        if exc is not None:
            raise exc
        return RunResult(status=status, suite=plan.suite, run_dir=str(plan.run_dir))
    return run


def test_a_kernels_own_initramfs_beside_it_comes_before_the_environment(artifacts, monkeypatch, tmp_path):
    # The image's debug kernel has a modular virtio_blk: only the initramfs beside it
    # carries the module, so `--kernel .../debug/bzImage` alone must boot that one.
    seen: list = []
    monkeypatch.setattr("vblk_ci.runner.run", _fake_run("pass", seen=seen))
    _, suites_initrd = artifacts
    monkeypatch.setenv("VBLK_CI_INITRAMFS", str(suites_initrd))
    debug = tmp_path / "debug"
    debug.mkdir()
    (debug / "bzImage").write_bytes(b"k")
    (debug / "initramfs.cpio.gz").write_bytes(b"i+ko")
    assert cli.main(["run", "--kernel", str(debug / "bzImage"), "--out", str(tmp_path / "o1")]) == 0
    assert seen[-1].initramfs == debug / "initramfs.cpio.gz"
    # --initramfs still wins; a kernel with nothing beside it takes $VBLK_CI_INITRAMFS.
    other = tmp_path / "other.gz"
    other.write_bytes(b"o")
    assert cli.main(["run", "--kernel", str(debug / "bzImage"), "--initramfs", str(other),
                     "--out", str(tmp_path / "o2")]) == 0
    assert seen[-1].initramfs == other
    lone = tmp_path / "tree" / "bzImage"
    lone.parent.mkdir()
    lone.write_bytes(b"k")
    assert cli.main(["run", "--kernel", str(lone), "--out", str(tmp_path / "o3")]) == 0
    assert seen[-1].initramfs == suites_initrd


@pytest.mark.parametrize("status, code", [("pass", 0), ("fail", 1), ("error", 125)])
def test_run_maps_verdict_to_exit_code(status, code, artifacts, monkeypatch, tmp_path):
    seen: list = []
    monkeypatch.setattr("vblk_ci.runner.run", _fake_run(status, seen=seen))
    kernel, initrd = artifacts
    monkeypatch.setenv("VBLK_CI_KERNEL", str(kernel))
    monkeypatch.setenv("VBLK_CI_INITRAMFS", str(initrd))
    out = tmp_path / "out"
    assert cli.main(["run", "--out", str(out), "--smp", "3", "--memory", "768", "--accel", "tcg"]) == code
    plan = seen[0]
    assert (plan.kernel, plan.initramfs, plan.run_dir) == (kernel, initrd, out)
    assert (plan.smp, plan.memory_mb, plan.accel, plan.suite) == (3, 768, "tcg", "smoke")


def test_infra_error_is_one_line_exit_3_with_detail_in_run_dir(artifacts, monkeypatch, tmp_path, capsys):
    failure = LaunchFailure("QEMU exited during start-up", ["qemu", "-x"], 1, "qemu: bad option\nmore")
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr("vblk_ci.runner.run", _fake_run(exc=failure))
    kernel, initrd = artifacts
    assert cli.main(["run", "--kernel", str(kernel), "--initramfs", str(initrd), "--out", str(out)]) == 125
    assert one_line(capsys) == "vblk-ci: infrastructure error: QEMU exited during start-up (exit code 1)"
    assert "qemu: bad option" in (out / "run.log").read_text()


def test_generic_infra_error(artifacts, monkeypatch, capsys):
    monkeypatch.setattr("vblk_ci.runner.run", _fake_run(exc=InfraError("docker daemon gone\ntrace")))
    kernel, initrd = artifacts
    assert cli.main(["run", "--kernel", str(kernel), "--initramfs", str(initrd)]) == 125
    assert one_line(capsys) == "vblk-ci: infrastructure error: docker daemon gone"


def test_keyboard_interrupt_is_not_wrapped(artifacts, monkeypatch, capsys):
    monkeypatch.setattr("vblk_ci.runner.run", _fake_run(exc=KeyboardInterrupt()))
    kernel, initrd = artifacts
    assert cli.main(["run", "--kernel", str(kernel), "--initramfs", str(initrd)]) == 130


def test_build_kernel_passes_only_given_options(monkeypatch, capsys, tmp_path):
    from vblk_ci.build import kernel as K

    seen = []

    def fake_build(opts, progress=None):
        seen.append(opts)
        progress("configure")
        return K.KernelArtifact(bzimage=tmp_path / "bzImage", config=tmp_path / ".config",
                                manifest=tmp_path / "m.json", key="k1", built=False, seconds=0.5)
    monkeypatch.setattr(K, "build_kernel", fake_build)
    assert cli.main(["build", "kernel", "--jobs", "4", "--fragment", "a.config", "--fragment", "b.config"]) == 0
    opts = seen[0]
    assert (opts.jobs, opts.fragments, opts.apply_series) == (4, ["a.config", "b.config"], True)
    assert opts.variant == K.KernelBuildOptions().variant  # not given: the builder's default
    out = capsys.readouterr()
    assert json.loads(out.out)["key"] == "k1"
    assert "configure" in out.err


def test_build_kernel_bad_base_fails_before_building(monkeypatch, capsys):
    from vblk_ci.build import kernel as K

    monkeypatch.setattr(K, "build_kernel", lambda *a, **k: pytest.fail("built with a bad base"))
    assert cli.main(["build", "kernel", "--base", "6.1", "--no-series"]) == 2
    assert one_line(capsys) == "vblk-ci: error: unknown kernel base '6.1' (known: 7.3, 6.12)"


def test_build_kernel_base(monkeypatch, capsys, tmp_path):
    from vblk_ci.build import kernel as K

    seen = []
    monkeypatch.setattr(K, "build_kernel", lambda opts, progress=None: seen.append(opts) or K.KernelArtifact(
        bzimage=tmp_path / "bzImage", config=tmp_path / ".config", manifest=tmp_path / "m.json", key="k73",
        built=True, seconds=1.0))
    assert cli.main(["build", "kernel", "--base", "7.3", "--no-series"]) == 0
    assert cli.main(["build", "kernel"]) == 0
    assert (seen[0].base, seen[0].apply_series, seen[0].series_dir) == ("7.3", False, None)
    assert seen[1].base == K.KernelBuildOptions().base
    capsys.readouterr()


def test_build_initramfs(monkeypatch, capsys, tmp_path):
    from vblk_ci.build import initramfs as I

    seen = []

    def fake_build(opts, progress=None):
        seen.append(opts)
        return I.InitramfsArtifact(path=tmp_path / "i.cpio.gz", sha256="0" * 64, size_bytes=1, file_count=1,
                                   manifest=tmp_path / "m.json", key="i1", built=True, seconds=1.0)
    monkeypatch.setattr(I, "build_initramfs", fake_build)
    assert cli.main(["build", "initramfs", "--no-smoke-test", "--compress-level", "1"]) == 0
    assert (seen[0].smoke_test, seen[0].compress_level) == (False, 1)
    assert json.loads(capsys.readouterr().out)["key"] == "i1"


@pytest.mark.parametrize("argv, message", [
    (["run", "--scenario", "no-such"], "unknown scenario 'no-such'"),
    (["run", "--suite", "driver", "--scenario", "smoke"], "give either --suite or --scenario, not both"),
    (["run", "--scenario", "smoke", "--check", " "], "--check needs a non-empty glob"),
    (["run", "--matrix", "m.toml", "--scenario", "smoke"], "--suite, --scenario and --check do not apply"),
])
def test_scenario_and_check_usage_errors_before_a_boot(argv, message, artifacts, monkeypatch, capsys):
    kernel, initrd = artifacts
    monkeypatch.setenv("VBLK_CI_KERNEL", str(kernel))
    monkeypatch.setenv("VBLK_CI_INITRAMFS", str(initrd))
    monkeypatch.setattr("vblk_ci.runner.run", lambda plan, emit: pytest.fail("booted"))
    assert cli.main(argv) == 2
    assert message in one_line(capsys)


def test_scenario_and_check_reach_the_plan(artifacts, monkeypatch, tmp_path):
    seen: list = []
    monkeypatch.setattr("vblk_ci.runner.run", _fake_run(seen=seen))
    kernel, initrd = artifacts
    monkeypatch.setenv("VBLK_CI_KERNEL", str(kernel))
    monkeypatch.setenv("VBLK_CI_INITRAMFS", str(initrd))
    assert cli.main(["run", "--scenario", "driver-bounds", "--scenario", "driver-ioprio",
                     "--check", "*wraps", "--out", str(tmp_path / "o")]) == 0
    plan = seen[0]
    assert plan.scenarios == ("driver-bounds", "driver-ioprio") and plan.checks == ("*wraps",)
    assert plan.label == "driver-bounds,driver-ioprio"


@pytest.mark.parametrize("argv, message", [
    (["run", "--tree", "/nonexistent-tree", "--kernel", "k"], "give either --kernel or --tree, not both"),
    (["build", "kernel", "--tree", "/x", "--base", "7.3"], "--tree builds the tree as it is: --base do not apply"),
    (["bisect", "--tree", "/x", "--good", "a", "--bad", "b", "--suite", "nope"], "unknown suite 'nope'"),
    (["bisect", "--tree", "/x", "--good", "a", "--bad", "b", "--bundle", "/no/bundle"], "no such bundle"),
    (["bisect", "--tree", "/x", "--good", "a", "--bad", "b", "--suite", "smoke", "--scenario", "smoke"],
     "not allowed with argument"),
])
def test_tree_and_bisect_usage_errors_are_one_line_exit_2(argv, message, artifacts, monkeypatch, capsys):
    kernel, initrd = artifacts
    monkeypatch.setenv("VBLK_CI_INITRAMFS", str(initrd))
    assert cli.main(argv) == 2
    assert message in one_line(capsys)


def test_run_tree_builds_then_runs_that_kernel(artifacts, monkeypatch, tmp_path):
    seen: list = []
    kernel, initrd = artifacts
    monkeypatch.setenv("VBLK_CI_INITRAMFS", str(initrd))
    monkeypatch.setattr("vblk_ci.runner.run", _fake_run(seen=seen))
    monkeypatch.setattr(cli, "tree_kernel", lambda tree: kernel if tree == "/my/linux" else pytest.fail(tree))
    assert cli.main(["run", "--tree", "/my/linux", "--scenario", "smoke", "--out", str(tmp_path / "o")]) == 0
    assert seen[0].kernel == kernel
