"""The shared body of ``python3 -m vblk_ci.build.kernel|initramfs`` (build.run_builder_cli)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from vblk_ci.build import BuildError, UsageError, add_builder_args, run_builder_cli


@dataclass
class Art:
    path: Path

    def to_json(self) -> dict:
        return {"path": str(self.path)}


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--fail")
    add_builder_args(p, "x")
    return p.parse_args(list(argv))


def _run(args: argparse.Namespace, tmp_path: Path, calls: list) -> int:
    def to_options(a):
        if a.fail == "usage":
            raise UsageError("bad thing")
        return {"fail": a.fail}

    def build(opts, progress):
        calls.append(("build", progress is not None))
        if progress:
            progress("step one")
        if opts["fail"] == "build":
            raise BuildError("make failed (exit 2):\ntail")
        return Art(tmp_path / "out.bin")

    return run_builder_cli("thing", args, to_options, lambda o: "KEY", build,
                           lambda art, od: calls.append(("publish", od)), lambda art: art.path)


def test_builds_prints_the_main_file_and_publishes(tmp_path: Path, capsys) -> None:
    calls: list = []
    assert _run(_args("--output-dir", str(tmp_path / "od")), tmp_path, calls) == 0
    out = capsys.readouterr()
    assert out.out == f"{tmp_path / 'out.bin'}\n"
    assert out.err.startswith("[thing ") and out.err.rstrip().endswith("s] step one")
    assert calls == [("build", True), ("publish", tmp_path / "od")] and (tmp_path / "od").is_dir()


def test_print_key_json_and_quiet(tmp_path: Path, capsys) -> None:
    calls: list = []
    assert _run(_args("--print-key"), tmp_path, calls) == 0 and calls == []
    assert capsys.readouterr().out == "KEY\n"
    assert _run(_args("--json", "-q"), tmp_path, calls) == 0
    out = capsys.readouterr()
    assert json.loads(out.out) == {"path": str(tmp_path / "out.bin")} and out.err == ""
    assert calls == [("build", False)]


def test_usage_error_exit_2_build_error_exit_3(tmp_path: Path, capsys) -> None:
    assert _run(_args("--fail", "usage"), tmp_path, []) == 2
    assert capsys.readouterr().err == "vblk-ci thing build: bad thing\n"
    assert _run(_args("--fail", "build", "-q"), tmp_path, []) == 3
    assert capsys.readouterr().err == "vblk-ci thing build: make failed (exit 2):\ntail\n"
