"""build/exports.py: when a kernel build's kept vmlinux.o may stand in for the gates' own."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from vblk_ci.build import exports

CONFIG = """#
# Automatically generated file; DO NOT EDIT.
# Linux/x86 7.3.4 Kernel Configuration
#
CONFIG_BLOCK=y
CONFIG_VIRTIO_BLK={}
CONFIG_IO_URING=y
"""


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    tree = tmp_path / "tree"
    for rel, text in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text(text)
    subprocess.run(["git", "init", "-q"], cwd=tree, check=True)
    subprocess.run(["git", "add", "-A"], cwd=tree, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "t"], cwd=tree, check=True)
    return tree


def _ident(tmp_path: Path, files: dict[str, str], virtio_blk: str = "m", name: str = "a") -> dict:
    d = tmp_path / name
    d.mkdir()
    tree = _tree(d, files)
    obj = d / "obj"
    obj.mkdir()
    (obj / ".config").write_text(CONFIG.format(virtio_blk))
    return exports.identity(tree, obj, "tarball:abc", "gcc 14", sorted(files))


SERIES = {"drivers/block/virtio_blk.c": "driver v3\n", "block/ioprio.c": "EXPORT_SYMBOL(ioprio_check_cap);\n"}


def _kept(tmp_path: Path, ident: dict) -> Path:
    d = tmp_path / "exports"
    d.mkdir()
    (d / "vmlinux.o").write_bytes(b"\x7fELF")
    (d / "exports.json").write_text(json.dumps(ident))
    return d


def test_the_module_source_and_its_config_line_do_not_count(tmp_path):
    image = _ident(tmp_path, SERIES, virtio_blk="y", name="image")
    gates = _ident(tmp_path, {**SERIES, "drivers/block/virtio_blk.c": "driver v3 + a meta patch\n"}, name="gates")
    assert image == gates
    m = exports.find(_kept(tmp_path, image), gates)
    assert m.vmlinux_o == tmp_path / "exports/vmlinux.o" and m.reason.startswith("the kept vmlinux.o")


def test_a_change_outside_the_module_is_a_mismatch(tmp_path):
    image = _ident(tmp_path, SERIES, name="image")
    other = _ident(tmp_path, {**SERIES, "block/ioprio.c": "/* not exported */\n"}, name="other")
    m = exports.find(_kept(tmp_path, image), other)
    assert m.vmlinux_o is None and "block/ioprio.c" in m.reason
    # A series that touches fewer files (the base's ioprio.c) differs too.
    fewer = _ident(tmp_path, {"drivers/block/virtio_blk.c": "x\n"}, name="fewer")
    assert exports.find(tmp_path / "exports", fewer).vmlinux_o is None


def test_another_config_compiler_or_base_is_a_mismatch(tmp_path):
    image = _ident(tmp_path, SERIES, name="image")
    kept = _kept(tmp_path, image)
    for what, value in (("config", "0" * 64), ("compiler", "gcc 12"), ("base", "tarball:def")):
        m = exports.find(kept, {**image, what: value})
        assert m.vmlinux_o is None and what in m.reason


def test_nothing_kept_says_so(tmp_path):
    ident = _ident(tmp_path, SERIES)
    assert exports.find(None, ident).vmlinux_o is None
    assert "holds no kept vmlinux.o" in exports.find(tmp_path, ident).reason
    (tmp_path / "vmlinux.o").write_bytes(b"")
    (tmp_path / "exports.json").write_text("{")
    assert "not JSON" in exports.find(tmp_path, ident).reason


def test_config_digest_ignores_only_virtio_blk():
    y, m = CONFIG.format("y"), CONFIG.format("m")
    assert exports.config_digest(y) == exports.config_digest(m)
    assert exports.config_digest(y) == exports.config_digest(y.replace("CONFIG_VIRTIO_BLK=y", "# CONFIG_VIRTIO_BLK is not set"))
    assert exports.config_digest(y) != exports.config_digest(y.replace("CONFIG_IO_URING=y", "CONFIG_IO_URING=n"))
