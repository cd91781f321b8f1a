"""Reproduction: the failure bundle a run leaves, its replay, and the interactive shell."""
