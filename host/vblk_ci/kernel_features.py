"""What a guest kernel's release tells about the io_uring it has, for checks and the fuzzer
alike: each expects the errno the running kernel gives, not the one the newest would."""

from __future__ import annotations


def takes_fixed_vec(kernel_release: str) -> bool:
    """Whether a kernel of this release (``7.3.4``, ``6.12.118-vblk``) has
    io_uring_cmd_import_fixed_vec(), which came in 6.15; unparsable: assume the mainline."""
    parts = kernel_release.split(".")
    try:
        return (int(parts[0]), int(parts[1].split("-")[0])) >= (6, 15)
    except (IndexError, ValueError):
        return True


#: Guest shell: exits 0 when the guest's virtio_blk has reset_prepare (7.3 has, 6.12 has not),
#: i.e. a device reset goes through the driver instead of past it.
HAS_RESET_PREPARE = "grep -qw virtblk_reset_prepare /proc/kallsyms"


def pci_function(name: str) -> str:
    """Guest shell for disk ``name``'s PCI function: /sys/block/vdX/device is the virtio device,
    its parent the function (where sysfs' ``reset`` is)."""
    return f"$(readlink -f /sys/block/{name}/device/..)"
