#!/usr/bin/env bash
# Run each suite (or scenario) in the image, one folder each under $VBLK_OUT, strict; with
# VBLK_TREE, on that kernel tree built incrementally (objects in $VBLK_CACHE); with
# VBLK_BASELINE, compare each run with the baseline's folder of the same name. Writes
# verdict= (pass | fail | error) and out-dir= to $GITHUB_OUTPUT; exits 0 only on pass.
set -uo pipefail
image=${VBLK_IMAGE:?VBLK_IMAGE names the image}
out=$(mkdir -p "${VBLK_OUT:-vblk-ci-out}" && cd "${VBLK_OUT:-vblk-ci-out}" && pwd)
read -r -a extra <<< "${VBLK_ARGS:-}"
kvm=()
[ -e /dev/kvm ] && kvm=(--device /dev/kvm)
mounts=(-v "$out:/out")
tree=()
if [ -n "${VBLK_TREE:-}" ]; then
	mkdir -p "${VBLK_CACHE:?VBLK_CACHE is the object cache}"
	mounts+=(-v "$(cd "$VBLK_TREE" && pwd):/linux" -v "$VBLK_CACHE:/cache")
	tree=(--tree /linux)
fi
runs=()
for s in ${VBLK_SUITES:-}; do runs+=("suite:$s"); done
if [ -n "${VBLK_SCENARIOS:-}" ]; then
	runs=()
	for s in $VBLK_SCENARIOS; do runs+=("scenario:$s"); done
fi
[ ${#runs[@]} -gt 0 ] || { echo "::error title=vblk-ci::no suites or scenarios given"; exit 2; }
verdict=pass
for r in "${runs[@]}"; do
	kind=${r%%:*} name=${r#*:}
	mkdir -p "$out/$name"
	echo "::group::vblk-ci $kind $name"
	docker run --rm --network none "${kvm[@]}" "${mounts[@]}" -e GITHUB_ACTIONS -e GITHUB_STEP_SUMMARY="/out/$name/summary.md" \
		-e VBLK_CI_CACHE=/cache "$image" run --"$kind" "$name" --strict "${tree[@]}" "${extra[@]}" --out "/out/$name"
	rc=$?
	echo "::endgroup::"
	if [ -f "$out/$name/summary.md" ] && [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
		cat "$out/$name/summary.md" >> "$GITHUB_STEP_SUMMARY"
	fi
	echo "vblk-ci: $kind $name exited $rc"
	case $rc in
	0) ;;
	1) verdict=fail ;;
	*) [ "$verdict" = fail ] || verdict=error ;;
	esac
	if [ -n "${VBLK_BASELINE:-}" ] && [ -f "$VBLK_BASELINE/$name/results.json" ] && [ -f "$out/$name/results.json" ]; then
		docker run --rm --network none -v "$(cd "$VBLK_BASELINE" && pwd):/baseline:ro" -v "$out:/out" -e GITHUB_ACTIONS \
			-e GITHUB_STEP_SUMMARY="/out/$name/compare.md" "$image" \
			compare "/baseline/$name" "/out/$name" --json "/out/$name/compare.json"
		crc=$?
		[ -f "$out/$name/compare.md" ] && [ -n "${GITHUB_STEP_SUMMARY:-}" ] && cat "$out/$name/compare.md" >> "$GITHUB_STEP_SUMMARY"
		[ $crc -eq 1 ] && verdict=fail
	fi
done
o=${GITHUB_OUTPUT:-/dev/stdout}
{ echo "verdict=$verdict"; echo "out-dir=$out"; } >> "$o"
echo "vblk-ci: verdict $verdict"
[ "$verdict" = pass ]
