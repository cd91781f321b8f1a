"""The table of kernel bases (build/bases.py) and the Dockerfile that installs from it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vblk_ci.build import bases as B
from vblk_ci.build import repo_root

ROOT = repo_root()


def test_every_base_follows_debians_linux_source_naming() -> None:
    # The Dockerfile installs B.get_base(KERNEL_BASE).package and the builder reads .tarball:
    # Debian ships /usr/src/linux-source-X.Y.tar.xz in the package linux-source-X.Y.
    assert set(B.BASES) == {"7.3", "6.12"}
    for name, base in B.BASES.items():
        assert base.name == name
        assert base.package == f"linux-source-{name}"
        assert base.tarball == f"/usr/src/linux-source-{name}.tar.xz"
        assert base.suite in ("trixie", "trixie-backports")
        for frag in base.fragments:
            assert (ROOT / "kernel-config" / frag).is_file(), frag
    assert B.BASES["7.3"].suite == "trixie-backports"


def test_default_base_is_in_the_table() -> None:
    assert B.DEFAULT_BASE in B.BASES
    assert B.get_base(None) is B.BASES[B.DEFAULT_BASE]
    assert B.get_base("") is B.BASES[B.DEFAULT_BASE]
    assert B.get_base("7.3").package == "linux-source-7.3"


def test_unknown_base_is_one_line_naming_the_known_ones() -> None:
    with pytest.raises(B.UnknownBase) as e:
        B.get_base("7.4")
    assert str(e.value) == "unknown kernel base '7.4' (known: 7.3, 6.12)"


def _series(root: Path, rel: str) -> None:
    (root / rel).mkdir(parents=True, exist_ok=True)
    (root / rel / "series").write_text("0001-x.patch\n")


def test_each_base_has_its_own_series_dir(tmp_path: Path) -> None:
    b612, b73 = B.BASES["6.12"], B.BASES["7.3"]
    # nothing anywhere: the last candidate (the kernel builder then applies nothing and says so)
    assert b612.series_dir(tmp_path) == tmp_path / "driver" / "6.12"
    _series(tmp_path, "driver")  # the posting series is not the backport's
    assert b612.series_dir(tmp_path) == tmp_path / "driver" / "6.12"
    assert b73.series_dir(tmp_path) == tmp_path / "driver"
    _series(tmp_path, "driver/6.12")
    assert b612.series_dir(tmp_path) == tmp_path / "driver" / "6.12"
    assert b73.series_dir(tmp_path) == tmp_path / "driver"


def test_cli_prints_one_field(capsys) -> None:
    assert B.main(["package", "7.3"]) == 0
    assert B.main(["tarball", "6.12"]) == 0
    assert B.main(["package"]) == 0  # no name: the default base
    out = capsys.readouterr().out.splitlines()
    assert out == ["linux-source-7.3", "/usr/src/linux-source-6.12.tar.xz", f"linux-source-{B.DEFAULT_BASE}"]


@pytest.mark.parametrize("argv, message", [
    (["package", "5.10"], "vblk-ci: unknown kernel base '5.10' (known: 7.3, 6.12)"),
    (["colour", "7.3"], "usage: python3 -m vblk_ci.build.bases package|tarball|suite|name [NAME]"),
    ([], "usage: python3 -m vblk_ci.build.bases package|tarball|suite|name [NAME]"),
])
def test_cli_errors_exit_2_with_one_line(argv, message, capsys) -> None:
    assert B.main(argv) == 2
    assert capsys.readouterr().err == message + "\n"


def test_dockerfile_takes_every_kernel_choice_from_the_table() -> None:
    text = (ROOT / "Dockerfile").read_text()
    # One switch: the image's default is bases.DEFAULT_BASE (an empty KERNEL_BASE).
    assert re.search(r"^ARG KERNEL_BASE=$", text, re.M)
    assert 'python3 /tmp/bases.py package "$KERNEL_BASE"' in text
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "linux-source-6.12" not in code and "linux-source-7.3" not in code  # no package named by hand
    # Every kernel stage passes the base on, and redeclares the ARG (an ARG is per stage).
    stages = re.findall(r"^FROM kernel-toolchain AS (\S+)\n((?:(?!^FROM ).*\n)*)", text, re.M)
    assert {name for name, _ in stages} == {"kernel", "kernel-debug", "kernel-coverage", "gates"}
    for name, body in stages:
        assert "ARG KERNEL_BASE\n" in body, name
        if name == "gates":  # its entrypoint (quality.py) reads the base from the environment
            assert "ENV VBLK_CI_KERNEL_BASE=${KERNEL_BASE}" in body
        else:
            assert '--base "$KERNEL_BASE"' in body, name
    # trixie-backports is added for 7.3 and QEMU 11.1; QEMU's suite is a build argument.
    assert "trixie-backports main" in text
    assert re.search(r"^ARG QEMU_SUITE=trixie$", text, re.M)
    assert '-t "$QEMU_SUITE"' in text


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_docker_build_helper_passes_build_args() -> None:
    # ./appliance --kernel-base B --qemu-suite S -> vblk_docker_build TAG TARGET KERNEL_BASE=B QEMU_SUITE=S
    script = (". ci/setup-host.sh; vblk_buildkit_client() { echo echo; }; vblk_wheels() { :; }; "
              "vblk_docker_build t appliance KERNEL_BASE=7.3 QEMU_SUITE=trixie-backports; vblk_docker_build t2 appliance")
    out = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    builds = [line for line in out.splitlines() if line.startswith("build ")]
    assert builds == [
        "build --progress=plain --network host --target appliance --build-arg KERNEL_BASE=7.3 "
        "--build-arg QEMU_SUITE=trixie-backports -t t .",
        "build --progress=plain --network host --target appliance -t t2 .",
    ]
