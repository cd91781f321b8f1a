# shellcheck shell=bash
# Host set-up shared by ./appliance and .ci/run: sourced, not run.  Debian
# (bookworm or later), root.  Every step checks first, so re-running is cheap.
#
#   vblk_packages PKG...     apt-get install what is missing
#   vblk_dockerd             start dockerd (no bridge: no private-range addresses)
#                            unless one answers; sets VBLK_DOCKERD_PID if it did
#   vblk_base_image          make debian:trixie-slim locally (mmdebstrap) if absent
#   vblk_wheels              the image's PyPI pins as wheels in .wheels/, fetched
#                            with the host's own pip (its index, proxy and CA)
#   vblk_docker_build TAG TARGET [NAME=VALUE...]   BuildKit build of one Dockerfile
#                            target, each NAME=VALUE a --build-arg (KERNEL_BASE, QEMU_SUITE)
#   vblk_step MSG            one progress line with elapsed seconds

VBLK_T0=${VBLK_T0:-$SECONDS}
VBLK_DOCKERD_PID=

vblk_step() { printf '[%s %5ds] %s\n' "${VBLK_STEP_TAG:-setup}" "$((SECONDS - VBLK_T0))" "$*"; }

vblk_packages() {
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && { vblk_step "packages present"; return 0; }
	vblk_step "apt-get install ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq </dev/null
	local log
	log=$(mktemp)
	if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >"$log" 2>&1; then
		tail -40 "$log"
		rm -f "$log"
		return 1
	fi
	rm -f "$log"
}

vblk_dockerd() {
	if docker info >/dev/null 2>&1; then
		vblk_step "dockerd already answering"
		return 0
	fi
	vblk_step "starting dockerd --bridge=none --iptables=false (log: /var/log/vblk-ci-dockerd.log)"
	dockerd --bridge=none --iptables=false </dev/null >/var/log/vblk-ci-dockerd.log 2>&1 &
	VBLK_DOCKERD_PID=$!
	local _
	for _ in $(seq 1 60); do
		docker info >/dev/null 2>&1 && { vblk_step "dockerd up"; return 0; }
		kill -0 "$VBLK_DOCKERD_PID" 2>/dev/null || break
		sleep 1
	done
	vblk_step "dockerd did not come up"
	tail -20 /var/log/vblk-ci-dockerd.log
	return 1
}

vblk_base_image() {
	if docker image inspect debian:trixie-slim >/dev/null 2>&1; then
		vblk_step "base image debian:trixie-slim present"
		return 0
	fi
	vblk_step "making debian:trixie-slim with mmdebstrap (no registry needed)"
	local tar
	tar=$(mktemp --suffix=.tar)
	mmdebstrap --quiet --variant=minbase trixie "$tar" </dev/null
	docker import "$tar" debian:trixie-slim >/dev/null
	rm -f "$tar"
	vblk_step "base image imported"
}

# The Dockerfile's PyPI pins (ARG *_VERSION lines naming a PyPI package).  A
# build container does not see the host's pip configuration (index, proxy,
# trusted CA), so the host's pip downloads them and the build installs from
# .wheels/ with --no-index.
vblk_wheels() {
	local version py=${VBLK_PYTHON:-python3}
	version=$(sed -n 's/^ARG QEMU_QMP_VERSION=//p' Dockerfile)
	[ -n "$version" ] || { vblk_step "Dockerfile pins no qemu.qmp version"; return 1; }
	if ls .wheels/qemu[._]qmp-"$version"-*.whl >/dev/null 2>&1; then
		vblk_step "wheel qemu.qmp==$version present in .wheels/"
		return 0
	fi
	if ! "$py" -m pip --version >/dev/null 2>&1; then
		vblk_packages python3-pip
		py=/usr/bin/python3
	fi
	vblk_step "fetching qemu.qmp==$version into .wheels/ with the host's pip ($("$py" -m pip --version | cut -d' ' -f1-2))"
	if ! "$py" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
		-d .wheels "qemu.qmp==$version" </dev/null; then
		vblk_step "the host's pip could not fetch qemu.qmp==$version: fix its index/proxy set-up" \
			"(pip config list), or put the wheel in .wheels/ yourself"
		return 1
	fi
}

# A docker client that builds with BuildKit: `docker` when it has buildx
# (Docker >= 23 needs it for BuildKit), else a client older than 23, whose
# DOCKER_BUILDKIT=1 uses the engine's own BuildKit (Debian bookworm's docker.io
# 20.10 ships /usr/bin/docker; a newer client may sit before it on PATH).
vblk_buildkit_client() {
	local c major
	for c in docker /usr/bin/docker; do
		command -v "$c" >/dev/null 2>&1 || continue
		if "$c" buildx version >/dev/null 2>&1; then echo "$c"; return 0; fi
		major=$("$c" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1)
		if [ -n "$major" ] && [ "$major" -lt 23 ] 2>/dev/null; then echo "$c"; return 0; fi
	done
	return 1
}

# vblk_docker_build TAG TARGET [NAME=VALUE...]: build the Dockerfile's TARGET as TAG,
# each NAME=VALUE a --build-arg (KERNEL_BASE, QEMU_SUITE).  BuildKit builds only the
# stages TARGET needs, in parallel, and keeps the kernel objects in cache mounts;
# --progress=plain prints every step with its time.
vblk_docker_build() {
	local tag=$1 target=$2 client t0=$SECONDS a args=()
	shift 2
	for a in "$@"; do args+=(--build-arg "$a"); done
	client=$(vblk_buildkit_client) || {
		vblk_step "no docker client with BuildKit: install docker-buildx, or Debian's docker.io (/usr/bin/docker)"
		return 2
	}
	vblk_wheels || return 1
	vblk_step "building image $tag (target $target${*:+, $*}) with BuildKit; cold on 2 idle cores about 11 min" \
		"for the default kernel (each further kernel as much again), warm seconds"
	DOCKER_BUILDKIT=1 "$client" build --progress=plain --network host --target "$target" "${args[@]}" \
		-t "$tag" . </dev/null \
		|| { vblk_step "docker build failed after $((SECONDS - t0))s"; return 1; }
	vblk_step "image $tag built in $((SECONDS - t0))s"
}
