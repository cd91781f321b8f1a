"""build/tree.py: a user's kernel tree, checked before anything is built."""

from __future__ import annotations

from pathlib import Path

import pytest

from vblk_ci.build import UsageError
from vblk_ci.build.tree import TreeBuildOptions, base_for_version, build_tree_kernel, tree_id, tree_version


def fake_tree(root: Path, version: int = 7, patchlevel: int = 3) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Makefile").write_text(f"# SPDX-License-Identifier: GPL-2.0\nVERSION = {version}\nPATCHLEVEL = {patchlevel}\n"
                                   "SUBLEVEL = 4\nEXTRAVERSION =\nNAME = Baby Opossum Posse\n")
    (root / "Kconfig").write_text("mainmenu \"Linux\"\n")
    return root


def test_version_from_the_makefile(tmp_path):
    assert tree_version(fake_tree(tmp_path / "a", 6, 12)) == (6, 12)
    with pytest.raises(UsageError, match="no Makefile: not a kernel source tree"):
        tree_version(tmp_path)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "Makefile").write_text("all:\n\ttrue\n")
    with pytest.raises(UsageError, match="names no kernel version"):
        tree_version(tmp_path / "b")


@pytest.mark.parametrize("version, base", [((7, 3), "7.3"), ((7, 4), "7.3"), ((8, 0), "7.3"), ((6, 12), "6.12"),
                                           ((6, 18), "6.12"), ((7, 0), "6.12")])
def test_the_newest_base_not_newer_than_the_tree(version, base):
    assert base_for_version(version).name == base


def test_a_tree_older_than_every_base_is_refused():
    with pytest.raises(UsageError, match=r"Linux 6\.1 is older than every supported base \(oldest 6\.12\)"):
        base_for_version((6, 1))


def test_an_in_tree_build_is_refused_before_anything_runs(tmp_path):
    tree = fake_tree(tmp_path / "linux")
    (tree / ".config").write_text("CONFIG_X=y\n")
    with pytest.raises(UsageError, match="in-tree .config.*make mrproper"):
        build_tree_kernel(TreeBuildOptions(tree=str(tree), cache_dir=str(tmp_path / "cache")))
    with pytest.raises(UsageError, match="no such directory"):
        build_tree_kernel(TreeBuildOptions(tree=str(tmp_path / "none")))


def test_tree_id_is_per_resolved_path(tmp_path):
    a = fake_tree(tmp_path / "a")
    (tmp_path / "link").symlink_to(a)
    assert tree_id(a) == tree_id(tmp_path / "link") != tree_id(fake_tree(tmp_path / "b"))
