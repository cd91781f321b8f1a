"""Disk specifications and their QEMU/guest mapping."""
