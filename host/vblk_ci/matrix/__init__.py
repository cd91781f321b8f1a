"""Device-configuration matrices: DiskSpecs crossed with workloads, from a TOML file."""
