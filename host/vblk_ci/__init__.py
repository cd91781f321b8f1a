"""vblk-ci: build -> boot -> plug -> run -> verdict for virtio-blk io_uring passthrough."""

__version__ = "0.1.0"
