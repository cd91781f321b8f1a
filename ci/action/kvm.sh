#!/usr/bin/env bash
# Give the runner user /dev/kvm (GitHub's hosted runners have it, root-only). Without it
# QEMU uses TCG, which works, slowly: say so as a warning annotation.
# VBLK_DRY_RUN=1 prints the commands instead of running them (tests).
set -euo pipefail
run() { if [ "${VBLK_DRY_RUN:-0}" = 1 ]; then echo "+ $*"; else "$@"; fi; }
if [ -e /dev/kvm ]; then
	rule='KERNEL=="kvm", GROUP="kvm", MODE="0666", OPTIONS+="static_node=kvm"'
	if [ "${VBLK_DRY_RUN:-0}" = 1 ]; then
		echo "+ echo '$rule' | sudo tee /etc/udev/rules.d/99-vblk-ci-kvm.rules"
	else
		echo "$rule" | sudo tee /etc/udev/rules.d/99-vblk-ci-kvm.rules >/dev/null
	fi
	run sudo udevadm control --reload-rules
	run sudo udevadm trigger --name-match=kvm
	echo "vblk-ci: /dev/kvm opened to the runner user (vblk-ci still proves KVM works before using it)"
else
	echo "::warning title=vblk-ci::no /dev/kvm on this runner: QEMU uses TCG (slower)"
fi
