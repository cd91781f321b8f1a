#!/usr/bin/env bash
# Build the appliance image (BuildKit, target appliance-debug, through ci/setup-host.sh), or
# take VBLK_IMAGE as it is. VBLK_SERIES: a series directory of the caller's that replaces
# vblk-ci's driver/ in a copy of the build context. Writes image= to $GITHUB_OUTPUT.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=${GITHUB_OUTPUT:-/dev/stdout}
if [ -n "${VBLK_IMAGE:-}" ]; then
	docker image inspect "$VBLK_IMAGE" >/dev/null || { echo "::error title=vblk-ci::no image $VBLK_IMAGE"; exit 2; }
	echo "vblk-ci: using image $VBLK_IMAGE as it is"
	echo "image=$VBLK_IMAGE" >> "$out"
	exit 0
fi
ctx=$root
if [ -n "${VBLK_SERIES:-}" ]; then
	[ -f "$VBLK_SERIES/series" ] || { echo "::error title=vblk-ci::$VBLK_SERIES has no series file"; exit 2; }
	ctx=$(mktemp -d)
	cp -a "$root/." "$ctx/"
	rm -rf "$ctx/driver"
	cp -a "$VBLK_SERIES" "$ctx/driver"
	echo "vblk-ci: building with the series in $VBLK_SERIES ($(grep -cv '^\s*\(#\|$\)' "$VBLK_SERIES/series") patches)"
fi
cd "$ctx"
. ci/setup-host.sh
tag=${VBLK_TAG:-vblk-ci:action}
vblk_docker_build "$tag" appliance-debug ${VBLK_BASE:+KERNEL_BASE=$VBLK_BASE}
echo "image=$tag" >> "$out"
