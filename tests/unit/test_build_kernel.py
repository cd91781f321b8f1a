"""Kernel builder: cache key, series parsing, fragment verification, series application.

No kernel is compiled here: the git part runs on a tiny fake source tarball.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from vblk_ci.build import BuildError
from vblk_ci.build import kernel as K

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")


def _series(d: Path, lines: list[str], patches: dict[str, str]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "series").write_text("\n".join(lines) + "\n")
    for name, body in patches.items():
        (d / name).write_text(body)
    return d


def _key(opts: K.KernelBuildOptions, **kw) -> str:
    patches = K.parse_series(opts.series_dir) if opts.apply_series else []
    return K.compute_key(
        opts,
        base_identity=kw.get("base", "tarball:abc"),
        patches=patches,
        fragments=[Path(f) for f in opts.fragments or []],
        compiler=kw.get("compiler", "gcc (Debian 12.2.0-14) 12.2.0"),
    )


@pytest.fixture
def inputs(tmp_path: Path) -> K.KernelBuildOptions:
    series = _series(tmp_path / "driver", ["0001-a.patch", "0002-b.patch"],
                     {"0001-a.patch": "patch a\n", "0002-b.patch": "patch b\n"})
    frag = tmp_path / "base.config"
    frag.write_text("CONFIG_VIRTIO_BLK=y\n")
    return K.KernelBuildOptions(series_dir=str(series), fragments=[str(frag)], cache_dir=str(tmp_path / "cache"))


# --------------------------------------------------------------------------- key


def test_key_is_stable_when_nothing_changes(inputs: K.KernelBuildOptions) -> None:
    assert _key(inputs) == _key(inputs)


def test_key_changes_with_a_patch(inputs: K.KernelBuildOptions) -> None:
    before = _key(inputs)
    p = Path(inputs.series_dir) / "0002-b.patch"
    p.write_text("patch b, v2\n")
    assert _key(inputs) != before
    p.write_text("patch b\n")
    assert _key(inputs) == before


def test_key_changes_with_patch_order(inputs: K.KernelBuildOptions) -> None:
    before = _key(inputs)
    (Path(inputs.series_dir) / "series").write_text("0002-b.patch\n0001-a.patch\n")
    assert _key(inputs) != before


def test_key_ignores_series_comments_and_mtimes(inputs: K.KernelBuildOptions) -> None:
    before = _key(inputs)
    s = Path(inputs.series_dir) / "series"
    s.write_text("# the series\n\n0001-a.patch   # first\n0002-b.patch -p1\n")
    os.utime(Path(inputs.series_dir) / "0001-a.patch", (1, 1))
    assert _key(inputs) == before


def test_key_changes_with_a_fragment(inputs: K.KernelBuildOptions) -> None:
    before = _key(inputs)
    Path(inputs.fragments[0]).write_text("CONFIG_VIRTIO_BLK=m\n")
    assert _key(inputs) != before


def test_key_changes_with_variant_module_compiler_base_and_make_args(inputs: K.KernelBuildOptions) -> None:
    base = _key(inputs)
    keys = {
        base,
        _key(K.KernelBuildOptions(**{**inputs.__dict__, "variant": "debug"})),
        _key(K.KernelBuildOptions(**{**inputs.__dict__, "virtio_blk_module": True})),
        _key(K.KernelBuildOptions(**{**inputs.__dict__, "make_args": ["W=1"]})),
        _key(inputs, compiler="gcc 14"),
        _key(inputs, base="tarball:def"),
        _key(K.KernelBuildOptions(**{**inputs.__dict__, "apply_series": False})),
    }
    assert len(keys) == 7


def test_key_ignores_unrelated_files_in_the_series_dir(inputs: K.KernelBuildOptions) -> None:
    before = _key(inputs)
    (Path(inputs.series_dir) / "0000-cover-letter.patch").write_text("cover letter\n")
    (Path(inputs.series_dir) / "README").write_text("notes\n")
    assert _key(inputs) == before


@needs_gcc
def test_kernel_key_end_to_end_uses_tarball_hash(inputs: K.KernelBuildOptions, tmp_path: Path) -> None:
    tb = tmp_path / "linux.tar.xz"
    tb.write_bytes(b"not really a tarball")
    inputs.source_tarball = str(tb)
    k1 = K.kernel_key(inputs)
    assert k1 == K.kernel_key(inputs)
    tb.write_bytes(b"another tarball")
    assert K.kernel_key(inputs) != k1


def test_missing_tarball_is_a_build_error(inputs: K.KernelBuildOptions, tmp_path: Path) -> None:
    inputs.source_tarball = str(tmp_path / "nope.tar.xz")
    with pytest.raises(BuildError, match="nope.tar.xz"):
        K.kernel_key(inputs)


# --------------------------------------------------------------------------- series


def test_series_parsing_ignores_comments_blank_lines_and_options(tmp_path: Path) -> None:
    d = _series(tmp_path, ["# comment", "", "  0001-x.patch  ", "0002-y.patch -p1 # trailing", "   # indented"],
                {"0001-x.patch": "x", "0002-y.patch": "y"})
    assert [p.name for p in K.parse_series(d)] == ["0001-x.patch", "0002-y.patch"]


def test_missing_patch_file_is_named(tmp_path: Path) -> None:
    d = _series(tmp_path, ["0001-x.patch", "0002-gone.patch"], {"0001-x.patch": "x"})
    with pytest.raises(BuildError, match="0002-gone.patch"):
        K.parse_series(d)


@pytest.mark.parametrize("setup", ["no-dir", "no-series", "empty", "only-comments"])
def test_no_or_empty_series_means_no_patches(tmp_path: Path, setup: str) -> None:
    d = tmp_path / "driver"
    if setup != "no-dir":
        d.mkdir()
        (d / "0001-x.patch").write_text("x")
    if setup == "empty":
        (d / "series").write_text("")
    if setup == "only-comments":
        (d / "series").write_text("# nothing yet\n\n")
    assert K.parse_series(d) == []
    assert K.parse_series(None) == []


def test_variant_fragments(tmp_path: Path) -> None:
    (tmp_path / "base.config").write_text("CONFIG_A=y\n")
    assert K.variant_fragments("default", tmp_path) == [tmp_path / "base.config"]
    assert K.variant_fragments("debug", tmp_path) == [tmp_path / "base.config"]
    (tmp_path / "debug.config").write_text("CONFIG_KASAN=y\n")
    assert K.variant_fragments("debug", tmp_path) == [tmp_path / "base.config", tmp_path / "debug.config"]


def test_missing_fragment_is_a_build_error(tmp_path: Path) -> None:
    opts = K.KernelBuildOptions(fragments=[str(tmp_path / "gone.config")])
    with pytest.raises(BuildError, match="gone.config"):
        K.resolve_fragments(opts)


# --------------------------------------------------------------------------- fragment verification

FAKE_CONFIG = """\
#
# Automatically generated file; DO NOT EDIT.
#
CONFIG_64BIT=y
CONFIG_SMP=y
CONFIG_NR_CPUS=8
CONFIG_VIRTIO_BLK=m
CONFIG_CMDLINE="console=ttyS0"
# CONFIG_KASAN is not set
CONFIG_PANIC_TIMEOUT=-1
"""


def test_verify_config_accepts_what_landed() -> None:
    req = K.requested_options([
        "CONFIG_64BIT=y\nCONFIG_SMP=y\nCONFIG_NR_CPUS=8\nCONFIG_PANIC_TIMEOUT=-1\n"
        "# CONFIG_KASAN is not set\nCONFIG_DEBUG_INFO=n\nCONFIG_CMDLINE=\"console=ttyS0\"\n",
        K.MODULE_FRAGMENT,
    ])
    assert K.verify_config(req, FAKE_CONFIG) == []


def test_verify_config_reports_dropped_options() -> None:
    req = K.requested_options(["CONFIG_SMP=y\nCONFIG_HOTPLUG_PCI_ACPI=y\nCONFIG_VIRTIO_BLK=y\nCONFIG_NR_CPUS=4\n"
                               "# CONFIG_64BIT is not set\n"])
    problems = K.verify_config(req, FAKE_CONFIG)
    text = "\n".join(problems)
    assert "CONFIG_HOTPLUG_PCI_ACPI: requested y, got not set" in text
    assert "CONFIG_VIRTIO_BLK: requested y, got m" in text
    assert "CONFIG_NR_CPUS: requested 4, got 8" in text
    assert "CONFIG_64BIT: requested n, got y" in text
    assert not any(p.startswith("CONFIG_SMP") for p in problems)
    assert len(problems) == 4


def test_later_fragments_override_earlier_ones() -> None:
    req = K.requested_options(["CONFIG_VIRTIO_BLK=y\n", "CONFIG_VIRTIO_BLK=m\n"])
    assert req == {"CONFIG_VIRTIO_BLK": "m"}


def test_real_base_config_parses() -> None:
    base = K.variant_fragments("default")[0]
    req = K.requested_options([base.read_text()])
    assert req["CONFIG_VIRTIO_BLK"] == "y"
    assert req["CONFIG_IO_URING"] == "y"


# --------------------------------------------------------------------------- the git tree


def _fake_tarball(tmp_path: Path) -> Path:
    src = tmp_path / "src" / "linux-source-6.12"
    (src / "drivers" / "block").mkdir(parents=True)
    (src / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 117\nEXTRAVERSION =\n")
    (src / "drivers" / "block" / "virtio_blk.c").write_text("int virtblk;\n")
    (src / "README").write_text("readme\n")
    # Debian's block that makes `git add -A` add nothing
    (src / ".gitignore").write_text("*.o\n/*\n!/debian/\n")
    tb = tmp_path / "linux-source-6.12.tar.xz"
    with tarfile.open(tb, "w:xz") as t:
        t.add(src, arcname="linux-source-6.12")
    return tb


def _make_patch(tmp_path: Path, tb: Path, name: str, new_text: str,
                rel: str = "drivers/block/virtio_blk.c") -> Path:
    """A git format-patch style patch changing *rel* (virtio_blk.c) to *new_text*."""
    work = tmp_path / f"mk-{name}"
    work.mkdir()
    with tarfile.open(tb) as t:
        t.extractall(work, filter="data") if hasattr(tarfile, "data_filter") else t.extractall(work)
    repo = work / "linux-source-6.12"
    env = {**os.environ, **K._GIT_ENV}
    run = lambda *a: subprocess.run(["git", *a], cwd=repo, env=env, check=True, capture_output=True)  # noqa: E731
    run("init", "-q")
    run("add", "-f", "-A", ".")
    run("commit", "-q", "-m", "base")
    (repo / rel).write_text(new_text)
    run("commit", "-q", "-a", "-m", f"virtio-blk: {name}")
    out = subprocess.run(["git", "format-patch", "-1", "--stdout"], cwd=repo, env=env, check=True,
                         capture_output=True).stdout
    p = tmp_path / f"{name}.patch"
    p.write_bytes(out)
    return p


@needs_git
def test_tree_tracks_what_the_series_touches_and_applies_incrementally(tmp_path: Path) -> None:
    tb = _fake_tarball(tmp_path)
    opts = K.KernelBuildOptions(source_tarball=str(tb), cache_dir=str(tmp_path / "cache"))
    cache = tmp_path / "cache"
    tree, state_path = cache / "trees" / "default", cache / "trees" / "s.json"
    ident = "tarball:" + K._cache.sha256_file(tb)
    msgs: list[str] = []
    p1 = _make_patch(tmp_path, tb, "one", "int virtblk_one;\n")
    patch1 = [K.Patch(p1.name, p1, K._cache.sha256_file(p1))]
    assert K.series_paths(patch1) == ["drivers/block/virtio_blk.c"]
    state = K._prepare_tree(opts, tree, state_path, ident, msgs.append, patch1)
    # Only what the series touches is committed (the rest of a real tree is ~87,000 files).
    files = subprocess.run(["git", "ls-files"], cwd=tree, capture_output=True, text=True, check=True).stdout.split()
    assert files == ["drivers/block/virtio_blk.c"] and (tree / "README").is_file()
    log = subprocess.run(["git", "log", "--format=%s"], cwd=tree, capture_output=True, text=True).stdout
    assert log.strip() == "base 6.12.117"

    readme_mtime = (tree / "README").stat().st_mtime_ns
    K._apply_series(tree, state, state_path, patch1, msgs.append)
    assert (tree / "drivers/block/virtio_blk.c").read_text() == "int virtblk_one;\n"

    # an untracked file stays (no git clean); unchanged files keep their mtime
    (tree / "stray.o").write_text("junk")
    time.sleep(0.01)
    p2 = _make_patch(tmp_path, tb, "two", "int virtblk_two;\n")
    patch2 = [K.Patch(p2.name, p2, K._cache.sha256_file(p2))]
    K._apply_series(tree, state, state_path, patch2, msgs.append)
    assert (tree / "drivers/block/virtio_blk.c").read_text() == "int virtblk_two;\n"
    assert (tree / "stray.o").exists()
    assert (tree / "README").stat().st_mtime_ns == readme_mtime

    # the same series again is a no-op
    c_mtime = (tree / "drivers/block/virtio_blk.c").stat().st_mtime_ns
    K._apply_series(tree, state, state_path, patch2, msgs.append)
    assert (tree / "drivers/block/virtio_blk.c").stat().st_mtime_ns == c_mtime
    assert any("already applied" in m for m in msgs)

    # a series touching a file the base does not track yet: it joins a new base commit first
    p3 = _make_patch(tmp_path, tb, "readme", "patched readme\n", rel="README")
    K._apply_series(tree, state, state_path, patch2 + [K.Patch(p3.name, p3, K._cache.sha256_file(p3))],
                    msgs.append)
    assert (tree / "README").read_text() == "patched readme\n"
    assert state["tracked"] == ["README", "drivers/block/virtio_blk.c"]
    assert any("track 1 more file(s)" in m for m in msgs)

    # back to no series: the base content of every file any series touched
    K._apply_series(tree, state, state_path, [], msgs.append)
    assert (tree / "drivers/block/virtio_blk.c").read_text() == "int virtblk;\n"
    assert (tree / "README").read_text() == "readme\n"


@needs_git
def test_a_changed_patch_leaves_the_other_patches_files_mtimes_alone(tmp_path: Path) -> None:
    # The v3 series touches include/linux/blkdev.h in one patch and virtio_blk.c in others: a
    # fix to virtio_blk.c must not make make(1) recompile everything that includes blkdev.h.
    tb = _fake_tarball(tmp_path)
    opts = K.KernelBuildOptions(source_tarball=str(tb), cache_dir=str(tmp_path / "cache"))
    tree, state_path = tmp_path / "cache" / "trees" / "default", tmp_path / "cache" / "trees" / "s.json"
    hdr = _make_patch(tmp_path, tb, "hdr", "patched readme\n", rel="README")
    one = _make_patch(tmp_path, tb, "one", "int virtblk_one;\n")
    two = _make_patch(tmp_path, tb, "two", "int virtblk_two;\n")
    series = lambda *ps: [K.Patch(p.name, p, K._cache.sha256_file(p)) for p in ps]  # noqa: E731
    msgs: list[str] = []
    state = K._prepare_tree(opts, tree, state_path, "tarball:" + K._cache.sha256_file(tb), msgs.append,
                            series(hdr, one))
    K._apply_series(tree, state, state_path, series(hdr, one), msgs.append)
    os.utime(tree / "README", ns=(1_000_000_000, 1_000_000_000))
    c_mtime = (tree / "drivers/block/virtio_blk.c").stat().st_mtime_ns
    time.sleep(0.01)
    K._apply_series(tree, state, state_path, series(hdr, two), msgs.append)
    assert (tree / "README").read_text() == "patched readme\n"
    assert (tree / "README").stat().st_mtime_ns == 1_000_000_000
    assert (tree / "drivers/block/virtio_blk.c").read_text() == "int virtblk_two;\n"
    assert (tree / "drivers/block/virtio_blk.c").stat().st_mtime_ns != c_mtime
    assert any("1 file(s) the series left as they were keep their mtimes" in m for m in msgs)


@needs_git
def test_patch_that_does_not_apply_names_the_patch(tmp_path: Path) -> None:
    tb = _fake_tarball(tmp_path)
    opts = K.KernelBuildOptions(source_tarball=str(tb))
    cache = tmp_path / "cache"
    tree, state_path = cache / "trees" / "default", cache / "trees" / "s.json"
    state = K._prepare_tree(opts, tree, state_path, "tarball:x", None)
    p1 = _make_patch(tmp_path, tb, "one", "int virtblk_one;\n")
    p2 = _make_patch(tmp_path, tb, "two", "int virtblk_two;\n")  # also against base: conflicts after p1
    patches = [K.Patch("0001-one.patch", p1, "a"), K.Patch("0002-two.patch", p2, "b")]
    with pytest.raises(BuildError, match=r"patch 2/2 0002-two.patch does not apply"):
        K._apply_series(tree, state, state_path, patches, None)
    assert not (tree / ".git" / "rebase-apply").exists()  # git am --abort ran


# --------------------------------------------------------------------------- coverage variant


def test_variant_make_args_key_only_the_coverage_variant(inputs: K.KernelBuildOptions, monkeypatch) -> None:
    debug = K.KernelBuildOptions(**{**inputs.__dict__, "variant": "debug"})
    cov = K.KernelBuildOptions(**{**inputs.__dict__, "variant": "coverage"})
    before = {"default": _key(inputs), "debug": _key(debug), "coverage": _key(cov)}
    monkeypatch.setattr(K, "VARIANT_MAKE_ARGS", {})
    # the default and debug kernels' keys (and caches) are untouched by the coverage variant's make args
    assert _key(inputs) == before["default"] and _key(debug) == before["debug"]
    assert _key(cov) != before["coverage"]


def test_real_coverage_config_asks_for_gcov_and_debugfs() -> None:
    frags = K.variant_fragments("coverage")
    assert [f.name for f in frags] == ["base.config", "coverage.config"]
    req = K.requested_options([f.read_text() for f in frags])
    assert req["CONFIG_GCOV_KERNEL"] == "y" and req["CONFIG_DEBUG_FS"] == "y"
    assert req["CONFIG_GCOV_PROFILE_ALL"] == "n"  # only virtio_blk.o, by make argument
    assert K.VARIANT_MAKE_ARGS["coverage"] == ["GCOV_PROFILE_virtio_blk.o=y"]


@needs_git
def test_publish_coverage_ships_gcno_source_and_the_series_lines(tmp_path: Path) -> None:
    tb = _fake_tarball(tmp_path)
    opts = K.KernelBuildOptions(source_tarball=str(tb), cache_dir=str(tmp_path / "cache"))
    cache = tmp_path / "cache"
    tree, objdir = cache / "trees" / "coverage", cache / "trees" / "coverage-build"
    state_path = cache / "trees" / "coverage.json"
    state = K._prepare_tree(opts, tree, state_path, "tarball:" + K._cache.sha256_file(tb), None)
    p = _make_patch(tmp_path, tb, "more", "int virtblk;\n/* new */\nint virtblk_two;\n")
    K._apply_series(tree, state, state_path, [K.Patch(p.name, p, K._cache.sha256_file(p))], None)
    stage = tmp_path / "stage"
    stage.mkdir()
    objdir.mkdir(parents=True, exist_ok=True)
    with pytest.raises(K.BuildError, match="GCOV_PROFILE_virtio_blk.o"):
        K._publish_coverage(tree, objdir, state, stage)
    (objdir / "drivers" / "block").mkdir(parents=True)
    (objdir / K.COVERAGE_GCNO_REL).write_bytes(b"oncg")
    entry = K._publish_coverage(tree, objdir, state, stage)
    assert sorted(x.name for x in stage.iterdir()) == sorted(K.COVERAGE_FILES)
    lines = json.loads((stage / "series-lines.json").read_text())
    assert lines["added_lines"] == [2, 3] and lines["file"] == K.DRIVER_SOURCE
    assert lines["gcov_dir"] == str((objdir / "drivers" / "block").resolve())
    assert entry["added_line_count"] == 2 and "added_lines" not in entry
    assert (stage / "virtio_blk.c").read_text() == "int virtblk;\n/* new */\nint virtblk_two;\n"
    assert (stage / "virtio_blk.gcno").read_bytes() == b"oncg"


def test_fragments_that_ask_for_a_modular_virtio_blk_build_the_module(tmp_path):
    """kernel-config/coverage.config and debug.config set CONFIG_VIRTIO_BLK=m: the build then makes and
    ships the .ko as --virtio-blk-module does; a later fragment's =y wins over an earlier =m."""
    from vblk_ci.build import kernel as K

    repo_cfg = Path(__file__).resolve().parents[2] / "kernel-config"
    assert K.fragments_want_module([repo_cfg / "base.config", repo_cfg / "coverage.config"])
    assert K.fragments_want_module([repo_cfg / "base.config", repo_cfg / "debug.config"])
    assert not K.fragments_want_module([repo_cfg / "base.config"])
    m, y = tmp_path / "m.config", tmp_path / "y.config"
    m.write_text("CONFIG_VIRTIO_BLK=m\n")
    y.write_text("CONFIG_VIRTIO_BLK=y\n")
    assert K.fragments_want_module([y, m]) and not K.fragments_want_module([m, y])


# --------------------------------------------------------------------------- bases and the public API


def test_the_base_picks_tarball_series_and_fragments_unless_given(tmp_path: Path) -> None:
    o73 = K.KernelBuildOptions(base="7.3")
    assert K.resolve_tarball(o73) == "/usr/src/linux-source-7.3.tar.xz"
    assert K.resolve_tarball(K.KernelBuildOptions(base="6.12")) == "/usr/src/linux-source-6.12.tar.xz"
    assert K.resolve_series_dir(o73) == str(K.repo_root() / "driver")
    assert [f.name for f in K.resolve_fragments(o73)] == ["base.config", "linux-7.3.config"]
    assert [f.name for f in K.resolve_fragments(K.KernelBuildOptions(base="7.3", variant="debug"))] == [
        "base.config", "debug.config", "linux-7.3.config"]
    given = K.KernelBuildOptions(base="7.3", source_tarball="/x.tar.xz", series_dir=str(tmp_path))
    assert (K.resolve_tarball(given), K.resolve_series_dir(given)) == ("/x.tar.xz", str(tmp_path))
    assert K.resolve_patches(K.KernelBuildOptions(base="7.3", apply_series=False)) == []


def test_default_options_build_the_posting_base() -> None:
    # The image's default kernel (no KERNEL_BASE): 7.3, the v3 series in driver/, base.config + 7.3's fragment.
    opts = K.KernelBuildOptions()
    assert opts.base == "7.3" == K.DEFAULT_TARBALL.split("-")[-1].removesuffix(".tar.xz")
    assert K.resolve_tarball(opts) == "/usr/src/linux-source-7.3.tar.xz"
    assert K.resolve_series_dir(opts) == str(K.repo_root() / "driver")
    assert [f.name for f in K.resolve_fragments(opts)] == ["base.config", "linux-7.3.config"]
    assert K.resolve_series_dir(K.KernelBuildOptions(base="6.12")) == str(K.repo_root() / "driver" / "6.12")


def test_unknown_base_is_a_usage_error(tmp_path: Path) -> None:
    opts = K.KernelBuildOptions(base="7.4", cache_dir=str(tmp_path))
    for call in (K.kernel_base, K.resolve_tarball, K.resolve_series_dir, K.kernel_key, K.build_kernel):
        with pytest.raises(K.UsageError, match=r"^unknown kernel base '7.4' \(known: 7.3, 6.12\)$") as e:
            call(opts)
        assert e.value.exit_code == 2


def test_missing_base_tarball_says_which_package(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(K._bases.KernelBase, "tarball", property(lambda b: str(tmp_path / f"{b.package}.tar.xz")))
    with pytest.raises(BuildError, match=r"linux-source-7.3.tar.xz \(apt-get install linux-source-7.3\)"):
        K.kernel_key(K.KernelBuildOptions(base="7.3", cache_dir=str(tmp_path / "c")))


def test_cli_bad_base_is_one_line_and_exit_2(capsys) -> None:
    assert K.main(["--base", "7.4", "--print-key"]) == 2
    assert capsys.readouterr().err == "vblk-ci kernel build: unknown kernel base '7.4' (known: 7.3, 6.12)\n"


def test_cli_options_carry_the_base(tmp_path: Path) -> None:
    a = K._parser().parse_args(["--base", "7.3", "--no-series", "--cache-dir", str(tmp_path)])
    opts = K.options_from_args(a)
    assert (opts.base, opts.source_tarball, opts.series_dir, opts.apply_series) == ("7.3", None, None, False)
    assert K.options_from_args(K._parser().parse_args([])).base == K._bases.DEFAULT_BASE


def _fake_73_tarball(tmp_path: Path) -> Path:
    src = tmp_path / "src73" / "linux-source-7.3"
    (src / "drivers" / "block").mkdir(parents=True)
    (src / "Makefile").write_text("VERSION = 7\nPATCHLEVEL = 3\nSUBLEVEL = 4\nEXTRAVERSION =\n")
    (src / "drivers" / "block" / "virtio_blk.c").write_text("int virtblk73;\n")
    (src / ".gitignore").write_text("/*\n!/debian/\n")
    tb = tmp_path / "linux-source-7.3.tar.xz"
    with tarfile.open(tb, "w:xz") as t:
        t.add(src, arcname="linux-source-7.3")
    return tb


@needs_git
def test_source_tree_with_an_empty_series_and_one_tree_per_base(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    empty = tmp_path / "empty-series"
    empty.mkdir()
    (empty / "series").write_text("# nothing yet\n")
    o73 = K.KernelBuildOptions(base="7.3", source_tarball=str(_fake_73_tarball(tmp_path)), series_dir=str(empty),
                               cache_dir=str(cache))
    msgs: list[str] = []
    with K.source_tree(o73, "default", msgs.append) as src:
        assert src.path == cache / "trees" / "7.3" / "default" and src.patches == []
        assert src.objdir() == cache / "trees" / "7.3" / "default-build"
        # The base commit tracks nothing (no patch touches anything), the files are all there.
        files = subprocess.run(["git", "ls-files"], cwd=src.path, capture_output=True, text=True, check=True).stdout
        assert files == "" and (src.path / "drivers/block/virtio_blk.c").read_text() == "int virtblk73;\n"
        assert src.state["version"] == "7.3.4"
        src.objdir().mkdir()
    assert "apply series: 0 patch(es)" in msgs

    # A 6.12 tree in the same cache lives beside it: switching bases re-extracts neither.
    o612 = K.KernelBuildOptions(base="6.12", source_tarball=str(_fake_tarball(tmp_path)), apply_series=False,
                                cache_dir=str(cache))
    with K.source_tree(o612, "default") as src612:
        assert src612.path == cache / "trees" / "6.12" / "default" and src612.state["version"] == "6.12.117"
    msgs.clear()
    with K.source_tree(o73, "default", msgs.append) as src:
        assert (src.objdir() / ".").is_dir()  # kept: same base
    assert not any(m.startswith("extract") for m in msgs)

    # A different tarball for the same base: a fresh tree, and the objects built from the old one go.
    (tmp_path / "src73" / "linux-source-7.3" / "README").write_text("new\n")
    tb2 = tmp_path / "other" / "linux-source-7.3.tar.xz"
    tb2.parent.mkdir()
    with tarfile.open(tb2, "w:xz") as t:
        t.add(tmp_path / "src73" / "linux-source-7.3", arcname="linux-source-7.3")
    o73b = K.KernelBuildOptions(**{**o73.__dict__, "source_tarball": str(tb2)})
    with K.source_tree(o73b, "default", msgs.append) as src:
        assert (src.path / "README").is_file() and not src.objdir().exists()
    assert any(m.startswith("extract") for m in msgs)


@needs_git
def test_source_tree_applies_the_series_and_names_a_patch_that_does_not(tmp_path: Path) -> None:
    tb = _fake_tarball(tmp_path)
    p1 = _make_patch(tmp_path, tb, "one", "int virtblk_one;\n")
    p2 = _make_patch(tmp_path, tb, "two", "int virtblk_two;\n")
    series = _series(tmp_path / "driver", ["0001-one.patch"], {"0001-one.patch": p1.read_text()})
    opts = K.KernelBuildOptions(base="6.12", source_tarball=str(tb), series_dir=str(series),
                                cache_dir=str(tmp_path / "cache"))
    with K.source_tree(opts, "quality") as src:
        assert (src.path / "drivers/block/virtio_blk.c").read_text() == "int virtblk_one;\n"
        assert [p.name for p in src.patches] == ["0001-one.patch"]
    _series(series, ["0001-one.patch", "0002-two.patch"], {"0002-two.patch": p2.read_text()})
    with pytest.raises(BuildError, match=r"patch 2/2 0002-two.patch does not apply"):
        with K.source_tree(opts, "quality"):
            pass
    with pytest.raises(BuildError, match="bad tree slot"):
        with K.source_tree(opts, "../x"):
            pass


def test_run_and_make_return_output_and_raise_with_the_tail(tmp_path: Path) -> None:
    assert K.run(["sh", "-c", "echo hi; echo err >&2"]) == "hi\nerr\n"
    assert K.run(["sh", "-c", "echo found; exit 1"], check=False) == "found\n"
    with pytest.raises(BuildError, match=r"^step failed \(exit 3\):\nlast$"):
        K.run(["sh", "-c", "echo last; exit 3"], what="step")
    # the build environment: fixed identity and stamps, whatever the caller's
    assert K.run(["sh", "-c", "echo $KBUILD_BUILD_USER $GIT_AUTHOR_NAME"]) == "vblk-ci vblk-ci\n"
    (tmp_path / "Makefile").write_text("all:\n\t@echo O=$(O) $(X)\n")
    assert K.make(tmp_path, tmp_path / "o", "X=1") == f"O={tmp_path / 'o'} 1\n"


def test_quality_uses_only_the_builders_public_api() -> None:
    import ast

    from vblk_ci.build import quality

    tree = ast.parse(Path(quality.__file__).read_text())
    private = sorted({n.attr for n in ast.walk(tree)
                      if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "K"
                      and n.attr.startswith("_")})
    assert private == []
    assert not hasattr(quality, "_which") and not hasattr(quality, "_make")


def test_7_3_fragments_ask_for_sysctl_by_its_new_name() -> None:
    # Seen on the first 7.3 build: "CONFIG_PROC_SYSCTL: requested y, got not set" (7.3 has only SYSCTL).
    config73 = "CONFIG_PROC_FS=y\nCONFIG_SYSCTL=y\n"
    base_only = K.requested_options([K.variant_fragments("default")[0].read_text()])
    assert "CONFIG_PROC_SYSCTL: requested y, got not set" in K.verify_config(base_only, config73)
    req = K.requested_options([f.read_text() for f in K.resolve_fragments(K.KernelBuildOptions(base="7.3"))])
    assert (req["CONFIG_SYSCTL"], req["CONFIG_PROC_SYSCTL"]) == ("y", "n")
    assert not [p for p in K.verify_config(req, config73) if "SYSCTL" in p]


def test_a_flat_cache_tree_of_the_same_base_is_adopted_by_symlinks(tmp_path: Path) -> None:
    """Caches from before kernel bases: trees/<slot> becomes trees/<base>/<slot> without a rebuild."""
    import json as _json

    flat = tmp_path / "trees"
    (flat / "default" / ".git").mkdir(parents=True)
    (flat / "default-build").mkdir()
    (flat / "default-build" / "vmlinux.o").write_bytes(b"obj")
    (flat / "default.json").write_text(_json.dumps({"base_identity": "tarball:abc", "base_commit": "c0"}))
    trees = flat / "6.12"
    assert not K.adopt_flat_layout(trees, "default", "tarball:other")  # another base's source: not ours
    assert not trees.exists()
    assert K.adopt_flat_layout(trees, "default", "tarball:abc")
    assert (trees / "default").resolve() == (flat / "default").resolve()
    assert (trees / "default-build" / "vmlinux.o").read_bytes() == b"obj"
    assert _json.loads((trees / "default.json").read_text())["base_commit"] == "c0"
    assert not K.adopt_flat_layout(trees, "default", "tarball:abc")  # once
