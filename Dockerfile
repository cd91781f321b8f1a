# vblk-ci appliance: kernel (a Debian kernel source + the driver series) + initramfs + QEMU.
# Needs BuildKit (cache mounts, parallel stages); ./appliance and tests/run pick
# a docker client that has it (ci/setup-host.sh, vblk_docker_build).
#
#   DOCKER_BUILDKIT=1 docker build --network host -t vblk-ci .                 # smoke-ready image
#   DOCKER_BUILDKIT=1 docker build --network host --target appliance-debug -t vblk-ci .   # + debug kernel
#   docker run --rm [--device /dev/kvm] -v "$PWD/out:/out" vblk-ci
#
# Build arguments:
#   KERNEL_BASE   a base of host/vblk_ci/build/bases.py (7.3, 6.12); empty = its DEFAULT_BASE.
#                 It picks the linux-source package, the series dir and extra fragments.
#   QEMU_SUITE    the Debian suite QEMU comes from: trixie (10.0, default) or trixie-backports (11.1).
#
# Stages, and why they are split this way:
#   * kernel / kernel-debug: one kernel variant each.  The builder keeps its
#     source tree and objects in a BuildKit cache mount, so a change to driver/
#     costs one incremental make, and the two variants compile in parallel.
#   * initramfs: the suites' initramfs and the bench's (the same plus fio).
#   * runtime: QEMU + the orchestrator + the default kernel.  The last stage
#     (`appliance`, what a plain `docker build .` makes) is that, so the first
#     verdict never waits for the debug kernel; `appliance-debug` adds it,
#     `appliance-coverage` adds the gcov kernel and `appliance-full` both.
# Nothing is pulled from a registry but the base image, which can also be made
# locally: mmdebstrap --variant=minbase trixie t.tar && docker import t.tar debian:trixie-slim
# PyPI is reached only for qemu.qmp, and not at all when .wheels/ holds its wheel
# (the host's pip fills it, with the host's proxy and CA set-up).
ARG BASE_IMAGE=debian:trixie-slim
ARG KERNEL_BASE=
ARG QEMU_SUITE=trixie

# ------------------------------------------------- apt sources + trixie-backports
# trixie-backports (linux-source-7.3, QEMU 11.1) from the mirror the base image's
# trixie source names.  Backports are pinned below the release by Debian, so a
# plain install still takes trixie's version; backports come only by name or -t.
FROM ${BASE_IMAGE} AS debian
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
RUN set -e; \
    m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | sed 's/\[[^]]*\] *//' \
        | awk '$1 == "deb" && $3 == "trixie" { print $2; exit }'); \
    [ -n "$m" ] || m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '/^URIs:/ { u = $2 } /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == "trixie") s = 1 } \
               /^$/ { if (s && u) print u; s = 0; u = "" } END { if (s && u) print u }' | head -1); \
    [ -n "$m" ] || { echo "no trixie source in /etc/apt: cannot add trixie-backports" >&2; exit 1; }; \
    echo "deb $m trixie-backports main" > /etc/apt/sources.list.d/trixie-backports.list; \
    echo "apt: added deb $m trixie-backports main"

# ------------------------------------------------------------ kernel toolchain
FROM debian AS kernel-toolchain
RUN echo "kernel toolchain: apt-get install gcc, the kernel's build tools, sparse and python3-ply (checkpatch's SPDX check), about 1 min" \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential bc bison flex libelf-dev libssl-dev cpio xz-utils lz4 kmod git python3 \
      sparse python3-ply \
 && rm -rf /var/lib/apt/lists/*
ENV GIT_AUTHOR_NAME=vblk-ci GIT_AUTHOR_EMAIL=vblk-ci@localhost \
    GIT_COMMITTER_NAME=vblk-ci GIT_COMMITTER_EMAIL=vblk-ci@localhost \
    VBLK_CI_CACHE=/cache PYTHONPATH=/src/host PYTHONDONTWRITEBYTECODE=1
# The base table alone first, so the source package layer survives edits to the builder.
COPY host/vblk_ci/build/bases.py /tmp/bases.py
ARG KERNEL_BASE
RUN pkg=$(python3 /tmp/bases.py package "$KERNEL_BASE") \
 && echo "kernel source: apt-get install $pkg (about 150 MB), about 1 min" \
 && apt-get update \
 && apt-get install -y --no-install-recommends "$pkg" \
 && rm -rf /var/lib/apt/lists/* \
 && ls -l "$(python3 /tmp/bases.py tarball "$KERNEL_BASE")"
# The builder is stdlib-only; a stub package __init__ keeps edits to the rest of host/ out of this stage.
RUN mkdir -p /src/host/vblk_ci && : > /src/host/vblk_ci/__init__.py
COPY host/vblk_ci/build/__init__.py host/vblk_ci/build/bases.py host/vblk_ci/build/cache.py \
     host/vblk_ci/build/exports.py host/vblk_ci/build/kernel.py /src/host/vblk_ci/build/
COPY kernel-config/ /src/kernel-config/
COPY driver/ /src/driver/
# A modular virtio_blk's cpio, appended to the suites' initramfs for that kernel.
COPY images/module-cpio /usr/local/bin/

# ---------------------------------------------------------------------- kernels
# The cache mount outlives the image: a cold build extracts the tree and
# compiles everything (about 11 min on 2 cores for the default variant), a
# later one after a driver/ change re-applies the series and recompiles what it
# touched.  `docker builder prune` drops it.  Each base has its own trees in it.
# Its vmlinux.o (+ identity) goes to /exports, apart from what the appliance ships: the
# gates stage's link check reads it instead of compiling a kernel (build/exports.py).
FROM kernel-toolchain AS kernel
ARG KERNEL_BASE
RUN --mount=type=cache,id=vblk-ci-kernel-default,target=/cache \
    python3 -m vblk_ci.build.kernel --base "$KERNEL_BASE" --output-dir /artifacts \
 && cat /artifacts/kernel-manifest.json \
 && mkdir -p /exports && if [ -d /artifacts/exports ]; then mv /artifacts/exports/* /exports/ && rmdir /artifacts/exports; fi \
 && ls -l /exports

# base.config + debug.config: KASAN, KFENCE, lockdep, debug objects, slub debug,
# and virtio_blk as a module with allocation-failure injection (the inject suite).
FROM kernel-toolchain AS kernel-debug
ARG KERNEL_BASE
RUN --mount=type=cache,id=vblk-ci-kernel-debug,target=/cache \
    python3 -m vblk_ci.build.kernel --base "$KERNEL_BASE" --variant debug --output-dir /artifacts \
 && cat /artifacts/kernel-manifest.json \
 && module-cpio /artifacts

# base.config + coverage.config: gcov counters for drivers/block/virtio_blk.c only
# (vblk-ci run --coverage, vblk-ci coverage).  Its own cache mount, like the others.
# virtio_blk is a module there, so the build also shows that it links (the series
# exports ioprio_check_cap() and bdev_writes_blocked(), which it calls).
FROM kernel-toolchain AS kernel-coverage
ARG KERNEL_BASE
RUN --mount=type=cache,id=vblk-ci-kernel-coverage,target=/cache \
    python3 -m vblk_ci.build.kernel --base "$KERNEL_BASE" --variant coverage \
      --output-dir /artifacts \
 && cat /artifacts/kernel-manifest.json \
 && ls -l /artifacts/virtio_blk.gcno /artifacts/virtio_blk.c /artifacts/series-lines.json \
 && module-cpio /artifacts

# ---------------------------------------------------------------- series gates
# python3 -m vblk_ci.build.quality: git am, checkpatch --strict, sparse, W=1 (=y and =m)
# and a virtio_blk.ko that links, on this base's tarball, for hosts that lack it
# (vblk_ci.gates: `vblk-ci gates`, tests/kernel/test_series_gates.py, the workflow's
# gates job).  Those mount the checkout on /src, so the series and the gates are the
# checkout's; alone, the image checks the series it was built with.  Trees and
# objects go to /cache: mount a volume there to keep them.  The link check reads the
# default kernel's vmlinux.o (/opt/vblk-ci/exports) when the series under test differs
# from the image's only in the module's source; otherwise it compiles one (a kernel's
# worth: 7.3 took 58 min on 2 cores under load 8, 2026-11-30).
FROM kernel-toolchain AS gates
ARG KERNEL_BASE
ENV VBLK_CI_KERNEL_BASE=${KERNEL_BASE} VBLK_CI_EXPORTS=/opt/vblk-ci/exports
COPY --from=kernel /exports/ /opt/vblk-ci/exports/
COPY host/vblk_ci/errors.py /src/host/vblk_ci/
COPY host/vblk_ci/build/quality.py /src/host/vblk_ci/build/
ENTRYPOINT ["python3", "-m", "vblk_ci.build.quality"]

# ------------------------------------------------------------------ initramfs
# Two initramfs: the suites' one, and the bench's, which adds Debian's fio as the
# block-path reference (fio's libraries make it 4.5x larger, so the suites do not pay for it).
FROM ${BASE_IMAGE} AS initramfs
ENV DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8
RUN echo "initramfs tools: apt-get install busybox, python3, liburing, gcc (+ multilib), fio, about 1 min" \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      busybox-static python3 liburing-dev gcc gcc-multilib make libc6-dev fio \
 && rm -rf /var/lib/apt/lists/*
# A 32-bit engine (compat-ring callers) links i386 liburing.a statically, so only
# that file is needed: it is unpacked from the i386 package of trixie main, with
# a private apt state, instead of co-installing i386 libc (whose version would
# have to match amd64's to the letter, and the mirror's i386 -updates/-security
# indexes are not always in sync).
RUN echo "i386 liburing.a: apt-get download liburing-dev:i386" \
 && d=/tmp/i386 && mkdir -p $d/lists/partial $d/cache/archives/partial \
 && echo "deb [arch=i386] http://deb.debian.org/debian trixie main" > $d/sources.list \
 && dpkg --add-architecture i386 \
 && o="-o Dir::Etc::sourcelist=$d/sources.list -o Dir::Etc::sourceparts=- -o Dir::State::Lists=$d/lists -o Dir::Cache=$d/cache" \
 && apt-get $o update && (cd $d && apt-get $o download liburing-dev:i386) \
 && dpkg-deb -x $d/liburing-dev_*_i386.deb /opt/i386 \
 && dpkg --remove-architecture i386 && rm -rf $d \
 && ls -l /opt/i386/usr/lib/i386-linux-gnu/liburing.a
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
FROM debian AS runtime
# qemu-system-x86 depends on seabios (bios-256k.bin for -M q35), ipxe-qemu and
# qemu-system-data (linuxboot_dma.bin, kvmvapic.bin for -kernel).
# QEMU_SUITE=trixie-backports installs QEMU (and what it needs) from backports.
ARG QEMU_SUITE
RUN echo "runtime: apt-get install QEMU ($QEMU_SUITE) + Python libraries (about 250 MB), about 1-2 min" \
 && apt-get update \
 && apt-get install -y --no-install-recommends -t "$QEMU_SUITE" \
      qemu-system-x86 qemu-system-data seabios qemu-utils \
 && apt-get install -y --no-install-recommends \
      python3 python3-venv python3-setuptools python3-pexpect python3-testinfra \
      python3-matplotlib \
 && rm -rf /var/lib/apt/lists/* \
 && qemu-system-x86_64 --version | head -1
# vblk-ci run/build kernel --tree DIR builds a kernel tree mounted into the container.
RUN echo "runtime: the kernel's build tools for --tree (about 200 MB), about 1 min" \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential bc bison flex libelf-dev libssl-dev cpio xz-utils lz4 kmod git binutils \
 && rm -rf /var/lib/apt/lists/*
# Debian's packages for the rest; qemu.qmp is not packaged in Debian.  The
# set-up scripts fetch its wheel into .wheels/ with the host's own pip; a build
# without it goes to the index pip is pointed at (--build-arg PIP_INDEX_URL=...).
ARG QEMU_QMP_VERSION=0.0.6
ARG PIP_INDEX_URL
COPY pyproject.toml .wheel[s] /tmp/wheels/
RUN python3 -m venv --system-site-packages /opt/vblk-ci/venv \
 && if ls /tmp/wheels/*.whl >/dev/null 2>&1; then from="--no-index --find-links /tmp/wheels"; \
    else from=""; echo "no .wheels/ in the build context: pip fetches qemu.qmp from ${PIP_INDEX_URL:-PyPI}"; fi \
 && /opt/vblk-ci/venv/bin/pip install --no-cache-dir --disable-pip-version-check $from \
      "qemu.qmp==${QEMU_QMP_VERSION}" \
 && rm -rf /tmp/wheels
ENV PATH=/opt/vblk-ci/venv/bin:$PATH
COPY --from=initramfs /artifacts/ /opt/vblk-ci/
COPY --from=initramfs /artifacts-bench/ /opt/vblk-ci/bench/
COPY ci/matrix-default.toml /opt/vblk-ci/ci/
COPY ci/schedules/ /opt/vblk-ci/ci/schedules/
COPY pyproject.toml /src/vblk-ci/
COPY host/ /src/vblk-ci/host/
RUN pip install --no-cache-dir --disable-pip-version-check --no-deps --no-build-isolation /src/vblk-ci \
 && python3 -c "import vblk_ci, qemu.qmp, pexpect, testinfra, matplotlib"
COPY kernel-config/ /opt/vblk-ci/kernel-config/
COPY --from=kernel /artifacts/ /opt/vblk-ci/
ENV VBLK_CI_KERNEL_CONFIG=/opt/vblk-ci/kernel-config VBLK_CI_CACHE=/cache \
    VBLK_CI_KERNEL=/opt/vblk-ci/bzImage \
    VBLK_CI_INITRAMFS=/opt/vblk-ci/initramfs.cpio.gz \
    VBLK_CI_INITRAMFS_BENCH=/opt/vblk-ci/bench/initramfs.cpio.gz
VOLUME /out
ENTRYPOINT ["vblk-ci"]
CMD ["run", "--out", "/out"]

# ------------------------------------------------------- with the debug kernel
FROM runtime AS appliance-debug
COPY --from=kernel-debug /artifacts/ /opt/vblk-ci/debug/
# Its virtio_blk is a module: its initramfs, beside it, is the suites' one + the module's
# cpio (a command given --kernel .../debug/bzImage boots the initramfs beside it).
RUN cat /opt/vblk-ci/initramfs.cpio.gz /opt/vblk-ci/debug/modules.cpio.gz > /opt/vblk-ci/debug/initramfs.cpio.gz
ENV VBLK_CI_KERNEL_DEBUG=/opt/vblk-ci/debug/bzImage \
    VBLK_CI_INITRAMFS_DEBUG=/opt/vblk-ci/debug/initramfs.cpio.gz

# --------------------------------------------------- with the coverage kernel
# The gcov kernel and what `vblk-ci coverage` reads beside it, at /opt/vblk-ci/coverage/,
# plus gcov of the gcc that compiled it (trixie's gcc-14: a .gcno is read only by
# its own gcov version) and lcov's genhtml for the per-line HTML report.
FROM runtime AS appliance-coverage
RUN echo "coverage tools: apt-get install gcc-14 (gcov-14) and lcov, about 1 min" \
 && apt-get update \
 && apt-get install -y --no-install-recommends gcc-14 lcov \
 && rm -rf /var/lib/apt/lists/* \
 && gcov-14 --version | head -1 && genhtml --version
COPY --from=kernel-coverage /artifacts/ /opt/vblk-ci/coverage/
# The coverage kernel's virtio_blk is a module: its initramfs is the suites' one + the module's cpio.
RUN cat /opt/vblk-ci/initramfs.cpio.gz /opt/vblk-ci/coverage/modules.cpio.gz > /opt/vblk-ci/coverage/initramfs.cpio.gz
ENV VBLK_CI_KERNEL_COVERAGE=/opt/vblk-ci/coverage/bzImage \
    VBLK_CI_INITRAMFS_COVERAGE=/opt/vblk-ci/coverage/initramfs.cpio.gz \
    VBLK_CI_COVERAGE_DIR=/opt/vblk-ci/coverage \
    VBLK_CI_GCOV=gcov-14

# Every kernel: default, debug and coverage.
FROM appliance-coverage AS appliance-full
COPY --from=appliance-debug /opt/vblk-ci/debug/ /opt/vblk-ci/debug/
ENV VBLK_CI_KERNEL_DEBUG=/opt/vblk-ci/debug/bzImage \
    VBLK_CI_INITRAMFS_DEBUG=/opt/vblk-ci/debug/initramfs.cpio.gz

# ----------------------------------------------------- the default build target
# Last, so a plain `docker build .` makes the smoke-ready image without the debug kernel.
FROM runtime AS appliance
