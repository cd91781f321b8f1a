"""vblk-ci fuzz: structure-aware fuzzing of the passthrough uapi.

One job per module: ``program`` (the step list and its text form, which the guest
executor ``vblk-engine --program`` reads), ``table`` (the documented errno table:
what cqe->res each step must get), ``model`` (the disk's contents as the host
expects them), ``generator`` (seeded programs), ``judge`` (results -> outcomes and
findings), ``shrink`` (delta debugging over steps), ``repro`` (a standalone C
program over liburing), ``runner`` (the VM, the campaign, replay).
"""
