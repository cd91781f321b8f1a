# vblk-ci appliance: kernel (Debian 6.12 + driver/ series) + initramfs + QEMU.
#
#   docker build --network host -t vblk-ci .
#   docker run --rm [--device /dev/kvm] -v "$PWD/out:/out" vblk-ci
#
# Layer order is chosen for rebuild cost:
#   * kernel stage: only the kernel builder (build/kernel.py, cache.py) and
#     kernel-config/ go in before the first (unpatched, full) kernel build;
#     driver/ comes after it, so a change to the series costs one incremental
#     make in the same source tree and objects directory.
#   * initramfs stage: only build/initramfs.py + cache.py, images/ and guest-agent/;
#     it builds the suites' initramfs and the bench's (the same plus fio).
#   * runtime stage: the rest of host/ is copied last.
# Nothing here is pulled from a registry but the base image, which can also be
# made locally: mmdebstrap --variant=minbase trixie t.tar && docker import t.tar debian:trixie-slim
ARG BASE_IMAGE=debian:trixie-slim

# --------------------------------------------------------------------- kernel
FROM ${BASE_IMAGE} AS kernel
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      linux-source-6.12 build-essential bc bison flex libelf-dev libssl-dev cpio xz-utils lz4 kmod git python3 \
 && rm -rf /var/lib/apt/lists/*
ENV GIT_AUTHOR_NAME=vblk-ci GIT_AUTHOR_EMAIL=vblk-ci@localhost \
    GIT_COMMITTER_NAME=vblk-ci GIT_COMMITTER_EMAIL=vblk-ci@localhost \
    VBLK_CI_CACHE=/cache PYTHONPATH=/src/host PYTHONDONTWRITEBYTECODE=1
# The builder is stdlib-only; a stub package __init__ keeps edits to the rest of host/ out of this stage.
RUN mkdir -p /src/host/vblk_ci && : > /src/host/vblk_ci/__init__.py
COPY host/vblk_ci/build/__init__.py host/vblk_ci/build/cache.py host/vblk_ci/build/kernel.py \
     /src/host/vblk_ci/build/
COPY kernel-config/ /src/kernel-config/
# 1) the unpatched trees with the same configs: cached layers holding all
#    objects, for the default and the debug variant (base.config + debug.config:
#    KASAN, KFENCE, lockdep, debug objects, slub debug; the driver suite's
#    zero-reports run)
RUN python3 -m vblk_ci.build.kernel --no-series
RUN python3 -m vblk_ci.build.kernel --no-series --variant debug
# 2) the series on top of both: incremental (only what the patches touch
#    recompiles), so a driver-only change costs two incremental makes
COPY driver/ /src/driver/
RUN python3 -m vblk_ci.build.kernel --output-dir /artifacts \
 && cat /artifacts/kernel-manifest.json
RUN python3 -m vblk_ci.build.kernel --variant debug --output-dir /artifacts-debug \
 && cat /artifacts-debug/kernel-manifest.json

# ------------------------------------------------------------------ initramfs
# Two initramfs: the suites' one, and the bench's, which adds Debian's fio as the
# block-path reference (fio's libraries make it 4.5x larger, so the suites do not pay for it).
FROM ${BASE_IMAGE} AS initramfs
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      busybox-static python3 liburing-dev gcc make libc6-dev fio \
 && rm -rf /var/lib/apt/lists/*
ENV VBLK_CI_CACHE=/cache PYTHONPATH=/src/host PYTHONDONTWRITEBYTECODE=1
RUN mkdir -p /src/host/vblk_ci && : > /src/host/vblk_ci/__init__.py
COPY host/vblk_ci/build/__init__.py host/vblk_ci/build/cache.py host/vblk_ci/build/initramfs.py \
     /src/host/vblk_ci/build/
COPY images/ /src/images/
COPY guest-agent/ /src/guest-agent/
RUN python3 -m vblk_ci.build.initramfs --output-dir /artifacts \
 && cat /artifacts/initramfs-manifest.json
RUN python3 -m vblk_ci.build.initramfs --output-dir /artifacts-bench --with-fio \
 && cat /artifacts-bench/initramfs-manifest.json

# -------------------------------------------------------------------- runtime
FROM ${BASE_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
# qemu-system-x86 depends on seabios (bios-256k.bin for -M q35), ipxe-qemu and
# qemu-system-data (linuxboot_dma.bin, kvmvapic.bin for -kernel).
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      qemu-system-x86 qemu-system-data seabios qemu-utils \
      python3 python3-venv python3-setuptools python3-pexpect python3-docker python3-testinfra \
      python3-matplotlib \
 && rm -rf /var/lib/apt/lists/*
# Debian's packages for the rest; PyPI only for qemu.qmp (not packaged in Debian).
# An optional .wheels/ directory in the build context (tests/run fills it with
# the host's pip, whose proxy/CA setup a build container may lack) is used
# instead of PyPI when it holds wheels.
ARG QEMU_QMP_VERSION=0.0.6
COPY pyproject.toml .wheel[s] /tmp/wheels/
RUN python3 -m venv --system-site-packages /opt/vblk-ci/venv \
 && if ls /tmp/wheels/*.whl >/dev/null 2>&1; then from="--no-index --find-links /tmp/wheels"; else from=""; fi \
 && /opt/vblk-ci/venv/bin/pip install --no-cache-dir --disable-pip-version-check $from \
      "qemu.qmp==${QEMU_QMP_VERSION}" \
 && rm -rf /tmp/wheels
ENV PATH=/opt/vblk-ci/venv/bin:$PATH
COPY --from=kernel /artifacts/ /opt/vblk-ci/
COPY --from=kernel /artifacts-debug/ /opt/vblk-ci/debug/
COPY --from=initramfs /artifacts/ /opt/vblk-ci/
COPY --from=initramfs /artifacts-bench/ /opt/vblk-ci/bench/
COPY ci/matrix-default.toml /opt/vblk-ci/ci/
COPY ci/schedules/ /opt/vblk-ci/ci/schedules/
COPY pyproject.toml /src/vblk-ci/
COPY host/ /src/vblk-ci/host/
RUN pip install --no-cache-dir --disable-pip-version-check --no-deps --no-build-isolation /src/vblk-ci \
 && python3 -c "import vblk_ci, qemu.qmp, pexpect, docker, testinfra, matplotlib"
ENV VBLK_CI_KERNEL=/opt/vblk-ci/bzImage \
    VBLK_CI_INITRAMFS=/opt/vblk-ci/initramfs.cpio.gz \
    VBLK_CI_INITRAMFS_BENCH=/opt/vblk-ci/bench/initramfs.cpio.gz
VOLUME /out
ENTRYPOINT ["vblk-ci"]
CMD ["run", "--out", "/out"]
