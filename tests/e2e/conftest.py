"""Where the e2e tests get the real appliance artifacts from.

VBLK_CI_KERNEL + VBLK_CI_INITRAMFS (and VBLK_CI_KERNEL_DEBUG + VBLK_CI_INITRAMFS_DEBUG, optional) name
files directly; otherwise, with
VBLK_CI_IMAGE (set by ./tests/run after it builds the image), the kernel and
initramfs are copied out of that image through the Docker engine, so the host's
QEMU boots exactly what the image ships. With neither, the tests skip and say why.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

IMAGE_ARTIFACTS = {
    "kernel": "/opt/vblk-ci/bzImage",
    "kernel_debug": "/opt/vblk-ci/debug/bzImage",
    # The debug kernel's virtio_blk is a module: it boots the initramfs beside it.
    "initramfs_debug": "/opt/vblk-ci/debug/initramfs.cpio.gz",
    "initramfs": "/opt/vblk-ci/initramfs.cpio.gz",
    "initramfs_bench": "/opt/vblk-ci/bench/initramfs.cpio.gz",  # + fio, for vblk-ci bench
    "kernel_manifest": "/opt/vblk-ci/kernel-manifest.json",  # base, release, series (name, sha256)
}


def _from_env() -> dict[str, Path] | None:
    paths = {"kernel": os.environ.get("VBLK_CI_KERNEL"), "initramfs": os.environ.get("VBLK_CI_INITRAMFS")}
    if not all(paths.values()):
        return None
    missing = [p for p in paths.values() if not Path(p).is_file()]
    if missing:
        pytest.skip(f"artifact named in the environment does not exist: {', '.join(missing)}")
    found = {k: Path(v) for k, v in paths.items()}
    for name, env in (("kernel_debug", "VBLK_CI_KERNEL_DEBUG"), ("initramfs_debug", "VBLK_CI_INITRAMFS_DEBUG"),
                      ("initramfs_bench", "VBLK_CI_INITRAMFS_BENCH")):
        value = os.environ.get(env)
        if value and Path(value).is_file():
            found[name] = Path(value)
    return found


def _copy_out_of_image(image: str, dest: Path, names: tuple[str, ...] = tuple(IMAGE_ARTIFACTS)) -> dict[str, Path]:
    import docker  # only needed on this path

    client = docker.from_env()
    container = client.containers.create(image, command=["version"])
    try:
        out = {}
        for name in names:
            path = IMAGE_ARTIFACTS[name]
            stream, _ = container.get_archive(path)
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                member = tar.getmembers()[0]
                data = tar.extractfile(member).read()
            # One folder per artifact: the two kernels are both called bzImage.
            out[name] = dest / name / Path(path).name
            out[name].parent.mkdir()
            out[name].write_bytes(data)
        return out
    finally:
        container.remove(force=True)


@pytest.fixture(scope="session")
def image() -> str:
    name = os.environ.get("VBLK_CI_IMAGE")
    if not name:
        pytest.skip("VBLK_CI_IMAGE is not set (./tests/run builds the image and sets it)")
    return name


@pytest.fixture(scope="session")
def appliance(tmp_path_factory) -> dict[str, Path]:
    found = _from_env()
    if found:
        return found
    if not os.environ.get("VBLK_CI_IMAGE"):
        pytest.skip("set VBLK_CI_KERNEL and VBLK_CI_INITRAMFS, or VBLK_CI_IMAGE to take them from the image")
    return _copy_out_of_image(os.environ["VBLK_CI_IMAGE"], tmp_path_factory.mktemp("appliance"))


@pytest.fixture(scope="session")
def run_suite(appliance, tmp_path_factory):
    """``run_suite(suite, variant)``: run ``suite`` on the default or the debug kernel (skipped
    when there is no debug kernel); returns (result, event recorder, run dir)."""
    from vblk_ci import events as E
    from vblk_ci.runner import Plan, run

    def go(suite: str, variant: str):
        if variant == "default":
            kernel, initramfs = appliance["kernel"], appliance["initramfs"]
        else:
            kernel, initramfs = appliance.get("kernel_debug"), appliance.get("initramfs_debug")
        if kernel is None or initramfs is None:
            pytest.skip("no debug kernel and its initramfs (set VBLK_CI_KERNEL_DEBUG and VBLK_CI_INITRAMFS_DEBUG, "
                        "or use an image that ships them)")
        run_dir = tmp_path_factory.mktemp(f"{suite}-{variant}")
        recorder = E.Recorder()
        # Strict, as CI runs: a skip without an allowed reason fails the run.
        result = run(Plan(kernel=kernel, initramfs=initramfs, run_dir=run_dir, suite=suite, strict=True),
                     recorder)
        return result, recorder, run_dir

    return go


@pytest.fixture(scope="session")
def appliance_612(tmp_path_factory) -> dict[str, Path]:
    """The 6.12 backport image's kernel, its manifest and initramfs (VBLK_CI_IMAGE_612, which
    ./tests/run builds as vblk-ci:test-6.12: target ``appliance``, KERNEL_BASE=6.12)."""
    name = os.environ.get("VBLK_CI_IMAGE_612")
    if not name:
        pytest.skip("VBLK_CI_IMAGE_612 is not set (./tests/run builds the 6.12 backport image and sets it)")
    import docker

    try:
        docker.from_env().images.get(name)
    except docker.errors.ImageNotFound:
        pytest.skip(f"VBLK_CI_IMAGE_612={name}: no such image")
    return _copy_out_of_image(name, tmp_path_factory.mktemp("appliance-612"),
                              ("kernel", "kernel_manifest", "initramfs"))
