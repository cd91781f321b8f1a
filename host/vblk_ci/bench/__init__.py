"""``vblk-ci bench``: passthrough vs block path, same engine, A/B pairs in one VM."""
