"""The VM: pure argv builders, accelerator choice, and the Machine object."""
