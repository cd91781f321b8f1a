"""Build the guest initramfs from the running system's files (stdlib only).

Contents (see images/README.md):

* busybox (static) and a symlink for each of its applets;
* the real python3 binary, every shared library ``ldd`` lists and the dynamic
  loader, at their own paths (merged-/usr symlinks mirrored);
* a stdlib subset, precompiled (unchecked-hash .pyc, sourceless by default)
  so the guest neither compiles nor stats sources at boot, and lib-dynload
  minus the test/GUI/database modules, with their libraries;
* the agent (guest-agent/agent/ -> /usr/lib/vblk-agent/), the engine
  (``make`` in a copy of guest-agent/engine/ -> /usr/bin/vblk-engine),
  and its 32-bit build (``make vblk-engine32`` -> /usr/bin/vblk-engine32) when
  an i386 liburing.a is there (the manifest's ``engine32`` says why if not),
  optionally fio, /init (images/init), /dev/console and /dev/null.

The archive is newc cpio written here (every entry 0:0, mtime 0, sorted),
gzip'd with mtime 0: the same inputs give the same bytes.  Why not a tool:
GNU ``cpio -H newc`` archives a tree on disk, so /dev/console and /dev/null
would need mknod (root) and every mtime and owner a rewrite first; the
kernel's ``usr/gen_init_cpio`` takes a spec like ours and does device nodes
without root (``-t`` fixes the mtime), but it is built from a kernel tree,
which the initramfs stage (and a host-side ``vblk-ci build initramfs``) does
not have.  The writer is ~50 lines; tests/unit/test_initramfs.py checks its
archives against GNU cpio's reading of them.  Cached under
``<cache>/initramfs/<key>/`` like the kernel.

CLI: ``python3 -m vblk_ci.build.initramfs --help``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import glob
import gzip
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Iterable

from vblk_ci.build import BuildError, UsageError, add_builder_args, repo_root, run_builder_cli
from vblk_ci.build import cache as _cache

#: Bump when the procedure changes what ends up in the archive.
BUILDER_VERSION = "1"
Progress = Callable[[str], None]

#: Top-level names of the stdlib left out: tests, GUIs, packaging, docs data,
#: databases, mail/web/XML stacks.  Directories named in STDLIB_EXCLUDE_ANYWHERE
#: are pruned at any depth.
STDLIB_EXCLUDE_TOP = frozenset({
    "test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data", "unittest",
    "distutils", "venv", "sqlite3", "email", "xml", "xmlrpc", "http", "urllib", "html", "wsgiref",
    "curses", "dbm", "msilib", "site-packages", "dist-packages", "lib-dynload",
    "turtle.py", "pydoc.py", "doctest.py", "_pydecimal.py", "pickletools.py", "mailbox.py",
    "sitecustomize.py", "LICENSE.txt", "EXTERNALLY-MANAGED", "README.txt",
})
STDLIB_EXCLUDE_PREFIX = ("config-",)
STDLIB_EXCLUDE_ANYWHERE = frozenset({"__pycache__", "test", "tests", "idle_test"})
#: lib-dynload modules left out (prefix match on the module name).
DYNLOAD_EXCLUDE = (
    "_test", "xxlimited", "_xxtestfuzz", "_xxsubinterpreters", "_xxinterpchannels", "_ctypes_test",
    "_tkinter", "_sqlite3", "_ssl", "_hashlib", "_curses", "readline", "_dbm", "_gdbm", "nis",
    "ossaudiodev", "audioop", "_codecs_", "_crypt", "_lsprof", "spwd",
)
#: Modules the guest must import; the agent's own imports are added by scanning it.
REQUIRED_MODULES = (
    "json", "socket", "select", "subprocess", "os", "struct", "signal", "traceback", "glob", "fnmatch",
    "time", "errno", "argparse", "threading", "base64", "shlex", "fcntl", "mmap", "ctypes", "errno",
    "io", "re", "stat", "tempfile", "shutil", "datetime", "hashlib", "random", "logging", "queue",
)

GUEST_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
}

#: Where the image's initramfs stage unpacks liburing-dev:i386 (see the Dockerfile).
DEFAULT_LIBURING32 = "/opt/i386/usr/lib/i386-linux-gnu/liburing.a"
ENGINE32_GUEST_PATH = "usr/bin/vblk-engine32"

ETC_PASSWD = "root:x:0:0:root:/root:/bin/sh\n"
ETC_GROUP = "root:x:0:\n"


def _repo_path(*parts: str) -> str:
    return str(repo_root().joinpath(*parts))


@dataclass
class InitramfsBuildOptions:
    python: str = "/usr/bin/python3"
    busybox: str = "/bin/busybox"
    #: The agent: a directory of .py files (copied to /usr/lib/vblk-agent/) or one file.
    agent: str = field(default_factory=lambda: _repo_path("guest-agent", "agent"))
    #: Engine sources (``make`` in a copy of it must produce ``vblk-engine``).
    engine_dir: str | None = field(default_factory=lambda: _repo_path("guest-agent", "engine"))
    #: A prebuilt engine binary instead of engine_dir.
    engine_binary: str | None = None
    #: i386 liburing.a: with engine_dir, ``make vblk-engine32`` is built and shipped when this
    #: file exists (None: never).
    liburing32: str | None = DEFAULT_LIBURING32
    #: A prebuilt 32-bit engine (an i386 ELF) instead of building it.
    engine32_binary: str | None = None
    init_script: str = field(default_factory=lambda: _repo_path("images", "init"))
    with_fio: bool = False
    fio: str = "/usr/bin/fio"
    #: guest path -> host path, e.g. {"/lib/modules/virtio_blk.ko": ".../virtio_blk.ko"}.
    extra_files: dict[str, str] = field(default_factory=dict)
    #: gzip level 1-9, 0 = an uncompressed cpio.
    compress_level: int = 6
    #: Ship the stdlib's .py next to its .pyc (tracebacks with source lines; ~2x the stdlib).
    stdlib_sources: bool = False
    #: chroot into the result (needs root) and import the modules the agent needs.
    smoke_test: bool = True
    cache_dir: str | None = None


@dataclass
class InitramfsArtifact:
    path: Path
    sha256: str
    size_bytes: int
    file_count: int
    manifest: Path
    key: str
    built: bool
    seconds: float

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


# --------------------------------------------------------------------------- cpio (newc)

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


class CpioWriter:
    """A newc ("070701") cpio writer: uid/gid 0, mtime 0, inode numbers in write order."""

    def __init__(self, out: BinaryIO):
        self.out = out
        self.ino = 0
        self.bytes_written = 0
        self.count = 0

    def _w(self, b: bytes) -> None:
        self.out.write(b)
        self.bytes_written += len(b)

    def _header(self, name: str, mode: int, size: int, nlink: int = 1, rdev: tuple[int, int] = (0, 0)) -> None:
        name = name.lstrip("/") or "."
        nb = name.encode("utf-8") + b"\0"
        if name != TRAILER:
            self.ino += 1
            self.count += 1
        ino = self.ino if name != TRAILER else 0
        fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev[0], rdev[1], len(nb), 0)
        hdr = NEWC_MAGIC + b"".join(b"%08X" % f for f in fields)
        self._w(hdr + nb + b"\0" * _pad4(len(hdr) + len(nb)))

    def add_dir(self, name: str, perm: int = 0o755) -> None:
        self._header(name, stat.S_IFDIR | perm, 0, nlink=2)

    def add_file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._header(name, stat.S_IFREG | perm, len(data))
        self._w(data + b"\0" * _pad4(len(data)))

    def add_symlink(self, name: str, target: str) -> None:
        t = target.encode("utf-8")
        self._header(name, stat.S_IFLNK | 0o777, len(t))
        self._w(t + b"\0" * _pad4(len(t)))

    def add_node(self, name: str, kind: str, major: int, minor: int, perm: int = 0o600) -> None:
        fmt = stat.S_IFCHR if kind == "char" else stat.S_IFBLK
        self._header(name, fmt | perm, 0, rdev=(major, minor))

    def close(self) -> None:
        self._header(TRAILER, 0, 0, nlink=1)


@dataclass
class CpioEntry:
    name: str
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    rdev: tuple[int, int]
    data: bytes

    @property
    def kind(self) -> str:
        m = self.mode
        return ("dir" if stat.S_ISDIR(m) else "file" if stat.S_ISREG(m) else "symlink" if stat.S_ISLNK(m)
                else "char" if stat.S_ISCHR(m) else "block" if stat.S_ISBLK(m) else "other")


def read_cpio(data: bytes) -> list[CpioEntry]:
    """Parse a newc cpio (plain or gzip'd) into entries; the trailer is not returned."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    out: list[CpioEntry] = []
    pos = 0
    while True:
        if data[pos:pos + 6] != NEWC_MAGIC:
            raise ValueError(f"bad cpio magic at offset {pos}: {data[pos:pos + 6]!r}")
        f = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = f[11], f[6]
        npos = pos + 110
        name = data[npos:npos + namesize - 1].decode("utf-8")
        dpos = npos + namesize + _pad4(110 + namesize)
        body = data[dpos:dpos + filesize]
        pos = dpos + filesize + _pad4(filesize)
        if name == TRAILER:
            return out
        out.append(CpioEntry(name, f[1], f[2], f[3], f[4], f[5], (f[9], f[10]), body))


def extract_cpio(entries: Iterable[CpioEntry], dest: Path, nodes: bool = False) -> None:
    """Unpack parsed entries under *dest* (device nodes only if *nodes*, which needs root)."""
    for e in entries:
        p = dest / e.name
        k = e.kind
        if k == "dir":
            p.mkdir(parents=True, exist_ok=True)
            os.chmod(p, stat.S_IMODE(e.mode))
        elif k == "file":
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(e.data)
            os.chmod(p, stat.S_IMODE(e.mode))
        elif k == "symlink":
            p.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(e.data.decode(), p)
        elif k in ("char", "block") and nodes:
            os.mknod(p, e.mode, os.makedev(*e.rdev))


# --------------------------------------------------------------------------- the image's file tree


@dataclass
class Entry:
    kind: str  # dir | file | symlink | char | block
    perm: int = 0o755
    src: Path | None = None
    data: bytes | None = None
    target: str | None = None
    rdev: tuple[int, int] = (0, 0)
    component: str = "base"

    def content(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.src is not None
        return self.src.read_bytes()

    def size(self) -> int:
        if self.kind != "file":
            return 0
        return len(self.data) if self.data is not None else self.src.stat().st_size  # type: ignore[union-attr]


def _norm(path: str | PurePosixPath) -> str:
    parts = [p for p in PurePosixPath("/", path).parts[1:] if p not in ("", ".")]
    return "/".join(parts)


class RootTree:
    """The guest's file tree, built in memory; paths are relative ('usr/bin/python3')."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}

    # -- path handling inside the image
    def _resolve(self, path: str, last: bool = False, depth: int = 0) -> str:
        """*path* with its directory components (and the last one if *last*) resolved through
        the image's own symlinks, so 'bin/sh' lands in 'usr/bin/sh' when /bin -> usr/bin."""
        if depth > 40:
            raise BuildError(f"symlink loop in image at {path}")
        parts = _norm(path).split("/") if _norm(path) else []
        cur: list[str] = []
        for i, comp in enumerate(parts):
            if comp == "..":
                if cur:
                    cur.pop()
                continue
            cur.append(comp)
            if i == len(parts) - 1 and not last:
                break
            e = self.entries.get("/".join(cur))
            if e is not None and e.kind == "symlink":
                assert e.target is not None
                base = "" if e.target.startswith("/") else "/".join(cur[:-1])
                rest = "/".join(parts[i + 1:])
                return self._resolve(_norm(PurePosixPath("/", base, e.target, rest)), last, depth + 1)
        return "/".join(cur)

    def mkdir_p(self, path: str) -> str:
        path = self._resolve(path, last=True)
        cur: list[str] = []
        for comp in path.split("/") if path else []:
            cur.append(comp)
            key = "/".join(cur)
            e = self.entries.get(key)
            if e is None:
                self.entries[key] = Entry("dir", 0o755)
            elif e.kind != "dir":
                raise BuildError(f"image path /{key} is a {e.kind}, wanted a directory")
        return path

    def _place(self, dest: str) -> str:
        dest = self._resolve(dest)
        parent = dest.rsplit("/", 1)[0] if "/" in dest else ""
        if parent:
            self.mkdir_p(parent)
        return dest

    def exists(self, dest: str) -> bool:
        return self._resolve(dest) in self.entries

    def add_file(self, dest: str, *, src: str | Path | None = None, data: bytes | None = None,
                 perm: int | None = None, component: str = "base") -> str:
        key = self._place(dest)
        if src is not None:
            src = Path(src)
            if perm is None:
                perm = stat.S_IMODE(src.stat().st_mode)
        self.entries[key] = Entry("file", 0o644 if perm is None else perm, src=src, data=data, component=component)
        return key

    def add_symlink(self, dest: str, target: str, component: str = "base") -> str:
        key = self._place(dest)
        old = self.entries.get(key)
        if old is not None and not (old.kind == "symlink" and old.target == target):
            raise BuildError(f"image path /{key} already exists as a {old.kind}")
        self.entries[key] = Entry("symlink", 0o777, target=target, component=component)
        return key

    def add_node(self, dest: str, kind: str, major: int, minor: int, perm: int = 0o600) -> None:
        self.entries[self._place(dest)] = Entry(kind, perm, rdev=(major, minor))

    def add_host_path(self, host_path: str | Path, component: str = "base", depth: int = 0) -> str:
        """Copy a host file to the same path in the image, mirroring every symlink on the way."""
        if depth > 40:
            raise BuildError(f"symlink loop resolving {host_path}")
        parts = PurePosixPath(os.path.abspath(host_path)).parts[1:]
        cur = PurePosixPath("/")
        for i, comp in enumerate(parts):
            cur = cur / comp
            if os.path.islink(cur):
                target = os.readlink(cur)
                self.add_symlink(str(cur), target, component)
                resolved = os.path.normpath(os.path.join(str(cur.parent), target))
                return self.add_host_path(os.path.join(resolved, *parts[i + 1:]), component, depth + 1)
            if i < len(parts) - 1:
                self.mkdir_p(str(cur))
        if not os.path.isfile(cur):
            raise BuildError(f"{cur}: not a regular file")
        return self.add_file(str(cur), src=cur, component=component)

    def add_tree(self, src_dir: Path, dest_dir: str, component: str) -> int:
        """Every regular file under *src_dir* (symlinks followed) at *dest_dir*; returns the count."""
        n = 0
        for rel in _cache.iter_tree(src_dir):
            full = src_dir / rel
            if not full.is_file():
                continue  # dangling symlink
            self.add_file(f"{dest_dir}/{rel.as_posix()}", src=full.resolve(), component=component)
            n += 1
        return n

    # -- output
    def sorted_items(self) -> list[tuple[str, Entry]]:
        return sorted(self.entries.items(), key=lambda kv: kv[0].split("/"))

    def write_cpio(self, out: BinaryIO) -> CpioWriter:
        w = CpioWriter(out)
        for name, e in self.sorted_items():
            if e.kind == "dir":
                w.add_dir(name, e.perm)
            elif e.kind == "file":
                w.add_file(name, e.content(), e.perm)
            elif e.kind == "symlink":
                assert e.target is not None
                w.add_symlink(name, e.target)
            else:
                w.add_node(name, e.kind, *e.rdev, perm=e.perm)
        w.close()
        return w

    def fingerprint_parts(self) -> list[tuple[str, str]]:
        parts: list[tuple[str, str]] = []
        for name, e in self.sorted_items():
            if e.kind == "file":
                digest = (_cache.sha256_bytes(e.data) if e.data is not None
                          else _cache.sha256_file(e.src))  # type: ignore[arg-type]
                parts.append(("file", f"{name}:{e.perm:o}:{digest}"))
            elif e.kind == "symlink":
                parts.append(("symlink", f"{name}:{e.target}"))
            else:
                parts.append((e.kind, f"{name}:{e.perm:o}:{e.rdev}"))
        return parts


# --------------------------------------------------------------------------- host inspection


def ldd(binary: str | Path) -> list[str]:
    """Absolute paths of the shared libraries and loader *binary* needs ([] for a static binary)."""
    proc = subprocess.run(["ldd", str(binary)], capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0 or "not a dynamic executable" in text or "statically linked" in text:
        return []
    libs: list[str] = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        m = re.match(r"^\S+ => (/\S+) \(0x", line) or re.match(r"^(/\S+) \(0x", line)
        if m:
            libs.append(m.group(1))
        elif "=> not found" in line:
            raise BuildError(f"ldd {binary}: {line}")
    return libs


def _python_info(python: str) -> dict:
    code = ("import json,sys,sysconfig,os;print(json.dumps({'version':'%d.%d'%sys.version_info[:2],"
            "'full':sys.version.split()[0],'stdlib':sysconfig.get_path('stdlib'),"
            "'exe':os.path.realpath(sys.executable)}))")
    try:
        out = subprocess.run([python, "-I", "-c", code], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise BuildError(f"cannot query {python}: {e}") from e
    return json.loads(out)


def _stdlib_excluded(rel: Path) -> bool:
    top = rel.parts[0]
    if top in STDLIB_EXCLUDE_TOP or top.startswith(STDLIB_EXCLUDE_PREFIX):
        return True
    return any(p in STDLIB_EXCLUDE_ANYWHERE for p in rel.parts[:-1])


def stdlib_files(stdlib: Path) -> list[Path]:
    """Relative paths of the stdlib .py files the image keeps."""
    keep = []
    for rel in _cache.iter_tree(stdlib, exclude_dirs=("__pycache__",)):
        if rel.suffix != ".py" or _stdlib_excluded(rel):
            continue
        if (stdlib / rel).is_file():
            keep.append(rel)
    return keep


def dynload_files(stdlib: Path) -> list[Path]:
    d = stdlib / "lib-dynload"
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.suffix == ".so" and not p.name.startswith(DYNLOAD_EXCLUDE))


def busybox_applets(busybox: str) -> list[str]:
    """Applet install paths ('bin/sh', 'sbin/poweroff', ...)."""
    for flag in ("--list-full", "--list"):
        proc = subprocess.run([busybox, flag], capture_output=True, text=True)
        if proc.returncode == 0 and proc.stdout.strip():
            names = proc.stdout.split()
            return names if flag == "--list-full" else [f"bin/{n}" for n in names]
    raise BuildError(f"{busybox} --list-full failed: is it busybox?")


def scan_imports(paths: Iterable[Path]) -> tuple[set[str], list[str]]:
    """Absolute module names imported anywhere in *paths* (and parse warnings)."""
    mods: set[str] = set()
    warnings: list[str] = []
    for p in paths:
        try:
            tree = ast.parse(p.read_text(encoding="utf-8"), filename=str(p))
        except SyntaxError as e:
            warnings.append(f"{p}: cannot parse ({e.msg} line {e.lineno}); its imports are not checked")
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module)
    mods.discard("__future__")
    return mods, warnings


def _gcc_version() -> str:
    try:
        return subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        return "none"


def _liburing_identity() -> str:
    h = []
    for pattern in ("/usr/include/liburing.h", "/usr/lib/*/liburing.a", "/usr/lib/*/liburing.so.*"):
        for p in sorted(glob.glob(pattern)):
            if os.path.isfile(p):
                h.append(f"{p}:{_cache.sha256_file(p)}")
    return ";".join(h) or "none"


ELF_MACHINES = {3: "i386", 62: "x86_64", 183: "aarch64"}


def elf_arch(path: str | Path) -> str | None:
    """``"i386"``, ``"x86_64"``, ... for an ELF file (class and e_machine agree), else None."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF" or head[5] != 1:  # little-endian only
        return None
    machine = ELF_MACHINES.get(int.from_bytes(head[18:20], "little"))
    bits = {1: 32, 2: 64}.get(head[4])
    if machine is None or bits != (32 if machine == "i386" else 64):
        return None
    return machine


def engine32_source(opts: InitramfsBuildOptions) -> tuple[str, str]:
    """How vblk-engine32 gets into the image: ``("binary", path)``, ``("build", liburing32)``
    or ``("none", reason)``."""
    if opts.engine32_binary:
        return "binary", opts.engine32_binary
    if not opts.engine_dir:
        return "none", "no engine sources to build it from (prebuilt engine binary, or no engine)"
    if not opts.liburing32:
        return "none", "disabled (no liburing32 given)"
    if not Path(opts.liburing32).is_file():
        return "none", f"no i386 liburing.a at {opts.liburing32}"
    return "build", opts.liburing32


def _agent_files(agent: Path) -> list[tuple[Path, str]]:
    """(host file, relative dest) for the agent."""
    if agent.is_file():
        return [(agent, agent.name)]
    if not agent.is_dir():
        raise BuildError(f"guest agent not found at {agent}")
    files = [(agent / rel, rel.as_posix()) for rel in _cache.iter_tree(agent, exclude_dirs=("__pycache__", "tests"))
             if rel.suffix == ".py" and (agent / rel).is_file()]
    if not files:
        raise BuildError(f"no .py files in the guest agent directory {agent}")
    return files


def build_engine(engine_dir: Path, workdir: Path) -> Path:
    """``make`` in a copy of *engine_dir* (the source tree stays clean); returns the binary."""
    if not (engine_dir / "Makefile").is_file():
        raise BuildError(f"no engine Makefile in {engine_dir} (pass engine_binary or engine_dir)")
    build = workdir / "engine"
    shutil.copytree(engine_dir, build, ignore=shutil.ignore_patterns("vblk-engine", "*.o"))
    proc = subprocess.run(["make", "-C", str(build)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace")
    if proc.returncode != 0:
        raise BuildError(f"make -C {engine_dir} failed (exit {proc.returncode}):\n"
                         + "\n".join(proc.stdout.splitlines()[-40:]))
    binary = build / "vblk-engine"
    if not binary.is_file():
        raise BuildError(f"make -C {engine_dir} did not produce vblk-engine")
    return binary


def build_engine32(engine_dir: Path, workdir: Path, liburing32: str) -> Path:
    """``make vblk-engine32 LIBURING32=...`` in a copy of *engine_dir*; returns the i386 binary."""
    if not (engine_dir / "Makefile").is_file():
        raise BuildError(f"no engine Makefile in {engine_dir}")
    build = workdir / "engine32"
    shutil.copytree(engine_dir, build, ignore=shutil.ignore_patterns("vblk-engine", "vblk-engine32", "*.o"))
    proc = subprocess.run(["make", "-C", str(build), "vblk-engine32", f"LIBURING32={liburing32}"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    if proc.returncode != 0:
        raise BuildError(f"make -C {engine_dir} vblk-engine32 failed (exit {proc.returncode}; gcc -m32 needs "
                         "gcc-multilib):\n" + "\n".join(proc.stdout.splitlines()[-40:]))
    binary = build / "vblk-engine32"
    if not binary.is_file():
        raise BuildError(f"make -C {engine_dir} vblk-engine32 did not produce vblk-engine32")
    return binary


# --------------------------------------------------------------------------- plan + build


@dataclass
class _Plan:
    tree: RootTree
    py: dict
    stdlib_rel: list[Path]
    agent_files: list[tuple[Path, str]]
    key_parts: list[tuple[str, str]]
    notes: list[str]
    #: engine32_source(): how vblk-engine32 is made, and what became of it (for the manifest)
    engine32: tuple[str, str] = ("none", "")
    engine32_status: str = ""


def _plan(opts: InitramfsBuildOptions) -> _Plan:
    t = RootTree()
    notes: list[str] = []
    for d in ("dev", "proc", "sys", "tmp", "run", "root", "mnt", "etc", "var/tmp"):
        t.mkdir_p(d)
    t.entries["tmp"].perm = 0o1777
    t.entries["root"].perm = 0o700
    t.add_node("dev/console", "char", 5, 1, 0o600)
    t.add_node("dev/null", "char", 1, 3, 0o666)
    t.add_file("etc/passwd", data=ETC_PASSWD.encode(), perm=0o644)
    t.add_file("etc/group", data=ETC_GROUP.encode(), perm=0o644)
    init = Path(opts.init_script)
    if not init.is_file():
        raise BuildError(f"init script not found: {init}")
    t.add_file("init", src=init, perm=0o755, component="init")

    # busybox and its applets
    bb = Path(opts.busybox)
    if not bb.is_file():
        raise BuildError(f"busybox not found at {bb} (apt-get install busybox-static)")
    bb_key = t.add_host_path(bb, "busybox")
    for lib in ldd(bb):
        t.add_host_path(lib, "libs")
    bb_target = "/" + _norm(str(bb))

    # python: binary, libraries, stdlib subset, lib-dynload
    py = _python_info(opts.python)
    t.add_host_path(opts.python, "python")
    t.add_host_path(py["exe"], "python")
    for lib in ldd(py["exe"]):
        t.add_host_path(lib, "libs")
    stdlib = Path(py["stdlib"])
    t.mkdir_p(str(stdlib))
    stdlib_rel = stdlib_files(stdlib)
    for so in dynload_files(stdlib):
        t.add_file(f"{stdlib}/lib-dynload/{so.name}", src=so.resolve(), component="python-dynload")
        for lib in ldd(so):
            t.add_host_path(lib, "libs")

    # agent
    agent_files = _agent_files(Path(opts.agent))
    for src, rel in agent_files:
        t.add_file(f"usr/lib/vblk-agent/{rel}", src=src, perm=0o644, component="agent")

    # fio and extras
    if opts.with_fio:
        if not Path(opts.fio).is_file():
            raise BuildError(f"fio not found at {opts.fio} (apt-get install fio)")
        t.add_host_path(opts.fio, "fio")
        for lib in ldd(opts.fio):
            t.add_host_path(lib, "fio")
    for dest, src in sorted(opts.extra_files.items()):
        if not Path(src).is_file():
            raise BuildError(f"extra file {src} not found")
        t.add_file(dest, src=src, component="extra")

    # applet symlinks last: they never replace a real file
    for applet in busybox_applets(opts.busybox):
        if _norm(applet) == "bin/busybox" or t.exists(applet):
            continue
        t.add_symlink(applet, bb_target, "busybox")
    del bb_key

    key_parts: list[tuple[str, str]] = [
        ("builder", BUILDER_VERSION),
        ("python", py["full"]),
        ("compress_level", str(opts.compress_level)),
        ("stdlib_sources", str(opts.stdlib_sources)),
    ]
    key_parts += t.fingerprint_parts()
    h = _cache.combine(("stdlib", f"{rel.as_posix()}:{_cache.sha256_file(stdlib / rel)}") for rel in stdlib_rel)
    key_parts.append(("stdlib", h))
    if opts.engine_binary:
        key_parts.append(("engine-binary", _cache.sha256_file(opts.engine_binary)))
    elif opts.engine_dir:
        ed = Path(opts.engine_dir)
        if not ed.is_dir():
            raise BuildError(f"engine sources not found at {ed}")
        key_parts += [("engine-src", _cache.hash_tree(ed, exclude_dirs=(".git", "__pycache__"))),
                      ("gcc", _gcc_version()), ("liburing", _liburing_identity())]
    e32 = engine32_source(opts)
    if e32[0] == "binary":
        if not Path(e32[1]).is_file():
            raise BuildError(f"32-bit engine binary not found: {e32[1]}")
        key_parts.append(("engine32-binary", _cache.sha256_file(e32[1])))
    elif e32[0] == "build":
        key_parts.append(("engine32-liburing", f"{e32[1]}:{_cache.sha256_file(e32[1])}"))
    else:
        key_parts.append(("engine32", "none"))
    return _Plan(t, py, stdlib_rel, agent_files, key_parts, notes, e32)


def _compile_stdlib(plan: _Plan, opts: InitramfsBuildOptions, work: Path) -> None:
    stdlib = Path(plan.py["stdlib"])
    stage = work / "stdlib"
    for rel in plan.stdlib_rel:
        dst = stage / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(stdlib / rel, dst)
    cmd = [opts.python, "-I", "-m", "compileall", "-q", "-j0", "-b", "--invalidation-mode", "unchecked-hash",
           "-d", str(stdlib), str(stage)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    if proc.returncode != 0:
        # a few stdlib files are deliberately invalid for some versions (lib2to3 tests etc.): report, go on
        plan.notes.append("compileall: " + " | ".join(proc.stdout.strip().splitlines()[-5:]))
    for rel in plan.stdlib_rel:
        pyc = (stage / rel).with_suffix(".pyc")
        if pyc.is_file():
            plan.tree.add_file(f"{stdlib}/{rel.with_suffix('.pyc').as_posix()}", src=pyc, perm=0o644,
                               component="python-stdlib")
        if opts.stdlib_sources or not pyc.is_file():
            plan.tree.add_file(f"{stdlib}/{rel.as_posix()}", src=stage / rel, perm=0o644,
                               component="python-stdlib")


def _add_engine(plan: _Plan, opts: InitramfsBuildOptions, work: Path) -> None:
    if opts.engine_binary:
        binary = Path(opts.engine_binary)
        if not binary.is_file():
            raise BuildError(f"engine binary not found: {binary}")
    elif opts.engine_dir:
        binary = build_engine(Path(opts.engine_dir), work)
    else:
        plan.notes.append("no engine in this image")
        return
    plan.tree.add_file("usr/bin/vblk-engine", src=binary, perm=0o755, component="engine")
    libs = ldd(binary)
    if libs:
        plan.notes.append(f"vblk-engine is dynamically linked ({len(libs)} libraries added)")
    for lib in libs:
        plan.tree.add_host_path(lib, "libs")


def _add_engine32(plan: _Plan, opts: InitramfsBuildOptions, work: Path) -> None:
    kind, what = plan.engine32
    if kind == "none":
        plan.engine32_status = f"not built: {what}"
        plan.notes.append(f"no vblk-engine32 in this image: {what}")
        return
    if kind == "build":
        assert opts.engine_dir is not None
        binary = build_engine32(Path(opts.engine_dir), work, what)
        plan.engine32_status = f"built with {what}"
    else:
        binary = Path(what)
        plan.engine32_status = f"prebuilt {what}"
    arch = elf_arch(binary)
    if arch != "i386":
        raise BuildError(f"{binary} is not an i386 ELF binary ({arch or 'not ELF'}): vblk-engine32 must be 32-bit")
    plan.tree.add_file(ENGINE32_GUEST_PATH, src=binary, perm=0o755, component="engine32")
    if ldd(binary):
        raise BuildError(f"{binary} is dynamically linked: the guest has no i386 libraries")


def _smoke_test(archive: bytes, plan: _Plan, work: Path) -> str:
    """Unpack the archive and import what the agent needs with the guest's own python (chroot)."""
    if os.geteuid() != 0:
        return "skipped (not root: chroot needs root)"
    root = work / "root"
    extract_cpio(read_cpio(archive), root)
    agent_paths = [src for src, _ in plan.agent_files]
    mods, warnings = scan_imports(agent_paths)
    local = {Path(rel).with_suffix("").as_posix().replace("/", ".") for _, rel in plan.agent_files}
    mods = {m for m in mods if m.split(".")[0] not in {x.split(".")[0] for x in local}}
    wanted = sorted(set(REQUIRED_MODULES) | mods)
    plan.notes.extend(warnings)
    code = ("import importlib,sys\nbad=[]\n"
            f"for m in {wanted!r}:\n"
            "    try: importlib.import_module(m)\n"
            "    except Exception as e: bad.append(f'{m}: {type(e).__name__}: {e}')\n"
            "print('\\n'.join(bad)); sys.exit(1 if bad else 0)\n")
    env = dict(GUEST_ENV)
    try:
        proc = subprocess.run(["chroot", str(root), "/usr/bin/python3", "-c", code], env=env,
                              capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"skipped (chroot failed: {e})"
    if proc.returncode != 0 and "Operation not permitted" in proc.stderr and "chroot" in proc.stderr:
        return "skipped (chroot not permitted here)"
    if proc.returncode != 0:
        raise BuildError("the guest python in the initramfs cannot import what the agent needs:\n"
                         + (proc.stdout + proc.stderr).strip())
    sh = subprocess.run(["chroot", str(root), "/bin/sh", "-c", "echo ok"], env=env, capture_output=True, text=True)
    if sh.stdout.strip() != "ok":
        raise BuildError(f"/bin/sh in the initramfs does not run: {sh.stderr.strip()}")
    return f"ok ({len(wanted)} modules import)" + _smoke_engine32(root, plan, env)


def _smoke_engine32(root: Path, plan: _Plan, env: dict) -> str:
    """Start vblk-engine32 with a bad option (it must say its usage, exit 2). Only a note when it
    cannot: the build host's kernel may lack IA32 emulation, which says nothing of the guest's."""
    if not plan.tree.exists(ENGINE32_GUEST_PATH):
        return ""
    proc = subprocess.run(["chroot", str(root), "/" + ENGINE32_GUEST_PATH, "--smoke-test"], env=env,
                          capture_output=True, text=True)
    if proc.returncode == 2 and "usage: vblk-engine" in proc.stderr:
        return "; vblk-engine32 starts"
    plan.notes.append(f"vblk-engine32 did not start on the build host (exit {proc.returncode}: "
                      f"{proc.stderr.strip()[:200]})")
    return "; vblk-engine32 did not start here (see notes)"


def initramfs_key(opts: InitramfsBuildOptions) -> str:
    return _cache.combine(_plan(opts).key_parts)


def build_initramfs(opts: InitramfsBuildOptions | None = None, progress: Progress | None = None) -> InitramfsArtifact:
    """Build (or fetch from the cache) the initramfs *opts* describe."""
    opts = opts or InitramfsBuildOptions()
    t0 = time.monotonic()
    say = progress or (lambda _m: None)
    if not 0 <= opts.compress_level <= 9:
        raise BuildError(f"compress_level must be 0..9, not {opts.compress_level}")
    cache = _cache.cache_root(opts.cache_dir)
    say("collect files")
    plan = _plan(opts)
    key = _cache.combine(plan.key_parts)
    name = "initramfs.cpio.gz" if opts.compress_level else "initramfs.cpio"
    out = cache / "initramfs" / key
    if (out / name).is_file() and (out / "manifest.json").is_file():
        say(f"initramfs {key[:12]} cached ({out})")
        return _artifact(out, name, key, False, time.monotonic() - t0)

    with tempfile.TemporaryDirectory(prefix="vblk-initramfs-") as tmp:
        work = Path(tmp)
        say(f"precompile {len(plan.stdlib_rel)} stdlib modules (python {plan.py['full']})")
        _compile_stdlib(plan, opts, work)
        say("build engine" if not opts.engine_binary else "add engine")
        _add_engine(plan, opts, work)
        if plan.engine32[0] != "none":
            say("build vblk-engine32" if plan.engine32[0] == "build" else "add vblk-engine32")
        _add_engine32(plan, opts, work)
        say("write cpio")
        raw = io.BytesIO()
        writer = plan.tree.write_cpio(raw)
        cpio = raw.getvalue()
        smoke = "disabled"
        if opts.smoke_test:
            say("smoke test: chroot + import")
            smoke = _smoke_test(cpio, plan, work)
        if opts.compress_level:
            cbuf = io.BytesIO()
            with gzip.GzipFile(filename="", mode="wb", compresslevel=opts.compress_level, fileobj=cbuf,
                               mtime=0) as gz:
                gz.write(cpio)
            payload = cbuf.getvalue()
        else:
            payload = cpio
        components: dict[str, dict[str, int]] = {}
        files = 0
        for _n, e in plan.tree.sorted_items():
            c = components.setdefault(e.component, {"files": 0, "bytes": 0})
            if e.kind == "file":
                files += 1
                c["files"] += 1
                c["bytes"] += e.size()
        stage = _cache.staging_dir(cache / "initramfs", key)
        try:
            (stage / name).write_bytes(payload)
            manifest = {
                "key": key,
                "file": name,
                "sha256": _cache.sha256_bytes(payload),
                "size_bytes": len(payload),
                "uncompressed_bytes": writer.bytes_written,
                "compress": f"gzip -{opts.compress_level}" if opts.compress_level else "none",
                "entries": writer.count,
                "file_count": files,
                "components": components,
                "python": plan.py["full"],
                "stdlib_modules": len(plan.stdlib_rel),
                "stdlib_sources": opts.stdlib_sources,
                "with_fio": opts.with_fio,
                "agent": [rel for _, rel in plan.agent_files],
                "engine32": plan.engine32_status,
                "smoke_test": smoke,
                "notes": plan.notes,
                "build_seconds": round(time.monotonic() - t0, 2),
                "builder_version": BUILDER_VERSION,
            }
            _cache.write_json_atomic(stage / "manifest.json", manifest)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        _cache.publish_dir(stage, out)
    art = _artifact(out, name, key, True, time.monotonic() - t0)
    say(f"initramfs {art.size_bytes / 1e6:.1f} MB ({files} files) built in {art.seconds:.1f}s; smoke test {smoke}")
    return art


def _artifact(d: Path, name: str, key: str, built: bool, seconds: float) -> InitramfsArtifact:
    m = _cache.read_json(d / "manifest.json")
    return InitramfsArtifact(path=d / name, sha256=str(m.get("sha256", "")), size_bytes=int(m.get("size_bytes", 0)),
                             file_count=int(m.get("file_count", 0)), manifest=d / "manifest.json", key=key,
                             built=built, seconds=seconds)


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    d = InitramfsBuildOptions()
    p = argparse.ArgumentParser(prog="python3 -m vblk_ci.build.initramfs", description=__doc__.split("\n\n")[0])
    p.add_argument("--python", default=d.python, help="python3 to ship (default %(default)s)")
    p.add_argument("--busybox", default=d.busybox, help="busybox binary (default %(default)s)")
    p.add_argument("--agent", default=d.agent, help="agent directory or file (default %(default)s)")
    eng = p.add_mutually_exclusive_group()
    eng.add_argument("--engine-dir", default=d.engine_dir, help="engine sources with a Makefile (default %(default)s)")
    eng.add_argument("--engine-binary", help="a prebuilt vblk-engine instead")
    eng.add_argument("--no-engine", action="store_true", help="ship no engine")
    e32 = p.add_mutually_exclusive_group()
    e32.add_argument("--liburing32", default=d.liburing32,
                     help="i386 liburing.a: build vblk-engine32 when it exists (default %(default)s)")
    e32.add_argument("--engine32-binary", help="a prebuilt i386 vblk-engine32 instead")
    e32.add_argument("--no-engine32", action="store_true", help="ship no vblk-engine32")
    p.add_argument("--init", default=d.init_script, help="the /init script (default %(default)s)")
    p.add_argument("--with-fio", action="store_true", help="add fio and its libraries")
    p.add_argument("--extra-file", action="append", default=[], metavar="GUEST=HOST",
                   help="add a host file at a guest path (repeatable)")
    p.add_argument("--compress-level", type=int, default=d.compress_level, help="gzip level, 0 = none (default 6)")
    p.add_argument("--stdlib-sources", action="store_true", help="ship the stdlib .py files too")
    p.add_argument("--no-smoke-test", action="store_true", help="skip the chroot import check")
    add_builder_args(p, "initramfs.cpio.gz and initramfs-manifest.json")
    return p


def options_from_args(a: argparse.Namespace) -> InitramfsBuildOptions:
    extra = {}
    for item in a.extra_file:
        guest, sep, host = item.partition("=")
        if not sep:
            raise UsageError(f"--extra-file wants GUEST=HOST, not {item!r}")
        extra[guest] = host
    return InitramfsBuildOptions(
        python=a.python, busybox=a.busybox, agent=a.agent,
        engine_dir=None if (a.no_engine or a.engine_binary) else a.engine_dir,
        engine_binary=a.engine_binary, liburing32=None if a.no_engine32 else a.liburing32,
        engine32_binary=a.engine32_binary, init_script=a.init, with_fio=a.with_fio, extra_files=extra,
        compress_level=a.compress_level, stdlib_sources=a.stdlib_sources, smoke_test=not a.no_smoke_test,
        cache_dir=a.cache_dir)


def publish(art: InitramfsArtifact, od: Path) -> None:
    """Copy the archive and its manifest to *od* (what the image's stages COPY --from)."""
    shutil.copy2(art.path, od / art.path.name)
    shutil.copy2(art.manifest, od / "initramfs-manifest.json")


def main(argv: list[str] | None = None) -> int:
    return run_builder_cli("initramfs", _parser().parse_args(argv), options_from_args, initramfs_key,
                           build_initramfs, publish, lambda art: art.path)


if __name__ == "__main__":
    sys.exit(main())
