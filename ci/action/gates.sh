#!/usr/bin/env bash
# Step "Series gates": vblk-ci gates on the series (inputs.series, else vblk-ci's own for
# inputs.base, else every base): git am, checkpatch --strict, sparse, W=1 =y/=m and the
# module links, in the image's gates stage (built here; stdlib Python from this checkout).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
args=(--where docker)
if [ -n "${VBLK_BASE:-}" ]; then args+=(--base "$VBLK_BASE"); fi
if [ -n "${VBLK_SERIES:-}" ]; then args+=(--series-dir "$(realpath "$VBLK_SERIES")"); fi
out=$(realpath -m "${VBLK_OUT:-vblk-ci-out}")
mkdir -p "$out"
cd "$root"
echo "vblk-ci gates ${args[*]}"
PYTHONPATH="$root/host" python3 -m vblk_ci.cli gates "${args[@]}" --json "$out/gates.json"
