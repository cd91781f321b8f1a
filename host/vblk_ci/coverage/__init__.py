"""Patch-line coverage (issue 11 part 3): which lines the driver series adds to
drivers/block/virtio_blk.c ran during the suites.

- ``collect``: ``vblk-ci run --coverage`` copies the guest's gcov counters for
  virtio_blk out through the agent after each scenario (and once after boot),
  then zeroes them, so each ``.gcda`` in ``<run dir>/coverage/`` is a delta.
- ``analyze``: ``vblk-ci coverage RUN_DIR...`` runs gcov on each delta against the
  coverage kernel's ``virtio_blk.gcno``, sums the line counts, and reports the
  series' added lines (from ``series-lines.json``, which the kernel builder
  publishes beside the coverage kernel): executed, not executed, or not
  executable; an lcov tracefile + genhtml report; one number.
"""
