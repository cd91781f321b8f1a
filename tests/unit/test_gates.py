"""vblk_ci.gates: where each base's series gates run, the container's argv, its report back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vblk_ci import gates
from vblk_ci.build import BuildError
from vblk_ci.build.quality import QualityReport
from vblk_ci.errors import InfraError, MissingPrerequisite


def test_docker_argv_mounts_checkout_series_and_cache_and_asks_for_json(tmp_path):
    repo, series = tmp_path / "repo", tmp_path / "repo/driver/6.12"
    series.mkdir(parents=True)
    assert gates.docker_run_argv("6.12", series, repo) == [
        "docker", "run", "--rm", "--network", "none",
        "-v", f"{repo}:/src:ro", "-v", f"{series}:/series:ro", "-v", "vblk-ci-gates-6.12:/cache",
        "vblk-ci-gates:6.12", "--base", "6.12", "--series-dir", "/series", "--json"]
    assert gates.docker_run_argv("7.3", series, repo, jobs=2)[-2:] == ["--jobs", "2"]


def test_image_is_the_gates_stage_built_for_the_base():
    argv = gates.image_build_argv("6.12")
    assert argv[:2] == ["bash", "-c"] and "vblk_docker_build" in argv[2] and " gates " in argv[2]
    assert argv[3:] == ["vblk-ci-gates:6.12", "6.12"]
    # The default base as the appliance image is built (empty KERNEL_BASE): they share stages.
    assert gates.image_build_argv("7.3")[3:] == ["vblk-ci-gates:7.3", ""]


def test_image_is_brought_up_to_date_once_per_process(monkeypatch, tmp_path):
    calls = []

    class Done:
        returncode, stdout = 0, ""

    monkeypatch.setattr(gates, "_built", set())
    monkeypatch.setattr(gates.subprocess, "run", lambda argv, **kw: calls.append(argv) or Done())
    assert gates.ensure_image("6.12", tmp_path) == "vblk-ci-gates:6.12"
    assert gates.ensure_image("6.12", tmp_path) == "vblk-ci-gates:6.12"
    assert len(calls) == 1 and calls[0] == gates.image_build_argv("6.12")


def test_placement_host_only_with_tarball_and_tools(monkeypatch):
    monkeypatch.setattr(gates, "host_missing", lambda base: [] if base == "6.12" else ["/usr/src/linux-source-7.3.tar.xz"])
    assert gates.place("6.12").where == "host"
    p = gates.place("7.3")
    assert p.where == "docker" and "linux-source-7.3.tar.xz" in p.reason
    assert gates.place("7.3", "host").where == "host"
    assert gates.place("6.12", "docker").where == "docker"
    with pytest.raises(ValueError):
        gates.place("7.3", "elsewhere")


def test_host_missing_names_the_bases_tarball(monkeypatch):
    monkeypatch.setattr(gates.shutil, "which", lambda tool: "/usr/bin/" + tool)
    monkeypatch.setattr(gates.Path, "is_file", lambda self: False)
    assert gates.host_missing("7.3") == ["/usr/src/linux-source-7.3.tar.xz"]


def test_container_report_or_the_reason_it_has_none():
    report = QualityReport(base="tarball:x", applies=True, module_linked=True)
    assert gates.report_from_container(0, json.dumps(report.to_json()), "") == report
    assert gates.report_from_container(1, json.dumps({**report.to_json(), "w1": ["w"]}), "").w1 == ["w"]
    with pytest.raises(InfraError, match="without a JSON report"):
        gates.report_from_container(1, "", "boom")
    with pytest.raises(BuildError, match="does not apply"):
        gates.report_from_container(3, "", "vblk-ci: quality: patch 1/1 x does not apply (git am)")
    with pytest.raises(MissingPrerequisite, match="sparse is not installed"):
        gates.report_from_container(2, "", "vblk-ci: quality: sparse is not installed")
    with pytest.raises(InfraError, match="exited 125"):
        gates.report_from_container(125, "", "docker: error")


def test_cli_gates_runs_each_base_and_exits_on_the_verdict(monkeypatch, tmp_path, capsys):
    from vblk_ci.build.bases import BASES, DEFAULT_BASE
    from vblk_ci.cli import main

    calls = []

    def fake(base, series_dir, where, progress):
        calls.append((base, series_dir, where))
        return QualityReport(base=base, applies=True, module_linked=base != "6.12"), gates.Placement("docker", "x")

    monkeypatch.setattr(gates, "run_gates", fake)
    out = tmp_path / "g.json"
    assert main(["gates", "--json", str(out)]) == 1  # 6.12's module did not link
    assert [c[0] for c in calls] == list(BASES) and json.loads(out.read_text())["6.12"]["clean"] is False
    assert "NOT LINKED" in capsys.readouterr().out
    calls.clear()
    # A series directory is one base's: without --base, the default one only.
    assert main(["gates", "--series-dir", str(tmp_path), "--where", "host"]) == (0 if DEFAULT_BASE != "6.12" else 1)
    assert calls == [(DEFAULT_BASE, Path(tmp_path), "host")]
