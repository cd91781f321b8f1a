# shellcheck shell=bash
# Host set-up shared by ./appliance and .ci/run: sourced, not run.  Debian
# (bookworm or later), root.  Every step checks first, so re-running is cheap.
#
#   vblk_packages PKG...     apt-get install what is missing
#   vblk_dockerd             start dockerd (no bridge: no private-range addresses)
#                            unless one answers; sets VBLK_DOCKERD_PID if it did
#   vblk_base_image          make debian:trixie-slim locally (mmdebstrap) if absent
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
