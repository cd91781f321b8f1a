"""Initramfs builder: the newc writer, the in-image tree, and a small real build."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from vblk_ci.build import BuildError
from vblk_ci.build import initramfs as I

REPO = Path(__file__).resolve().parents[2]
HOST_PYTHON = "/usr/bin/python3"
HOST_BUSYBOX = "/bin/busybox"


def _sample_archive() -> bytes:
    buf = io.BytesIO()
    w = I.CpioWriter(buf)
    w.add_dir("dev")
    w.add_node("dev/console", "char", 5, 1)
    w.add_dir("bin")
    w.add_file("bin/busybox", b"\x7fELF fake", 0o755)
    w.add_symlink("bin/sh", "busybox")
    w.add_file("init", b"#!/bin/sh\necho hi\n", 0o755)
    w.add_file("empty", b"", 0o644)
    w.add_file("odd", b"abc", 0o600)  # data needing padding
    w.close()
    return buf.getvalue()


def test_cpio_roundtrip_with_python_reader() -> None:
    data = _sample_archive()
    assert len(data) % 4 == 0
    ents = {e.name: e for e in I.read_cpio(data)}
    assert list(ents) == ["dev", "dev/console", "bin", "bin/busybox", "bin/sh", "init", "empty", "odd"]
    assert ents["dev"].kind == "dir"
    assert ents["dev/console"].kind == "char" and ents["dev/console"].rdev == (5, 1)
    assert ents["bin/sh"].kind == "symlink" and ents["bin/sh"].data == b"busybox"
    assert ents["init"].data == b"#!/bin/sh\necho hi\n"
    assert stat.S_IMODE(ents["init"].mode) == 0o755
    assert ents["odd"].data == b"abc" and stat.S_IMODE(ents["odd"].mode) == 0o600
    assert all(e.uid == 0 and e.gid == 0 and e.mtime == 0 for e in ents.values())
    # newc header: magic, then inode numbers 1.. in write order
    assert data[:6] == b"070701" and int(data[6:14], 16) == 1


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio(1) not installed")
def test_cpio_roundtrip_with_gnu_cpio(tmp_path: Path) -> None:
    data = _sample_archive()
    listing = subprocess.run(["cpio", "-t", "--quiet"], input=data, capture_output=True, check=True).stdout.decode()
    assert listing.split() == ["dev", "dev/console", "bin", "bin/busybox", "bin/sh", "init", "empty", "odd"]
    verbose = subprocess.run(["cpio", "-tv", "--quiet"], input=data, capture_output=True, check=True).stdout.decode()
    console = [line for line in verbose.splitlines() if line.endswith("dev/console")][0]
    assert console.startswith("crw-------") and "5," in console
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["cpio", "-id", "--quiet", "--no-absolute-filenames", "--nonmatching", "dev/console"],
                   input=data, cwd=out, check=True)
    assert (out / "init").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert os.access(out / "init", os.X_OK)
    assert os.readlink(out / "bin" / "sh") == "busybox"


def test_tree_mirrors_host_symlinks(tmp_path: Path) -> None:
    """A fake merged-/usr host: /lib -> usr/lib, a versioned library behind a soname link."""
    root = tmp_path / "host"
    (root / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    os.symlink("usr/lib", root / "lib")
    os.symlink("usr/bin", root / "bin")
    (root / "usr/lib/x86_64-linux-gnu/libfoo.so.1.2.3").write_bytes(b"lib")
    os.symlink("libfoo.so.1.2.3", root / "usr/lib/x86_64-linux-gnu/libfoo.so.1")
    (root / "usr/bin/tool").write_bytes(b"tool")
    os.chmod(root / "usr/bin/tool", 0o755)

    t = I.RootTree()
    # host paths live under tmp_path: drop that prefix when checking the image
    t.add_host_path(root / "lib/x86_64-linux-gnu/libfoo.so.1")
    t.add_host_path(root / "bin/tool")
    pre = str(root).lstrip("/") + "/"
    names = {n[len(pre):] if n.startswith(pre) else n: e for n, e in t.entries.items()}
    assert names["lib"].kind == "symlink" and names["lib"].target == "usr/lib"
    assert names["bin"].kind == "symlink" and names["bin"].target == "usr/bin"
    assert names["usr/lib/x86_64-linux-gnu/libfoo.so.1"].target == "libfoo.so.1.2.3"
    assert names["usr/lib/x86_64-linux-gnu/libfoo.so.1.2.3"].kind == "file"
    assert names["usr/bin/tool"].perm == 0o755
    # a later path through the image's own symlink lands in the real directory
    t.add_file(str(root / "bin/other"), data=b"x")
    assert (pre + "usr/bin/other") in t.entries


def test_tree_sorted_parents_first_and_conflicts() -> None:
    t = I.RootTree()
    t.add_file("usr/bin/a", data=b"a")
    t.add_symlink("bin", "usr/bin")
    t.add_symlink("bin/sh", "/bin/busybox")  # lands in usr/bin/sh
    names = [n for n, _ in t.sorted_items()]
    assert names.index("usr") < names.index("usr/bin") < names.index("usr/bin/a")
    assert "usr/bin/sh" in names and "bin/sh" not in names
    with pytest.raises(BuildError):
        t.add_symlink("usr/bin/a", "elsewhere")


def test_scan_imports(tmp_path: Path) -> None:
    p = tmp_path / "a.py"
    p.write_text("import os, json\nfrom collections import abc\nfrom . import sibling\n"
                 "def f():\n    import subprocess\n")
    mods, warnings = I.scan_imports([p])
    assert mods == {"os", "json", "collections", "subprocess"}
    assert warnings == []


# --------------------------------------------------------------------------- a real (small) build

needs_host_tools = pytest.mark.skipif(
    not (os.path.isfile(HOST_PYTHON) and os.path.isfile(HOST_BUSYBOX) and shutil.which("ldd")),
    reason="needs /usr/bin/python3, /bin/busybox (busybox-static) and ldd")


@pytest.fixture
def small_opts(tmp_path: Path) -> I.InitramfsBuildOptions:
    agent = tmp_path / "agent"
    agent.mkdir()
    (agent / "vblk_agent.py").write_text("import json, os, sys\nprint(json.dumps({'ok': True}))\n")
    engine = tmp_path / "vblk-engine"
    engine.write_text("#!/bin/sh\necho '{}'\n")
    engine.chmod(0o755)
    return I.InitramfsBuildOptions(
        python=HOST_PYTHON, busybox=HOST_BUSYBOX, agent=str(agent), engine_dir=None,
        engine_binary=str(engine), init_script=str(REPO / "images" / "init"),
        compress_level=1, smoke_test=False, cache_dir=str(tmp_path / "cache"))


@needs_host_tools
def test_small_build_has_what_the_guest_needs(small_opts: I.InitramfsBuildOptions, tmp_path: Path) -> None:
    art = I.build_initramfs(small_opts)
    assert art.built and art.path.is_file() and art.size_bytes == art.path.stat().st_size
    raw = art.path.read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    ents = {e.name: e for e in I.read_cpio(raw)}
    init = ents["init"]
    assert init.kind == "file" and init.mode & 0o111 and init.data.startswith(b"#!/bin/sh\n")
    assert ents["dev/console"].kind == "char" and ents["dev/console"].rdev == (5, 1)
    assert ents["dev/null"].kind == "char" and ents["dev/null"].rdev == (1, 3)
    assert ents["usr/lib/vblk-agent/vblk_agent.py"].kind == "file"
    assert ents["usr/bin/vblk-engine"].mode & 0o111

    def resolve(name: str, depth: int = 0) -> I.CpioEntry:
        """Follow the image's symlinks (absolute or relative) like the guest would."""
        parts = name.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            e = ents.get("/".join(parts[:i]))
            if e is not None and e.kind == "symlink" and depth < 20:
                tgt = e.data.decode()
                base = "" if tgt.startswith("/") else "/".join(parts[:i - 1])
                return resolve(os.path.normpath(os.path.join("/", base, tgt, *parts[i:])), depth + 1)
        return ents["/".join(parts)]

    assert resolve("bin/sh").data[:4] == b"\x7fELF"  # busybox applet
    assert resolve("sbin/poweroff").data[:4] == b"\x7fELF"
    py = resolve("usr/bin/python3")
    assert py.kind == "file" and py.mode & 0o111 and py.data[:4] == b"\x7fELF"
    assert resolve("lib64/ld-linux-x86-64.so.2").data[:4] == b"\x7fELF"
    stdlib = [n for n in ents if n.endswith("/json/__init__.pyc")]
    assert stdlib, "stdlib precompiled"
    assert not any("/test/" in n or "/tkinter/" in n for n in ents)
    assert not any(n.endswith("/os.py") for n in ents)  # sourceless by default
    assert all(e.uid == 0 and e.mtime == 0 for e in ents.values())

    # same inputs: served from the cache; a fresh cache rebuilds the same bytes
    again = I.build_initramfs(small_opts)
    assert not again.built and again.sha256 == art.sha256
    small_opts.cache_dir = str(tmp_path / "cache2")
    assert I.build_initramfs(small_opts).sha256 == art.sha256

    # changing the agent changes the key
    (Path(small_opts.agent) / "vblk_agent.py").write_text("import os\n")
    assert I.initramfs_key(small_opts) != art.key


@needs_host_tools
@pytest.mark.skipif(os.geteuid() != 0, reason="the chroot smoke test needs root")
def test_smoke_test_runs_guest_python(small_opts: I.InitramfsBuildOptions) -> None:
    small_opts.smoke_test = True
    art = I.build_initramfs(small_opts)
    import json
    assert json.loads(art.manifest.read_text())["smoke_test"].startswith("ok")


def test_missing_agent_is_a_build_error(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="agent"):
        I._agent_files(tmp_path / "nope")


def test_gzip_of_archive_is_reproducible() -> None:
    data = _sample_archive()
    outs = []
    for _ in range(2):
        buf = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", compresslevel=6, fileobj=buf, mtime=0) as gz:
            gz.write(data)
        outs.append(buf.getvalue())
    assert outs[0] == outs[1]


# --------------------------------------------------------------------------- the 32-bit engine


def _elf(path: Path, ei_class: int, machine: int) -> Path:
    """A file with just an ELF header's identifying bytes (enough for elf_arch, not to run)."""
    head = b"\x7fELF" + bytes([ei_class, 1, 1]) + bytes(9) + (2).to_bytes(2, "little") + machine.to_bytes(2, "little")
    path.write_bytes(head + bytes(64))
    path.chmod(0o755)
    return path


def test_elf_arch(tmp_path: Path) -> None:
    assert I.elf_arch(_elf(tmp_path / "a", 1, 3)) == "i386"
    assert I.elf_arch(_elf(tmp_path / "b", 2, 62)) == "x86_64"
    assert I.elf_arch(_elf(tmp_path / "c", 2, 3)) is None     # 64-bit class with i386 machine
    assert I.elf_arch(_elf(tmp_path / "d", 1, 62)) is None    # x32-style: not what we ship
    (tmp_path / "e").write_bytes(b"#!/bin/sh\necho hi\n")
    assert I.elf_arch(tmp_path / "e") is None
    (tmp_path / "f").write_bytes(b"\x7fELF")
    assert I.elf_arch(tmp_path / "f") is None
    if Path("/bin/busybox").is_file():
        assert I.elf_arch("/bin/busybox") == "x86_64" or os.uname().machine != "x86_64"


def test_engine32_source(tmp_path: Path) -> None:
    lib = tmp_path / "liburing.a"
    o = I.InitramfsBuildOptions(engine_dir=str(tmp_path), liburing32=str(lib))
    assert o.liburing32 and I.InitramfsBuildOptions().liburing32 == I.DEFAULT_LIBURING32
    assert I.engine32_source(o) == ("none", f"no i386 liburing.a at {lib}")
    lib.write_bytes(b"!<arch>\n")
    assert I.engine32_source(o) == ("build", str(lib))
    o.liburing32 = None
    assert I.engine32_source(o)[0] == "none" and "disabled" in I.engine32_source(o)[1]
    o.liburing32, o.engine_dir, o.engine_binary = str(lib), None, "/x/vblk-engine"
    assert I.engine32_source(o)[0] == "none" and "no engine sources" in I.engine32_source(o)[1]
    o.engine32_binary = "/x/vblk-engine32"
    assert I.engine32_source(o) == ("binary", "/x/vblk-engine32")


def test_cli_engine32_options() -> None:
    parse = lambda *a: I.options_from_args(I._parser().parse_args(list(a)))  # noqa: E731
    assert parse().liburing32 == I.DEFAULT_LIBURING32
    assert parse("--no-engine32").liburing32 is None
    assert parse("--liburing32", "/l.a").liburing32 == "/l.a"
    assert parse("--engine32-binary", "/e32").engine32_binary == "/e32"
    with pytest.raises(SystemExit):
        parse("--no-engine32", "--engine32-binary", "/e32")


def _manifest(art: I.InitramfsArtifact) -> dict:
    import json
    return json.loads(art.manifest.read_text())


@needs_host_tools
def test_prebuilt_engine32_is_shipped_and_keyed(small_opts: I.InitramfsBuildOptions, tmp_path: Path) -> None:
    without = I.build_initramfs(small_opts)
    assert "usr/bin/vblk-engine32" not in {e.name for e in I.read_cpio(without.path.read_bytes())}
    assert _manifest(without)["engine32"].startswith("not built: no engine sources")

    e32 = _elf(tmp_path / "vblk-engine32", 1, 3)
    small_opts.engine32_binary = str(e32)
    art = I.build_initramfs(small_opts)
    assert art.key != without.key
    ents = {e.name: e for e in I.read_cpio(art.path.read_bytes())}
    shipped = ents["usr/bin/vblk-engine32"]
    assert shipped.data == e32.read_bytes() and stat.S_IMODE(shipped.mode) == 0o755
    assert _manifest(art)["engine32"] == f"prebuilt {e32}"
    assert _manifest(art)["components"]["engine32"]["files"] == 1
    e32.write_bytes(e32.read_bytes() + b"x")          # a different binary: a different key
    assert I.initramfs_key(small_opts) != art.key

    _elf(e32, 2, 62)                                   # a 64-bit binary is refused
    with pytest.raises(BuildError, match="not an i386 ELF"):
        I.build_initramfs(small_opts)
    small_opts.engine32_binary = str(tmp_path / "missing")
    with pytest.raises(BuildError, match="32-bit engine binary not found"):
        I.initramfs_key(small_opts)


def _fake_engine_dir(tmp_path: Path) -> Path:
    """Engine 'sources' whose Makefile makes a script (vblk-engine) and an i386 ELF (vblk-engine32),
    the latter only from an existing LIBURING32, as the real Makefile links it."""
    src = tmp_path / "engine-src"
    src.mkdir()
    (src / "i386.hex").write_text("7f454c46010101" + "00" * 9 + "0200" + "0300" + "00" * 64)
    (src / "Makefile").write_text(
        "vblk-engine:\n\tprintf '#!/bin/sh\\necho {}\\n' > $@ && chmod +x $@\n"
        "vblk-engine32:\n\ttest -f $(LIBURING32)\n"
        "\tpython3 -c \"import sys; open('$@','wb').write(bytes.fromhex(open('i386.hex').read()))\"\n")
    return src


@needs_host_tools
def test_engine32_built_when_the_i386_liburing_exists(small_opts: I.InitramfsBuildOptions, tmp_path: Path) -> None:
    small_opts.engine_binary = None
    small_opts.engine_dir = str(_fake_engine_dir(tmp_path))
    lib = tmp_path / "i386" / "liburing.a"
    small_opts.liburing32 = str(lib)
    art = I.build_initramfs(small_opts)                # no liburing.a: no vblk-engine32, and said so
    assert "usr/bin/vblk-engine32" not in {e.name for e in I.read_cpio(art.path.read_bytes())}
    assert _manifest(art)["engine32"] == f"not built: no i386 liburing.a at {lib}"
    assert any("no vblk-engine32" in n for n in _manifest(art)["notes"])

    lib.parent.mkdir()
    lib.write_bytes(b"!<arch>\nfirst")
    built = I.build_initramfs(small_opts)
    assert built.key != art.key and built.built
    ents = {e.name: e for e in I.read_cpio(built.path.read_bytes())}
    assert ents["usr/bin/vblk-engine32"].data[:7] == b"\x7fELF\x01\x01\x01"
    assert ents["usr/bin/vblk-engine"].data.startswith(b"#!/bin/sh")
    assert _manifest(built)["engine32"] == f"built with {lib}"
    lib.write_bytes(b"!<arch>\nsecond")                # the library is part of the key
    assert I.initramfs_key(small_opts) != built.key
    small_opts.liburing32 = None
    assert I.initramfs_key(small_opts) == art.key


@needs_host_tools
def test_engine32_make_failure_is_a_build_error(small_opts: I.InitramfsBuildOptions, tmp_path: Path) -> None:
    src = _fake_engine_dir(tmp_path)
    (src / "Makefile").write_text("vblk-engine:\n\ttouch $@\nvblk-engine32:\n\t@echo 'cannot find -lgcc' && false\n")
    small_opts.engine_binary, small_opts.engine_dir = None, str(src)
    lib = tmp_path / "liburing.a"
    lib.write_bytes(b"!<arch>\n")
    small_opts.liburing32 = str(lib)
    with pytest.raises(BuildError, match="vblk-engine32 failed"):
        I.build_initramfs(small_opts)
