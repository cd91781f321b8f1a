#!/usr/bin/env bash
# The actions/cache key of the kernel objects: base + config fragments + toolchain (the
# Dockerfile, which pins the image's compiler) + the tree's identity (its path). Writes
# key= and restore-prefix= to $GITHUB_OUTPUT (stdout without it).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
frag=$(cat "$root"/kernel-config/*.config | sha256sum | cut -c1-16)
tool=$(sha256sum "$root/Dockerfile" | cut -c1-16)
tree=$(printf '%s' "${VBLK_TREE:-}" | sha256sum | cut -c1-8)
prefix="vblk-ci-kernel-${VBLK_BASE:-default}-cfg$frag-tc$tool-tree$tree-"
key="$prefix$(date -u +%Y%m%d%H%M%S)"  # a new save each run; restore takes the newest prefix match
out=${GITHUB_OUTPUT:-/dev/stdout}
{ echo "key=$key"; echo "restore-prefix=$prefix"; } >> "$out"
