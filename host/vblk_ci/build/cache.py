"""Content-addressed build cache helpers (stdlib only).

Layout under :func:`cache_root` (``$VBLK_CI_CACHE`` or ``~/.cache/vblk-ci``)::

    kernels/<key>/      bzImage, kernel.config, manifest.json [, virtio_blk.ko]
    initramfs/<key>/    initramfs.cpio.gz, manifest.json
    trees/<variant>/    persistent kernel source tree (git), build objects in
    trees/<variant>-build/
    hashes.json         memo of file sha256 by (path, size, mtime, inode)

Everything published under ``kernels/`` and ``initramfs/`` is complete: it is
written to a temporary sibling directory and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Iterable

_BUF = 1 << 20
_memo_lock = threading.Lock()


def cache_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory: *explicit*, else ``$VBLK_CI_CACHE``, else ``~/.cache/vblk-ci``."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get("VBLK_CI_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return (base / "vblk-ci").resolve()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file_raw(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_BUF)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike[str], memo_dir: Path | None = None) -> str:
    """sha256 of a file's bytes.

    With *memo_dir*, the digest is remembered in ``memo_dir/hashes.json`` keyed
    by (realpath, size, mtime_ns, inode), so re-hashing a large unchanged file
    (the 140 MB kernel tarball) is free.
    """
    p = Path(path)
    if memo_dir is None:
        return _sha256_file_raw(p)
    st = p.stat()
    ident = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
    real = str(p.resolve())
    memo_path = Path(memo_dir) / "hashes.json"
    with _memo_lock:
        memo = _load_json(memo_path)
        hit = memo.get(real)
        if isinstance(hit, dict) and hit.get("ident") == ident:
            return str(hit["sha256"])
    digest = _sha256_file_raw(p)
    with _memo_lock:
        memo = _load_json(memo_path)
        memo[real] = {"ident": ident, "sha256": digest}
        try:
            write_json_atomic(memo_path, memo)
        except OSError:
            pass  # a read-only cache only loses the memo
    return digest


def _load_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_json_atomic(path: str | os.PathLike[str], data: object) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_json(path: str | os.PathLike[str]) -> dict:
    return _load_json(Path(path))


def iter_tree(root: str | os.PathLike[str], exclude_dirs: Iterable[str] = ()) -> list[Path]:
    """Every file and symlink under *root*, relative to it, sorted; *exclude_dirs* are names pruned anywhere."""
    root = Path(root)
    skip = set(exclude_dirs)
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        rel = Path(dirpath).relative_to(root)
        for name in filenames:
            out.append(rel / name)
        for name in dirnames:
            if os.path.islink(os.path.join(dirpath, name)):
                out.append(rel / name)
    return sorted(out, key=lambda p: p.parts)


def hash_tree(
    root: str | os.PathLike[str],
    exclude_dirs: Iterable[str] = (".git", "__pycache__"),
    memo_dir: Path | None = None,
) -> str:
    """sha256 over a directory's relative paths, modes (x bit), symlink targets and file contents."""
    root = Path(root)
    h = hashlib.sha256()
    for rel in iter_tree(root, exclude_dirs):
        full = root / rel
        if full.is_symlink():
            h.update(b"L\0" + str(rel).encode() + b"\0" + os.readlink(full).encode() + b"\0")
            continue
        mode = full.stat().st_mode
        h.update(b"F\0" + str(rel).encode() + b"\0" + (b"x" if mode & 0o111 else b"-") + b"\0")
        h.update(sha256_file(full, memo_dir).encode() + b"\0")
    return h.hexdigest()


def hash_tree_stat(root: str | os.PathLike[str], exclude_dirs: Iterable[str] = (".git",)) -> str:
    """Cheap identity of a large tree: relative path, size and mtime of every file (no contents)."""
    root = Path(root)
    h = hashlib.sha256()
    for rel in iter_tree(root, exclude_dirs):
        st = os.lstat(root / rel)
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def combine(parts: Iterable[tuple[str, str]]) -> str:
    """A key from labelled parts: sha256 of ``label=value`` lines, in the given order."""
    h = hashlib.sha256()
    for label, value in parts:
        h.update(label.encode() + b"=" + value.encode() + b"\n")
    return h.hexdigest()


def publish_dir(tmp_dir: str | os.PathLike[str], final_dir: str | os.PathLike[str]) -> Path:
    """Atomically move a completed *tmp_dir* to *final_dir* (same filesystem).

    If *final_dir* already exists (another build published the same key first),
    the existing one wins and *tmp_dir* is removed.
    """
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp_dir, final_dir)
    except OSError:
        if final_dir.is_dir():
            shutil.rmtree(tmp_dir, ignore_errors=True)
        else:
            raise
    return final_dir


def staging_dir(parent: str | os.PathLike[str], key: str) -> Path:
    """A fresh temporary directory beside where ``parent/key`` will be published."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:16]}-", dir=parent))
    os.chmod(d, 0o755)
    return d
